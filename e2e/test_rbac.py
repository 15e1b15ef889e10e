"""The chart's RBAC is enough for the operator, and no more, on a real RBAC-enforcing API server.

The ServiceAccount, ClusterRole and ClusterRoleBinding come from ``helm template`` of
``deploy/helm/imagecopy-operator`` (default values: all namespaces). The operator runs as a
process (``imagecopy operator --standalone -A``) with a kubeconfig holding that ServiceAccount's
token (TokenRequest, ``kubectl create token``), never the admin one, and copies an image from a
basic-auth registry whose credentials it must ``get`` from a Secret named by ``secretRef``.
Then the Secret ``get`` rule is removed from the live ClusterRole: the same kind of copy fails
with a condition naming the forbidden Secret, and heals once the rule is back.

Two more releases cover the other shapes of the chart: ``watchNamespaces`` (a Role and
RoleBinding per namespace; the operator runs ``--namespace``) and ``replicas: 2`` (Kopf peering:
two operators share a ClusterKopfPeering, the lower priority one pauses).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import MANIFEST_ACCEPT, push_image
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)
from tests.support.fixtures import ADMIN_PASSWORD, ADMIN_USER

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "imagecopy-operator"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
PEERING_KINDS = ("ClusterKopfPeering", "KopfPeering")


@dataclass(frozen=True)
class Release:
    """The chart's RBAC objects as applied to the control plane."""

    namespace: str
    service_account: str
    cluster_role: str
    kubeconfig: Path  # authenticates as the ServiceAccount

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass(frozen=True)
class AsServiceAccount:
    """What ``OperatorProcess`` reads from a control plane, with the ServiceAccount's kubeconfig."""

    kubeconfig: Path


def find_helm() -> str:
    local = REPO / ".tools" / "bin" / "helm"
    path = str(local) if os.access(local, os.X_OK) else shutil.which("helm")
    if path is None:
        message = "helm not found (bash scripts/install-helm.sh builds .tools/bin/helm)"
        required = ("CI", "IMAGECOPY_REQUIRE_E2E", "IMAGECOPY_REQUIRE_TOOLS")
        if any(os.environ.get(name) for name in required):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def render(release_namespace: str, fullname: str, *sets: str) -> list[dict[str, Any]]:
    """The chart's RBAC (and peering) objects, as ``helm template`` renders them."""
    argv = [find_helm(), "template", "rbac-e2e", str(CHART), "--namespace", release_namespace]
    for value in (f"fullnameOverride={fullname}", *sets):
        argv += ["--set", value]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    kinds = RBAC_KINDS + PEERING_KINDS
    return [d for d in yaml.safe_load_all(out) if d and d["kind"] in kinds]


@contextlib.contextmanager
def chart_release(cp: ControlPlane, *sets: str) -> Iterator[tuple[Release, list[dict[str, Any]]]]:
    """Apply the chart's ServiceAccount, RBAC and peering objects in a namespace of their own;
    delete the cluster-scoped ones afterwards."""
    ns = cp.create_namespace(f"imagecopy-system-{secrets.token_hex(3)}")
    fullname = f"imagecopy-rbac-{secrets.token_hex(3)}"  # ClusterRoles are cluster-wide
    docs = render(ns, fullname, *sets)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = cp.service_account_kubeconfig(ns, sa, create=False)
    try:
        yield Release(ns, sa, fullname, kubeconfig), docs
    finally:
        for d in docs:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
                cp.kubectl(
                    "delete", d["kind"], d["metadata"]["name"], "--ignore-not-found", check=False
                )
        cp.delete_namespace(ns)


@pytest.fixture(scope="module")
def release(control_plane: ControlPlane) -> Iterator[Release]:
    """The default release (all namespaces): ServiceAccount, ClusterRole, ClusterRoleBinding."""
    with chart_release(control_plane) as (rel, docs):
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
        yield rel


@pytest.fixture
def operator(control_plane: ControlPlane, release: Release) -> Iterator[OperatorProcess]:
    """The operator, authenticated as the chart's ServiceAccount (not as an admin). One per
    test, so no operator of another test serves the objects of the next."""
    proc = OperatorProcess(AsServiceAccount(release.kubeconfig)).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


class ChartOperator(OperatorProcess):
    """The operator with the kopf options of a chart shape, authenticated as the release's
    ServiceAccount."""

    def __init__(self, kubeconfig: Path, kopf_args: Sequence[str]) -> None:
        super().__init__(AsServiceAccount(kubeconfig), kopf_options=tuple(kopf_args))


def refused(operator: OperatorProcess, allowed: Sequence[str] = ()) -> list[str]:
    """Log lines of the operator that show the API refusing it something."""
    return [
        line
        for line in operator.logs().splitlines()
        if ("forbidden" in line.lower() or " 403" in line) and not any(a in line for a in allowed)
    ]


def can_i(cp: ControlPlane, release: Release, verb: str, resource: str, namespace: str) -> bool:
    """``kubectl auth can-i`` as the ServiceAccount (impersonated by the admin)."""
    out = cp.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, f"--as={release.user}", check=False
    )
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), out.stderr
    return answer == "yes"


def copy_with_secret(
    icp: ImageCopies, reg: RegistryServer, name: str, src: str, dst: str
) -> dict[str, Any]:
    """An ImageCopy on a basic-auth registry that can only work with ``secretRef`` credentials."""
    icp.create_docker_secret(f"{name}-cred", reg.host, ADMIN_USER, ADMIN_PASSWORD)
    spec = {
        "source": {"image": reg.ref(src, "1.0"), "secretRef": {"name": f"{name}-cred"}},
        "destination": {"image": reg.ref(dst, "1.0"), "secretRef": {"name": f"{name}-cred"}},
    }
    icp.apply(name, spec)
    return spec


def destination_digest(reg: RegistryServer, repo: str, ref: str) -> str | None:
    with reg.client(headers=reg.admin_headers(repo)) as c:
        r = c.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return str(r.headers["Docker-Content-Digest"])


def set_secret_rule(cp: ControlPlane, release: Release, present: bool) -> None:
    """Remove (or restore) the ``secrets: [get]`` rule of the live ClusterRole."""
    role = json.loads(cp.kubectl("get", "clusterrole", release.cluster_role, "-o", "json").stdout)
    rules = [r for r in role["rules"] if "secrets" not in r.get("resources", [])]
    if present:
        rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    role["rules"] = rules
    cp.kubectl("replace", "-f", "-", input=json.dumps(role))


# --------------------------------------------------------------------------- the tests


def test_service_account_may_get_secrets_but_never_list_or_watch_them(
    control_plane: ControlPlane, release: Release, namespace: str
) -> None:
    cp = control_plane
    assert can_i(cp, release, "get", "secrets", namespace)
    assert not can_i(cp, release, "list", "secrets", namespace)
    assert not can_i(cp, release, "watch", "secrets", namespace)
    for verb, resource in [
        ("create", "secrets"),
        ("create", "imagecopies.imagecopy.dev"),
        ("delete", "imagecopies.imagecopy.dev"),
        ("update", "imagecopies.imagecopy.dev"),
        ("list", "serviceaccounts"),
        ("list", "pods"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("*", "*"),
    ]:
        assert not can_i(cp, release, verb, resource, namespace), (verb, resource)
    for verb, resource in [
        ("get", "imagecopies.imagecopy.dev"),
        ("list", "imagecopies.imagecopy.dev"),
        ("watch", "imagecopies.imagecopy.dev"),
        ("patch", "imagecopies.imagecopy.dev"),
        ("patch", "imagecopies.imagecopy.dev/status"),
        ("get", "serviceaccounts"),
        ("create", "events"),
    ]:
        assert can_i(cp, release, verb, resource, namespace), (verb, resource)

    # The same answer from the API itself, with the ServiceAccount's own token.
    denied = cp.kubectl(
        "get", "secrets", "-n", namespace, kubeconfig=release.kubeconfig, check=False
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    icp = ImageCopies(cp, namespace)
    icp.create_docker_secret("probe", "registry.example.com", "u", "p")
    got = cp.kubectl(
        "get", "secret", "probe", "-n", namespace, "-o", "name", kubeconfig=release.kubeconfig
    )
    assert got.stdout.strip() == "secret/probe"


def test_copy_with_secret_ref_reaches_ready_as_the_service_account(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    namespace: str,
    registry_v2_basic: RegistryServer,
    unique_repo: Any,
) -> None:
    reg = registry_v2_basic
    src, dst = unique_repo("dev/web"), unique_repo("prod/web")
    image = push_image(reg, src, "1.0", layers=2)
    icp = ImageCopies(control_plane, namespace)
    copy_with_secret(icp, reg, "web", src, dst)

    obj = icp.wait_condition("web", timeout=90, operator=operator)
    assert icp.condition(obj, "Ready")["reason"] in ("Copied", "UpToDate")
    assert obj["status"]["destinationDigest"] == image.digest
    assert destination_digest(reg, dst, "1.0") == image.digest
    control_plane.kubectl(
        "wait", "--for=condition=Ready", "icp/web", "-n", namespace, "--timeout=10s", timeout=20
    )
    # Events were posted with the ServiceAccount's rights (create).
    assert ("Normal", "Copied") in {(e["type"], e["reason"]) for e in icp.events("web")}
    # Nothing the operator needs was refused along the way.
    assert not refused(operator), "\n".join(refused(operator)[:10])


def test_without_secret_get_the_copy_fails_with_a_clear_reason(
    control_plane: ControlPlane,
    release: Release,
    operator: OperatorProcess,
    namespace: str,
    registry_v2_basic: RegistryServer,
    unique_repo: Any,
) -> None:
    reg = registry_v2_basic
    src, dst = unique_repo("dev/api"), unique_repo("prod/api")
    image = push_image(reg, src, "1.0", layers=1)
    icp = ImageCopies(control_plane, namespace)
    set_secret_rule(control_plane, release, present=False)
    try:
        assert not can_i(control_plane, release, "get", "secrets", namespace)
        copy_with_secret(icp, reg, "api", src, dst)
        obj = icp.wait_for(
            "api",
            lambda o: icp.condition(o, "Stalled").get("status") == "True",
            timeout=90,
            what="Stalled=True",
            operator=operator,
        )
        ready, stalled = icp.condition(obj, "Ready"), icp.condition(obj, "Stalled")
        assert ready["status"] == "False"
        assert ready["reason"] in ("SecretNotFound", "Forbidden"), ready
        assert stalled["reason"] == ready["reason"]
        assert "api-cred" in ready["message"] and "forbidden" in ready["message"].lower(), ready
        assert destination_digest(reg, dst, "1.0") is None
        warnings = {(e["type"], e["reason"]) for e in icp.events("api")}
        assert ("Warning", "CopyFailed") in warnings
    finally:
        set_secret_rule(control_plane, release, present=True)

    # The rule is what was missing: with it back, the same object heals (Stalled retry: 3s).
    obj = icp.wait_condition("api", timeout=90, operator=operator)
    assert icp.condition(obj, "Ready")["reason"] in ("Copied", "UpToDate")
    assert obj["status"]["destinationDigest"] == image.digest
    assert destination_digest(reg, dst, "1.0") == image.digest


def test_namespaced_release_serves_only_its_namespaces(
    control_plane: ControlPlane,
    namespace: str,
    registry_v2_basic: RegistryServer,
    unique_repo: Any,
) -> None:
    cp, reg = control_plane, registry_v2_basic
    other = cp.create_namespace()
    try:
        with chart_release(cp, f"watchNamespaces={{{namespace}}}") as (rel, docs):
            roles = [d for d in docs if d["kind"] == "Role"]
            assert [r["metadata"]["namespace"] for r in roles] == [namespace]
            assert can_i(cp, rel, "get", "secrets", namespace)
            assert not can_i(cp, rel, "get", "secrets", other)
            assert not can_i(cp, rel, "list", "imagecopies.imagecopy.dev", other)
            assert can_i(cp, rel, "watch", "customresourcedefinitions.apiextensions.k8s.io", other)

            src = unique_repo("dev/ns")
            image = push_image(reg, src, "1.0", layers=1)
            outside = ImageCopies(cp, other)
            copy_with_secret(outside, reg, "outside", src, unique_repo("prod/outside"))
            icp = ImageCopies(cp, namespace)
            copy_with_secret(icp, reg, "inside", src, unique_repo("prod/inside"))

            operator = ChartOperator(rel.kubeconfig, [f"--namespace={namespace}", "--standalone"])
            with operator:
                # Promptly: Kopf retries a forbidden namespace listing for about a minute.
                obj = icp.wait_condition("inside", timeout=30, operator=operator)
                assert obj["status"]["destinationDigest"] == image.digest
                assert not refused(operator), refused(operator)
                assert f"[{namespace}/inside]" in operator.logs()
                assert f"[{other}/outside]" not in operator.logs()
            assert not outside.get("outside").get("status", {}).get("conditions")
    finally:
        cp.delete_namespace(other)


def test_peering_release_lets_two_replicas_share_the_work(
    control_plane: ControlPlane,
    namespace: str,
    registry_v2_basic: RegistryServer,
    unique_repo: Any,
) -> None:
    cp, reg = control_plane, registry_v2_basic
    cp.apply_crds([CHART / "crds" / "kopf-peering.yaml"])
    peering = f"imagecopy-{secrets.token_hex(3)}"
    with chart_release(cp, "replicas=2", f"peering.name={peering}") as (rel, docs):
        assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"] == [
            peering
        ]
        args = [f"--peering={peering}", "--all-namespaces"]
        low = ChartOperator(rel.kubeconfig, [*args, "--priority=100"])
        high = ChartOperator(rel.kubeconfig, [*args, "--priority=200"])
        with high, low:
            resumed = "Resuming the watch-stream for imagecopies"
            deadline = time.monotonic() + 60
            priorities: list[int] = []
            while resumed not in high.logs() or priorities != [100, 200]:
                assert time.monotonic() < deadline, f"{high.log_tail()}\n{priorities}"
                time.sleep(0.5)
                peers = json.loads(
                    cp.kubectl("get", "clusterkopfpeering", peering, "-o", "json").stdout
                ).get("status", {})
                priorities = sorted(p["priority"] for p in peers.values())

            src, dst = unique_repo("dev/ha"), unique_repo("prod/ha")
            image = push_image(reg, src, "1.0", layers=1)
            icp = ImageCopies(cp, namespace)
            copy_with_secret(icp, reg, "ha", src, dst)
            obj = icp.wait_condition("ha", timeout=90, operator=high)
            assert obj["status"]["destinationDigest"] == image.digest
            assert f"[{namespace}/ha]" in high.logs()
            assert f"[{namespace}/ha]" not in low.logs()  # paused: no double work
            assert "Pausing the watch-stream for imagecopies" in low.logs()
            assert resumed not in low.logs()

            # Failover: the active replica stops (and leaves the peering); the standby takes over.
            high.stop()
            deadline = time.monotonic() + 60
            while resumed not in low.logs():
                assert time.monotonic() < deadline, low.log_tail()
                time.sleep(0.5)
        for proc in (high, low):
            assert not refused(proc), refused(proc)
