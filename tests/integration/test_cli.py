"""The `imagecopy` command as users run it: a real process against real registries."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import images
from testkit.peers import crane_digest, skopeo_digest
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from tests.integration.copyhelpers import docker_config, repo

pytestmark = pytest.mark.integration

IMAGECOPY = [sys.executable, "-m", "imagecopy"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), **(env or {})}
    return subprocess.run(
        [*IMAGECOPY, *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_json_report_and_peer_readback(registry_v2: RegistryServer) -> None:
    reg = registry_v2
    src = images.push_image(reg, repo("dev"), "1.4", layers=3)
    dst = f"{reg.host}/{repo('prod')}:1.4"
    proc = run("copy", src.ref, dst, "--plain-http", reg.host, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blobs"] == {"total": 4, "mounted": 4, "uploaded": 0, "existing": 0}
    assert out["bytesSaved"] == out["bytes"]["total"] == src.total_blob_bytes
    assert out["sourceDigest"] == out["destinationDigest"] == src.digest
    assert out["requests"] == 4 + 3
    assert out["mount"] == {"attempted": 4, "refused": 0, "reason": None}
    assert out["dryRun"] is False
    assert skopeo_digest(reg, dst) == src.digest

    again = run("copy", src.ref, dst, "--plain-http", reg.host, "--json")
    assert json.loads(again.stdout)["requests"] <= 2


def test_json_says_why_go_containerregistry_mounted_nothing(
    registry_v2: RegistryServer, registry_ggcr: RegistryServer
) -> None:
    why = "registry answered 202 to cross-repository mounts"
    src = images.push_image(registry_ggcr, repo("dev"), "1", layers=2)
    dst = f"{registry_ggcr.host}/{repo('prod')}:1"
    proc = run("copy", src.ref, dst, "--plain-http", registry_ggcr.host, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blobs"] == {"total": 3, "mounted": 0, "uploaded": 0, "existing": 3}
    # One probe answered 202 for a blob the source holds: the other blobs were looked for
    # (HEAD) instead of asked for a mount that would open a session for nothing.
    assert out["mount"] == {"attempted": 1, "refused": 1, "reason": why}

    other = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    mirror = f"{registry_ggcr.host}/{repo('mirror')}:1"
    proc = run(
        "copy",
        other.ref,
        mirror,
        "--plain-http",
        registry_v2.host,
        "--plain-http",
        registry_ggcr.host,
        "--mount-from",
        "no/where",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"; not mounted: {why}")
    assert crane_digest(registry_ggcr, mirror) == other.digest


def test_plain_lines_and_quiet(registry_v2: RegistryServer) -> None:
    reg = registry_v2
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    proc = run("copy", src.ref, f"{reg.host}/{repo('prod')}:1", "--plain-http", reg.host)
    assert proc.returncode == 0
    assert proc.stderr.count("mounted ") == 3
    assert "3 blobs: 3 mounted, 0 existing, 0 uploaded" in proc.stdout
    quiet = run("copy", src.ref, f"{reg.host}/{repo('prod')}:1", "--plain-http", reg.host, "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_progress_bar_on_a_tty(registry_v2: RegistryServer, registry_v3: RegistryServer) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=2, layer_size=100_000)
    dst = f"{registry_v3.host}/{repo('mirror')}:1"
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout/stderr are the pty
        os.environ["PYTHONPATH"] = str(REPO_ROOT / "operator")
        os.environ["TERM"] = "xterm"
        os.execv(
            sys.executable,
            [
                *IMAGECOPY,
                "copy",
                src.ref,
                dst,
                "--plain-http",
                registry_v2.host,
                "--plain-http",
                registry_v3.host,
            ],
        )
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "uploaded" in text and "━" in text  # rich's bar
    assert crane_digest(registry_v3, dst) == src.digest


def test_failures_exit_1_with_one_readable_line(registry_v2: RegistryServer) -> None:
    reg = registry_v2
    missing = run(
        "copy",
        f"{reg.host}/{repo('none')}:1",
        f"{reg.host}/{repo('x')}:1",
        "--plain-http",
        reg.host,
    )
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagecopy: source not found: ")

    unreachable = run(
        "copy", "127.0.0.1:9/a/b:1", "127.0.0.1:9/a/c:1", "--plain-http", "127.0.0.1:9"
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("imagecopy: registry unreachable: ")


def test_unauthorized_names_the_reason_and_never_the_password(
    registry_v2_basic: RegistryServer, tmp_path: Path
) -> None:
    reg = registry_v2_basic
    src = images.push_image(reg, repo("dev"), "1", layers=1)
    cfg = tmp_path / "bad"
    cfg.mkdir()
    (cfg / "config.json").write_text(
        json.dumps({"auths": {reg.host: {"username": reg.username, "password": "wrong-pw-123"}}})
    )
    proc = run(
        "copy",
        src.ref,
        f"{reg.host}/{repo('x')}:1",
        "--plain-http",
        reg.host,
        "--docker-config",
        str(cfg / "config.json"),
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("imagecopy: unauthorized: ")
    assert "wrong-pw-123" not in proc.stderr and reg.password not in proc.stderr

    good = docker_config(tmp_path, reg)
    ok = run(
        "copy",
        src.ref,
        f"{reg.host}/{repo('x')}:1",
        "--plain-http",
        reg.host,
        "--docker-config",
        str(good),
        "--json",
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["copy", "Bad Ref", "localhost:5000/a:1"], "invalid reference"),
        (["copy", "localhost:5000/a:1", "localhost:5000/UPPER:1"], "invalid reference"),
        (["copy", "localhost:5000/a:1", "localhost:5000/b:1", "--platform", "linux"], "platform"),
        (
            ["copy", "localhost:5000/a:1", "localhost:5000/b:1", "--tag-policy", "Sometimes"],
            "invalid choice",
        ),
        (["copy", "localhost:5000/a:1", "localhost:5000/a:1"], "same image"),
        (["copy", "localhost:5000/a"], "DESTINATION"),
        (
            ["copy", "localhost:5000/a:1", "localhost:5000/b:1", "--additional-tag", "bad tag"],
            "invalid",
        ),
        (["copy", "localhost:5000/a:1", "localhost:5000/b@sha256:abc"], "digest"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str) -> None:
    proc = (
        run(*args, "--plain-http", "localhost:5000")
        if args[0] == "copy" and len(args) > 2
        else run(*args)
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr


def test_version() -> None:
    proc = run("version")
    assert proc.returncode == 0 and proc.stdout.startswith("imagecopy ")


def test_dry_run_writes_nothing(registry_v2: RegistryServer) -> None:
    reg = registry_v2
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    dst = f"{reg.host}/{repo('prod')}:1"
    mark = reg.mark()
    proc = run("copy", src.ref, dst, "--plain-http", reg.host, "--dry-run", "--json")
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert out["dryRun"] is True and out["blobs"]["mounted"] == 3
    assert all(e.method in ("GET", "HEAD") for e in reg.access_log_since(mark))
    assert images.get_manifest(reg, dst.split("/", 1)[1].split(":")[0], "1").status_code == 404
