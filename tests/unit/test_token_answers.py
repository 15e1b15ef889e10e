"""Hostile token-service answers: read bounded, parsed without escaping the typed errors.

The token service is a real HTTP server on 127.0.0.1 that answers what the test picks (a
64 MiB body with or without ``Content-Length``, a gzip body, JSON nested 100,000 deep, an
``expires_in`` of ``1e400``). The registry side is an ``httpx.MockTransport`` that only
sends the Bearer challenge naming that server: no registry sends these answers on purpose.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from imagecopy.oci.auth import (
    MAX_EXPIRES_IN,
    MAX_TOKEN_RESPONSE_BYTES,
    ChallengeCache,
    RegistryAuth,
    TokenCache,
    token_lifetime,
)
from imagecopy.oci.auth.tokens import DEFAULT_EXPIRES_IN
from imagecopy.oci.credentials import Credential
from imagecopy.oci.egress import HostList
from imagecopy.oci.errors import RegistryError, Unauthorized
from imagecopy.oci.reference import Registry

HUGE = 64 * 1024 * 1024


@dataclass
class TokenServer:
    """Answers every token request with ``body`` (bytes, or a callable that writes itself)."""

    body: bytes = b'{"token": "tok"}'
    headers: dict[str, str] = field(default_factory=dict)
    #: Stream ``HUGE`` bytes, chunked (no Content-Length) unless ``length`` says otherwise.
    stream_huge: bool = False
    length: int | None = None
    written: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    httpd: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def start(self) -> TokenServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    owner.done.set()

            def do_GET(self) -> None:
                self.send_response(200)
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                if not owner.stream_huge:
                    self.send_header("Content-Length", str(len(owner.body)))
                    self.end_headers()
                    self.wfile.write(owner.body)
                    return
                chunked = owner.length is None
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(owner.length))
                self.end_headers()
                piece = b"x" * 65536
                while owner.written < HUGE:
                    frame = b"10000\r\n" + piece + b"\r\n" if chunked else piece
                    self.wfile.write(frame)
                    owner.written += len(piece)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    server = TokenServer().start()
    yield server
    server.stop()


async def fetch(server: TokenServer) -> RegistryAuth:
    """One registry request that needs a token from ``server``; returns the flow."""

    def registry(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization", "").startswith("Bearer "):
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{server.realm}"'})

    async with httpx.AsyncClient(timeout=10) as token_client:
        auth = RegistryAuth(
            Registry.parse("r.io"),
            Credential("alice", "pw"),
            token_client=token_client,
            tokens=TokenCache(),
            challenges=ChallengeCache(),
            plain_http=HostList.parse(["127.0.0.1"]),
        )
        async with httpx.AsyncClient(transport=httpx.MockTransport(registry), auth=auth) as c:
            response = await c.get("https://r.io/v2/a/manifests/1")
            assert response.status_code == 200
    return auth


@pytest.mark.parametrize("length", [None, HUGE], ids=["chunked", "content-length"])
async def test_a_huge_token_answer_is_refused_after_64_kib(
    tokens: TokenServer, length: int | None
) -> None:
    tokens.stream_huge = True
    tokens.length = length
    # Unauthorized (Stalled), as the e2e suite expects of a huge token body.
    with pytest.raises(
        Unauthorized,
        match=r"the token service at http://127\.0\.0\.1:\d+ answered more than 64 KiB",
    ):
        await fetch(tokens)
    assert tokens.done.wait(10)
    # Stopped reading: the server could push no more than the socket buffers hold.
    assert tokens.written < 16 * 1024 * 1024


async def test_a_token_answer_just_within_the_bound_is_read(tokens: TokenServer) -> None:
    pad = MAX_TOKEN_RESPONSE_BYTES - len(b'{"token": "tok", "pad": ""}')
    tokens.body = b'{"token": "tok", "pad": "' + b"p" * pad + b'"}'
    assert len(tokens.body) == MAX_TOKEN_RESPONSE_BYTES
    assert (await fetch(tokens)).token_requests == 1


async def test_a_compressed_token_answer_is_refused(tokens: TokenServer) -> None:
    """Token requests ask for ``identity``: a gzip body (a possible bomb) is not inflated."""
    tokens.body = gzip.compress(b'{"token": "tok"}')
    tokens.headers = {"Content-Encoding": "gzip"}
    with pytest.raises(RegistryError, match="gzip-encoded body"):
        await fetch(tokens)


@pytest.mark.parametrize("nesting", [b"[" * 60000, b'{"a":' * 12000])
async def test_deeply_nested_token_json_is_a_registry_error(
    tokens: TokenServer, nesting: bytes
) -> None:
    tokens.body = nesting
    with pytest.raises(RegistryError, match="other than a JSON object"):
        await fetch(tokens)


@pytest.mark.parametrize(
    "expires_in", [b"1e400", b"1" + b"0" * 400, b"-1e400", b"NaN", b"Infinity", b"true"]
)
async def test_absurd_expiry_values_give_a_bounded_lifetime(
    tokens: TokenServer, expires_in: bytes
) -> None:
    """Before the fix ``10**400`` raised OverflowError out of the flow."""
    tokens.body = b'{"token": "tok", "expires_in": ' + expires_in + b"}"
    auth = await fetch(tokens)
    assert auth.token_requests == 1


@pytest.mark.parametrize(
    ("answer", "lifetime"),
    [
        ({"expires_in": float("inf")}, MAX_EXPIRES_IN),
        ({"expires_in": 10**400}, MAX_EXPIRES_IN),
        ({"expires_in": 10**6}, MAX_EXPIRES_IN),
        ({"expires_in": float("nan")}, DEFAULT_EXPIRES_IN),
        ({"expires_in": float("-inf")}, DEFAULT_EXPIRES_IN),
        ({"expires_in": 300}, 300.0),
        ({"expires_in": 300, "issued_at": "0001-01-01T00:00:00+14:00"}, 300.0),
        ({"expires_in": 300, "issued_at": "9999-12-31T23:59:59-12:00"}, 300.0),
        ({"expires_in": 300, "issued_at": "0001-01-01T00:00:00"}, 300.0),
    ],
)
def test_token_lifetime_is_finite_and_capped(answer: dict[str, Any], lifetime: float) -> None:
    assert token_lifetime(answer, wall_clock=lambda: 1_700_000_000.0) == lifetime
