"""No tenant starves another, end to end: a real API server, the operator as a process, a
real registry, and in front of it for one tenant the fault proxy (``testkit/netproxy.py``)
answering nothing, ever.

Two in-flight slots (and two copy slots), both allowed to one namespace: tenant A's objects
fill them with copies whose source never answers (so they never get as far as a copy slot,
which only a copy about to upload takes). Before the fix slots were first come, first served and a copy had no
deadline, so tenant B's object waited behind A's whole backlog (each A copy held its slot
for the 60 s request timeout, and then queued again) and A's objects stayed ``Copying``.
Now A's copies are cancelled after the 5 s no-progress timeout with reason ``CopyTimeout``,
and the first slot that frees goes to B, which reaches Ready in seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess, metric_value
from testkit.images import push_image
from testkit.netproxy import NetProxy
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

HOSTILE = 4
STALL_TIMEOUT = 5.0


@pytest.fixture
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        control_plane,
        env={
            "IMAGECOPY_MAX_CONCURRENT_COPIES": "2",
            "IMAGECOPY_MAX_COPIES_IN_FLIGHT": "2",
            # No reserve: tenant A may take every slot, so B depends on the hand-off.
            "IMAGECOPY_MAX_COPIES_PER_NAMESPACE": "2",
            "IMAGECOPY_STALL_TIMEOUT": f"{STALL_TIMEOUT:g}s",
            "IMAGECOPY_COPY_TIMEOUT": "45s",
        },
    ).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


@pytest.fixture
def other_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = control_plane.create_namespace()
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


def copy_spec(src: str, dst: str) -> dict[str, Any]:
    return {"source": {"image": src}, "destination": {"image": dst}}


def wait_metric(
    operator: OperatorProcess, sample: str, ok: Callable[[float], bool], timeout: float
) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric_value(operator.metrics(), sample)
        if ok(value):
            return value
        time.sleep(0.2)
    raise AssertionError(f"{sample} stayed at {value} for {timeout:.0f}s\n{operator.log_tail()}")


def test_a_tenant_whose_registry_never_answers_starves_no_other_tenant(
    control_plane: ControlPlane,
    namespace: str,
    other_namespace: str,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    netproxy: Callable[..., NetProxy],
    unique_repo: Any,
) -> None:
    tenant_a = ImageCopies(control_plane, namespace)
    tenant_b = ImageCopies(control_plane, other_namespace)
    src = unique_repo("dev/app")
    push_image(registry_v2, src, "1.0", layers=2, layer_size=16 * 1024)
    # Tenant A's source: the same registry behind a proxy that reads every request and
    # answers nothing for an hour (a registry that accepts connections and then hangs).
    stalling = netproxy(registry_v2.host)
    stalling.add_fault(action="stall", times=None, stall_seconds=3600)

    created = time.monotonic()
    for i in range(HOSTILE):
        tenant_a.apply(
            f"hostile-{i}",
            copy_spec(f"{stalling.address}/{src}:1.0", registry_v2.ref(unique_repo(f"a{i}"), "1")),
        )
    # Both in-flight slots are A's before B asks for one.
    wait_metric(operator, 'imagecopy_copies_in_flight{state="inUse"}', lambda v: v == 2, 30)
    wait_metric(operator, 'imagecopy_copies_in_flight{state="waiting"}', lambda v: v >= 1, 10)
    # Stuck planning, not moving bytes: no copy slot is held.
    assert metric_value(operator.metrics(), 'imagecopy_copy_slots{state="inUse"}') == 0

    asked = time.monotonic()
    tenant_b.apply("normal", copy_spec(registry_v2.ref(src, "1.0"), registry_v2.ref(src, "b")))
    tenant_b.wait_condition("normal", "Ready", "True", "Copied", timeout=30, operator=operator)
    waited = time.monotonic() - asked
    # One no-progress timeout of one A copy, plus the copy itself.
    assert waited < STALL_TIMEOUT + 15, waited

    # A's objects did not stay Copying: each ends in CopyTimeout (transient, retried).
    for i in range(HOSTILE):
        remaining = max(1.0, 60 - (time.monotonic() - created))
        obj = tenant_a.wait_condition(
            f"hostile-{i}", "Ready", "False", "CopyTimeout", timeout=remaining, operator=operator
        )
        ready = tenant_a.condition(obj, "Ready")
        assert "made no progress for 5s" in ready["message"]
        assert tenant_a.condition(obj, "Reconciling")["status"] == "True"
        assert tenant_a.condition(obj, "Stalled")["status"] == "False"
    assert time.monotonic() - created < 60

    metrics = operator.metrics()
    assert metric_value(metrics, 'imagecopy_copies_total{result="CopyTimeout"}') >= HOSTILE
    # Request labels: only registries the specs name (a stalled request is never counted:
    # it got no answer before it was cancelled), and "other".
    labels = set(re.findall(r'imagecopy_registry_requests_total\{[^}]*registry="([^"]*)"', metrics))
    assert registry_v2.host in labels
    assert labels <= {registry_v2.host, stalling.address, "other"}
