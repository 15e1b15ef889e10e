"""The fault matrix on the engine path (issue 12): every fault injected into a real copy
between real registries, the same invariants checked after each (tests/support/invariants.py).

The source is distribution 2.8.2 (``registry_v2``), the destination distribution v3 (it is the
one that cancels partly written sessions, see test_cancellation.py). TCP faults come from
toxiproxy (``testkit/toxiproxy.py``), HTTP-status faults and flipped bytes from
``testkit/netproxy.py``; the destination is always behind a NetProxy, which counts the bytes
uploaded. Each test: snapshot the destination tag, copy under the fault, check the tag is the
complete image or unchanged (a failure must be a typed, retryable error unless said otherwise),
heal, copy again, check the tag is complete, no session is open and nothing but interrupted
blobs was sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from imagecopy.copy import CopyOptions, CopyReport
from imagecopy.copy.options import TagPolicy
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.errors import DigestMismatch, ImageCopyError, TagConflict
from imagecopy.oci.pool import TransportSettings
from imagecopy.oci.retry import Backoff, RetryPolicy
from testkit import images
from testkit.netproxy import NetProxy
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT
from testkit.toxiproxy import ToxicProxy, ToxiproxyServer, find_toxiproxy
from tests.integration.copyhelpers import copy, repo
from tests.support.fixtures import require_tool
from tests.support.invariants import (
    Destination,
    FaultRow,
    assert_no_open_sessions,
    fault_row,
    uploaded_bytes,
)

__all__ = ["fault_row"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., NetProxy]
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def toxi() -> Iterator[ToxiproxyServer]:
    require_tool("toxiproxy-server", find_toxiproxy())
    server = ToxiproxyServer().start()
    yield server
    server.stop()


_names = iter(range(1, 1_000_000))


def toxic_link(toxi: ToxiproxyServer, upstream: str) -> ToxicProxy:
    return toxi.proxy(f"link{next(_names)}", upstream)


def settings(
    *hosts: str,
    attempts: int = 3,
    timeout: float = 60.0,
    connect_timeout: float = 5.0,
    retry_after_max: float = 3.0,
) -> TransportSettings:
    return TransportSettings(
        plain_http=frozenset(hosts),
        timeout=timeout,
        connect_timeout=connect_timeout,
        retry=RetryPolicy(
            attempts=attempts, backoff=Backoff(base=0.05, cap=0.3, retry_after_max=retry_after_max)
        ),
    )


@dataclass
class Case:
    """One copy under a fault: a source image, a destination behind ``dst_proxy``."""

    image: images.PushedImage
    src_ref: str
    dst: Destination
    dst_proxy: NetProxy
    settings: TransportSettings
    options: CopyOptions
    registries: tuple[RegistryServer, ...]

    @property
    def dst_ref(self) -> str:
        return f"{self.dst_proxy.address}/{self.dst.repository}:{self.dst.tag}"

    async def run(self) -> CopyReport:
        dst = self.dst.registry
        auths = {}
        if dst.auth != "none":  # the destination is reached through its proxy
            auths[self.dst_proxy.address] = {"username": dst.username, "password": dst.password}
        return await copy(
            self.src_ref,
            self.dst_ref,
            *self.registries,
            settings=self.settings,
            options=self.options,
            credentials=CredentialStore.from_docker_config(json.dumps({"auths": auths})),
        )

    def sizes(self) -> dict[str, int]:
        return {str(b["digest"]): int(b["size"]) for b in self.image.unique_blobs}

    def resent(self) -> tuple[int, int]:
        """(bytes uploaded beyond one copy of every blob, the bound: the full size of every
        blob whose upload request was interrupted or refused, once per such request)."""
        sizes = self.sizes()
        sent = uploaded_bytes(self.dst_proxy, self.dst.repository)
        bound = 0
        for r in self.dst_proxy.snapshot().log:
            if r.method != "PUT" or not r.path.startswith(f"/v2/{self.dst.repository}/blobs/"):
                continue
            if r.status is not None and r.status < 300:
                continue
            m = re.search(r"digest=(sha256(?::|%3A)[0-9a-f]{64})", r.query)
            if m:
                bound += sizes.get(m.group(1).replace("%3A", ":"), 0)
        return sent - sum(sizes.values()), bound

    def requests(self, *proxies: NetProxy) -> int:
        return sum(p.snapshot().requests for p in (self.dst_proxy, *proxies))


def make_case(
    source: RegistryServer,
    dst_registry: RegistryServer,
    dst_proxy: NetProxy,
    *,
    layers: int = 3,
    layer_size: int = 200 * KiB,
    src_host: str | None = None,
    extra_hosts: tuple[str, ...] = (),
    options: CopyOptions | None = None,
    **settings_kw: Any,
) -> Case:
    image = images.push_image(source, repo("dev"), "1", layers=layers, layer_size=layer_size)
    dst_repo = repo("prod")
    host = src_host or source.host
    return Case(
        image=image,
        src_ref=f"{host}/{image.repo}:1",
        dst=Destination.snapshot(dst_registry, dst_repo, "1"),
        dst_proxy=dst_proxy,
        settings=settings(host, source.host, dst_proxy.address, *extra_hosts, **settings_kw),
        options=options or CopyOptions(concurrency=2, blob_attempts=3),
        registries=(source, dst_registry),
    )


async def under_fault(
    case: Case,
    row: FaultRow,
    heal: Callable[[], None],
    *,
    may_fail: tuple[type[ImageCopyError], ...] = (ImageCopyError,),
    must_be_retryable: bool = True,
    fault_task: asyncio.Task[None] | None = None,
) -> str:
    """Copy under the fault; check the destination; heal; copy again; check every invariant.
    Returns how the first copy ended: ``"absorbed"`` (it completed) or the error's type."""
    first = "absorbed"
    try:
        await case.run()
    except may_fail as exc:
        first = type(exc).__name__
        if must_be_retryable:
            assert exc.retryable, f"{first} is not retryable: {exc}"
    if fault_task is not None:
        await fault_task  # the fault has run its course (a killed registry is back)
    if first != "absorbed":
        assert case.dst.state(case.image.digest) in ("complete", "unchanged")
    heal()
    row.healed()
    if first != "absorbed":
        await case.run()
    row.recovered()
    case.dst.assert_complete(case.image.digest)
    try:
        assert_no_open_sessions(case.dst.registry, case.dst.repository)
    except AssertionError as exc:
        trail = [
            f"{r.method} {r.path[-60:]}?{r.query[:40]} {r.status} {r.fault or ''} "
            f"up={r.req_body_bytes}"
            for r in case.dst_proxy.snapshot().log
            if "/blobs/uploads/" in r.path
        ]
        raise AssertionError(f"{exc}\nupload requests:\n" + "\n".join(trail)) from None
    resent, bound = case.resent()
    assert resent <= bound, f"{resent} bytes sent twice; only {bound} were interrupted"
    row.bytes_resent, row.resend_bound = max(0, resent), bound
    return first


# --- 1. the destination registry SIGKILLed mid-upload, restarted on the same storage -----------


async def test_f01_registry_killed_mid_upload_restarted_on_same_storage(
    registry_v2: RegistryServer,
    start_registry: Callable[..., RegistryServer],
    netproxy: ProxyFactory,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "registry SIGKILLed mid-upload, restarted", 1
    dst_reg = start_registry(impl="v3")
    proxy = netproxy(dst_reg.host, bandwidth_bps=2 * MiB)
    case = make_case(registry_v2, dst_reg, proxy, layers=2, layer_size=3 * MiB, attempts=2)

    async def kill_when_streaming() -> None:
        while proxy.snapshot().bytes_up < MiB:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(dst_reg.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(dst_reg.start)

    killer = asyncio.create_task(kill_when_streaming())
    first = await under_fault(case, fault_row, lambda: None, fault_task=killer)
    fault_row.survived(f"complete ({first} first)", requests=case.requests())


# --- 2. a 429 storm with Retry-After, seconds and HTTP date ------------------------------------


async def test_f02_429_storm_with_retry_after(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "429 storm, Retry-After seconds and HTTP date", 2
    proxy = netproxy(registry_v3.host)
    src_proxy = netproxy(registry_v2.host)
    case = make_case(
        registry_v2, registry_v3, proxy, layers=3, attempts=4, src_host=src_proxy.address
    )
    # reads only (destination HEADs, source GETs): a refused blob PUT is fault 3's and 12's
    seconds = proxy.add_fault(
        method="HEAD", status=429, headers={"Retry-After": "1"}, every=3, times=4
    )
    dated = src_proxy.add_fault(
        method="GET",
        status=429,
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
        every=2,
        times=4,
    )

    def heal() -> None:
        proxy.clear_faults()
        src_proxy.clear_faults()

    started = time.monotonic()
    first = await under_fault(case, fault_row, heal)
    assert first == "absorbed"
    assert seconds.hits >= 2 and dated.hits >= 2
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was waited for
    fault_row.survived("complete (absorbed)", requests=case.requests(src_proxy))


# --- 3. 5xx bursts on blob and manifest requests ----------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_f03_5xx_bursts_on_blobs_and_manifests(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
    status: int,
) -> None:
    fault_row.fault, fault_row.number = f"{status} bursts on blob and manifest requests", 3
    proxy = netproxy(registry_v3.host)
    case = make_case(registry_v2, registry_v3, proxy, layers=3, attempts=3)
    proxy.add_fault(path="/blobs/", status=status, every=2, times=3)
    proxy.add_fault(path="/manifests/", status=status, times=2)
    first = await under_fault(case, fault_row, proxy.clear_faults)
    fault_row.survived(f"complete ({first})", requests=case.requests())


# --- 4. connection reset mid-body: a source GET, a destination PUT ------------------------------


async def test_f04a_reset_mid_body_on_a_source_get(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "connection reset mid-body on a source blob GET", 4
    src_proxy = netproxy(registry_v2.host)
    dst_proxy = netproxy(registry_v3.host)
    case = make_case(
        registry_v2, registry_v3, dst_proxy, layer_size=400 * KiB, src_host=src_proxy.address
    )
    # "truncate" relays part of the body, then RSTs the connection
    src_proxy.add_fault(
        method="GET", path="/blobs/sha256", action="truncate", truncate_after=100 * KiB, times=2
    )
    first = await under_fault(case, fault_row, src_proxy.clear_faults)
    fault_row.survived(f"complete ({first})", requests=case.requests(src_proxy))


async def test_f04b_reset_mid_body_on_a_destination_put(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "connection reset mid-body on a destination blob PUT", 4
    link = toxic_link(toxi, registry_v3.host)
    proxy = netproxy(link.address, bandwidth_bps=MiB)
    case = make_case(registry_v2, registry_v3, proxy, layers=2, layer_size=MiB)
    # every connection to the registry is cut after 300 KiB sent: in the middle of a PUT
    # body (the proxy in front passes the cut on to the client as a reset)
    link.add("limit_data", stream="upstream", bytes=300 * KiB)

    async def heal_when_reset() -> None:
        while not any(r.fault for r in proxy.snapshot().log if r.method == "PUT"):
            await asyncio.sleep(0.02)
        await asyncio.to_thread(link.clear)

    healer = asyncio.create_task(heal_when_reset())
    try:
        first = await under_fault(case, fault_row, link.clear)
    finally:
        healer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await healer
    assert any(r.fault for r in proxy.snapshot().log if r.method == "PUT"), [
        (r.method, r.status, r.fault, r.req_body_bytes) for r in proxy.snapshot().log
    ]
    fault_row.survived(f"complete ({first})", requests=case.requests())


# --- 5. a truncated body (closed before Content-Length bytes) --------------------------------


async def test_f05_truncated_source_body(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "truncated body (closed before Content-Length)", 5
    link = toxic_link(toxi, registry_v2.host)
    proxy = netproxy(registry_v3.host)
    case = make_case(registry_v2, registry_v3, proxy, layer_size=600 * KiB, src_host=link.address)
    link.add("limit_data", stream="downstream", bytes=300 * KiB)  # every connection is cut
    first = await under_fault(case, fault_row, link.clear)
    assert first != "absorbed"
    fault_row.survived(f"complete ({first} first)", requests=case.requests())


# --- 6. a flipped byte in a source blob stream -----------------------------------------------


async def test_f06_corrupted_byte_in_a_source_blob(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "corrupted byte in a source blob stream", 6
    src_proxy = netproxy(registry_v2.host)
    dst_proxy = netproxy(registry_v3.host)
    case = make_case(
        registry_v2, registry_v3, dst_proxy, layer_size=300 * KiB, src_host=src_proxy.address
    )
    src_proxy.add_fault(
        method="GET", path="/blobs/sha256", action="corrupt", corrupt_at=1234, times=None
    )
    first = await under_fault(
        case,
        fault_row,
        src_proxy.clear_faults,
        may_fail=(DigestMismatch,),
        must_be_retryable=False,
    )
    assert first == "DigestMismatch"
    fault_row.survived(
        "complete (DigestMismatch first, nothing bad stored)", requests=case.requests(src_proxy)
    )


# --- 7. a stalled response past the read timeout; a slow trickle that is no stall --------------


async def test_f07a_stalled_response_past_the_read_timeout(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "stalled response past the read timeout", 7
    link = toxic_link(toxi, registry_v2.host)
    proxy = netproxy(registry_v3.host)
    case = make_case(
        registry_v2, registry_v3, proxy, src_host=link.address, timeout=1.5, attempts=2
    )
    link.add("timeout", stream="downstream", timeout=0)  # hold every byte, close nothing
    first = await under_fault(case, fault_row, link.clear)
    assert first == "RegistryUnreachable"  # ended by the read timeout: nothing else could
    fault_row.survived("complete (RegistryUnreachable first)", requests=case.requests())


async def test_f07b_slow_trickle_is_not_a_stall(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "slow trickle (64 KiB/s) is not a stall", 7
    link = toxic_link(toxi, registry_v2.host)
    proxy = netproxy(registry_v3.host)
    case = make_case(
        registry_v2,
        registry_v3,
        proxy,
        layers=1,
        layer_size=256 * KiB,
        src_host=link.address,
        timeout=2.0,
    )
    link.add("bandwidth", stream="downstream", rate=64)  # KB/s: ~4 s for the layer
    first = await under_fault(case, fault_row, link.clear, may_fail=())
    assert first == "absorbed"
    fault_row.survived("complete (absorbed)", requests=case.requests())


# --- 10. the token service down: connection refused, then 503 -----------------------------------


async def test_f10_token_service_down_then_503(
    registry_v2: RegistryServer,
    start_registry: Callable[..., RegistryServer],
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    from testkit.token_issuer import TokenIssuer

    fault_row.fault, fault_row.number = "token service down (refused, then 503)", 10
    issuer = TokenIssuer(users={"alice": "pw-alice-10"}).start()
    try:
        realm_proxy = netproxy(f"127.0.0.1:{issuer.port}")
        link = toxic_link(toxi, realm_proxy.address)
        realm_port = link.address.rsplit(":", 1)[1]
        dst_reg = start_registry(
            impl="v3",
            auth="token",
            token_issuer=issuer,
            username="alice",
            password="pw-alice-10",
            extra_config={"auth": {"token": {"realm": f"http://localhost:{realm_port}/token"}}},
        )
        proxy = netproxy(dst_reg.host)
        case = make_case(
            registry_v2, dst_reg, proxy, extra_hosts=(f"localhost:{realm_port}",), attempts=2
        )
        link.disable()  # connection refused
        with pytest.raises(ImageCopyError) as refused:
            await case.run()
        assert refused.value.retryable
        assert case.dst.state(case.image.digest) == "unchanged"
        link.enable()
        realm_proxy.add_fault(path="/token", status=503, times=None)
        first = await under_fault(case, fault_row, realm_proxy.clear_faults)
        fault_row.survived(
            f"complete ({type(refused.value).__name__}, then {first})",
            requests=case.requests(realm_proxy),
        )
    finally:
        issuer.stop()


# --- 11. the source tag moved to another image mid-copy --------------------------------------


async def test_f11_source_tag_moved_mid_copy(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "source tag moved mid-copy", 11
    src_proxy = netproxy(registry_v2.host, bandwidth_bps=MiB)
    dst_proxy = netproxy(registry_v3.host)
    case = make_case(
        registry_v2, registry_v3, dst_proxy, layers=2, layer_size=MiB, src_host=src_proxy.address
    )

    async def move_tag() -> images.PushedImage:
        while src_proxy.snapshot().bytes_down < 256 * KiB:
            await asyncio.sleep(0.02)
        return await asyncio.to_thread(
            images.push_image, registry_v2, case.image.repo, "1", layers=1
        )

    mover = asyncio.create_task(move_tag())
    report = await case.run()
    moved = await mover
    fault_row.healed()  # (approximately: the tag moved while the copy ran)
    # the copy finished the digest it resolved at its start, never a mix of the two
    assert report.source_digest == case.image.digest
    fault_row.recovered()
    case.dst.assert_complete(case.image.digest)
    assert_no_open_sessions(registry_v3, case.dst.repository)
    # the next look follows the move
    again = await case.run()
    assert again.source_digest == moved.digest
    case.dst.assert_complete(moved.digest)
    fault_row.survived("complete (pinned digest, then the moved tag)", requests=case.requests())


# --- 12. the destination out of space: 507 on blob PUT, then on manifest PUT -------------------


@pytest.mark.parametrize("target", ["blob", "manifest"])
async def test_f12_destination_out_of_space(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
    target: str,
) -> None:
    fault_row.fault, fault_row.number = f"destination out of space (507 on {target} PUT)", 12
    proxy = netproxy(registry_v3.host)
    case = make_case(registry_v2, registry_v3, proxy)
    path = "/blobs/uploads/" if target == "blob" else "/manifests/"
    proxy.add_fault(method="PUT", path=path, status=507, times=None)
    first = await under_fault(case, fault_row, proxy.clear_faults)
    assert first == "InsufficientStorage"  # before: RegistryUnreachable, as if it had not answered
    fault_row.survived(f"complete ({first} first)", requests=case.requests())


# --- 13. a partition longer than the retry window, then healed --------------------------------


async def test_f13_partition_longer_than_the_retry_window(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = "partition longer than the retry window, healed", 13
    link = toxic_link(toxi, registry_v3.host)
    proxy = netproxy(link.address)
    case = make_case(registry_v2, registry_v3, proxy, attempts=2)
    link.disable()
    first = await under_fault(case, fault_row, link.enable)
    assert first == "RegistryUnreachable"
    fault_row.survived("complete (RegistryUnreachable first)", requests=case.requests())


# --- 14. the destination tag changed by someone else between two copies ----------------------


@pytest.mark.parametrize("policy", ["Overwrite", "IfNotPresent", "Immutable"])
async def test_f14_destination_drift_between_intervals(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    fault_row: FaultRow,
    policy: str,
) -> None:
    fault_row.fault, fault_row.number = f"destination drift, tagPolicy {policy}", 14
    proxy = netproxy(registry_v3.host)
    case = make_case(
        registry_v2, registry_v3, proxy, options=CopyOptions(tag_policy=TagPolicy(policy))
    )
    await case.run()
    case.dst.assert_complete(case.image.digest)
    drift = images.push_image(registry_v3, case.dst.repository, "1", layers=1)
    fault_row.healed()  # the next copy is the next interval
    row_state: str
    if policy == "Overwrite":
        await case.run()
        case.dst.assert_complete(case.image.digest)  # repaired
        row_state = "repaired to the source"
    elif policy == "IfNotPresent":
        await case.run()
        case.dst.before = drift.digest
        assert case.dst.state(case.image.digest) == "unchanged"  # left alone, as asked
        row_state = "left as found (IfNotPresent)"
    else:
        with pytest.raises(TagConflict):
            await case.run()
        case.dst.before = drift.digest
        assert case.dst.state(case.image.digest) == "unchanged"
        row_state = "TagConflict, left as found"
    fault_row.recovered()
    assert_no_open_sessions(registry_v3, case.dst.repository)
    fault_row.survived(row_state, requests=case.requests())


def _clear(*links: ToxicProxy) -> None:
    for link in links:
        link.clear()


# --- added: latency with a fragmented stream (slicer) ------------------------------------------


async def test_f15_latency_and_sliced_segments(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    netproxy: ProxyFactory,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
) -> None:
    fault_row.fault, fault_row.number = (
        "latency 50 ms and TCP stream sliced into small segments",
        15,
    )
    src = toxic_link(toxi, registry_v2.host)
    link = toxic_link(toxi, registry_v3.host)
    proxy = netproxy(link.address)
    case = make_case(registry_v2, registry_v3, proxy, src_host=src.address)
    for hop in (src, link):
        hop.add("latency", stream="downstream", latency=50, jitter=10)
        hop.add("slicer", stream="downstream", average_size=700, size_variation=500, delay=200)
    l_up = link.add("slicer", stream="upstream", average_size=900, size_variation=600, delay=100)
    assert l_up
    first = await under_fault(case, fault_row, lambda: _clear(src, link), may_fail=())
    fault_row.survived(f"complete ({first})", requests=case.requests())


# --- 7, CLI path: --read-timeout ends a stalled response, --stall-timeout a stalled copy -------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    return subprocess.run(
        [sys.executable, "-m", "imagecopy", "copy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("flag", ["--read-timeout", "--stall-timeout"])
def test_f07c_cli_timeouts_end_a_stalled_copy(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    toxi: ToxiproxyServer,
    fault_row: FaultRow,
    flag: str,
) -> None:
    fault_row.fault, fault_row.number = f"stalled source, CLI {flag} 2s", 7
    fault_row.path = "cli"
    link = toxic_link(toxi, registry_v2.host)
    image = images.push_image(registry_v2, repo("dev"), "1", layers=2, layer_size=100 * KiB)
    dst = Destination.snapshot(registry_v3, repo("prod"), "1")
    base = [
        f"{link.address}/{image.repo}:1",
        dst.ref,
        "--plain-http", link.address, "--plain-http", registry_v3.host,
        "--read-timeout", "2" if flag == "--read-timeout" else "600",
        "--stall-timeout", "2" if flag == "--stall-timeout" else "600",
    ]  # fmt: skip
    link.add("timeout", stream="downstream", timeout=0)
    failed = _cli(*base)
    assert failed.returncode == 1, failed.stderr
    # The 2 s setting ended the copy (the other one is 600 s): its own message says so.
    expected = "did not answer in time" if flag == "--read-timeout" else "--stall-timeout"
    assert expected in failed.stderr
    assert dst.state(image.digest) == "unchanged"
    link.clear()
    fault_row.healed()
    done = _cli(*base)
    assert done.returncode == 0, done.stderr
    fault_row.recovered()
    dst.assert_complete(image.digest)
    assert_no_open_sessions(registry_v3, dst.repository)
    fault_row.survived(f"complete (exit 1 first: {expected})")
