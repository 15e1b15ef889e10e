"""``Takeover``: with peering, daemons started when the replica becomes active wait a grace."""

from __future__ import annotations

import asyncio

from imagecopy.controller.takeover import Takeover


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def never() -> None:
    await asyncio.Event().wait()


def test_standalone_never_waits() -> None:
    async def run() -> float:
        t = Takeover(peering=False, grace=30)
        async with t.daemon(never()) as waited:
            return waited

    assert asyncio.run(asyncio.wait_for(run(), 5)) == 0.0


def test_first_daemons_after_activation_wait_the_grace_later_ones_do_not() -> None:
    async def run() -> list[float]:
        t = Takeover(peering=True, grace=0.3)
        inside = asyncio.Event()
        release = asyncio.Event()
        waits: list[float] = []

        async def daemon() -> None:
            async with t.daemon(never()) as waited:
                waits.append(waited)
                inside.set()
                await release.wait()

        first = asyncio.create_task(daemon())  # 0 → 1 running: the replica became active
        second = asyncio.create_task(daemon())  # started with it: waits too
        await asyncio.sleep(0.05)
        assert t.running == 2 and not inside.is_set()
        await inside.wait()
        async with t.daemon(never()) as waited:  # a new object while daemons run
            waits.append(waited)
        release.set()
        await asyncio.gather(first, second)
        assert t.running == 0
        return waits

    waits = asyncio.run(asyncio.wait_for(run(), 5))
    assert len(waits) == 3
    assert all(w >= 0.2 for w in waits[:2]), waits
    assert waits[2] == 0.0


def test_a_stopped_daemon_stops_waiting() -> None:
    async def run() -> float:
        t = Takeover(peering=True, grace=60)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        async with t.daemon(stop.wait()) as waited:
            return waited

    waited = asyncio.run(asyncio.wait_for(run(), 5))
    assert 0.05 < waited < 5


def test_every_daemon_gone_then_a_new_one_is_a_new_activation() -> None:
    clock = Clock()
    t = Takeover(peering=True, grace=10, clock=clock)

    async def enter_and_leave() -> None:
        stop = asyncio.Event()
        stop.set()
        async with t.daemon(stop.wait()):
            pass

    asyncio.run(enter_and_leave())
    assert t.remaining() == 10.0  # activation marked at 100
    clock.now += 20
    assert t.remaining() == 0.0
    asyncio.run(enter_and_leave())  # 0 → 1 again (e.g. resumed after a pause)
    assert t.remaining() == 10.0
