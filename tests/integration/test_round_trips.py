"""Round trips on the critical path of a same-registry copy (issue 14), counted at a real proxy.

The net proxy delays every request and response, so requests that depend on each other are
strictly sequential in its log: the longest chain of requests each starting after the previous
one's response ended is the number of round trips the copy could not overlap. The tests count
requests and that chain, never time.
"""

from __future__ import annotations

import pytest

from imagecopy.copy import CopyOptions, Outcome
from imagecopy.copy.refusals import MountRefusals
from imagecopy.oci.pool import TransportSettings
from testkit import images
from testkit.netproxy import NetProxy, RequestRecord
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import FAST_RETRY, copy, repo

pytestmark = pytest.mark.integration

#: Per direction: a 400 ms round trip, far above the client's own time between the requests
#: of one wave even on a loaded machine (it was over 100 ms on a load of 15 on two cores), so
#: a wave never looks like a chain.
DELAY_MS = 200.0


def critical_chain(log: list[RequestRecord]) -> int:
    """The longest chain of strictly sequential requests (earliest-ending first, greedily)."""
    spans = sorted(
        ((r.started, r.started + r.duration_ms / 1000.0) for r in log), key=lambda s: s[1]
    )
    chain, last_end = 0, float("-inf")
    for start, end in spans:
        if start >= last_end:
            chain += 1
            last_end = end
    return chain


def _settings(proxy: NetProxy) -> TransportSettings:
    return TransportSettings(plain_http=frozenset({proxy.address}), retry=FAST_RETRY)


async def test_index_of_four_platforms_takes_six_round_trips(
    registry_v2: RegistryServer, netproxy: NetProxy
) -> None:
    """HEAD destination tag with GET index → GET the 4 children → 33 mounts in two waves of
    at most 32 (with the children's HEADs) → PUT each child → PUT the index: 6 round trips,
    48 requests (the shape of the benchmark's same-registry-index image)."""
    src = images.push_index(
        registry_v2,
        repo("dev"),
        "v1",
        platforms=("linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x"),
        layers=7,
        layer_size=1024,
    )
    unique = {b["digest"] for b in src.blobs}
    assert len(unique) == 4 * 7 + 1 + 4  # fresh layers, the shared base, the configs
    proxy = netproxy(registry_v2.host, delay_ms=DELAY_MS)
    host = proxy.address

    report = await copy(
        f"{host}/{src.repo}:v1", f"{host}/{repo('prod')}:v1", settings=_settings(proxy)
    )

    log = proxy.stats.log
    assert report.outcome is Outcome.COPIED and report.blobs_mounted == len(unique)
    mounts = [r for r in log if r.method == "POST" and "mount=" in r.query]
    assert len(mounts) == len(unique)
    # 1 HEAD tag + 1 GET index + 4 GET children + 4 HEAD children + 33 mounts + 5 PUTs
    assert len(log) == report.requests == 1 + 1 + 4 + 4 + len(unique) + 5
    assert critical_chain(log) == 6, _dump(log)


async def test_mounts_beyond_the_mount_limit_add_one_round_trip_per_wave(
    registry_v2: RegistryServer, netproxy: NetProxy
) -> None:
    """The same copy with mounts limited to 16 at once: 33 mounts take at least three waves
    (more when a slow mount lets a fast connection take several in a row), one more than
    the two of 32."""
    src = images.push_index(
        registry_v2,
        repo("dev"),
        "v1",
        platforms=("linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x"),
        layers=7,
        layer_size=1024,
    )
    proxy = netproxy(registry_v2.host, delay_ms=DELAY_MS)
    host = proxy.address

    report = await copy(
        f"{host}/{src.repo}:v1",
        f"{host}/{repo('prod')}:v1",
        options=CopyOptions(mount_concurrency=16),
        settings=_settings(proxy),
    )

    assert report.outcome is Outcome.COPIED
    assert critical_chain(proxy.stats.log) >= 7, _dump(proxy.stats.log)


async def test_single_image_of_twenty_layers_takes_three_round_trips(
    registry_v2: RegistryServer, netproxy: NetProxy
) -> None:
    """HEAD destination tag with GET manifest → 21 mounts in one wave → PUT manifest: once
    the process knows the registry mounts for this credential. The first copy of a period
    sends one mount alone first (the probe: a refusing registry then costs one refused
    request, not 21), one round trip more; a copy that does not fetch the source early (the
    operator's re-check of a Ready object, here finding a new destination) one more too."""
    src = images.push_image(registry_v2, repo("dev"), "v1", layers=20, layer_size=1024)
    proxy = netproxy(registry_v2.host, delay_ms=DELAY_MS)
    host = proxy.address
    refusals = MountRefusals()

    first = await copy(
        f"{host}/{src.repo}:v1",
        f"{host}/{repo('prod')}:v1",
        settings=_settings(proxy),
        refusals=refusals,
    )
    assert first.outcome is Outcome.COPIED and first.blobs_mounted == 21
    assert len(proxy.stats.log) == first.requests == 21 + 3
    assert critical_chain(proxy.stats.log) == 4, _dump(proxy.stats.log)

    proxy.reset_stats()
    report = await copy(
        f"{host}/{src.repo}:v1",
        f"{host}/{repo('prod')}:v1",
        settings=_settings(proxy),
        refusals=refusals,
    )

    assert report.outcome is Outcome.COPIED and report.blobs_mounted == 21
    assert len(proxy.stats.log) == report.requests == 21 + 3
    assert critical_chain(proxy.stats.log) == 3, _dump(proxy.stats.log)

    proxy.reset_stats()
    sequential = await copy(
        f"{host}/{src.repo}:v1",
        f"{host}/{repo('prod')}:v1",
        options=CopyOptions(fetch_source_early=False),
        settings=_settings(proxy),
        refusals=refusals,
    )
    assert sequential.outcome is Outcome.COPIED and sequential.blobs_mounted == 21
    assert len(proxy.stats.log) == sequential.requests == 21 + 3
    assert critical_chain(proxy.stats.log) == 4, _dump(proxy.stats.log)


def _dump(log: list[RequestRecord]) -> str:
    t0 = min(r.started for r in log)
    return "\n".join(
        f"{(r.started - t0) * 1000:8.1f} {r.duration_ms:7.1f} {r.method} {r.path[-24:]} {r.query[:20]}"
        for r in sorted(log, key=lambda r: r.started)
    )
