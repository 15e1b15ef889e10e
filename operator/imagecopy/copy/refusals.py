"""Registries that recently refused our mounts, remembered process-wide for a while.

A registry that will not mount for a credential (401/403/405 or another refusal) answers the
same way to the next blob and the next copy: asking again costs one request per blob and per
copy for nothing. A 202 for a blob the source repository is known to hold is noted too (status
202): on one registry the copies that follow HEAD each blob before its mount, whose 202 then
opens the upload's session (no request wasted, a mount never missed). The
memory is keyed by destination registry and credential (its keyed fingerprint, never the
secret), so another tenant's credential is still asked. Across registries, a refused
candidate (``from`` repository) is remembered on its own: the others are still tried.

A registry that *did* mount for a credential is noted as well (``mounted``): the copies that
follow send their mounts at once instead of one probe first (``copy.mounts``), so only the
first copy per registry, credential and period pays the probe's round trip. With
``probe=False`` (the CLI: one copy per process, so every run would be a first copy and pay it)
a registry counts as having mounted until it refuses: the first copy sends its mounts in one
wave too. Its cost is on the refusing side: a registry that answers 401/403/404/405 gets one
refused request per blob in flight instead of one (all at once, so no round trip more); one
that answers 202 opens each blob's upload session with it, as it would after the probe.

An entry lasts ``ttl`` seconds (``IMAGECOPY_MOUNT_REFUSAL_TTL``), after which one mount is
asked again; at most ``limit`` entries are held (the oldest go first). ``ttl`` 0 turns the
memory off.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["DEFAULT_TTL", "MountRefusals", "RememberedRefusal"]

#: Seconds a refusal is remembered by default (``IMAGECOPY_MOUNT_REFUSAL_TTL``).
DEFAULT_TTL = 600.0
#: Entries held at most.
DEFAULT_LIMIT = 4096

_Key = tuple[str, str, str]


@dataclass(frozen=True)
class RememberedRefusal:
    """A refusal on record: the status the registry answered, and until when it is believed."""

    status: int
    #: Monotonic deadline (what expiry compares with).
    expires: float
    #: The same deadline as a UTC time (what the user reads).
    until: datetime

    @property
    def until_text(self) -> str:
        return self.until.strftime("%Y-%m-%dT%H:%M:%SZ")

    def sentence(self) -> str:
        """``mount.reason`` when mounts were skipped because of this entry."""
        return (
            f"registry refused cross-repository mounts recently ({self.status}); "
            f"not asked again until {self.until_text}"
        )


class MountRefusals:
    """Bounded, expiring memory of mount refusals per (registry, credential[, source])."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        probe: bool = True,
    ) -> None:
        self.ttl = max(0.0, ttl)
        #: False: ``mounted`` holds for a registry that has not refused (no probe first).
        self.probe = probe
        self.limit = max(1, limit)
        self._clock = clock
        self._now = now
        self._entries: OrderedDict[_Key, RememberedRefusal] = OrderedDict()
        #: (registry, credential) → monotonic deadline: mounts worked recently.
        self._mounted: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def registry(self, registry: str, credential: str) -> RememberedRefusal | None:
        """The registry-wide refusal on record for this credential, if it still holds."""
        return self._get((registry, credential, ""))

    def source(self, registry: str, credential: str, source: str) -> RememberedRefusal | None:
        """The refusal on record for mounts from ``source`` (a repository path)."""
        return self._get((registry, credential, source))

    def remember_registry(self, registry: str, credential: str, status: int) -> None:
        self._mounted.pop((registry, credential), None)
        self._put((registry, credential, ""), status)

    def mounted(self, registry: str, credential: str) -> bool:
        """Whether the registry linked a blob with a mount for this credential this period
        (with ``probe=False``: whether it did not refuse one)."""
        if not self.probe:
            return self.registry(registry, credential) is None
        key = (registry, credential)
        expires = self._mounted.get(key)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._mounted[key]
            return False
        return True

    def remember_mounted(self, registry: str, credential: str) -> None:
        if self.ttl <= 0:
            return
        key = (registry, credential)
        self._mounted[key] = self._clock() + self.ttl
        self._mounted.move_to_end(key)
        while len(self._mounted) > self.limit:
            self._mounted.popitem(last=False)

    def remember_source(self, registry: str, credential: str, source: str, status: int) -> None:
        if source:
            self._put((registry, credential, source), status)

    def _get(self, key: _Key) -> RememberedRefusal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        return entry

    def _put(self, key: _Key, status: int) -> None:
        if self.ttl <= 0:
            return
        existing = self._get(key)
        if existing is not None and (existing.status != 202 or status == 202):
            return  # the first refusal of the period sets its end (a refusal outranks a 202)
        entry = RememberedRefusal(
            status=status,
            expires=self._clock() + self.ttl,
            until=self._now() + timedelta(seconds=self.ttl),
        )
        self._entries[key] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
