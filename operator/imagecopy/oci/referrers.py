"""Referrers: manifests whose ``subject`` names another (signatures, SBOMs, attestations).

Two ways to find and publish them (OCI distribution spec 1.1): the referrers API
(``GET /v2/<name>/referrers/<digest>``, and a registry that indexes a pushed manifest's
``subject`` answers its PUT with ``OCI-Subject``), and the fallback *tag schema*: an image
index at tag ``<alg>-<hex>`` listing the referrers, which the pusher maintains itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from . import mediatypes as mt
from .descriptor import Descriptor, Manifest, parse_manifest
from .repository import RepositoryClient

__all__ = [
    "Referrers",
    "find_referrers",
    "push_manifest",
    "push_referrers",
    "referrer_descriptor",
    "referrers_tag",
]


def referrers_tag(digest: str) -> str:
    """The tag of the referrers tag schema: ``<alg>-<ref>``, the algorithm cut to 32 and the
    encoded part to 64 characters (distribution spec 1.1), so a sha512 digest still makes a
    valid tag (at most 128 characters)."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm[:32]}-{encoded[:64]}"


@dataclass(frozen=True)
class Referrers:
    """The referrers of one subject, and whether the registry's referrers API said so."""

    descriptors: tuple[Descriptor, ...]
    from_api: bool


async def find_referrers(repo: RepositoryClient, subject: str) -> Referrers:
    """The referrers of ``subject``: the referrers API, else the tag schema index."""
    index = await repo.get_referrers_index(subject)
    if index is not None:
        return Referrers(index.manifests, True)
    tagged = await repo.get_manifest(referrers_tag(subject), missing_ok=True)
    if tagged is None or not tagged.is_index:
        return Referrers((), False)
    return Referrers(tagged.manifests, False)


def referrer_descriptor(manifest: Manifest) -> Descriptor:
    """The descriptor a referrers index lists for ``manifest`` (with its artifact type,
    falling back to the config media type, and its annotations)."""
    obj: dict[str, object] = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.size,
    }
    artifact_type = manifest.artifact_type
    if artifact_type is None and not manifest.is_index:
        config = manifest.json.get("config")
        if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
            artifact_type = config["mediaType"]
    if artifact_type:
        obj["artifactType"] = artifact_type
    annotations = manifest.json.get("annotations")
    if isinstance(annotations, dict) and annotations:
        obj["annotations"] = annotations
    return Descriptor.from_json(obj, "referrer")


async def push_manifest(repo: RepositoryClient, reference: str, manifest: Manifest) -> None:
    """Push ``manifest`` at ``reference``; one with a ``subject`` is also listed in its
    subject's tag schema index when the registry did not index it (no ``OCI-Subject``)."""
    headers = await repo.put_manifest(reference, manifest)
    if manifest.subject is not None and "OCI-Subject" not in headers:
        await _add_to_tag_index(repo, manifest.subject.digest, [referrer_descriptor(manifest)])


async def push_referrers(repo: RepositoryClient, items: Sequence[tuple[Manifest, str]]) -> int:
    """Push each ``(manifest, subject digest)`` by digest, in order, and keep the tag
    schema index of every subject whose push was not answered with ``OCI-Subject`` (the
    registry then has no referrers API): one read and one write of each such index.
    Returns the number of manifests pushed."""
    unindexed: dict[str, list[Descriptor]] = {}
    for manifest, subject in items:
        headers = await repo.put_manifest(manifest.digest, manifest)
        if "OCI-Subject" not in headers:
            unindexed.setdefault(subject, []).append(referrer_descriptor(manifest))
    for subject, descs in unindexed.items():
        await _add_to_tag_index(repo, subject, descs)
    return len(items)


async def _add_to_tag_index(
    repo: RepositoryClient, subject: str, descs: Sequence[Descriptor]
) -> None:
    tag = referrers_tag(subject)
    current = await repo.get_manifest(tag, missing_ok=True)
    entries: list[dict[str, object]] = []
    known: set[str] = set()
    if current is not None and current.is_index:
        for desc in current.manifests:
            entries.append(desc.to_json())
            known.add(desc.digest)
    added = [d for d in descs if d.digest not in known]
    if not added:
        return
    entries.extend(d.to_json() for d in added)
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries},
        separators=(",", ":"),
    ).encode()
    await repo.put_manifest(tag, parse_manifest(body, mt.OCI_INDEX, f"referrers index {tag}"))
