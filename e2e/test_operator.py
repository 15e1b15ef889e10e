"""The operator end to end: a real API server, the operator as a process, real registries,
real Secrets, one namespace per test.

One operator process serves the whole module (it watches every namespace); tests stay
isolated by namespace and repository names. The registries speak plain HTTP on loopback
(``IMAGECOPY_PLAIN_HTTP_REGISTRIES=127.0.0.1``); Stalled objects are retried every 3 s.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess, metric_value
from testkit.images import MANIFEST_ACCEPT, PushedImage, push_image
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)
from tests.support.fixtures import ADMIN_PASSWORD, ADMIN_USER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


@pytest.fixture
def icp(control_plane: ControlPlane, namespace: str, operator: OperatorProcess) -> ImageCopies:
    return ImageCopies(control_plane, namespace)


def manifest_digest(reg: RegistryServer, repo: str, ref: str) -> str | None:
    """The destination read back with plain httpx, independent of the product's client."""
    with reg.client(headers=reg.admin_headers(repo)) as c:
        r = c.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def blob_count_and_bytes(image: PushedImage) -> tuple[int, int]:
    return len(image.unique_blobs), image.total_blob_bytes


def copy_spec(src: str, dst: str, **extra: Any) -> dict[str, Any]:
    return {"source": {"image": src}, "destination": {"image": dst}, **extra}


# --------------------------------------------------------------------------- the happy paths


def test_same_registry_promotion_mounts_every_blob(
    icp: ImageCopies, operator: OperatorProcess, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("dev/web"), unique_repo("prod/web")
    image = push_image(registry_v2, src, "1.4.2", layers=3, layer_size=64 * 1024)
    blobs, size = blob_count_and_bytes(image)
    before = operator.metrics()
    mark = registry_v2.mark()

    icp.apply("web", copy_spec(registry_v2.ref(src, "1.4.2"), registry_v2.ref(dst, "1.4.2")))
    # kubectl wait works on the Ready condition (kstatus)
    icp.cp.kubectl(
        "wait", "--for=condition=Ready", "imagecopy/web", "-n", icp.ns, "--timeout=60s", timeout=70
    )
    obj = icp.get("web")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert icp.condition(obj, "Ready")["reason"] == "Copied"
    assert icp.condition(obj, "Reconciling")["status"] == "False"
    assert icp.condition(obj, "Stalled")["status"] == "False"
    last = status["lastCopy"]
    assert last["blobs"]["mounted"] == blobs
    assert last["blobs"]["total"] == blobs
    assert last["blobs"]["uploaded"] == 0
    assert last["bytesSaved"] == size
    assert last["mount"] == {"attempted": blobs, "refused": 0}  # nothing to explain
    assert status["totals"] == {"copies": 1, "mountedBlobs": blobs, "bytesSaved": size}
    assert status["sourceDigest"] == image.digest
    assert status["destinationDigest"] == image.digest
    assert status["destinationImage"] == f"{registry_v2.host}/{dst}@{image.digest}"
    assert manifest_digest(registry_v2, dst, "1.4.2") == image.digest
    # mounts, not uploads, on the wire
    entries = registry_v2.access_log_since(mark)
    mounts = [e for e in entries if e.is_mount and e.repo == dst]
    assert len(mounts) == blobs and all(e.status == 201 for e in mounts)
    assert not [e for e in entries if e.method in ("PATCH", "PUT") and e.is_blob_request]

    reasons = {(e["type"], e["reason"]) for e in icp.events("web")}
    assert ("Normal", "Copied") in reasons

    after = operator.metrics()
    for outcome, expected in (("mounted", blobs), ("uploaded", 0)):
        sample = f'imagecopy_blobs_total{{outcome="{outcome}"}}'
        assert metric_value(after, sample) - metric_value(before, sample) == expected
    sample = 'imagecopy_bytes_total{outcome="mounted"}'
    assert metric_value(after, sample) - metric_value(before, sample) == size
    sample = "imagecopy_bytes_saved_total"
    assert metric_value(after, sample) - metric_value(before, sample) == size
    assert metric_value(after, 'imagecopy_objects{condition="Ready"}') >= 1
    assert "imagecopy_registry_requests_total{" in after


def test_cross_registry_copy_uploads_every_blob(
    icp: ImageCopies, registry_v2: RegistryServer, registry_v3: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("dev/api"), unique_repo("mirror/api")
    image = push_image(registry_v2, src, "2.0", layers=2, layer_size=32 * 1024)
    blobs, size = blob_count_and_bytes(image)
    icp.apply("api", copy_spec(registry_v2.ref(src, "2.0"), registry_v3.ref(dst, "2.0")))
    obj = icp.wait_condition("api", reason="Copied")
    last = obj["status"]["lastCopy"]
    assert last["blobs"]["uploaded"] == blobs
    assert last["blobs"]["mounted"] == 0
    assert last["bytes"]["uploaded"] == size
    assert last["bytesSaved"] == 0
    why = "different registries and no known source repository"
    assert last["mount"] == {"attempted": 0, "refused": 0, "reason": why}
    assert icp.condition(obj, "Ready")["message"].endswith(f"; not mounted: {why}")
    assert manifest_digest(registry_v3, dst, "2.0") == image.digest


def test_a_registry_that_never_mounts_is_explained_in_the_status(
    icp: ImageCopies, registry_v2: RegistryServer, registry_ggcr: RegistryServer, unique_repo: Any
) -> None:
    """go-containerregistry answers every mount 202: on one registry the blobs are found
    (existing, 0 bytes moved), into it from elsewhere with a mount source they are uploaded
    into the 202 sessions; both say why nothing was mounted."""
    why = "registry answered 202 to cross-repository mounts"
    src, dst = unique_repo("dev/ggcr"), unique_repo("prod/ggcr")
    image = push_image(registry_ggcr, src, "1", layers=2, layer_size=16 * 1024)
    blobs, size = blob_count_and_bytes(image)
    icp.apply("same", copy_spec(registry_ggcr.ref(src, "1"), registry_ggcr.ref(dst, "1")))
    obj = icp.wait_condition("same", reason="Copied")
    last = obj["status"]["lastCopy"]
    assert last["blobs"]["existing"] == blobs and last["blobs"]["mounted"] == 0
    assert last["bytesSaved"] == size
    # One probe: its 202 for a blob the source holds makes the other blobs HEAD first (and
    # be found). An earlier copy on this registry in the same operator may have taught it.
    if last["mount"]["attempted"]:
        assert last["mount"] == {"attempted": 1, "refused": 1, "reason": why}
    else:
        assert last["mount"] == {"attempted": 0, "refused": 0}
    assert manifest_digest(registry_ggcr, dst, "1") == image.digest

    other = push_image(registry_v2, unique_repo("dev/elsewhere"), "1", layers=2)
    mirror = unique_repo("mirror/ggcr")
    spec = copy_spec(
        registry_v2.ref(other.repo, "1"),
        registry_ggcr.ref(mirror, "1"),
        mount={"fromRepositories": [unique_repo("nothing/here")]},
    )
    icp.apply("into", spec)
    obj = icp.wait_condition("into", reason="Copied")
    last = obj["status"]["lastCopy"]
    count = len(other.unique_blobs)
    assert last["blobs"]["uploaded"] == count
    assert last["mount"] == {"attempted": count, "refused": count, "reason": why}
    assert icp.condition(obj, "Ready")["message"].endswith(f"; not mounted: {why}")
    assert manifest_digest(registry_ggcr, mirror, "1") == other.digest


def test_a_moving_source_tag_is_followed_at_the_interval(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("ci/app"), unique_repo("staging/app")
    first = push_image(registry_v2, src, "main", layers=1)
    icp.apply(
        "app", copy_spec(registry_v2.ref(src, "main"), registry_v2.ref(dst, "main"), interval="2s")
    )
    obj = icp.wait_for(
        "app",
        lambda o: (
            o.get("status", {}).get("destinationDigest") == first.digest
            and icp.condition(o, "Ready").get("status") == "True"
        ),
        60,
        "Ready at the first digest",
    )
    synced = obj["status"]["lastSyncTime"]

    # nothing moved: the next checks only refresh lastSyncTime
    obj = icp.wait_for("app", lambda o: o["status"].get("lastSyncTime") != synced, 20, "a re-check")
    assert icp.condition(obj, "Ready")["reason"] == "UpToDate"
    assert obj["status"]["totals"]["copies"] == 1

    second = push_image(registry_v2, src, "main", layers=1)
    obj = icp.wait_for(
        "app", lambda o: o["status"].get("destinationDigest") == second.digest, 30, "the new digest"
    )
    assert obj["status"]["sourceDigest"] == second.digest
    assert obj["status"]["totals"]["copies"] == 2
    assert manifest_digest(registry_v2, dst, "main") == second.digest
    assert obj["metadata"]["generation"] == 1  # followed without any spec change


def test_a_spec_change_copies_again_and_bumps_observed_generation(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("dev/svc"), unique_repo("prod/svc")
    image = push_image(registry_v2, src, "1", layers=1)
    icp.apply("svc", copy_spec(registry_v2.ref(src, "1"), registry_v2.ref(dst, "1")))
    icp.wait_condition("svc", reason="Copied")
    icp.patch_spec("svc", {"destination": {"image": registry_v2.ref(dst, "2")}})
    obj = icp.wait_for(
        "svc",
        lambda o: (
            o["status"].get("observedGeneration") == 2
            and icp.condition(o, "Ready").get("status") == "True"
        ),
        60,
        "observedGeneration 2 and Ready",
    )
    assert obj["metadata"]["generation"] == 2
    assert icp.condition(obj, "Ready")["observedGeneration"] == 2
    assert manifest_digest(registry_v2, dst, "2") == image.digest


def test_suspend_stops_work_until_resumed(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("dev/sus"), unique_repo("prod/sus")
    image = push_image(registry_v2, src, "1", layers=1)
    icp.apply("sus", copy_spec(registry_v2.ref(src, "1"), registry_v2.ref(dst, "1"), suspend=True))
    obj = icp.wait_condition("sus", "Ready", status="Unknown", reason="Suspended")
    assert icp.condition(obj, "Reconciling")["status"] == "False"
    assert manifest_digest(registry_v2, dst, "1") is None
    icp.patch_spec("sus", {"suspend": False})
    icp.wait_condition("sus", reason="Copied")
    assert manifest_digest(registry_v2, dst, "1") == image.digest


def test_deleting_the_object_leaves_the_destination_image(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("dev/del"), unique_repo("prod/del")
    image = push_image(registry_v2, src, "1", layers=1)
    icp.apply("del", copy_spec(registry_v2.ref(src, "1"), registry_v2.ref(dst, "1")))
    icp.wait_condition("del", reason="Copied")
    icp.delete("del")
    assert not icp.exists("del")
    assert manifest_digest(registry_v2, dst, "1") == image.digest


# --------------------------------------------------------------------------- failures


def test_immutable_tag_conflict_stalls(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    src, dst = unique_repo("staging/rel"), unique_repo("releases/rel")
    push_image(registry_v2, src, "1.5.0", layers=1)
    other = push_image(registry_v2, dst, "1.5.0", layers=1)
    icp.apply(
        "rel",
        copy_spec(
            registry_v2.ref(src, "1.5.0"), registry_v2.ref(dst, "1.5.0"), tagPolicy="Immutable"
        ),
    )
    obj = icp.wait_condition("rel", "Stalled", reason="TagConflict")
    assert icp.condition(obj, "Ready")["status"] == "False"
    assert icp.condition(obj, "Ready")["reason"] == "TagConflict"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert manifest_digest(registry_v2, dst, "1.5.0") == other.digest  # untouched
    warnings = [e for e in icp.events("rel") if e["reason"] == "CopyFailed"]
    assert warnings and warnings[0]["type"] == "Warning"
    assert "TagConflict" in warnings[0]["message"]


def test_missing_secret_stalls_then_heals_when_the_secret_appears(
    icp: ImageCopies, registry_v2_basic: RegistryServer, unique_repo: Any
) -> None:
    reg = registry_v2_basic
    src, dst = unique_repo("dev/priv"), unique_repo("prod/priv")
    image = push_image(reg, src, "1", layers=1)
    spec = copy_spec(reg.ref(src, "1"), reg.ref(dst, "1"))
    spec["source"]["secretRef"] = {"name": "regcred"}
    spec["destination"]["secretRef"] = {"name": "regcred"}
    icp.apply("priv", spec)
    obj = icp.wait_condition("priv", "Stalled", reason="SecretNotFound")
    assert "regcred" in icp.condition(obj, "Ready")["message"]

    icp.create_docker_secret("regcred", reg.host, ADMIN_USER, ADMIN_PASSWORD)
    obj = icp.wait_condition("priv", reason="Copied", timeout=30)  # the next slow retry (3 s)
    assert obj["metadata"]["generation"] == 1  # healed without touching the ImageCopy
    assert icp.condition(obj, "Stalled")["status"] == "False"
    assert manifest_digest(reg, dst, "1") == image.digest


def test_wrong_credentials_are_unauthorized_and_never_logged(
    icp: ImageCopies, operator: OperatorProcess, registry_v2_basic: RegistryServer, unique_repo: Any
) -> None:
    reg = registry_v2_basic
    src, dst = unique_repo("dev/wrong"), unique_repo("prod/wrong")
    push_image(reg, src, "1", layers=1)
    icp.create_docker_secret("wrong", reg.host, ADMIN_USER, "not-the-password")
    spec = copy_spec(reg.ref(src, "1"), reg.ref(dst, "1"))
    spec["source"]["secretRef"] = {"name": "wrong"}
    icp.apply("wrong", spec)
    obj = icp.wait_condition("wrong", "Stalled", reason="Unauthorized")
    assert "not-the-password" not in str(obj["status"])
    assert "not-the-password" not in operator.logs()
    basic = base64.b64encode(f"{ADMIN_USER}:not-the-password".encode()).decode()
    assert basic not in operator.logs()
    assert ADMIN_PASSWORD not in operator.logs()


def test_missing_source_is_source_not_found(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    icp.apply(
        "nosrc",
        copy_spec(
            registry_v2.ref(unique_repo("nothing"), "1"), registry_v2.ref(unique_repo("dst"), "1")
        ),
    )
    obj = icp.wait_condition("nosrc", "Stalled", reason="SourceNotFound")
    assert icp.condition(obj, "Ready")["status"] == "False"


def test_a_registry_outside_the_allow_list_is_refused(
    icp: ImageCopies, registry_v2: RegistryServer, unique_repo: Any
) -> None:
    icp.apply(
        "far",
        copy_spec("registry.example.com/dev/web:1", registry_v2.ref(unique_repo("web"), "1")),
    )
    obj = icp.wait_condition("far", "Stalled", reason="RegistryNotAllowed")
    assert "registry.example.com" in icp.condition(obj, "Ready")["message"]


def test_a_secret_in_another_namespace_is_never_used(
    icp: ImageCopies,
    control_plane: ControlPlane,
    registry_v2_basic: RegistryServer,
    unique_repo: Any,
) -> None:
    reg = registry_v2_basic
    src, dst = unique_repo("dev/x"), unique_repo("prod/x")
    push_image(reg, src, "1", layers=1)
    other = control_plane.create_namespace()
    try:
        icp.create_docker_secret("shared", reg.host, ADMIN_USER, ADMIN_PASSWORD, namespace=other)
        spec = copy_spec(reg.ref(src, "1"), reg.ref(dst, "1"))
        spec["source"]["secretRef"] = {"name": "shared"}
        spec["destination"]["secretRef"] = {"name": "shared"}
        icp.apply("x", spec)
        obj = icp.wait_condition("x", "Stalled", reason="SecretNotFound")
        assert icp.ns in icp.condition(obj, "Ready")["message"]
        time.sleep(4)  # past a slow retry: still refused, never copied
        obj = icp.get("x")
        assert icp.condition(obj, "Stalled")["reason"] == "SecretNotFound"
        assert "lastCopy" not in obj["status"]
        assert manifest_digest(reg, dst, "1") is None
    finally:
        control_plane.delete_namespace(other)


def test_default_service_account_pull_secrets_are_used_without_secret_ref(
    icp: ImageCopies, registry_v2_basic: RegistryServer, unique_repo: Any
) -> None:
    reg = registry_v2_basic
    src, dst = unique_repo("dev/sa"), unique_repo("prod/sa")
    image = push_image(reg, src, "1", layers=1)
    icp.create_docker_secret("pull", reg.host, ADMIN_USER, ADMIN_PASSWORD)
    # no controller-manager here: create the default ServiceAccount ourselves
    icp.cp.kubectl("create", "serviceaccount", "default", "-n", icp.ns, check=False)
    icp.cp.kubectl(
        "patch",
        "serviceaccount",
        "default",
        "-n",
        icp.ns,
        "--type=merge",
        "-p",
        '{"imagePullSecrets":[{"name":"missing"},{"name":"pull"}]}',
    )
    icp.apply("sa", copy_spec(reg.ref(src, "1"), reg.ref(dst, "1")))
    icp.wait_condition("sa", reason="Copied")
    assert manifest_digest(reg, dst, "1") == image.digest


def test_a_failing_registry_keeps_reconciling_with_backoff_then_recovers(
    icp: ImageCopies,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    netproxy: Any,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/flaky"), unique_repo("prod/flaky")
    image = push_image(registry_v2, src, "1", layers=1)
    proxy = netproxy(registry_v2.host)
    fault = proxy.add_fault(status=503, times=None)
    icp.apply("flaky", copy_spec(f"{proxy.address}/{src}:1", registry_v2.ref(dst, "1")))
    obj = icp.wait_condition(
        "flaky", "Reconciling", reason="RegistryUnreachable", timeout=60, operator=operator
    )
    assert icp.condition(obj, "Ready")["status"] == "False"
    assert icp.condition(obj, "Stalled")["status"] == "False"  # transient: not stalled
    hits = fault.hits
    time.sleep(4)
    assert fault.hits > hits  # still trying, with backoff (not a hot loop: bounded below)
    assert fault.hits - hits < 40
    proxy.clear_faults()
    icp.wait_condition("flaky", reason="Copied", timeout=60, operator=operator)
    assert manifest_digest(registry_v2, dst, "1") == image.digest
