"""A transport wrapper that refuses to contact blocked networks (link-local, cloud metadata).

Every outgoing request — registry, token realm, or a redirect to blob storage — passes
through it, so a hostile reference or redirect cannot reach an address the operator must
never talk to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpx

from .errors import RegistryNotAllowed

__all__ = ["DEFAULT_BLOCKED_NETWORKS", "NetworkGuardTransport", "parse_networks"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_BLOCKED_NETWORKS = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
)


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(i.strip(), strict=False) for i in items if i.strip())


class NetworkGuardTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, blocked: tuple[IPNetwork, ...]) -> None:
        self._inner = inner
        self._blocked = blocked
        self._cache: dict[str, bool] = {}

    async def _allowed(self, host: str) -> bool:
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        try:
            addresses = {ipaddress.ip_address(host.strip("[]"))}
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                return True  # let the real connect report the DNS failure
            addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        ok = not any(addr in net for addr in addresses for net in self._blocked)
        self._cache[host] = ok
        return ok

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._blocked and not await self._allowed(request.url.host):
            raise RegistryNotAllowed(
                f"{request.url.host} resolves to a blocked network and is never contacted"
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
