"""Registries that refuse mounts, rate-limit or fail: fallbacks and retries, through a real
registry behind the fault-injecting proxy (testkit/netproxy.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imagecopy.copy import CopyOptions
from imagecopy.oci.errors import RateLimited
from imagecopy.oci.pool import TransportSettings
from imagecopy.oci.retry import Backoff, RetryPolicy
from testkit import images
from testkit.netproxy import NetProxy
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, repo

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., NetProxy]


def _settings(proxy: NetProxy, attempts: int = 3) -> TransportSettings:
    return TransportSettings(
        plain_http=frozenset({proxy.address}),
        retry=RetryPolicy(
            attempts=attempts, backoff=Backoff(base=0.05, cap=0.2, retry_after_max=3)
        ),
    )


@pytest.mark.parametrize("status", [405, 404, 403])
async def test_registry_refusing_mounts_falls_back_to_head_and_upload(
    registry_v2: RegistryServer, netproxy: ProxyFactory, status: int
) -> None:
    proxy = netproxy(registry_v2.host)
    fault = proxy.add_fault(method="POST", query="mount=", status=status, times=None)
    src = images.push_image(registry_v2, repo("dev"), "1", layers=4)
    src_ref = f"{proxy.address}/{src.repo}:1"
    dst_repo = repo("prod")

    report = await copy(
        src_ref, f"{proxy.address}/{dst_repo}:1", registry_v2, settings=_settings(proxy)
    )

    # Mounts already in flight are refused too; none is tried again after the refusal.
    assert 1 <= fault.hits == proxy.stats.count(method="POST", query="mount=") <= 5
    assert report.blobs_mounted == 0
    assert report.blobs_uploaded == 5
    assert proxy.stats.count(method="HEAD", path="/blobs/") == 5
    assert crane_digest(registry_v2, f"{registry_v2.host}/{dst_repo}:1") == src.digest


async def test_429_with_retry_after_is_honoured(
    registry_v2: RegistryServer, netproxy: ProxyFactory
) -> None:
    proxy = netproxy(registry_v2.host)
    proxy.add_fault(
        method="GET", path="/manifests/", status=429, headers={"Retry-After": "1"}, times=1
    )
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    dst_repo = repo("prod")
    report = await copy(
        f"{proxy.address}/{src.repo}:1",
        f"{proxy.address}/{dst_repo}:1",
        registry_v2,
        settings=_settings(proxy),
    )
    gets = [r for r in proxy.stats.log if r.method == "GET" and "/manifests/" in r.path]
    assert [r.status for r in gets] == [429, 200]
    assert gets[1].started - gets[0].started >= 0.9  # waited as told, not the 50 ms backoff
    # HEAD dst, GET (429), GET, 2 mounts, PUT: the retried GET counts (requests made, not calls)
    assert report.requests == 6
    assert crane_digest(registry_v2, f"{registry_v2.host}/{dst_repo}:1") == src.digest


async def test_http_date_retry_after_and_giving_up_is_rate_limited(
    registry_v2: RegistryServer, netproxy: ProxyFactory
) -> None:
    proxy = netproxy(registry_v2.host)
    proxy.add_fault(
        method="GET",
        path="/manifests/",
        status=429,
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},  # in the past: retry at once
        times=None,
    )
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    with pytest.raises(RateLimited) as err:
        await copy(
            f"{proxy.address}/{src.repo}:1",
            f"{proxy.address}/{repo('prod')}:1",
            registry_v2,
            settings=_settings(proxy, attempts=3),
        )
    assert err.value.retryable
    assert proxy.stats.count(method="GET", path="/manifests/") == 3


async def test_503_on_a_blob_upload_is_retried_and_the_copy_completes(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    proxy = netproxy(registry_v3.host)
    proxy.add_fault(method="PUT", path="/blobs/uploads/", status=503, times=2)
    src = images.push_image(registry_v2, repo("dev"), "1", layers=3)
    dst_repo = repo("mirror")
    settings = TransportSettings(
        plain_http=frozenset({proxy.address, registry_v2.host}),
        retry=RetryPolicy(attempts=2, backoff=Backoff(base=0.05, cap=0.1)),
    )
    report = await copy(
        src.ref,
        f"{proxy.address}/{dst_repo}:1",
        registry_v2,
        settings=settings,
        options=CopyOptions(blob_attempts=3),
    )
    assert report.blobs_uploaded == 4
    assert crane_digest(registry_v3, f"{registry_v3.host}/{dst_repo}:1") == src.digest


async def test_connection_reset_mid_copy_then_rerun_resumes(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    proxy = netproxy(registry_v3.host)
    proxy.add_fault(method="PUT", path="/manifests/", action="reset", times=None)
    src = images.push_image(registry_v2, repo("dev"), "1", layers=3)
    dst_repo = repo("mirror")
    settings = TransportSettings(
        plain_http=frozenset({proxy.address, registry_v2.host}),
        retry=RetryPolicy(attempts=2, backoff=Backoff(base=0.05, cap=0.1)),
    )
    with pytest.raises(Exception, match=r"connection|failed|reset"):
        await copy(src.ref, f"{proxy.address}/{dst_repo}:1", registry_v2, settings=settings)
    proxy.clear_faults()
    report = await copy(src.ref, f"{proxy.address}/{dst_repo}:1", registry_v2, settings=settings)
    assert report.blobs_existing == 4 and report.blobs_uploaded == 0
    assert crane_digest(registry_v3, f"{registry_v3.host}/{dst_repo}:1") == src.digest


async def test_registry_refusing_monolithic_put_gets_a_chunked_upload(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    proxy = netproxy(registry_v3.host)
    src = images.push_image(registry_v2, repo("dev"), "1", layers=1, layer_size=300_000)
    layer_hex = src.blobs[1]["digest"].split(":")[1]
    # The monolithic PUT of the layer carries ?digest=…: refuse it once.
    proxy.add_fault(method="PUT", path="/blobs/uploads/", query=layer_hex, status=405, times=1)
    dst_repo = repo("mirror")
    settings = TransportSettings(plain_http=frozenset({proxy.address, registry_v2.host}))
    report = await copy(
        src.ref,
        f"{proxy.address}/{dst_repo}:1",
        registry_v2,
        settings=settings,
        options=CopyOptions(concurrency=1, chunk_size=64 * 1024),
    )
    assert report.blobs_uploaded == 2
    assert proxy.stats.count(method="PATCH", path="/blobs/uploads/") >= 300_000 // (64 * 1024)
    assert crane_digest(registry_v3, f"{registry_v3.host}/{dst_repo}:1") == src.digest
