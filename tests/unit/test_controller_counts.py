"""The object gauge and the registry label set are running sums kept per change (issue 15:
recounting every object on every status write was O(objects²) per round of copies); they must
equal a recount at every step."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from imagecopy.controller.metrics import Metrics
from imagecopy.controller.service import ImageCopyService, ObjectRef
from imagecopy.controller.settings import Settings
from imagecopy.controller.status import apply_merge_patch, true_conditions
from imagecopy.copy.report import CopyReport, Outcome
from tests.unit.test_controller_service import LOG, NOW, NoSecrets, source_not_found


class Copier:
    async def copy(
        self, source: Any, destination: Any, options: Any = None, credentials: Any = None
    ) -> CopyReport:
        if "missing" in str(source):
            raise source_not_found()
        return CopyReport(source=str(source), destination=str(destination), outcome=Outcome.COPIED)


class Bodies:
    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        body = self.bodies[name]
        body["status"] = apply_merge_patch(body.get("status"), status)
        return True


def gauge(registry: CollectorRegistry, condition: str) -> float:
    value = registry.get_sample_value("imagecopy_objects", {"condition": condition})
    return value or 0.0


async def test_the_gauge_and_registry_names_follow_objects_as_they_come_and_go() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    bodies = Bodies()
    service = ImageCopyService(
        copier=Copier(),
        secrets=NoSecrets(),
        status_writer=bodies,
        events=lambda *_: None,
        metrics=metrics,
        settings=Settings(allowed_registries=("*",)),
        now=lambda: NOW,
        rng=random.Random(0),
    )
    specs = {
        "a": ("one.example/app:1", "one.example/prod/app:1"),
        "b": ("one.example/app:1", "two.example/app:1"),
        "c": ("one.example/missing:1", "one.example/prod/missing:1"),
    }
    stops: dict[str, asyncio.Future[None]] = {}
    tasks = []
    for name, (src, dst) in specs.items():
        bodies.bodies[name] = {
            "metadata": {"generation": 1},
            "spec": {"source": {"image": src}, "destination": {"image": dst}},
        }
        stops[name] = asyncio.get_running_loop().create_future()
        ref = ObjectRef("ns", name, f"uid-{name}")
        tasks.append(asyncio.create_task(service.run(ref, bodies.bodies[name], stops[name], LOG)))

    def recount(condition: str) -> int:
        return sum(
            condition in true_conditions(b.get("status"))
            for n, b in bodies.bodies.items()
            if not stops[n].done()
        )

    for _ in range(100):
        await asyncio.sleep(0.01)
        if all(b.get("status") for b in bodies.bodies.values()):
            break
    await asyncio.sleep(0.05)
    for condition in ("Ready", "Stalled", "Reconciling"):
        assert gauge(registry, condition) == recount(condition)
    assert gauge(registry, "Ready") == 2
    assert metrics._named == {"one.example", "two.example"}

    stops["b"].set_result(None)  # the only object naming two.example goes
    await asyncio.sleep(0.05)
    assert gauge(registry, "Ready") == recount("Ready") == 1
    assert metrics._named == {"one.example"}
    for name in ("a", "c"):
        stops[name].set_result(None)
    await asyncio.gather(*tasks)
    for condition in ("Ready", "Stalled", "Reconciling"):
        assert gauge(registry, condition) == 0
    assert metrics._named == frozenset()
