"""The fault matrix on the operator path (issue 12): a real API server, the operator as a
process, real registries, and the same invariants as the engine path
(tests/support/invariants.py), plus the status: Ready=True only when the destination is the
complete source image, otherwise Reconciling or Stalled with a specific reason; after the fault
heals the object becomes Ready without being touched. The operator's open file descriptors are
counted before and after every fault, and it must never have restarted (no crash loop).

One operator serves the module (faults 1, 3, 9, 11, 12, 13, 14); fault 8 kills its own.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess, metric_value
from testkit import images
from testkit.netproxy import NetProxy
from testkit.registry import RegistryServer
from testkit.toxiproxy import ToxiproxyServer, find_toxiproxy
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)
from tests.support.fixtures import require_tool
from tests.support.invariants import (
    Destination,
    FaultRow,
    assert_no_open_sessions,
    fault_row,
    uploaded_bytes,
)

__all__ = ["fault_row"]

pytestmark = pytest.mark.e2e

KiB = 1024
MiB = 1024 * KiB
#: Seconds a healed object may take to become Ready on its own: transient failures are
#: retried from 2 s doubling (IMAGECOPY_RETRY_BASE), Stalled ones every 3 s in tests.
RECOVERY = 90.0
#: Descriptors an operator may hold beyond its baseline after a fault: pooled keep-alive
#: connections to the registries of the test (a leak grows past this with every fault).
FD_SLACK = 24
#: Event-loop tasks the operator may hold above its level once the test's objects are gone
#: (a watch stream being re-opened, a scrape, a late status write).
TASK_SLACK = 8


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane, env={"IMAGECOPY_STALLED_RETRY": "2s"})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


@pytest.fixture(scope="module")
def toxi() -> Iterator[ToxiproxyServer]:
    require_tool("toxiproxy-server", find_toxiproxy())
    server = ToxiproxyServer().start()
    yield server
    server.stop()


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tasks(operator: OperatorProcess) -> int:
    return int(metric_value(operator.metrics(), "imagecopy_event_loop_tasks"))


@pytest.fixture
def watched(
    operator: OperatorProcess, control_plane: ControlPlane, namespace: str
) -> Iterator[OperatorProcess]:
    """The module's operator; after the test, still the same process (no crash, no restart),
    its descriptors back within ``FD_SLACK`` of what it held before and, once the test's
    objects are deleted, its event-loop tasks (``imagecopy_event_loop_tasks``: one daemon per
    object, each copy's tasks) back within ``TASK_SLACK``."""
    pid = operator.pid
    assert pid is not None and operator.running
    before = fds(pid)
    tasks_before = tasks(operator)
    assert tasks_before > 0
    yield operator
    assert operator.running and operator.pid == pid, "the operator restarted or died"
    deadline = time.monotonic() + 20
    while fds(pid) > before + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fds(pid) <= before + FD_SLACK, f"descriptors: {before} before, {fds(pid)} after"
    control_plane.kubectl("delete", "imagecopy", "--all", "-n", namespace, "--timeout=60s")
    deadline = time.monotonic() + 30
    while tasks(operator) > tasks_before + TASK_SLACK and time.monotonic() < deadline:
        time.sleep(0.5)
    after = tasks(operator)
    assert after <= tasks_before + TASK_SLACK, f"event-loop tasks: {tasks_before} before, {after}"


def ready_at(
    icp: ImageCopies, name: str, digest: str, operator: OperatorProcess, timeout: float = RECOVERY
) -> dict[str, Any]:
    def ok(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return (
            icp.condition(obj, "Ready").get("status") == "True"
            and status.get("destinationDigest") == digest
            and status.get("observedGeneration") == obj["metadata"]["generation"]
        )

    return icp.wait_for(name, ok, timeout, f"Ready at {digest}", operator)


def failing(
    icp: ImageCopies, name: str, operator: OperatorProcess, timeout: float = 60.0
) -> dict[str, str]:
    """Wait for Ready=False with Reconciling or Stalled true; return its reason and message."""

    def ok(obj: dict[str, Any]) -> bool:
        if icp.condition(obj, "Ready").get("status") != "False":
            return False
        return any(
            icp.condition(obj, t).get("status") == "True" for t in ("Reconciling", "Stalled")
        )

    obj = icp.wait_for(name, ok, timeout, "a failing status", operator)
    ready = icp.condition(obj, "Ready")
    kind = "Stalled" if icp.condition(obj, "Stalled").get("status") == "True" else "Reconciling"
    assert ready.get("reason") and ready.get("message"), ready
    return {"kind": kind, "reason": str(ready["reason"]), "message": str(ready["message"])}


def sessions_closed(registry: RegistryServer, repository: str, timeout: float = 15.0) -> None:
    """The operator's pool lives on, so a cancelled session's DELETE may still be landing."""
    deadline = time.monotonic() + timeout
    while registry.open_upload_sessions(repository) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_no_open_sessions(registry, repository)


def spec(source: str, dest: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"image": source}, "destination": {"image": dest}, **extra}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def resent_within_bound(
    proxy: NetProxy, repository: str, image: images.PushedImage, row: FaultRow
) -> int:
    """Blob bytes sent twice, checked against the full size of every interrupted upload
    (both noted in ``row``)."""
    sizes = {str(b["digest"]): int(b["size"]) for b in image.unique_blobs}
    bound = 0
    for r in proxy.snapshot().log:
        if r.method == "PUT" and "/blobs/uploads/" in r.path and (r.status or 500) >= 300:
            m = re.search(r"digest=(sha256(?::|%3A)[0-9a-f]{64})", r.query)
            if m:
                bound += sizes.get(m.group(1).replace("%3A", ":"), 0)
    resent = uploaded_bytes(proxy, repository) - sum(sizes.values())
    assert resent <= bound, f"{resent} bytes sent twice; only {bound} were interrupted"
    row.resend_bound = bound
    return max(0, resent)


# --- 1. the destination registry SIGKILLed mid-upload, restarted on the same storage -----------


def test_op01_registry_killed_mid_upload(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    start_registry: Callable[..., RegistryServer],
    netproxy: Any,
    unique_repo: Any,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = (
        "registry SIGKILLed mid-upload",
        1,
        "operator",
    )
    dst_reg = start_registry(impl="v3")
    proxy = netproxy(dst_reg.host, bandwidth_bps=2 * MiB)
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=2, layer_size=4 * MiB)
    dst = Destination.snapshot(dst_reg, unique_repo("prod"), "1")
    icp = ImageCopies(control_plane, namespace)
    icp.apply("f1", spec(image.ref, f"{proxy.address}/{dst.repository}:1"))
    wait_until(lambda: proxy.snapshot().bytes_up > MiB, 60, "the upload to stream")
    dst_reg.kill()
    assert icp.condition(icp.get("f1"), "Ready").get("status") != "True"
    time.sleep(1.0)
    dst_reg.start()
    fault_row.healed()
    ready_at(icp, "f1", image.digest, watched)
    fault_row.recovered()
    dst.assert_complete(image.digest)
    sessions_closed(dst_reg, dst.repository)
    fault_row.bytes_resent = resent_within_bound(proxy, dst.repository, image, fault_row)
    fault_row.survived("Ready, complete", requests=proxy.snapshot().requests)


# --- 3. 5xx bursts on blob and manifest requests ----------------------------------------------


def test_op03_5xx_bursts(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = (
        "5xx bursts on blobs and manifests",
        3,
        "operator",
    )
    proxy = netproxy(registry_v3.host)
    for status in (500, 502, 503, 504):
        proxy.add_fault(path="/blobs/", status=status, every=2, times=2)
        proxy.add_fault(path="/manifests/", status=status, times=1)
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=3)
    dst = Destination.snapshot(registry_v3, unique_repo("prod"), "1")
    icp = ImageCopies(control_plane, namespace)
    icp.apply("f3", spec(image.ref, f"{proxy.address}/{dst.repository}:1"))
    ready_at(icp, "f3", image.digest, watched)
    fault_row.recovered()
    assert proxy.snapshot().faults_injected >= 4
    dst.assert_complete(image.digest)
    sessions_closed(registry_v3, dst.repository)
    fault_row.bytes_resent = resent_within_bound(proxy, dst.repository, image, fault_row)
    fault_row.survived("Ready, complete", requests=proxy.snapshot().requests)


# --- 8. the operator SIGKILLed mid-copy and started again -------------------------------------


def test_op08_operator_killed_mid_copy(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = "operator SIGKILLed mid-copy", 8, "operator"
    image = images.push_image(
        registry_v2, unique_repo("dev/big"), "1", layers=1, layer_size=8 * MiB
    )
    proxy = netproxy(registry_v3.host, bandwidth_bps=2 * MiB)
    dst = Destination.snapshot(registry_v3, unique_repo("mirror/big"), "1")
    icp = ImageCopies(control_plane, namespace)
    own = OperatorProcess(control_plane)
    operator.stop()  # the module's operator watches every namespace: this test has its own
    try:
        own.start()
        icp.apply("f8", spec(image.ref, f"{proxy.address}/{dst.repository}:1"))
        wait_until(lambda: proxy.snapshot().bytes_up > 2 * MiB, 60, "the upload to stream")
        own.kill()
        assert dst.state(image.digest) == "unchanged"
        assert icp.condition(icp.get("f8"), "Ready").get("status") != "True"
        fault_row.healed()
        own.start()
        ready_at(icp, "f8", image.digest, own)
        fault_row.recovered()
    finally:
        own.stop()
        operator.start()
    dst.assert_complete(image.digest)
    # The killed process could not cancel its session; the registry's upload purging
    # removes it (docs/reference.md §4 "Uploads"). Every session of the new process closed.
    open_now = registry_v3.open_upload_sessions(dst.repository)
    assert len(open_now) <= 1, open_now
    fault_row.orphaned_sessions = len(open_now)
    # the interrupted layer is sent again in full, nothing else
    fault_row.bytes_resent = resent_within_bound_killed(proxy, dst.repository, image, fault_row)
    fault_row.survived(
        "Ready, complete (the killed process's session left to purging)",
        requests=proxy.snapshot().requests,
    )


def resent_within_bound_killed(
    proxy: NetProxy, repository: str, image: images.PushedImage, row: FaultRow
) -> int:
    """Like :func:`resent_within_bound`, where the interrupted PUT never got an answer
    (its process died): at most the largest blob is sent twice."""
    largest = max(int(b["size"]) for b in image.unique_blobs)
    resent = uploaded_bytes(proxy, repository) - image.total_blob_bytes
    assert resent <= largest, f"{resent} bytes sent twice; at most {largest} expected"
    row.resend_bound = largest
    return max(0, resent)


# --- 9. kube-apiserver and etcd restarted mid-copy and while idle ------------------------------


def test_op09_apiserver_and_etcd_restarted_mid_copy_and_idle(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = (
        "kube-apiserver + etcd restarted (mid-copy, idle)",
        9,
        "operator",
    )
    proxy = netproxy(registry_v3.host, bandwidth_bps=2 * MiB)
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=2, layer_size=3 * MiB)
    dst = Destination.snapshot(registry_v3, unique_repo("prod"), "1")
    icp = ImageCopies(control_plane, namespace)
    icp.apply("f9", spec(image.ref, f"{proxy.address}/{dst.repository}:1"))
    wait_until(lambda: proxy.snapshot().bytes_up > 512 * KiB, 60, "the upload to stream")
    control_plane.restart(downtime=2.0)
    fault_row.healed()
    ready_at(icp, "f9", image.digest, watched)
    fault_row.recovered()
    dst.assert_complete(image.digest)
    fault_row.bytes_resent = resent_within_bound(proxy, dst.repository, image, fault_row)
    # idle: everything settled, the control plane goes away and comes back
    control_plane.restart(downtime=2.0)
    obj = icp.get("f9")
    assert icp.condition(obj, "Ready").get("status") == "True"
    # the operator's watch came back: a new object is served
    later = images.push_image(registry_v2, unique_repo("dev2"), "1", layers=1)
    icp.apply("f9b", spec(later.ref, f"{proxy.address}/{dst.repository}:2"))
    ready_at(icp, "f9b", later.digest, watched)
    sessions_closed(registry_v3, dst.repository)
    fault_row.survived(
        "Ready, complete; a new object served after the idle restart",
        requests=proxy.snapshot().requests,
    )


# --- 11. the source tag moved to another image mid-copy --------------------------------------


def test_op11_source_tag_moved_mid_copy(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = "source tag moved mid-copy", 11, "operator"
    src_proxy = netproxy(registry_v2.host, bandwidth_bps=MiB)
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=2, layer_size=MiB)
    dst = Destination.snapshot(registry_v3, unique_repo("prod"), "1")
    icp = ImageCopies(control_plane, namespace)
    icp.apply(
        "f11",
        spec(f"{src_proxy.address}/{image.repo}:1", dst.ref, interval="3s"),
    )
    wait_until(lambda: src_proxy.snapshot().bytes_down > 256 * KiB, 60, "the copy to stream")
    moved = images.push_image(registry_v2, image.repo, "1", layers=1)
    obj = ready_at(icp, "f11", image.digest, watched)  # the digest resolved at the start
    assert obj["status"]["sourceDigest"] == image.digest
    dst.assert_complete(image.digest)
    obj = ready_at(icp, "f11", moved.digest, watched)  # the next look follows the move
    fault_row.recovered()
    assert obj["status"]["sourceDigest"] == moved.digest
    dst.assert_complete(moved.digest)
    sessions_closed(registry_v3, dst.repository)
    fault_row.survived("Ready at the pinned digest, then at the moved tag")


# --- 12. the destination out of space: 507 on blob PUT, then on manifest PUT -------------------


@pytest.mark.parametrize("target", ["blob", "manifest"])
def test_op12_destination_out_of_space(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
    fault_row: FaultRow,
    target: str,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = (
        f"out of space: 507 on {target} PUT",
        12,
        "operator",
    )
    proxy = netproxy(registry_v3.host)
    path = "/blobs/uploads/" if target == "blob" else "/manifests/"
    proxy.add_fault(method="PUT", path=path, status=507, times=None)
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=2)
    dst = Destination.snapshot(registry_v3, unique_repo("prod"), "1")
    icp = ImageCopies(control_plane, namespace)
    icp.apply("f12", spec(image.ref, f"{proxy.address}/{dst.repository}:1"))
    state = failing(icp, "f12", watched)
    assert (state["kind"], state["reason"]) == ("Reconciling", "InsufficientStorage"), state
    assert "507 Insufficient Storage" in state["message"], state
    assert dst.state(image.digest) == "unchanged"
    proxy.clear_faults()
    fault_row.healed()
    ready_at(icp, "f12", image.digest, watched)
    fault_row.recovered()
    dst.assert_complete(image.digest)
    sessions_closed(registry_v3, dst.repository)
    fault_row.survived(
        f"{state['kind']} ({state['reason']}), then Ready", requests=proxy.snapshot().requests
    )


# --- 13. a partition longer than the retry window, then healed --------------------------------


def test_op13_partition_then_healed(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    toxi: ToxiproxyServer,
    unique_repo: Any,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = (
        "partition operator-registry, healed",
        13,
        "operator",
    )
    link = toxi.proxy("op13", registry_v3.host)
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=2)
    dst = Destination.snapshot(registry_v3, unique_repo("prod"), "1")
    link.disable()
    icp = ImageCopies(control_plane, namespace)
    icp.apply("f13", spec(image.ref, f"{link.address}/{dst.repository}:1"))
    state = failing(icp, "f13", watched)
    assert state == {**state, "kind": "Reconciling", "reason": "RegistryUnreachable"}
    time.sleep(6)  # past several retries
    assert icp.condition(icp.get("f13"), "Ready").get("status") == "False"
    link.enable()
    fault_row.healed()
    ready_at(icp, "f13", image.digest, watched)
    fault_row.recovered()
    dst.assert_complete(image.digest)
    sessions_closed(registry_v3, dst.repository)
    fault_row.survived("Reconciling (RegistryUnreachable), then Ready untouched")


# --- 14. the destination tag changed by someone else between two intervals --------------------


@pytest.mark.parametrize("policy", ["Overwrite", "IfNotPresent"])
def test_op14_destination_drift_repaired_per_tag_policy(
    control_plane: ControlPlane,
    namespace: str,
    watched: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    unique_repo: Any,
    fault_row: FaultRow,
    policy: str,
) -> None:
    fault_row.fault, fault_row.number, fault_row.path = (
        f"destination drift, tagPolicy {policy}",
        14,
        "operator",
    )
    image = images.push_image(registry_v2, unique_repo("dev"), "1", layers=2)
    dst = Destination.snapshot(registry_v3, unique_repo("prod"), "1")
    icp = ImageCopies(control_plane, namespace)
    icp.apply("f14", spec(image.ref, dst.ref, interval="2s", tagPolicy=policy))
    ready_at(icp, "f14", image.digest, watched)
    drift = images.push_image(registry_v3, dst.repository, "1", layers=1)
    fault_row.healed()
    if policy == "Overwrite":
        wait_until(lambda: _at(dst, image.digest), RECOVERY, "the drift to be repaired")
        dst.assert_complete(image.digest)
        ready_at(icp, "f14", image.digest, watched)
        final = "repaired, Ready"
    else:
        time.sleep(5)  # two intervals
        dst.before = drift.digest
        assert dst.state(image.digest) == "unchanged"
        final = "left as found (IfNotPresent)"
    fault_row.recovered()
    sessions_closed(registry_v3, dst.repository)
    fault_row.survived(final)


def _at(dst: Destination, digest: str) -> bool:
    from tests.support.invariants import tag_digest

    return tag_digest(dst.registry, dst.repository, dst.tag) == digest
