"""``status.progress`` of a running copy (docs/reference.md §2): blobs and bytes done of the
blobs the copy has to place, written every ``IMAGECOPY_PROGRESS_INTERVAL`` while it runs.

``CopyProgress`` is the copy's ``ProgressListener``: it counts what the engine reports and
passes every event on to the copy's watchdog (``deadline``), which needs them too. The totals
arrive once the plan is made (``copy_planned``); a check that finds the destination up to date,
or a retag within one repository, makes no plan with blobs, so it never writes a progress.
``report_progress`` writes a snapshot each period when it changed since the last write; a copy
shorter than one period writes none. The status write that ends the attempt removes the field
(``service``).

A blob is done when it is placed (mounted, found, or uploaded); its bytes count as they are
streamed, up to its size (a retried transfer does not count twice), and all of them once it is
placed, however it was placed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from ..copy.options import ProgressListener
from ..oci.blobs import BlobOutcome
from ..oci.descriptor import Descriptor
from .status import format_timestamp

__all__ = ["CopyProgress", "report_progress"]


class CopyProgress:
    """Counts one copy's blobs and bytes; forwards every event to ``inner``."""

    def __init__(self, inner: ProgressListener | None = None) -> None:
        self.inner = inner
        self.blobs_total = 0
        self.bytes_total = 0
        self.blobs_done = 0
        self._planned = False
        self._done_bytes = 0
        #: Bytes streamed of blobs not placed yet, per digest (at most their size).
        self._moving: dict[str, int] = {}

    # The engine's plan hook (``copy.options.PlanListener``).
    def copy_planned(self, blobs: int, nbytes: int) -> None:
        self._planned = blobs > 0
        self.blobs_total = blobs
        self.bytes_total = nbytes

    def blob_started(self, desc: Descriptor) -> None:
        if self.inner is not None:
            self.inner.blob_started(desc)

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        moved = self._moving.get(desc.digest, 0) + nbytes
        self._moving[desc.digest] = min(moved, max(desc.size, 0))
        if self.inner is not None:
            self.inner.blob_advanced(desc, nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self._moving.pop(desc.digest, None)
        self.blobs_done += 1
        self._done_bytes += max(desc.size, 0)
        if self.inner is not None:
            self.inner.blob_finished(desc, outcome)

    @property
    def bytes_done(self) -> int:
        return min(self._done_bytes + sum(self._moving.values()), self.bytes_total)

    def snapshot(self) -> dict[str, int] | None:
        """The counts as ``status.progress`` holds them (no time); None before the plan."""
        if not self._planned:
            return None
        return {
            "blobsDone": min(self.blobs_done, self.blobs_total),
            "blobsTotal": self.blobs_total,
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
        }


async def report_progress(
    progress: CopyProgress,
    write: Callable[[Mapping[str, Any]], Awaitable[None]],
    period: float,
    done: asyncio.Event,
    now: Callable[[], datetime],
) -> None:
    """Until ``done`` is set: every ``period`` seconds, ``write`` the ``status.progress`` value
    when the counts changed since the last write. A write under way when ``done`` is set is
    finished, not abandoned (the caller awaits this before its own final status write, so a
    late progress write can never land after it)."""
    last: dict[str, int] | None = None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), period)
        if done.is_set():
            return
        snapshot = progress.snapshot()
        if snapshot is None or snapshot == last:
            continue
        await write({**snapshot, "updateTime": format_timestamp(now())})
        last = snapshot
