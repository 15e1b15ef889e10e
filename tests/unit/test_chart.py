"""The Helm chart (deploy/helm/imagecopy-operator): lint, render, least-privilege RBAC, hardening.

Renders with the real ``helm`` binary (``scripts/install-helm.sh`` builds it into ``.tools/bin``).
Without it the tests skip, except under CI or ``make`` (``CI`` or ``IMAGECOPY_REQUIRE_TOOLS``
set), where a missing helm is a failure.
The RBAC proof against a real API server lives in ``e2e/test_rbac.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "imagecopy-operator"
CANONICAL_CRD = REPO / "deploy" / "crds" / "imagecopies.imagecopy.dev.yaml"
RELEASE, NAMESPACE = "icp", "imagecopy-system"
FULLNAME = "icp-imagecopy-operator"

Doc = dict[str, Any]


def find_helm() -> str | None:
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_helm()
    if path is None:
        message = "helm not found (bash scripts/install-helm.sh builds .tools/bin/helm)"
        if os.environ.get("CI") or os.environ.get("IMAGECOPY_REQUIRE_TOOLS"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def render(helm: str, values: Doc | None = None, tmp_path: Path | None = None) -> list[Doc]:
    """``helm template`` the chart with ``values`` and return its documents (empty ones dropped)."""
    argv = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values:
        assert tmp_path is not None
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["--values", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_fails(helm: str, values: Doc, tmp_path: Path) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    argv = [helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--values", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout
    return result.stderr


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def permissions(role: Doc) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource[/subresource]) -> verbs granted by a Role/ClusterRole."""
    granted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rule in role.get("rules", []):
        assert "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted[(group, resource)] |= set(rule["verbs"])
    return dict(granted)


# What the operator needs in a namespace it serves, and nothing more.
NAMESPACED = {
    ("imagecopy.dev", "imagecopies"): {"get", "list", "watch", "patch"},
    ("imagecopy.dev", "imagecopies/status"): {"get", "patch"},
    ("", "secrets"): {"get"},
    ("", "serviceaccounts"): {"get"},
    ("", "events"): {"create"},
}
CRD_WATCH = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
NAMESPACE_WATCH = {("", "namespaces"): {"list", "watch"}}


# ----------------------------------------------------------------------------- chart and CRDs


def test_lint_strict(helm: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_strict_with_namespaces_and_replicas(helm: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--set", "replicas=2,watchNamespaces={a,b}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_crd_is_a_byte_identical_copy() -> None:
    shipped = CHART / "crds" / CANONICAL_CRD.name
    assert shipped.read_bytes() == CANONICAL_CRD.read_bytes(), "run deploy/sync-crds.sh"


def test_sync_script_check_mode_agrees() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "sync-crds.sh"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    kinds = {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert kinds == {("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")}
    assert {d["spec"]["group"] for d in docs} == {"kopf.dev"}


# ----------------------------------------------------------------------------- RBAC


def test_default_is_cluster_wide_with_exactly_the_needed_permissions(helm: str) -> None:
    docs = render(helm)
    assert of_kind(docs, "Role") == [] and of_kind(docs, "RoleBinding") == []
    role = one(docs, "ClusterRole")
    assert permissions(role) == {**NAMESPACED, **CRD_WATCH}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["team-a", "team-b"]},
        {"replicas": 3},
        {"replicas": 2, "watchNamespaces": ["team-a"]},
    ],
    ids=["default", "namespaced", "peering", "namespaced-peering"],
)
def test_no_wildcards_and_secrets_only_get(helm: str, values: Doc, tmp_path: Path) -> None:
    roles = [d for d in render(helm, values, tmp_path) if d["kind"] in ("Role", "ClusterRole")]
    assert roles
    dangerous = {"escalate", "bind", "impersonate", "delete", "deletecollection", "create"}
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (role["metadata"], rule)
                assert not any("*" in item for item in rule.get(key, [])), rule
        for (group, resource), verbs in permissions(role).items():
            if resource == "secrets":
                assert verbs == {"get"}, "the operator may only get Secrets"
            if (group, resource) != ("", "events"):
                assert not verbs & dangerous, (resource, verbs)


def test_namespaced_mode_uses_roles_in_each_namespace(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {"watchNamespaces": ["team-a", "team-b"]}, tmp_path)
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role) == NAMESPACED
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == NAMESPACE
    # cluster-wide: only read-only observation of CRDs and namespaces, nothing namespaced
    assert permissions(one(docs, "ClusterRole")) == {**CRD_WATCH, **NAMESPACE_WATCH}
    args = container(docs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_rbac_and_service_account_can_be_turned_off(helm: str, tmp_path: Path) -> None:
    values = {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}}
    docs = render(helm, values, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "ServiceAccount",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
    }
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# ----------------------------------------------------------------------------- Deployment


def test_single_replica_runs_standalone_cluster_wide(helm: str) -> None:
    docs = render(helm)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(docs)
    assert "command" not in c  # the image's ENTRYPOINT, imagecopy
    assert c["args"] == [
        "operator",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--log-format=json",
        "--all-namespaces",
        "--standalone",
    ]
    assert of_kind(docs, "ClusterKopfPeering") == []


def test_container_is_hardened(helm: str) -> None:
    docs = render(helm)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume


def test_liveness_probe_targets_kopf_liveness_endpoint(helm: str, tmp_path: Path) -> None:
    for port in (8081, 9000):
        c = container(render(helm, {"livenessPort": port}, tmp_path))
        assert f"--liveness=http://0.0.0.0:{port}/healthz" in c["args"]
        probe = c["livenessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert named[probe["port"]] == port


def test_operator_settings_become_env_vars(helm: str, tmp_path: Path) -> None:
    values = {
        "operator": {
            "allowedRegistries": ["*.example.com", "ghcr.io"],
            "plainHttpRegistries": ["registry.local:5000"],
            "insecureRegistries": ["tls.local:8443"],
            "blockedNetworks": ["169.254.0.0/16", "10.0.0.0/8"],
            "maxConcurrentCopies": 2,
            "maxCopiesInFlight": 64,
            "blobConcurrency": 16,
            "defaultInterval": "10m",
            "stalledRetry": "2m",
            "metricsPort": 9090,
            "maxCopiesPerNamespace": 1,
            "copyTimeout": "1h",
            "stallTimeout": "5m",
            "progressInterval": "30s",
            "peeringLifetime": "30s",
            "connectTimeout": "5s",
            "readTimeout": "2m",
            "mountRefusalTtl": 0,
            "maxIndexChildren": 64,
            "maxIndexDepth": 4,
            "maxManifests": 512,
            "maxManifestBytes": "32MiB",
            "maxBlobs": 5000,
            "maxReferrers": 128,
        },
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    }
    c = container(render(helm, values, tmp_path))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {k: v for k, v in env.items() if k.startswith("IMAGECOPY_")} == {
        "IMAGECOPY_ALLOWED_REGISTRIES": "*.example.com,ghcr.io",
        "IMAGECOPY_PLAIN_HTTP_REGISTRIES": "registry.local:5000",
        "IMAGECOPY_INSECURE_REGISTRIES": "tls.local:8443",
        "IMAGECOPY_BLOCKED_NETWORKS": "169.254.0.0/16,10.0.0.0/8",
        "IMAGECOPY_MAX_CONCURRENT_COPIES": "2",
        "IMAGECOPY_MAX_COPIES_IN_FLIGHT": "64",
        "IMAGECOPY_BLOB_CONCURRENCY": "16",
        "IMAGECOPY_DEFAULT_INTERVAL": "10m",
        "IMAGECOPY_STALLED_RETRY": "2m",
        "IMAGECOPY_METRICS_PORT": "9090",
        "IMAGECOPY_MAX_COPIES_PER_NAMESPACE": "1",
        "IMAGECOPY_COPY_TIMEOUT": "1h",
        "IMAGECOPY_STALL_TIMEOUT": "5m",
        "IMAGECOPY_PROGRESS_INTERVAL": "30s",
        "IMAGECOPY_PEERING_LIFETIME": "30s",
        "IMAGECOPY_CONNECT_TIMEOUT": "5s",
        "IMAGECOPY_READ_TIMEOUT": "2m",
        # a numeric 0 (falsy in a template) still reaches the operator: "remember nothing"
        "IMAGECOPY_MOUNT_REFUSAL_TTL": "0",
        "IMAGECOPY_MAX_INDEX_CHILDREN": "64",
        "IMAGECOPY_MAX_INDEX_DEPTH": "4",
        "IMAGECOPY_MAX_MANIFESTS": "512",
        "IMAGECOPY_MAX_MANIFEST_BYTES": "32MiB",
        "IMAGECOPY_MAX_BLOBS": "5000",
        "IMAGECOPY_MAX_REFERRERS": "128",
    }
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 9090


def test_unset_settings_leave_operator_defaults(helm: str) -> None:
    env = {e["name"] for e in container(render(helm))["env"]}
    assert {n for n in env if n.startswith("IMAGECOPY_")} == {"IMAGECOPY_METRICS_PORT"}


def operator_settings() -> set[str]:
    """Every ``IMAGECOPY_*`` variable the operator reads (controller/settings.py)."""
    source = (REPO / "operator" / "imagecopy" / "controller" / "settings.py").read_text()
    return set(re.findall(r'"(IMAGECOPY_[A-Z_]+)"', source))


def test_values_cover_every_operator_setting(helm: str, tmp_path: Path) -> None:
    # Every operator setting has a chart value: set them all (any non-empty value) and every
    # variable the operator reads is rendered, nothing else.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    everything = {key: "1" for key in values["operator"]}
    everything["metricsPort"] = 9090
    for key in ("allowedRegistries", "plainHttpRegistries", "insecureRegistries"):
        everything[key] = ["r.example:5000"]
    everything["blockedNetworks"] = ["10.0.0.0/8"]
    env = {e["name"] for e in container(render(helm, {"operator": everything}, tmp_path))["env"]}
    assert {n for n in env if n.startswith("IMAGECOPY_")} == operator_settings()
    assert len(operator_settings()) >= 23


def test_scheduling_and_pod_metadata_values(helm: str, tmp_path: Path) -> None:
    values = {
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "podAnnotations": {"example.com/team": "platform"},
        "image": {"repository": "registry.example.com/imagecopy", "tag": "1.2.3"},
        "logFormat": "plain",
        "logLevel": "debug",
    }
    docs = render(helm, values, tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    c = container(docs)
    assert c["image"] == "registry.example.com/imagecopy:1.2.3"
    assert "--log-format=plain" in c["args"] and "--debug" in c["args"]


def test_image_defaults_to_app_version_and_digest_wins(helm: str, tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(render(helm))["image"].endswith(":" + chart["appVersion"])
    digest = "sha256:" + "ab" * 32
    c = container(render(helm, {"image": {"digest": digest}}, tmp_path))
    assert c["image"].endswith("@" + digest)


def test_bad_values_fail_the_render(helm: str, tmp_path: Path) -> None:
    assert "logFormat" in render_fails(helm, {"logFormat": "xml"}, tmp_path)
    assert "logLevel" in render_fails(helm, {"logLevel": "loud"}, tmp_path)


# ----------------------------------------------------------------------------- peering (HA)


def test_replicas_use_kopf_peering_with_distinct_priorities(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {"replicas": 2}, tmp_path)
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    peering = one(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "imagecopy"
    perms = permissions(one(docs, "ClusterRole"))
    assert perms[("kopf.dev", "clusterkopfpeerings")] == {"list", "watch", "get", "patch"}
    named = [r for r in one(docs, "ClusterRole")["rules"] if "get" in r["verbs"]]
    assert all(
        r.get("resourceNames") == ["imagecopy"]
        for r in named
        if r["resources"] == ["clusterkopfpeerings"]
    )
    c = container(docs)
    assert c["command"] == ["/bin/sh", "-c"]
    (script,) = c["args"]
    assert "--peering=imagecopy" in script and "--standalone" not in script
    assert script.startswith("exec imagecopy operator ")
    # The priority expression, run by a real shell: an integer, different for two pod names.
    probe = script.replace("exec imagecopy", "echo", 1)
    priorities = set()
    for pod in ("icp-imagecopy-operator-7d9c-abcde", "icp-imagecopy-operator-7d9c-fghij"):
        out = subprocess.run(
            ["/bin/sh", "-c", probe],
            env={"POD_NAME": pod, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"--priority=(\d+)$", out.strip())
        assert match, out
        priorities.add(int(match.group(1)))
    assert len(priorities) == 2


def test_namespaced_peering_objects_in_each_namespace(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {"replicas": 2, "watchNamespaces": ["team-a", "team-b"]}, tmp_path)
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    for role in of_kind(docs, "Role"):
        assert permissions(role)[("kopf.dev", "kopfpeerings")] == {"list", "watch", "get", "patch"}
    assert of_kind(docs, "ClusterKopfPeering") == []


# ----------------------------------------------------------------------------- metrics


def test_metrics_service_and_service_monitor(helm: str, tmp_path: Path) -> None:
    docs = render(helm)
    assert of_kind(docs, "ServiceMonitor") == []
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    values = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    docs = render(helm, values, tmp_path)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= one(docs, "Service")["metadata"]["labels"].items()


def test_metrics_service_can_be_disabled(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {"metrics": {"service": {"enabled": False}}}, tmp_path)
    assert of_kind(docs, "Service") == []


# ----------------------------------------------------------------------------- image


def test_dockerfile_runs_the_package_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert 'ENTRYPOINT ["imagecopy"]' in text
    assert 'CMD ["operator"]' in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER, so runAsNonRoot can verify it"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert "pip wheel --wheel-dir /wheels ." in text  # the repository's pyproject, no extras


def test_dockerignore_sends_only_the_package() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert "!operator/imagecopy/" in lines and "!pyproject.toml" in lines
    assert not any(line.startswith("!") and (".venv" in line or ".tools" in line) for line in lines)
