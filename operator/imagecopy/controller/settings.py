"""Operator settings: the environment variables of docs/reference.md §7, read once at start-up.

Invalid values stop the operator at start with one sentence naming the variable: a typo in a
Helm value must not turn into a silently different policy.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..oci.bounds import Bounds, parse_size
from ..oci.egress import HostList, canonical_host
from ..oci.errors import InvalidReference
from ..oci.netguard import DEFAULT_BLOCKED_NETWORKS, parse_blocked_networks
from ..oci.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, Registry

__all__ = ["Settings", "SettingsError", "format_duration", "parse_duration"]


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use."""


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``90s``, ``10m``, ``1h30m``, ``1.5h``); a bare number is
    seconds. Raises ``ValueError`` for anything else."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(f"{text!r} is not a duration like 30s, 10m or 1h30m") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """``300.0`` → ``5m``; ``5400`` → ``1h30m``; ``2.5`` → ``2.5s``."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)


def _items(name: str, value: str) -> tuple[str, ...]:
    """The comma-separated entries of ``value``; an empty entry (``a,,b``) is an error."""
    items = tuple(item.strip() for item in value.split(","))
    if any(not item for item in items):
        raise SettingsError(f"{name}={value!r} has an empty entry")
    return items


@dataclass(frozen=True)
class RegistryPattern:
    """One ``IMAGECOPY_ALLOWED_REGISTRIES`` entry: a host glob and a port, matched apart.

    Host: ``*`` matches any run of characters (dots included); every other character is
    itself (``?`` and ``[`` are not special, except that ``[…]`` is an IPv6 address).
    Port: none written matches a registry written without a port (the scheme's default),
    ``*`` any port written, a number that port only: ``host`` and ``host:*`` together allow
    the host on every port.
    """

    host: re.Pattern[str]
    #: ``None``: no port written; ``"*"``: any; else the port.
    port: int | str | None

    @classmethod
    def parse(cls, text: str) -> RegistryPattern:
        """Parse an entry; ``ValueError`` with the reason when it is not one."""
        entry = text.strip().lower()
        if entry.startswith("["):
            end = entry.find("]")
            host, rest = entry[: end + 1], entry[end + 1 :]
            try:
                if end < 0 or "*" in host:
                    raise ValueError
                host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
            except ValueError:
                raise ValueError(f"{text!r} is not a valid IPv6 address in brackets") from None
            if rest and not rest.startswith(":"):
                raise ValueError(f"{text!r} has text after the IPv6 address")
            port_text: str | None = rest[1:] if rest else None
        else:
            host, sep, after = entry.partition(":")
            port_text = after if sep else None
            try:
                # With each ``*`` standing for one letter, what is left must be a host name.
                Registry.parse(host.replace("*", "x"))
            except InvalidReference:
                raise ValueError(
                    f"{text!r} is not a host glob: letters, digits, '.', '-' and '*' only "
                    "(no character classes)"
                ) from None
        port: int | str | None = None
        if port_text is not None:
            if port_text == "*":
                port = "*"
            elif port_text.isdigit() and 0 < int(port_text) < 65536:
                port = int(port_text)
            else:
                raise ValueError(f"{text!r} has an invalid port: a number or '*'")
        glob = "".join(".*" if char == "*" else re.escape(char) for char in host)
        return cls(re.compile(glob), port)

    def matches(self, host: str, port: int | None) -> bool:
        """Whether the registry ``host`` (lower-case, IPv6 in brackets) on ``port`` matches."""
        if (self.port is None) != (port is None):
            return False
        if isinstance(self.port, int) and self.port != port:
            return False
        return self.host.fullmatch(host) is not None


def _registry_host(registry: Registry) -> str:
    host = canonical_host(registry.host)
    return f"[{host}]" if ":" in host else host


def _duration(name: str, raw: str) -> float:
    """``raw`` parsed as a duration; a malformed one is the setting's error."""
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _timeout(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration of at least 1 s; unset → ``default``. Every copy has a deadline, so
    there is no "off"."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = _duration(name, raw)
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1s")
    return value


#: Kopf refreshes a peering entry 5-10 s before it expires: a shorter lifetime would leave
#: no margin for a slow keep-alive PATCH (the standby would take over from a live replica).
MIN_PEERING_LIFETIME = 10


def _peering_lifetime(env: Mapping[str, str]) -> int:
    """``IMAGECOPY_PEERING_LIFETIME``: whole seconds ≥ 10 (Kopf counts whole seconds)."""
    name, raw = "IMAGECOPY_PEERING_LIFETIME", env.get("IMAGECOPY_PEERING_LIFETIME", "").strip()
    if not raw:
        return 15
    value = _duration(name, raw)
    if value < MIN_PEERING_LIFETIME:
        raise SettingsError(f"{name}={raw!r} must be at least {MIN_PEERING_LIFETIME}s")
    return int(value)


def _refusal_ttl(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration of at least 1 s, or ``0``/``0s``/``off`` (remember nothing); unset →
    ``default``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("0", "0s", "off"):
        return 0.0
    value = _duration(name, raw)
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1s, or 0 to remember nothing")
    if value > 86400:
        raise SettingsError(f"{name}={raw!r} must be at most 24h")
    return value


@dataclass(frozen=True)
class Settings:
    #: Registries a spec may name: ``HOST[:PORT]`` globs (``RegistryPattern``).
    allowed_registries: tuple[str, ...] = ("*",)
    _patterns: tuple[RegistryPattern, ...] = field(init=False, repr=False, compare=False)
    #: Exact ``host`` or ``host:port`` entries reached over plain HTTP.
    plain_http_registries: frozenset[str] = frozenset()
    #: Exact ``host`` or ``host:port`` entries reached over TLS without verification.
    insecure_registries: frozenset[str] = frozenset()
    #: CIDRs never connected to (registry, token realm, redirect target, upload location).
    blocked_networks: tuple[str, ...] = DEFAULT_BLOCKED_NETWORKS
    #: Copies moving blob bytes at once (the transfer slots, ``slots``).
    max_concurrent_copies: int = 4
    #: Copies running at once, planning, HEADs, mounts and manifest pushes included; at
    #: least ``max_concurrent_copies``.
    max_copies_in_flight: int = 8
    blob_concurrency: int = 8
    #: Seconds between re-checks of objects that set no ``spec.interval``; None: never.
    default_interval: float | None = None
    #: Seconds between retries of a Stalled object.
    stalled_retry: float = 300.0
    #: ``/metrics`` port; 0 turns the endpoint off.
    metrics_port: int = 8080
    #: Transient failures back off from ``retry_base`` doubling up to ``retry_max`` seconds.
    retry_base: float = 2.0
    retry_max: float = 300.0
    #: Seconds one copy may run before it is cancelled (``CopyTimeout``).
    copy_timeout: float = 1800.0
    #: Seconds a copy may go without progress before it is cancelled (``CopyTimeout``).
    stall_timeout: float = 120.0
    #: Seconds to open a connection to a registry (TCP and TLS).
    connect_timeout: float = 10.0
    #: Seconds one read or write of a request may wait for the network.
    read_timeout: float = 60.0
    #: Copy slots one namespace may hold; None: one less than ``max_concurrent_copies``
    #: (at least 1), so one slot is always left for the other namespaces.
    max_copies_per_namespace: int | None = None
    #: The image-graph limits of every copy (``IMAGECOPY_MAX_INDEX_CHILDREN`` …).
    bounds: Bounds = field(default_factory=Bounds)
    #: Seconds between ``status.progress`` writes of a running copy (``progress``).
    progress_interval: float = 10.0
    #: Seconds a replica's Kopf peering entry stays valid without a keep-alive (with
    #: ``--peering``): a killed active replica is taken over after at most this long.
    peering_lifetime: int = 15
    #: Seconds a registry's mount refusal is remembered (``copy.refusals``); 0: not at all.
    mount_refusal_ttl: float = 600.0

    @property
    def namespace_copy_slots(self) -> int:
        """Copy slots one namespace may hold at once."""
        if self.max_copies_per_namespace is None:
            return max(1, self.max_concurrent_copies - 1)
        return min(self.max_copies_per_namespace, self.max_concurrent_copies)

    @property
    def copies_in_flight(self) -> int:
        """Copies running at once (never fewer than the transfer slots)."""
        return max(self.max_copies_in_flight, self.max_concurrent_copies)

    @property
    def namespace_copies_in_flight(self) -> int:
        """Copies one namespace may have running at once: the copies in flight less the
        reserve the transfer slots keep for the other namespaces (one by default)."""
        reserve = self.max_concurrent_copies - self.namespace_copy_slots
        return max(1, self.copies_in_flight - reserve)

    def __post_init__(self) -> None:
        try:
            patterns = tuple(RegistryPattern.parse(p) for p in self.allowed_registries)
        except ValueError as exc:
            raise SettingsError(f"IMAGECOPY_ALLOWED_REGISTRIES: {exc}") from None
        object.__setattr__(self, "_patterns", patterns)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def integer(name: str, default: int, minimum: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a whole number") from None
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
            return value

        def duration(name: str, default: float | None) -> float | None:
            raw = env.get(name, "").strip()
            if not raw or raw.lower() in ("none", "off", "0", "0s"):
                return default if not raw else None
            value = _duration(name, raw)
            if value < 1:
                raise SettingsError(f"{name}={raw!r} must be at least 1s")
            return value

        def hosts(name: str) -> frozenset[str]:
            raw = env.get(name, "")
            if not raw.strip():
                return frozenset()  # nothing listed is the safe reading of an empty value
            items = _items(name, raw)
            try:
                HostList.parse(items)
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
            return frozenset(item.lower() for item in items)

        allowed_raw = env.get("IMAGECOPY_ALLOWED_REGISTRIES")
        if allowed_raw is None:
            allowed: tuple[str, ...] = ("*",)
        elif not allowed_raw.strip():
            raise SettingsError(
                "IMAGECOPY_ALLOWED_REGISTRIES is set but empty; set it to * to allow every "
                "registry, or unset it"
            )
        else:
            allowed = tuple(
                item.lower() for item in _items("IMAGECOPY_ALLOWED_REGISTRIES", allowed_raw)
            )
        blocked_raw = env.get("IMAGECOPY_BLOCKED_NETWORKS")
        try:
            blocked = (
                DEFAULT_BLOCKED_NETWORKS
                if blocked_raw is None
                else parse_blocked_networks(blocked_raw)
            )
        except ValueError as exc:
            raise SettingsError(f"IMAGECOPY_BLOCKED_NETWORKS: {exc}") from None

        def size(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = parse_size(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
            if value < 1:
                raise SettingsError(f"{name}={raw!r} must be at least 1 byte")
            return value

        limits = Bounds()
        bounds = Bounds(
            max_index_children=integer(
                "IMAGECOPY_MAX_INDEX_CHILDREN", limits.max_index_children, 1
            ),
            max_index_depth=integer("IMAGECOPY_MAX_INDEX_DEPTH", limits.max_index_depth, 1),
            max_manifests=integer("IMAGECOPY_MAX_MANIFESTS", limits.max_manifests, 1),
            max_manifest_bytes=size("IMAGECOPY_MAX_MANIFEST_BYTES", limits.max_manifest_bytes),
            max_blobs=integer("IMAGECOPY_MAX_BLOBS", limits.max_blobs, 1),
            max_referrers=integer("IMAGECOPY_MAX_REFERRERS", limits.max_referrers, 1),
        )
        stalled = duration("IMAGECOPY_STALLED_RETRY", 300.0)
        return cls(
            bounds=bounds,
            allowed_registries=allowed,
            plain_http_registries=hosts("IMAGECOPY_PLAIN_HTTP_REGISTRIES"),
            insecure_registries=hosts("IMAGECOPY_INSECURE_REGISTRIES"),
            blocked_networks=blocked,
            max_concurrent_copies=integer("IMAGECOPY_MAX_CONCURRENT_COPIES", 4, 1),
            max_copies_in_flight=integer("IMAGECOPY_MAX_COPIES_IN_FLIGHT", 8, 1),
            blob_concurrency=integer("IMAGECOPY_BLOB_CONCURRENCY", 8, 1),
            default_interval=duration("IMAGECOPY_DEFAULT_INTERVAL", None),
            stalled_retry=stalled if stalled is not None else 300.0,
            metrics_port=integer("IMAGECOPY_METRICS_PORT", 8080, 0),
            copy_timeout=_timeout(env, "IMAGECOPY_COPY_TIMEOUT", 1800.0),
            stall_timeout=_timeout(env, "IMAGECOPY_STALL_TIMEOUT", 120.0),
            connect_timeout=_timeout(env, "IMAGECOPY_CONNECT_TIMEOUT", 10.0),
            read_timeout=_timeout(env, "IMAGECOPY_READ_TIMEOUT", 60.0),
            progress_interval=_timeout(env, "IMAGECOPY_PROGRESS_INTERVAL", 10.0),
            peering_lifetime=_peering_lifetime(env),
            mount_refusal_ttl=_refusal_ttl(env, "IMAGECOPY_MOUNT_REFUSAL_TTL", 600.0),
            max_copies_per_namespace=(
                integer("IMAGECOPY_MAX_COPIES_PER_NAMESPACE", 1, 1)
                if env.get("IMAGECOPY_MAX_COPIES_PER_NAMESPACE", "").strip()
                else None
            ),
        )

    def registry_allowed(self, registry: Registry | str) -> bool:
        """Whether ``registry`` matches an allowed entry, host and port apart
        (``RegistryPattern``).

        Any Docker Hub alias in the list allows Docker Hub. A string is parsed first
        (``InvalidReference`` when it is not ``host[:port]``).
        """
        if isinstance(registry, str):
            registry = Registry.parse(registry)
        names = {_registry_host(registry)}
        if registry.port is None and registry.host == DOCKER_HUB:
            names |= DOCKER_HUB_ALIASES
        return any(
            pattern.matches(name, registry.port) for pattern in self._patterns for name in names
        )
