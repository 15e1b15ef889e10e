"""testkit/netproxy.py in front of a real registry: counts, delays, faults, Location rewriting."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from testkit.images import (
    OCI_MANIFEST,
    append_query,
    make_layer,
    push_blob,
    push_image,
    push_index,
)
from testkit.netproxy import NetProxy
from testkit.peers import crane
from testkit.processes import free_port
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from tests.support.fixtures import UniqueRepo

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., NetProxy]


def test_counts_and_delays_persistent_connection(
    registry_v2: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    img = push_image(registry_v2, unique_repo(), "v1")
    proxy = netproxy(registry_v2.host, delay_ms=25)
    mark = registry_v2.mark()
    with httpx.Client(base_url=proxy.url) as c:
        for _ in range(4):
            r = c.get(f"/v2/{img.repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == img.manifest
    stats = proxy.stats
    assert stats.requests == 4 and stats.connections == 1 and stats.upstream_connections == 1
    assert [rec.status for rec in stats.log] == [200] * 4
    assert all(rec.resp_body_bytes == len(img.manifest) for rec in stats.log)
    assert stats.bytes_down == sum(rec.resp_head_bytes + rec.resp_body_bytes for rec in stats.log)
    assert stats.bytes_up == sum(rec.req_head_bytes for rec in stats.log)
    # each exchange paid the delay twice (a lower bound cannot flake)
    assert all(rec.duration_ms >= 2 * 25 for rec in stats.log)
    assert len([e for e in registry_v2.access_log_since(mark) if e.repo == img.repo]) == 4


def test_streams_chunked_and_large_bodies(
    registry_v3: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    repo = unique_repo()
    proxy = netproxy(registry_v3.host, bandwidth_bps=200 * 1024 * 1024)
    payload = os.urandom(300_000)

    def gen() -> Iterator[bytes]:
        for i in range(0, len(payload), 70_000):
            yield payload[i : i + 70_000]

    with httpx.Client(base_url=proxy.url) as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        r = c.patch(r.headers["Location"], content=gen())  # chunked
        assert r.status_code == 202 and r.headers["Range"] == f"0-{len(payload) - 1}"
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        assert c.put(append_query(r.headers["Location"], digest=digest)).status_code == 201
        r = c.get(f"/v2/{repo}/blobs/{digest}")
        assert r.content == payload
    log = proxy.stats.log
    assert log[1].method == "PATCH" and log[1].req_body_bytes > len(payload)  # chunk framing
    assert log[3].resp_body_bytes == len(payload)


def test_injects_429_with_retry_after(
    registry_v2: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    img = push_image(registry_v2, unique_repo(), "v1")
    proxy = netproxy(registry_v2.host)
    date = email.utils.formatdate(time.time() + 2, usegmt=True)
    f1 = proxy.add_fault(path=r"/manifests/", status=429, headers={"Retry-After": "1"}, times=1)
    f2 = proxy.add_fault(path=r"/manifests/", status=429, headers={"Retry-After": date}, times=1)
    mark = registry_v2.mark()
    with httpx.Client(base_url=proxy.url) as c:
        url = f"/v2/{img.repo}/manifests/v1"
        r1, r2, r3 = (c.get(url, headers={"Accept": OCI_MANIFEST}) for _ in range(3))
    assert (r1.status_code, r1.headers["Retry-After"]) == (429, "1")
    assert (r2.status_code, r2.headers["Retry-After"]) == (429, date)
    assert r3.status_code == 200
    assert f1.hits == f2.hits == 1 and proxy.stats.faults_injected == 2
    # the faulted requests never reached the registry
    assert len([e for e in registry_v2.access_log_since(mark) if e.repo == img.repo]) == 1


def test_refuses_mounts_with_405(
    registry_v3: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    src, dst = unique_repo("src"), unique_repo("dst")
    layer = make_layer(800)
    push_blob(registry_v3, src, layer)
    proxy = netproxy(registry_v3.host)
    proxy.add_fault(method="POST", query="mount=", status=405, times=None)
    mark = registry_v3.mark()
    with httpx.Client(base_url=proxy.url) as c:
        for _ in range(2):
            r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": layer.digest, "from": src})
            assert r.status_code == 405
        assert c.post(f"/v2/{dst}/blobs/uploads/").status_code == 202  # plain upload passes
    assert [e.is_mount for e in registry_v3.access_log_since(mark) if e.repo == dst] == [False]
    assert proxy.stats.count(method="POST", query="mount=") == 2


def test_reset_truncate_stall(
    registry_v2: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    repo = unique_repo()
    layer = make_layer(50_000)
    push_blob(registry_v2, repo, layer)
    proxy = netproxy(registry_v2.host)
    url = f"/v2/{repo}/blobs/{layer.digest}"
    proxy.add_fault(action="reset", path="/blobs/", times=1)
    proxy.add_fault(action="truncate", path="/blobs/", truncate_after=1000, times=1)
    proxy.add_fault(action="stall", path="/blobs/", stall_seconds=2, times=1)
    with httpx.Client(base_url=proxy.url, timeout=0.5) as c:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            c.get(url)
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            c.get(url)
        with pytest.raises(httpx.ReadTimeout):
            c.get(url)
        r = c.get(url)
        assert r.status_code == 200 and r.content == layer.data
    log = proxy.stats.log
    assert [rec.fault for rec in log] == ["reset", "truncate", "stall", None]
    assert log[1].resp_body_bytes == 1000 and log[1].status == 200


def test_reset_after_forward_reaches_upstream(
    registry_v2: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    repo = unique_repo()
    proxy = netproxy(registry_v2.host)
    proxy.add_fault(action="reset_after_forward", method="POST", path="/blobs/uploads/")
    mark = registry_v2.mark()
    with (
        httpx.Client(base_url=proxy.url) as c,
        pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        c.post(f"/v2/{repo}/blobs/uploads/")
    assert [(e.method, e.status) for e in registry_v2.access_log_since(mark) if e.repo == repo] == [
        ("POST", 202)
    ]


def test_rewrites_upstream_location(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    """A registry with a fixed ``http.host`` answers with its own address in ``Location``."""
    port = free_port()
    reg = start_registry(
        impl="v2", port=port, extra_config={"http": {"host": f"http://127.0.0.1:{port}"}}
    )
    proxy = netproxy(reg.host)
    repo = unique_repo()
    with reg.client() as c:
        direct = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert direct.startswith(reg.url + "/")
    with httpx.Client(base_url=proxy.url) as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        loc = r.headers["Location"]
        assert loc.startswith(proxy.url + f"/v2/{repo}/blobs/uploads/") and "_state=" in loc
        data = b"via proxy"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert c.put(append_query(loc, digest=digest), content=data).status_code == 201
    assert proxy.stats.locations_rewritten == 2


def test_cli_process_writes_stats(
    registry_v2: RegistryServer, unique_repo: UniqueRepo, tmp_path: Path
) -> None:
    img = push_image(registry_v2, unique_repo(), "v1")
    stats_file = tmp_path / "stats.json"
    fault = json.dumps({"status": 503, "path": "/manifests/", "times": 1})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testkit.netproxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            registry_v2.host,
            "--delay-ms",
            "5",
            "--stats-file",
            str(stats_file),
            "--stats-interval",
            "0.2",
            "--fault",
            fault,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()
        assert addr.startswith("127.0.0.1:")
        with httpx.Client(base_url=f"http://{addr}") as c:
            codes = [
                c.get(f"/v2/{img.repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code
                for _ in range(3)
            ]
        assert codes == [503, 200, 200]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    stats = json.loads(stats_file.read_text())
    assert stats["requests"] == 3 and stats["faults_injected"] == 1
    assert stats["upstream"] == registry_v2.host and stats["delay_ms"] == 5
    assert [r["status"] for r in stats["log"]] == [503, 200, 200]


def test_bandwidth_cap_paces_bodies(
    registry_v2: RegistryServer, unique_repo: UniqueRepo, netproxy: ProxyFactory
) -> None:
    repo = unique_repo()
    layer = make_layer(200_000)
    push_blob(registry_v2, repo, layer)
    proxy = netproxy(registry_v2.host, bandwidth_bps=1_000_000)
    with httpx.Client(base_url=proxy.url) as c:
        r = c.get(f"/v2/{repo}/blobs/{layer.digest}")
    assert r.content == layer.data
    (rec,) = proxy.stats.log
    assert rec.resp_body_bytes == layer.size
    # >= 200 kB at 1 MB/s (a lower bound cannot flake)
    assert rec.duration_ms >= 1000 * layer.size / 1_000_000 * 0.95


def test_go_client_through_proxy(
    registry_v3: RegistryServer,
    unique_repo: UniqueRepo,
    netproxy: ProxyFactory,
    peer_tools: dict[str, str],
) -> None:
    """crane (Go's HTTP/1.1 client) validates an index through the delayed proxy."""
    img = push_index(registry_v3, unique_repo(), "v1")
    proxy = netproxy(registry_v3.host, delay_ms=5)
    ref = f"{proxy.address}/{img.repo}:v1"
    assert crane(registry_v3, "digest", ref).decode().strip() == img.digest
    crane(registry_v3, "validate", "--remote", ref)
    stats = proxy.stats
    assert stats.count(method="GET", path="/blobs/") >= len(img.unique_blobs)
    assert stats.upstream_connections <= stats.connections
