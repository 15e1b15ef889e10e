"""The network guard and the egress rule against real registries and real fronts.

A hostile registry is a real registry behind the fault-injecting front (testkit/netproxy.py)
whose answers send the copy elsewhere: a blob redirect, an upload ``Location`` or a token
realm naming ``[::ffff:127.0.0.2]`` (127.0.0.2 spelled as IPv4-mapped IPv6). These tests
block 127.0.0.2/32 and keep a decoy listener there: a broken guard would connect to it, and
the decoy counts connections. Nothing here ever connects outside 127.0.0.0/8.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from imagecopy.copy import CopyOptions
from imagecopy.oci.errors import RegistryNotAllowed, Unauthorized
from imagecopy.oci.netguard import DEFAULT_BLOCKED_NETWORKS
from imagecopy.oci.pool import TransportSettings
from testkit import images
from testkit.netproxy import NetProxy
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from tests.integration.copyhelpers import FAST_RETRY, copy, repo

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., NetProxy]
BLOCKED = (*DEFAULT_BLOCKED_NETWORKS, "127.0.0.2/32")


class Decoy:
    """A TCP listener on 127.0.0.2 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.2", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    d = Decoy()
    yield d
    d.close()


def settings(*plain_http: str) -> TransportSettings:
    return TransportSettings(
        plain_http=frozenset(plain_http), blocked_networks=BLOCKED, retry=FAST_RETRY
    )


@pytest.mark.parametrize("spelling", ["[::ffff:127.0.0.2]", "[::ffff:7f00:2]", "127.0.0.2"])
async def test_a_blob_redirect_into_a_blocked_network_is_refused_before_connecting(
    registry_v2: RegistryServer, netproxy: ProxyFactory, decoy: Decoy, spelling: str
) -> None:
    proxy = netproxy(registry_v2.host)
    target = f"http://{spelling}:{decoy.port}/blob"
    proxy.add_fault(
        method="GET", path="/blobs/sha256:", status=307, headers={"Location": target}, times=None
    )
    src = images.push_image(registry_v2, repo("dev"), "1", layers=2)
    # The decoy's host is configured plain-HTTP, so the guard (not the egress rule) refuses.
    with pytest.raises(RegistryNotAllowed, match=r"127\.0\.0\.2.*blocked network 127\.0\.0\.2/32"):
        await copy(
            f"{proxy.address}/{src.repo}:1",
            f"{registry_v2.host}/{repo('prod')}:1",
            registry_v2,
            settings=settings(proxy.address, registry_v2.host, f"{spelling}:{decoy.port}"),
            options=CopyOptions(mount=False),
        )
    assert decoy.connections == 0


async def test_a_plain_http_redirect_to_an_unconfigured_host_is_refused(
    registry_v2: RegistryServer, netproxy: ProxyFactory, decoy: Decoy
) -> None:
    proxy = netproxy(registry_v2.host)
    proxy.add_fault(
        method="GET",
        path="/blobs/sha256:",
        status=307,
        headers={"Location": f"http://localhost:{decoy.port}/blob"},
        times=None,
    )
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    with pytest.raises(RegistryNotAllowed, match="over plain HTTP"):
        await copy(
            f"{proxy.address}/{src.repo}:1",
            f"{registry_v2.host}/{repo('prod')}:1",
            registry_v2,
            settings=settings(proxy.address, registry_v2.host),
            options=CopyOptions(mount=False),
        )
    assert decoy.connections == 0


async def test_an_upload_location_into_a_blocked_network_is_refused(
    registry_v2: RegistryServer, netproxy: ProxyFactory, decoy: Decoy
) -> None:
    proxy = netproxy(registry_v2.host)
    location = f"http://[::ffff:127.0.0.2]:{decoy.port}/v2/x/blobs/uploads/u1"
    proxy.add_fault(
        method="POST",
        path="/blobs/uploads/",
        status=202,
        headers={"Location": location, "Range": "0-0"},
        times=None,
    )
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    with pytest.raises(RegistryNotAllowed, match="blocked network"):
        await copy(
            f"{registry_v2.host}/{src.repo}:1",
            f"{proxy.address}/{repo('prod')}:1",
            registry_v2,
            settings=settings(proxy.address, registry_v2.host, f"[::ffff:127.0.0.2]:{decoy.port}"),
            options=CopyOptions(mount=False),
        )
    assert decoy.connections == 0


@pytest.mark.parametrize("configured", [True, False])
async def test_a_token_realm_in_a_blocked_network_gets_nothing(
    registry_v2: RegistryServer, netproxy: ProxyFactory, decoy: Decoy, configured: bool
) -> None:
    """Configured plain-HTTP, the realm passes the egress rule and the guard refuses it at
    connect; not configured, the realm check refuses it before any token request."""
    proxy = netproxy(registry_v2.host)
    realm = f"http://[::ffff:127.0.0.2]:{decoy.port}/token"
    proxy.add_fault(
        method="GET",
        path="/manifests/",
        status=401,
        headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="r"'},
        times=None,
    )
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    plain = [proxy.address, registry_v2.host]
    if configured:
        plain.append(f"[::ffff:127.0.0.2]:{decoy.port}")
    expected: type[Exception] = RegistryNotAllowed if configured else Unauthorized
    with pytest.raises(expected):
        await copy(
            f"{proxy.address}/{src.repo}:1",
            f"{registry_v2.host}/{repo('prod')}:1",
            registry_v2,
            settings=settings(*plain),
        )
    assert decoy.connections == 0


async def test_a_blob_redirect_to_another_allowed_host_is_followed(
    registry_v2: RegistryServer, netproxy: ProxyFactory
) -> None:
    """Blob storage on another host (a CDN) is contacted, under the same guard: here the
    registry itself under the name ``localhost``, which resolves to ::1 (refused: nothing
    listens there) and 127.0.0.1, tried in turn."""
    proxy = netproxy(registry_v2.host)
    port = registry_v2.host.rpartition(":")[2]
    src = images.push_image(registry_v2, repo("dev"), "1", layers=2)
    for blob in src.unique_blobs:
        digest = blob["digest"]
        proxy.add_fault(
            method="GET",
            path=f"/blobs/{digest}",
            status=307,
            headers={"Location": f"http://localhost:{port}/v2/{src.repo}/blobs/{digest}"},
            times=None,
        )
    dst = f"{registry_v2.host}/{repo('prod')}:1"
    report = await copy(
        f"{proxy.address}/{src.repo}:1",
        dst,
        registry_v2,
        settings=settings(proxy.address, registry_v2.host, f"localhost:{port}"),
        options=CopyOptions(mount=False),
    )
    assert report.blobs_uploaded == len(src.unique_blobs)
    assert crane_digest(registry_v2, dst) == src.digest


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMAGECOPY_")},
        "PYTHONPATH": str(REPO_ROOT / "operator"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "imagecopy", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--blocked-network", "127.0.0.0/8"], {}),
        ([], {"IMAGECOPY_BLOCKED_NETWORKS": "default,127.0.0.0/8"}),
    ],
    ids=["flag", "environment"],
)
def test_the_cli_guard_refuses_a_blocked_registry_with_no_request(
    registry_v2: RegistryServer, flags: list[str], env: dict[str, str]
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    mark = registry_v2.mark()
    proc = run_cli(
        "copy",
        src.ref,
        f"{registry_v2.host}/{repo('prod')}:1",
        "--plain-http",
        registry_v2.host,
        *flags,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("imagecopy: registry not allowed: 127.0.0.1 is in the blocked")
    assert registry_v2.access_log_since(mark) == []


def test_the_cli_blocked_network_none_clears_the_setting(registry_v2: RegistryServer) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    proc = run_cli(
        "copy",
        src.ref,
        f"{registry_v2.host}/{repo('prod')}:1",
        "--plain-http",
        registry_v2.host,
        "--blocked-network",
        "none",
        "-q",
        env={"IMAGECOPY_BLOCKED_NETWORKS": "127.0.0.0/8"},
    )
    assert proc.returncode == 0, proc.stderr
