"""Registry authentication as an ``httpx.Auth`` flow: challenges, token scopes and token cache.

This module owns the Docker/OCI registry auth protocol: reading ``WWW-Authenticate``
challenges (Basic and Bearer), merging token scopes, fetching bearer tokens from the realm
(GET with Basic credentials, or the OAuth2 refresh-token POST for identity tokens), caching
them per scope set with single-flight fetching, and refusing token realms that would leak
credentials over plain HTTP to another host. It never opens sockets itself: the registry
requests go through the flow, token requests through the caller's ``token_client``.

Requests name the scopes they need in ``request.extensions[SCOPES]`` (push scope first). A
request without it gets scopes inferred from its ``/v2/<name>/...`` path.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from imagecopy.oci.credentials import Credential
from imagecopy.oci.errors import (
    InvalidReference,
    RateLimited,
    RegistryError,
    RegistryUnreachable,
    Unauthorized,
)
from imagecopy.oci.reference import normalize_registry
from imagecopy.oci.transport import request_is_replayable

__all__ = [
    "CLIENT_ID",
    "SCOPES",
    "Challenge",
    "RegistryAuth",
    "merge_scopes",
    "parse_www_authenticate",
    "scopes_for_request",
]

log = logging.getLogger(__name__)

#: Key in ``request.extensions``: ``tuple[str, ...]`` of token scopes, push scope first.
SCOPES = "imagecopy.scopes"
#: ``client_id`` sent with OAuth2 token requests.
CLIENT_ID = "imagecopy"

_DEFAULT_EXPIRES_IN = 60.0
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_MARKERS = ("/manifests/", "/blobs/", "/tags/", "/referrers/")


# --- challenges -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``scheme`` is lower-case, param keys too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm") or None

    @property
    def service(self) -> str | None:
        return self.params.get("service") or None

    @property
    def scopes(self) -> tuple[str, ...]:
        """The ``scope`` parameter, split on spaces (it may name several)."""
        return tuple(self.params.get("scope", "").split())


def _read_token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] in _TOKEN_CHARS:
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; tolerates a missing closing quote."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    return "".join(out), pos


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def parse_www_authenticate(values: str | Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 9110 §11.6.1) into challenges.

    Handles several challenges per value, quoted values with commas and escapes, unquoted
    values and any letter case of schemes and parameter names. Malformed parts are skipped
    rather than raised on: a challenge that lacks what its scheme needs is ignored later.
    """
    if isinstance(values, str):
        values = [values]
    challenges: list[tuple[str, dict[str, str]]] = []
    for text in values:
        pos = 0
        current: dict[str, str] | None = None
        while pos < len(text):
            pos = _skip(text, pos, " \t,")
            if pos >= len(text):
                break
            word, after = _read_token(text, pos)
            if not word:
                # Garbage: drop everything up to the next comma.
                while after < len(text) and text[after] != ",":
                    after = _read_quoted(text, after)[1] if text[after] == '"' else after + 1
                pos = after
                continue
            look = _skip(text, after, " \t")
            if look < len(text) and text[look] == "=" and current is not None:
                # ``key=value`` of the current challenge (``key==`` is a token68 tail: skip).
                look = _skip(text, look + 1, " \t")
                if look < len(text) and text[look] == '"':
                    value, pos = _read_quoted(text, look)
                else:
                    end = look
                    while end < len(text) and text[end] not in ", \t":
                        end += 1
                    value, pos = text[look:end], end
                current.setdefault(word.lower(), value)
            elif look < len(text) and text[look] == "=":
                # A parameter before any scheme: malformed, skip it.
                pos = look + 1
            else:
                current = {}
                challenges.append((word.lower(), current))
                pos = after
    return [Challenge(scheme, params) for scheme, params in challenges]


def _usable(challenges: list[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer with a realm beats Basic; others are not supported."""
    for challenge in challenges:
        if challenge.scheme == "bearer" and challenge.realm:
            return challenge
    for challenge in challenges:
        if challenge.scheme == "basic":
            return challenge
    return None


# --- scopes ---------------------------------------------------------------------------------

_Grant = tuple[str, str, str]


def _split_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``type:name:a,b`` → (type, name, [a, b]); ``None`` for scopes of another shape."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    return kind, name, [a for a in actions.split(",") if a]


def _order_actions(actions: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(actions))
    rank = {"push": 0, "pull": 1}
    return sorted(unique, key=lambda a: rank.get(a, 2))  # sorted() is stable for the rest


def merge_scopes(*groups: Iterable[str]) -> tuple[str, ...]:
    """Merge token scopes: one scope per resource with the union of actions, deduplicated.

    ``repository:a:pull`` + ``repository:a:push`` → ``repository:a:push,pull``. Scopes that
    carry ``push`` come first; otherwise first-seen order is kept. Scopes of an unknown shape
    are kept verbatim.
    """
    merged: dict[tuple[str, str], list[str]] = {}
    for group in groups:
        for scope in group:
            parsed = _split_scope(scope)
            if parsed is None:
                if scope:
                    merged.setdefault((scope, ""), [])
                continue
            kind, name, actions = parsed
            merged.setdefault((kind, name), []).extend(actions)
    rendered: list[tuple[bool, str]] = []
    for (kind, name), actions in merged.items():
        if not name:  # verbatim scope
            rendered.append((False, kind))
            continue
        ordered = _order_actions(actions)
        rendered.append(("push" in ordered, f"{kind}:{name}:{','.join(ordered)}"))
    return tuple(text for push, text in rendered if push) + tuple(
        text for push, text in rendered if not push
    )


def _grants(scopes: Iterable[str]) -> frozenset[_Grant]:
    grants: set[_Grant] = set()
    for scope in scopes:
        parsed = _split_scope(scope)
        if parsed is None:
            grants.add((scope, "", ""))
            continue
        kind, name, actions = parsed
        grants.update((kind, name, action) for action in actions)
    return frozenset(grants)


def scopes_for_request(request: httpx.Request) -> tuple[str, ...]:
    """The scopes a request needs: ``extensions[SCOPES]``, else inferred from its path.

    Inference covers ``/v2/<name>/{manifests,blobs,tags,referrers}/…``: ``pull`` for reads,
    ``push,pull`` for writes, plus ``pull`` on the ``from`` repository of a mount.
    """
    explicit = request.extensions.get(SCOPES)
    if isinstance(explicit, str):
        return merge_scopes([explicit])
    if isinstance(explicit, Iterable):
        return merge_scopes(str(s) for s in explicit)
    path = request.url.path
    if not path.startswith("/v2/"):
        return ()
    positions = [path.rfind(marker) for marker in _PATH_MARKERS]
    end = max(positions)
    if end <= len("/v2/"):
        return ()
    name = path[len("/v2/") : end]
    actions = ("push", "pull") if request.method.upper() in _WRITE_METHODS else ("pull",)
    scopes = [f"repository:{name}:{','.join(actions)}"]
    mount_from = request.url.params.get("from")
    if mount_from and request.method.upper() == "POST":
        scopes.append(f"repository:{mount_from}:pull")
    return merge_scopes(scopes)


# --- tokens ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Token:
    value: str = field(repr=False)
    grants: frozenset[_Grant]
    refresh_at: float  # clock() value after which the token is fetched again


def _lifetime(data: Mapping[str, Any]) -> float:
    """Seconds the token stays valid from now, per ``expires_in`` and ``issued_at``."""
    raw = data.get("expires_in")
    lifetime = (
        float(raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0
        else _DEFAULT_EXPIRES_IN
    )
    issued = data.get("issued_at")
    if isinstance(issued, str) and issued:
        try:
            issued_at = datetime.fromisoformat(issued).timestamp()
        except ValueError:
            return lifetime
        age = time.time() - issued_at
        # A negative or huge age means clock skew between us and the token service.
        if 0 <= age < lifetime:
            lifetime -= age
    return lifetime


_BASIC_SENT = "basic"
_REGISTRY_TOKEN_SENT = "registry-token"


class RegistryAuth(httpx.Auth):
    """Answers registry challenges for one registry host with one credential.

    Once a challenge is known, every request to the registry carries authorization before it
    is sent (cached token, fetched under a per-scope-set lock), so steady-state requests cost
    no 401 round trip. A 401 is answered once with a fresh token; a second 401 is returned.
    Requests to other hosts (redirects, foreign upload locations) pass through untouched.
    """

    def __init__(
        self,
        registry: str,
        credential: Credential,
        *,
        token_client: httpx.AsyncClient,
        scheme: str = "https",
        allow_insecure_realm: bool = False,
        clock: Callable[[], float] = time.monotonic,
        challenges: MutableMapping[str, Challenge] | None = None,
    ) -> None:
        try:
            self.registry = normalize_registry(registry)
        except InvalidReference:
            self.registry = registry.lower()
        self._credential = credential
        self._token_client = token_client
        self._scheme = scheme.lower()
        self._allow_insecure_realm = allow_insecure_realm
        self._clock = clock
        self._host, self._port = _host_port(self.registry, self._scheme)
        # Challenges are not secret: a process-wide memory of them (per registry) lets the
        # first request of a later copy carry a token instead of paying a 401 round trip.
        self._challenges = challenges
        self._challenge: Challenge | None = (
            challenges.get(self.registry) if challenges is not None else None
        )
        self._tokens: list[_Token] = []
        self._locks: dict[frozenset[_Grant], asyncio.Lock] = {}
        # Scopes a registry's challenge added to a request's own, remembered so the next
        # request with the same needs asks for them up front instead of paying a 401.
        self._learned: dict[frozenset[_Grant], tuple[str, ...]] = {}
        self._refresh_token = credential.identity_token
        #: Token requests made, for tests and diagnostics.
        self.token_requests = 0

    def __repr__(self) -> str:
        scheme = self._challenge.scheme if self._challenge else None
        return (
            f"RegistryAuth(registry={self.registry!r}, credential={self._credential!r}, "
            f"challenge={scheme!r}, cached_tokens={len(self._tokens)})"
        )

    @property
    def challenge(self) -> Challenge | None:
        """The challenge learned from the registry, if any yet."""
        return self._challenge

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("RegistryAuth works only with httpx.AsyncClient")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._targets_registry(request.url):
            yield request
            return
        requested = scopes_for_request(request)
        needed = self._learned.get(_grants(requested), requested)
        sent = await self._authorize(request, needed)
        response = yield request
        if response.status_code != 401 or not self._targets_registry(response.request.url):
            # A 401 from elsewhere (after a redirect) says nothing about this registry.
            return
        challenge = self._learn(response)
        if challenge is None or not request_is_replayable(request):
            return
        if challenge.scheme == "basic":
            if sent == _BASIC_SENT or not self._basic_header():
                return
            request.headers["Authorization"] = self._basic_header()
            yield request
            return
        if self._credential.registry_token:
            if sent == _REGISTRY_TOKEN_SENT:
                return
            request.headers["Authorization"] = f"Bearer {self._credential.registry_token}"
            yield request
            return
        scopes = merge_scopes(needed, challenge.scopes)
        if _grants(scopes) != _grants(needed):
            self._learned[_grants(requested)] = scopes
        if isinstance(sent, _Token) and _grants(scopes) <= sent.grants:
            # The token should have been enough: the registry no longer accepts it.
            self._discard(sent)
        token = await self._token(challenge, scopes)
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    # -- helpers -----------------------------------------------------------------------------

    def _targets_registry(self, url: httpx.URL) -> bool:
        port = url.port or (443 if url.scheme == "https" else 80)
        return url.host.lower() == self._host and port == self._port

    def _basic_header(self) -> str:
        cred = self._credential
        if not (cred.username or cred.password):
            return ""
        raw = f"{cred.username}:{cred.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def _authorize(
        self, request: httpx.Request, needed: tuple[str, ...]
    ) -> _Token | str | None:
        """Attach what the known challenge asks for; returns what was attached."""
        challenge = self._challenge
        if challenge is None or "authorization" in request.headers:
            return None
        if challenge.scheme == "basic":
            header = self._basic_header()
            if not header:
                return None
            request.headers["Authorization"] = header
            return _BASIC_SENT
        if self._credential.registry_token:
            request.headers["Authorization"] = f"Bearer {self._credential.registry_token}"
            return _REGISTRY_TOKEN_SENT
        token = await self._token(challenge, needed)
        request.headers["Authorization"] = f"Bearer {token.value}"
        return token

    def _learn(self, response: httpx.Response) -> Challenge | None:
        challenge = _usable(parse_www_authenticate(response.headers.get_list("www-authenticate")))
        if challenge is None:
            log.debug("registry %s answered 401 without a usable challenge", self.registry)
            return None
        if challenge.scheme == "bearer":
            challenge = self._checked_realm(challenge)
        self._challenge = challenge
        if self._challenges is not None:
            self._challenges[self.registry] = challenge
        return challenge

    def _checked_realm(self, challenge: Challenge) -> Challenge:
        """Resolve the realm URL and refuse realms that could leak credentials."""
        realm_text = challenge.realm or ""
        try:
            realm = httpx.URL(f"{self._scheme}://{self.registry}/").join(realm_text)
        except httpx.InvalidURL:
            raise Unauthorized(
                f"registry {self.registry} sent a token realm that is not a valid URL",
                status=401,
            ) from None
        realm_host = realm.host.lower()
        plain_http_allowed = realm.scheme == "http" and (
            self._allow_insecure_realm
            or realm_host == self._host
            # Loopback to loopback never crosses a network (localhost vs 127.0.0.1).
            or (_is_loopback(realm_host) and _is_loopback(self._host))
        )
        if realm.scheme != "https" and not plain_http_allowed:
            raise Unauthorized(
                f"registry {self.registry} asked for credentials to be sent to the token "
                f"realm {realm.scheme}://{realm.netloc.decode('ascii', 'replace')}, which is "
                "neither HTTPS nor on the registry's own host; refusing to send them",
                status=401,
            )
        params = dict(challenge.params)
        params["realm"] = str(realm)
        return Challenge(challenge.scheme, params)

    def _cached(self, grants: frozenset[_Grant]) -> _Token | None:
        now = self._clock()
        self._tokens = [t for t in self._tokens if t.refresh_at > now]
        for token in reversed(self._tokens):  # newest first
            if grants <= token.grants:
                return token
        return None

    def _discard(self, token: _Token) -> None:
        self._tokens = [t for t in self._tokens if t is not token]

    async def _token(self, challenge: Challenge, scopes: tuple[str, ...]) -> _Token:
        grants = _grants(scopes)
        token = self._cached(grants)
        if token is not None:
            return token
        lock = self._locks.setdefault(grants, asyncio.Lock())
        async with lock:
            # Whoever held the lock may have fetched what we need.
            token = self._cached(grants)
            if token is not None:
                return token
            token = await self._fetch_token(challenge, scopes, grants)
            self._tokens.append(token)
            return token

    async def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...], grants: frozenset[_Grant]
    ) -> _Token:
        realm = challenge.realm or ""
        cred = self._credential
        basic = httpx.BasicAuth(cred.username, cred.password) if cred.password else None
        self.token_requests += 1
        if self._refresh_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self._refresh_token,
                "client_id": CLIENT_ID,
            }
            if challenge.service:
                form["service"] = challenge.service
            if scopes:
                form["scope"] = " ".join(scopes)
            response = await self._token_client.post(realm, data=form)
            if response.status_code in (404, 405):
                # Token services without OAuth2 support: fall back to the Docker GET form.
                response = await self._get_token(realm, challenge, scopes, basic)
        else:
            response = await self._get_token(realm, challenge, scopes, basic)
        data = self._token_answer(response, scopes)
        value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise RegistryError(
                f"the token service of registry {self.registry} answered without a token",
                status=response.status_code,
            )
        refresh = data.get("refresh_token")
        if isinstance(refresh, str) and refresh and self._refresh_token:
            self._refresh_token = refresh
        lifetime = _lifetime(data)
        # Fetch again a little before expiry so a request never carries a dying token.
        margin = min(10.0, lifetime / 6)
        return _Token(value=value, grants=grants, refresh_at=self._clock() + lifetime - margin)

    async def _get_token(
        self,
        realm: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        basic: httpx.BasicAuth | None,
    ) -> httpx.Response:
        params: list[tuple[str, str | int | float | bool | None]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", scope) for scope in scopes)
        if basic is not None and self._credential.username:
            params.append(("account", self._credential.username))
        return await self._token_client.get(realm, params=params, auth=basic)

    def _token_answer(self, response: httpx.Response, scopes: tuple[str, ...]) -> dict[str, Any]:
        status = response.status_code
        what = " ".join(scopes) if scopes else "registry access"
        if status in (401, 403):
            if self._credential.anonymous:
                message = f"registry {self.registry} refused anonymous access for {what}"
            else:
                message = f"registry {self.registry} rejected the credentials for {what}"
            raise Unauthorized(message, status=status)
        if status == 429:
            raise RateLimited(
                f"the token service of registry {self.registry} is rate limiting requests",
                status=status,
            )
        if status >= 500:
            raise RegistryUnreachable(
                f"the token service of registry {self.registry} answered {status}", status=status
            )
        if status != 200:
            raise RegistryError(
                f"the token service of registry {self.registry} answered {status}", status=status
            )
        try:
            data = json.loads(response.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise RegistryError(
                f"the token service of registry {self.registry} answered with something "
                "other than a JSON object",
                status=status,
            )
        return data


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(registry: str, scheme: str) -> tuple[str, int]:
    default = 443 if scheme == "https" else 80
    if registry.startswith("["):
        end = registry.find("]")
        host, rest = registry[1:end], registry[end + 1 :]
        return host.lower(), int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = registry.rpartition(":")
    if sep and port.isdigit():
        return host.lower(), int(port)
    return registry.lower(), default
