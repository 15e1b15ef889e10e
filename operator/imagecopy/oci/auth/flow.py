"""``RegistryAuth``: the registry auth protocol as an ``httpx.Auth`` flow.

Answers Basic and Bearer challenges for one registry with one credential: fetches bearer
tokens from the realm (GET with Basic credentials, or the OAuth2 refresh-token POST for
identity tokens) and maps token-service failures to errors. It never opens sockets itself:
registry requests go through the flow, token requests through the caller's ``token_client``.
Tokens and challenges live in the caches the caller owns (``tokens.py``).

Where credentials go is the egress rule's (``oci.egress``): only to requests on the
registry's own origin (scheme, host and port) and to a token realm ``checked_realm``
accepts. A token answer is read up to ``MAX_TOKEN_RESPONSE_BYTES`` and no further.

Optional scopes (``scopes.OPTIONAL_SCOPES``, ``scopes.MOUNT_SOURCE``: a mount source's
``pull``) never make a request fail. A token service that refuses a request naming them
(Docker Hub refuses the whole request for one repository the caller may not pull) is asked
again without them; which of them it refuses is found out once and remembered per registry
and credential (``RefusedScopes``), and later token requests leave them out. A mount request
whose own source is refused is not sent: ``ScopeRefused`` says so to the caller.
"""

from __future__ import annotations

import base64
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import httpx

from imagecopy.oci.auth.challenge import (
    Challenge,
    checked_realm,
    parse_www_authenticate,
    usable_challenge,
)
from imagecopy.oci.auth.scopes import (
    MOUNT_SOURCE,
    OPTIONAL_SCOPES,
    SCOPES,
    Grant,
    OptionalScopes,
    drop_grants,
    grants,
    merge_scopes,
    optional_scopes,
    scopes_for_request,
)
from imagecopy.oci.auth.tokens import ChallengeCache, RefusedScopes, Token, TokenCache, TokenKey
from imagecopy.oci.bounds import load_json
from imagecopy.oci.credentials import Credential
from imagecopy.oci.egress import HostList, Origin
from imagecopy.oci.errors import (
    RateLimited,
    RegistryError,
    RegistryUnreachable,
    ScopeRefused,
    Unauthorized,
)
from imagecopy.oci.reference import Registry
from imagecopy.oci.transport import request_is_replayable

__all__ = ["CLIENT_ID", "MAX_TOKEN_RESPONSE_BYTES", "RegistryAuth"]

log = logging.getLogger(__name__)

# Token answers are read raw and bounded: a compressed body could inflate past the bound.
_TOKEN_HEADERS = {"Accept-Encoding": "identity"}

#: ``client_id`` sent with OAuth2 token requests.
CLIENT_ID = "imagecopy"

#: Bytes of a token-service answer read at most; a longer answer is an error. Real answers
#: (a JWT, an expiry, maybe a refresh token) are a few KiB.
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

_OPERATION = "token request"

#: Entries per flow of the memos below (a copy asks for a handful of scope sets and origins).
_MEMO_ENTRIES = 256


class _Sent(enum.Enum):
    """Authorization attached to a request other than a fetched token."""

    BASIC = "basic"
    REGISTRY_TOKEN = "registry token"


class _Stale(Exception):
    """The scopes a token was to be fetched for changed while waiting for the fetch."""


class RegistryAuth(httpx.Auth):
    """Answers registry challenges for one registry with one credential.

    Once a challenge is known, every request to the registry carries authorization before it
    is sent (a cached token, or one fetched once per key by ``tokens``), so steady-state
    requests cost no 401 round trip. A 401 is answered once with a fresh token; a second 401
    is returned. Requests to any other origin — another host or port, or the registry's own
    host under another scheme (an upload ``Location: http://reg:443/…`` of an HTTPS
    registry) — pass through untouched. ``plain_http`` names the hosts configured for plain
    HTTP: the only ones a plain-HTTP token realm may be on.
    """

    def __init__(
        self,
        registry: Registry,
        credential: Credential,
        *,
        token_client: httpx.AsyncClient,
        tokens: TokenCache,
        challenges: ChallengeCache,
        scheme: str = "https",
        plain_http: HostList | None = None,
        clock: Callable[[], float] = time.monotonic,
        refused: RefusedScopes | None = None,
    ) -> None:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"registry scheme must be http or https, not {scheme!r}")
        self.registry = registry
        self._credential = credential
        self._credential_key = credential.cache_key
        self._token_client = token_client
        self._tokens = tokens
        self._challenges = challenges
        self._refused = refused if refused is not None else RefusedScopes()
        self._scheme = scheme
        self._origin = Origin.of_registry(registry, scheme)
        self._plain_http = plain_http or HostList()
        self._clock = clock
        self._challenge: Challenge | None = challenges.get(registry)
        # Scopes a registry's challenge added to a request's own, remembered so the next
        # request with the same needs asks for them up front instead of paying a 401.
        self._learned: dict[frozenset[Grant], tuple[str, ...]] = {}
        self._refresh_token = credential.identity_token
        # Per-request work that depends only on what the request names, done once: whether
        # an origin is the registry's, and the scopes a request's extensions ask for.
        self._origins: dict[tuple[bytes, bytes, int | None], bool] = {}
        self._needs: dict[
            tuple[object, object, object], tuple[tuple[str, ...], frozenset[Grant], OptionalScopes]
        ] = {}
        self._keys: dict[tuple[str, ...], TokenKey] = {}
        #: Token requests this flow made (not those served by the shared cache), for tests
        #: and diagnostics.
        self.token_requests = 0

    def __repr__(self) -> str:
        scheme = self._challenge.scheme if self._challenge else None
        return (
            f"RegistryAuth(registry={str(self.registry)!r}, credential={self._credential!r}, "
            f"challenge={scheme!r}, token_requests={self.token_requests})"
        )

    @property
    def challenge(self) -> Challenge | None:
        """The challenge this flow knows for the registry, if any yet."""
        return self._challenge

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("RegistryAuth works only with httpx.AsyncClient")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._targets_registry(request.url):
            yield request
            return
        requested, requested_grants, optional = self._scopes_of(request)
        needed = self._learned.get(requested_grants, requested)
        sent = await self._authorize(request, needed, optional)
        response = yield request
        if response.status_code != 401 or not self._targets_registry(response.request.url):
            # A 401 from elsewhere (after a redirect) says nothing about this registry.
            return
        challenge = self._learn(response)
        if challenge is None or not request_is_replayable(request):
            return
        if challenge.scheme == "basic":
            if sent is _Sent.BASIC or not self._basic_header():
                return
            request.headers["Authorization"] = self._basic_header()
            yield request
            return
        if self._credential.registry_token:
            if sent is _Sent.REGISTRY_TOKEN:
                return
            request.headers["Authorization"] = f"Bearer {self._credential.registry_token}"
            yield request
            return
        scopes = merge_scopes(needed, challenge.scopes)
        if grants(scopes) != grants(needed):
            self._learned[requested_grants] = scopes
        # What was asked for, less the optional scopes known to be refused.
        key = self._key(self._usable(scopes, optional) if optional.optional else scopes)
        if isinstance(sent, Token) and key.grants <= sent.grants:
            # The token should have been enough: the registry no longer accepts it.
            self._tokens.discard(key, sent)
        token = await self._token(challenge, scopes, optional)
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    # -- helpers -----------------------------------------------------------------------------

    def _targets_registry(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the registry's origin: the only requests given credentials."""
        raw = (url.raw_scheme, url.raw_host, url.port)
        known = self._origins.get(raw)
        if known is None:
            known = Origin.of(url) == self._origin
            if len(self._origins) < _MEMO_ENTRIES:
                self._origins[raw] = known
        return known

    def _scopes_of(
        self, request: httpx.Request
    ) -> tuple[tuple[str, ...], frozenset[Grant], OptionalScopes]:
        """The scopes ``request`` asks for (its own and the optional ones, merged), their
        grants, and what of them is optional; remembered per explicit scope set (a request
        without one has its scopes inferred from its path, each time)."""
        ext = request.extensions
        explicit = ext.get(SCOPES)
        key = (explicit, ext.get(OPTIONAL_SCOPES), ext.get(MOUNT_SOURCE))
        cacheable = explicit is not None and all(
            value is None or isinstance(value, str | tuple) for value in key
        )
        found = None
        if cacheable:
            try:
                found = self._needs.get(key)
            except TypeError:  # a tuple of something unhashable: not remembered
                cacheable = False
        if found is None:
            extra, optional = optional_scopes(request)
            requested = merge_scopes(scopes_for_request(request), extra)
            found = (requested, grants(requested), optional)
            if cacheable and len(self._needs) < _MEMO_ENTRIES:
                self._needs[key] = found
        return found

    def _key(self, scopes: tuple[str, ...]) -> TokenKey:
        key = self._keys.get(scopes)
        if key is None:
            key = TokenKey(self.registry, self._credential_key, grants(scopes))
            if len(self._keys) < _MEMO_ENTRIES:
                self._keys[scopes] = key
        return key

    def _basic_header(self) -> str:
        cred = self._credential
        if not (cred.username or cred.password):
            return ""
        raw = f"{cred.username}:{cred.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def _authorize(
        self, request: httpx.Request, needed: tuple[str, ...], optional: OptionalScopes
    ) -> Token | _Sent | None:
        """Attach what the known challenge asks for; returns what was attached."""
        challenge = self._challenge
        if challenge is None or "authorization" in request.headers:
            return None
        if challenge.scheme == "basic":
            header = self._basic_header()
            if not header:
                return None
            request.headers["Authorization"] = header
            return _Sent.BASIC
        if self._credential.registry_token:
            request.headers["Authorization"] = f"Bearer {self._credential.registry_token}"
            return _Sent.REGISTRY_TOKEN
        token = await self._token(challenge, needed, optional)
        request.headers["Authorization"] = f"Bearer {token.value}"
        return token

    def _learn(self, response: httpx.Response) -> Challenge | None:
        challenge = usable_challenge(
            parse_www_authenticate(response.headers.get_list("www-authenticate"))
        )
        if challenge is None:
            log.debug("registry %s answered 401 without a usable challenge", self.registry)
            return None
        if challenge.scheme == "bearer":
            challenge = checked_realm(
                challenge,
                self.registry,
                scheme=self._scheme,
                plain_http=self._plain_http,
            )
        self._challenge = challenge
        self._challenges.remember(self.registry, challenge)
        return challenge

    async def _token(
        self,
        challenge: Challenge,
        scopes: tuple[str, ...],
        optional: OptionalScopes,
    ) -> Token:
        """A token for ``scopes``, less the optional ones known to be refused; when the
        token service refuses a request naming optional scopes, which of them it refuses is
        found out (``_find_refused``) and the token asked for without them."""
        if not optional.optional:
            return await self._cached_token(challenge, scopes)
        while True:
            usable = self._usable(scopes, optional)

            def current(usable: tuple[str, ...] = usable) -> bool:
                return self._usable(scopes, optional) == usable

            try:
                return await self._cached_token(challenge, usable, current)
            except _Stale:
                continue  # a refusal was learnt while this request waited: ask without it
            except Unauthorized as exc:
                asked = optional.optional & grants(usable)
                if exc.operation != _OPERATION or exc.status not in (401, 403) or not asked:
                    raise
                async with self._refused.lock(self.registry, self._credential_key):
                    if current():  # nobody found out meanwhile
                        await self._find_refused(challenge, usable, asked, exc)

    def _usable(self, scopes: tuple[str, ...], optional: OptionalScopes) -> tuple[str, ...]:
        """``scopes`` without the optional grants remembered as refused; ``ScopeRefused``
        when what is refused is the request's own mount source."""
        refused = self._refused.refused(
            self.registry, self._credential_key, optional.optional, self._clock()
        )
        if refused & optional.essential:
            raise self._error(
                ScopeRefused,
                f"the token service of registry {self.registry} refused pull access to the "
                "mount source",
                401,
            )
        return drop_grants(scopes, refused) if refused else scopes

    async def _find_refused(
        self,
        challenge: Challenge,
        scopes: tuple[str, ...],
        asked: frozenset[Grant],
        refusal: Unauthorized,
    ) -> None:
        """The token service refused ``scopes`` (``refusal``); remember which of the optional
        ``asked`` it refuses. Without any of them it must grant a token, else the refusal is
        the credential's and that one is raised. One optional grant is refused by elimination;
        of several, each is asked for alone with the rest."""
        base = drop_grants(scopes, asked)
        # Refused too: the credential's own refusal, raised as such (its message names only
        # the request's own scopes, never another tenant's repositories).
        await self._cached_token(challenge, base)
        refused: set[Grant] = set()
        if len(asked) == 1:
            refused.update(asked)
        else:
            for grant in sorted(asked):
                try:
                    await self._cached_token(challenge, merge_scopes(base, [":".join(grant)]))
                except Unauthorized as exc:
                    if exc.operation != _OPERATION or exc.status not in (401, 403):
                        raise
                    refused.add(grant)
        if not refused:
            # Refused together, granted one by one: nothing to learn, nothing to blame.
            raise self._error(
                Unauthorized,
                f"the token service of registry {self.registry} refused the mount sources' "
                "pull access together and granted each alone",
                refusal.status or 401,
            )
        log.info(
            "token service of registry %s refuses %s for this credential; leaving it out",
            self.registry,
            " ".join(":".join(g) for g in sorted(refused)),
        )
        self._refused.remember(
            self.registry, self._credential_key, frozenset(refused), self._clock()
        )

    async def _cached_token(
        self,
        challenge: Challenge,
        scopes: tuple[str, ...],
        current: Callable[[], bool] | None = None,
    ) -> Token:
        """A cached token for ``scopes``, else a fetched one; when ``current`` says the
        scopes are no longer what to ask for (a waiter behind a refused fetch), ``_Stale``."""
        key = self._key(scopes)

        async def fetch() -> Token:
            if current is not None and not current():
                raise _Stale
            return await self._fetch_token(challenge, scopes, key.grants)

        return await self._tokens.get(key, fetch, clock=self._clock)

    async def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...], token_grants: frozenset[Grant]
    ) -> Token:
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
            request = self._token_client.build_request(
                "POST", realm, data=form, headers=_TOKEN_HEADERS
            )
            status, body = await self._send_token_request(request, None)
            if status in (404, 405):
                # Token services without OAuth2 support: fall back to the Docker GET form.
                status, body = await self._get_token(realm, challenge, scopes, basic)
        else:
            status, body = await self._get_token(realm, challenge, scopes, basic)
        data = self._token_answer(status, body, scopes)
        value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise self._error(
                RegistryError,
                f"the token service of registry {self.registry} answered without a token",
                status,
            )
        refresh = data.get("refresh_token")
        if isinstance(refresh, str) and refresh and self._refresh_token:
            self._refresh_token = refresh
        return Token.from_answer(value, token_grants, data, now=self._clock())

    async def _get_token(
        self,
        realm: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        basic: httpx.BasicAuth | None,
    ) -> tuple[int, bytes]:
        params: list[tuple[str, str | int | float | bool | None]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", scope) for scope in scopes)
        if basic is not None and self._credential.username:
            params.append(("account", self._credential.username))
        request = self._token_client.build_request(
            "GET", realm, params=params, headers=_TOKEN_HEADERS
        )
        return await self._send_token_request(request, basic)

    async def _send_token_request(
        self, request: httpx.Request, basic: httpx.BasicAuth | None
    ) -> tuple[int, bytes]:
        """Send a token request; its status and body, read up to the bound and no further.

        Only a 200's body is used: another answer's is read (so the connection can be reused)
        while it stays within the bound, and dropped.
        """
        limit = MAX_TOKEN_RESPONSE_BYTES
        response = await self._token_client.send(request, auth=basic, stream=True)
        try:
            status = response.status_code
            # A token service that will not stop talking is refused like one that refuses.
            too_big = self._error(
                Unauthorized,
                f"the token service at {_netloc(request.url)} answered more than "
                f"{limit // 1024} KiB",
                status,
            )
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                if status != 200:
                    return status, b""
                raise too_big
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                if status != 200:
                    return status, b""
                # Asked for identity: a compressed answer could inflate past any bound.
                raise self._error(
                    RegistryError,
                    f"the token service of registry {self.registry} answered with a "
                    f"{encoding}-encoded body it was not asked for",
                    status,
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():  # identity: the bytes as sent
                body += chunk
                if len(body) > limit:
                    if status != 200:
                        return status, b""
                    raise too_big
            return status, bytes(body) if status == 200 else b""
        finally:
            await response.aclose()

    def _error(self, kind: type[RegistryError], message: str, status: int) -> RegistryError:
        """A token-service failure with its protocol facts."""
        return kind(message, status=status, operation=_OPERATION, registry=str(self.registry))

    def _token_answer(self, status: int, body: bytes, scopes: tuple[str, ...]) -> dict[str, Any]:
        what = " ".join(scopes) if scopes else "registry access"
        if status in (401, 403):
            if self._credential.anonymous:
                message = f"registry {self.registry} refused anonymous access for {what}"
            else:
                message = f"registry {self.registry} rejected the credentials for {what}"
            raise self._error(Unauthorized, message, status)
        if status == 429:
            raise self._error(
                RateLimited,
                f"the token service of registry {self.registry} is rate limiting requests",
                status,
            )
        if status >= 500:
            raise self._error(
                RegistryUnreachable,
                f"the token service of registry {self.registry} answered {status}",
                status,
            )
        if status != 200:
            raise self._error(
                RegistryError,
                f"the token service of registry {self.registry} answered {status}",
                status,
            )
        try:
            data = load_json(body, "the token answer", error=ValueError)
        except ValueError:
            data = None  # not JSON, or nested deeper than MAX_JSON_DEPTH
        if not isinstance(data, dict):
            raise self._error(
                RegistryError,
                f"the token service of registry {self.registry} answered with something "
                "other than a JSON object",
                status,
            )
        return data


def _netloc(url: httpx.URL) -> str:
    """``scheme://host[:port]`` of a URL, for a message (never its query: it holds scopes)."""
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
