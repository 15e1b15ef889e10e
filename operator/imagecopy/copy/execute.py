"""Carry out a plan against a destination: the pipelined graph walk.

Each child manifest is pushed by digest as soon as its own blobs and children are present,
so the platforms of an index overlap instead of moving in lock-step waves; each blob is
made present once however many manifests name it. The root goes last, by its first tag
(or digest), then the other tags; then the referrers, after their subjects.
A manifest is never pushed before every blob and child it names is at the destination.

The destination is a small capability (``Destination``): ``RegistryDestination`` writes
through ``oci``; ``DryRunDestination`` makes the same read-only checks and records the
writes instead, so a dry run and a real copy walk the same plan with the same decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..oci.blobs import BlobOutcome, BlobPlacement, Limits, UploadOptions, ensure_blob
from ..oci.descriptor import Descriptor, Manifest
from ..oci.referrers import push_manifest, push_referrers
from ..oci.repository import RepositoryClient
from .attachments import is_merged, merge_layers
from .mounts import MountRoute, MountStrategy
from .options import PlanListener, ProgressListener
from .plan import Attachment, Node, Plan
from .report import CopyReport
from .tasks import first_failure, gather_all

__all__ = ["Destination", "DryRunDestination", "Executor", "RegistryDestination"]


class Destination(Protocol):
    """What the walk needs of the place it copies to."""

    async def has_manifest(self, digest: str) -> bool: ...

    async def ensure_blob(self, desc: Descriptor, route: MountRoute) -> BlobPlacement: ...

    async def push_manifest(self, reference: str, manifest: Manifest) -> None: ...

    async def push_referrers(self, items: Sequence[tuple[Manifest, str]]) -> None: ...

    async def tag_digest(self, tag: str) -> str | None: ...

    async def read_manifest(self, tag: str) -> Manifest | None: ...


class RegistryDestination:
    """The real destination repository; blob bytes come verified from the source."""

    def __init__(
        self,
        repo: RepositoryClient,
        source: RepositoryClient,
        *,
        upload: UploadOptions,
        limits: Limits,
        progress: ProgressListener | None = None,
    ) -> None:
        self.repo = repo
        self.source = source
        self.upload = upload
        self.limits = limits
        self.progress = progress

    async def has_manifest(self, digest: str) -> bool:
        return await self.repo.head_manifest(digest) is not None

    async def ensure_blob(self, desc: Descriptor, route: MountRoute) -> BlobPlacement:
        progress = self.progress
        on_bytes = None if progress is None else lambda n: progress.blob_advanced(desc, n)
        return await ensure_blob(
            self.repo,
            desc,
            lambda: self.source.read_blob(desc, on_bytes),
            mount_from=route.mount_from,
            check_first=route.check_first,
            options=self.upload,
            limits=self.limits,
        )

    async def push_manifest(self, reference: str, manifest: Manifest) -> None:
        await push_manifest(self.repo, reference, manifest)

    async def push_referrers(self, items: Sequence[tuple[Manifest, str]]) -> None:
        await push_referrers(self.repo, items)

    async def tag_digest(self, tag: str) -> str | None:
        info = await self.repo.head_manifest(tag)
        return None if info is None else (info.digest or "")

    async def read_manifest(self, tag: str) -> Manifest | None:
        return await self.repo.get_manifest(tag, missing_ok=True)


@dataclass
class DryRunDestination:
    """Reads like the real destination, writes nothing: a mount is assumed to succeed
    wherever the real copy would try one, and every push is recorded in ``pushed``."""

    repo: RepositoryClient
    limits: Limits = field(default_factory=Limits)
    pushed: list[str] = field(default_factory=list)

    async def has_manifest(self, digest: str) -> bool:
        return await self.repo.head_manifest(digest) is not None

    async def ensure_blob(self, desc: Descriptor, route: MountRoute) -> BlobPlacement:
        if route.check_first:
            if self.limits.mounts is None:
                there = await self.repo.blob_exists(desc.digest)
            else:
                async with self.limits.mounts:
                    there = await self.repo.blob_exists(desc.digest)
            if there:
                return BlobPlacement(BlobOutcome.EXISTING)
        return BlobPlacement(BlobOutcome.MOUNTED if route.mount_from else BlobOutcome.UPLOADED)

    async def push_manifest(self, reference: str, manifest: Manifest) -> None:
        self.pushed.append(reference)

    async def push_referrers(self, items: Sequence[tuple[Manifest, str]]) -> None:
        self.pushed.extend(manifest.digest for manifest, _ in items)

    async def tag_digest(self, tag: str) -> str | None:
        info = await self.repo.head_manifest(tag)
        return None if info is None else (info.digest or "")

    async def read_manifest(self, tag: str) -> Manifest | None:
        return await self.repo.get_manifest(tag, missing_ok=True)


class Executor:
    """One run of one plan: task bookkeeping and the report's counts."""

    def __init__(
        self,
        plan: Plan,
        destination: Destination,
        mounts: MountStrategy,
        report: CopyReport,
        progress: ProgressListener | None = None,
    ) -> None:
        self.plan = plan
        self.destination = destination
        self.mounts = mounts
        self.report = report
        self.progress = progress
        self._blob_tasks: dict[str, asyncio.Task[None]] = {}
        self._child_tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        plan, report = self.plan, self.report
        if not plan.same_repository:
            if isinstance(self.progress, PlanListener) and plan.blobs:
                sizes = sum(max(blob.size, 0) for blob in plan.blobs.values())
                self.progress.copy_planned(len(plan.blobs), sizes)
            await self._in_group(self._complete(plan.root))
        tags = plan.tags
        await self.destination.push_manifest(tags[0] if tags else plan.root.digest, plan.root)
        report.manifests_copied += 1
        for tag in tags[1:]:
            await self.destination.push_manifest(tag, plan.root)
        report.referrers = len(plan.referrers) + len(plan.attachments)
        if plan.referrers:
            await self._push_referrers(plan.referrers)
        if plan.attachments:
            await self._push_attachments(plan.attachments)

    async def _push_referrers(self, referrers: list[Node]) -> None:
        await self._in_group(*(self._complete(node.manifest) for node in referrers))
        found = await gather_all(
            *(self.destination.has_manifest(node.manifest.digest) for node in referrers)
        )
        missing = [node for node, there in zip(referrers, found, strict=True) if not there]
        self.report.manifests_existing += len(referrers) - len(missing)
        await self.destination.push_referrers([(n.manifest, _subject(n)) for n in missing])
        self.report.manifests_copied += len(missing)

    async def _push_attachments(self, attachments: list[Attachment]) -> None:
        """Cosign tag attachments, after every blob they name (``copy.attachments``)."""
        await self._in_group(*(self._complete(a.manifest) for a in attachments))
        current = await gather_all(*(self.destination.tag_digest(a.tag) for a in attachments))
        for attachment, there in zip(attachments, current, strict=True):
            manifest: Manifest | None = attachment.manifest
            if there == attachment.manifest.digest:
                manifest = None
            elif there is not None and is_merged(attachment.tag):
                held = await self.destination.read_manifest(attachment.tag)
                if held is not None and not held.is_index:
                    manifest = merge_layers(held, attachment.manifest)
            if manifest is None:
                self.report.manifests_existing += 1
                continue
            await self.destination.push_manifest(attachment.tag, manifest)
            self.report.manifests_copied += 1

    # -- the pipelined walk -----------------------------------------------------------------

    async def _in_group(self, *work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in one task group: blob and child tasks started inside share it, so
        the first failure cancels the rest — each cancelled blob transfer cancels its upload
        session on the way out (``oci.blobs``) — and is reported (a permanent one over a
        transient one)."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for item in work:
                    group.create_task(item)
        except BaseExceptionGroup as failures:
            raise first_failure(failures) from None
        finally:
            self._group = None

    def _task(
        self, tasks: dict[str, asyncio.Task[None]], key: str, work: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        task = tasks.get(key)
        if task is None:
            assert self._group is not None
            task = tasks[key] = self._group.create_task(work)
        else:
            work.close()
        return task

    async def _complete(self, manifest: Manifest) -> None:
        """Make every blob and child manifest that ``manifest`` names present."""
        waits = [
            self._task(self._blob_tasks, blob.digest, self._copy_blob(blob))
            for blob in manifest.blobs
            if not blob.foreign  # non-distributable: it lives at its urls
        ]
        waits += [
            self._task(self._child_tasks, child.digest, self._copy_child(child.digest))
            for child in manifest.manifests
        ]
        if waits:
            # Tasks of the walk's group, shared with other manifests naming the same digest:
            # a failure among them cancels the whole group, so this only waits.
            await asyncio.gather(*waits)

    async def _copy_child(self, digest: str) -> None:
        present = asyncio.ensure_future(self.destination.has_manifest(digest))
        try:
            node = self.plan.nodes[digest]
            await self._complete(node.manifest)
            there = await present
        finally:
            present.cancel()
        if there:
            self.report.manifests_existing += 1
            return
        await self.destination.push_manifest(digest, node.manifest)
        self.report.manifests_copied += 1

    async def _copy_blob(self, desc: Descriptor) -> None:
        if self.progress is not None:
            self.progress.blob_started(desc)
        route, probe = await self.mounts.next_route(desc.digest)
        try:
            placement = await self.destination.ensure_blob(desc, route)
            self.mounts.learn(placement)
        finally:
            if probe:
                self.mounts.settle()
        self.report.count_blob(desc.size, placement.outcome)
        self.report.count_mounts(placement)
        if self.progress is not None:
            self.progress.blob_finished(desc, placement.outcome)


def _subject(node: Node) -> str:
    subject = node.manifest.subject
    if subject is not None:
        return subject.digest
    assert node.referrer_of is not None
    return node.referrer_of
