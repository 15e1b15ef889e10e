"""No tenant starves another: fair copy slots, a deadline and a no-progress timeout per copy,
and request-metric labels from a bounded set.

Pure asyncio with in-memory stand-ins for the engine (the real operator against a stalling
registry runs in ``e2e/test_fairness.py``). Copies are made to block on events the test
controls, so who gets a slot when is exact, not timing-dependent; the watchdog tests use
timeouts of a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from imagecopy.controller.deadline import CopyTimeout, CopyWatchdog, note_request
from imagecopy.controller.metrics import Metrics
from imagecopy.controller.service import ImageCopyService, ObjectRef
from imagecopy.controller.settings import Settings, SettingsError
from imagecopy.controller.slots import FairSlots
from imagecopy.controller.status import apply_merge_patch, find_condition
from imagecopy.copy.options import CopyOptions
from imagecopy.copy.report import CopyReport, Outcome
from imagecopy.oci.descriptor import Descriptor

LOG = logging.getLogger("test")
NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)


async def settle() -> None:
    """Let every ready task run until all are blocked again."""
    for _ in range(20):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- FairSlots


class Copies:
    """Copies that hold a slot until the test finishes them, recording the start order."""

    def __init__(self, slots: FairSlots) -> None:
        self.slots = slots
        self.started: list[str] = []
        self._finish: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def queue(self, namespace: str, name: str) -> None:
        self._finish[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(self._run(namespace, name))

    async def _run(self, namespace: str, name: str) -> None:
        async with self.slots.slot(namespace):
            self.started.append(name)
            await self._finish[name].wait()

    def finish(self, name: str) -> None:
        self._finish[name].set()

    async def finish_all(self) -> None:
        for event in self._finish.values():
            event.set()
        await asyncio.gather(*self.tasks.values())


async def test_a_namespace_queued_behind_a_hostile_backlog_gets_the_next_free_slot() -> None:
    slots = FairSlots(4, per_namespace=4)  # no reserve: A may fill every slot
    copies = Copies(slots)
    for i in range(6):
        copies.queue("a", f"a{i}")
    await settle()
    assert copies.started == ["a0", "a1", "a2", "a3"]
    copies.queue("b", "b0")
    await settle()
    assert "b0" not in copies.started and slots.waiting == 3

    copies.finish("a0")
    await settle()
    # B waited behind none of A's queued copies: the first free slot is B's.
    assert copies.started == ["a0", "a1", "a2", "a3", "b0"]
    copies.finish("a1")
    await settle()
    assert copies.started[-1] == "a4"
    await copies.finish_all()
    assert slots.in_use == 0 and slots.waiting == 0


async def test_by_default_one_namespace_leaves_a_slot_for_the_others() -> None:
    settings = Settings(max_concurrent_copies=4)
    slots = FairSlots(settings.max_concurrent_copies, settings.namespace_copy_slots)
    copies = Copies(slots)
    for i in range(6):
        copies.queue("a", f"a{i}")
    await settle()
    assert copies.started == ["a0", "a1", "a2"]  # 3 of 4: one slot stays free
    copies.queue("b", "b0")
    await settle()
    assert copies.started[-1] == "b0"  # at once, while all of A's copies still run
    await copies.finish_all()


async def test_waiting_namespaces_are_served_round_robin() -> None:
    slots = FairSlots(1)
    copies = Copies(slots)
    copies.queue("a", "first")
    await settle()
    for i in range(3):
        for namespace in ("a", "b", "c"):
            copies.queue(namespace, f"{namespace}{i}")
    await settle()
    order = ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    running = "first"
    for expected in order:
        copies.finish(running)
        await settle()
        assert copies.started[-1] == expected
        running = expected
    await copies.finish_all()


async def test_a_cancelled_waiter_takes_no_slot_and_loses_no_slot() -> None:
    slots = FairSlots(1)
    copies = Copies(slots)
    copies.queue("a", "a0")
    copies.queue("b", "b0")
    copies.queue("c", "c0")
    await settle()
    copies.tasks["b0"].cancel()
    copies.finish("a0")  # the slot frees in the same turn b0's cancellation lands
    await settle()
    assert copies.started == ["a0", "c0"]
    copies.finish("c0")
    await asyncio.gather(copies.tasks["a0"], copies.tasks["c0"])
    with pytest.raises(asyncio.CancelledError):
        await copies.tasks["b0"]
    assert slots.in_use == 0 and slots.waiting == 0


async def test_a_waiter_cancelled_after_its_grant_hands_the_slot_on() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    later = asyncio.create_task(slots.acquire("c"))
    await settle()
    slots.release("a")  # grants b's future...
    waiter.cancel()  # ...before b ran: b must pass it on
    await settle()
    assert later.done() and slots.held_by("c") == 1 and slots.in_use == 1
    slots.release("c")
    assert slots.in_use == 0


# --------------------------------------------------------------------------- the watchdog

DESC = Descriptor(media_type="application/octet-stream", digest="sha256:" + "0" * 64, size=1)


async def test_a_copy_without_progress_is_cancelled_after_the_stall_timeout() -> None:
    cancelled = asyncio.Event()

    async def stalled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    watchdog = CopyWatchdog(timeout=60, stall_timeout=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CopyTimeout, match=r"no progress for 0\.05s.*IMAGECOPY_STALL_TIMEOUT"):
        await watchdog.run(stalled())
    assert cancelled.is_set()
    assert loop.time() - started < 1


async def test_progress_keeps_a_copy_alive_until_its_deadline() -> None:
    # Generous against a busy machine: 10 ms between bytes, 200 ms allowed.
    watchdog = CopyWatchdog(timeout=0.6, stall_timeout=0.2)

    async def trickle() -> None:
        while True:  # a blob advancing a byte at a time, never done
            await asyncio.sleep(0.01)
            watchdog.blob_advanced(DESC, 1)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CopyTimeout, match=r"within 0\.6s.*IMAGECOPY_COPY_TIMEOUT"):
        await watchdog.run(trickle())
    assert 0.6 <= loop.time() - started < 2


async def test_a_paused_copy_is_neither_stalled_nor_past_its_deadline() -> None:
    """A wait for a copy slot mid-copy (``paused``) stops both clocks."""
    watchdog = CopyWatchdog(timeout=0.1, stall_timeout=0.1)

    async def waits_for_a_slot() -> str:
        with watchdog.paused():
            with watchdog.paused():  # nested: the outer block decides
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        return "copied"

    assert await watchdog.run(waits_for_a_slot()) == "copied"

    async def then_never_ends() -> None:
        with watchdog.paused():
            await asyncio.sleep(0.3)
        while True:  # after the pause the clocks run again
            await asyncio.sleep(0.01)
            watchdog.blob_advanced(DESC, 1)

    with pytest.raises(CopyTimeout, match="IMAGECOPY_COPY_TIMEOUT"):
        await watchdog.run(then_never_ends())


async def test_answered_requests_count_as_progress_and_retries_do_not() -> None:
    """The pool's request hook reaches the watchdog of the copy that sent the request,
    from the tasks the engine starts too (they inherit the copy's context)."""

    async def child(code: str) -> None:
        note_request(code)

    async def requests(codes: list[str]) -> str:
        for code in codes:
            await asyncio.sleep(0.02)
            await asyncio.create_task(child(code))
        return "done"

    answered = CopyWatchdog(timeout=60, stall_timeout=0.5)  # 20 ms apart, 500 ms allowed
    assert await answered.run(requests(["401", "200", "404", "201"] * 3)) == "done"

    retried = CopyWatchdog(timeout=60, stall_timeout=0.1)
    with pytest.raises(CopyTimeout, match="no progress"):
        await retried.run(requests(["503", "error", "429", "502"] * 25))


async def test_a_finished_copy_returns_its_result_and_its_error_unchanged() -> None:
    async def ok() -> int:
        return 7

    async def fails() -> int:
        raise ValueError("boom")

    assert await CopyWatchdog(60, 60).run(ok()) == 7
    with pytest.raises(ValueError, match="boom"):
        await CopyWatchdog(60, 60).run(fails())


async def test_cancelling_the_caller_cancels_the_copy() -> None:
    cancelled = asyncio.Event()

    async def long() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outer = asyncio.create_task(CopyWatchdog(60, 60).run(long()))
    await settle()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled.is_set()


async def test_a_copy_that_will_not_wind_down_gives_its_slot_back_after_the_grace() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # e.g. cancelling uploads on a registry that hangs
            raise

    watchdog = CopyWatchdog(timeout=60, stall_timeout=0.02, grace=0.05)
    with pytest.raises(CopyTimeout):
        await watchdog.run(stubborn())
    release.set()
    await settle()


# --------------------------------------------------------------------------- the service


class Writer:
    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        key = f"{namespace}/{name}"
        self.statuses[key] = apply_merge_patch(self.statuses.get(key), status)
        return True


class NoSecrets:
    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None


def report() -> CopyReport:
    return CopyReport(
        source="reg.example/dev/web:1",
        destination="reg.example/prod/web:1",
        source_digest="sha256:" + "a" * 64,
        destination_digest="sha256:" + "a" * 64,
        destination_pinned="reg.example/prod/web@sha256:" + "a" * 64,
        outcome=Outcome.COPIED,
    )


def body(destination: str, source: str = "reg.example/dev/web:1") -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"source": {"image": source}, "destination": {"image": destination}},
    }


def service(copier: Any, metrics: Metrics | None = None, **settings: Any) -> ImageCopyService:
    return ImageCopyService(
        copier=copier,
        secrets=NoSecrets(),
        status_writer=Writer(),
        events=lambda ref, type_, reason, message: None,
        metrics=metrics or Metrics(CollectorRegistry()),
        settings=Settings(**settings),
        now=lambda: NOW,
        rng=random.Random(0),
    )


async def test_a_normal_copy_in_another_namespace_starts_when_the_first_slot_frees() -> None:
    """Before: one FIFO semaphore, so B started only after all six of A's copies."""
    started: list[str] = []
    finish: dict[str, asyncio.Event] = {}

    class Blocking:
        async def copy(self, source: Any, destination: Any, *args: Any) -> CopyReport:
            name = destination.repository.rsplit("/", 1)[-1]
            started.append(name)
            await finish.setdefault(name, asyncio.Event()).wait()
            return report()

    svc = service(
        Blocking(), max_concurrent_copies=4, max_copies_per_namespace=4, max_copies_in_flight=4
    )
    tasks = []
    for i in range(6):
        ref = ObjectRef("tenant-a", f"a{i}", f"ua{i}")
        tasks.append(asyncio.create_task(svc.reconcile(ref, body(f"reg.example/a/a{i}:1"), LOG)))
        await settle()
    tasks.append(
        asyncio.create_task(
            svc.reconcile(ObjectRef("tenant-b", "b", "ub"), body("reg.example/b/b:1"), LOG)
        )
    )
    await settle()
    assert started == ["a0", "a1", "a2", "a3"]
    finish.setdefault("a0", asyncio.Event()).set()
    await settle()
    assert started == ["a0", "a1", "a2", "a3", "b"]
    for name in ("a1", "a2", "a3", "a4", "a5", "b"):
        finish.setdefault(name, asyncio.Event()).set()
    await asyncio.gather(*tasks)


async def test_a_stalled_copy_ends_in_copy_timeout_and_frees_its_slot() -> None:
    """Before: no deadline, the object stayed Copying and held its slot for good."""
    calls = 0

    class StallsOnce:
        async def copy(self, source: Any, dst: Any, options: CopyOptions, *a: Any) -> CopyReport:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(3600)  # a registry that accepted and never answered
            assert options.progress is not None  # the watchdog hears the engine
            return report()

    svc = service(StallsOnce(), max_concurrent_copies=1, stall_timeout=0.05)
    writer = svc.status_writer
    assert isinstance(writer, Writer)
    ref = ObjectRef("tenant-a", "stuck", "u1")
    delay = await asyncio.wait_for(svc.reconcile(ref, body("reg.example/a/x:1"), LOG), 5)
    status = writer.statuses["tenant-a/stuck"]
    ready = find_condition(status, "Ready")
    reconciling = find_condition(status, "Reconciling")
    assert ready is not None and ready["reason"] == "CopyTimeout"
    assert "no progress" in ready["message"]
    assert reconciling is not None and reconciling["status"] == "True"  # transient
    assert delay is not None and 1 <= delay <= 2  # the first backoff step
    other = ObjectRef("tenant-b", "next", "u2")
    await asyncio.wait_for(svc.reconcile(other, body("reg.example/b/y:1"), LOG), 5)
    ready = find_condition(writer.statuses["tenant-b/next"], "Ready")
    assert ready is not None and ready["reason"] == "Copied"


class Uploading:
    """Copies that move bytes (enter the transfer gate, as the engine does before its first
    upload) when their destination repository starts with ``up``, and only mount otherwise;
    each blocks until the test finishes it, recording who runs and who holds a copy slot."""

    def __init__(self) -> None:
        self.running: list[str] = []
        self.moving: list[str] = []
        self.finish: dict[str, asyncio.Event] = {}

    def done(self, name: str) -> None:
        self.finish.setdefault(name, asyncio.Event()).set()

    async def copy(self, src: Any, dst: Any, options: CopyOptions, *a: Any) -> CopyReport:
        name = dst.repository.rsplit("/", 1)[-1]
        self.running.append(name)
        finish = self.finish.setdefault(name, asyncio.Event())
        if name.startswith("up"):
            assert options.transfer_gate is not None and options.progress is not None
            async with options.transfer_gate():
                self.moving.append(name)
                while not finish.is_set():  # bytes moving: progress every 10 ms
                    options.progress.blob_advanced(DESC, 1)
                    await asyncio.sleep(0.01)
        else:
            await finish.wait()
        return report()


async def test_copies_that_only_mount_do_not_wait_behind_copies_moving_bytes() -> None:
    """Before (issue 15): every copy held one of the 4 copy slots for its whole life, so a
    burst of mount-only copies queued behind each other and behind uploads."""
    copier = Uploading()
    svc = service(copier, max_concurrent_copies=2, max_copies_in_flight=8)
    writer = svc.status_writer
    assert isinstance(writer, Writer)
    tasks = {}
    for name in ("up0", "up1", "up2", "m0", "m1", "m2", "m3"):
        ref = ObjectRef("tenant-a", name, f"u-{name}")
        tasks[name] = asyncio.create_task(svc.reconcile(ref, body(f"reg.example/a/{name}:1"), LOG))
        await settle()
    # All seven run; one namespace holds at most one of the two copy slots (the default
    # leaves one for the others), so up1 and up2 wait for a copy slot, the mounts for none.
    assert sorted(copier.running) == ["m0", "m1", "m2", "m3", "up0", "up1", "up2"]
    assert copier.moving == ["up0"]
    for name in ("m0", "m1", "m2", "m3"):
        copier.done(name)
        await tasks[name]
        ready = find_condition(writer.statuses[f"tenant-a/{name}"], "Ready")
        assert ready is not None and ready["reason"] == "Copied"
    assert copier.moving == ["up0"]
    # A newcomer from another namespace takes the free copy slot before A's backlog.
    other = ObjectRef("tenant-b", "upb", "u-upb")
    tasks["upb"] = asyncio.create_task(svc.reconcile(other, body("reg.example/b/upb:1"), LOG))
    await settle()
    assert copier.moving == ["up0", "upb"]
    copier.done("up0")
    await tasks["up0"]
    await settle()
    assert copier.moving == ["up0", "upb", "up1"]
    for name in ("up1", "up2", "upb"):
        copier.done(name)
    await asyncio.gather(*tasks.values())
    assert copier.moving == ["up0", "upb", "up1", "up2"]


async def test_waiting_for_a_copy_slot_is_neither_a_stall_nor_on_the_deadline() -> None:
    copier = Uploading()
    svc = service(
        copier,
        max_concurrent_copies=1,
        max_copies_per_namespace=1,
        stall_timeout=0.2,  # generous against a busy machine: progress every 10 ms
    )
    writer = svc.status_writer
    assert isinstance(writer, Writer)
    first = asyncio.create_task(
        svc.reconcile(ObjectRef("tenant-a", "up0", "u0"), body("reg.example/a/up0:1"), LOG)
    )
    await settle()
    second = asyncio.create_task(
        svc.reconcile(ObjectRef("tenant-b", "up1", "u1"), body("reg.example/b/up1:1"), LOG)
    )
    await settle()
    assert copier.moving == ["up0"]
    # up0 moves bytes for three of up1's stall timeouts; up1 waits for the one copy slot all
    # that time, without progress.
    await asyncio.sleep(0.6)
    assert copier.moving == ["up0"]
    copier.done("up0")
    await asyncio.wait_for(first, 5)
    await settle()  # up1 got the slot: now its clocks run, and it makes progress
    assert copier.moving == ["up0", "up1"]
    copier.done("up1")
    await asyncio.wait_for(second, 5)
    for key in ("tenant-a/up0", "tenant-b/up1"):
        ready = find_condition(writer.statuses[key], "Ready")
        assert ready is not None and ready["reason"] == "Copied", (key, ready)


# --------------------------------------------------------------------------- metric labels


def request_series(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    series: dict[tuple[str, str, str], float] = {}
    for family in registry.collect():
        if family.name != "imagecopy_registry_requests":
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                key = (s.labels["registry"], s.labels["method"], s.labels["code"])
                series[key] = s.value
    return series


async def test_only_registries_named_by_specs_become_request_labels() -> None:
    """Before: every host a redirect, upload Location or token realm named became a label."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    class Requests:
        async def copy(self, *args: Any) -> CopyReport:
            for host in ("reg.example", "src.example:5000", "cdn.example", "auth.example"):
                svc.record_request(host, "GET", "200")
            for i in range(50):  # an upload Location naming a new host every time
                svc.record_request(f"h{i}.evil.example", "PATCH", "202")
            svc.record_request("src.example:5000", "GET", "999")
            svc.record_request("src.example:5000", "GET", "418")
            svc.record_request("src.example:5000", "BREW", "200")
            return report()

    svc = service(Requests(), metrics, allowed_registries=("reg.example", "src.example:*"))
    ref = ObjectRef("ns", "web", "u1")
    await svc.reconcile(ref, body("reg.example/prod/web:1", "src.example:5000/dev/web:1"), LOG)
    assert request_series(registry) == {
        ("reg.example", "GET", "200"): 1,
        ("src.example:5000", "GET", "200"): 1,
        ("other", "GET", "200"): 2,
        ("other", "PATCH", "202"): 50,
        ("src.example:5000", "GET", "other"): 1,
        ("src.example:5000", "GET", "4xx"): 1,
        ("src.example:5000", "other", "200"): 1,
    }

    # The object goes away: its source registry's series go with it; the exact allow-list
    # entry stays a label value.
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stop.set_result(None)
    await svc.run(ref, body("reg.example/prod/web:1", "src.example:5000/dev/web:1"), stop, LOG)
    assert {key[0] for key in request_series(registry)} == {"reg.example", "other"}
    assert b'registry="src.example:5000"' not in generate_latest(registry)


def test_a_default_port_in_a_spec_names_the_host_as_urls_spell_it() -> None:
    metrics = Metrics(CollectorRegistry())
    svc = service(object(), metrics, allowed_registries=("reg.example:443",))
    svc.record_request("reg.example", "GET", "200")  # https://reg.example:443 → reg.example
    assert metrics.requests.labels("reg.example", "GET", "200")._value.get() == 1


# --------------------------------------------------------------------------- settings


def test_deadline_and_fairness_settings_have_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.copy_timeout == 1800
    assert settings.stall_timeout == 120
    assert settings.max_copies_per_namespace is None
    assert settings.namespace_copy_slots == 3  # of the default 4
    assert Settings(max_concurrent_copies=1).namespace_copy_slots == 1
    # Copies in flight: 8, one namespace all but the copy slots' reserve of one.
    assert (settings.copies_in_flight, settings.namespace_copies_in_flight) == (8, 7)
    no_reserve = Settings(max_concurrent_copies=4, max_copies_per_namespace=4)
    assert no_reserve.namespace_copies_in_flight == 8
    # Never fewer in flight than copy slots.
    assert Settings(max_concurrent_copies=40).copies_in_flight == 40


def test_deadline_and_fairness_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "IMAGECOPY_COPY_TIMEOUT": "1h",
            "IMAGECOPY_STALL_TIMEOUT": "30s",
            "IMAGECOPY_MAX_CONCURRENT_COPIES": "8",
            "IMAGECOPY_MAX_COPIES_PER_NAMESPACE": "2",
            "IMAGECOPY_MAX_COPIES_IN_FLIGHT": "10",
        }
    )
    assert (settings.copy_timeout, settings.stall_timeout) == (3600, 30)
    assert settings.namespace_copy_slots == 2
    assert (settings.copies_in_flight, settings.namespace_copies_in_flight) == (10, 4)
    assert Settings(max_concurrent_copies=2, max_copies_per_namespace=9).namespace_copy_slots == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGECOPY_COPY_TIMEOUT", "off"),
        ("IMAGECOPY_COPY_TIMEOUT", "0"),
        ("IMAGECOPY_STALL_TIMEOUT", "none"),
        ("IMAGECOPY_STALL_TIMEOUT", "500ms"),
        ("IMAGECOPY_STALL_TIMEOUT", "soon"),
        ("IMAGECOPY_MAX_COPIES_PER_NAMESPACE", "0"),
        ("IMAGECOPY_MAX_COPIES_PER_NAMESPACE", "two"),
        ("IMAGECOPY_MAX_COPIES_IN_FLIGHT", "0"),
    ],
)
def test_a_copy_cannot_be_left_without_a_deadline(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
