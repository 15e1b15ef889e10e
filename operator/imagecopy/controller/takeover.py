"""With Kopf peering, the first copies after this replica becomes active wait out a peer's wind-down.

Kopf hands the work over without a lock: a replica that stops gracefully leaves the peering
object while its daemons are still being stopped (Kopf cancels both at once), and a replica
that pauses for a higher-priority newcomer stops its daemons in the background (up to the
daemon's ``cancellation_timeout``). The replica taking over re-lists every object and starts
their daemons at once, so for a moment two processes could copy the same object.

Kopf stops every daemon of a paused replica, so a replica that becomes active starts its
daemons from none running. :class:`Takeover` marks that moment (daemons running going from 0
to 1) and makes every daemon started within :data:`TAKEOVER_GRACE` of it wait until the grace
is over before its first copy. A standalone operator (``--standalone``) has no peer and never
waits. The cost: with peering, an operator that was idle with no objects at all delays its
first copy by the grace too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

__all__ = ["TAKEOVER_GRACE", "Takeover"]

#: Longer than a peer needs to stop its daemons: Kopf's 5 s ``cancellation_timeout`` of the
#: ``reconcile`` daemon, then the copy's cancellation.
TAKEOVER_GRACE = 10.0


class Takeover:
    def __init__(
        self,
        *,
        peering: bool,
        grace: float = TAKEOVER_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peering = peering
        self.grace = grace
        self._clock = clock
        self._running = 0
        self._active_since = -float("inf")

    @property
    def running(self) -> int:
        """Daemons inside :meth:`daemon` now."""
        return self._running

    def remaining(self) -> float:
        """Seconds left of the grace that started when this replica became active."""
        if not self.peering:
            return 0.0
        return max(0.0, self._active_since + self.grace - self._clock())

    @asynccontextmanager
    async def daemon(self, stopped: Awaitable[object]) -> AsyncIterator[float]:
        """Count one daemon for as long as the block runs; before entering, wait out what is
        left of the grace (or until ``stopped``). Yields the seconds waited."""
        if self._running == 0:
            self._active_since = self._clock()
        self._running += 1
        try:
            waited = await self._wait(stopped)
            yield waited
        finally:
            self._running -= 1

    async def _wait(self, stopped: Awaitable[object]) -> float:
        left = self.remaining()
        if left <= 0:
            return 0.0
        start = self._clock()
        stop = asyncio.ensure_future(stopped)
        try:
            await asyncio.wait({stop}, timeout=left)
        finally:
            if not stop.done():
                stop.cancel()
        return self._clock() - start
