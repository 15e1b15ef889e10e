"""The process-wide registry pool and the per-copy session.

`RegistryPool` owns what outlives one copy: the HTTP connection pool, the transport stack
(retries, request counting, the egress rule, the bound on redirect bodies, TLS per host, the
network guard in the connection layer), and the auth caches (challenges
per registry, bearer tokens per registry *and credential*). A `Session` binds one copy's
credentials, request counter and retry budget to the pool and hands out
`RepositoryClient`s (``oci.repository``).

Registry requests do not go through ``httpx.AsyncClient.send``: the pool builds each
``httpx.Request`` itself (the client's headers and timeout merged once, the URL parsed once)
and ``RegistryPool.send`` answers the auth flow over the transport stack directly. That is
``AsyncClient.send`` less what a registry request never needs and every request paid for
(bench/README.md: client CPU per request): cookie persistence, event hooks, the redirect
bookkeeping of a request that follows none, the timing wrapper around each body. Requests
that follow redirects (blob HEAD and GET) and token requests still use ``pool.http``, whose
cookie jar stores nothing, so no registry request carries a cookie either way.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

import httpx

from .auth import (
    MOUNT_SOURCE,
    OPTIONAL_SCOPES,
    SCOPES,
    ChallengeCache,
    RefusedScopes,
    RegistryAuth,
    TokenCache,
)
from .bounds import RedirectBodyLimit
from .connections import PoolTransport
from .credentials import CredentialStore
from .egress import EgressTransport
from .errors import Side
from .netguard import NetworkGuard, Resolver, system_resolver
from .reference import Reference, Registry
from .repository import RepositoryClient
from .retry import RetryBudget
from .transport import (
    BUDGET,
    STATS,
    CountingTransport,
    RequestStats,
    RetryTransport,
    TransportSettings,
    budget_for,
    stats_for,
)

__all__ = ["RegistryPool", "RequestListener", "Session", "TransportSettings"]

USER_AGENT = "imagecopy/0.1"

#: Headers of every request (httpx's client defaults, with ours): identity, because a
#: compressed answer could inflate past any read bound (oci.bounds).
_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "identity",
    "Connection": "keep-alive",
    "User-Agent": USER_AGENT,
}


class _NoCookies(http.cookiejar.CookiePolicy):
    """Stores no cookie and sends none: registry clients keep no cookies (nor do docker,
    containerd or go-containerregistry), and a jar would be one more thing a registry's
    answer could plant into later requests."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = False

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


#: Called with ``(registry, method, code)`` for every request, e.g. a Prometheus counter.
RequestListener = Callable[[str, str, str], None]


# The copy whose request is being sent. Token requests made by the auth flow on its behalf
# carry no extensions of their own but run in the same task, so they count for it too.
_CURRENT: ContextVar[Session | None] = ContextVar("imagecopy_session", default=None)


def _stats_for(request: httpx.Request) -> RequestStats | None:
    stats = stats_for(request)
    if stats is None and (session := _CURRENT.get()) is not None:
        return session.stats
    return stats


def _budget_for(request: httpx.Request) -> RetryBudget | None:
    budget = budget_for(request)
    if budget is None and (session := _CURRENT.get()) is not None:
        return session.budget
    return budget


#: Bytes of an answer the auth flow replaces with another request (a 401) read so that its
#: connection can be reused; past this the connection is dropped instead.
MAX_AUTH_BODY_BYTES = 64 * 1024


async def _drain(response: httpx.Response) -> None:
    """Read what is left of ``response``'s body, at most ``MAX_AUTH_BODY_BYTES``, and close
    it (an unfinished answer closes its connection instead of returning it to the pool)."""
    seen = 0
    try:
        if not response.is_stream_consumed:
            async for chunk in response.aiter_raw():
                seen += len(chunk)
                if seen > MAX_AUTH_BODY_BYTES:
                    break
    finally:
        await response.aclose()


class RegistryPool:
    """One HTTP connection pool for every registry; shared by all copies of a process.

    ``transport`` replaces the network at the bottom of the stack (tests inject
    ``httpx.MockTransport`` or a recording transport); retries, counting and the egress rule
    still wrap it, but the network guard lives in the connection layer it replaces.
    ``resolver`` replaces the system resolver the guard asks (tests map names to loopback).
    ``on_request`` hears of every request of every session.
    """

    def __init__(
        self,
        settings: TransportSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = system_resolver,
        on_request: RequestListener | None = None,
    ) -> None:
        self.settings = settings or TransportSettings()
        self._on_request = on_request
        #: Clean-ups (upload sessions being cancelled) that outlived the task that started
        #: them; each is bounded by its own timeout, and ``aclose`` waits for them.
        self._cleanups: set[asyncio.Future[None]] = set()
        ca_file = self.settings.ca_file

        def verified_context() -> ssl.SSLContext:
            context = httpx.create_ssl_context()  # the system/certifi trust store
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
            return context

        #: Vets every address a connection is opened to (registry, realm, redirect, upload).
        self.guard = NetworkGuard(self.settings.blocked_networks, resolver=resolver)
        network = transport or PoolTransport(
            verified_context,
            max_connections=self.settings.max_connections,
            http2=self.settings.http2,
            guard=self.guard,
            skip_verify=self.settings.egress.skips_verification,
        )
        timeout = httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout)
        #: The ``timeout`` extension of every request the pool builds.
        self.timeout = timeout.as_dict()
        #: The transport stack every request goes through, ``http``'s and ``send``'s alike.
        self.transport = self._stack(network)
        #: For token requests and requests that follow redirects.
        self.http = httpx.AsyncClient(
            transport=self.transport,
            timeout=timeout,
            headers=_HEADERS,
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            follow_redirects=False,
        )
        self._closed = False
        #: Auth challenges seen per registry (not secret), shared by every session.
        self.challenges = ChallengeCache()
        #: Bearer tokens per registry and credential, shared by sessions of one credential.
        self.tokens = TokenCache()
        #: Mount sources' scopes token services refused, per registry and credential.
        self.refused_scopes = RefusedScopes()

    def _stack(self, network: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return RetryTransport(
            CountingTransport(
                EgressTransport(RedirectBodyLimit(network), self.settings.egress), _stats_for
            ),
            self.settings.retry,
            find_budget=_budget_for,
        )

    def session(self, credentials: CredentialStore | None = None) -> Session:
        session = Session(self, credentials or CredentialStore())
        if self._on_request is not None:
            session.stats.listeners.append(self._on_request)
        return session

    def track_cleanup(self, task: asyncio.Future[None]) -> None:
        """Keep ``task`` (a bounded clean-up) until it ends; ``aclose`` waits for it, so a
        session being cancelled is not cut off by the client closing under it."""
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def build_request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
        extensions: dict[str, Any],
    ) -> httpx.Request:
        """What ``http.build_request`` would build (the same headers, URL, body and
        timeout), with the URL parsed once and no header or cookie merging."""
        merged: Mapping[str, str] | list[tuple[str, str]] = _HEADERS
        if headers:
            # As httpx merges them: a request's header replaces the default of that name and
            # goes after the defaults, as written.
            own = {name.lower() for name in headers}
            merged = [(k, v) for k, v in _HEADERS.items() if k.lower() not in own]
            merged.extend(headers.items())
        if params and isinstance(url, str) and "?" not in url:
            # httpx would parse the URL, then parse it again with the query added; the query
            # is encoded as httpx encodes it (urlencode).
            url = f"{url}?{urlencode(params)}"
            params = None
        extensions["timeout"] = self.timeout
        return httpx.Request(
            method, url, params=params, headers=merged, content=content, extensions=extensions
        )

    async def send(
        self, request: httpx.Request, auth: httpx.Auth, *, stream: bool = False
    ) -> httpx.Response:
        """Send ``request`` through the transport stack, following no redirect, answering
        ``auth``'s flow as ``httpx.AsyncClient.send`` does (a response the flow answers with
        another request is read, at most ``MAX_AUTH_BODY_BYTES``, and closed)."""
        if self._closed:
            raise RuntimeError("the registry pool is closed")
        request.extensions.setdefault("timeout", self.timeout)
        flow = auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
            while True:
                response = await self.transport.handle_async_request(request)
                response.request = request
                try:
                    try:
                        request = await flow.asend(response)
                    except StopAsyncIteration:
                        break
                    await _drain(response)
                except BaseException:
                    await response.aclose()
                    raise
        finally:
            await flow.aclose()
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def aclose(self) -> None:
        if self._cleanups:
            await asyncio.wait(set(self._cleanups))
        self._closed = True
        await self.http.aclose()

    async def __aenter__(self) -> RegistryPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Session:
    """One copy's view of the pool: its credentials, auth, request count and retry budget."""

    def __init__(self, pool: RegistryPool, credentials: CredentialStore) -> None:
        self.pool = pool
        self.credentials = credentials
        self.stats = RequestStats()
        self.budget = pool.settings.retry.new_budget()
        self._auth: dict[Registry, RegistryAuth] = {}

    @property
    def settings(self) -> TransportSettings:
        return self.pool.settings

    def track_cleanup(self, task: asyncio.Future[None]) -> None:
        self.pool.track_cleanup(task)

    def auth(self, registry: Registry) -> RegistryAuth:
        auth = self._auth.get(registry)
        if auth is None:
            settings = self.pool.settings
            auth = RegistryAuth(
                registry,
                self.credentials.get(registry),
                token_client=self.pool.http,
                tokens=self.pool.tokens,
                challenges=self.pool.challenges,
                scheme=settings.scheme(registry),
                plain_http=settings.egress.plain_http,
                refused=self.pool.refused_scopes,
            )
            self._auth[registry] = auth
        return auth

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        scopes: tuple[str, ...],
        optional_scopes: tuple[str, ...] = (),
        mount_source: str | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """A request of this copy: counted in its stats, retried from its budget, its token
        asking for ``scopes`` and, unless the token service refuses them, ``optional_scopes``
        and ``mount_source`` (a mount request's source ``pull``)."""
        extensions: dict[str, object] = {SCOPES: scopes, STATS: self.stats, BUDGET: self.budget}
        if optional_scopes:
            extensions[OPTIONAL_SCOPES] = optional_scopes
        if mount_source:
            extensions[MOUNT_SOURCE] = mount_source
        return self.pool.build_request(
            method, url, headers=headers, content=content, params=params, extensions=extensions
        )

    async def send(
        self,
        request: httpx.Request,
        registry: Registry,
        *,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send ``request`` with ``registry``'s auth; token requests the auth flow makes on
        the way count for this copy too."""
        entered = _CURRENT.set(self)
        try:
            if not follow_redirects:
                return await self.pool.send(request, self.auth(registry), stream=stream)
            return await self.pool.http.send(
                request, auth=self.auth(registry), stream=stream, follow_redirects=True
            )
        finally:
            _CURRENT.reset(entered)

    def repository(
        self,
        ref: Reference,
        side: Side,
        scopes: Sequence[str] | None = None,
        *,
        optional_scopes: Sequence[str] = (),
        manifest_slots: asyncio.Semaphore | None = None,
    ) -> RepositoryClient:
        """A client for ``ref``'s repository. ``scopes`` (built with ``Repository.scope``)
        are what its token asks for; default: pull on the repository itself.
        ``optional_scopes`` (mount sources) are asked for too unless refused.
        ``manifest_slots`` bounds its manifest requests in flight (shared across clients)."""
        return RepositoryClient(
            self,
            ref.repo,
            side,
            tuple(scopes or (ref.scope("pull"),)),
            optional_scopes=tuple(optional_scopes),
            manifest_slots=manifest_slots,
        )
