"""Cosign's tag attachments travel with the image: ``sha256-<hex>.sig``, ``.att``, ``.sbom``.

Discovery (``add_attachments``): for every manifest of the plan that is not a referrer (the
root and its children at any depth; a filtered root is skipped: nothing signed it), one GET
per suffix at the source — 404 means none. An attachment that is an index is left alone
(cosign never writes one). Their blobs join the plan's, so they are mounted or uploaded like
any other blob, before the attachment manifest is pushed.

Pushing is by tag, after the image and its referrers (``copy.execute``), with the **merge
rule** (docs/reference.md §4, "Signatures and attachments"):

- the destination tag is absent: push the source's manifest, byte for byte;
- it holds the same digest: nothing to do (one HEAD);
- ``.sig`` and ``.att`` at another digest (signatures or attestations from elsewhere, e.g.
  a promotion signature added at the destination): the **union of layers by digest** —
  the destination's layers first, in their order, then the source's layers it lacks —
  pushed as a new manifest (on the destination's config) once every blob is present; when
  the destination already holds every source layer nothing is written. Nobody's signature
  is dropped, and a rerun converges;
- ``.sbom`` at another digest: the source's manifest replaces it (an SBOM describes the
  image; ``cosign attach sbom`` replaces too, so two SBOMs are never mixed).
"""

from __future__ import annotations

import json

from ..oci.cosign import ATT, ATTACHMENT_SUFFIXES, SIG, attachment_tag
from ..oci.descriptor import Manifest, parse_manifest
from ..oci.repository import RepositoryClient
from .plan import Attachment, Plan
from .tasks import gather_all

__all__ = ["MERGED_SUFFIXES", "add_attachments", "merge_layers"]

#: Attachments whose layers are a set (signatures, attestations): merged, never clobbered.
MERGED_SUFFIXES = (SIG, ATT)


async def add_attachments(source_repo: RepositoryClient, plan: Plan, skip: set[str]) -> None:
    """Add the cosign tag attachments of the plan's image manifests to ``plan``."""
    subjects = [d for d, node in plan.nodes.items() if node.referrer_of is None and d not in skip]
    wanted = [(d, attachment_tag(d, s)) for d in subjects for s in ATTACHMENT_SUFFIXES]
    found = await gather_all(*(source_repo.get_manifest(tag, missing_ok=True) for _, tag in wanted))
    for (subject, tag), manifest in zip(wanted, found, strict=True):
        if manifest is not None and not manifest.is_index:
            plan.attach(Attachment(tag, subject, manifest))


def is_merged(tag: str) -> bool:
    return tag.endswith(MERGED_SUFFIXES)


def merge_layers(current: Manifest, incoming: Manifest) -> Manifest | None:
    """``current`` with the layers of ``incoming`` it lacks appended; None when it lacks
    none (the destination already holds every source signature)."""
    have = {layer.get("digest") for layer in _layers(current)}
    extra = [layer for layer in _layers(incoming) if layer.get("digest") not in have]
    if not extra:
        return None
    obj = dict(current.json)
    obj["layers"] = [*_layers(current), *extra]
    data = json.dumps(obj, separators=(",", ":")).encode()
    return parse_manifest(data, current.media_type, f"merged {current.digest}")


def _layers(manifest: Manifest) -> list[dict[str, object]]:
    layers = manifest.json.get("layers")
    if not isinstance(layers, list):
        return []
    return [layer for layer in layers if isinstance(layer, dict)]
