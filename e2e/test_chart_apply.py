"""The chart, applied for real: every shape of ``helm template`` is applied server-side
(``kubectl apply --server-side``) to the real API server, and an upgraded CRD (an added field)
keeps the existing objects.

Each values combination renders into a release namespace of its own with a unique
``fullnameOverride`` (ClusterRoles are cluster-wide). The API server validates every object
against its real schema (Deployment, Service, RBAC, ClusterKopfPeering, ServiceMonitor); a
second apply must change nothing (no ``resourceVersion`` moves), which is what a GitOps tool
re-applying the chart sees. The ServiceMonitor needs the Prometheus Operator's CRD: a minimal
stand-in CRD (group ``monitoring.coreos.com``, open schema) is installed for that combination.
No controller manager runs, so no Pod is created: the Deployment is checked as an object.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import CRD_DIR, ControlPlane
from e2e.operator_harness import REPO_ROOT, ImageCopies
from testkit.tools import find_tool

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "deploy" / "helm" / "imagecopy-operator"
#: Deleted after each combination (the CRDs of crds/ stay: the session's tests need them).
CLUSTER_KINDS = ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")
CRD_FILE = CRD_DIR / "imagecopies.imagecopy.dev.yaml"

SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def everything(ns: str) -> dict[str, Any]:
    """Every value set to something other than its default."""
    return {
        "image": {"digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "pull"}],
        "operator": {
            "allowedRegistries": ["registry.example.com", "*.example.org:*"],
            "plainHttpRegistries": ["127.0.0.1:5000"],
            "insecureRegistries": ["self-signed.example.com"],
            "blockedNetworks": ["default", "10.0.0.0/8"],
            "maxConcurrentCopies": 8,
            "blobConcurrency": 4,
            "defaultInterval": "10m",
            "stalledRetry": "2m",
            "metricsPort": 9090,
            "maxCopiesPerNamespace": 2,
            "copyTimeout": "1h",
            "stallTimeout": "5m",
            "progressInterval": "30s",
            "peeringLifetime": "30s",
            "connectTimeout": "5s",
            "readTimeout": "2m",
            "mountRefusalTtl": "0",
            "maxIndexChildren": 64,
            "maxIndexDepth": 4,
            "maxManifests": 512,
            "maxManifestBytes": "32MiB",
            "maxBlobs": 5000,
            "maxReferrers": 128,
        },
        "logFormat": "plain",
        "logLevel": "verbose",
        "livenessPort": 9091,
        "serviceAccount": {"annotations": {"example.com/role": "imagecopy"}},
        "metrics": {"service": {"type": "NodePort", "annotations": {"a": "b"}}},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "tmpSizeLimit": "1Gi",
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "podAnnotations": {"example.com/scrape": "true"},
        "podLabels": {"team": "platform"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
    }


#: name → values(release namespace, watched namespaces).
COMBINATIONS: dict[str, Any] = {
    "defaults": lambda ns, watched: {},
    "namespaced": lambda ns, watched: {"watchNamespaces": watched},
    "peering": lambda ns, watched: {"replicas": 2},
    "peering-namespaced": lambda ns, watched: {"replicas": 3, "watchNamespaces": watched},
    "service-monitor": lambda ns, watched: {"metrics": {"serviceMonitor": {"enabled": True}}},
    "bring-your-own": lambda ns, watched: {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "metrics": {"service": {"enabled": False}},
    },
    "everything": lambda ns, watched: everything(ns),
}


def helm() -> str:
    path = find_tool("helm")
    if path is None:
        pytest.fail("helm not found (bash scripts/install-helm.sh)", pytrace=False)
    return path


def render(release_ns: str, fullname: str, values: dict[str, Any], tmp_path: Path) -> str:
    """``helm template --include-crds``: the chart's crds/ first, as ``helm install`` applies them."""
    values_file = tmp_path / f"{fullname}.yaml"
    values_file.write_text(yaml.safe_dump({"fullnameOverride": fullname, **values}))
    argv = [helm(), "template", "e2e", str(CHART), "-n", release_ns, "-f", str(values_file)]
    argv.append("--include-crds")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


def env_view(env: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """(name, value or fieldRef path): the server adds ``fieldRef.apiVersion: v1``."""
    return [
        (e["name"], e["value"] if "value" in e else e["valueFrom"]["fieldRef"]["fieldPath"])
        for e in env or ()
    ]


def server_side_apply(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    """CRDs first (and Established), then the rest: one stream cannot map a kind it creates."""
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    for batch in (crds, rest):
        if not batch:
            continue
        cp.kubectl(
            "apply",
            "--server-side",
            "--field-manager=helm-e2e",
            "-f",
            "-",
            input=yaml.safe_dump_all(batch),
        )
        if batch is crds:
            names = [f"crd/{d['metadata']['name']}" for d in crds]
            cp.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s")


def versions(cp: ControlPlane, docs: list[dict[str, Any]]) -> dict[str, str]:
    """kind/namespace/name → resourceVersion of every rendered object, read from the server."""
    out: dict[str, str] = {}
    for d in docs:
        meta = d["metadata"]
        ns_args = ["-n", meta["namespace"]] if meta.get("namespace") else []
        got = cp.kubectl("get", d["kind"], meta["name"], *ns_args, "-o", "json")
        key = f"{d['kind']}/{meta.get('namespace', '')}/{meta['name']}"
        out[key] = json.loads(got.stdout)["metadata"]["resourceVersion"]
    return out


@pytest.fixture(scope="module")
def service_monitor_crd(control_plane: ControlPlane) -> Iterator[None]:
    control_plane.kubectl(
        "apply", "--server-side", "-f", "-", input=json.dumps(SERVICE_MONITOR_CRD)
    )
    name = SERVICE_MONITOR_CRD["metadata"]["name"]  # type: ignore[index]
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    try:
        yield
    finally:
        control_plane.kubectl("delete", "crd", name, "--ignore-not-found", check=False)


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_rendering_applies_server_side_and_reapplies_unchanged(
    combination: str, control_plane: ControlPlane, service_monitor_crd: None, tmp_path: Path
) -> None:
    cp = control_plane
    release_ns = cp.create_namespace(f"chart-{combination}-{secrets.token_hex(2)}")
    watched = [cp.create_namespace() for _ in range(2)]
    fullname = f"icp-{combination}-{secrets.token_hex(2)}"
    peering = {"peering": {"name": fullname}}  # the ClusterKopfPeering is cluster-wide
    docs: list[dict[str, Any]] = []
    try:
        values = {**peering, **COMBINATIONS[combination](release_ns, watched)}
        rendered = render(release_ns, fullname, values, tmp_path)
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        assert docs, rendered
        server_side_apply(cp, docs)
        before = versions(cp, docs)
        assert len(before) == len(docs)
        server_side_apply(cp, docs)
        assert versions(cp, docs) == before, f"re-applying {combination} changed objects"
        kinds = {d["kind"] for d in docs}
        assert "Deployment" in kinds
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        live = json.loads(
            cp.kubectl(
                "get", "deployment", deployment["metadata"]["name"], "-n", release_ns, "-o", "json"
            ).stdout
        )
        # The server kept what the chart asked for (nothing pruned or defaulted away).
        want = deployment["spec"]["template"]["spec"]["containers"][0]
        got = live["spec"]["template"]["spec"]["containers"][0]
        assert got["args"] == want["args"]
        assert env_view(got.get("env")) == env_view(want.get("env"))
        assert got["securityContext"] == want["securityContext"]
    finally:
        for d in docs:
            if d["kind"] in CLUSTER_KINDS:
                cp.kubectl(
                    "delete", d["kind"], d["metadata"]["name"], "--ignore-not-found", check=False
                )
        for ns in (release_ns, *watched):
            cp.delete_namespace(ns)


def test_crd_upgrade_with_an_added_field_keeps_existing_objects(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    icp = ImageCopies(cp, namespace)
    spec = {
        "source": {"image": "registry.example.com/dev/web:1.0"},
        "destination": {"image": "registry.example.com/prod/web:1.0"},
    }
    icp.apply("before-upgrade", spec)
    old = icp.get("before-upgrade")

    (crd,) = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    upgraded = copy.deepcopy(crd)
    for version in upgraded["spec"]["versions"]:
        props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        props["comment"] = {"type": "string", "maxLength": 256}
    try:
        cp.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(upgraded)
        )
        cp.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s"
        )
        kept = icp.get("before-upgrade")
        assert kept["metadata"]["uid"] == old["metadata"]["uid"]
        assert kept["spec"] == old["spec"]
        # The new field is stored (not pruned) on new objects, and may be added to old ones.
        icp.apply("after-upgrade", {**spec, "comment": "added by the new CRD"})
        assert icp.get("after-upgrade")["spec"]["comment"] == "added by the new CRD"
        icp.patch_spec("before-upgrade", {"comment": "old object, new field"})
        assert icp.get("before-upgrade")["spec"]["comment"] == "old object, new field"
    finally:
        for name in ("after-upgrade", "before-upgrade"):
            if icp.exists(name):
                icp.delete(name)
        cp.apply_crds()  # back to the repository's CRD for the rest of the session
