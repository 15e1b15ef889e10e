"""Referrers: manifests whose ``subject`` names another (signatures, SBOMs, attestations).

Two ways to find and publish them (OCI distribution spec 1.1): the referrers API
(``GET /v2/<name>/referrers/<digest>``, and a registry that indexes a pushed manifest's
``subject`` answers its PUT with ``OCI-Subject``), and the fallback *tag schema*: an image
index at tag ``<alg>-<hex>`` listing the referrers, which the pusher maintains itself.

Pushing a manifest with a ``subject``: an ``OCI-Subject`` answer means the registry indexed
it. Without one (go-containerregistry has the API but never sends the header) the referrers
API is asked once: when it lists what was pushed, the registry indexed it and no tag schema
index is written; only a registry without the API (404, 400, 405, 406, a redirect: remembered
per repository client, so asked once) or one that did not list the push gets the tag schema.
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


async def find_referrers(
    repo: RepositoryClient, subject: str, artifact_type: str | None = None
) -> Referrers:
    """The referrers of ``subject`` (only those of ``artifact_type`` when given): the
    referrers API, else the tag schema index. A repository whose registry already showed it
    lacks the API (``repo.referrers_api is False``) is not asked again: on GHCR every ask is
    a redirect to a rate-limited API."""
    listed = None
    if repo.referrers_api is not False:
        listed = await repo.list_referrers(subject, artifact_type)
    if listed is not None:
        return Referrers(listed, True)
    tagged = await repo.get_manifest(referrers_tag(subject), missing_ok=True)
    if tagged is None or not tagged.is_index:
        return Referrers((), False)
    found = tagged.manifests
    if artifact_type is not None:
        found = tuple(d for d in found if d.artifact_type == artifact_type)
    return Referrers(found, False)


async def _indexed_by_api(repo: RepositoryClient, subject: str, digests: set[str]) -> bool:
    """Whether the registry's referrers API lists every one of ``digests`` for ``subject``
    (a push answered without ``OCI-Subject``); False at once for a registry known to lack
    the API."""
    if repo.referrers_api is False:
        return False
    listed = await repo.list_referrers(subject)
    return listed is not None and digests <= {d.digest for d in listed}


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
    subject = manifest.subject
    if subject is None or "OCI-Subject" in headers:
        return
    if not await _indexed_by_api(repo, subject.digest, {manifest.digest}):
        await _add_to_tag_index(repo, subject.digest, [referrer_descriptor(manifest)])


async def push_referrers(repo: RepositoryClient, items: Sequence[tuple[Manifest, str]]) -> int:
    """Push each ``(manifest, subject digest)`` by digest, in order, and keep the tag
    schema index of every subject whose push was not answered with ``OCI-Subject`` and that
    the referrers API does not list (the registry then has no referrers API): one read and
    one write of each such index. Returns the number of manifests pushed."""
    unindexed: dict[str, list[Descriptor]] = {}
    for manifest, subject in items:
        headers = await repo.put_manifest(manifest.digest, manifest)
        if "OCI-Subject" not in headers:
            unindexed.setdefault(subject, []).append(referrer_descriptor(manifest))
    for subject, descs in unindexed.items():
        if not await _indexed_by_api(repo, subject, {d.digest for d in descs}):
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
