"""The ImageCopy service: spec ⇄ engine ⇄ status, one object at a time.

Each object has one worker loop (run by a Kopf daemon) that reconciles, writes the status,
then sleeps until the next look is due (``schedule``) or a spec change wakes it. All copies
of one object therefore run one at a time. One reconcile is one ``_Attempt``: it knows the
object, the status it started from and the generation it works on, and ends in exactly one
of success, failure (reason and kind from ``failures``) or suspended.

Nothing here imports Kopf: Kopf hands in the live body, a stop signal and a logger; the
engine and the Kubernetes writes go through the small ``CopyEngine``, ``SecretReader``,
``StatusWriter`` and ``EventSink`` interfaces (docs/reference.md §3 for what is written).

No tenant can starve another: a copy runs in one of the process's in-flight slots
(``IMAGECOPY_MAX_COPIES_IN_FLIGHT``: planning, HEADs, mounts and manifest pushes are small
requests), and a copy that must upload a blob also takes one of the fewer copy slots
(``IMAGECOPY_MAX_CONCURRENT_COPIES``) for
the rest of its run; both kinds are shared fairly across namespaces (``slots``). Each copy
runs under a deadline and a no-progress timeout (``deadline``; a wait for a transfer slot
pauses both), so a slot always comes free again. A same-registry copy, all mounts, never
waits behind another copy's bytes (issue 15).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from ..copy.options import CopyOptions
from ..copy.report import CopyReport, Outcome
from ..oci.credentials import CredentialStore
from ..oci.errors import ImageCopyError, RegistryNotAllowed, SignatureError
from ..oci.reference import Reference, Registry
from ..oci.transport import TransportSettings
from .credentials import SecretReader, resolve_credentials
from .deadline import CopyWatchdog, note_request
from .failures import CAPPED_AT_STALLED_RETRY, Failure, failure_for
from .kube import KubernetesUnavailable
from .metrics import Metrics
from .progress import CopyProgress, report_progress
from .schedule import Schedule
from .settings import Settings, format_duration
from .slots import FairSlots
from .spec import ImageCopySpec, parse_spec
from .status import (
    READY,
    apply_merge_patch,
    copying_patch,
    failure_patch,
    find_condition,
    is_current,
    is_ready_for,
    is_suspended_for,
    success_patch,
    suspended_patch,
    true_conditions,
)
from .trust import verify_policy

__all__ = [
    "CopyEngine",
    "EventSink",
    "ImageCopyService",
    "ObjectRef",
    "StatusWriter",
    "transport_settings",
]

Logger = logging.Logger | logging.LoggerAdapter[Any]

log = logging.getLogger("imagecopy.controller")

#: Seconds a new generation's copy may take before its status says ``Copying``: a copy done
#: sooner writes one status patch, its result, instead of two (issue 15: each patch is a watch
#: event Kopf processes, and API server work).
COPYING_GRACE = 2.0


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class CopyEngine(Protocol):
    """``copy.Copier``: one copy, source to destination, returning what it did."""

    async def copy(
        self,
        source: Reference,
        destination: Reference,
        options: CopyOptions | None = None,
        credentials: CredentialStore | None = None,
    ) -> CopyReport: ...


class StatusWriter(Protocol):
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch the status subresource; False when the object is gone."""
        ...


class EventSink(Protocol):
    def __call__(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None: ...


def transport_settings(settings: Settings) -> TransportSettings:
    return TransportSettings(
        plain_http=settings.plain_http_registries,
        insecure=settings.insecure_registries,
        blocked_networks=settings.blocked_networks,
        # Every running copy may stream `blob_concurrency` blobs, each a GET and a PUT; one
        # copy's mounts and manifest requests alone fill `CopyOptions.connections`.
        max_connections=max(
            CopyOptions(concurrency=settings.blob_concurrency).connections,
            # Only copies holding a copy slot stream; the others' small requests share these.
            2 * settings.blob_concurrency * settings.max_concurrent_copies,
        ),
        timeout=settings.read_timeout,
        connect_timeout=settings.connect_timeout,
    )


@dataclass
class _ObjectState:
    """What the worker of one object remembers between reconciles."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The status as this process last wrote it (the watch may lag behind).
    status: dict[str, Any] | None = None
    #: Transient failures in a row (the backoff step); reset by anything else.
    transient_failures: int = 0
    #: The generation of the last reconcile started (-1: none yet).
    started_generation: int = -1
    #: (reason, message) of the last failure: a repeat posts no second event.
    last_failure: tuple[str, str] | None = None
    true_conditions: frozenset[str] = frozenset()
    #: The registries its spec names, as request metrics label them.
    registries: frozenset[str] = frozenset()


class ImageCopyService:
    def __init__(
        self,
        *,
        copier: CopyEngine,
        secrets: SecretReader,
        status_writer: StatusWriter,
        events: EventSink,
        metrics: Metrics,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        copying_grace: float = COPYING_GRACE,
    ) -> None:
        self.copier = copier
        self.copying_grace = copying_grace
        self.secrets = secrets
        self.status_writer = status_writer
        self.events = events
        self.metrics = metrics
        self.settings = settings
        self.schedule = Schedule.from_settings(settings, rng=rng, now=now)
        self._now = now
        # Every running copy holds an in-flight slot; one that moves bytes also a copy slot.
        self._flight_slots = FairSlots(
            settings.copies_in_flight,
            settings.namespace_copies_in_flight,
            on_change=self._update_flight_gauge,
        )
        self._copy_slots = FairSlots(
            settings.max_concurrent_copies,
            settings.namespace_copy_slots,
            on_change=self._update_slot_gauge,
        )
        self._objects: dict[str, _ObjectState] = {}
        # Running sums over ``_objects`` (kept per change, not recounted: a recount on every
        # status write costs O(objects) each, O(objects²) per round of copies; issue 15).
        self._condition_counts: Counter[str] = Counter()
        self._registry_counts: Counter[str] = Counter()
        # Exact allow-list entries are label values from the start (globs name no host).
        self._listed_registries = frozenset(
            name
            for entry in settings.allowed_registries
            if not any(c in entry for c in "*?[]")
            for name in _label_names(entry)
        )
        self.metrics.name_registries(self._listed_registries)

    def record_request(self, registry: str, method: str, code: str) -> None:
        """The registry pool's ``on_request`` hook: request metrics, and progress of the
        copy that sent it (``deadline``)."""
        note_request(code)
        self.metrics.record_request(registry, method, code)

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

    def wants_look(self, uid: str, generation: int) -> bool:
        """Whether ``request`` for ``generation`` would wake the loop of object ``uid``: it
        has a loop and has not started on that generation yet. Cheap: it runs for every watch
        event of a changed object."""
        state = self._objects.get(uid)
        return state is not None and generation > state.started_generation

    async def run(
        self, ref: ObjectRef, body: Mapping[str, Any], stopped: Awaitable[Any], logger: Logger
    ) -> None:
        """Reconcile ``ref`` until ``stopped`` resolves. ``body`` is a live view."""
        state = self._state(ref)
        stop = asyncio.ensure_future(stopped)
        if state.status is None:
            self._set_conditions(state, true_conditions(body.get("status")))
        try:
            delay = self.first_look(body)
            while await self._sleep(state, delay, stop):
                delay = await self.reconcile(ref, body, logger)
        finally:
            stop.cancel()
            gone = self._objects.pop(ref.uid, None)
            if gone is not None:
                self._set_conditions(gone, frozenset())
                self._set_registries(gone, frozenset())

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

    def first_look(self, body: Mapping[str, Any]) -> float | None:
        """Seconds until a worker that just started looks at ``body`` (None: on a change)."""
        try:
            spec: ImageCopySpec | None = parse_spec(
                body.get("spec"), self.settings.default_interval
            )
        except ImageCopyError:
            spec = None
        return self.schedule.first_look(spec, body.get("status"), _generation(body))

    # -- one reconcile -----------------------------------------------------------------------

    async def reconcile(
        self, ref: ObjectRef, body: Mapping[str, Any], logger: Logger
    ) -> float | None:
        """Check the source, copy when needed, write the status; return the next delay
        (None: wait for a change)."""
        attempt = self._attempt(ref, body, logger)
        try:
            spec = parse_spec(body.get("spec"), self.settings.default_interval)
        except ImageCopyError as exc:
            return await attempt.failed(failure_for(exc))
        if spec.suspend:
            await attempt.suspended()
            return None
        try:
            self._check_allowed(spec)
            self._name_registries(attempt.state, spec)
            report = await self._copy_marked(attempt, spec)
        except Exception as exc:
            if not isinstance(exc, ImageCopyError):
                logger.error("reconcile failed with an internal error", exc_info=exc)
            verdict = exc.verdict if isinstance(exc, SignatureError) else None
            return await attempt.failed(failure_for(exc), verification=verdict)
        return await attempt.succeeded(report, spec.interval)

    def _attempt(self, ref: ObjectRef, body: Mapping[str, Any], logger: Logger) -> _Attempt:
        state = self._state(ref)
        generation = _generation(body)
        state.started_generation = max(state.started_generation, generation)
        # This look reads the live body: a wake-up requested before it (e.g. the create
        # handler racing the daemon's first look) is covered and must not cause a second one.
        state.wake.clear()
        status = state.status if state.status is not None else dict(body.get("status") or {})
        return _Attempt(
            service=self,
            ref=ref,
            state=state,
            generation=generation,
            logger=logger,
            status=status,
            was_ready=is_ready_for(status, generation),
        )

    async def _copy_marked(self, attempt: _Attempt, spec: ImageCopySpec) -> CopyReport:
        """The copy; a new generation's status says ``Copying`` once it has held a copy slot
        for ``copying_grace`` seconds. Waiting for the slot writes nothing: in a burst of new
        objects most wait, and their status would be written twice (issue 15)."""
        slot_taken = asyncio.Event()
        copy = asyncio.ensure_future(
            self._copy(
                attempt.ref,
                spec,
                attempt.status,
                attempt.write_progress,
                slot_taken,
                # A Ready object's re-check is most likely a no-op: HEADs only, no pull.
                fetch_source_early=not attempt.was_ready,
            )
        )
        try:
            if attempt.needs_copying_mark():
                slot = asyncio.ensure_future(slot_taken.wait())
                try:
                    await asyncio.wait({copy, slot}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    slot.cancel()
                if not copy.done():
                    await asyncio.wait({copy}, timeout=self.copying_grace)
                if not copy.done():
                    await attempt.started(spec)
            return await copy
        finally:
            if not copy.done():
                copy.cancel()
                await asyncio.wait({copy})

    async def _copy(
        self,
        ref: ObjectRef,
        spec: ImageCopySpec,
        status: Mapping[str, Any],
        write_progress: Callable[[Mapping[str, Any]], Awaitable[None]],
        slot_taken: asyncio.Event,
        fetch_source_early: bool,
    ) -> CopyReport:
        credentials = await resolve_credentials(self.secrets, ref.namespace, spec)
        policy = None
        if spec.verify is not None:
            policy = await verify_policy(self.secrets, ref.namespace, spec.verify, status)
        async with self._flight_slots.slot(ref.namespace):
            slot_taken.set()
            # The clocks start with the slot: waiting for one is not the copy's fault.
            watchdog = CopyWatchdog(self.settings.copy_timeout, self.settings.stall_timeout)
            progress = CopyProgress(watchdog)
            options = replace(
                spec.copy_options(self.settings.blob_concurrency),
                progress=progress,
                verify=policy,
                fetch_source_early=fetch_source_early,
                bounds=self.settings.bounds,
                partition=ref.namespace,  # the blob memory is per tenant (copy.locations)
                transfer_gate=lambda: self._transfer_slot(ref.namespace, watchdog),
            )
            done = asyncio.Event()
            reporter = asyncio.create_task(
                report_progress(
                    progress, write_progress, self.settings.progress_interval, done, self._now
                )
            )
            try:
                return await watchdog.run(
                    self.copier.copy(spec.source, spec.destination, options, credentials)
                )
            finally:
                # A progress write under way lands before the attempt's final one.
                done.set()
                try:
                    await reporter
                except asyncio.CancelledError:
                    reporter.cancel()
                    raise
                except Exception as exc:  # a progress report never decides the copy
                    log.error("progress reporting of %s failed", ref, exc_info=exc)

    @asynccontextmanager
    async def _transfer_slot(self, namespace: str, watchdog: CopyWatchdog) -> AsyncIterator[None]:
        """The engine's ``transfer_gate``: a copy slot, held from the copy's first upload to
        its end; the copy's clocks stand still while it waits for one."""
        with watchdog.paused():
            await self._copy_slots.acquire(namespace)
        try:
            yield
        finally:
            self._copy_slots.release(namespace)

    def _check_allowed(self, spec: ImageCopySpec) -> None:
        for side, registry in (
            ("source", spec.source.registry),
            ("destination", spec.destination.registry),
        ):
            if not self.settings.registry_allowed(registry):
                raise RegistryNotAllowed(
                    f"the {side} registry {registry} is not in IMAGECOPY_ALLOWED_REGISTRIES"
                )

    # -- bookkeeping -------------------------------------------------------------------------

    def _state(self, ref: ObjectRef) -> _ObjectState:
        state = self._objects.get(ref.uid)
        if state is None:
            state = self._objects[ref.uid] = _ObjectState()
        return state

    def _set_conditions(self, state: _ObjectState, conditions: frozenset[str]) -> None:
        """Record the True conditions of one object; the gauge follows the sums."""
        if conditions != state.true_conditions:
            self._condition_counts.subtract(state.true_conditions)
            self._condition_counts.update(conditions)
            state.true_conditions = conditions
        self.metrics.set_object_counts(self._condition_counts)

    def _update_slot_gauge(self) -> None:
        self.metrics.set_copy_slots(self._copy_slots.in_use, self._copy_slots.waiting)

    def _update_flight_gauge(self) -> None:
        self.metrics.set_copies_in_flight(self._flight_slots.in_use, self._flight_slots.waiting)

    def _name_registries(self, state: _ObjectState, spec: ImageCopySpec) -> None:
        """Remember the registries ``spec`` names; request metrics label only those (and the
        exact allow-list entries), so a host a registry points at cannot add a label."""
        names = frozenset(
            name
            for registry in (spec.source.registry, spec.destination.registry)
            for name in _label_names(registry)
        )
        self._set_registries(state, names)

    def _set_registries(self, state: _ObjectState, names: frozenset[str]) -> None:
        if names == state.registries:
            return
        counts = self._registry_counts
        before = set(counts)
        counts.update(names)
        counts.subtract(state.registries)
        for name in state.registries - names:
            if counts[name] <= 0:
                del counts[name]
        state.registries = names
        if set(counts) != before:
            self.metrics.name_registries(self._listed_registries | set(counts))


@dataclass
class _Attempt:
    """One reconcile of one object: the status it builds on, and how it ends."""

    service: ImageCopyService
    ref: ObjectRef
    state: _ObjectState
    generation: int
    logger: Logger
    #: The status the next patch is computed from: the one this process last wrote, else
    #: the body's; replaced after every successful write.
    status: dict[str, Any]
    #: Ready for this generation before the attempt began.
    was_ready: bool

    def needs_copying_mark(self) -> bool:
        """Whether this is a new generation's first look, which ``started`` marks; a re-check
        or a retry changes the conditions only when it ends."""
        ready = find_condition(self.status, READY)
        return not (is_current(self.status, self.generation) and ready is not None)

    async def started(self, spec: ImageCopySpec) -> None:
        """Mark a new generation's first look as in progress (Reconciling, reason Copying)."""
        if not self.needs_copying_mark():
            return
        message = f"Copying {spec.source} to {spec.destination}"
        await self._write(copying_patch(self.status, self.generation, self._now(), message))

    async def succeeded(self, report: CopyReport, interval: float | None) -> float | None:
        service = self.service
        written = await self._write(
            success_patch(self.status, report, self.generation, self._now())
        )
        service.metrics.record_report(report)
        _log_report(self.logger, report)
        if report.outcome is Outcome.COPIED:
            service.events(self.ref, "Normal", "Copied", report.summary())
        elif not self.was_ready or self.state.last_failure is not None:
            service.events(self.ref, "Normal", "UpToDate", report.summary())
        self.state.transient_failures = 0
        self.state.last_failure = None
        if not written:
            # The API server was away: look again soon (the copy is found complete) so the
            # status does not stay at "Copying" until an interval that may never come.
            return service.schedule.after_transient_failure(1)
        return service.schedule.after_success(interval)

    async def failed(
        self, failure: Failure, verification: Mapping[str, Any] | None = None
    ) -> float:
        """``verification``: the gate's verdict when it refused the source."""
        service = self.service
        state = self.state
        patch = failure_patch(self.status, failure, self.generation, self._now())
        if verification is not None and verification != self.status.get("verification"):
            patch["verification"] = dict(verification)
        await self._write(patch)
        service.metrics.record_failure(failure.reason)
        key = (failure.reason, failure.message)
        if key != state.last_failure or self.was_ready:
            service.events(
                self.ref, "Warning", "CopyFailed", f"{failure.reason}: {failure.message}"
            )
        state.last_failure = key
        if failure.stalled:
            state.transient_failures = 0
            delay = service.schedule.after_stalled_failure()
        else:
            state.transient_failures += 1
            delay = service.schedule.after_transient_failure(state.transient_failures)
            if failure.reason in CAPPED_AT_STALLED_RETRY:
                delay = min(delay, service.schedule.after_stalled_failure())
        self.logger.warning(
            "copy failed: reason=%s stalled=%s retryIn=%s message=%s",
            failure.reason,
            failure.stalled,
            format_duration(round(delay, 1)),
            failure.message,
        )
        return delay

    async def suspended(self) -> None:
        if not is_suspended_for(self.status, self.generation):
            await self._write(suspended_patch(self.status, self.generation, self._now()))
            self.logger.info("suspended: no copies until spec.suspend is false")
        self.state.transient_failures = 0
        self.state.last_failure = None

    async def write_progress(self, progress: Mapping[str, Any]) -> None:
        """``status.progress`` of the running copy (``progress``)."""
        await self._write({"progress": dict(progress)})

    async def _write(self, patch: dict[str, Any]) -> bool:
        """Merge-patch the status; on success ``self.status`` is the status after it. Any
        other write removes ``status.progress``: the copy it described is over.
        False when the API server could not be reached (the caller schedules another
        look, which writes a fresh status); True otherwise, a deleted object included."""
        if "progress" in self.status and "progress" not in patch:
            patch = {**patch, "progress": None}
        ref = self.ref
        try:
            written = await self.service.status_writer.patch_status(ref.namespace, ref.name, patch)
        except KubernetesUnavailable as exc:
            self.logger.warning("status not written: %s", exc)
            return False
        if not written:
            self.logger.debug("object is gone; status not written")
            return True
        self.status = self.state.status = apply_merge_patch(self.status, patch)
        self.service._set_conditions(self.state, true_conditions(self.status))
        return True

    def _now(self) -> datetime:
        return self.service._now()


def _label_names(registry: Registry | str) -> tuple[str, ...]:
    """How request metrics may spell ``registry``: ``host[:port]`` of its URLs, which drop
    a default port (``reg:443`` → ``reg``)."""
    if isinstance(registry, str):
        try:
            registry = Registry.parse(registry)
        except ImageCopyError:
            return ()
    if registry.port in (80, 443):
        return (str(registry), registry.host)
    return (str(registry),)


def _generation(body: Mapping[str, Any]) -> int:
    value = (body.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else 0


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
