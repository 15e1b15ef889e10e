"""A registry that refuses mounts is asked once per memory period, not once per blob or per
copy: real distribution behind a fault proxy answering every mount with the status given."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imagecopy.copy import CopyOptions
from imagecopy.copy.refusals import MountRefusals
from imagecopy.oci.pool import TransportSettings
from testkit import images
from testkit.netproxy import NetProxy
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import FAST_RETRY, copy, repo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("status", [401, 403, 405, 418])
async def test_a_fleet_of_copies_pays_one_refused_mount_per_memory_period(
    registry_v2: RegistryServer, netproxy: Callable[..., NetProxy], status: int
) -> None:
    proxy = netproxy(registry_v2.host)
    proxy.add_fault(method="POST", query="mount=", status=status, times=None)
    settings = TransportSettings(plain_http=frozenset({proxy.address}), retry=FAST_RETRY)
    refusals = MountRefusals(600)
    reports = []
    for n in range(3):
        src = images.push_image(registry_v2, repo("dev"), str(n), layers=3)
        dst = f"{proxy.address}/{repo('prod')}:{n}"
        before = proxy.stats.count(method="POST", query="mount=")
        report = await copy(
            f"{proxy.address}/{src.repo}:{n}", dst, settings=settings, refusals=refusals
        )
        reports.append((report, proxy.stats.count(method="POST", query="mount=") - before))
        assert report.blobs_uploaded == 4 and report.blobs_mounted == 0
        assert crane_digest(registry_v2, f"{registry_v2.host}/{dst.split('/', 1)[1]}") == (
            src.digest
        )
    first, first_mounts = reports[0]
    # The probe alone was refused: the other blobs of the copy did not ask.
    assert first_mounts == 1
    assert first.last_copy()["mount"] == {
        "attempted": 1,
        "refused": 1,
        "reason": f"registry answered {status} to cross-repository mounts",
    }
    for later, mounts in reports[1:]:
        assert mounts == 0
        mount = later.last_copy()["mount"]
        assert mount["attempted"] == 0 and mount["refused"] == 0
        assert mount["reason"].startswith(
            f"registry refused cross-repository mounts recently ({status}); "
            "not asked again until 20"
        )
        assert "not mounted: registry refused cross-repository mounts recently" in (later.summary())


async def test_without_the_memory_each_copy_asks_again_and_mounts_when_allowed_again(
    registry_v2: RegistryServer, netproxy: Callable[..., NetProxy]
) -> None:
    proxy = netproxy(registry_v2.host)
    fault = proxy.add_fault(method="POST", query="mount=", status=401, times=None)
    settings = TransportSettings(plain_http=frozenset({proxy.address}), retry=FAST_RETRY)
    off = MountRefusals(0)
    src = images.push_image(registry_v2, repo("dev"), "1", layers=2)
    for _ in range(2):
        before = fault.hits
        await copy(
            f"{proxy.address}/{src.repo}:1",
            f"{proxy.address}/{repo('prod')}:1",
            settings=settings,
            refusals=off,
        )
        assert fault.hits - before == 1  # one probe per copy, nothing remembered
    proxy.clear_faults()
    report = await copy(
        f"{proxy.address}/{src.repo}:1",
        f"{proxy.address}/{repo('prod')}:1",
        settings=settings,
        refusals=off,
        options=CopyOptions(),
    )
    assert report.blobs_mounted == 3 and report.last_copy()["mount"]["reason"] is None
