"""Copy options: every policy of a copy, with documented defaults (docs/reference.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from ..oci.blobs import BlobOutcome
from ..oci.bounds import Bounds
from ..oci.descriptor import Descriptor
from ..oci.reference import Platform
from .verify import VerifyPolicy

__all__ = ["BlobOutcome", "CopyOptions", "PlanListener", "ProgressListener", "TagPolicy"]


class TagPolicy(StrEnum):
    OVERWRITE = "Overwrite"  # move the destination tag
    IF_NOT_PRESENT = "IfNotPresent"  # leave an existing tag alone
    IMMUTABLE = "Immutable"  # refuse to move a tag that points elsewhere


class ProgressListener(Protocol):
    """Receives progress; the CLI renders it, the operator counts it as the copy moving
    (``controller.deadline``)."""

    def blob_started(self, desc: Descriptor) -> None: ...
    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None: ...
    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None: ...


@runtime_checkable
class PlanListener(Protocol):
    """A ``ProgressListener`` that also wants the totals: told once, before any blob moves,
    how many distinct blobs (and bytes) the copy has to place (the operator's
    ``status.progress``). Not called when no blob has to be placed."""

    def copy_planned(self, blobs: int, nbytes: int) -> None: ...


@dataclass(frozen=True)
class CopyOptions:
    #: Keep only these platforms of an index (attestations of kept platforms stay).
    platforms: tuple[Platform, ...] = ()
    #: Copy manifests that refer to the copied ones (signatures, SBOMs, attestations).
    referrers: bool = False
    additional_tags: tuple[str, ...] = ()
    tag_policy: TagPolicy = TagPolicy.OVERWRITE
    #: Link blobs with cross-repository mounts where the registry allows it.
    mount: bool = True
    #: Extra mount sources on the destination registry, tried before remembered locations.
    mount_from: tuple[str, ...] = ()
    #: Whose copy this is (the operator: the namespace): remembered blob locations are
    #: offered as mount candidates, and learned, only within the same partition.
    partition: str = ""
    #: Concurrent blob uploads (streams). Mounts are cheap and run wider: each wave of
    #: mounts costs a round trip, so 32 link an image of up to 32 blobs in one.
    concurrency: int = 8
    mount_concurrency: int = 32
    #: Manifest requests (HEAD, GET, PUT, referrers) in flight at once, both sides together.
    manifest_concurrency: int = 16
    #: Limits of the image graph (children per index, depth, manifests, bytes, blobs,
    #: referrers per subject): ``oci.bounds.Bounds``.
    bounds: Bounds = field(default_factory=Bounds)
    #: Fetch the source manifest while the destination tags are checked: a copy with work
    #: to do saves a round trip; a no-op then costs a GET of the source where a HEAD would
    #: do (Docker Hub counts manifest GETs as pulls). The operator turns it off to re-check
    #: an object that is already Ready (docs/reference.md §4).
    fetch_source_early: bool = True
    #: Plan the copy with the same counts; write nothing.
    dry_run: bool = False
    #: Largest PATCH body of the chunked-upload fallback.
    chunk_size: int = 8 * 1024 * 1024
    #: Transfers per blob on transient failures (the stream cannot be replayed by the
    #: transport, so the whole transfer is retried, paid from the copy's retry budget).
    blob_attempts: int = 3
    progress: ProgressListener | None = None
    #: Refuse to copy unless the source is signed by one of these keys (``copy.verify``).
    verify: VerifyPolicy | None = None
    #: Entered once per copy, just before its first blob upload, and left when the copy
    #: ends; a copy that only HEADs, mounts and pushes manifests never enters it. The
    #: operator takes one of its few byte-moving copy slots there.
    transfer_gate: Callable[[], AbstractAsyncContextManager[object]] | None = None

    @property
    def connections(self) -> int:
        """HTTP connections this copy can keep busy at once (HTTP/1.1: one request each):
        a GET and a PUT per stream, or every mount and manifest request in flight together.
        A smaller pool would queue the mounts behind each other in more round trips."""
        return max(2 * self.concurrency, self.mount_concurrency + self.manifest_concurrency)
