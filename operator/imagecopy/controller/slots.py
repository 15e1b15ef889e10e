"""Copy slots shared fairly across namespaces (docs/reference.md §7, "Fairness").

``IMAGECOPY_MAX_CONCURRENT_COPIES`` copies run at once in one operator process. A plain
semaphore hands slots out first come, first served, so a handful of slow objects in one
namespace could hold every slot while everybody else queued behind them. ``FairSlots``
instead keeps one FIFO queue per namespace and, whenever a slot is free, serves the waiting
namespace that holds the fewest slots (ties: the one served least recently). A newcomer from
another namespace therefore waits for the next free slot only, never behind a namespace's
backlog; and no namespace holds more than ``per_namespace`` slots, so with the default (one
less than the slots) one slot is always left for the others.

Pure asyncio and no clock: what a slot is held for is bounded elsewhere (``deadline``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["FairSlots"]


class FairSlots:
    """``capacity`` slots, at most ``per_namespace`` of them held by one namespace."""

    def __init__(
        self,
        capacity: int,
        per_namespace: int | None = None,
        *,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.per_namespace = min(capacity, max(1, per_namespace or capacity))
        self._held: dict[str, int] = {}
        # Namespaces with waiters, least recently served first; each a FIFO of futures that
        # resolve when the slot is theirs.
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._in_use = 0
        #: Called after every change of ``in_use`` or ``waiting`` (e.g. to update a gauge).
        self._on_change = on_change

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def held_by(self, namespace: str) -> int:
        return self._held.get(namespace, 0)

    @asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """Hold one slot for ``namespace`` for the body of the ``async with``."""
        await self.acquire(namespace)
        try:
            yield
        finally:
            self.release(namespace)

    async def acquire(self, namespace: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(namespace, deque()).append(future)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted in the same turn the waiter was cancelled: hand it on.
                self.release(namespace)
            else:
                self._forget(namespace, future)
            raise

    def release(self, namespace: str) -> None:
        held = self._held.get(namespace, 0)
        if held <= 0:
            raise RuntimeError(f"namespace {namespace!r} holds no copy slot")
        if held == 1:
            del self._held[namespace]
        else:
            self._held[namespace] = held - 1
        self._in_use -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self._in_use < self.capacity:
            namespace = self._next()
            if namespace is None:
                break
            queue = self._queues.pop(namespace)
            future = queue.popleft()
            if queue:
                # Served now: to the back of the round-robin order.
                self._queues[namespace] = queue
            if future.done():
                # Its waiter was cancelled and has not run yet to take itself off.
                continue
            self._held[namespace] = self._held.get(namespace, 0) + 1
            self._in_use += 1
            future.set_result(None)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _next(self) -> str | None:
        """The waiting namespace to serve: fewest slots held, then least recently served;
        None when every waiting namespace is at its cap."""
        best: str | None = None
        best_held = self.per_namespace
        for namespace in self._queues:  # dict order: least recently served first
            held = self._held.get(namespace, 0)
            if held < best_held:
                best, best_held = namespace, held
        return best

    def _forget(self, namespace: str, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(namespace)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            return
        if not queue:
            del self._queues[namespace]
        self._changed()
