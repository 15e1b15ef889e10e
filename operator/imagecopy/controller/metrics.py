"""Prometheus metrics of docs/reference.md §8 and the ``/metrics`` endpoint.

One ``Metrics`` per process, on the default registry in the operator; tests pass their own
``CollectorRegistry``.

Every label takes values from a bounded set, since a registry (and the tenant who names it)
chooses what the operator is sent: the ``registry`` label of request counts is a registry
named by a served object's spec or an exact ``IMAGECOPY_ALLOWED_REGISTRIES`` entry, and
``other`` for every other host (token realms, redirect targets, upload ``Location``s); the
``code`` label is a status the protocol uses, else its class (``4xx``) or ``other``. Series of
a registry no object names any more are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..copy.report import CopyReport, Outcome
from .status import CONDITION_TYPES

__all__ = ["OTHER_REGISTRY", "Metrics", "serve_metrics"]

#: The ``registry`` label of every host that is not a named registry.
OTHER_REGISTRY = "other"

#: Status codes kept as they are in the ``code`` label; others become their class.
_KNOWN_CODES = frozenset(
    {
        "error",
        *(
            str(code)
            for code in (200, 201, 202, 204, 206, 301, 302, 303, 307, 308, 400, 401, 403, 404)
        ),
        *(str(code) for code in (405, 406, 408, 409, 413, 415, 416, 429, 500, 502, 503, 504)),
    }
)
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"})

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kwargs: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.copies = Counter(
            "imagecopy_copies",
            "Copy attempts by result: Copied, UpToDate, TagExists, or the failure reason.",
            ["result"],
            **kwargs,
        )
        self.blobs = Counter(
            "imagecopy_blobs",
            "Blobs handled by copies, by outcome (mounted, uploaded, existing).",
            ["outcome"],
            **kwargs,
        )
        self.bytes = Counter(
            "imagecopy_bytes",
            "Blob bytes handled by copies, by outcome (mounted, uploaded, existing).",
            ["outcome"],
            **kwargs,
        )
        self.bytes_saved = Counter(
            "imagecopy_bytes_saved",
            "Blob bytes that crossed no network (mounted plus already present).",
            **kwargs,
        )
        self.duration = Histogram(
            "imagecopy_copy_duration_seconds",
            "Duration of copies that moved or linked something.",
            buckets=_DURATION_BUCKETS,
            **kwargs,
        )
        self.requests = Counter(
            "imagecopy_registry_requests",
            "HTTP requests to registries by registry, method and status code ('error': none).",
            ["registry", "method", "code"],
            **kwargs,
        )
        self.copy_slots = Gauge(
            "imagecopy_copy_slots",
            "Copy slots (IMAGECOPY_MAX_CONCURRENT_COPIES) by state: held by copies moving bytes, "
            "or copies waiting for one to upload.",
            ["state"],
            **kwargs,
        )
        self.copies_in_flight = Gauge(
            "imagecopy_copies_in_flight",
            "In-flight slots (IMAGECOPY_MAX_COPIES_IN_FLIGHT) by state: copies running, or "
            "copies waiting to start.",
            ["state"],
            **kwargs,
        )
        self.objects = Gauge(
            "imagecopy_objects",
            "ImageCopy objects whose condition is True, by condition.",
            ["condition"],
            **kwargs,
        )
        self.tasks = Gauge(
            "imagecopy_event_loop_tasks",
            "asyncio tasks alive on the operator's event loop (a leak shows as growth at rest).",
            **kwargs,
        )
        for outcome in ("mounted", "uploaded", "existing"):
            self.blobs.labels(outcome)
            self.bytes.labels(outcome)
        for type_ in CONDITION_TYPES:
            self.objects.labels(type_).set(0)
        for state in ("inUse", "waiting"):
            self.copy_slots.labels(state).set(0)
            self.copies_in_flight.labels(state).set(0)
        # Registries that may be a label value, and the (method, code) series of each.
        self._named: frozenset[str] = frozenset()
        self._series: dict[str, set[tuple[str, str]]] = {}

    def record_report(self, report: CopyReport) -> None:
        self.copies.labels(report.outcome.value).inc()
        if report.outcome is not Outcome.COPIED:
            return
        self.blobs.labels("mounted").inc(report.blobs_mounted)
        self.blobs.labels("uploaded").inc(report.blobs_uploaded)
        self.blobs.labels("existing").inc(report.blobs_existing)
        self.bytes.labels("mounted").inc(report.bytes_mounted)
        self.bytes.labels("uploaded").inc(report.bytes_uploaded)
        self.bytes.labels("existing").inc(report.bytes_existing)
        self.bytes_saved.inc(report.bytes_saved)
        self.duration.observe(report.duration_seconds)

    def record_failure(self, reason: str) -> None:
        self.copies.labels(reason).inc()

    def record_request(self, registry: str, method: str, code: str) -> None:
        """The registry pool's ``on_request`` hook: one HTTP request attempt."""
        label = registry if registry in self._named else OTHER_REGISTRY
        method = method.upper() if method.upper() in _METHODS else "other"
        if code not in _KNOWN_CODES:
            code = f"{code[0]}xx" if len(code) == 3 and code[0] in "12345" else "other"
        self._series.setdefault(label, set()).add((method, code))
        self.requests.labels(label, method, code).inc()

    def name_registries(self, registries: Iterable[str]) -> None:
        """Set the registries whose requests are counted under their own name (``host`` or
        ``host:port``, as ``oci.transport.registry_of`` spells a URL's); drop the series of
        those no longer named."""
        named = frozenset(registries) - {OTHER_REGISTRY}
        for gone in self._named - named:
            for method, code in self._series.pop(gone, ()):
                self.requests.remove(gone, method, code)
        self._named = named

    def watch_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the tasks alive on ``loop`` at every scrape (``imagecopy_event_loop_tasks``).
        Scrapes run on the metrics thread; ``asyncio.all_tasks`` tolerates the loop changing
        its task set meanwhile."""
        self.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))

    def set_copy_slots(self, in_use: int, waiting: int) -> None:
        self.copy_slots.labels("inUse").set(in_use)
        self.copy_slots.labels("waiting").set(waiting)

    def set_copies_in_flight(self, in_use: int, waiting: int) -> None:
        self.copies_in_flight.labels("inUse").set(in_use)
        self.copies_in_flight.labels("waiting").set(waiting)

    def set_objects(self, true_conditions: Iterable[frozenset[str]]) -> None:
        """Recount ``imagecopy_objects`` from each object's set of True conditions."""
        counts = dict.fromkeys(CONDITION_TYPES, 0)
        for conditions in true_conditions:
            for type_ in conditions:
                if type_ in counts:
                    counts[type_] += 1
        self.set_object_counts(counts)

    def set_object_counts(self, counts: Mapping[str, int]) -> None:
        """Set ``imagecopy_objects`` from objects counted per True condition type."""
        for type_ in CONDITION_TYPES:
            self.objects.labels(type_).set(counts.get(type_, 0))


def serve_metrics(port: int, registry: CollectorRegistry | None = None) -> None:
    """Serve ``/metrics`` on ``port`` (all interfaces) from a daemon thread."""
    if registry is None:
        start_http_server(port)
    else:
        start_http_server(port, registry=registry)
