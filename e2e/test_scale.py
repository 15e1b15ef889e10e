"""What the operator costs at rest and shows while it works (issue 15), on the real API
server with the operator as a process.

- The operator reaches the API server through a counting TCP proxy (``testkit.tcpcount``):
  the number of TCP connections it opens is measured, not guessed. TLS passes through.
- The API server writes an audit log (``e2e.controlplane.AUDIT_POLICY``); the operator's
  requests are those whose User-Agent is ``imagecopy-operator/…`` (its own client) or
  ``kopf/…`` (Kopf's watches, events and patches).
- The registries are real (distribution); the slow copy streams through the bandwidth limit
  of ``testkit.netproxy``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import push_image
from testkit.netproxy import NetProxy
from testkit.registry import RegistryServer
from testkit.tcpcount import CountingTcpProxy
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

OPERATOR_AGENTS = ("imagecopy-operator/", "kopf/")


@pytest.fixture(scope="module")
def api_proxy(control_plane: ControlPlane) -> Iterator[CountingTcpProxy]:
    with CountingTcpProxy("127.0.0.1", control_plane.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    api_proxy: CountingTcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    kubeconfig = control_plane.admin_kubeconfig_via(
        f"https://127.0.0.1:{api_proxy.port}", tmp_path_factory.mktemp("kube") / "kubeconfig"
    )
    proc = OperatorProcess(
        control_plane, {"IMAGECOPY_PROGRESS_INTERVAL": "1s"}, kubeconfig=kubeconfig
    ).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


@pytest.fixture
def icp(control_plane: ControlPlane, namespace: str, operator: OperatorProcess) -> ImageCopies:
    return ImageCopies(control_plane, namespace)


def operator_requests(control_plane: ControlPlane) -> list[dict[str, Any]]:
    return [
        e
        for e in control_plane.audit_events()
        if str(e.get("userAgent", "")).startswith(OPERATOR_AGENTS)
    ]


def describe(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    return "{} {}{}".format(
        event.get("verb"),
        ref.get("resource", event.get("requestURI")),
        f"/{ref['subresource']}" if ref.get("subresource") else "",
    )


def test_a_quiet_interval_costs_one_api_request_per_object_on_kept_connections(
    icp: ImageCopies,
    control_plane: ControlPlane,
    operator: OperatorProcess,
    api_proxy: CountingTcpProxy,
    registry_v2: RegistryServer,
    unique_repo: Any,
) -> None:
    objects = 4
    # A namespace's default ServiceAccount (no controller manager here creates one).
    control_plane.kubectl("create", "serviceaccount", "default", "-n", icp.ns)
    src = unique_repo("quiet/src")
    push_image(registry_v2, src, "v1", layers=2)
    for i in range(objects):
        dst = unique_repo(f"quiet/dst{i}")
        icp.apply(
            f"q{i}",
            {
                "source": {"image": registry_v2.ref(src, "v1")},
                "destination": {"image": registry_v2.ref(dst, "v1")},
                "interval": "3s",
            },
        )
    for i in range(objects):
        icp.wait_condition(f"q{i}", timeout=60, operator=operator)
    time.sleep(4)  # every object has had a re-check: its connections are warm

    seen = len(operator_requests(control_plane))
    connections = api_proxy.connections
    mark = registry_v2.mark()
    time.sleep(15)  # about five quiet intervals of each object
    window = operator_requests(control_plane)[seen:]
    new_connections = api_proxy.connections - connections
    registry_requests = [
        e for e in registry_v2.access_log_since(mark) if "/quiet/" in e.path or "quiet" in e.repo
    ]

    patches = [e for e in window if describe(e) == "patch imagecopies/status"]
    rechecks = len(patches)
    others = [describe(e) for e in window if e not in patches]
    print(
        f"\nquiet window: {rechecks} re-checks of {objects} objects, "
        f"{len(window)} API requests ({len(window) / rechecks:.2f} per re-check), "
        f"{len(registry_requests)} registry requests "
        f"({len(registry_requests) / rechecks:.2f} per re-check), "
        f"{new_connections} new API connections; other requests: {others}"
    )
    assert rechecks >= 2 * objects, "the objects were not re-checked in the window"
    # One API request per quiet re-check: the status patch. No ServiceAccount read (cached).
    assert others == []
    assert all(e["responseStatus"]["code"] == 200 for e in patches)
    # Two registry requests per re-check (the source and the destination manifest HEADs).
    assert len(registry_requests) <= 2 * rechecks
    # Connections are kept: before issue 15's fix every patch opened one.
    assert new_connections <= 1, f"{new_connections} new connections for {rechecks} patches"


def test_a_slow_copy_shows_its_progress_and_drops_it_when_done(
    icp: ImageCopies,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    unique_repo: Any,
    kube: Any,
) -> None:
    from kubernetes import client

    src, dst = unique_repo("slow/src"), unique_repo("slow/dst")
    # Blob bytes are counted as each 1 MiB piece goes out (``oci.repository.read_blob``
    # passes a piece on once the next one has arrived), so each layer spans several pieces.
    layer_size = 4 * 1024 * 1024
    image = push_image(registry_v2, src, "v1", layers=3, layer_size=layer_size)
    total_bytes = image.total_blob_bytes
    blobs = len(image.unique_blobs)
    # About 6 s of streaming at 2 MiB/s: several 1 s progress writes.
    with NetProxy(upstream=registry_v2.host, bandwidth_bps=2 * 1024 * 1024) as slow:
        icp.apply(
            "slow",
            {
                "source": {"image": f"{slow.address}/{src}:v1"},
                "destination": {"image": registry_v3.ref(dst, "v1")},
            },
        )
        custom = client.CustomObjectsApi(kube)
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 90
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = custom.get_namespaced_custom_object(
                "imagecopy.dev", "v1alpha1", icp.ns, "imagecopies", "slow"
            )
            progress = (obj.get("status") or {}).get("progress")
            if progress and (not seen or seen[-1] != progress):
                seen.append(progress)
            if icp.condition(obj, "Ready").get("status") == "True":
                break
            time.sleep(0.2)
    print(f"\nprogress seen: {seen}")
    assert icp.condition(obj, "Ready").get("reason") == "Copied", obj.get("status")
    assert "progress" not in obj["status"], "progress is removed when the copy ends"
    assert obj["status"]["lastCopy"]["blobs"]["uploaded"] == blobs
    assert len(seen) >= 2, f"progress did not advance: {seen}"
    done = [p["bytesDone"] for p in seen]
    assert done == sorted(done) and done[0] < done[-1], done
    for p in seen:
        assert p["bytesTotal"] == total_bytes and p["blobsTotal"] == blobs
        assert 0 <= p["bytesDone"] <= total_bytes and 0 <= p["blobsDone"] <= blobs
        assert p["bytesDone"] < total_bytes or p["blobsDone"] < blobs
