"""Retry and request-counting transports, against a real local HTTP server.

The server (``ScriptedServer``) is a real HTTP/1.1 server on 127.0.0.1 that answers from a
script: a status with headers, or dropping the connection without an answer. It produces every
case here over real sockets, including both ``Retry-After`` forms.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from imagecopy.oci.retry import Backoff, Jitter, RetryBudget, RetryPolicy, parse_retry_after
from imagecopy.oci.transport import (
    STATS,
    CountingTransport,
    RequestStats,
    RetryTransport,
    request_is_replayable,
    stats_for,
)
from testkit.processes import free_port

DROP = "drop"
Action = tuple[int, dict[str, str]] | str


@dataclass
class Seen:
    method: str
    path: str
    body: bytes


@dataclass
class ScriptedServer:
    """Answers requests in order from ``script``; 200 "ok" once the script is used up."""

    script: list[Action] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> ScriptedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self) -> None:
                body = self._body()
                with owner.lock:
                    owner.seen.append(Seen(self.command, self.path, body))
                    action: Action = owner.script.pop(0) if owner.script else (200, {})
                if action == DROP:
                    self.close_connection = True
                    return
                assert isinstance(action, tuple)
                status, headers = action
                payload = b"" if self.command == "HEAD" else f"answer {status}".encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer().start()
    yield srv
    srv.stop()


class Sleeps:
    """Records requested sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class MaxRandom(random.Random):
    """``uniform`` returns its upper bound, exposing the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def retry_client(
    policy: RetryPolicy | None = None,
    sleeps: Sleeps | None = None,
    *,
    clock: float = 1_000_000.0,
    rng: random.Random | None = None,
    inner: httpx.AsyncBaseTransport | None = None,
    budget: RetryBudget | None = None,
) -> httpx.AsyncClient:
    transport = RetryTransport(
        inner or CountingTransport(httpx.AsyncHTTPTransport()),
        policy or RetryPolicy(),
        sleep=sleeps or Sleeps(),
        clock=lambda: clock,
        rng=rng,
        find_budget=lambda _request: budget,
    )
    return httpx.AsyncClient(transport=transport, timeout=10)


async def body_stream() -> AsyncIterator[bytes]:
    yield b"chunk-1"
    yield b"chunk-2"


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried_until_success(
    server: ScriptedServer, status: int
) -> None:
    server.script = [(status, {}), (status, {})]
    sleeps = Sleeps()
    async with retry_client(sleeps=sleeps) as client:
        response = await client.get(server.url + "/v2/")
    assert response.status_code == 200
    assert len(server.seen) == 3
    assert len(sleeps.calls) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 501])
async def test_other_statuses_are_returned_at_once(server: ScriptedServer, status: int) -> None:
    server.script = [(status, {})]
    async with retry_client() as client:
        response = await client.get(server.url + "/x")
    assert response.status_code == status
    assert len(server.seen) == 1


async def test_after_the_last_attempt_the_last_response_is_returned(
    server: ScriptedServer,
) -> None:
    server.script = [*[(503, {})] * 3, (502, {})]
    sleeps = Sleeps()
    async with retry_client(RetryPolicy(attempts=4), sleeps) as client:
        response = await client.get(server.url + "/x")
    assert response.status_code == 502
    assert response.text == "answer 502"  # the last response is still readable
    assert len(server.seen) == 4
    assert len(sleeps.calls) == 3


async def test_backoff_is_exponential_and_capped(server: ScriptedServer) -> None:
    server.script = [(503, {})] * 5
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=6, backoff=Backoff(base=0.5, cap=3.0))
    async with retry_client(policy, sleeps, rng=MaxRandom()) as client:
        await client.get(server.url + "/x")
    assert sleeps.calls == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_backoff_has_full_jitter(server: ScriptedServer) -> None:
    server.script = [(503, {})] * 4
    sleeps = Sleeps()
    async with retry_client(RetryPolicy(attempts=5), sleeps, rng=random.Random(7)) as client:
        await client.get(server.url + "/x")
    ceilings = [0.2, 0.4, 0.8, 1.6]
    assert all(0 <= s <= c for s, c in zip(sleeps.calls, ceilings, strict=True))
    assert len(set(sleeps.calls)) == 4


async def test_retry_after_seconds_is_honoured(server: ScriptedServer) -> None:
    server.script = [(429, {"Retry-After": "7"}), (503, {"Retry-After": "0"})]
    sleeps = Sleeps()
    async with retry_client(sleeps=sleeps) as client:
        assert (await client.get(server.url + "/x")).status_code == 200
    assert sleeps.calls == [7.0, 0.0]


async def test_retry_after_http_date_is_honoured(server: ScriptedServer) -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    past = email.utils.formatdate(now - 100, usegmt=True)
    server.script = [(503, {"Retry-After": date}), (503, {"Retry-After": past})]
    sleeps = Sleeps()
    async with retry_client(sleeps=sleeps, clock=now) as client:
        assert (await client.get(server.url + "/x")).status_code == 200
    assert sleeps.calls == [12.0, 0.0]


async def test_retry_after_is_capped(server: ScriptedServer) -> None:
    now = 1_800_000_000.0
    server.script = [
        (429, {"Retry-After": "3600"}),
        (429, {"Retry-After": email.utils.formatdate(now + 86400, usegmt=True)}),
    ]
    sleeps = Sleeps()
    policy = RetryPolicy(backoff=Backoff(retry_after_max=30.0))
    async with retry_client(policy, sleeps, clock=now) as client:
        await client.get(server.url + "/x")
    assert sleeps.calls == [30.0, 30.0]


async def test_unreadable_retry_after_falls_back_to_backoff(server: ScriptedServer) -> None:
    server.script = [(503, {"Retry-After": "soon"})]
    sleeps = Sleeps()
    async with retry_client(sleeps=sleeps, rng=MaxRandom()) as client:
        await client.get(server.url + "/x")
    assert sleeps.calls == [0.2]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("not a date", None),
        ("99999", 99999.0),
        ("inf", None),
        ("9" * 100, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_800_000_000.0) == expected


def test_backoff_caps_a_servers_retry_after() -> None:
    assert Backoff(retry_after_max=60.0).delay(1, retry_after=99999.0) == 60.0


def test_equal_jitter_never_waits_less_than_half_the_step() -> None:
    backoff = Backoff(base=2.0, cap=60.0, jitter=Jitter.EQUAL)
    rng = random.Random(3)
    delays = [backoff.delay(n, rng) for n in range(1, 10)]
    steps = [min(60.0, 2.0 * 2 ** (n - 1)) for n in range(1, 10)]
    assert all(s / 2 <= d <= s for d, s in zip(delays, steps, strict=True))


async def test_a_spent_budget_stops_retries_across_requests(server: ScriptedServer) -> None:
    """Two requests of one copy share one budget of 3 retries: the first spends them all
    (4 tries), the second gets one try only."""
    server.script = [(503, {})] * 10
    sleeps = Sleeps()
    budget = RetryBudget(3)
    async with retry_client(RetryPolicy(attempts=10), sleeps, budget=budget) as client:
        assert (await client.get(server.url + "/a")).status_code == 503
        assert (await client.get(server.url + "/b")).status_code == 503
    assert [seen.path for seen in server.seen] == ["/a"] * 4 + ["/b"]
    assert budget.remaining == 0 and budget.spent == 3


async def test_streaming_bodies_are_never_retried(server: ScriptedServer) -> None:
    server.script = [(503, {})]
    async with retry_client() as client:
        response = await client.put(server.url + "/upload", content=body_stream())
    assert response.status_code == 503
    assert [s.body for s in server.seen] == [b"chunk-1chunk-2"]


async def test_byte_bodies_are_replayed_on_retry(server: ScriptedServer) -> None:
    server.script = [(503, {}), (500, {})]
    async with retry_client() as client:
        response = await client.put(server.url + "/v2/a/manifests/1", content=b"payload")
    assert response.status_code == 200
    assert [s.body for s in server.seen] == [b"payload"] * 3


async def test_discarded_responses_are_closed_before_the_retry(server: ScriptedServer) -> None:
    """With a one-connection pool, an unclosed 503 would hold the connection: PoolTimeout."""
    server.script = [(503, {})] * 3
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    client = httpx.AsyncClient(
        transport=RetryTransport(inner, sleep=Sleeps()),
        timeout=httpx.Timeout(5, pool=0.5),
    )
    async with client:
        assert (await client.get(server.url + "/x")).status_code == 200


async def test_connect_errors_are_retried_for_every_method_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/a/blobs/uploads/"
    stats = RequestStats()
    sleeps = Sleeps()
    async with retry_client(RetryPolicy(attempts=3), sleeps) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(url, content=b"x", extensions={STATS: stats})
    assert len(sleeps.calls) == 2
    assert stats.total == 3
    assert set(stats.by_key()) == {(url.split("/")[2], "POST", "error")}


async def test_dropped_connections_are_retried_for_idempotent_methods(
    server: ScriptedServer,
) -> None:
    server.script = [DROP, DROP]
    async with retry_client() as client:
        response = await client.get(server.url + "/x")
    assert response.status_code == 200
    assert len(server.seen) == 3


async def test_dropped_connections_are_not_retried_for_post(server: ScriptedServer) -> None:
    server.script = [DROP]
    async with retry_client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url + "/v2/a/blobs/uploads/", content=b"x")
    assert len(server.seen) == 1


async def test_dropped_connection_on_the_last_attempt_raises(server: ScriptedServer) -> None:
    server.script = [DROP, DROP]
    async with retry_client(RetryPolicy(attempts=2)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url + "/x")


def test_request_is_replayable() -> None:
    assert request_is_replayable(httpx.Request("GET", "http://h/"))
    assert request_is_replayable(httpx.Request("PUT", "http://h/", content=b"abc"))
    assert request_is_replayable(httpx.Request("POST", "http://h/", data={"a": "b"}))
    assert not request_is_replayable(httpx.Request("PUT", "http://h/", content=body_stream()))


# --- counting --------------------------------------------------------------------------------


async def test_counting_records_every_attempt_with_its_status(server: ScriptedServer) -> None:
    server.script = [(503, {}), (429, {"Retry-After": "0"})]
    stats = RequestStats()
    async with retry_client() as client:
        await client.get(server.url + "/x", extensions={STATS: stats})
        await client.head(server.url + "/y", extensions={STATS: stats})
    assert stats.total == 4
    assert stats.by_key() == {
        (server.host, "GET", "503"): 1,
        (server.host, "GET", "429"): 1,
        (server.host, "GET", "200"): 1,
        (server.host, "HEAD", "200"): 1,
    }


async def test_concurrent_copies_sharing_a_pool_count_their_own_requests(
    server: ScriptedServer,
) -> None:
    first, second = RequestStats(), RequestStats()
    async with retry_client() as client:
        await asyncio.gather(
            *(client.get(server.url + f"/a{i}", extensions={STATS: first}) for i in range(7)),
            *(client.get(server.url + f"/b{i}", extensions={STATS: second}) for i in range(3)),
            client.get(server.url + "/uncounted"),
        )
    assert (first.total, second.total) == (7, 3)
    assert len(server.seen) == 11


async def test_listeners_see_each_record_and_cannot_break_a_request(
    server: ScriptedServer,
) -> None:
    seen: list[tuple[str, str, str]] = []

    def broken(registry: str, method: str, code: str) -> None:
        raise RuntimeError("metrics backend down")

    stats = RequestStats(listeners=[broken, lambda *key: seen.append(key)])
    async with retry_client() as client:
        response = await client.delete(server.url + "/z", extensions={STATS: stats})
    assert response.status_code == 200
    assert seen == [(server.host, "DELETE", "200")]


async def test_custom_stats_lookup(server: ScriptedServer) -> None:
    only = RequestStats()
    inner = CountingTransport(httpx.AsyncHTTPTransport(), lambda request: only)
    async with httpx.AsyncClient(transport=inner) as client:
        await client.get(server.url + "/x")
    assert only.total == 1


def test_default_stats_lookup_reads_the_extension() -> None:
    stats = RequestStats()
    assert stats_for(httpx.Request("GET", "http://h/", extensions={STATS: stats})) is stats
    assert stats_for(httpx.Request("GET", "http://h/")) is None
    assert stats_for(httpx.Request("GET", "http://h/", extensions={STATS: "nope"})) is None


def test_ipv6_registry_label() -> None:
    stats = RequestStats()
    from imagecopy.oci.transport import registry_of

    assert registry_of(httpx.URL("http://[::1]:5000/v2/")) == "[::1]:5000"
    assert registry_of(httpx.URL("https://r.io/v2/")) == "r.io"
    assert stats.total == 0
