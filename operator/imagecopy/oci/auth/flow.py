"""``RegistryAuth``: the registry auth protocol as an ``httpx.Auth`` flow.

Answers Basic and Bearer challenges for one registry with one credential: fetches bearer
tokens from the realm (GET with Basic credentials, or the OAuth2 refresh-token POST for
identity tokens) and maps token-service failures to errors. It never opens sockets itself:
registry requests go through the flow, token requests through the caller's ``token_client``.
Tokens and challenges live in the caches the caller owns (``tokens.py``).
"""

from __future__ import annotations

import base64
import enum
import json
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
from imagecopy.oci.auth.scopes import Grant, grants, merge_scopes, scopes_for_request
from imagecopy.oci.auth.tokens import ChallengeCache, Token, TokenCache, TokenKey
from imagecopy.oci.credentials import Credential
from imagecopy.oci.errors import RateLimited, RegistryError, RegistryUnreachable, Unauthorized
from imagecopy.oci.reference import Registry
from imagecopy.oci.transport import request_is_replayable

__all__ = ["CLIENT_ID", "RegistryAuth"]

log = logging.getLogger(__name__)

#: ``client_id`` sent with OAuth2 token requests.
CLIENT_ID = "imagecopy"

_OPERATION = "token request"


class _Sent(enum.Enum):
    """Authorization attached to a request other than a fetched token."""

    BASIC = "basic"
    REGISTRY_TOKEN = "registry token"


class RegistryAuth(httpx.Auth):
    """Answers registry challenges for one registry with one credential.

    Once a challenge is known, every request to the registry carries authorization before it
    is sent (a cached token, or one fetched once per key by ``tokens``), so steady-state
    requests cost no 401 round trip. A 401 is answered once with a fresh token; a second 401
    is returned. Requests to other hosts (redirects, foreign upload locations) pass through
    untouched.
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
        allow_insecure_realm: bool = False,
        clock: Callable[[], float] = time.monotonic,
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
        self._scheme = scheme
        self._address = registry.address(scheme)
        self._allow_insecure_realm = allow_insecure_realm
        self._clock = clock
        self._challenge: Challenge | None = challenges.get(registry)
        # Scopes a registry's challenge added to a request's own, remembered so the next
        # request with the same needs asks for them up front instead of paying a 401.
        self._learned: dict[frozenset[Grant], tuple[str, ...]] = {}
        self._refresh_token = credential.identity_token
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
        requested = scopes_for_request(request)
        needed = self._learned.get(grants(requested), requested)
        sent = await self._authorize(request, needed)
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
            self._learned[grants(requested)] = scopes
        key = self._key(scopes)
        if isinstance(sent, Token) and key.grants <= sent.grants:
            # The token should have been enough: the registry no longer accepts it.
            self._tokens.discard(key, sent)
        token = await self._token(challenge, scopes)
        request.headers["Authorization"] = f"Bearer {token.value}"
        yield request

    # -- helpers -----------------------------------------------------------------------------

    def _targets_registry(self, url: httpx.URL) -> bool:
        port = url.port or (443 if url.scheme == "https" else 80)
        return (url.host.lower(), port) == self._address

    def _key(self, scopes: tuple[str, ...]) -> TokenKey:
        return TokenKey(self.registry, self._credential_key, grants(scopes))

    def _basic_header(self) -> str:
        cred = self._credential
        if not (cred.username or cred.password):
            return ""
        raw = f"{cred.username}:{cred.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def _authorize(
        self, request: httpx.Request, needed: tuple[str, ...]
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
        token = await self._token(challenge, needed)
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
                allow_insecure=self._allow_insecure_realm,
            )
        self._challenge = challenge
        self._challenges.remember(self.registry, challenge)
        return challenge

    async def _token(self, challenge: Challenge, scopes: tuple[str, ...]) -> Token:
        key = self._key(scopes)

        async def fetch() -> Token:
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
            response = await self._token_client.post(realm, data=form)
            if response.status_code in (404, 405):
                # Token services without OAuth2 support: fall back to the Docker GET form.
                response = await self._get_token(realm, challenge, scopes, basic)
        else:
            response = await self._get_token(realm, challenge, scopes, basic)
        data = self._token_answer(response, scopes)
        value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise self._error(
                RegistryError,
                f"the token service of registry {self.registry} answered without a token",
                response.status_code,
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
    ) -> httpx.Response:
        params: list[tuple[str, str | int | float | bool | None]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", scope) for scope in scopes)
        if basic is not None and self._credential.username:
            params.append(("account", self._credential.username))
        return await self._token_client.get(realm, params=params, auth=basic)

    def _error(self, kind: type[RegistryError], message: str, status: int) -> RegistryError:
        """A token-service failure with its protocol facts."""
        return kind(message, status=status, operation=_OPERATION, registry=str(self.registry))

    def _token_answer(self, response: httpx.Response, scopes: tuple[str, ...]) -> dict[str, Any]:
        status = response.status_code
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
            data = json.loads(response.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self._error(
                RegistryError,
                f"the token service of registry {self.registry} answered with something "
                "other than a JSON object",
                status,
            )
        return data
