"""The service's scheduling and status/event decisions, with the engine and the Kubernetes
writes replaced by in-memory stand-ins (the real ones run in ``e2e/test_operator.py``)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from imagecopy.controller.kube import KubernetesUnavailable
from imagecopy.controller.metrics import Metrics
from imagecopy.controller.service import ImageCopyService, ObjectRef
from imagecopy.controller.settings import Settings
from imagecopy.controller.status import apply_merge_patch, find_condition
from imagecopy.copy.options import CopyOptions
from imagecopy.copy.report import CopyReport, Outcome
from imagecopy.oci import errors

REF = ObjectRef("ns", "web", "uid-1")
LOG = logging.getLogger("test")
NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)


class FakeCopier:
    def __init__(self) -> None:
        self.results: list[CopyReport | Exception] = []
        self.calls = 0
        #: Seconds each copy takes.
        self.delay = 0.0

    async def copy(
        self, source: Any, destination: Any, options: Any = None, credentials: Any = None
    ) -> CopyReport:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


class Writer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        self.patches.append(dict(status))
        self.body["status"] = apply_merge_patch(self.body.get("status"), status)
        return True


class NoSecrets:
    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None


def source_not_found() -> errors.NotFound:
    return errors.NotFound(
        "reg.example/dev/web:1 not found",
        status=404,
        operation="get manifest",
        side=errors.Side.SOURCE,
    )


def report(outcome: Outcome = Outcome.COPIED) -> CopyReport:
    return CopyReport(
        source="reg.example/dev/web:1",
        destination="reg.example/prod/web:1",
        source_digest="sha256:" + "a" * 64,
        destination_digest="sha256:" + "a" * 64,
        destination_pinned="reg.example/prod/web@sha256:" + "a" * 64,
        outcome=outcome,
        blobs_mounted=2,
        bytes_mounted=10,
    )


def make(
    spec: dict[str, Any] | None = None, **settings: Any
) -> tuple[ImageCopyService, FakeCopier, Writer, list[tuple[str, str]], dict[str, Any]]:
    body: dict[str, Any] = {
        "metadata": {"generation": 1},
        "spec": spec
        or {
            "source": {"image": "reg.example/dev/web:1"},
            "destination": {"image": "reg.example/prod/web:1"},
        },
    }
    copier = FakeCopier()
    writer = Writer(body)
    events: list[tuple[str, str]] = []
    service = ImageCopyService(
        copier=copier,
        secrets=NoSecrets(),
        status_writer=writer,
        events=lambda ref, type_, reason, message: events.append((type_, reason)),
        metrics=Metrics(CollectorRegistry()),
        settings=Settings(stalled_retry=7.0, **settings),
        now=lambda: NOW,
        rng=random.Random(0),
    )
    return service, copier, writer, events, body


async def test_a_quick_copy_writes_one_status_patch_ready_and_posts_copied() -> None:
    service, copier, writer, events, body = make()
    copier.results = [report()]
    assert service.first_look(body) == 0
    assert await service.reconcile(REF, body, LOG) is None  # no interval: wait for a change
    # Done within the grace: no "Copying" patch before the result (issue 15).
    assert len(writer.patches) == 1
    assert find_condition(writer.patches[0], "Reconciling") == find_condition(
        body["status"], "Reconciling"
    )
    reconciling = find_condition(body["status"], "Reconciling")
    assert reconciling is not None and reconciling["status"] == "False"
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "Copied"
    assert body["status"]["observedGeneration"] == 1
    assert events == [("Normal", "Copied")]


async def test_a_copy_longer_than_the_grace_says_copying_first() -> None:
    service, copier, writer, _events, body = make()
    service.copying_grace = 0.05
    copier.delay = 1.0
    copier.results = [report()]
    assert await service.reconcile(REF, body, LOG) is None
    assert len(writer.patches) == 2
    reconciling = find_condition(writer.patches[0], "Reconciling")
    assert reconciling is not None and reconciling["status"] == "True"
    assert reconciling["reason"] == "Copying"
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "Copied"


async def test_a_cancelled_reconcile_cancels_its_copy() -> None:
    service, copier, _writer, _events, body = make()
    copier.delay = 30.0
    copier.results = [report()]
    task = asyncio.ensure_future(service.reconcile(REF, body, LOG))
    while copier.calls == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the reconcile was not cancelled")
    assert copier.results  # the copy never finished
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_interval_check_is_cheap_and_quiet_when_nothing_moved() -> None:
    service, copier, writer, events, body = make(
        {
            "source": {"image": "reg.example/dev/web:1"},
            "destination": {"image": "reg.example/prod/web:1"},
            "interval": "60s",
        }
    )
    copier.results = [report(), report(Outcome.UP_TO_DATE)]
    delay = await service.reconcile(REF, body, LOG)
    assert delay is not None and 60 <= delay <= 63
    writes = len(writer.patches)
    await service.reconcile(REF, body, LOG)
    assert len(writer.patches) == writes + 1  # one status write (lastSyncTime), no progress write
    assert events == [("Normal", "Copied")]  # no UpToDate event for a settled object
    assert body["status"]["totals"]["copies"] == 1


async def test_needs_a_change_failure_stalls_and_retries_slowly_with_one_event() -> None:
    service, copier, _writer, events, body = make()
    copier.results = [source_not_found()] * 3
    assert await service.reconcile(REF, body, LOG) == 7.0
    assert await service.reconcile(REF, body, LOG) == 7.0
    stalled = find_condition(body["status"], "Stalled")
    assert (
        stalled is not None
        and stalled["status"] == "True"
        and stalled["reason"] == "SourceNotFound"
    )
    assert events == [("Warning", "CopyFailed")]


async def test_a_destination_404_stalls_as_push_rejected() -> None:
    service, copier, _writer, events, body = make()
    copier.results = [
        errors.NotFound(
            "reg.example/prod/web: repository name not known to registry",
            status=404,
            code="NAME_UNKNOWN",
            operation="start upload",
            side=errors.Side.DESTINATION,
        )
    ]
    assert await service.reconcile(REF, body, LOG) == 7.0
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["reason"] == "PushRejected"
    assert find_condition(body["status"], "Stalled")["status"] == "True"  # type: ignore[index]
    assert events == [("Warning", "CopyFailed")]


async def test_recovery_after_failures_resets_the_backoff_and_posts_up_to_date() -> None:
    service, copier, _writer, events, body = make(retry_base=2.0, retry_max=20.0)
    copier.results = [
        report(),
        errors.RateLimited("429", status=429, side=errors.Side.SOURCE),
        errors.RateLimited("429", status=429, side=errors.Side.SOURCE),
        report(Outcome.UP_TO_DATE),
        errors.RateLimited("429", status=429, side=errors.Side.SOURCE),
    ]
    await service.reconcile(REF, body, LOG)
    first = await service.reconcile(REF, body, LOG)
    second = await service.reconcile(REF, body, LOG)
    assert first is not None and second is not None and 1 <= first <= 2 and 2 <= second <= 4
    assert await service.reconcile(REF, body, LOG) is None
    again = await service.reconcile(REF, body, LOG)
    assert again is not None and 1 <= again <= 2  # the counter restarted
    # One event per distinct failure, an UpToDate after recovering, a failure after Ready.
    assert events == [
        ("Normal", "Copied"),
        ("Warning", "CopyFailed"),
        ("Normal", "UpToDate"),
        ("Warning", "CopyFailed"),
    ]


async def test_a_status_write_the_api_refuses_is_logged_and_looked_at_again_soon() -> None:
    """Before: the copy succeeded while the API server was away, the Ready status was never
    written and nothing looked again (no interval): the object said Copying for good."""
    service, copier, writer, events, body = make()
    copier.results = [report(), report(Outcome.UP_TO_DATE)]
    working = writer.patch_status

    async def unavailable(namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        raise KubernetesUnavailable("writing the status of ns/web failed with 503")

    writer.patch_status = unavailable  # type: ignore[method-assign]
    delay = await service.reconcile(REF, body, LOG)
    assert delay is not None and 0 < delay <= 5  # soon, though no interval is set
    assert "status" not in body
    assert events == [("Normal", "Copied")]
    writer.patch_status = working  # type: ignore[method-assign]
    assert await service.reconcile(REF, body, LOG) is None
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["status"] == "True"


async def test_transient_failures_back_off_exponentially() -> None:
    service, copier, _writer, _events, body = make(retry_base=2.0, retry_max=20.0)
    copier.results = [errors.RegistryUnreachable("down", side=errors.Side.SOURCE)] * 6
    delays = [await service.reconcile(REF, body, LOG) for _ in range(6)]
    assert delays[0] is not None and 1 <= delays[0] <= 2
    assert delays[3] is not None and 8 <= delays[3] <= 16
    assert delays[5] is not None and 10 <= delays[5] <= 20
    reconciling = find_condition(body["status"], "Reconciling")
    assert reconciling is not None and reconciling["status"] == "True"


async def test_internal_errors_are_transient_and_hide_their_message() -> None:
    service, copier, _writer, _events, body = make()
    copier.results = [KeyError("token=secret")]
    delay = await service.reconcile(REF, body, LOG)
    assert delay is not None and delay <= 2
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["reason"] == "InternalError"
    assert "secret" not in ready["message"]


async def test_disallowed_registry_stalls_without_copying() -> None:
    service, copier, _writer, _events, body = make(allowed_registries=("*.internal",))
    assert await service.reconcile(REF, body, LOG) == 7.0
    assert copier.calls == 0
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["reason"] == "RegistryNotAllowed"


async def test_suspend_does_no_work_and_waits_for_a_change() -> None:
    service, copier, writer, _events, body = make(
        {
            "source": {"image": "reg.example/dev/web:1"},
            "destination": {"image": "reg.example/prod/web:1"},
            "suspend": True,
        }
    )
    assert await service.reconcile(REF, body, LOG) is None
    assert await service.reconcile(REF, body, LOG) is None
    assert copier.calls == 0
    assert len(writer.patches) == 1
    assert find_condition(body["status"], "Ready")["reason"] == "Suspended"  # type: ignore[index]
    assert service.first_look(body) is None


async def test_first_look_after_restart_counts_from_the_last_sync() -> None:
    service, copier, _writer, _events, body = make(
        {
            "source": {"image": "reg.example/dev/web:1"},
            "destination": {"image": "reg.example/prod/web:1"},
            "interval": "10m",
        }
    )
    copier.results = [report()]
    await service.reconcile(REF, body, LOG)
    body["status"]["lastSyncTime"] = (NOW - timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    delay = service.first_look(body)
    assert delay is not None and 360 <= delay <= 390
    body["metadata"]["generation"] = 2  # a spec change while the operator was down
    assert service.first_look(body) == 0


async def test_run_wakes_on_request_and_stops_on_signal() -> None:
    service, copier, _writer, _events, body = make()
    copier.results = [report(), report(Outcome.UP_TO_DATE)]
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(REF, body, stop, LOG))
    for _ in range(100):
        if copier.calls == 1:
            break
        await asyncio.sleep(0.01)
    assert copier.calls == 1
    body["metadata"]["generation"] = 2
    service.request(REF)
    for _ in range(100):
        if body["status"]["observedGeneration"] == 2:
            break
        await asyncio.sleep(0.01)
    assert copier.calls == 2
    assert body["status"]["observedGeneration"] == 2
    stop.set_result(None)
    await asyncio.wait_for(task, 2)


async def test_a_create_request_for_a_generation_already_started_is_dropped() -> None:
    service, copier, _writer, _events, body = make()
    copier.results = [report()]
    await service.reconcile(REF, body, LOG)
    service.request(REF, 1)  # the create handler, arriving after the worker's first look
    assert not service._state(REF).wake.is_set()
    service.request(REF, 2)  # a spec change
    assert service._state(REF).wake.is_set()


@pytest.mark.parametrize(
    ("uploads", "expected_peak"),
    [
        (True, 2),  # copies moving bytes: IMAGECOPY_MAX_CONCURRENT_COPIES
        (False, 3),  # copies that only mount: IMAGECOPY_MAX_COPIES_IN_FLIGHT
    ],
)
async def test_copies_across_objects_are_bounded_by_their_slots(
    uploads: bool, expected_peak: int
) -> None:
    service, _copier, _writer, _events, _body = make(
        max_concurrent_copies=2, max_copies_in_flight=3
    )
    running = 0
    peak = 0
    release = asyncio.Event()

    class SlowCopier:
        async def copy(
            self, src: Any, dst: Any, options: CopyOptions | None = None, *a: Any
        ) -> CopyReport:
            if uploads:
                assert options is not None and options.transfer_gate is not None
                async with options.transfer_gate():
                    return await self._run()
            return await self._run()

        async def _run(self) -> CopyReport:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1
            return report()

    service.copier = SlowCopier()
    bodies = [
        {
            "metadata": {"generation": 1},
            "spec": {
                "source": {"image": "reg.example/dev/web:1"},
                "destination": {"image": f"reg.example/prod/web{i}:1"},
            },
        }
        for i in range(5)
    ]
    tasks = [
        asyncio.create_task(service.reconcile(ObjectRef(f"ns{i}", f"o{i}", f"u{i}"), b, LOG))
        for i, b in enumerate(bodies)
    ]
    await asyncio.sleep(0.05)
    assert peak == expected_peak
    release.set()
    await asyncio.gather(*tasks)
    assert peak == expected_peak
