"""HTTP transport wrappers: retries with backoff, and per-copy request accounting.

This module owns the ``httpx.AsyncBaseTransport`` layers under the registry client, composed
in ``oci.pool`` as ``RetryTransport(CountingTransport(EgressTransport(connections)))`` (the network
guard runs inside the connection layer, on the address actually connected to) so every attempt
that reaches the network is counted once. Neither layer knows about registries beyond the
URL. Retries follow ``oci.retry``: at most ``RetryPolicy.attempts`` tries of one request,
each retry paid from the copy's ``RetryBudget`` (``request.extensions[BUDGET]``).

Only a request a repeat cannot harm is sent again: an idempotent method with a replayable
body, or any request that provably never left this host (a connect error). POST (upload
start, mount, the refresh-token POST) and PATCH (upload chunks) are otherwise sent once; the
blob layer (``oci.blobs``) starts such an upload over from a fresh session instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from .egress import EgressRule
from .netguard import DEFAULT_BLOCKED_NETWORKS
from .reference import Registry
from .retry import RetryBudget, RetryPolicy, parse_retry_after

__all__ = [
    "BUDGET",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "STATS",
    "CountingTransport",
    "RequestStats",
    "RetryTransport",
    "TransportSettings",
    "budget_for",
    "registry_of",
    "request_is_replayable",
    "stats_for",
]

log = logging.getLogger(__name__)

#: Key in ``request.extensions`` holding the ``RequestStats`` the request is counted in.
STATS = "imagecopy.stats"
#: Key in ``request.extensions`` holding the ``RetryBudget`` its retries are paid from.
BUDGET = "imagecopy.retry-budget"
#: Statuses worth another try of the same request.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Methods a repeat cannot change the outcome of (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

# Failures before the request left this host: safe to repeat for any method.
_NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
# Failures after the request may have been processed: safe only for idempotent methods.
_MAYBE_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ReadError, httpx.RemoteProtocolError)


def request_is_replayable(request: httpx.Request) -> bool:
    """Whether the request body can be sent again: no body, or an in-memory byte body.

    Bodies built from (async) iterators are consumed by the first attempt.
    """
    return isinstance(request.stream, httpx.ByteStream)


def registry_of(url: httpx.URL) -> str:
    """``host[:port]`` of a URL, the registry label used for accounting."""
    host = url.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return host if url.port is None else f"{host}:{url.port}"


def budget_for(request: httpx.Request) -> RetryBudget | None:
    """The ``RetryBudget`` stored under ``BUDGET`` in the request's extensions, if any."""
    budget = request.extensions.get(BUDGET)
    return budget if isinstance(budget, RetryBudget) else None


class RetryTransport(httpx.AsyncBaseTransport):
    """Repeats requests that failed in a way another try can fix, when a repeat is safe.

    Retried, always only when the body is replayable: connect errors (any method: nothing was
    sent); read errors, protocol errors and the statuses in ``RETRY_STATUSES`` for the
    ``IDEMPOTENT_METHODS`` only. A POST or PATCH answered 5xx may have been acted on (a
    session opened, a chunk appended), so it is returned as it is. Waits ``Retry-After`` when
    given, else exponential backoff with full jitter. The last response is returned, or the
    last exception raised.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        find_budget: Callable[[httpx.Request], RetryBudget | None] = budget_for,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._find_budget = find_budget

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        replayable = request_is_replayable(request)
        idempotent = request.method.upper() in IDEMPOTENT_METHODS
        attempts = max(self.policy.attempts, 1)
        budget = self._find_budget(request)
        backoff = self.policy.backoff
        for attempt in range(1, attempts + 1):
            # A retry is possible only while tries and the copy's budget last.
            last = attempt == attempts or (budget is not None and budget.remaining <= 0)
            try:
                response = await self.inner.handle_async_request(request)
            except _NOT_SENT_ERRORS as exc:
                if last or not replayable:
                    raise
                delay = backoff.delay(attempt, self._rng)
                reason = type(exc).__name__
            except _MAYBE_SENT_ERRORS as exc:
                if last or not replayable or not idempotent:
                    raise
                delay = backoff.delay(attempt, self._rng)
                reason = type(exc).__name__
            else:
                retry_status = response.status_code in RETRY_STATUSES
                if last or not replayable or not idempotent or not retry_status:
                    return response
                asked = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
                delay = backoff.delay(attempt, self._rng, retry_after=asked)
                reason = str(response.status_code)
                await response.aclose()
            if budget is not None:
                budget.spend()
            log.debug(
                "retrying %s %s after %s in %.2fs (attempt %d of %d)",
                request.method,
                registry_of(request.url),
                reason,
                delay,
                attempt + 1,
                attempts,
            )
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class RequestStats:
    """Counts of HTTP requests by ``(registry, method, code)``; one per copy."""

    #: Called with ``(registry, method, code)`` on each record, e.g. a Prometheus counter.
    listeners: list[Callable[[str, str, str], None]] = field(default_factory=list)
    _counts: Counter[tuple[str, str, str]] = field(default_factory=Counter, init=False, repr=False)

    def record(self, registry: str, method: str, code: str) -> None:
        self._counts[(registry, method, code)] += 1
        for listener in self.listeners:
            try:
                listener(registry, method, code)
            except Exception:
                # Accounting must never fail a copy.
                log.exception("request stats listener failed")

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def by_key(self) -> dict[tuple[str, str, str], int]:
        return dict(self._counts)


def stats_for(request: httpx.Request) -> RequestStats | None:
    """The ``RequestStats`` stored under ``STATS`` in the request's extensions, if any."""
    stats = request.extensions.get(STATS)
    return stats if isinstance(stats, RequestStats) else None


class CountingTransport(httpx.AsyncBaseTransport):
    """Records every request it sends in the ``RequestStats`` ``stats_for`` picks for it.

    The code is the status as text, or ``"error"`` when no response came back. Looking the
    stats up per request lets concurrent copies share one connection pool.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        stats_for: Callable[[httpx.Request], RequestStats | None] = stats_for,
    ) -> None:
        self.inner = inner
        self._stats_for = stats_for

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stats = self._stats_for(request)
        try:
            response = await self.inner.handle_async_request(request)
        except Exception:
            if stats is not None:
                stats.record(registry_of(request.url), request.method, "error")
            raise
        if stats is not None:
            stats.record(registry_of(request.url), request.method, str(response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True)
class TransportSettings:
    """How to reach registries: schemes, TLS trust, the network guard, retries, limits.
    Read once at start.

    ``plain_http`` and ``insecure`` list exact ``host`` or ``host:port`` entries (no
    wildcards; ``oci.egress.HostList``): ``plain_http`` hosts are spoken to over plain HTTP,
    ``insecure`` hosts over TLS without certificate verification — never plain HTTP. An
    entry without a port covers every port of the host. ``blocked_networks`` are CIDRs never
    connected to (``oci.netguard``); the default is ``DEFAULT_BLOCKED_NETWORKS``. Invalid
    entries raise ``ValueError``.
    """

    plain_http: frozenset[str] = frozenset()
    insecure: frozenset[str] = frozenset()
    ca_file: str | None = None
    blocked_networks: tuple[str, ...] = DEFAULT_BLOCKED_NETWORKS
    #: Seconds one read or write of a request may wait for the network (the read timeout):
    #: a stalled response fails after this, a slow trickle that keeps moving never does.
    timeout: float = 60.0
    #: Seconds to open a connection (TCP and TLS handshake).
    connect_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: A copy's 32 mounts and 16 manifest requests in flight together
    #: (``CopyOptions.connections``), or 8 parallel GET→PUT streams. Assigning a request walks
    #: the pool (``oci.connections``), so a much bigger pool costs CPU per request.
    max_connections: int = 48
    http2: bool = False
    #: The egress rule the two host lists make (derived, validated at construction).
    egress: EgressRule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "egress", EgressRule.from_entries(self.plain_http, self.insecure))
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        for cidr in self.blocked_networks:
            ipaddress.ip_network(cidr, strict=False)  # ValueError for a non-network

    def scheme(self, registry: Registry) -> str:
        return self.egress.scheme(registry)
