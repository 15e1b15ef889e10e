"""Only safe requests are replayed: a POST or PATCH the registry failed starts the upload over
from a fresh session, against a real registry behind the fault proxy (``testkit/netproxy.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from imagecopy.copy import CopyOptions
from imagecopy.oci.pool import TransportSettings
from imagecopy.oci.retry import Backoff, RetryPolicy
from testkit import images
from testkit.netproxy import NetProxy
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, repo

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., NetProxy]
UPLOADS = "/blobs/uploads/"


def settings(*hosts: str) -> TransportSettings:
    return TransportSettings(
        plain_http=frozenset(hosts),
        retry=RetryPolicy(attempts=4, backoff=Backoff(base=0.05, cap=0.1)),
    )


def chunked_copy_setup(
    source: RegistryServer, proxy: NetProxy
) -> tuple[images.PushedImage, str, str]:
    """An image with one 300 kB layer whose monolithic PUT the proxy refuses once (405), so it
    goes in 64 KiB PATCHes; returns the image, the layer's hex and a fresh destination."""
    image = images.push_image(source, repo("dev"), "1", layers=1, layer_size=300_000)
    layer_hex = image.blobs[1]["digest"].split(":")[1]
    proxy.add_fault(method="PUT", path=UPLOADS, query=layer_hex, status=405, times=1)
    return image, layer_hex, f"{proxy.address}/{repo('mirror')}:1"


OPTIONS = CopyOptions(concurrency=1, chunk_size=64 * 1024)


async def test_a_chunk_answered_503_is_not_replayed_into_its_session(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    """Before: the transport sent the PATCH again into the same session."""
    proxy = netproxy(registry_v3.host)
    image, _hex, dst = chunked_copy_setup(registry_v2, proxy)
    fault = proxy.add_fault(method="PATCH", path=UPLOADS, status=503, times=1)

    report = await copy(
        image.ref,
        dst,
        registry_v2,
        settings=settings(proxy.address, registry_v2.host),
        options=OPTIONS,
    )

    assert fault.hits == 1 and report.blobs_uploaded == 2
    log = proxy.stats.log
    failed = next(i for i, r in enumerate(log) if r.method == "PATCH" and r.status == 503)
    # The session is cancelled, the blob looked for, a new session opened: no replay. The
    # other blob's requests may interleave, so only the order of this blob's three is fixed.
    after = [(r.method, r.status) for r in log[failed + 1 :]]
    assert ("DELETE", 204) in after and ("HEAD", 404) in after
    assert ("POST", 202) in after[after.index(("HEAD", 404)) :]
    assert not any(r.method == "PATCH" for r in log[failed + 1 :] if r.status == 503)
    # The config, the layer, its chunked session, its fresh session.
    assert proxy.stats.count(method="POST", path=UPLOADS) == 4
    assert crane_digest(registry_v3, dst.replace(proxy.address, registry_v3.host)) == image.digest


async def test_a_chunk_answered_416_starts_over_instead_of_failing(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    """Before: a chunk answered 416 (as a replayed one is) was PushRejected; the object
    stalled."""
    proxy = netproxy(registry_v3.host)
    image, _hex, dst = chunked_copy_setup(registry_v2, proxy)
    body = json.dumps({"errors": [{"code": "RANGE_INVALID", "message": "invalid content range"}]})
    proxy.add_fault(method="PATCH", path=UPLOADS, status=416, body=body, times=1)

    report = await copy(
        image.ref,
        dst,
        registry_v2,
        settings=settings(proxy.address, registry_v2.host),
        options=OPTIONS,
    )

    assert report.blobs_uploaded == 2
    assert crane_digest(registry_v3, dst.replace(proxy.address, registry_v3.host)) == image.digest


async def test_an_upload_start_answered_503_is_started_again_by_the_blob_layer(
    registry_v2: RegistryServer, registry_v3: RegistryServer, netproxy: ProxyFactory
) -> None:
    """Before: the transport replayed the POST at once; now the blob layer starts over (and
    looks for the blob first), paid from the copy's budget."""
    proxy = netproxy(registry_v3.host)
    image = images.push_image(registry_v2, repo("dev"), "1", layers=1)
    dst = f"{proxy.address}/{repo('mirror')}:1"
    proxy.add_fault(method="POST", path=UPLOADS, status=503, times=1)

    report = await copy(
        image.ref,
        dst,
        registry_v2,
        settings=settings(proxy.address, registry_v2.host),
        options=CopyOptions(concurrency=1),
    )

    assert report.blobs_uploaded == 2
    log = proxy.stats.log
    failed = next(i for i, r in enumerate(log) if r.method == "POST" and r.status == 503)
    # The other blob's requests may interleave; this blob's restart is a HEAD, then a POST.
    after = [r.method for r in log[failed + 1 :]]
    assert "HEAD" in after and "POST" in after[after.index("HEAD") :]
    assert sum(1 for r in log if r.method == "POST" and r.status == 503) == 1
    assert crane_digest(registry_v3, dst.replace(proxy.address, registry_v3.host)) == image.digest


async def test_a_mount_answered_503_is_sent_once_and_the_blob_uploaded(
    registry_v2: RegistryServer, netproxy: ProxyFactory
) -> None:
    """Before: the mount POST was replayed by the transport. Now a failed mount is not
    repeated: the blob is looked for (the mount may have happened) and uploaded."""
    proxy = netproxy(registry_v2.host)
    image = images.push_image(registry_v2, repo("dev"), "1", layers=2)
    layer_hex = image.blobs[1]["digest"].split(":")[1]
    fault = proxy.add_fault(method="POST", query=layer_hex, status=503, times=1)
    dst_repo = repo("prod")

    report = await copy(
        f"{proxy.address}/{image.repo}:1",
        f"{proxy.address}/{dst_repo}:1",
        registry_v2,
        settings=settings(proxy.address),
    )

    assert fault.hits == 1
    assert proxy.stats.count(method="POST", query=layer_hex) == 1
    assert report.blobs_mounted == 2 and report.blobs_uploaded == 1
    assert crane_digest(registry_v2, f"{registry_v2.host}/{dst_repo}:1") == image.digest
