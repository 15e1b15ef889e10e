"""The copy engine: resolve a plan, then execute it against the destination (or a dry run).

Order of work (docs/reference.md §4):
1. ``copy.plan``: HEAD every destination tag; decide whether the copy is a no-op (two
   requests when every tag exists); fetch the root, filter platforms, apply the tag policy
   (every tag is checked before anything is written); walk the source graph.
   With ``verify``, ``copy.verify`` checks the source's signatures (reads only) before
   anything else happens; an image that does not pass is never written.
2. ``copy.referrers``: with ``referrers``, add the referrer graphs to the plan, and
   ``copy.attachments`` cosign's tag attachments (``.sig``, ``.att``, ``.sbom``).
3. ``copy.execute``: the pipelined walk — each blob made present once (``oci.blobs``: mount-
   first on one registry, HEAD + mount candidates + verified streaming across registries,
   per ``copy.mounts``), each child pushed by digest as soon as its content is there, the
   root by tag last, then the extra tags, then the referrers, then the tag attachments.
A manifest is never pushed before every blob and child it names is at the destination.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Literal

from ..oci.blobs import Limits, UploadOptions
from ..oci.credentials import CredentialStore
from ..oci.descriptor import Descriptor
from ..oci.errors import Side
from ..oci.pool import RegistryPool, Session
from ..oci.reference import Reference
from .attachments import add_attachments
from .execute import Destination, DryRunDestination, Executor, RegistryDestination
from .locations import BlobLocations, blob_key
from .mounts import MountStrategy
from .options import CopyOptions
from .plan import Plan, destination_reference, make_plan
from .referrers import add_referrers
from .refusals import MountRefusals
from .report import CopyReport, MountPolicy, Outcome
from .verify import verify_image

__all__ = ["MEMORY_BLOBS", "Copier", "largest_blob_keys"]

#: Blobs per copy recorded for the blob memory (``status.lastCopy.largestBlobs``).
MEMORY_BLOBS = 64


class Copier:
    """Copies images; holds what outlives one copy (the pool, the blob-location index and
    the registries that recently refused mounts)."""

    def __init__(
        self,
        pool: RegistryPool,
        locations: BlobLocations | None = None,
        refusals: MountRefusals | None = None,
    ) -> None:
        self.pool = pool
        self.locations = locations if locations is not None else BlobLocations()
        self.refusals = refusals if refusals is not None else MountRefusals()

    async def copy(
        self,
        source: Reference,
        destination: Reference,
        options: CopyOptions | None = None,
        credentials: CredentialStore | None = None,
    ) -> CopyReport:
        options = options or CopyOptions()
        dst = destination_reference(source, destination)
        session = self.pool.session(credentials)
        report = CopyReport(source=str(source), destination=str(dst), dry_run=options.dry_run)
        started = time.monotonic()
        try:
            await self._copy(session, source, dst, options, report)
        finally:
            report.duration_seconds = time.monotonic() - started
            report.requests = session.stats.total
        return report

    async def _copy(
        self,
        session: Session,
        src: Reference,
        dst: Reference,
        options: CopyOptions,
        report: CopyReport,
    ) -> None:
        mounts = MountStrategy(
            src,
            dst,
            enabled=options.mount,
            mount_from=options.mount_from,
            locations=self.locations,
            partition=options.partition,
            # A dry run asks for no mount: it neither learns nor is kept from asking.
            refusals=None if options.dry_run else self.refusals,
            credential=session.credentials.get(dst.registry).cache_key.fingerprint,
        )
        report.mount_policy = (
            MountPolicy.DISABLED
            if not options.mount
            else MountPolicy.SAME_REGISTRY
            if mounts.same_registry
            else MountPolicy.ACROSS_REGISTRIES
        )
        # One token per registry covers the whole copy: push (or, for a dry run, pull) on
        # the destination, pull on every mount source; on one registry the source shares it.
        # The explicit mount sources' pull is optional: a token service that refuses it
        # (Docker Hub refuses the whole request) is asked again without it.
        dst_actions = ("pull",) if options.dry_run else ("push", "pull")
        scopes = [dst.repo.scope(*dst_actions)]
        if mounts.same_registry and not src.same_repository(dst):
            scopes.append(src.repo.scope("pull"))
        dst_scopes = tuple(dict.fromkeys(scopes))
        optional = (
            tuple(dict.fromkeys(repo.scope("pull") for repo in mounts.explicit))
            if options.mount
            else ()
        )
        src_scopes = dst_scopes if mounts.same_registry else (src.repo.scope("pull"),)
        src_optional = optional if mounts.same_registry else ()
        # One bound on the copy's manifest requests, both sides together.
        slots = asyncio.Semaphore(max(1, options.manifest_concurrency))
        source_repo = session.repository(
            src, Side.SOURCE, src_scopes, optional_scopes=src_optional, manifest_slots=slots
        )
        destination_repo = session.repository(
            dst, Side.DESTINATION, dst_scopes, optional_scopes=optional, manifest_slots=slots
        )

        plan = await make_plan(source_repo, destination_repo, src, dst, options)
        report.source_digest = plan.source_digest
        if options.verify is not None:
            # Reads only, before the first write: an unverified image is never promoted.
            report.verification = await verify_image(
                source_repo, plan.source_digest, options.verify
            )
        if not isinstance(plan, Plan):
            report.outcome = plan.outcome
            _pin(report, dst, plan.destination_digest)
            if plan.outcome is Outcome.UP_TO_DATE:
                report.manifests_existing = 1
            return
        _pin(report, dst, plan.root.digest)
        if options.referrers and not plan.same_repository:
            filtered = plan.root.digest != plan.source_digest
            skip = {plan.root.digest} if filtered else set()
            await add_referrers(source_repo, plan, skip=skip)
            await add_attachments(source_repo, plan, skip=skip)

        gate = _TransferGate(options.transfer_gate)
        limits = Limits(
            mounts=asyncio.Semaphore(max(1, options.mount_concurrency)),
            uploads=_GatedSemaphore(max(1, options.concurrency), gate),
        )
        target: Destination
        if options.dry_run:
            target = DryRunDestination(destination_repo, limits)
        else:
            upload = UploadOptions(chunk_size=options.chunk_size, attempts=options.blob_attempts)
            target = RegistryDestination(
                destination_repo,
                source_repo,
                upload=upload,
                limits=limits,
                progress=options.progress,
            )
        try:
            async with gate:
                await Executor(plan, target, mounts, report, options.progress).run()
        finally:
            report.mounts_skipped = mounts.skipped
        report.outcome = Outcome.COPIED
        if not options.dry_run:
            report.tags = list(plan.tags)
            digests = list(plan.blobs)
            part = options.partition
            self.locations.add_many(src.registry, digests, src.repository, partition=part)
            self.locations.add_many(dst.registry, digests, dst.repository, partition=part)
            report.largest_blobs = largest_blob_keys(plan.blobs.values())


class _TransferGate:
    """``CopyOptions.transfer_gate`` of one copy: entered on the first ``open`` (concurrent
    uploads wait for that one entry), left when the copy's ``async with`` ends. An entry
    that fails is not tried again: the uploads that waited for it get the same failure."""

    def __init__(self, gate: Callable[[], AbstractAsyncContextManager[object]] | None) -> None:
        self._gate = gate
        self._stack = AsyncExitStack()
        self._lock = asyncio.Lock()
        self._open = gate is None
        self._failure: BaseException | None = None

    async def open(self) -> None:
        if self._open:
            return
        async with self._lock:
            if self._failure is not None:
                raise self._failure
            if not self._open:
                assert self._gate is not None
                try:
                    await self._stack.enter_async_context(self._gate())
                except BaseException as exc:
                    self._failure = exc
                    raise
                self._open = True

    async def __aenter__(self) -> _TransferGate:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


class _GatedSemaphore(asyncio.Semaphore):
    """The copy's upload streams: an upload passes the transfer gate before its stream
    slot (``oci.blobs`` takes the slot around every upload attempt)."""

    def __init__(self, value: int, gate: _TransferGate) -> None:
        super().__init__(value)
        self._gate = gate

    async def acquire(self) -> Literal[True]:
        await self._gate.open()
        return await super().acquire()


def largest_blob_keys(blobs: Iterable[Descriptor], limit: int = MEMORY_BLOBS) -> list[str]:
    """The keys (``locations.blob_key``) of the ``limit`` largest sha256 blobs, largest first:
    what a status records so the blob memory outlives the process (docs/reference.md §2)."""
    ranked = sorted(
        (d for d in blobs if d.digest.startswith("sha256:")), key=lambda d: (-d.size, d.digest)
    )
    return list(dict.fromkeys(blob_key(d.digest) for d in ranked))[:limit]


def _pin(report: CopyReport, dst: Reference, digest: str) -> None:
    report.destination_digest = digest
    report.destination_pinned = dst.with_digest(digest).pinned
