"""A copy that fails, or is stopped, leaves no upload session open in the destination registry.

Real registries; the destination (distribution v3) sits behind the fault proxy
(``testkit/netproxy.py``), whose bandwidth cap keeps the big uploads streaming when the
failure (or the signal) comes. Open sessions are counted where distribution keeps them: one
directory per session under ``<root>/docker/registry/v2/repositories/<repo>/_uploads/``.

The destination is v3 on purpose: a session that took part of a body has moved past the
offset in its ``Location``, and only v3 tells where it is now (the status ``GET``); 2.8.2
answers both the ``DELETE`` and the ``GET`` 416 and keeps such a session until its upload
purging (docs/reference.md §4 "Uploads").
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagecopy.copy import CopyOptions
from imagecopy.oci.errors import DigestMismatch, RegistryUnreachable
from imagecopy.oci.pool import TransportSettings
from imagecopy.oci.retry import Backoff, RetryPolicy
from testkit import images
from testkit.netproxy import NetProxy
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from tests.integration.copyhelpers import copy, repo

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., NetProxy]

BIG = 24 * 1024 * 1024
#: Bytes per second through the proxy: three big layers take seconds, a small one a moment.
SLOW = 16_000_000


def open_sessions(registry: RegistryServer, repository: str) -> list[str]:
    """The upload sessions ``registry`` holds open in ``repository``.

    A session is open while its ``startedat`` file exists: distribution resumes a session
    from it, and answers 404 (``BLOB_UPLOAD_UNKNOWN``) without it. A cancelled session
    leaves an empty ``hashstates/`` behind (the registry's deferred close of the DELETE
    writes it after the cancel), which holds no data and names no session.
    """
    uploads = registry.root_dir / "docker/registry/v2/repositories" / repository / "_uploads"
    if not uploads.is_dir():
        return []
    return sorted(p.name for p in uploads.iterdir() if (p / "startedat").exists())


def settings(proxy: NetProxy, source: RegistryServer) -> TransportSettings:
    return TransportSettings(
        plain_http=frozenset({proxy.address, source.host}),
        retry=RetryPolicy(attempts=2, backoff=Backoff(base=0.05, cap=0.1)),
    )


def image_with_a_small_layer(source: RegistryServer) -> tuple[images.PushedImage, str]:
    """Three big layers and a small one (returned), pushed to ``source``."""
    small = images.make_layer(1024, random.getrandbits(63))
    image = images.push_image(
        source, repo("dev"), "1", layers=3, layer_size=BIG, extra_layers=[small]
    )
    return image, small.digest


async def test_a_corrupt_blob_fails_the_copy_and_every_session_is_cancelled(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    """Before: the big uploads cancelled by the task group left their sessions open."""
    proxy = netproxy(registry_v3.host, bandwidth_bps=SLOW)
    image, small = image_with_a_small_layer(registry_v2)
    registry_v2.corrupt_blob(small)
    dst_repo = repo("mirror")

    with pytest.raises(DigestMismatch):
        await copy(
            image.ref,
            f"{proxy.address}/{dst_repo}:1",
            registry_v2,
            settings=settings(proxy, registry_v2),
        )

    # Failed at once: the big uploads were cut short, not waited for.
    assert proxy.stats.bytes_up < 3 * BIG
    # Every blob opened a session (3 big layers, the config, the small layer) ...
    assert proxy.stats.count(method="POST", path="/blobs/uploads/") == 5
    # ... and none is left open.
    assert open_sessions(registry_v3, dst_repo) == []
    assert proxy.stats.count(method="DELETE", path="/blobs/uploads/") >= 4


async def test_an_upload_reset_while_others_stream_leaves_no_session_open(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    proxy = netproxy(registry_v3.host, bandwidth_bps=SLOW)
    image, small = image_with_a_small_layer(registry_v2)
    proxy.add_fault(method="PUT", query=small.split(":")[1], action="reset", times=None)
    dst_repo = repo("mirror")

    with pytest.raises(RegistryUnreachable) as caught:
        await copy(
            image.ref,
            f"{proxy.address}/{dst_repo}:1",
            registry_v2,
            settings=settings(proxy, registry_v2),
            options=CopyOptions(blob_attempts=2),
        )

    assert caught.value.operation == "upload blob"
    # The reset blob started over once from a fresh session, then the copy failed.
    assert proxy.stats.count(method="PUT", query=small.split(":")[1]) == 2
    assert open_sessions(registry_v3, dst_repo) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_cli_stopped_mid_copy_cancels_its_sessions(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    """Before: SIGTERM killed the process with every session open; SIGINT unwound the tasks
    without cancelling theirs."""
    proxy = netproxy(registry_v3.host, bandwidth_bps=SLOW // 4)
    image = images.push_image(registry_v2, repo("dev"), "1", layers=3, layer_size=BIG)
    dst_repo = repo("mirror")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    command = [
        *(sys.executable, "-m", "imagecopy", "copy", image.ref, f"{proxy.address}/{dst_repo}:1"),
        *("--plain-http", proxy.address, "--plain-http", registry_v2.host, "--no-mount"),
        *("--docker-config", str(tmp_path / "none.json")),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while len(open_sessions(registry_v3, dst_repo)) < 3:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the uploads never started"
            time.sleep(0.05)
        process.send_signal(signum)
        _out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 128 + signum, err
    assert err.splitlines()[-1] == "imagecopy: interrupted"
    assert "Traceback" not in err
    assert open_sessions(registry_v3, dst_repo) == []
