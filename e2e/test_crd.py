"""The ImageCopy CRD on a real kube-apiserver: schema, defaults, CEL rules, columns, status.

Everything here is admission behaviour of the API server itself; no operator runs. The last tests
check the control-plane harness (RBAC kubeconfigs, no process outliving its owner).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import REPO_ROOT, ControlPlane, KubectlError, reap_stale_workdirs

pytestmark = pytest.mark.e2e

CRD_NAME = "imagecopies.imagecopy.dev"
CRD_FILE = REPO_ROOT / "deploy" / "crds" / f"{CRD_NAME}.yaml"
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
DIGEST = "sha256:" + "ab" * 32

Obj = dict[str, Any]


def imagecopy(name: str = "web", **spec: Any) -> Obj:
    """A minimal valid ImageCopy; keyword arguments replace top-level spec fields."""
    return {
        "apiVersion": "imagecopy.dev/v1alpha1",
        "kind": "ImageCopy",
        "metadata": {"name": name},
        "spec": {
            "source": {"image": "registry.example.com/dev/web:1.4.2"},
            "destination": {"image": "registry.example.com/prod/web:1.4.2"},
            **spec,
        },
    }


def create(cp: ControlPlane, ns: str, obj: Obj, *extra: str) -> None:
    cp.kubectl("create", "--validate=strict", "-n", ns, "-f", "-", *extra, input=json.dumps(obj))


def get(cp: ControlPlane, ns: str, name: str) -> Obj:
    out = cp.kubectl("get", "imagecopy", name, "-n", ns, "-o", "json").stdout
    result: Obj = json.loads(out)
    return result


def patch_status(cp: ControlPlane, ns: str, name: str, status: Obj) -> None:
    cp.kubectl(
        "patch",
        "imagecopy",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def table(text: str) -> list[list[str]]:
    """Split `kubectl get` output into cells (columns are separated by 2+ spaces)."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


# A status as the operator writes it (docs/reference.md §2).
STATUS: Obj = {
    "observedGeneration": 1,
    "sourceDigest": DIGEST,
    "destinationDigest": DIGEST,
    "destinationImage": f"registry.example.com/prod/web@{DIGEST}",
    "lastSyncTime": "2026-11-27T18:00:00Z",
    "lastCopy": {
        "startTime": "2026-11-27T17:59:59Z",
        "durationSeconds": 0.41,
        "manifests": {"copied": 3, "existing": 0},
        "blobs": {"total": 12, "mounted": 10, "uploaded": 1, "existing": 1},
        "bytes": {
            "total": 1288490188,
            "mounted": 1181116006,
            "uploaded": 5242880,
            "existing": 102131302,
        },
        "bytesSaved": 1283247308,
        "saved": "1.2 GiB",
        "mount": {
            "attempted": 11,
            "refused": 1,
            "reason": "registry answered 202 to 1 of 11 cross-repository mounts",
        },
        "referrers": 2,
        "requests": 17,
    },
    "totals": {"copies": 7, "mountedBlobs": 70, "bytesSaved": 8982731156},
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Copied",
            "message": (
                "12 blobs: 10 mounted, 1 existing, 1 uploaded; 1.2 GiB not transferred; "
                "not mounted: registry answered 202 to 1 of 11 cross-repository mounts"
            ),
            "observedGeneration": 1,
            "lastTransitionTime": "2026-11-27T18:00:00Z",
        },
        {
            "type": "Reconciling",
            "status": "False",
            "reason": "Copied",
            "message": "copy finished",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-11-27T18:00:00Z",
        },
        {
            "type": "Stalled",
            "status": "False",
            "reason": "Copied",
            "message": "copy finished",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-11-27T18:00:00Z",
        },
    ],
}


# --------------------------------------------------------------------------- installation


def test_crd_is_established(control_plane: ControlPlane) -> None:
    crd = json.loads(control_plane.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["icp"]
    assert crd["spec"]["scope"] == "Namespaced"
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    # the short name resolves through discovery
    resources = control_plane.kubectl("api-resources", "--api-group=imagecopy.dev").stdout
    assert "icp" in resources and "ImageCopy" in resources


def test_crd_manifest_is_a_single_structural_document() -> None:
    docs = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert len(docs) == 1
    schema = docs[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # no unknown-field escape hatches: everything the operator writes must be described
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(schema)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(control_plane: ControlPlane, namespace: str, example: Path) -> None:
    control_plane.kubectl("apply", "--validate=strict", "-n", namespace, "-f", str(example))
    for doc in yaml.safe_load_all(example.read_text()):
        kind, name = doc["kind"], doc["metadata"]["name"]
        back = json.loads(
            control_plane.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
        )
        if kind == "ImageCopy":
            # what the user wrote is stored unchanged (defaults only add fields)
            for key, value in doc["spec"].items():
                if isinstance(value, dict):
                    assert back["spec"][key] | value == back["spec"][key], key
                else:
                    assert back["spec"][key] == value, key


def test_examples_cover_the_documented_cases() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "imagecopy.yaml",
        "mirror-dockerhub.yaml",
        "multiarch-subset-referrers.yaml",
        "moving-tag-interval.yaml",
        "immutable-promotion.yaml",
    } <= names


# --------------------------------------------------------------------------- admission


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    """A mutation that sets spec.<path> (dotted) to value."""

    def mutate(obj: Obj) -> None:
        *parents, leaf = path.split(".")
        node = obj["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _delete(path: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        *parents, leaf = path.split(".")
        node = obj["spec"]
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


INVALID = [
    pytest.param(_delete("source"), ["spec.source: Required value"], id="missing-source"),
    pytest.param(
        _delete("destination.image"),
        ["spec.destination.image: Required value"],
        id="missing-destination-image",
    ),
    pytest.param(
        _set("destination.image", "registry.example.com/dev/web:1.4.2"),
        ["spec.destination.image must differ from spec.source.image"],
        id="same-source-and-destination",
    ),
    pytest.param(
        _set("tagPolicy", "Always"),
        ['spec.tagPolicy: Unsupported value: "Always"', '"Overwrite"', '"Immutable"'],
        id="bad-tag-policy",
    ),
    pytest.param(
        _set("platforms", ["linux/amd64", "linux"]),
        ["spec.platforms[1]", "should match"],
        id="bad-platform",
    ),
    pytest.param(
        _set("platforms", ["linux/amd64", "linux/amd64"]),
        ["spec.platforms[1]: Duplicate value"],
        id="duplicate-platform",
    ),
    pytest.param(
        _set("interval", "10 minutes"), ["spec.interval", "should match"], id="bad-interval"
    ),
    pytest.param(
        _set("interval", "0s"), ["spec.interval", "must be at least 1s"], id="zero-interval"
    ),
    pytest.param(
        _set("source.secretRef", {"name": "dev-pull", "namespace": "other"}),
        ['unknown field "spec.source.secretRef.namespace"'],
        id="cross-namespace-secret-ref",
    ),
    pytest.param(
        _set("destination.secretRef", {}),
        ["spec.destination.secretRef.name: Required value"],
        id="secret-ref-without-name",
    ),
    pytest.param(
        _set("destination.secretRef", {"name": "Prod_Push"}),
        ["spec.destination.secretRef.name", "should match"],
        id="bad-secret-name",
    ),
    pytest.param(
        _set("source.image", ""),
        ["spec.source.image", "should be at least 1 chars long"],
        id="empty-image",
    ),
    pytest.param(
        _set("source.image", "registry.example.com/dev/web app:1.4.2"),
        ["spec.source.image", "must be an image reference"],
        id="image-with-space",
    ),
    pytest.param(
        _set("source.image", "registry.example.com/dev/web"),
        ["spec.source.image", "must be an image reference"],
        id="source-without-tag-or-digest",
    ),
    pytest.param(
        _set("source.image", "registry.example.com/dev/web@sha256:abc123"),
        ["spec.source.image", "must be an image reference"],
        id="short-digest",
    ),
    pytest.param(
        _set("source.image", "registry.example.com/Dev/Web:1.4.2"),
        ["spec.source.image", "must be an image reference"],
        id="uppercase-repository",
    ),
    pytest.param(
        _set("destination.image", f"registry.example.com/prod/web:1.4.2@{DIGEST}"),
        ["spec.destination.image", "not both a tag and a digest"],
        id="destination-tag-and-digest",
    ),
    pytest.param(
        _set("destination.additionalTags", ["stable", "-latest"]),
        ["spec.destination.additionalTags[1]", "should match"],
        id="bad-additional-tag",
    ),
    pytest.param(
        _set("destination.additionalTags", ["x" * 129]),
        ["spec.destination.additionalTags[0]", "should match"],
        id="additional-tag-too-long",
    ),
    pytest.param(
        _set("mount.fromRepositories", ["registry.example.com:5000/prod/base"]),
        ["spec.mount.fromRepositories[0]", "should match"],
        id="mount-source-with-host",
    ),
    pytest.param(
        _set("mount.enabled", "yes"),
        ["spec.mount.enabled", "must be of type boolean"],
        id="mount-enabled-not-boolean",
    ),
    pytest.param(
        _set("sourceImage", "registry.example.com/dev/web:1"),
        ['unknown field "spec.sourceImage"'],
        id="unknown-spec-field",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), INVALID)
def test_invalid_object_is_rejected(
    control_plane: ControlPlane,
    namespace: str,
    mutate: Callable[[Obj], None],
    expected: list[str],
) -> None:
    obj = imagecopy("bad")
    mutate(obj)
    with pytest.raises(KubectlError) as info:
        create(control_plane, namespace, obj)
    message = info.value.stderr
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert (
        control_plane.kubectl("get", "imagecopy", "bad", "-n", namespace, check=False).returncode
        != 0
    ), "a rejected object must not exist"


def test_unknown_field_is_pruned_without_strict_validation(
    control_plane: ControlPlane, namespace: str
) -> None:
    """Without --validate=strict the server warns and drops unknown fields (never stores them)."""
    obj = imagecopy()
    obj["spec"]["source"]["secretRef"] = {"name": "dev-pull", "namespace": "other"}
    result = control_plane.kubectl(
        "create", "--validate=false", "-n", namespace, "-f", "-", input=json.dumps(obj)
    )
    assert result.returncode == 0
    assert get(control_plane, namespace, "web")["spec"]["source"]["secretRef"] == {
        "name": "dev-pull"
    }


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/dev/web:1.4.2",
        f"registry.example.com/dev/web@{DIGEST}",
        f"registry.example.com/dev/web:1.4.2@{DIGEST}",
        "localhost:5000/team/app:v1",
        "127.0.0.1:5000/app:latest",
        "nginx:1.27",
        "docker.io/library/nginx:1.27-alpine",
        "[::1]:5000/a/b_c/d-e.f:TAG_1.x",
    ],
)
def test_valid_source_references_are_accepted(
    control_plane: ControlPlane, namespace: str, image: str
) -> None:
    obj = imagecopy(source={"image": image})
    create(control_plane, namespace, obj, "--dry-run=server")


@pytest.mark.parametrize(
    "interval", ["30s", "10m", "1h30m", "1.5h", "500ms1s", "2h45m30.5s", "1000000us", "1500000µs"]
)
def test_valid_intervals_are_accepted(
    control_plane: ControlPlane, namespace: str, interval: str
) -> None:
    create(control_plane, namespace, imagecopy(interval=interval), "--dry-run=server")


def test_sub_second_interval_is_rejected(control_plane: ControlPlane, namespace: str) -> None:
    with pytest.raises(KubectlError, match="must be at least 1s"):
        create(control_plane, namespace, imagecopy(interval="999ms"), "--dry-run=server")


def test_digest_only_destination_is_accepted(control_plane: ControlPlane, namespace: str) -> None:
    obj = imagecopy(
        source={"image": f"registry.example.com/dev/web@{DIGEST}"},
        destination={"image": f"registry.example.com/prod/web@{DIGEST}"},
    )
    create(control_plane, namespace, obj, "--dry-run=server")


# --------------------------------------------------------------------------- defaults


def test_defaults_are_applied(control_plane: ControlPlane, namespace: str) -> None:
    create(control_plane, namespace, imagecopy())
    back = get(control_plane, namespace, "web")
    spec = back["spec"]
    assert spec["tagPolicy"] == "Overwrite"
    assert spec["mount"] == {"enabled": True}
    assert spec["referrers"] is False
    assert spec["suspend"] is False
    assert "interval" not in spec and "platforms" not in spec
    # a new object reads as "in progress" to kstatus
    assert back["status"] == {"observedGeneration": -1}
    assert back["metadata"]["generation"] == 1


def test_defaults_do_not_override_explicit_values(
    control_plane: ControlPlane, namespace: str
) -> None:
    obj = imagecopy(
        mount={"fromRepositories": ["prod/base"]},
        tagPolicy="Immutable",
        referrers=True,
        suspend=True,
    )
    create(control_plane, namespace, obj)
    spec = get(control_plane, namespace, "web")["spec"]
    assert spec["mount"] == {"enabled": True, "fromRepositories": ["prod/base"]}
    assert (spec["tagPolicy"], spec["referrers"], spec["suspend"]) == ("Immutable", True, True)

    obj = imagecopy("no-mount", mount={"enabled": False})
    create(control_plane, namespace, obj)
    assert get(control_plane, namespace, "no-mount")["spec"]["mount"] == {"enabled": False}


# --------------------------------------------------------------------------- status


def test_status_subresource_round_trips_and_keeps_generation(
    control_plane: ControlPlane, namespace: str
) -> None:
    create(control_plane, namespace, imagecopy())
    patch_status(control_plane, namespace, "web", STATUS)
    back = get(control_plane, namespace, "web")
    assert back["metadata"]["generation"] == 1, "a status write must not bump the generation"
    assert back["status"] == STATUS, "status fields were pruned or changed"

    # a spec change bumps the generation; status written through the main resource is ignored
    spec_patch = {
        "spec": {"tagPolicy": "IfNotPresent"},
        "status": {"observedGeneration": 99, "sourceDigest": "sha256:" + "cd" * 32},
    }
    control_plane.kubectl(
        "patch", "imagecopy", "web", "-n", namespace, "--type=merge", "-p", json.dumps(spec_patch)
    )
    back = get(control_plane, namespace, "web")
    assert back["metadata"]["generation"] == 2
    assert back["status"]["observedGeneration"] == 1
    assert back["status"]["sourceDigest"] == DIGEST


def test_status_through_the_python_client(
    control_plane: ControlPlane, namespace: str, kube: Any
) -> None:
    """The way the operator writes status: a merge patch on /status via the kubernetes client."""
    from kubernetes import client

    api: Any = client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(
        "imagecopy.dev", "v1alpha1", namespace, "imagecopies", imagecopy("py")
    )
    status = copy.deepcopy(STATUS)
    status["conditions"] = status["conditions"][:1]
    api.patch_namespaced_custom_object_status(
        "imagecopy.dev", "v1alpha1", namespace, "imagecopies", "py", {"status": status}
    )
    obj = api.get_namespaced_custom_object(
        "imagecopy.dev", "v1alpha1", namespace, "imagecopies", "py"
    )
    assert obj["status"] == status
    assert obj["metadata"]["generation"] == 1

    # conditions are a map keyed by type: a second Ready entry is refused
    twice = {"status": {"conditions": [status["conditions"][0], status["conditions"][0]]}}
    with pytest.raises(client.ApiException) as info:
        api.patch_namespaced_custom_object_status(
            "imagecopy.dev", "v1alpha1", namespace, "imagecopies", "py", twice
        )
    assert info.value.status == 422
    assert "Duplicate value" in str(info.value.body)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"status": "Maybe"}, 'Unsupported value: "Maybe"'),
        ({"reason": "not a reason"}, "status.conditions[0].reason"),
        ({"lastTransitionTime": "yesterday"}, "status.conditions[0].lastTransitionTime"),
    ],
    ids=["status-enum", "reason-pattern", "time-format"],
)
def test_malformed_condition_is_rejected(
    control_plane: ControlPlane, namespace: str, condition: Obj, expected: str
) -> None:
    create(control_plane, namespace, imagecopy())
    bad = {**STATUS["conditions"][0], **condition}
    with pytest.raises(KubectlError) as info:
        patch_status(control_plane, namespace, "web", {"conditions": [bad]})
    assert expected in info.value.stderr


# --------------------------------------------------------------------------- printer columns


def test_printer_columns(control_plane: ControlPlane, namespace: str) -> None:
    create(control_plane, namespace, imagecopy())
    rows = table(control_plane.kubectl("get", "icp", "-n", namespace).stdout)
    assert rows[0] == ["NAME", "SOURCE", "DESTINATION", "READY", "MOUNTED", "SAVED", "AGE"]
    # before the operator wrote anything: READY, MOUNTED and SAVED are empty
    assert rows[1][:3] == [
        "web",
        "registry.example.com/dev/web:1.4.2",
        "registry.example.com/prod/web:1.4.2",
    ]

    patch_status(control_plane, namespace, "web", STATUS)
    rows = table(control_plane.kubectl("get", "icp", "-n", namespace).stdout)
    assert dict(zip(rows[0], rows[1], strict=True)) | {"AGE": ""} == {
        "NAME": "web",
        "SOURCE": "registry.example.com/dev/web:1.4.2",
        "DESTINATION": "registry.example.com/prod/web:1.4.2",
        "READY": "True",
        "MOUNTED": "10",
        "SAVED": "1.2 GiB",
        "AGE": "",
    }

    rows = table(control_plane.kubectl("get", "imagecopies", "-n", namespace, "-o", "wide").stdout)
    assert rows[0] == [
        "NAME",
        "SOURCE",
        "DESTINATION",
        "READY",
        "MOUNTED",
        "SAVED",
        "AGE",
        "DIGEST",
        "STATUS",
    ]
    wide = dict(zip(rows[0], rows[1], strict=True))
    assert wide["DIGEST"] == DIGEST
    assert wide["STATUS"] == STATUS["conditions"][0]["message"]


# --------------------------------------------------------------------------- the harness


def test_service_account_kubeconfig_is_subject_to_rbac(
    control_plane: ControlPlane, namespace: str
) -> None:
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")
    denied = control_plane.kubectl(
        "get", "imagecopies", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr

    control_plane.kubectl(
        "create", "role", "read-icp", "-n", namespace, "--verb=get,list,watch",
        "--resource=imagecopies.imagecopy.dev",
    )  # fmt: skip
    control_plane.kubectl(
        "create", "rolebinding", "read-icp", "-n", namespace, "--role=read-icp",
        f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        allowed = control_plane.kubectl(
            "get", "imagecopies", "-n", namespace, kubeconfig=kubeconfig, check=False
        )
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr
    assert control_plane.kubectl(
        "auth", "can-i", "create", "imagecopies", "-n", namespace,
        kubeconfig=kubeconfig, check=False,
    ).stdout.strip() == "no"  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_control_plane_dies_with_a_killed_owner(control_plane: ControlPlane) -> None:
    """etcd and kube-apiserver must not outlive a test process that is SIGKILLed."""
    script = textwrap.dedent(
        """
        import sys, time
        from e2e.controlplane import ControlPlane
        cp = ControlPlane().start()
        print(" ".join(map(str, cp.pids())), cp.workdir, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert len(line) == 3, f"child did not start a control plane: {line}"
        pids = [int(p) for p in line[:2]]
        assert all(_alive(p) for p in pids)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "control-plane processes survived their owner"
        # the next control plane to start removes the work directory the dead owner left behind
        reap_stale_workdirs()
        assert not Path(line[2]).exists(), "stale work directory was not reaped"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.usefixtures("control_plane")  # skips like the rest when the binaries are absent
def test_stop_terminates_processes_and_removes_workdir() -> None:
    """A second, independent control plane: stop() leaves no process and no directory behind."""
    cp = ControlPlane().start()
    pids, workdir = cp.pids(), cp.workdir
    assert len(pids) == 2 and workdir.is_dir()
    assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    cp.stop()
    assert not any(_alive(p) for p in pids)
    assert not workdir.exists()
