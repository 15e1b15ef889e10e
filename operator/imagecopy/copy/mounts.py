"""Where to mount each blob from, and when to stop asking: the copy's mount policy.

- One registry (mount-first): the source repository is the one candidate and it is asked
  without a HEAD first; any refusal means this registry will not mount for us, so the rest
  of the copy checks and uploads instead.
- Across registries: after a HEAD, the explicit ``mount_from`` repositories, then the ones
  the process has seen holding the digest on the destination registry (newest first, at
  most ``REMEMBERED``); only a registry that does not mount at all stops the tries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..oci.blobs import BlobPlacement
from ..oci.reference import Reference, Repository
from ..oci.repository import MountRefusal
from .locations import BlobLocations

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
    ) -> None:
        self.source = source.repo
        self.destination = destination.repo
        self.same_registry = source.registry == destination.registry
        self.enabled = enabled
        self._locations = locations
        self._partition = partition
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
            return MountRoute((self.source,), False)
        return MountRoute(self.candidates(digest), True)

    def candidates(self, digest: str) -> tuple[Repository, ...]:
        registry = self.destination.registry
        exclude = {self.destination.path, *(r.path for r in self._explicit)}
        remembered = self._locations.candidates(
            registry, digest, exclude=exclude, limit=REMEMBERED, partition=self._partition
        )
        return (*self._explicit, *(registry.repository(path) for path in remembered))

    def learn(self, placement: BlobPlacement) -> None:
        """Take note of the refusals a blob met; stop mounting when they say it is futile."""
        for source, refusal in placement.refusals:
            if self.enabled and (self.same_registry or refusal is MountRefusal.UNSUPPORTED):
                log.info(
                    "registry %s refused a mount from %s (%s); uploading for the rest of this copy",
                    self.destination.registry,
                    source.path,
                    refusal.value,
                )
                self.enabled = False
