"""A small, real Docker Registry v2 token server (Bearer auth) for tests.

It implements the token protocol the way real registries' auth services do:

- ``GET /token?service=S&scope=T:NAME:ACTIONS&scope=...`` with optional Basic credentials
  (several ``scope`` parameters, or several space-separated scopes in one parameter).
- ``POST /token`` (OAuth2 form): ``grant_type=password`` (``username``, ``password``) or
  ``grant_type=refresh_token`` (``refresh_token``), ``service``, ``scope`` (space-separated),
  ``client_id``. Password grants also return a ``refresh_token``.

The JWTs are signed (ES256 by default, RS256 on request) with a signing certificate issued by a
test CA; the JWS header carries ``x5c`` = [signing cert, CA] and the CA's PEM file is what the
registry's ``auth.token.rootcertbundle`` points at. Claims: ``iss``, ``sub``, ``aud`` (the
service), ``exp``, ``nbf``, ``iat``, ``jti``, ``access: [{type, name, actions}]``.

Granting policy — **exactly the scopes requested**, intersected with an ACL:

- ``acl`` maps a user name to ``{name_glob: [actions]}`` (``fnmatch`` globs on the resource name,
  action ``"*"`` allows every action). ``acl=None`` means every *authenticated* user may have
  whatever they ask for. A user absent from a non-None ACL gets nothing.
- Anonymous requests (no Authorization header) get ``anonymous_acl`` (default: nothing) and
  still receive a token — with an empty ``access`` list, like Docker Hub does for private repos.
- Bad credentials, an unknown refresh token or an unknown grant type → 401 / 400.

Nothing is ever granted that was not asked for, so a client that forgets
``repository:<src>:pull`` on a cross-repository mount gets a token the registry rejects.

``all_or_nothing=True`` is **Docker Hub's rule**: an *authenticated* token request in which any
``repository`` scope names a repository the caller may not pull is refused as a whole — 401
with ``{"details": "access to the requested resource is not authorized"}`` — instead of
granting the other scopes. So a cross-repository mount whose ``from`` repository the caller
cannot read makes the *token request* fail, not the mount. Anonymous requests keep Docker Hub's
anonymous behaviour: a 200 token whose ``access`` leaves out what may not be pulled. The
refused scopes are recorded in :attr:`TokenRequest.refused`.

Every request is recorded in :attr:`TokenIssuer.requests` (user, scopes asked, scopes granted)
so tests can assert on what a client asked for.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testkit.tls import TestPKI, issue_cert, make_test_pki

__all__ = ["Scope", "TokenIssuer", "TokenRequest", "parse_scope"]

Acl = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class Scope:
    """One resource scope: ``repository:dev/web:pull,push``."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def as_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(text: str) -> Scope | None:
    """Parse ``type:name:actions``; the name may itself contain ``:`` (registry:catalog:*)."""
    first = text.find(":")
    last = text.rfind(":")
    if first < 0 or last == first:
        return None
    actions = tuple(a for a in text[last + 1 :].split(",") if a)
    return Scope(type=text[:first], name=text[first + 1 : last], actions=actions)


@dataclass
class TokenRequest:
    """What one client asked for and what it got."""

    method: str
    user: str | None  # None = anonymous
    service: str | None
    scopes_requested: list[Scope]
    scopes_granted: list[Scope]
    status: int
    grant_type: str | None = None
    client_id: str | None = None
    time: float = field(default_factory=time.time)
    refused: list[Scope] = field(default_factory=list)  # all_or_nothing: why it was a 401

    def requested(self) -> list[str]:
        return [str(s) for s in self.scopes_requested]

    def granted(self) -> list[str]:
        return [str(s) for s in self.scopes_granted]


class TokenIssuer:
    """A threaded token server on 127.0.0.1. ``start()`` it, point a registry's realm at it.

    >>> issuer = TokenIssuer(users={"alice": "s3cret"}).start()
    >>> issuer.realm   # http://127.0.0.1:PORT/token
    """

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        acl: Acl | None = None,
        anonymous_acl: dict[str, list[str]] | None = None,
        service: str = "imagecopy-test-registry",
        issuer: str = "imagecopy-test-issuer",
        ttl: int = 300,
        algorithm: str = "ES256",
        tls: bool = False,
        pki: TestPKI | None = None,
        workdir: str | Path | None = None,
        realm_host: str = "localhost",
        all_or_nothing: bool = False,
    ) -> None:
        if algorithm not in ("ES256", "RS256"):
            raise ValueError("algorithm must be ES256 or RS256")
        self.users: dict[str, str] = dict(users or {})
        self.acl: Acl | None = acl
        self.anonymous_acl: dict[str, list[str]] = dict(anonymous_acl or {})
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.algorithm = algorithm
        self.tls = tls
        self.realm_host = realm_host
        self.all_or_nothing = all_or_nothing
        self.requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if workdir is None:
            import tempfile

            workdir = tempfile.mkdtemp(prefix="imagecopy-token-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki or make_test_pki(self.workdir / "pki")
        self._make_signing_key()

    # --- keys -------------------------------------------------------------------------------
    def _make_signing_key(self) -> None:
        from cryptography import x509

        if self.algorithm == "ES256":
            cert, key = issue_cert(
                self.pki.ca, self.pki.ca_private_key, "token-signer", server=False
            )
            self._key: Any = key
        else:
            # an RSA leaf signed by the (EC) CA
            import datetime as dt

            from cryptography.hazmat.primitives import hashes
            from cryptography.x509.oid import NameOID

            rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-signer")]))
                .issuer_name(self.pki.ca.subject)
                .public_key(rkey.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.pki.ca_private_key, hashes.SHA256())
            )
            self._key = rkey
        self._x5c = [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in (cert, self.pki.ca)
        ]
        self.rootcertbundle: Path = self.pki.ca_cert

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> TokenIssuer:
        if self._server is not None:
            return self
        issuer = self

        class Handler(_Handler):
            owner = issuer

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.pki.server_chain), str(self.pki.server_key))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="token-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token issuer not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL. The host is ``realm_host`` (default ``localhost``, bound on 127.0.0.1):
        crane >= 0.21 refuses a Bearer realm whose host is a private/loopback IP *literal*
        unless it equals the registry's host:port, but accepts a DNS name."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.realm_host}:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    # --- policy -----------------------------------------------------------------------------
    def add_user(
        self, username: str, password: str, acl: dict[str, list[str]] | None = None
    ) -> None:
        with self._lock:
            self.users[username] = password
            if acl is not None:
                if self.acl is None:
                    self.acl = {}
                self.acl[username] = acl

    def allowed_actions(self, user: str | None, scope: Scope) -> tuple[str, ...]:
        """The subset of ``scope.actions`` the policy allows ``user`` (None = anonymous)."""
        if user is None:
            rules: dict[str, list[str]] | None = self.anonymous_acl
        elif self.acl is None:
            return scope.actions
        else:
            rules = self.acl.get(user, {})
        allowed: set[str] = set()
        for pattern, actions in (rules or {}).items():
            if fnmatch.fnmatchcase(scope.name, pattern):
                allowed.update(actions)
        if "*" in allowed:
            return scope.actions
        return tuple(a for a in scope.actions if a in allowed)

    def grant(self, user: str | None, scopes: list[Scope]) -> list[Scope]:
        granted: list[Scope] = []
        for s in scopes:
            actions = self.allowed_actions(user, s)
            if actions:
                granted.append(Scope(s.type, s.name, actions))
        return granted

    def refused(self, user: str | None, scopes: list[Scope]) -> list[Scope]:
        """Under ``all_or_nothing``, the scopes that make an authenticated request a 401: every
        ``repository`` scope whose repository ``user`` may not pull. Empty otherwise."""
        if not self.all_or_nothing or user is None:
            return []
        return [
            s
            for s in scopes
            if s.type == "repository"
            and not self.allowed_actions(user, Scope(s.type, s.name, ("pull",)))
        ]

    # --- tokens -----------------------------------------------------------------------------
    def mint(
        self,
        access: list[Scope] | list[dict[str, Any]],
        *,
        subject: str = "admin",
        ttl: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """Sign a token directly (no policy, not recorded). Used by seeding helpers."""
        now = int(time.time())
        claims_access = [a.as_claim() if isinstance(a, Scope) else a for a in access]
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": now + (ttl if ttl is not None else self.ttl),
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": claims_access,
        }
        return jwt.encode(
            claims, self._key, algorithm=self.algorithm, headers={"x5c": self._x5c, "typ": "JWT"}
        )

    def token_response(self, token: str, refresh: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.ttl,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if refresh:
            body["refresh_token"] = refresh
        return body

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def new_refresh_token(self, user: str) -> str:
        tok = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[tok] = user
        return tok

    def refresh_user(self, token: str) -> str | None:
        with self._lock:
            return self._refresh_tokens.get(token)

    def check_password(self, user: str, password: str) -> bool:
        with self._lock:
            expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected, password)


def _first(q: dict[str, list[str]], key: str) -> str | None:
    vals = q.get(key)
    return vals[0] if vals else None


class _Handler(BaseHTTPRequestHandler):
    owner: TokenIssuer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _basic_user(self) -> tuple[str | None, bool]:
        """(user, ok): user None + ok True = anonymous; ok False = bad credentials."""
        header = self.headers.get("Authorization")
        if not header:
            return None, True
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None, False
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except Exception:
            return None, False
        if self.owner.check_password(user, password):
            return user, True
        return user, False

    @staticmethod
    def _scopes(values: list[str]) -> list[Scope]:
        out: list[Scope] = []
        for v in values:
            for part in v.split():
                s = parse_scope(part)
                if s is not None:
                    out.append(s)
        return out

    def _unauthorized(
        self, user: str | None, service: str | None, scopes: list[Scope], grant: str | None
    ) -> None:
        self.owner.record(TokenRequest(self.command, user, service, scopes, [], 401, grant))
        self._send_json(
            401,
            {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]},
            {"WWW-Authenticate": 'Basic realm="imagecopy-test-issuer"'},
        )

    def _refuse(
        self,
        user: str | None,
        service: str | None,
        scopes: list[Scope],
        grant: str | None,
        client_id: str | None,
    ) -> bool:
        """Docker Hub's all-or-nothing rule: answer 401 for the whole request (True)."""
        refused = self.owner.refused(user, scopes)
        if not refused:
            return False
        self.owner.record(
            TokenRequest(
                self.command, user, service, scopes, [], 401, grant, client_id, refused=refused
            )
        )
        self._send_json(
            401,
            {"details": "access to the requested resource is not authorized"},
            {"WWW-Authenticate": 'Bearer realm="imagecopy-test-issuer"'},
        )
        return True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/token":
            self._send_json(404, {"error": "not found"})
            return
        q = parse_qs(url.query, keep_blank_values=True)
        service = _first(q, "service")
        scopes = self._scopes(q.get("scope", []))
        user, ok = self._basic_user()
        if not ok:
            self._unauthorized(user, service, scopes, None)
            return
        if self._refuse(user, service, scopes, None, _first(q, "client_id")):
            return
        granted = self.owner.grant(user, scopes)
        token = self.owner.mint(granted, subject=user or "")
        refresh = None
        if user is not None and (_first(q, "offline_token") or "") == "true":
            refresh = self.owner.new_refresh_token(user)
        self.owner.record(
            TokenRequest("GET", user, service, scopes, granted, 200, None, _first(q, "client_id"))
        )
        self._send_json(200, self.owner.token_response(token, refresh))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path != "/token":
            self._send_json(404, {"error": "not found"})
            return
        form = parse_qs(raw.decode(), keep_blank_values=True)

        def one(key: str) -> str | None:
            return _first(form, key)

        grant = one("grant_type")
        service = one("service")
        scopes = self._scopes(form.get("scope", []))
        client_id = one("client_id")
        user: str | None
        if grant == "password":
            user = one("username") or ""
            if not self.owner.check_password(user, one("password") or ""):
                self._unauthorized(user, service, scopes, grant)
                return
            refresh = self.owner.new_refresh_token(user)
        elif grant == "refresh_token":
            refresh = one("refresh_token") or ""
            user = self.owner.refresh_user(refresh)
            if user is None:
                self._unauthorized(None, service, scopes, grant)
                return
        else:
            self.owner.record(
                TokenRequest("POST", None, service, scopes, [], 400, grant, client_id)
            )
            self._send_json(400, {"error": "unsupported_grant_type"})
            return
        if self._refuse(user, service, scopes, grant, client_id):
            return
        granted = self.owner.grant(user, scopes)
        token = self.owner.mint(granted, subject=user)
        self.owner.record(
            TokenRequest("POST", user, service, scopes, granted, 200, grant, client_id)
        )
        self._send_json(200, self.owner.token_response(token, refresh))
