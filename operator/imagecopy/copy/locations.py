"""A bounded index of which repositories hold which blobs on which registry, per tenant.

Every copy feeds it; later copies into the same registry use it as mount candidates, which
turns a cross-registry copy of a base image already seen elsewhere into a mount.

Partitions: each entry belongs to one partition (the operator uses the copy's namespace), and
a copy is offered only the repositories remembered in its own partition. One tenant's
repositories are never mount candidates for another: a candidate leaks that the repository
exists and holds the blob, and on Docker Hub-like token services a scope the credential may
not pull fails the whole token request. A copy within one registry still mounts from its
own source, which is not a remembered location.

Keys: a blob is indexed by its short key (``blob_key``: the first 16 hex digits of a sha256
digest), which is what ``status.lastCopy.largestBlobs`` records so the index can be rebuilt
after a restart (``controller.memory``). Two blobs sharing a key within one partition and
registry can only cost one mount the registry refuses; the blob is then uploaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from ..oci.reference import Registry

__all__ = ["KEY_HEX_DIGITS", "BlobLocations", "blob_key"]

#: Hex digits of a sha256 digest kept as its key (64 bits).
KEY_HEX_DIGITS = 16

_SHA256 = "sha256:"


def blob_key(digest: str) -> str:
    """The index key of ``digest``: 16 hex digits for sha256, the whole digest otherwise.

    A value that is already a key (no algorithm prefix) is returned as it is.
    """
    if digest.startswith(_SHA256):
        return digest[len(_SHA256) : len(_SHA256) + KEY_HEX_DIGITS]
    return digest


def _index_key(digest: str) -> int | str:
    """The key as held in memory: a 64-bit int for sha256 (36 bytes, not a 65-byte str)."""
    key = blob_key(digest)
    if len(key) == KEY_HEX_DIGITS:
        try:
            return int(key, 16)
        except ValueError:
            pass
    return key


class BlobLocations:
    """At most ``max_blobs`` (partition, registry, blob) entries, least recently fed out
    first, each naming at most ``max_repositories_per_blob`` repositories (newest last).

    About 250 bytes per entry (``bench/memory_startup.py``): 25 MiB when full."""

    def __init__(self, max_blobs: int = 100_000, max_repositories_per_blob: int = 8) -> None:
        self._max_blobs = max_blobs
        self._max_repos = max_repositories_per_blob
        # A tuple per entry, not a dict: at most 8 repositories, and a third of the memory.
        self._index: OrderedDict[tuple[str, Registry, int | str], tuple[str, ...]] = OrderedDict()

    def add(self, registry: Registry, digest: str, repository: str, *, partition: str = "") -> None:
        """Remember that ``repository`` on ``registry`` holds ``digest`` (a digest or a key)."""
        key = (partition, registry, _index_key(digest))
        repos = self._index.get(key)
        if repos is None:
            self._index[key] = (repository,)
        else:
            self._index.move_to_end(key)
            if repos[-1] != repository:
                kept = tuple(r for r in repos if r != repository)
                self._index[key] = (*kept[len(kept) + 1 - self._max_repos :], repository)
        while len(self._index) > self._max_blobs:
            self._index.popitem(last=False)

    def add_many(
        self, registry: Registry, digests: Iterable[str], repository: str, *, partition: str = ""
    ) -> None:
        for digest in digests:
            self.add(registry, digest, repository, partition=partition)

    def candidates(
        self,
        registry: Registry,
        digest: str,
        exclude: Iterable[str] = (),
        limit: int = 3,
        *,
        partition: str = "",
    ) -> list[str]:
        """Repositories on ``registry`` seen holding ``digest`` in ``partition``, newest first."""
        repos = self._index.get((partition, registry, _index_key(digest)))
        if not repos:
            return []
        skip = set(exclude)
        return [r for r in reversed(repos) if r not in skip][:limit]

    def __len__(self) -> int:
        return len(self._index)
