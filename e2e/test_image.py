"""The image we ship, built and run: ``make image``'s OCI archive, pushed to a real registry,
promoted with ``imagecopy`` itself, read back by crane and skopeo, and run as the operator —
from the promoted image, with the args and environment ``helm template`` renders for the
Deployment, as uid 10001 — against the real API server until a sample ImageCopy is Ready.

How it runs the image: ``buildah from`` pulls the promoted image from the test registry into a
throwaway vfs storage, and ``buildah run --isolation chroot --network host`` starts the image's
ENTRYPOINT with the Deployment's args (no daemon and no user namespaces are needed; the
operator reaches the loopback API server and registry). The container's /tmp is a host
directory (the chart's emptyDir) holding the kubeconfig. buildah's chroot isolation cannot
mount the root read-only, so the test checks the same property after the run: the operator
(uid 10001) left no file in the container's root filesystem outside /tmp.

The archive: ``$IMAGECOPY_IMAGE_ARCHIVE`` when set (``make e2e-image`` builds it with
``make image`` first), else ``scripts/build-image.sh`` builds it (cached base, about a minute).
Needs root (buildah, chroot) and the tools of ``make tools``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.operator_harness import REPO_ROOT, ImageCopies
from testkit.images import push_image
from testkit.oci_archive import archive_sizes
from testkit.peers import crane_validate, skopeo
from testkit.processes import free_port, new_group_dying_with_parent, stop_process_group
from testkit.registry import RegistryServer
from testkit.tools import find_tool
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "deploy" / "helm" / "imagecopy-operator"
UID = 10001
IMAGECOPY = [sys.executable, "-m", "imagecopy"]
#: ≤ 250 MB uncompressed is the issue's goal; the test fails well before a regression doubles it.
MAX_UNCOMPRESSED = 250_000_000


def _need(name: str) -> str:
    tool = find_tool(name) or shutil.which(name)
    if tool is None:
        message = f"{name} not found (make tools; apt-get install buildah)"
        if os.environ.get("IMAGECOPY_REQUIRE_E2E"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return tool


@pytest.fixture(scope="module")
def image_archive() -> Path:
    if os.geteuid() != 0:
        message = "buildah --isolation chroot needs root here"
        if os.environ.get("IMAGECOPY_REQUIRE_E2E"):
            pytest.fail(message, pytrace=False)  # under make a skip would hide the image test
        pytest.skip(message)
    _need("buildah")
    given = os.environ.get("IMAGECOPY_IMAGE_ARCHIVE")
    if given:
        path = Path(given)
        assert path.is_file(), f"IMAGECOPY_IMAGE_ARCHIVE={given} does not exist"
        return path
    path = REPO_ROOT / "dist" / "imagecopy-image.tar"
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "IMAGE_ARCHIVE": str(path), "PY": sys.executable},
    )
    assert proc.returncode == 0, f"make image failed:\n{proc.stderr[-4000:]}"
    return path


class Buildah:
    """buildah on a storage of its own (vfs: no overlay, no fuse), removed afterwards."""

    def __init__(self, root: Path) -> None:
        self.tool = _need("buildah")
        self.root = root

    def argv(self, *args: str) -> list[str]:
        return [
            self.tool,
            "--root",
            str(self.root),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout.strip()


@pytest.fixture
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    root = tmp_path_factory.mktemp("buildah")
    b = Buildah(root)
    try:
        yield b
    finally:
        subprocess.run(b.argv("rm", "--all"), capture_output=True, timeout=120)
        subprocess.run(b.argv("rmi", "--all", "--force"), capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def render_deployment(tmp_path: Path, values: dict[str, Any]) -> dict[str, Any]:
    helm = _need("helm")
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    out = subprocess.run(
        [
            helm,
            "template",
            "imagecopy",
            str(CHART),
            "-n",
            "imagecopy-system",
            "-f",
            str(values_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment"]
    return dict(deployment)


def container_env(container: dict[str, Any], pod_name: str, namespace: str) -> dict[str, str]:
    """The container's env as the kubelet would set it (fieldRefs resolved for this pod)."""
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for item in container.get("env") or ():
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the operator exited:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), nearest first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(0), [])
        found += children
        todo += children
    return found


def terminate_container(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM the container's own process (the operator, below buildah's chroot runtime), as
    the kubelet does at pod deletion; buildah's exit status is then the operator's."""
    leaves = [
        pid
        for pid in descendants(proc.pid)
        if not descendants(pid) and Path(f"/proc/{pid}/comm").read_text().strip() != "buildah"
    ]
    for pid in leaves:
        os.kill(pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_the_image_is_pushed_promoted_read_back_and_runs_the_operator(
    image_archive: Path,
    buildah: Buildah,
    registry_v2: RegistryServer,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    reg = registry_v2
    sizes = archive_sizes(image_archive)
    print(f"\nimage {image_archive}: {sizes.describe()}")
    assert sizes.uncompressed <= MAX_UNCOMPRESSED, sizes.describe()

    # Pushed to the registry as an OCI layout archive, then promoted by imagecopy itself.
    staging = f"{reg.host}/staging/imagecopy:0.1.0"
    shipped = f"{reg.host}/imagecopy/imagecopy:0.1.0"
    skopeo(reg, "copy", "--quiet", f"oci-archive:{image_archive}", f"docker://{staging}")
    promote = subprocess.run(
        [*IMAGECOPY, "copy", staging, shipped, "--plain-http", reg.host, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
    )
    assert promote.returncode == 0, promote.stderr
    report = json.loads(promote.stdout)
    assert report["blobs"]["uploaded"] == 0, report  # same registry: every layer mounted
    assert report["blobs"]["mounted"] == sizes.layers + 1, report  # layers + config
    crane_validate(reg, shipped)
    inspected = json.loads(skopeo(reg, "inspect", f"docker://{shipped}"))
    assert inspected["Digest"] == sizes.manifest_digest
    assert len(inspected["Layers"]) == sizes.layers

    # The Deployment the chart renders, with free ports (the container shares the host network).
    liveness_port, metrics_port = free_port(), free_port()
    deployment = render_deployment(
        tmp_path,
        {
            "image": {"repository": f"{reg.host}/imagecopy/imagecopy", "tag": "0.1.0"},
            "livenessPort": liveness_port,
            "logFormat": "plain",
            "operator": {
                "metricsPort": metrics_port,
                "plainHttpRegistries": ["127.0.0.1"],
                "allowedRegistries": ["127.0.0.1:*"],
            },
        },
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == shipped
    run_as = container["securityContext"].get("runAsUser") or pod["securityContext"]["runAsUser"]
    assert run_as == UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]

    # Run the promoted image (pulled back from the registry) as that container.
    ctr = buildah("from", "--quiet", "--tls-verify=false", f"docker://{shipped}", timeout=600)
    config = json.loads(buildah("inspect", "--type", "container", ctr))
    entrypoint = config["OCIv1"]["config"]["Entrypoint"]
    assert config["OCIv1"]["config"]["User"] == f"{UID}:{UID}"
    emptydir = tmp_path / "emptydir"
    emptydir.mkdir()
    shutil.copy(control_plane.kubeconfig, emptydir / "kubeconfig")
    os.chown(emptydir, UID, UID)
    os.chown(emptydir / "kubeconfig", UID, UID)
    env = {
        **container_env(container, "imagecopy-0", "imagecopy-system"),
        "KUBECONFIG": "/tmp/kubeconfig",
        # The chart's Stalled retry is minutes; a test that fails should fail fast.
        "IMAGECOPY_STALLED_RETRY": "3s",
    }
    argv = buildah.argv(
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--user",
        f"{run_as}:{run_as}",
        "--volume",
        f"{emptydir}:/tmp:rw",
        *(f"--env={k}={v}" for k, v in env.items()),
        ctr,
        "--",
        *entrypoint,
        *container["args"],
    )
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=new_group_dying_with_parent,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{liveness_port}/healthz", proc, log)
        src = push_image(reg, "dev/web", "1.0", layers=2)
        icp = ImageCopies(control_plane, namespace)
        icp.apply(
            "web",
            {
                "source": {"image": src.ref},
                "destination": {"image": f"{reg.host}/prod/web:1.0"},
            },
        )
        obj = icp.wait_condition("web", timeout=120)
        assert obj["status"]["destinationDigest"] == src.digest, obj["status"]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b'imagecopy_copies_total{result="Copied"} 1.0' in r.read()
        # A graceful stop, as at pod deletion: Kopf finishes and the process exits 0.
        assert terminate_container(proc, timeout=30) == 0, log.read_text()[-3000:]
    finally:
        stop_process_group(proc, timeout=20)
        print(f"operator (from the image) log:\n{log.read_text()[-3000:]}")

    # Nothing written outside the emptyDir: the root filesystem may be read-only.
    mount = Path(buildah("mount", ctr))
    try:
        written = [
            str(p.relative_to(mount))
            for p in mount.rglob("*")
            if not p.is_symlink() and p.lstat().st_uid == UID
        ]
        # No compiler, no package manager or pip, no package or pip cache in the image.
        present = [
            rel
            for rel in (
                "usr/bin/gcc",
                "usr/bin/cc",
                "usr/bin/apt-get",
                "usr/bin/pip3",
                "opt/imagecopy/bin/pip",
                "root/.cache",
                "tmp/.cache",
            )
            if (mount / rel).exists()
        ]
        caches = [
            str(p.relative_to(mount))
            for d in ("var/cache/apt", "var/lib/apt/lists")
            for p in (mount / d).rglob("*")
            if p.is_file() and p.stat().st_size > 0  # (an empty lock file is no cache)
        ]
        site = next((mount / "opt/imagecopy/lib").glob("python3.*/site-packages"))
        dists = sorted(p.name.split("-")[0] for p in site.glob("*.dist-info"))
    finally:
        buildah("umount", ctr)
    assert written == [], written
    assert present == [] and caches == [], (present, caches)
    assert "imagecopy" in dists and "kopf" in dists
    assert not {"pip", "setuptools", "pytest", "mypy", "ruff", "hypothesis"} & set(dists), dists
