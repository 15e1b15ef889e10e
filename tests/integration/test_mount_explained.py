"""Why nothing was mounted: ``status.lastCopy.mount`` / ``--json`` ``mount`` and the Ready
sentence, on go-containerregistry (never mounts: 202) and distribution (mounts work)."""

from __future__ import annotations

import pytest

from imagecopy.copy import BlobLocations, CopyOptions
from testkit import images
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, repo

pytestmark = pytest.mark.integration

ANSWERED_202 = "registry answered 202 to cross-repository mounts"
NO_CANDIDATE = "different registries and no known source repository"


@pytest.mark.parametrize(("target", "mounted"), [("registry_ggcr", False), ("registry_v3", True)])
async def test_a_remembered_candidate_mounts_or_the_refusal_is_explained(
    target: str, mounted: bool, registry_v2: RegistryServer, request: pytest.FixtureRequest
) -> None:
    dst: RegistryServer = request.getfixturevalue(target)
    src = images.push_image(registry_v2, repo("dev"), "base", layers=3)
    locations = BlobLocations()
    first = await copy(
        src.ref, f"{dst.host}/{repo('mirror')}:base", registry_v2, dst, locations=locations
    )
    # Different registries, no candidate yet: uploaded, and said why.
    assert first.blobs_uploaded == 4
    assert first.last_copy()["mount"] == {"attempted": 0, "refused": 0, "reason": NO_CANDIDATE}
    assert first.summary().endswith(f"; not mounted: {NO_CANDIDATE}")

    team = repo("team")
    mark = dst.mark()
    second = await copy(src.ref, f"{dst.host}/{team}:base", registry_v2, dst, locations=locations)

    mounts = [e for e in dst.access_log_since(mark) if e.is_mount]
    mount = second.to_json()["mount"]
    assert second.last_copy()["mount"] == mount
    if mounted:
        assert [e.status for e in mounts] == [201] * 4
        assert second.blobs_mounted == 4 and second.blobs_uploaded == 0
        assert mount == {"attempted": 4, "refused": 0, "reason": None}
    else:
        # go-containerregistry keeps one blob store: the HEAD before any mount finds each
        # blob, so no mount is asked and nothing needs explaining.
        assert mounts == []
        assert second.blobs_existing == 4 and second.blobs_uploaded == 0
        assert mount == {"attempted": 0, "refused": 0, "reason": None}
    assert "not mounted" not in second.summary()
    assert crane_digest(dst, f"{dst.host}/{team}:base") == src.digest


async def test_a_mount_answered_202_uploads_into_the_session_and_says_so(
    registry_v2: RegistryServer, registry_ggcr: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "x", layers=2)
    dst = f"{registry_ggcr.host}/{repo('mirror')}:x"
    mark = registry_ggcr.mark()
    report = await copy(
        src.ref,
        dst,
        registry_v2,
        registry_ggcr,
        options=CopyOptions(mount_from=(repo("elsewhere"),)),
    )
    log = registry_ggcr.access_log_since(mark)
    assert [e.status for e in log if e.is_mount] == [202] * 3
    assert not [e for e in log if e.method == "POST" and not e.is_mount]  # the session was used
    assert report.blobs_uploaded == 3
    assert report.last_copy()["mount"] == {"attempted": 3, "refused": 3, "reason": ANSWERED_202}
    assert report.summary().endswith(f"; not mounted: {ANSWERED_202}")
    assert crane_digest(registry_ggcr, dst) == src.digest


async def test_same_registry_on_ggcr_says_why_nothing_was_mounted(
    registry_ggcr: RegistryServer,
) -> None:
    reg = registry_ggcr
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    report = await copy(src.ref, f"{reg.host}/{repo('prod')}:1", reg)
    assert report.blobs_mounted == 0 and report.blobs_existing == 3
    # One probe: its 202 for a blob the source holds says this registry does not mount.
    assert report.last_copy()["mount"] == {"attempted": 1, "refused": 1, "reason": ANSWERED_202}
    # No byte moved: the sentence stays short, the status carries the reason.
    assert "not mounted" not in report.summary()


async def test_same_registry_on_distribution_mounts_everything_and_explains_nothing(
    registry_v2: RegistryServer,
) -> None:
    reg = registry_v2
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    report = await copy(src.ref, f"{reg.host}/{repo('prod')}:1", reg)
    assert report.blobs_mounted == 3
    assert report.last_copy()["mount"] == {"attempted": 3, "refused": 0, "reason": None}
