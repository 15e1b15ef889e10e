"""An in-memory, bounded index of which repositories hold which blobs on which registry.

Every copy feeds it; later copies into the same registry use it as mount candidates, which
turns a cross-registry copy of a base image already seen elsewhere into a mount.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from ..oci.reference import Registry

__all__ = ["BlobLocations"]


class BlobLocations:
    def __init__(self, max_blobs: int = 100_000, max_repositories_per_blob: int = 8) -> None:
        self._max_blobs = max_blobs
        self._max_repos = max_repositories_per_blob
        self._index: OrderedDict[tuple[Registry, str], OrderedDict[str, None]] = OrderedDict()

    def add(self, registry: Registry, digest: str, repository: str) -> None:
        key = (registry, digest)
        repos = self._index.get(key)
        if repos is None:
            repos = OrderedDict()
            self._index[key] = repos
        else:
            self._index.move_to_end(key)
        repos[repository] = None
        repos.move_to_end(repository)
        while len(repos) > self._max_repos:
            repos.popitem(last=False)
        while len(self._index) > self._max_blobs:
            self._index.popitem(last=False)

    def add_many(self, registry: Registry, digests: Iterable[str], repository: str) -> None:
        for digest in digests:
            self.add(registry, digest, repository)

    def candidates(
        self, registry: Registry, digest: str, exclude: Iterable[str] = (), limit: int = 3
    ) -> list[str]:
        """Repositories on `registry` seen holding `digest`, newest first."""
        repos = self._index.get((registry, digest))
        if not repos:
            return []
        skip = set(exclude)
        return [r for r in reversed(repos) if r not in skip][:limit]

    def __len__(self) -> int:
        return len(self._index)
