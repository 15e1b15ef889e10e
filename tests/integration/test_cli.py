"""The `imagecopy` command as users run it: a real process against real registries."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit import images
from testkit.netproxy import NetProxy
from testkit.peers import crane_digest, skopeo_digest
from testkit.profiles import ProfileFront
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from tests.integration.copyhelpers import docker_config, repo
from tests.integration.test_round_trips import DELAY_MS, critical_chain

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
    # No probe in the CLI: the first wave asks every blob it holds in flight; the first 202
    # (for a blob the source holds) makes the blobs not yet asked look first (HEAD).
    mount = out["mount"]
    assert 1 <= mount["attempted"] == mount["refused"] <= 3 and mount["reason"] == why

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


def test_a_no_op_rerun_gets_the_source_unless_told_to_check_first(
    registry_v2: RegistryServer,
) -> None:
    """By default the source manifest is fetched while the destination is checked (no pull
    saved, a round trip saved); --check-first keeps a usually-no-op cron run to HEADs."""
    reg = registry_v2
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    dst_repo = repo("prod")
    dst = f"{reg.host}/{dst_repo}:1"
    assert run("copy", src.ref, dst, "--plain-http", reg.host, "--quiet").returncode == 0

    mark = reg.mark()
    again = run("copy", src.ref, dst, "--plain-http", reg.host, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outcome"] == "UpToDate"
    log = reg.access_log_since(mark)
    assert sorted((e.method, e.repo) for e in log) == [("GET", src.repo), ("HEAD", dst_repo)]

    mark = reg.mark()
    checked = run("copy", src.ref, dst, "--plain-http", reg.host, "--json", "--check-first")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["outcome"] == "UpToDate"
    log = reg.access_log_since(mark)
    assert [(e.method, e.repo) for e in log] == [("HEAD", dst_repo), ("HEAD", src.repo)]


def test_same_registry_copy_sends_its_mounts_in_one_wave(
    registry_v2: RegistryServer, netproxy: Callable[..., NetProxy]
) -> None:
    """One copy per process: no mount probe. HEAD destination tag with GET manifest → 21
    mounts at once → PUT manifest: three round trips and 24 requests, as the engine's copies
    after the first of a period (its first takes four: tests/integration/test_round_trips.py)."""
    src = images.push_image(registry_v2, repo("dev"), "v1", layers=20, layer_size=1024)
    proxy = netproxy(registry_v2.host, delay_ms=DELAY_MS)
    host = proxy.address
    dst = f"{host}/{repo('prod')}:v1"
    proc = run("copy", f"{host}/{src.repo}:v1", dst, "--plain-http", host, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blobs"] == {"total": 21, "mounted": 21, "uploaded": 0, "existing": 0}
    log = proxy.stats.log
    assert len(log) == out["requests"] == 21 + 3
    assert critical_chain(log) == 3, [(r.method, r.path, r.started) for r in log]


def test_a_registry_refusing_mounts_costs_at_most_one_refused_mount_per_blob(
    registry_v3: RegistryServer,
) -> None:
    """The price of no probe: a registry that does not mount (zot before 2.1: 405) is asked
    once for each blob of the first wave (never twice for one), all at once; every blob is
    then uploaded and the copy says why none was mounted."""
    with ProfileFront("zot-old", registry_v3) as front:
        src = images.push_image(front, repo("dev"), "1", layers=4)
        dst = f"{front.host}/{repo('prod')}:1"
        mark = front.mark()
        proc = run("copy", src.ref, dst, "--plain-http", front.host, "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        sent = [e for e in front.access_log_since(mark) if e.is_mount]
        assert out["blobs"] == {"total": 5, "mounted": 0, "uploaded": 5, "existing": 0}
        assert 1 <= len(sent) <= 5 and {e.status for e in sent} == {405}
        assert len({e.q("mount") for e in sent}) == len(sent)  # one per blob at most
        assert out["mount"]["attempted"] == out["mount"]["refused"] == len(sent)
        assert "405" in out["mount"]["reason"]
        assert crane_digest(front, dst) == src.digest
