"""The operator killed in the middle of a copy resumes and finishes after a restart.

The source registry sits behind ``testkit/netproxy.py`` with a bandwidth cap, so a cross-registry
copy of one big layer takes several seconds: long enough to SIGKILL the operator while the
layer streams. The restarted operator sees an object that is not settled for its generation,
copies again (the engine is idempotent: what reached the destination is not sent twice), and
the object ends Ready with the source's digest at the destination.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import MANIFEST_ACCEPT, push_big_image
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane)
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


def test_operator_killed_mid_copy_resumes_and_finishes(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/big"), unique_repo("mirror/big")
    image = push_big_image(registry_v2, src, "1", size=24 * MiB, seed=7)
    proxy = netproxy(registry_v2.host, bandwidth_bps=3 * MiB)
    source = f"{proxy.address}/{src}:1"
    icp = ImageCopies(control_plane, namespace)

    operator.start()
    icp.apply(
        "big", {"source": {"image": source}, "destination": {"image": registry_v3.ref(dst, "1")}}
    )
    obj = icp.wait_condition("big", "Reconciling", reason="Copying", timeout=30, operator=operator)
    assert icp.condition(obj, "Ready").get("status") != "True"
    # wait until the layer is really streaming, then kill the operator without warning
    deadline = time.monotonic() + 30
    while proxy.snapshot().bytes_down < 2 * MiB and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.snapshot().bytes_down >= 2 * MiB, "the copy never started streaming"
    operator.kill()
    with registry_v3.client() as c:
        r = c.head(f"/v2/{dst}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert r.status_code == 404  # cut short: nothing tagged yet
    assert icp.condition(icp.get("big"), "Ready").get("status") != "True"

    operator.start()
    obj = icp.wait_condition("big", reason="Copied", timeout=120, operator=operator)
    assert obj["status"]["destinationDigest"] == image.digest
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    with registry_v3.client() as c:
        r = c.head(f"/v2/{dst}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert r.headers["Docker-Content-Digest"] == image.digest
