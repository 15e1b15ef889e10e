"""Platform filtering: a new index holding only the wanted platforms of a source index."""

from __future__ import annotations

import json

from ..oci.descriptor import Descriptor, Manifest, parse_manifest
from ..oci.digest import compute_digest
from ..oci.errors import InvalidSpec
from ..oci.reference import Platform

__all__ = ["filter_platforms"]


def _platform_name(desc: Descriptor) -> str:
    platform = desc.platform or {}
    parts = (platform.get("os"), platform.get("architecture"), platform.get("variant"))
    return "/".join(str(p) for p in parts if p)


def filter_platforms(index: Manifest, platforms: tuple[Platform, ...], where: str) -> Manifest:
    """A new index holding only the wanted platforms and the attestations that belong to
    them; ``index`` itself (same bytes, same digest) when nothing is filtered out."""
    descs = list(index.manifests)
    kept_digests = {
        desc.digest
        for desc in descs
        if not desc.is_attestation
        and desc.platform
        and any(p.matches(desc.platform) for p in platforms)
    }
    if not kept_digests:
        available = sorted(
            {_platform_name(d) for d in descs if d.platform and not d.is_attestation}
        )
        wanted = ", ".join(str(p) for p in platforms)
        raise InvalidSpec(
            f"{where} has none of the requested platforms ({wanted}); "
            f"it has {', '.join(available) or 'none'}"
        )
    entries = index.json.get("manifests") or []
    kept = [
        entry
        for desc, entry in zip(descs, entries, strict=True)
        if desc.digest in kept_digests or (desc.is_attestation and desc.attests in kept_digests)
    ]
    if len(kept) == len(entries):
        return index  # nothing filtered: keep the source bytes and digest
    obj = dict(index.json)
    obj["manifests"] = kept
    data = json.dumps(obj, separators=(",", ":")).encode()
    return parse_manifest(data, index.media_type, f"filtered {where}", compute_digest(data))
