"""Every copy the operator runs has a deadline and a no-progress timeout.

A copy holds one of the process's few copy slots (``slots``), so one that never ends — a
registry that accepts connections and never answers, an endless trickle, a retry loop — would
take a slot from every other tenant for good. ``CopyWatchdog.run`` runs the copy in a task of
its own and cancels it when it has run for ``timeout`` seconds (``IMAGECOPY_COPY_TIMEOUT``)
or made no progress for ``stall_timeout`` seconds (``IMAGECOPY_STALL_TIMEOUT``); either ends
in ``CopyTimeout`` (reason ``CopyTimeout``, retried with backoff: a copy resumes where the
last one stopped, since everything already at the destination is found there).

Progress is what the engine reports through the ``ProgressListener`` of ``CopyOptions`` (a
blob started, bytes of it moved, a blob finished) and every request the copy sends that got
an answer other than a retry status (408, 429, 5xx) or none at all. The request signal comes
from the registry pool's process-wide ``on_request`` hook: the watchdog of the running copy
is found in a context variable set for the copy's task (tasks the engine starts inherit it),
so neither ``copy`` nor ``oci`` knows about it.

Waiting for a byte-moving slot (``service``: a copy that must upload takes one of the few
transfer slots mid-copy) is nobody's fault: ``paused`` stops both clocks for that wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..oci.blobs import BlobOutcome
from ..oci.descriptor import Descriptor
from ..oci.errors import ImageCopyError
from ..oci.transport import RETRY_STATUSES
from .settings import format_duration

__all__ = ["CANCEL_GRACE", "CopyTimeout", "CopyWatchdog", "note_request"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a cancelled copy gets to wind down (cancel its upload sessions) before its slot is
#: given to the next copy anyway.
CANCEL_GRACE = 10.0

#: Codes of ``RequestStats`` that are no progress: no answer, or one asking to try again.
_NO_PROGRESS_CODES = frozenset({"error", *(str(status) for status in RETRY_STATUSES)})

_CURRENT: contextvars.ContextVar[CopyWatchdog | None] = contextvars.ContextVar(
    "imagecopy_copy_watchdog", default=None
)

# Cancelled copies still winding down after CANCEL_GRACE: kept so they are not collected.
_LINGERING: set[asyncio.Task[Any]] = set()


class CopyTimeout(ImageCopyError):
    """A copy ran past its deadline or made no progress for too long, and was cancelled."""

    label = "copy timed out"


def note_request(code: str) -> None:
    """The registry pool's request hook: count an answered request as progress of the copy
    whose task sent it (no-op outside a watched copy)."""
    watchdog = _CURRENT.get()
    if watchdog is not None and code not in _NO_PROGRESS_CODES:
        watchdog.touch()


class CopyWatchdog:
    """The deadline of one copy; also its ``ProgressListener``."""

    def __init__(
        self,
        timeout: float,
        stall_timeout: float,
        *,
        clock: Callable[[], float] | None = None,
        grace: float = CANCEL_GRACE,
        names: tuple[str, str] = ("IMAGECOPY_COPY_TIMEOUT", "IMAGECOPY_STALL_TIMEOUT"),
    ) -> None:
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        #: The settings (or flags) the two limits came from, named in the error.
        self.names = names
        self.grace = grace
        self._clock = clock
        self._started = 0.0
        self._last = 0.0
        #: Nested ``paused`` blocks open, and when the outermost began.
        self._pauses = 0
        self._paused_at = 0.0

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def touch(self) -> None:
        self._last = self._now()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop both clocks for the block (a wait for a transfer slot): the deadline moves
        on by the time spent in it, and leaving it counts as progress."""
        if self._pauses == 0:
            self._paused_at = self._now()
        self._pauses += 1
        try:
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0:
                self._started += self._now() - self._paused_at
                self.touch()

    # ProgressListener: every blob event is progress.
    def blob_started(self, desc: Descriptor) -> None:
        self.touch()

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        self.touch()

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self.touch()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work`` in a task of its own; cancel it and raise ``CopyTimeout`` when the
        deadline passes or progress stops. Cancelling the caller cancels the work."""
        self._started = self._last = self._now()
        context = contextvars.copy_context()
        context.run(_CURRENT.set, self)
        task = asyncio.get_running_loop().create_task(work, context=context)
        try:
            while True:
                expires, error = self._expiry()
                delay = expires - self._now()
                if delay <= 0:
                    if task.done():
                        return task.result()
                    break
                done, _ = await asyncio.wait({task}, timeout=delay)
                if done:
                    return task.result()
        except asyncio.CancelledError:
            task.cancel()
            await self._wind_down(task)
            raise
        task.cancel()
        await self._wind_down(task)
        raise error

    def _expiry(self) -> tuple[float, CopyTimeout]:
        if self._pauses:
            # Look again later; the pause's end moves both clocks.
            return self._now() + self.stall_timeout, CopyTimeout("paused")
        deadline = self._started + self.timeout
        stall = self._last + self.stall_timeout
        if stall < deadline:
            return stall, CopyTimeout(
                f"the copy made no progress for {format_duration(self.stall_timeout)} "
                f"({self.names[1]}) and was cancelled"
            )
        return deadline, CopyTimeout(
            f"the copy did not finish within {format_duration(self.timeout)} "
            f"({self.names[0]}) and was cancelled"
        )

    async def _wind_down(self, task: asyncio.Task[Any]) -> None:
        """Give a cancelled copy ``grace`` seconds to finish cancelling; never raise its
        outcome (the caller reports the timeout or its own cancellation)."""
        try:
            await asyncio.wait({task}, timeout=self.grace)
        finally:
            if task.done():
                _retrieve(task)
            else:
                log.warning(
                    "a cancelled copy is still winding down after %s; its slot is released",
                    format_duration(self.grace),
                )
                _LINGERING.add(task)
                task.add_done_callback(_settled)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Read the outcome so asyncio does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _settled(task: asyncio.Task[Any]) -> None:
    _LINGERING.discard(task)
    _retrieve(task)
