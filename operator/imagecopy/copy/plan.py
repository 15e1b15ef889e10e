"""Resolve a copy into a plan, reading only: every decision made before the first write.

``make_plan`` checks the destination tags, decides whether the copy is a no-op (two HEADs
when every tag exists; with ``CopyOptions.fetch_source_early`` a HEAD and the source's GET at
once), fetches and filters the root, applies the tag policy (every tag is
checked before anything is written) and walks the source graph: child manifests (fetched
in parallel, level by level) and the unique blobs; ``copy.referrers`` adds the referrer
graphs when asked. The result is either ``Settled`` (nothing to write) or a ``Plan`` that
``copy.execute`` carries out against a destination.

The plan enforces the copy's ``Bounds`` (``oci.bounds``) as it grows, each before the work it
would allow: an index's child list is counted before any child is fetched, the nesting depth
before the next level, the manifests before they are fetched; manifest bytes and blobs as
each manifest joins. Passing one is ``LimitExceeded``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..oci.bounds import Bounds
from ..oci.descriptor import Descriptor, Manifest
from ..oci.errors import DigestMismatch, InvalidSpec, LimitExceeded, Side, TagConflict
from ..oci.reference import Reference
from ..oci.repository import ManifestInfo, RepositoryClient
from .options import CopyOptions, TagPolicy
from .platforms import filter_platforms
from .report import Outcome
from .tasks import gather_all

__all__ = [
    "Attachment",
    "Node",
    "Plan",
    "Settled",
    "destination_reference",
    "fetch_child",
    "make_plan",
]


@dataclass
class Node:
    """A manifest of the graph; ``referrer_of`` is the subject digest of a referrer."""

    manifest: Manifest
    referrer_of: str | None = None


@dataclass(frozen=True)
class Attachment:
    """A cosign tag attachment (``sha256-<hex>.sig``, ``.att``, ``.sbom``) of a node."""

    tag: str
    subject: str
    manifest: Manifest


@dataclass(frozen=True)
class Settled:
    """The destination already is what the spec asks for; nothing will be written."""

    outcome: Outcome
    source_digest: str
    destination_digest: str


@dataclass
class Plan:
    """Everything a copy will write, in the order it will be written."""

    source: Reference
    destination: Reference
    #: The source root's digest (before platform filtering).
    source_digest: str
    #: The manifest pushed as the destination root (filtered when platforms are asked).
    root: Manifest
    #: Tags the root is pushed under, the main one first; empty: by digest only.
    tags: tuple[str, ...]
    #: Every manifest to make present, by digest: the root, its children at any depth, and
    #: the referrer graphs.
    nodes: dict[str, Node] = field(default_factory=dict)
    #: Referrer manifests in discovery order: a subject always precedes its referrers.
    referrers: list[Node] = field(default_factory=list)
    #: Unique blobs of every node (foreign layers excluded: they live at their urls).
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    #: Cosign tag attachments of the nodes (``copy.attachments``), pushed by tag last.
    attachments: list[Attachment] = field(default_factory=list)

    #: The limits the graph must stay within.
    bounds: Bounds = field(default_factory=Bounds)
    #: Bytes of every manifest in ``nodes``.
    manifest_bytes: int = 0

    @property
    def same_repository(self) -> bool:
        return self.source.same_repository(self.destination)

    @property
    def same_registry(self) -> bool:
        return self.source.registry == self.destination.registry

    def add(self, manifest: Manifest, referrer_of: str | None = None) -> Node:
        """Add ``manifest`` (its blobs too); ``LimitExceeded`` past a bound."""
        bounds = self.bounds
        if manifest.digest not in self.nodes:
            self.make_room(1)
            self.manifest_bytes += manifest.size
            if self.manifest_bytes > bounds.max_manifest_bytes:
                raise self.limit(
                    f"the manifests of {self.source} come to more than "
                    f"{bounds.max_manifest_bytes} bytes, more than the limit of "
                    f"{bounds.max_manifest_bytes}"
                )
        node = Node(manifest, referrer_of)
        self.nodes[manifest.digest] = node
        for blob in manifest.blobs:
            if not blob.foreign:
                self.blobs.setdefault(blob.digest, blob)
        if len(self.blobs) > bounds.max_blobs:
            raise self.limit(
                f"{self.source} names more than {bounds.max_blobs} blobs, more than the "
                f"limit of {bounds.max_blobs}"
            )
        return node

    def attach(self, attachment: Attachment) -> None:
        self.attachments.append(attachment)
        for blob in attachment.manifest.blobs:
            if not blob.foreign:
                self.blobs.setdefault(blob.digest, blob)
        if len(self.blobs) > self.bounds.max_blobs:
            raise self.limit(
                f"{self.source} names more than {self.bounds.max_blobs} blobs with its "
                f"signatures and attestations, more than the limit of {self.bounds.max_blobs}"
            )

    def make_room(self, more: int) -> None:
        """``LimitExceeded`` unless ``more`` manifests still fit (checked before fetching)."""
        limit = self.bounds.max_manifests
        if len(self.nodes) + more > limit:
            raise self.limit(
                f"{self.source} has {len(self.nodes) + more} manifests or more (root, children "
                f"and referrers), more than the limit of {limit}"
            )

    def limit(self, message: str) -> LimitExceeded:
        """The error for passing a bound of this plan's (source) graph."""
        return LimitExceeded(
            message, operation="walk graph", side=Side.SOURCE, registry=str(self.source.registry)
        )


def destination_reference(source: Reference, destination: Reference) -> Reference:
    """A destination without tag or digest takes the source's tag."""
    if destination.tag or destination.digest:
        return destination
    if source.tag:
        return destination.with_tag(source.tag)
    return destination


def destination_tags(destination: Reference, options: CopyOptions) -> list[str]:
    tags: list[str] = []
    if destination.tag and not destination.digest:
        tags.append(destination.tag)
    for tag in options.additional_tags:
        if tag not in tags:
            tags.append(tag)
    return tags


def _all_at(existing: Mapping[str, ManifestInfo | None], digest: str) -> bool:
    return all(info is not None and info.digest == digest for info in existing.values())


async def make_plan(
    source_repo: RepositoryClient,
    destination_repo: RepositoryClient,
    src: Reference,
    dst: Reference,
    options: CopyOptions,
) -> Plan | Settled:
    """Resolve ``src`` → ``dst`` (``dst`` already completed by ``destination_reference``)."""
    if not (dst.tag or dst.digest):
        raise InvalidSpec(f"destination {dst} needs a tag or a digest when the source has no tag")
    same_image = src == dst or (src.same_repository(dst) and src.reference == dst.reference)
    if same_image and not options.additional_tags and not options.platforms:
        raise InvalidSpec("source and destination are the same image")

    tags = destination_tags(dst, options)
    src_ref = src.digest or src.tag or "latest"
    # Destination first: when a tag is missing the copy cannot be a no-op, so the source
    # is fetched straight away (no HEAD); when every tag exists, one HEAD of the source
    # decides whether there is anything to do. With ``fetch_source_early`` the source is
    # fetched while the destination is checked: one round trip less for a copy with work
    # to do, a GET instead of a HEAD for a no-op.
    early = (
        asyncio.ensure_future(
            source_repo.get_manifest(src_ref, expected_digest=src.digest, missing_ok=True)
        )
        if options.fetch_source_early
        else None
    )
    try:
        infos = await gather_all(*(destination_repo.head_manifest(tag) for tag in tags))
    except BaseException:
        if early is not None:
            await _abandon(early)
        raise
    existing = dict(zip(tags, infos, strict=True))
    src_digest = src.digest
    root: Manifest | None = None
    if early is not None:
        root = await early
        if root is None:
            raise source_repo.manifest_missing(str(src))
        src_digest = root.digest
    maybe_noop = all(info is not None for info in infos) if tags else bool(dst.digest)
    if src_digest is None and maybe_noop:
        info = await source_repo.head_manifest(src_ref)
        if info is None:
            raise source_repo.manifest_missing(str(src))
        src_digest = info.digest

    if src_digest and maybe_noop and not options.platforms:
        at_source = _all_at(existing, src_digest) and dst.digest in (None, src_digest)
        if at_source and (tags or await destination_repo.head_manifest(src_digest)):
            return Settled(Outcome.UP_TO_DATE, src_digest, src_digest)

    if root is None:
        root = await source_repo.get_manifest(
            src_digest or src_ref, expected_digest=src_digest, missing_ok=True
        )
    if root is None:
        raise source_repo.manifest_missing(str(src))
    source_digest = root.digest
    if options.platforms and root.is_index:
        root = filter_platforms(root, options.platforms, str(src))
    if dst.digest and dst.digest != root.digest:
        raise InvalidSpec(
            f"destination digest {dst.digest} does not match the content to copy ({root.digest})"
        )
    if (
        options.platforms
        and _all_at(existing, root.digest)
        and (tags or await destination_repo.head_manifest(root.digest))
    ):
        return Settled(Outcome.UP_TO_DATE, source_digest, root.digest)

    push_tags = _apply_tag_policy(dst, existing, root.digest, options.tag_policy)
    if push_tags is None:
        main = existing.get(dst.tag or "")
        return Settled(
            Outcome.TAG_EXISTS, source_digest, main.digest if main and main.digest else root.digest
        )

    plan = Plan(src, dst, source_digest, root, tuple(push_tags), bounds=options.bounds)
    plan.add(root)
    if not plan.same_repository:  # a retag: every blob and child is already there
        await walk(source_repo, plan, root)
    return plan


async def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a speculative request whose answer is no longer wanted and wait for it."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: the caller's own failure is the one reported


def _apply_tag_policy(
    dst: Reference,
    existing: Mapping[str, ManifestInfo | None],
    digest: str,
    policy: TagPolicy,
) -> list[str] | None:
    """Tags to push, or None when IfNotPresent leaves the main tag alone."""
    push: list[str] = []
    for tag, info in existing.items():
        moved = info is not None and info.digest != digest
        if moved and policy is TagPolicy.IMMUTABLE:
            raise TagConflict(
                f"{dst.repo}:{tag} points at {info.digest if info else '?'}, not {digest}, "
                "and tagPolicy Immutable forbids moving it"
            )
        if info is not None and policy is TagPolicy.IF_NOT_PRESENT:
            if tag == dst.tag:
                return None
            continue
        push.append(tag)
    return push


async def fetch_child(source_repo: RepositoryClient, desc: Descriptor) -> Manifest:
    """A manifest a descriptor names, checked against the descriptor's digest and size."""
    manifest = await source_repo.get_manifest(desc.digest, expected_digest=desc.digest)
    assert manifest is not None
    if manifest.size != desc.size:
        raise DigestMismatch(
            f"manifest {desc.digest} has {manifest.size} bytes, its descriptor says {desc.size}",
            operation="get manifest",
            side=Side.SOURCE,
            registry=str(source_repo.registry),
        )
    return manifest


async def walk(
    source_repo: RepositoryClient, plan: Plan, manifest: Manifest, referrer_of: str | None = None
) -> None:
    """Add ``manifest``'s children (at any depth) to the plan, fetching each level at once
    (the first failure cancels the level's other fetches). Children per index, the depth
    below ``manifest`` and the manifest count are checked before each level is fetched."""
    if referrer_of is not None:
        plan.referrers.append(plan.add(manifest, referrer_of))
    bounds = plan.bounds
    level = [manifest]
    depth = 0
    while level:
        wanted: dict[str, Descriptor] = {}
        for parent in level:
            if len(parent.manifests) > bounds.max_index_children:
                raise plan.limit(
                    f"the index {parent.digest} has {len(parent.manifests)} children, more "
                    f"than the limit of {bounds.max_index_children}"
                )
            for child in parent.manifests:
                if child.digest not in plan.nodes:
                    wanted.setdefault(child.digest, child)
        if not wanted:
            return
        depth += 1
        if depth > bounds.max_index_depth:
            raise plan.limit(
                f"the index {manifest.digest} nests indexes {depth} levels deep, more than "
                f"the limit of {bounds.max_index_depth}"
            )
        plan.make_room(len(wanted))
        fetched = await gather_all(*(fetch_child(source_repo, d) for d in wanted.values()))
        for child_manifest in fetched:
            plan.add(child_manifest)
        level = list(fetched)
