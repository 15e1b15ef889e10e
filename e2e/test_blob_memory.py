"""The blob memory survives the process: a copy after a restart, or in another process, mounts.

A→B:repo1 crosses registries and uploads; the operator goes away (SIGTERM and a new start, SIGKILL and a
different process, or SIGKILL of the active replica and a failover to the paused standby); A→B:repo2 then mounts every blob from repo1, because the
new process rebuilt its blob-location index from ``status.lastCopy.largestBlobs`` of the
objects Kopf listed, at no registry request. Another namespace's copy of the same image is
not offered repo1 (tenant partitions) and uploads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from e2e.replicas import Replicas, copy_lines
from testkit import images
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

LAYERS = 3
BLOBS = LAYERS + 1  # and the config


@pytest.fixture
def operators(tmp_path: Path, control_plane: ControlPlane) -> Iterator[Any]:
    started: list[OperatorProcess] = []

    def make(name: str) -> OperatorProcess:
        proc = OperatorProcess(control_plane, log_path=tmp_path / f"{name}.log")
        started.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in started:
            proc.stop()
            print(f"\noperator log: {proc.log_path}")


def _spec(source: str, destination: str) -> dict[str, Any]:
    return {"source": {"image": source}, "destination": {"image": destination}}


def _first_copy(
    icp: ImageCopies, operator: OperatorProcess, source: str, destination: str
) -> dict[str, Any]:
    icp.apply("one", _spec(source, destination))
    obj = icp.wait_condition("one", reason="Copied", timeout=90, operator=operator)
    last = obj["status"]["lastCopy"]
    assert last["blobs"]["uploaded"] == BLOBS and last["blobs"]["mounted"] == 0
    # what the next process rebuilds from survived the API server's schema (not pruned)
    assert len(last["largestBlobs"]) == BLOBS
    return obj


def _assert_mounted_from(
    obj: dict[str, Any], registry: RegistryServer, mark: int, repo1: str
) -> None:
    last = obj["status"]["lastCopy"]
    assert last["blobs"] == {"total": BLOBS, "mounted": BLOBS, "uploaded": 0, "existing": 0}
    assert last["bytesSaved"] == last["bytes"]["total"] > 0
    assert last["bytes"]["uploaded"] == 0
    log = registry.access_log_since(mark)
    mounts = [e for e in log if e.is_mount]
    assert len(mounts) == BLOBS and all(e.status == 201 for e in mounts)
    assert {e.q("from") for e in mounts} == {repo1}
    assert not [e for e in log if e.method in ("PATCH", "PUT") and "/blobs/uploads/" in e.path]


def test_a_copy_after_a_restart_mounts_what_the_last_process_uploaded(
    control_plane: ControlPlane,
    namespace: str,
    operators: Any,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    unique_repo: Any,
) -> None:
    image = images.push_image(registry_v2, unique_repo("dev/app"), "1", layers=LAYERS)
    repo1, repo2, repo3 = unique_repo("mirror/one"), unique_repo("mirror/two"), unique_repo("y")
    icp = ImageCopies(control_plane, namespace)
    operator = operators("first").start()
    _first_copy(icp, operator, image.ref, registry_v3.ref(repo1, "1"))

    operator.stop()  # SIGTERM: a rolling upgrade, a drained node
    operator.start()
    mark = registry_v3.mark()
    icp.apply("two", _spec(image.ref, registry_v3.ref(repo2, "1")))
    obj = icp.wait_condition("two", reason="Copied", timeout=90, operator=operator)
    _assert_mounted_from(obj, registry_v3, mark, repo1)

    # Another tenant copying the same image is not offered this namespace's repositories.
    other_ns = control_plane.create_namespace()
    try:
        other = ImageCopies(control_plane, other_ns)
        mark = registry_v3.mark()
        other.apply("three", _spec(image.ref, registry_v3.ref(repo3, "1")))
        obj = other.wait_condition("three", reason="Copied", timeout=90, operator=operator)
        last = obj["status"]["lastCopy"]
        assert last["blobs"]["uploaded"] == BLOBS and last["blobs"]["mounted"] == 0
        log = registry_v3.access_log_since(mark)
        assert not [e for e in log if e.q("from") in (repo1, repo2)]
    finally:
        control_plane.delete_namespace(other_ns)


def test_a_different_process_after_a_sigkill_mounts_what_the_killed_one_uploaded(
    control_plane: ControlPlane,
    namespace: str,
    operators: Any,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    unique_repo: Any,
) -> None:
    image = images.push_image(registry_v2, unique_repo("dev/app"), "1", layers=LAYERS)
    repo1, repo2 = unique_repo("mirror/one"), unique_repo("mirror/two")
    icp = ImageCopies(control_plane, namespace)
    first = operators("first").start()
    _first_copy(icp, first, image.ref, registry_v3.ref(repo1, "1"))

    killed = first.pid
    first.kill()  # SIGKILL: an OOM kill, a lost node; nothing is flushed anywhere
    second = operators("second").start()
    assert second.pid != killed
    mark = registry_v3.mark()
    icp.apply("two", _spec(image.ref, registry_v3.ref(repo2, "1")))
    obj = icp.wait_condition("two", reason="Copied", timeout=90, operator=second)
    _assert_mounted_from(obj, registry_v3, mark, repo1)


def test_the_standby_that_takes_over_mounts_what_the_killed_active_replica_uploaded(
    control_plane: ControlPlane,
    namespace: str,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    unique_repo: Any,
) -> None:
    # The standby is paused by peering (it watches nothing) while the active replica copies;
    # on taking over it lists every object, and the index handler rebuilds the memory first.
    image = images.push_image(registry_v2, unique_repo("dev/app"), "1", layers=LAYERS)
    repo1, repo2 = unique_repo("mirror/one"), unique_repo("mirror/two")
    icp = ImageCopies(control_plane, namespace)
    ha = Replicas(control_plane, 2)
    try:
        ha.start()
        active, standby = ha.procs
        assert ha.active() == [active]
        _first_copy(icp, active, image.ref, registry_v3.ref(repo1, "1"))
        assert not copy_lines(standby, namespace, "one")

        active.kill()
        ha.wait_active(standby, timeout=120)
        mark = registry_v3.mark()
        icp.apply("two", _spec(image.ref, registry_v3.ref(repo2, "1")))
        obj = icp.wait_condition("two", reason="Copied", timeout=90, operator=standby)
        _assert_mounted_from(obj, registry_v3, mark, repo1)
        assert len(copy_lines(standby, namespace, "two")) == 1
    finally:
        ha.stop()
        print(f"\nreplica logs: {[str(p.log_path) for p in ha.procs]}")
