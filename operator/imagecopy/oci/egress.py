"""The egress rule: in which scheme each host is spoken to, and where credentials may go.

One rule (docs/reference.md §9), decided here and enforced where the request is made:

- **Plain HTTP only to hosts configured for it** (``--plain-http``,
  ``IMAGECOPY_PLAIN_HTTP_REGISTRIES``: exact ``host`` or ``host:port`` entries). Any other
  ``http://`` URL — a registry, a token realm, a redirect hop, an upload ``Location`` — is
  refused before it is sent (``EgressTransport``).
- **TLS is verified** except for hosts configured insecure (``--insecure``,
  ``IMAGECOPY_INSECURE_REGISTRIES``: exact entries too). Insecure never implies plain HTTP.
- **Credentials** (Basic or Bearer) go only to the registry's own origin — scheme, host and
  port (``Origin``; ``RegistryAuth`` compares it) — and to the token realm the registry
  names, which must be HTTPS or a plain-HTTP host configured for it (``realm_refusal``).
- Any other host (a CDN a blob GET is redirected to, an upload ``Location`` on another host)
  is contacted without credentials.
- Every connection, whatever its host, passes the network guard (``oci.netguard``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from .errors import InvalidReference, RegistryNotAllowed
from .reference import Registry

__all__ = ["EgressRule", "EgressTransport", "HostList", "Origin", "canonical_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """A host as compared by the egress rule: lower-case, without brackets, an IP address in
    its compressed form (``[::FFFF:7f00:1]`` and ``::ffff:127.0.0.1`` are one host).

    Memoised: every request asks it of its URL's host (the egress rule, credential origins),
    and parsing an address was 2 % of the operator's CPU in a 1,000-object burst."""
    bare = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        return bare


@dataclass(frozen=True)
class Origin:
    """``(scheme, host, port)``: what a URL must share with a registry to get its
    credentials."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        scheme = url.scheme.lower()
        return cls(scheme, canonical_host(url.host), url.port or _DEFAULT_PORTS.get(scheme, 0))

    @classmethod
    def of_registry(cls, registry: Registry, scheme: str) -> Origin:
        return cls(scheme, canonical_host(registry.host), registry.port_for(scheme))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class HostList:
    """Exact ``host`` or ``host:port`` entries: no wildcards, no patterns.

    An entry without a port covers every port of that host; an entry with a port covers a
    registry written with that port and URLs on that port (``http://h/`` is on port 80).
    """

    entries: frozenset[tuple[str, int | None]] = frozenset()

    @classmethod
    def parse(cls, items: Iterable[str]) -> HostList:
        """Parse entries; ``ValueError`` naming the first that is not ``host[:port]``."""
        entries: set[tuple[str, int | None]] = set()
        for item in items:
            text = item.strip()
            if "*" in text or "?" in text:
                raise ValueError(
                    f"{text!r} is not an exact host or host:port (wildcards are not allowed)"
                )
            try:
                registry = Registry.parse(text)
            except InvalidReference:
                raise ValueError(f"{text!r} is not a host or host:port") from None
            entries.add((canonical_host(registry.host), registry.port))
        return cls(frozenset(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def covers(self, host: str, port: int | None) -> bool:
        """Whether an entry names ``host`` (any spelling of an IP address) on ``port``
        (``None``: a registry written without a port)."""
        name = canonical_host(host)
        return (name, None) in self.entries or (port is not None and (name, port) in self.entries)

    def covers_registry(self, registry: Registry) -> bool:
        return self.covers(registry.host, registry.port)

    def covers_url(self, url: httpx.URL) -> bool:
        return self.covers(url.host, url.port or _DEFAULT_PORTS.get(url.scheme.lower()))

    def __str__(self) -> str:
        shown = sorted(
            (f"[{h}]" if ":" in h else h) + ("" if p is None else f":{p}") for h, p in self.entries
        )
        return ",".join(shown)


@dataclass(frozen=True)
class EgressRule:
    """The plain-HTTP and unverified-TLS host lists, and what they allow."""

    plain_http: HostList = field(default_factory=HostList)
    insecure: HostList = field(default_factory=HostList)

    @classmethod
    def from_entries(cls, plain_http: Iterable[str], insecure: Iterable[str]) -> EgressRule:
        return cls(HostList.parse(plain_http), HostList.parse(insecure))

    def scheme(self, registry: Registry) -> str:
        """``http`` for a registry configured for plain HTTP, else ``https``."""
        return "http" if self.plain_http.covers_registry(registry) else "https"

    def skips_verification(self, host: str, port: int) -> bool:
        """Whether TLS to ``host:port`` is not verified (an insecure entry names it)."""
        return self.insecure.covers(host, port)

    def plain_http_allowed(self, url: httpx.URL) -> bool:
        return url.scheme.lower() != "http" or self.plain_http.covers_url(url)

    def realm_refusal(self, realm: httpx.URL) -> str | None:
        """Why credentials may not be sent to the token ``realm``, or ``None`` when they may:
        an HTTPS realm on any host, a plain-HTTP realm only on a host configured for plain
        HTTP — not merely because the registry itself is."""
        scheme = realm.scheme.lower()
        if scheme == "https":
            return None
        if scheme == "http":
            if self.plain_http.covers_url(realm):
                return None
            return "which is plain HTTP to a host not configured for plain HTTP"
        return "which is neither HTTPS nor plain HTTP"


class EgressTransport(httpx.AsyncBaseTransport):
    """Refuses, before sending, every ``http://`` request to a host not configured for plain
    HTTP, whatever asked for it: a redirect hop, an upload ``Location`` or a token realm
    cannot downgrade a copy to clear text."""

    def __init__(self, inner: httpx.AsyncBaseTransport, rule: EgressRule) -> None:
        self._inner = inner
        self._rule = rule

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._rule.plain_http_allowed(request.url):
            netloc = request.url.netloc.decode("ascii", "replace")
            raise RegistryNotAllowed(
                f"refusing to contact {netloc} over plain HTTP: it is not configured for "
                "plain HTTP (--plain-http, IMAGECOPY_PLAIN_HTTP_REGISTRIES)"
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
