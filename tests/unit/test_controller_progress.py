"""``status.progress`` of a running copy: the counting, the periodic writes, and its removal
by the status write that ends the attempt. The engine and the API are in-memory stand-ins
here; ``e2e/test_scale.py`` watches a real slow copy advance."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from imagecopy.controller.progress import CopyProgress, report_progress
from imagecopy.controller.settings import Settings, SettingsError
from imagecopy.copy.options import PlanListener
from imagecopy.copy.report import CopyReport
from imagecopy.oci.blobs import BlobOutcome
from imagecopy.oci.descriptor import Descriptor
from tests.unit.test_controller_service import LOG, REF, make, report, source_not_found

NOW = datetime(2026, 12, 2, 2, 0, 0, tzinfo=UTC)


def blob(n: int, size: int) -> Descriptor:
    return Descriptor(
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        digest="sha256:" + f"{n:x}" * 64,
        size=size,
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def blob_started(self, desc: Descriptor) -> None:
        self.events.append(("started", desc.digest))

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        self.events.append(("advanced", desc.digest))

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self.events.append(("finished", desc.digest))


def test_counts_blobs_and_bytes_and_forwards_every_event() -> None:
    inner = Recorder()
    progress = CopyProgress(inner)
    assert isinstance(progress, PlanListener)
    a, b = blob(1, 100), blob(2, 50)
    assert progress.snapshot() is None  # nothing planned: nothing to show
    progress.copy_planned(2, 150)
    progress.blob_started(a)
    progress.blob_advanced(a, 60)
    assert progress.snapshot() == {
        "blobsDone": 0,
        "blobsTotal": 2,
        "bytesDone": 60,
        "bytesTotal": 150,
    }
    progress.blob_advanced(a, 60)  # a retried transfer: at most the blob's size
    assert progress.bytes_done == 100
    progress.blob_finished(a, BlobOutcome.UPLOADED)
    progress.blob_started(b)
    progress.blob_finished(b, BlobOutcome.MOUNTED)  # a mount moves no bytes: done at once
    assert progress.snapshot() == {
        "blobsDone": 2,
        "blobsTotal": 2,
        "bytesDone": 150,
        "bytesTotal": 150,
    }
    assert [kind for kind, _ in inner.events] == [
        "started",
        "advanced",
        "advanced",
        "finished",
        "started",
        "finished",
    ]


async def test_writes_each_period_only_when_the_counts_changed() -> None:
    progress = CopyProgress()
    progress.copy_planned(1, 1000)
    writes: list[dict[str, Any]] = []

    async def write(value: Mapping[str, Any]) -> None:
        writes.append(dict(value))

    done = asyncio.Event()
    task = asyncio.create_task(report_progress(progress, write, 0.05, done, lambda: NOW))
    await asyncio.sleep(0.12)
    assert len(writes) == 1  # the counts did not change after the first write
    assert writes[0] == {
        "blobsDone": 0,
        "blobsTotal": 1,
        "bytesDone": 0,
        "bytesTotal": 1000,
        "updateTime": "2026-12-02T02:00:00Z",
    }
    progress.blob_advanced(blob(1, 1000), 400)
    await asyncio.sleep(0.1)
    assert [w["bytesDone"] for w in writes] == [0, 400]
    done.set()
    await asyncio.wait_for(task, 1)


async def test_nothing_is_written_before_the_plan_or_after_done() -> None:
    progress = CopyProgress()
    writes: list[Mapping[str, Any]] = []

    async def write(value: Mapping[str, Any]) -> None:
        writes.append(value)

    done = asyncio.Event()
    task = asyncio.create_task(report_progress(progress, write, 0.02, done, lambda: NOW))
    await asyncio.sleep(0.1)
    done.set()
    await asyncio.wait_for(task, 1)
    progress.copy_planned(3, 30)
    await asyncio.sleep(0.05)
    assert writes == []


class SlowCopier:
    """Plans two blobs, streams one slowly, then ends with ``result``."""

    def __init__(self, result: CopyReport | Exception) -> None:
        self.result = result

    async def copy(
        self, source: Any, destination: Any, options: Any = None, credentials: Any = None
    ) -> CopyReport:
        listener = options.progress
        a = blob(1, 1000)
        listener.copy_planned(2, 1500)
        listener.blob_started(a)
        for _ in range(4):
            await asyncio.sleep(0.03)
            listener.blob_advanced(a, 250)
        listener.blob_finished(a, BlobOutcome.UPLOADED)
        await asyncio.sleep(0.05)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize("ends", ["success", "failure"])
async def test_the_service_writes_progress_while_copying_and_removes_it_at_the_end(
    ends: str,
) -> None:
    service, _, writer, events, body = make(progress_interval=0.02)
    result: CopyReport | Exception = report() if ends == "success" else source_not_found()
    service.copier = SlowCopier(result)
    await service.reconcile(REF, body, LOG)
    progress = [p["progress"] for p in writer.patches if p.get("progress")]
    assert len(progress) >= 2, writer.patches
    done = [p["bytesDone"] for p in progress]
    assert done == sorted(done) and done[-1] > done[0]
    assert all(p["bytesTotal"] == 1500 and p["blobsTotal"] == 2 for p in progress)
    final = writer.patches[-1]
    assert "progress" in final and final["progress"] is None
    assert "progress" not in body["status"]
    # Events are those of a copy without progress.
    assert events == ([("Normal", "Copied")] if ends == "success" else [("Warning", "CopyFailed")])


async def test_a_quick_copy_writes_no_progress() -> None:
    service, copier, writer, _, body = make(progress_interval=10.0)
    copier.results = [report()]
    await service.reconcile(REF, body, LOG)
    assert not [p for p in writer.patches if "progress" in p]


def test_the_period_is_a_setting_of_at_least_one_second() -> None:
    assert Settings.from_env({}).progress_interval == 10.0
    assert Settings.from_env({"IMAGECOPY_PROGRESS_INTERVAL": "1s"}).progress_interval == 1.0
    for bad in ("500ms", "soon", "off"):
        with pytest.raises(SettingsError, match="IMAGECOPY_PROGRESS_INTERVAL"):
            Settings.from_env({"IMAGECOPY_PROGRESS_INTERVAL": bad})
