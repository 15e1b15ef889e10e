"""Prometheus metrics: counters after a copy, served over HTTP on /metrics."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from imagecopy.controller.metrics import Metrics, serve_metrics
from imagecopy.copy.report import CopyReport, Outcome
from testkit.processes import free_port


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_copy_shows_up_in_blob_byte_and_request_counters_on_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    report = CopyReport(
        source="r/a:1",
        destination="r/b:1",
        outcome=Outcome.COPIED,
        blobs_mounted=3,
        blobs_uploaded=1,
        blobs_existing=2,
        bytes_mounted=3000,
        bytes_uploaded=500,
        bytes_existing=20,
        duration_seconds=0.3,
    )
    metrics.record_report(report)
    metrics.record_report(
        CopyReport(source="r/a:1", destination="r/b:1", outcome=Outcome.UP_TO_DATE)
    )
    metrics.record_failure("SourceNotFound")
    metrics.name_registries({"127.0.0.1:5000"})  # a spec names it
    metrics.record_request("127.0.0.1:5000", "POST", "201")
    metrics.record_request("127.0.0.1:5000", "POST", "201")
    metrics.set_objects([frozenset({"Ready"}), frozenset({"Stalled"}), frozenset({"Ready"})])

    port = free_port()
    serve_metrics(port, registry)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    assert sample(text, 'imagecopy_blobs_total{outcome="mounted"}') == 3
    assert sample(text, 'imagecopy_blobs_total{outcome="uploaded"}') == 1
    assert sample(text, 'imagecopy_blobs_total{outcome="existing"}') == 2
    assert sample(text, 'imagecopy_bytes_total{outcome="mounted"}') == 3000
    assert sample(text, 'imagecopy_bytes_total{outcome="uploaded"}') == 500
    assert sample(text, "imagecopy_bytes_saved_total") == 3020
    assert sample(text, 'imagecopy_copies_total{result="Copied"}') == 1
    assert sample(text, 'imagecopy_copies_total{result="UpToDate"}') == 1
    assert sample(text, 'imagecopy_copies_total{result="SourceNotFound"}') == 1
    assert sample(text, "imagecopy_copy_duration_seconds_count") == 1
    assert (
        sample(
            text,
            'imagecopy_registry_requests_total{code="201",method="POST",registry="127.0.0.1:5000"}',
        )
        == 2
    )
    assert sample(text, 'imagecopy_objects{condition="Ready"}') == 2
    assert sample(text, 'imagecopy_objects{condition="Stalled"}') == 1
    assert sample(text, 'imagecopy_objects{condition="Reconciling"}') == 0


def test_the_event_loop_task_gauge_counts_live_tasks_from_the_metrics_thread() -> None:
    """Scraped from another thread (as ``/metrics`` is), the gauge follows the loop's tasks."""
    import asyncio

    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def scrape() -> float:
        value = registry.get_sample_value("imagecopy_event_loop_tasks")
        assert value is not None
        return value

    async def main() -> tuple[float, float, float]:
        metrics.watch_event_loop(asyncio.get_running_loop())
        at_rest = await asyncio.to_thread(scrape)
        gate = asyncio.Event()
        held = [asyncio.create_task(gate.wait()) for _ in range(5)]
        busy = await asyncio.to_thread(scrape)
        gate.set()
        await asyncio.gather(*held)
        after = await asyncio.to_thread(scrape)
        return at_rest, busy, after

    at_rest, busy, after = asyncio.run(main())
    assert busy == at_rest + 5
    assert after == at_rest
