"""The copy engine: resolve, walk the manifest graph, link or move blobs, push manifests.

Order of work (API.md §2):
1. HEAD every destination tag. If one is missing the source manifest is fetched straight away;
   if all exist, one HEAD of the source decides whether the copy is a no-op (two requests).
2. Filter platforms, apply the tag policy (every tag is checked before anything is written).
3. Walk the graph, pipelined: each child manifest is fetched, its blobs transferred once each
   (mount-first on one registry: one POST, no HEAD; HEAD + mount candidates + streaming upload
   across registries) and the child pushed by digest as soon as its own content is there.
   Every streamed byte is digest-verified before the last byte reaches the destination.
4. Push the root by tag last, then the extra tags; then referrers after their subjects.
A manifest is never pushed before every blob and child it names is at the destination.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ..oci import mediatypes as mt
from ..oci.client import ManifestInfo, MountResult, RegistryPool, referrers_tag
from ..oci.credentials import CredentialStore
from ..oci.descriptor import Descriptor, Manifest, parse_manifest
from ..oci.digest import DigestVerifier, compute_digest
from ..oci.errors import (
    DigestMismatch,
    ImageCopyError,
    InvalidSpec,
    RegistryError,
    SourceNotFound,
    TagConflict,
)
from ..oci.reference import Platform, Reference
from .locations import BlobLocations
from .options import BlobOutcome, CopyOptions, TagPolicy
from .report import CopyReport, Outcome

__all__ = ["Copier"]

log = logging.getLogger("imagecopy.copy")

T = TypeVar("T")

MAX_REFERRER_DEPTH = 3


class Copier:
    """Copies images; holds what outlives one copy (the pool and the blob-location index)."""

    def __init__(self, pool: RegistryPool, locations: BlobLocations | None = None) -> None:
        self.pool = pool
        self.locations = locations if locations is not None else BlobLocations()

    async def copy(
        self,
        source: Reference,
        destination: Reference,
        options: CopyOptions | None = None,
        credentials: CredentialStore | None = None,
    ) -> CopyReport:
        run = _CopyRun(self, source, destination, options or CopyOptions(), credentials)
        return await run.execute()


@dataclass
class _Node:
    """A manifest of the graph; `referrer_of` is the subject digest when it is a referrer."""

    manifest: Manifest
    referrer_of: str | None = None


def _destination_reference(source: Reference, destination: Reference) -> Reference:
    if destination.tag or destination.digest:
        return destination
    if source.tag:
        return destination.with_tag(source.tag)
    return destination


class _CopyRun:
    def __init__(
        self,
        copier: Copier,
        source: Reference,
        destination: Reference,
        options: CopyOptions,
        credentials: CredentialStore | None,
    ) -> None:
        self.copier = copier
        self.options = options
        self.src = source
        self.dst = _destination_reference(source, destination)
        self.session = copier.pool.session(credentials)
        self.same_registry = self.src.registry == self.dst.registry
        self.same_repository = self.same_registry and self.src.repository == self.dst.repository
        self.report = CopyReport(source=str(source), destination=str(self.dst))
        self.report.dry_run = options.dry_run

        dst_actions = ("pull",) if options.dry_run else ("push", "pull")
        dst_scopes = [self.dst.scope(*dst_actions)]
        if self.same_registry and not self.same_repository:
            dst_scopes.append(self.src.scope("pull"))
        if options.mount:
            for repo in options.mount_from:
                scope = f"repository:{repo}:pull"
                if repo not in (self.dst.repository,) and scope not in dst_scopes:
                    dst_scopes.append(scope)
        self.dst_scopes = tuple(dst_scopes)
        # On one registry both sides share one token: the destination scopes cover the source.
        src_scopes = self.dst_scopes if self.same_registry else (self.src.scope("pull"),)
        self.src_repo = self.session.repository(self.src, src_scopes)
        self.dst_repo = self.session.repository(self.dst, self.dst_scopes)

        self.mounts_disabled = not options.mount
        self.transfer_slots = asyncio.Semaphore(max(1, options.concurrency))
        self.mount_slots = asyncio.Semaphore(max(1, options.mount_concurrency))
        self.blob_tasks: dict[str, asyncio.Task[None]] = {}
        self.child_tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self.nodes: dict[str, _Node] = {}
        self.blobs: dict[str, Descriptor] = {}

    # -- entry ------------------------------------------------------------------------------

    async def execute(self) -> CopyReport:
        started = time.monotonic()
        try:
            await self._execute()
        finally:
            self.report.duration_seconds = time.monotonic() - started
            self.report.requests = self.session.stats.total
        return self.report

    async def _execute(self) -> None:
        if not (self.dst.tag or self.dst.digest):
            raise InvalidSpec(
                f"destination {self.dst} needs a tag or a digest when the source has no tag"
            )
        if (
            (
                self.src == self.dst
                or (self.same_repository and self.src.reference == self.dst.reference)
            )
            and not self.options.additional_tags
            and not self.options.platforms
        ):
            raise InvalidSpec("source and destination are the same image")

        tags = self._destination_tags()
        src_ref = self.src.digest or self.src.tag or "latest"
        # Destination first: when a tag is missing the copy cannot be a no-op, so the source
        # is fetched straight away (no HEAD); when every tag exists, one HEAD of the source
        # decides whether there is anything to do.
        tag_infos = await asyncio.gather(*(self.dst_repo.head_manifest(tag) for tag in tags))
        existing_tags = dict(zip(tags, tag_infos, strict=True))
        src_digest = self.src.digest
        maybe_noop = all(info is not None for info in tag_infos) if tags else bool(self.dst.digest)
        if src_digest is None and maybe_noop:
            src_info = await self.src_repo.head_manifest(src_ref)
            if src_info is None:
                raise SourceNotFound(f"{self.src} not found")
            src_digest = src_info.digest

        if src_digest and maybe_noop and not self.options.platforms:
            self.report.source_digest = src_digest
            if self._all_tags_at(existing_tags, src_digest) and (
                not self.dst.digest or self.dst.digest == src_digest
            ):
                if not tags:
                    if await self._digest_only_present(src_digest):
                        return self._up_to_date(src_digest)
                else:
                    return self._up_to_date(src_digest)

        root = await self.src_repo.get_manifest(
            src_digest or src_ref, expected_digest=src_digest, missing_ok=True
        )
        if root is None:
            raise SourceNotFound(f"{self.src} not found")
        self.report.source_digest = root.digest
        if self.options.platforms and root.is_index:
            root = _filter_platforms(root, self.options.platforms, str(self.src))
        final_digest = root.digest
        self._set_destination(final_digest)
        if self.dst.digest and self.dst.digest != final_digest:
            raise InvalidSpec(
                f"destination digest {self.dst.digest} does not match the content to copy "
                f"({final_digest})"
            )
        if (
            self.options.platforms
            and self._all_tags_at(existing_tags, final_digest)
            and (tags or await self._digest_only_present(final_digest))
        ):
            return self._up_to_date(final_digest)

        push_tags = self._apply_tag_policy(existing_tags, final_digest)
        if push_tags is None:
            self.report.outcome = Outcome.TAG_EXISTS
            info = existing_tags.get(self.dst.tag or "")
            if info and info.digest:
                self._set_destination(info.digest)
            return

        filtered = root.digest != self.report.source_digest
        if self.options.dry_run:
            await self._add_node(root)
            if self.options.referrers and not self.same_repository:
                await self._gather_referrers(root, filtered)
            await self._plan(root)
            return

        self.nodes[root.digest] = _Node(root)
        if not self.same_repository:  # a retag: every blob and child is already there
            await self._in_group(self._complete(root))
        # The root: by its first tag (or digest), then the other tags, same bytes.
        await self.dst_repo.put_manifest(tags[0] if (tags := push_tags) else root.digest, root)
        self.report.manifests_copied += 1
        for tag in push_tags[1:]:
            await self.dst_repo.put_manifest(tag, root)
        if self.options.referrers and not self.same_repository:
            await self._copy_referrers(root, filtered)
        self._remember_locations()
        self.report.outcome = Outcome.COPIED
        self.report.tags = push_tags

    # -- tags & no-op -----------------------------------------------------------------------

    def _destination_tags(self) -> list[str]:
        tags: list[str] = []
        if self.dst.tag and not self.dst.digest:
            tags.append(self.dst.tag)
        for tag in self.options.additional_tags:
            if tag not in tags:
                tags.append(tag)
        return tags

    @staticmethod
    def _all_tags_at(existing: dict[str, ManifestInfo | None], digest: str) -> bool:
        return all(info is not None and info.digest == digest for info in existing.values())

    async def _digest_only_present(self, digest: str) -> bool:
        return await self.dst_repo.head_manifest(digest) is not None

    def _up_to_date(self, digest: str) -> None:
        self._set_destination(digest)
        self.report.outcome = Outcome.UP_TO_DATE
        self.report.manifests_existing = 1

    def _set_destination(self, digest: str) -> None:
        self.report.destination_digest = digest
        self.report.destination_pinned = f"{self.dst.registry}/{self.dst.repository}@{digest}"

    def _apply_tag_policy(
        self, existing: dict[str, ManifestInfo | None], digest: str
    ) -> list[str] | None:
        """Tags to push, or None when IfNotPresent leaves the main tag alone."""
        policy = self.options.tag_policy
        push: list[str] = []
        for tag, info in existing.items():
            moved = info is not None and info.digest != digest
            if moved and policy is TagPolicy.IMMUTABLE:
                raise TagConflict(
                    f"{self.dst.registry}/{self.dst.repository}:{tag} points at {info.digest if info else '?'}, "
                    f"not {digest}, and tagPolicy Immutable forbids moving it"
                )
            if info is not None and policy is TagPolicy.IF_NOT_PRESENT:
                if tag == self.dst.tag:
                    return None
                continue
            push.append(tag)
        return push

    # -- graph ------------------------------------------------------------------------------

    async def _add_node(self, manifest: Manifest, referrer_of: str | None = None) -> None:
        """Record `manifest`, its blobs and (fetched in parallel) its children; no writes.
        Used by dry runs and to discover referrer graphs."""
        if manifest.digest in self.nodes:
            return
        self.nodes[manifest.digest] = _Node(manifest, referrer_of)
        for blob in manifest.blobs:
            if blob.foreign:
                continue  # non-distributable: it lives at its urls
            self.blobs.setdefault(blob.digest, blob)
        children = [d for d in manifest.manifests if d.digest not in self.nodes]
        fetched = await asyncio.gather(*(self._fetch_child(d) for d in children))
        await asyncio.gather(*(self._add_node(child) for child in fetched if child is not None))

    async def _fetch_child(self, desc: Descriptor) -> Manifest | None:
        manifest = await self.src_repo.get_manifest(desc.digest, expected_digest=desc.digest)
        if manifest is not None and manifest.size != desc.size:
            raise DigestMismatch(
                f"manifest {desc.digest} has {manifest.size} bytes, its descriptor says {desc.size}"
            )
        return manifest

    async def _gather_referrers(self, root: Manifest, filtered: bool) -> None:
        """Add manifests that refer to copied ones (their subjects), a few levels deep."""
        subjects = [d for d in list(self.nodes) if not (filtered and d == root.digest)]
        seen: set[str] = set(self.nodes)
        for _level in range(MAX_REFERRER_DEPTH):
            found = await asyncio.gather(*(self.src_repo.referrers(d) for d in subjects))
            next_subjects: list[str] = []
            for subject, (descs, _api) in zip(subjects, found, strict=True):
                for desc in descs:
                    if desc.digest in seen:
                        continue
                    seen.add(desc.digest)
                    manifest = await self._fetch_child(desc)
                    if manifest is None:
                        continue
                    before = set(self.nodes)
                    await self._add_node(manifest, subject)
                    self.report.referrers += 1
                    next_subjects.append(desc.digest)
                    seen.update(set(self.nodes) - before)
            if not next_subjects:
                break
            subjects = next_subjects

    # -- pipelined graph copy ---------------------------------------------------------------

    async def _in_group(self, *work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in one task group: blob and child tasks started inside share it, so the
        first failure cancels the rest and is reported (a permanent error over a transient)."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for item in work:
                    group.create_task(item)
        except BaseExceptionGroup as failures:
            raise _first_failure(failures) from None
        finally:
            self._group = None

    def _task(
        self, tasks: dict[str, asyncio.Task[None]], key: str, work: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        task = tasks.get(key)
        if task is None:
            assert self._group is not None
            task = self._group.create_task(work)
            tasks[key] = task
        else:
            work.close()
        return task

    async def _complete(self, manifest: Manifest) -> None:
        """Make every blob and child manifest that `manifest` names present at the
        destination. Each child is pushed as soon as its own content is there, so children
        and blobs of different platforms overlap instead of moving in lock-step waves."""
        waits: list[asyncio.Task[None]] = []
        for blob in manifest.blobs:
            if blob.foreign:
                continue  # non-distributable: it lives at its urls
            self.blobs.setdefault(blob.digest, blob)
            waits.append(self._task(self.blob_tasks, blob.digest, self._copy_blob(blob)))
        for child in manifest.manifests:
            waits.append(self._task(self.child_tasks, child.digest, self._copy_child(child)))
        if waits:
            await asyncio.gather(*waits)

    async def _copy_child(self, desc: Descriptor) -> None:
        present = asyncio.ensure_future(self.dst_repo.head_manifest(desc.digest))
        try:
            node = self.nodes.get(desc.digest)
            if node is None:
                manifest = await self._fetch_child(desc)
                assert manifest is not None
                node = self.nodes.setdefault(desc.digest, _Node(manifest))
            await self._complete(node.manifest)
            there = await present
        finally:
            present.cancel()
        if there is not None:
            self.report.manifests_existing += 1
            return
        await self.dst_repo.put_manifest(desc.digest, node.manifest)
        self.report.manifests_copied += 1

    async def _copy_referrers(self, root: Manifest, filtered: bool) -> None:
        known = set(self.nodes)
        await self._gather_referrers(root, filtered)
        referrers = [
            n for d, n in self.nodes.items() if d not in known and n.referrer_of is not None
        ]
        if not referrers:
            return
        await self._in_group(*(self._complete(n.manifest) for n in referrers))
        found = await asyncio.gather(
            *(self.dst_repo.head_manifest(n.manifest.digest) for n in referrers)
        )
        present = {n.manifest.digest for n, info in zip(referrers, found, strict=True) if info}
        self.report.manifests_existing += len(present)
        await self._push_referrers(referrers, present)

    # -- blobs ------------------------------------------------------------------------------

    def _count(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        r = self.report
        if outcome is BlobOutcome.MOUNTED:
            r.blobs_mounted += 1
            r.bytes_mounted += desc.size
        elif outcome is BlobOutcome.UPLOADED:
            r.blobs_uploaded += 1
            r.bytes_uploaded += desc.size
        else:
            r.blobs_existing += 1
            r.bytes_existing += desc.size
        if self.options.progress is not None:
            self.options.progress.blob_finished(desc, outcome)

    async def _copy_blob(self, desc: Descriptor) -> None:
        if self.options.progress is not None:
            self.options.progress.blob_started(desc)
        dst = self.dst_repo
        if self.same_registry and not self.mounts_disabled:
            async with self.mount_slots:
                outcome = await dst.mount_blob(desc.digest, self.src.repository)
            if outcome.result is MountResult.MOUNTED:
                return self._count(desc, BlobOutcome.MOUNTED)
            if outcome.result is MountResult.SESSION:
                assert outcome.location is not None
                if await dst.blob_exists(desc.digest):
                    await dst.cancel_upload(outcome.location)
                    return self._count(desc, BlobOutcome.EXISTING)
                await self._upload(desc, outcome.location)
                return self._count(desc, BlobOutcome.UPLOADED)
            self._disable_mounts(outcome.status)

        if await dst.blob_exists(desc.digest):
            return self._count(desc, BlobOutcome.EXISTING)
        location: str | None = None
        if not self.mounts_disabled:
            for candidate in self._mount_candidates(desc.digest):
                scopes = (*self.dst_scopes, f"repository:{candidate}:pull")
                async with self.mount_slots:
                    outcome = await dst.mount_blob(desc.digest, candidate, scopes=scopes)
                if outcome.result is MountResult.MOUNTED:
                    return self._count(desc, BlobOutcome.MOUNTED)
                if outcome.result is MountResult.SESSION:
                    location = outcome.location
                    break
                if outcome.status == 405:
                    self._disable_mounts(outcome.status)
                    break
        await self._upload(desc, location)
        self._count(desc, BlobOutcome.UPLOADED)

    def _disable_mounts(self, status: int) -> None:
        if not self.mounts_disabled:
            log.info(
                "registry %s refused a mount (%s); falling back to upload for this copy",
                self.dst.registry,
                status,
            )
        self.mounts_disabled = True

    def _mount_candidates(self, digest: str) -> list[str]:
        exclude = {self.dst.repository}
        out: list[str] = []
        if self.same_registry:
            exclude.add(self.src.repository)
        for repo in self.options.mount_from:
            if repo not in exclude and repo not in out:
                out.append(repo)
        remembered = self.copier.locations.candidates(
            self.dst.registry, digest, exclude=exclude | set(out), limit=3
        )
        return out + remembered

    async def _upload(self, desc: Descriptor, location: str | None) -> None:
        attempts = max(1, self.options.blob_attempts)
        for attempt in range(1, attempts + 1):
            async with self.transfer_slots:
                if location is None:
                    location = await self.dst_repo.start_upload()
                try:
                    status = await self.dst_repo.put_blob(location, desc, self._stream(desc))
                    if status in (201, 204):
                        return
                    # The registry wants chunks: start over with a fresh session.
                    await self.dst_repo.cancel_upload(location)
                    location = await self.dst_repo.start_upload()
                    await self.dst_repo.patch_blob(
                        location, desc, self._stream(desc), self.options.chunk_size
                    )
                    return
                except DigestMismatch:
                    await self.dst_repo.cancel_upload(location)
                    raise
                except RegistryError as exc:
                    await self.dst_repo.cancel_upload(location)
                    location = None
                    if not exc.transient or attempt == attempts:
                        raise
                    log.info("retrying blob %s after: %s", desc.digest, exc)
            await asyncio.sleep(min(5.0, 0.5 * 2**attempt))

    async def _stream(self, desc: Descriptor) -> AsyncIterator[bytes]:
        """Source bytes, verified; the last chunk is held back until the digest checks out,
        so a corrupt blob never completes an upload."""
        verifier = DigestVerifier(desc.digest, desc.size)
        progress = self.options.progress
        pending: bytes | None = None
        async with self.src_repo.open_blob(desc.digest) as response:
            async for chunk in response.aiter_bytes():
                if not chunk:
                    continue
                verifier.update(chunk)
                if pending is not None:
                    yield pending
                    if progress is not None:
                        progress.blob_advanced(desc, len(pending))
                pending = chunk
        try:
            verifier.verify()
        except DigestMismatch as exc:
            raise DigestMismatch(
                f"source {self.src.registry}/{self.src.repository}: {exc}"
            ) from None
        if pending is not None:
            yield pending
            if progress is not None:
                progress.blob_advanced(desc, len(pending))

    # -- manifests --------------------------------------------------------------------------

    async def _children_present(self, root: Manifest) -> set[str]:
        """Digests of non-root manifests already present at the destination."""
        if self.same_repository:
            return {d for d in self.nodes if d != root.digest}
        digests = [d for d in self.nodes if d != root.digest]
        results = await asyncio.gather(*(self.dst_repo.head_manifest(d) for d in digests))
        return {d for d, info in zip(digests, results, strict=True) if info is not None}

    async def _push_referrers(self, referrers: list[_Node], present: set[str]) -> None:
        if not referrers:
            return
        # Children of referrer graphs were pushed with the plain manifests; referrers go
        # in discovery order, so a subject always precedes the manifests that refer to it.
        fallback: dict[str, list[Descriptor]] = {}
        for node in referrers:
            if node.manifest.digest in present:
                continue
            headers = await self.dst_repo.put_manifest(node.manifest.digest, node.manifest)
            self.report.manifests_copied += 1
            subject = node.manifest.subject.digest if node.manifest.subject else node.referrer_of
            if subject and "OCI-Subject" not in headers:
                fallback.setdefault(subject, []).append(_referrer_descriptor(node.manifest))
        for subject, descs in fallback.items():
            await self._update_referrers_tag(subject, descs)

    async def _update_referrers_tag(self, subject: str, descs: list[Descriptor]) -> None:
        """Referrers tag schema: the index at tag `sha256-<hex>` lists the referrers."""
        tag = referrers_tag(subject)
        current = await self.dst_repo.get_manifest(tag, missing_ok=True)
        entries: list[dict[str, object]] = []
        known: set[str] = set()
        if current is not None and current.is_index:
            for d in current.manifests:
                entries.append(d.to_json())
                known.add(d.digest)
        added = [d for d in descs if d.digest not in known]
        if not added:
            return
        entries.extend(d.to_json() for d in added)
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries},
            separators=(",", ":"),
        ).encode()
        index = parse_manifest(body, mt.OCI_INDEX, f"referrers index {tag}")
        await self.dst_repo.put_manifest(tag, index)

    # -- dry run ----------------------------------------------------------------------------

    async def _plan(self, root: Manifest) -> None:
        """Count what a real run would do, with read-only requests only."""
        if not self.same_repository:
            if self.same_registry and not self.mounts_disabled:
                for desc in self.blobs.values():
                    self._count(desc, BlobOutcome.MOUNTED)
            else:
                digests = list(self.blobs)
                exists = await _bounded_gather(
                    [partial(self.dst_repo.blob_exists, d) for d in digests],
                    self.options.mount_concurrency,
                )
                for digest, there in zip(digests, exists, strict=True):
                    desc = self.blobs[digest]
                    if there:
                        self._count(desc, BlobOutcome.EXISTING)
                    elif not self.mounts_disabled and self._mount_candidates(digest):
                        self._count(desc, BlobOutcome.MOUNTED)
                    else:
                        self._count(desc, BlobOutcome.UPLOADED)
        present = await self._children_present(root)
        others = [d for d in self.nodes if d != root.digest]
        self.report.manifests_existing = len([d for d in others if d in present])
        self.report.manifests_copied = len(others) - self.report.manifests_existing + 1
        self.report.outcome = Outcome.COPIED

    # -- bookkeeping ------------------------------------------------------------------------

    def _remember_locations(self) -> None:
        locations = self.copier.locations
        digests = list(self.blobs)
        locations.add_many(self.src.registry, digests, self.src.repository)
        locations.add_many(self.dst.registry, digests, self.dst.repository)


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a group of blob failures: a permanent one over a transient one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, ImageCopyError) and not exc.transient:
            return exc
    return leaves[0]


async def _bounded_gather(factories: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    slots = asyncio.Semaphore(max(1, limit))

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await factory()

    return list(await asyncio.gather(*(run(f) for f in factories)))


def _referrer_descriptor(manifest: Manifest) -> Descriptor:
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


def _filter_platforms(index: Manifest, platforms: tuple[Platform, ...], where: str) -> Manifest:
    """A new index holding only the wanted platforms and the attestations that belong to them."""
    kept: list[dict[str, object]] = []
    kept_digests: set[str] = set()
    entries = index.json.get("manifests") or []
    descs = list(index.manifests)
    for desc in descs:
        if desc.is_attestation:
            continue
        if desc.platform and any(p.matches(desc.platform) for p in platforms):
            kept_digests.add(desc.digest)
    if not kept_digests:
        available = sorted(
            {
                "/".join(
                    str(p)
                    for p in (
                        d.platform.get("os"),
                        d.platform.get("architecture"),
                        d.platform.get("variant"),
                    )
                    if p
                )
                for d in descs
                if d.platform and not d.is_attestation
            }
        )
        wanted = ", ".join(str(p) for p in platforms)
        raise InvalidSpec(
            f"{where} has none of the requested platforms ({wanted}); it has {', '.join(available) or 'none'}"
        )
    for desc, entry in zip(descs, entries, strict=True):
        if desc.digest in kept_digests or (desc.is_attestation and desc.attests in kept_digests):
            kept.append(entry)
    if len(kept) == len(entries):
        return index  # nothing filtered: keep the source bytes and digest
    obj = dict(index.json)
    obj["manifests"] = kept
    data = json.dumps(obj, separators=(",", ":")).encode()
    return parse_manifest(data, index.media_type, f"filtered {where}", compute_digest(data))
