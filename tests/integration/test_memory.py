"""Blobs are streamed: the CLI's peak memory does not grow with blob size."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testkit import images
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from tests.integration.copyhelpers import repo

pytestmark = pytest.mark.integration

MiB = 1024 * 1024

# Runs the real CLI in a fresh interpreter and prints its own peak RSS (KiB) on the last line.
# VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec, so it would report the test
# process's own peak (it just streamed the big blob into the registry).
_MEASURE = """
import sys
from imagecopy.cli import main
rc = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(hwm.split()[1], flush=True)
sys.exit(rc)
"""


def _copy_peak_rss(src: str, dst: str, *hosts: str) -> int:
    args = ["copy", src, dst, "--quiet"]
    for host in hosts:
        args += ["--plain-http", host]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1]) * 1024


def test_peak_rss_does_not_grow_with_blob_size(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    small = images.push_big_image(registry_v2, repo("dev"), "small", 16 * MiB, seed=3)
    big = images.push_big_image(registry_v2, repo("dev"), "big", 512 * MiB, seed=4)
    hosts = (registry_v2.host, registry_v3.host)

    small_dst = f"{registry_v3.host}/{repo('mirror')}:small"
    big_dst = f"{registry_v3.host}/{repo('mirror')}:big"
    rss_small = _copy_peak_rss(small.ref, small_dst, *hosts)
    rss_big = _copy_peak_rss(big.ref, big_dst, *hosts)

    assert crane_digest(registry_v3, big_dst) == big.digest
    # 32x the data, (almost) the same memory: a few chunks in flight, never the blob.
    assert rss_big - rss_small < 48 * MiB, (rss_small, rss_big)
    assert rss_big < 150 * MiB, rss_big
