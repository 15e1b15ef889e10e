"""The blob memory: the operator-wide blob-location index, rebuilt from the objects' status.

Where the memory lives (README "Blob memory", docs/reference.md §2): every successful copy
records the keys of its largest blobs in ``status.lastCopy.largestBlobs`` (at most 64, 16 hex
digits each: about 1.2 KiB per object). At start-up, and when a standby takes over, Kopf
lists every ``ImageCopy`` anyway; its index handler hands each object to ``BlobMemory``,
which feeds ``copy.BlobLocations`` with (namespace, registry, repository, keys) before that
object's own handlers run. Rebuilding costs no registry request and no API request beyond
the listing the operator makes in any case.

The partition is the namespace: a copy is offered only repositories that copies of its own
namespace wrote (or read), never another tenant's.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from ..copy.engine import MEMORY_BLOBS
from ..copy.locations import KEY_HEX_DIGITS, BlobLocations
from ..oci.errors import InvalidReference
from ..oci.reference import Reference

__all__ = ["SEEN_OBJECTS", "BlobMemory"]

#: Objects whose last copy is remembered as already fed.
SEEN_OBJECTS = 50_000

log = logging.getLogger("imagecopy.controller")

_KEY = re.compile(rf"[0-9a-f]{{{KEY_HEX_DIGITS}}}")


class BlobMemory:
    """Feeds ``locations`` from ``ImageCopy`` bodies; each recorded copy is read once."""

    def __init__(self, locations: BlobLocations) -> None:
        self.locations = locations
        # uid -> the lastCopy.startTime already fed: the watch delivers every status patch,
        # and a re-check that copied nothing leaves lastCopy as it was. Bounded: a deleted
        # object's entry ages out (what its copies left at the registry stays remembered).
        self._seen: OrderedDict[str, str] = OrderedDict()

    def observe(self, body: Mapping[str, Any]) -> int:
        """Remember the blobs ``body``'s last copy left at its destination (and its source,
        while the spec is the one that copy was made for); returns the keys fed."""
        meta = _mapping(body.get("metadata"))
        status = _mapping(body.get("status"))
        last = _mapping(status.get("lastCopy"))
        uid, started = str(meta.get("uid") or ""), str(last.get("startTime") or "")
        if uid and self._seen.get(uid) == started:
            return 0  # checked before the keys: most events are status patches of a re-check
        keys = _keys(last.get("largestBlobs"))
        if not keys:
            return 0
        namespace = str(meta.get("namespace") or "")
        repositories = []
        destination = _reference(status.get("destinationImage"))
        if destination is not None:
            repositories.append(destination)
        if status.get("observedGeneration") == meta.get("generation"):
            source = _reference(_mapping(_mapping(body.get("spec")).get("source")).get("image"))
            if source is not None:
                repositories.append(source)
        for ref in repositories:
            self.locations.add_many(ref.registry, keys, ref.repository, partition=namespace)
        if uid:
            self._seen[uid] = started
            self._seen.move_to_end(uid)
            while len(self._seen) > SEEN_OBJECTS:
                self._seen.popitem(last=False)
        return len(keys) if repositories else 0

    def rebuild(self, bodies: Iterable[Mapping[str, Any]]) -> int:
        """Feed every body (a listing); returns the keys fed."""
        return sum(self.observe(body) for body in bodies)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _keys(value: Any) -> list[str]:
    """Well-formed keys only (a status edited by hand is not trusted), at most 64."""
    if not isinstance(value, list):
        return []
    return [k for k in value[:MEMORY_BLOBS] if isinstance(k, str) and _KEY.fullmatch(k)]


def _reference(value: Any) -> Reference | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return Reference.parse(value, default_tag=None)
    except InvalidReference:
        log.debug("blob memory: %r is not an image reference; ignored", value)
        return None
