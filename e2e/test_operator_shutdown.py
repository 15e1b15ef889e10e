"""The operator stopped (SIGTERM) in the middle of a copy leaves no upload session open.

The source registry sits behind ``testkit/netproxy.py`` with a bandwidth cap, so the one big
layer streams into the destination for several seconds: the operator is stopped while its
upload session is open. Kopf stops the daemon, then cancels it; the cancellation reaches the
engine, and the blob layer cancels (``DELETE``) the session before the task ends. Open
sessions are counted in the destination's storage (see ``tests/integration/test_cancellation``
for what counts as open); the destination is distribution v3, which can cancel a session
that took part of a body.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import push_big_image
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def open_sessions(registry: RegistryServer, repository: str) -> list[str]:
    uploads = registry.root_dir / "docker/registry/v2/repositories" / repository / "_uploads"
    if not uploads.is_dir():
        return []
    return sorted(p.name for p in uploads.iterdir() if (p / "startedat").exists())


@pytest.fixture
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane)
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


def test_operator_stopped_mid_copy_cancels_its_upload_session(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/big"), unique_repo("mirror/big")
    push_big_image(registry_v2, src, "1", size=24 * MiB, seed=11)
    proxy = netproxy(registry_v2.host, bandwidth_bps=2 * MiB)
    icp = ImageCopies(control_plane, namespace)

    operator.start()
    icp.apply(
        "big",
        {
            "source": {"image": f"{proxy.address}/{src}:1"},
            "destination": {"image": registry_v3.ref(dst, "1")},
        },
    )
    icp.wait_condition("big", "Reconciling", reason="Copying", timeout=30, operator=operator)
    deadline = time.monotonic() + 30
    while proxy.snapshot().bytes_down < 2 * MiB and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.snapshot().bytes_down >= 2 * MiB, "the copy never started streaming"
    assert open_sessions(registry_v3, dst), "no upload session was open"

    started = time.monotonic()
    operator.stop(timeout=30)  # SIGTERM, as a rollout or a node drain sends it
    stopped_in = time.monotonic() - started

    assert open_sessions(registry_v3, dst) == [], operator.log_tail()
    assert stopped_in < 20
