"""Where to mount each blob from, and when to stop asking: the copy's mount policy.

- One registry (mount-first): the source repository is the one candidate and it is asked
  without a HEAD first; any refusal means this registry will not mount for us, so the rest
  of the copy checks and uploads instead.
- Across registries: after a HEAD, the explicit ``mount_from`` repositories, then the ones
  the process has seen holding the digest on the destination registry (newest first, at
  most ``REMEMBERED``); only a registry that does not mount at all stops the tries.
- Remembered refusals (``copy.refusals``): a registry that refused is not asked again by any
  copy with the same credential until the memory expires; a refused ``from`` repository is
  skipped likewise. One that answered 202 on one registry (for a blob the source holds) is
  still asked, after a HEAD: its 202 opens the upload's session, so the mount costs nothing.
- One probe first: until the first blob with mount candidates has its answer, the other
  blobs wait, so a refusing registry costs one refused mount, not one per blob in flight.
  Once a registry mounted for the credential (``MountRefusals.mounted``), the copies that
  follow in the period skip the probe: their mounts go out in one wave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..oci.blobs import BlobOutcome, BlobPlacement
from ..oci.reference import Reference, Repository
from ..oci.repository import MountRefusal
from .locations import BlobLocations
from .refusals import MountRefusals, RememberedRefusal

__all__ = ["REMEMBERED", "MountRoute", "MountStrategy"]

log = logging.getLogger("imagecopy.copy")

#: Remembered repositories tried per blob.
REMEMBERED = 3


@dataclass(frozen=True)
class MountRoute:
    """How to make one blob present: the mount candidates, and whether to HEAD first."""

    mount_from: tuple[Repository, ...]
    check_first: bool


class MountStrategy:
    def __init__(
        self,
        source: Reference,
        destination: Reference,
        *,
        enabled: bool,
        mount_from: Iterable[str],
        locations: BlobLocations,
        partition: str = "",
        refusals: MountRefusals | None = None,
        credential: str = "",
    ) -> None:
        self.source = source.repo
        self.destination = destination.repo
        self.same_registry = source.registry == destination.registry
        self.enabled = enabled
        self._locations = locations
        self._partition = partition
        self._refusals = refusals
        self._credential = credential
        self._registry = str(destination.registry)
        #: A remembered refusal that kept this copy from asking for a mount: the registry's,
        #: or the first ``from`` repository's left out.
        self.skipped: RememberedRefusal | None = None
        self._probing = False
        self._settled = asyncio.Event()
        #: One registry: HEAD before the mount (set once the registry answered a mount from
        #: the source with 202, which then opens the upload's session at no extra cost).
        self.heads_first = False
        if enabled and refusals is not None:
            remembered = refusals.registry(self._registry, credential)
            if remembered is not None and remembered.status != 202:
                self.enabled = False
                self.skipped = remembered
            elif remembered is not None:
                self.heads_first = self.same_registry
            elif refusals.mounted(self._registry, credential):
                self._settled.set()  # mounts worked lately: no probe, the first wave goes out
        exclude = {self.destination.path}
        if self.same_registry:
            exclude.add(self.source.path)
        self._explicit: list[Repository] = []
        for path in mount_from:
            if path not in exclude and all(r.path != path for r in self._explicit):
                self._explicit.append(self.destination.registry.repository(path))

    @property
    def explicit(self) -> tuple[Repository, ...]:
        """The ``mount_from`` repositories (their pull scope goes into the first token)."""
        return tuple(self._explicit)

    def route(self, digest: str) -> MountRoute:
        if not self.enabled:
            return MountRoute((), True)
        if self.same_registry:
            return MountRoute((self.source,), self.heads_first)
        return MountRoute(self.candidates(digest), True)

    async def next_route(self, digest: str) -> tuple[MountRoute, bool]:
        """``route``, after the probe's answer when one is out; and whether this blob is the
        probe (its caller then calls ``settle`` however the blob ends)."""
        route = self.route(digest)
        if self._settled.is_set() or not route.mount_from:
            return route, False
        if not self._probing:
            self._probing = True
            return route, True
        await self._settled.wait()
        return self.route(digest), False

    def settle(self) -> None:
        """The probe has its answer (or failed): the blobs waiting for it go on."""
        self._settled.set()

    def candidates(self, digest: str) -> tuple[Repository, ...]:
        registry = self.destination.registry
        exclude = {self.destination.path, *(r.path for r in self._explicit)}
        remembered = self._locations.candidates(
            registry, digest, exclude=exclude, limit=REMEMBERED, partition=self._partition
        )
        found = (*self._explicit, *(registry.repository(path) for path in remembered))
        if self._refusals is None:
            return found
        kept = tuple(
            repo
            for repo in found
            if self._refusals.source(self._registry, self._credential, repo.path) is None
        )
        if len(kept) < len(found) and self.skipped is None:
            first = next(r for r in found if r not in kept)
            self.skipped = self._refusals.source(self._registry, self._credential, first.path)
        return kept

    def learn(self, placement: BlobPlacement) -> None:
        """Take note of the refusals a blob met; stop mounting when they say it is futile,
        and remember that for the copies that follow."""
        # Refusals end a try each, a 202 or a failure ends the tries: the refusals that sent a
        # request line up with the first statuses of ``declined``. A candidate whose pull the
        # token service refused sent none: it is remembered on its own (the token request is
        # not made again), never as the registry's refusal.
        if placement.outcome is BlobOutcome.MOUNTED and self._refusals is not None:
            self._refusals.remember_mounted(self._registry, self._credential)
        statuses = iter(placement.declined)
        for source, refusal in placement.refusals:
            if refusal is MountRefusal.TOKEN_REFUSED:
                if self._refusals is not None:
                    self._refusals.remember_source(
                        self._registry, self._credential, source.path, 401
                    )
                continue
            status = next(statuses, 0)
            if self.same_registry or refusal in _REGISTRY_WIDE:
                self._stop(status, f"refused a mount from {source.path} ({refusal.value})")
            elif self._refusals is not None:
                self._refusals.remember_source(
                    self._registry, self._credential, source.path, status
                )
        if (
            self.same_registry
            and placement.outcome is not BlobOutcome.MOUNTED
            and not placement.refusals
            and placement.declined[:1] == (202,)
        ):
            # The source holds the blob, yet the registry opened a session instead: look for
            # each blob first; the mount then opens the upload's session, costing nothing.
            if self._refusals is not None:
                self._refusals.remember_registry(self._registry, self._credential, 202)
            if not self.heads_first:
                log.info(
                    "registry %s answered 202 to a mount from %s; looking for blobs first",
                    self._registry,
                    self.source.path,
                )
                self.heads_first = True

    def _stop(self, status: int, what: str) -> None:
        if self._refusals is not None:
            self._refusals.remember_registry(self._registry, self._credential, status)
        if self.enabled:
            log.info("registry %s %s; uploading for the rest of this copy", self._registry, what)
            self.enabled = False


#: Refusals that say the registry will not mount for us at all, whatever the source.
_REGISTRY_WIDE = frozenset({MountRefusal.UNSUPPORTED, MountRefusal.NONCOMPLIANT})
