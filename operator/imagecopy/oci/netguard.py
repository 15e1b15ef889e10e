"""The network guard: the addresses the registry client may open a connection to.

This module owns the blocked-network list (its default and its one parser, shared by the
operator's ``IMAGECOPY_BLOCKED_NETWORKS`` and the CLI's ``--blocked-network``) and the check
of an address against it. ``oci.connections`` asks ``NetworkGuard.resolve`` for the addresses
of a host once per new connection and connects only to what it returns, so the address
checked is the address connected to: a name that resolves differently on a second lookup
(DNS rebinding) cannot slip past, and no verdict is cached (the pool reuses a connection
instead). Every request goes through that connection layer — registry, token realm,
redirect hop, upload location — so all of them are guarded alike.

IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, the NAT64 well-known prefix ``64:ff9b::/96``, 6to4 and Teredo) are checked as
that IPv4 address too: the kernel or a gateway would deliver them there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

from .errors import RegistryNotAllowed

__all__ = [
    "DEFAULT_BLOCKED_NETWORKS",
    "IPAddress",
    "IPNetwork",
    "NetworkGuard",
    "ResolutionFailed",
    "Resolver",
    "checked_addresses",
    "embedded_ipv4",
    "parse_blocked_networks",
    "system_resolver",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Link-local IPv4 (cloud metadata at 169.254.169.254) and IPv6, the AWS IPv6 metadata
#: address and Alibaba Cloud's metadata address.
DEFAULT_BLOCKED_NETWORKS = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
)

#: Resolves ``(host, port)`` to the address strings a TCP connection may be opened to.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class ResolutionFailed(OSError):
    """A host name gave no address to connect to; the connection is not attempted."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The system resolver (``getaddrinfo``), addresses in its order, duplicates dropped."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_blocked_networks(text: str) -> tuple[str, ...]:
    """The networks a comma-separated setting names, canonical and deduplicated.

    ``none`` (alone) blocks nothing; ``default`` stands for ``DEFAULT_BLOCKED_NETWORKS`` (so
    ``default,10.0.0.0/8`` adds to it); anything else is a CIDR or a single address. An empty
    value or entry raises ``ValueError``: an empty setting must not silently turn the guard
    off.
    """
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("is empty; name CIDRs, 'default', or 'none' to block nothing")
    if any(not item for item in items):
        raise ValueError(f"{text.strip()!r} has an empty entry")
    lowered = [item.lower() for item in items]
    if "none" in lowered:
        if len(items) > 1:
            raise ValueError("'none' cannot be combined with networks")
        return ()
    networks: list[str] = []
    for item, low in zip(items, lowered, strict=True):
        if low == "default":
            networks.extend(DEFAULT_BLOCKED_NETWORKS)
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR like 169.254.0.0/16") from None
    return tuple(dict.fromkeys(networks))


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4,
    Teredo client), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        # ``::`` and ``::1`` are IPv6's own unspecified and loopback addresses.
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def checked_addresses(address: IPAddress) -> tuple[IPAddress, ...]:
    """The address itself and the IPv4 address it embeds: each must be allowed."""
    embedded = embedded_ipv4(address)
    return (address,) if embedded is None else (address, embedded)


def _parse_address(text: str) -> IPAddress:
    # getaddrinfo reports link-local IPv6 with its zone (``fe80::1%eth0``).
    return ipaddress.ip_address(text.split("%", 1)[0])


class NetworkGuard:
    """Resolves a host once and vets every address against the blocked networks.

    ``resolver`` is the system resolver unless a test injects another.
    """

    def __init__(
        self,
        blocked: Iterable[str | IPNetwork] = DEFAULT_BLOCKED_NETWORKS,
        *,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.blocked: tuple[IPNetwork, ...] = tuple(
            n
            if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
            # ``strict=False``: settings already canonicalised; programmatic callers may not.
            else ipaddress.ip_network(n, strict=False)
            for n in blocked
        )
        self._resolver = resolver

    def __repr__(self) -> str:
        return f"NetworkGuard(blocked={[str(n) for n in self.blocked]!r})"

    def blocked_network(self, address: IPAddress) -> IPNetwork | None:
        """The blocked network ``address`` (or the IPv4 address it embeds) lies in."""
        for candidate in checked_addresses(address):
            for network in self.blocked:
                if candidate.version == network.version and candidate in network:
                    return network
        return None

    def check(self, host: str, address: str) -> None:
        """Raise ``RegistryNotAllowed`` when ``address`` (one of ``host``'s) is blocked."""
        parsed = _parse_address(address)
        network = self.blocked_network(parsed)
        if network is None:
            return
        embedded = embedded_ipv4(parsed)
        shown = str(parsed) if embedded is None else f"{parsed} (that is {embedded})"
        if _same_address(host, parsed):
            raise RegistryNotAllowed(
                f"{shown} is in the blocked network {network} and is never contacted"
            )
        raise RegistryNotAllowed(
            f"{host} resolves to {shown}, in the blocked network {network}; it is never contacted"
        )

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: an address literal as it is, a name
        resolved once. Raises ``RegistryNotAllowed`` when any address is blocked (a name
        that mixes allowed and blocked addresses is refused whole) and
        ``ResolutionFailed`` when the name gives no address."""
        literal = host.strip("[]")
        try:
            _parse_address(literal)
        except ValueError:
            pass
        else:
            self.check(host, literal)
            return [literal]
        try:
            addresses = list(await self._resolver(host, port))
        except ResolutionFailed:
            raise
        except (OSError, UnicodeError) as exc:
            raise ResolutionFailed(f"{host} could not be resolved: {_reason(exc)}") from None
        if not addresses:
            raise ResolutionFailed(f"{host} resolved to no address")
        for address in addresses:
            try:
                self.check(host, address)
            except ValueError:
                raise ResolutionFailed(
                    f"{host} resolved to {address!r}, which is not an IP address"
                ) from None
        return addresses


def _same_address(host: str, address: IPAddress) -> bool:
    try:
        return _parse_address(host.strip("[]")) == address
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
