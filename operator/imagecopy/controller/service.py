"""The ImageCopy service: spec ⇄ engine ⇄ status, and when to look again.

Each object has one worker loop (run by a Kopf daemon) that reconciles, writes the status,
then sleeps until the next check is due or a spec change wakes it. All copies of one object
therefore run one at a time, and every schedule lives in one place:

- success: the next check after ``spec.interval`` (with a little jitter), else only on a
  spec change;
- transient failure (unreachable, 429, 5xx, internal): capped exponential backoff;
- failure that needs a change (Stalled): every ``IMAGECOPY_STALLED_RETRY``, and at once on a
  spec change; a fixed Secret is picked up at the next slow retry;
- suspended: nothing until the spec changes.

Nothing here imports Kopf: Kopf hands in the live body, a stop signal and a logger; Kubernetes
writes go through the small ``StatusWriter`` and ``EventSink`` interfaces.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ..copy.engine import Copier
from ..copy.report import CopyReport, Outcome
from ..oci.client import RegistryPool, Session, TransportSettings
from ..oci.credentials import CredentialStore
from ..oci.errors import ImageCopyError, RegistryNotAllowed
from .credentials import SecretReader, resolve_credentials
from .kube import KubernetesUnavailable
from .metrics import Metrics
from .settings import Settings, format_duration
from .spec import ImageCopySpec, parse_spec
from .status import (
    READY,
    Failure,
    apply_patch,
    classify,
    condition,
    failure_patch,
    is_settled,
    progressing_patch,
    retry_delay,
    success_patch,
    suspended_patch,
)

__all__ = [
    "EventSink",
    "ImageCopyService",
    "InstrumentedPool",
    "ObjectRef",
    "StatusWriter",
    "transport_settings",
]

Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class StatusWriter(Protocol):
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch the status subresource; False when the object is gone."""
        ...


class EventSink(Protocol):
    def __call__(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None: ...


def transport_settings(settings: Settings) -> TransportSettings:
    return TransportSettings(
        plain_http=settings.insecure_registries,
        insecure=settings.insecure_registries,
        blocked_networks=settings.blocked_networks,
        # Every running copy may stream `blob_concurrency` blobs, each a GET and a PUT.
        max_connections=max(16, 2 * settings.blob_concurrency * settings.max_concurrent_copies),
    )


class InstrumentedPool(RegistryPool):
    """The process-wide pool; every session feeds ``imagecopy_registry_requests_total``."""

    def __init__(self, settings: TransportSettings, metrics: Metrics) -> None:
        super().__init__(settings)
        self._metrics = metrics

    def session(self, credentials: CredentialStore | None = None) -> Session:
        session = super().session(credentials)
        session.stats.listeners.append(self._metrics.record_request)
        return session


@dataclass
class _ObjectState:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The status as this process last wrote it (the watch may lag behind).
    status: dict[str, Any] | None = None
    failures: int = 0
    #: The generation of the last reconcile started (-1: none yet).
    started_generation: int = -1
    last_failure: tuple[str, str] | None = None
    true_conditions: frozenset[str] = frozenset()


class ImageCopyService:
    def __init__(
        self,
        *,
        copier: Copier,
        secrets: SecretReader,
        status_writer: StatusWriter,
        events: EventSink,
        metrics: Metrics,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.copier = copier
        self.secrets = secrets
        self.status_writer = status_writer
        self.events = events
        self.metrics = metrics
        self.settings = settings
        self._now = now
        self._rng = rng or random.Random()
        self._copy_slots = asyncio.Semaphore(settings.max_concurrent_copies)
        self._objects: dict[str, _ObjectState] = {}

    # -- the per-object loop -----------------------------------------------------------------

    def request(self, ref: ObjectRef, generation: int | None = None) -> None:
        """Reconcile ``ref`` now (a new object, a spec change).

        A request for a generation the worker already started on is dropped: the create
        handler and the worker's own first look must not make two copies of one spec.
        """
        state = self._state(ref)
        if generation is not None and generation <= state.started_generation:
            return
        state.wake.set()

    async def run(
        self, ref: ObjectRef, body: Mapping[str, Any], stopped: Awaitable[Any], logger: Logger
    ) -> None:
        """Reconcile ``ref`` until ``stopped`` resolves. ``body`` is a live view."""
        state = self._state(ref)
        stop = asyncio.ensure_future(stopped)
        if state.status is None:
            state.true_conditions = _true_conditions(body.get("status"))
            self._update_object_gauge()
        try:
            delay = self.first_delay(body)
            while await self._sleep(state, delay, stop):
                delay = await self.reconcile(ref, body, logger)
        finally:
            stop.cancel()
            self._objects.pop(ref.uid, None)
            self._update_object_gauge()

    async def _sleep(
        self, state: _ObjectState, delay: float | None, stop: asyncio.Future[Any]
    ) -> bool:
        """Wait for the delay, a wake-up or the stop; False when stopped."""
        if stop.done():
            return False
        if not state.wake.is_set() and delay != 0:
            wake = asyncio.ensure_future(state.wake.wait())
            try:
                await asyncio.wait({wake, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
        state.wake.clear()
        return not stop.done()

    def first_delay(self, body: Mapping[str, Any]) -> float | None:
        """When a worker that just started (new object or operator start) looks first.

        Anything not settled for its generation goes at once (a copy cut short by a restart
        resumes). Settled objects wait for their next interval, counted from the last sync,
        plus jitter so a restart does not check every object in the same second.
        """
        generation = _generation(body)
        status = body.get("status") or {}
        try:
            spec = parse_spec(body.get("spec"), self.settings.default_interval)
        except ImageCopyError:
            return 0
        ready = condition(status, READY)
        current = status.get("observedGeneration") == generation
        if spec.suspend:
            return None if current and ready and ready.get("reason") == "Suspended" else 0
        if not is_settled(status, generation):
            return 0 if not current else self._rng.uniform(0, 2)
        if spec.interval is None:
            return None
        due = spec.interval
        last = _parse_time(status.get("lastSyncTime"))
        if last is not None:
            due = max(0.0, (last - self._now()).total_seconds() + spec.interval)
        return due + self._rng.uniform(0, min(spec.interval * 0.1, 30.0))

    # -- one reconcile -----------------------------------------------------------------------

    async def reconcile(
        self, ref: ObjectRef, body: Mapping[str, Any], logger: Logger
    ) -> float | None:
        """Check the source, copy when needed, write the status; return the next delay
        (None: wait for a change)."""
        state = self._state(ref)
        generation = _generation(body)
        state.started_generation = max(state.started_generation, generation)
        # This look reads the live body: a wake-up requested before it (e.g. the create
        # handler racing the daemon's first look) is covered and must not cause a second one.
        state.wake.clear()
        status: dict[str, Any] = (
            state.status if state.status is not None else dict(body.get("status") or {})
        )
        was_settled = is_settled(status, generation)
        try:
            spec = parse_spec(body.get("spec"), self.settings.default_interval)
        except ImageCopyError as exc:
            return await self._failed(
                ref, state, status, generation, classify(exc), logger, was_settled
            )

        if spec.suspend:
            await self._suspend(ref, state, status, generation, logger)
            return None

        try:
            self._check_allowed(spec)
            if status.get("observedGeneration") != generation or condition(status, READY) is None:
                message = f"Copying {spec.source} to {spec.destination}"
                await self._write(
                    ref,
                    state,
                    status,
                    progressing_patch(status, generation, self._now(), message),
                    logger,
                )
                status = state.status or status
            report = await self._copy(ref, spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = classify(exc)
            if not isinstance(exc, ImageCopyError):
                logger.error("reconcile failed with an internal error", exc_info=exc)
            return await self._failed(ref, state, status, generation, failure, logger, was_settled)

        await self._write(
            ref, state, status, success_patch(status, report, generation, self._now()), logger
        )
        self.metrics.record_report(report)
        _log_report(logger, report)
        if report.outcome is Outcome.COPIED:
            self.events(ref, "Normal", "Copied", report.summary())
        elif not was_settled or state.last_failure is not None:
            self.events(ref, "Normal", "UpToDate", report.summary())
        state.failures = 0
        state.last_failure = None
        if spec.interval is None:
            return None
        return spec.interval + self._rng.uniform(0, min(spec.interval * 0.05, 30.0))

    async def _copy(self, ref: ObjectRef, spec: ImageCopySpec) -> CopyReport:
        credentials = await resolve_credentials(self.secrets, ref.namespace, spec)
        options = spec.copy_options(self.settings.blob_concurrency)
        async with self._copy_slots:
            return await self.copier.copy(spec.source, spec.destination, options, credentials)

    def _check_allowed(self, spec: ImageCopySpec) -> None:
        for side, registry in (
            ("source", spec.source.registry),
            ("destination", spec.destination.registry),
        ):
            if not self.settings.registry_allowed(registry):
                raise RegistryNotAllowed(
                    f"the {side} registry {registry} is not in IMAGECOPY_ALLOWED_REGISTRIES"
                )

    async def _suspend(
        self,
        ref: ObjectRef,
        state: _ObjectState,
        status: dict[str, Any],
        generation: int,
        logger: Logger,
    ) -> None:
        ready = condition(status, READY)
        if status.get("observedGeneration") != generation or not (
            ready and ready.get("reason") == "Suspended"
        ):
            await self._write(
                ref, state, status, suspended_patch(status, generation, self._now()), logger
            )
            logger.info("suspended: no copies until spec.suspend is false")
        state.failures = 0
        state.last_failure = None

    async def _failed(
        self,
        ref: ObjectRef,
        state: _ObjectState,
        status: dict[str, Any],
        generation: int,
        failure: Failure,
        logger: Logger,
        was_settled: bool,
    ) -> float:
        await self._write(
            ref, state, status, failure_patch(status, failure, generation, self._now()), logger
        )
        self.metrics.record_failure(failure.reason)
        key = (failure.reason, failure.message)
        if key != state.last_failure or was_settled:
            self.events(ref, "Warning", "CopyFailed", f"{failure.reason}: {failure.message}")
        state.last_failure = key
        if failure.stalled:
            state.failures = 0
            delay = self.settings.stalled_retry
        else:
            state.failures += 1
            delay = retry_delay(
                state.failures, self.settings.retry_base, self.settings.retry_max, self._rng
            )
        logger.warning(
            "copy failed: reason=%s stalled=%s retryIn=%s message=%s",
            failure.reason,
            failure.stalled,
            format_duration(round(delay, 1)),
            failure.message,
        )
        return delay

    async def _write(
        self,
        ref: ObjectRef,
        state: _ObjectState,
        base: Mapping[str, Any],
        patch: dict[str, Any],
        logger: Logger,
    ) -> None:
        """Merge-patch the status; ``base`` is the status the patch was computed from."""
        try:
            written = await self.status_writer.patch_status(ref.namespace, ref.name, patch)
        except KubernetesUnavailable as exc:
            # The next reconcile writes a fresh status; nothing else can report this.
            logger.warning("status not written: %s", exc)
            return
        if not written:
            logger.debug("object is gone; status not written")
            return
        state.status = apply_patch(base, patch)
        state.true_conditions = _true_conditions(state.status)
        self._update_object_gauge()

    # -- bookkeeping -------------------------------------------------------------------------

    def _state(self, ref: ObjectRef) -> _ObjectState:
        state = self._objects.get(ref.uid)
        if state is None:
            state = self._objects[ref.uid] = _ObjectState()
        return state

    def _update_object_gauge(self) -> None:
        self.metrics.set_objects(s.true_conditions for s in self._objects.values())


def _true_conditions(status: Mapping[str, Any] | None) -> frozenset[str]:
    return frozenset(
        str(c.get("type"))
        for c in (status or {}).get("conditions") or ()
        if isinstance(c, Mapping) and c.get("status") == "True"
    )


def _generation(body: Mapping[str, Any]) -> int:
    value = (body.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else 0


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _log_report(logger: Logger, report: CopyReport) -> None:
    """One line per copy with its numbers; never a credential."""
    logger.info(
        "copy outcome=%s source=%s destination=%s sourceDigest=%s destinationDigest=%s "
        "blobs=%d mounted=%d uploaded=%d existing=%d bytesSaved=%d bytesUploaded=%d "
        "manifests=%d referrers=%d requests=%d duration=%.3fs",
        report.outcome.value,
        report.source,
        report.destination,
        report.source_digest,
        report.destination_digest,
        report.blobs_total,
        report.blobs_mounted,
        report.blobs_uploaded,
        report.blobs_existing,
        report.bytes_saved,
        report.bytes_uploaded,
        report.manifests_copied,
        report.referrers,
        report.requests,
        report.duration_seconds,
    )
