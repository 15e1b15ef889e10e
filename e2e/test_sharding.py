"""Sharding: two operator releases owning disjoint namespace sets, no object handled twice.

Two chart releases are rendered with ``helm template`` (different ``watchNamespaces``), applied
server-side to the real API server (ServiceAccount, namespaced Roles and RoleBindings in the
watched namespaces, Deployment), and each shard runs as an operator process with the namespace
options its rendered Deployment carries (``--namespace=…`` for each watched namespace,
``--standalone``). Objects in each shard's namespaces are copied by that shard only: the other
shard's log never names them, and each destination manifest is PUT exactly once.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.operator_harness import REPO_ROOT, ImageCopies, OperatorProcess
from e2e.replicas import copy_lines, object_lines
from testkit.images import push_image
from testkit.registry import RegistryServer, select
from testkit.tools import find_tool
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "deploy" / "helm" / "imagecopy-operator"


def render(release_ns: str, fullname: str, values: dict[str, Any], tmp_path: Path) -> list[Any]:
    helm = find_tool("helm")
    if helm is None:
        pytest.fail("helm not found (bash scripts/install-helm.sh)", pytrace=False)
    values_file = tmp_path / f"{fullname}.yaml"
    values_file.write_text(yaml.safe_dump({"fullnameOverride": fullname, **values}))
    argv = [helm, "template", fullname, str(CHART), "-n", release_ns, "-f", str(values_file)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def deployment_args(docs: list[Any]) -> list[str]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


@pytest.fixture
def namespaces(control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    made = {key: control_plane.create_namespace() for key in ("system", "a1", "a2", "b1")}
    try:
        yield made
    finally:
        for ns in made.values():
            control_plane.delete_namespace(ns)


def test_two_shards_own_disjoint_namespaces_and_never_handle_the_same_object(
    control_plane: ControlPlane,
    namespaces: dict[str, str],
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespaces
    shards = {"a": [ns["a1"], ns["a2"]], "b": [ns["b1"]]}
    suffix = secrets.token_hex(3)
    procs: dict[str, OperatorProcess] = {}
    rendered: dict[str, list[Any]] = {}
    for shard, watched in shards.items():
        docs = rendered[shard] = render(
            ns["system"], f"shard-{shard}-{suffix}", {"watchNamespaces": watched}, tmp_path
        )
        cp.kubectl(
            "apply",
            "--server-side",
            "--field-manager=helm-e2e",
            "-f",
            "-",
            input=yaml.safe_dump_all(docs),
        )
        # Namespaced RBAC in each watched namespace, and only there.
        roles = sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role")
        assert roles == sorted(watched)
        for w in watched:
            cp.kubectl("get", "role,rolebinding", f"shard-{shard}-{suffix}", "-n", w)
        args = deployment_args(docs)
        scope = [a for a in args if a.startswith("--namespace=") or a == "--standalone"]
        assert scope == [*(f"--namespace={w}" for w in watched), "--standalone"], args
        assert "--all-namespaces" not in args
        procs[shard] = OperatorProcess(cp, kopf_options=tuple(scope))

    mark = registry_v3.mark()
    objects = {"a": [(ns["a1"], "one"), (ns["a2"], "two")], "b": [(ns["b1"], "three")]}
    dsts: dict[tuple[str, str], str] = {}
    try:
        for proc in procs.values():
            proc.start()
        for shard_objects in objects.values():
            for where, name in shard_objects:
                src, dst = unique_repo(f"dev/{name}"), unique_repo(f"prod/{name}")
                dsts[where, name] = dst
                push_image(registry_v2, src, "1", layers=2)
                ImageCopies(cp, where).apply(
                    name,
                    {
                        "source": {"image": registry_v2.ref(src, "1")},
                        "destination": {"image": registry_v3.ref(dst, "1")},
                    },
                )
        for shard, shard_objects in objects.items():
            for where, name in shard_objects:
                ImageCopies(cp, where).wait_condition(
                    name, reason="Copied", timeout=60, operator=procs[shard]
                )
        time.sleep(2)  # a late copy by the other shard would have shown by now
        for shard, shard_objects in objects.items():
            other = procs["b" if shard == "a" else "a"]
            for where, name in shard_objects:
                assert len(copy_lines(procs[shard], where, name)) == 1, (shard, name)
                assert not object_lines(other, where, name), (shard, name)
                puts = select(
                    registry_v3.access_log_since(mark),
                    method="PUT",
                    repo=dsts[where, name],
                    path="/manifests/",
                )
                assert len(puts) == 1, (name, [str(p) for p in puts])
    finally:
        for proc in procs.values():
            proc.stop()
            print(f"\nshard log: {proc.log_path}")
        for docs in rendered.values():
            cluster = [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
            for d in cluster:
                cp.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found")
