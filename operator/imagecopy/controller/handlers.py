"""Kopf handlers for ``imagecopies.imagecopy.dev``; ``kopf run -m imagecopy.controller.handlers``.

Thin on purpose: process-wide clients are built at start-up and kept in ``memo``; every
object gets one daemon that runs the service's reconcile loop. A new object needs nothing
else (its daemon looks at once). A spec change wakes that loop through a raw-event handler
whose filter lets only a generation the loop has not started on through (``spec_changed``).

No create, update or resume handler on purpose (issue 15): Kopf's change handlers cost every
new object a patch of its own (the ``last-handled-configuration`` diff base and progress
annotations), the watch event that patch causes, and two ``Logging`` events ("Handler …
succeeded", "Creation is processed …"); a raw-event handler stores nothing. The daemon still
makes Kopf add its finalizer, so a deleted object's loop is stopped before it goes.

One login: ``login`` is the only ``@kopf.on.login`` handler, so Kopf's own fallbacks
(``login_via_client`` and friends) never run; the ``ConnectionInfo`` it returns is what Kopf
uses, and the same one connects the ``KubeClient`` of our Secret reads and status patches.
Kopf (1.45) starts its credentials retriever only once the start-up handlers are done, so
start-up creates that client unconnected and the first login connects it; ``_kube_client``
does not depend on the order, and calls made before the first login wait for it (so no
start-up handler may make one).

The blob memory (``memory``) is fed by an index handler from the objects Kopf lists and
watches, so a restarted or newly active process remembers where blobs live.

Resuming (operator start) needs no handler of its own: the daemon starts for every existing
object and looks when its schedule says (``schedule.Schedule.first_look``), a spec changed
while the operator was down included. Status is written by the service through the
``/status`` subresource; its watch events do not change the generation, so they never pass
the spec-change filter.

Kopf's storages are still pointed at annotations (``imagecopy.dev/…``), not ``status`` (the
CRD schema would prune ``status.kopf``): with no change handler Kopf writes none, but an
object handled by an older version keeps them (docs/reference.md §1, "Bookkeeping"). The diff
base is never read (``_NoDiffBase``), and the index handler is a coroutine: Kopf runs a plain
function handler in a worker thread, for every watch event (issue 15, CPU per copy).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import Any, cast

import kopf
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from ..copy.engine import Copier
from ..copy.locations import BlobLocations
from ..copy.refusals import MountRefusals
from ..oci.pool import RegistryPool
from .kube import GROUP, PLURAL, VERSION, KubeClient
from .login import login_from_environment
from .memory import BlobMemory
from .metrics import Metrics, serve_metrics
from .service import ImageCopyService, ObjectRef, transport_settings
from .settings import Settings, format_duration
from .takeover import Takeover

KIND = "ImageCopy"


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds the diff base of every watch event (a deep copy of the whole body) to
    detect changes for change handlers and daemon idling; there are neither (only a daemon
    without ``idle``), so every body has the same, empty essence and nothing is copied."""

    _EMPTY: kopf.BodyEssence = cast(kopf.BodyEssence, {})

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return self._EMPTY

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self._EMPTY


def _post_event(ref: ObjectRef, type_: str, reason: str, message: str) -> None:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid},
    }
    kopf.event(kopf.Body(cast(Any, body)), type=type_, reason=reason, message=message[:1024])


def _kube_client(memo: kopf.Memo) -> KubeClient:
    """The process's one ``KubeClient``, created by whichever of start-up and login runs
    first (both run on the event loop, so there is no race)."""
    kube = memo.get("kube")
    if kube is None:
        kube = memo["kube"] = KubeClient()
    return kube


@kopf.on.login(retries=3, backoff=5.0)
async def login(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any
) -> kopf.ConnectionInfo:
    """The one login, for Kopf and for our own API calls; run again by Kopf whenever the
    API refuses the current credentials. Three failed tries in a row stop the operator (the
    pod restarts, visibly) instead of leaving it waiting without credentials."""
    info = await asyncio.to_thread(login_from_environment, trust_env=settings.networking.trust_env)
    _kube_client(memo).connect(info)
    logger.info("logged in to Kubernetes at %s", info.server)
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    config = Settings.from_env()
    # One structured line per copy is the log; per-request lines would drown it (--debug
    # still shows kopf's own detail).
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase(
        prefix=GROUP, key="last-handled-configuration"
    )
    # With --peering: how long our entry outlives us if we are killed (the standby's takeover
    # delay); Kopf refreshes it 5-10 s before it expires (docs/reference.md, "Peering").
    settings.peering.lifetime = config.peering_lifetime
    memo.takeover = Takeover(peering=not settings.peering.standalone)
    settings.posting.reporting_component = "imagecopy"
    settings.posting.reporting_instance = socket.gethostname()

    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    metrics = Metrics(registry)
    metrics.watch_event_loop(asyncio.get_running_loop())
    if config.metrics_port:
        serve_metrics(config.metrics_port, registry)
    # The pool reports requests to the service (metrics, copy progress), which needs the
    # copier built on the pool: the hook looks the service up when a request is made.
    pool = RegistryPool(
        transport_settings(config),
        on_request=lambda registry, method, code: service.record_request(registry, method, code),
    )
    kube = _kube_client(memo)
    memo.pool = pool
    memory = memo.memory = BlobMemory(BlobLocations())
    service = memo.service = ImageCopyService(
        copier=Copier(pool, memory.locations, MountRefusals(config.mount_refusal_ttl)),
        secrets=kube,
        status_writer=kube,
        events=_post_event,
        metrics=metrics,
        settings=config,
    )
    logger.info(
        "imagecopy operator started: allowedRegistries=%s plainHttpRegistries=%s "
        "insecureRegistries=%s blockedNetworks=%s maxConcurrentCopies=%d "
        "maxCopiesPerNamespace=%d maxCopiesInFlight=%d blobConcurrency=%d stalledRetry=%ss "
        "copyTimeout=%s stallTimeout=%s connectTimeout=%s readTimeout=%s metricsPort=%d "
        "peeringLifetime=%ds",
        ",".join(config.allowed_registries),
        ",".join(sorted(config.plain_http_registries)) or "-",
        ",".join(sorted(config.insecure_registries)) or "-",
        ",".join(config.blocked_networks) or "none",
        config.max_concurrent_copies,
        config.namespace_copy_slots,
        config.copies_in_flight,
        config.blob_concurrency,
        config.stalled_retry,
        format_duration(config.copy_timeout),
        format_duration(config.stall_timeout),
        format_duration(config.connect_timeout),
        format_duration(config.read_timeout),
        config.metrics_port,
        config.peering_lifetime,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    pool = memo.get("pool")
    if pool is not None:
        await pool.aclose()
    kube = memo.get("kube")
    if kube is not None:
        kube.close()


@kopf.index(GROUP, VERSION, PLURAL, id="blobmemory")
async def blob_memory(memo: Any, body: kopf.Body, **_: Any) -> None:
    """Feeds the blob memory from every listed and watched object (``memory``); Kopf runs
    it before the object's own handlers, also for the listing after a standby takes over.
    Stores nothing in Kopf's index (returns None)."""
    memo.memory.observe(body)


def _spec_changed_filter(
    memo: Any, uid: str, meta: kopf.Meta, status: kopf.Status, type: str | None, **_: Any
) -> bool:
    """Whether a watch event brings a generation the object's loop must look at: a change
    event (not the initial listing, which the daemon's first look covers) whose generation
    the loop has not started on and the status has not observed."""
    service = memo.get("service")
    if type != "MODIFIED" or service is None:
        return False
    generation = meta.get("generation")
    observed = status.get("observedGeneration") if status else None
    if not isinstance(generation, int):
        return False
    if isinstance(observed, int) and generation <= observed:
        return False
    return bool(service.wants_look(uid, generation))


@kopf.on.event(GROUP, VERSION, PLURAL, when=_spec_changed_filter)
def spec_changed(
    memo: Any, namespace: str | None, name: str, uid: str, meta: kopf.Meta, **_: Any
) -> None:
    memo.service.request(ObjectRef(namespace or "", name, uid), meta.get("generation"))


@kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=5.0, backoff=5.0)
async def reconcile(
    memo: Any,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    uid: str,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    async with memo.takeover.daemon(stopped.wait()) as waited:
        if stopped.is_set():
            return
        if waited:
            logger.info("takeover grace (peering): first copy after %.1fs", waited)
        await memo.service.run(ObjectRef(namespace or "", name, uid), body, stopped.wait(), logger)
