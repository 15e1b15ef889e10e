"""Same-registry copies: mount-first, one POST per blob, no HEAD, read back by peers."""

from __future__ import annotations

import httpx
import pytest

from imagecopy.copy import CopyOptions, Outcome
from testkit import images
from testkit.peers import crane_digest, skopeo_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, repo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("which", ["registry_v2", "registry_v3"])
async def test_same_registry_copy_mounts_every_blob_without_head(
    which: str, request: pytest.FixtureRequest
) -> None:
    reg: RegistryServer = request.getfixturevalue(which)
    n = 5
    src = images.push_image(reg, repo("dev"), "1.4", layers=n, layer_size=4096)
    dst_repo = repo("prod")
    mark = reg.mark()

    report = await copy(src.ref, f"{reg.host}/{dst_repo}:1.4", reg)

    log = reg.access_log_since(mark)
    mounts = [e for e in log if e.is_mount]
    assert len(mounts) == n + 1
    assert all(e.status == 201 and e.q("from") == src.repo for e in mounts)
    others = [e for e in log if e.is_blob_request and not e.is_mount]
    assert others == [], [str(e) for e in others]
    assert report.blobs_mounted == n + 1
    assert report.blobs_uploaded == 0 and report.blobs_existing == 0
    assert report.bytes_saved == report.bytes_total == src.total_blob_bytes
    assert report.requests == n + 1 + 3  # HEAD dst tag, GET src manifest, PUT manifest
    assert report.outcome is Outcome.COPIED
    assert report.destination_digest == src.digest
    assert crane_digest(reg, f"{reg.host}/{dst_repo}:1.4") == src.digest


async def test_bearer_copy_mounts_because_token_carries_source_pull(
    registry_v3_token: RegistryServer,
) -> None:
    reg = registry_v3_token
    src = images.push_image(reg, repo("dev"), "2.0", layers=3)
    dst_repo = repo("prod")
    issuer = reg.token_issuer
    assert issuer is not None
    mark = reg.mark()

    report = await copy(src.ref, f"{reg.host}/{dst_repo}:2.0", reg)

    mounts = [e for e in reg.access_log_since(mark) if e.is_mount]
    assert [e.status for e in mounts if e.status != 401] == [201] * 4
    assert report.blobs_mounted == 4 and report.blobs_uploaded == 0
    asked = [
        {(s.name, frozenset(s.actions)) for s in r.scopes_requested}
        for r in issuer.requests
        if r.user == reg.username
    ]
    wanted = {(dst_repo, frozenset({"push", "pull"})), (src.repo, frozenset({"pull"}))}
    assert any(wanted <= s for s in asked), asked
    assert skopeo_digest(reg, f"{reg.host}/{dst_repo}:2.0") == src.digest


async def test_same_registry_copy_on_ggcr_finds_every_blob_without_a_mount(
    registry_ggcr: RegistryServer,
) -> None:
    """go-containerregistry never mounts: the first blob's mount POST (the probe) opens a
    session (202); its one blob store answers the HEAD that follows with 200, so the session
    is cancelled and the blob counted `existing`. A 202 for a blob the source holds says the
    registry does not mount: the other blobs are only looked for (one HEAD each)."""
    reg = registry_ggcr
    n = 3
    src = images.push_image(reg, repo("dev"), "1.4", layers=n, layer_size=4096)
    dst_repo = repo("prod")
    mark = reg.mark()

    report = await copy(src.ref, f"{reg.host}/{dst_repo}:1.4", reg)

    log = reg.access_log_since(mark)
    mounts = [e for e in log if e.is_mount]
    assert len(mounts) == 1
    assert all(e.status == 202 and e.q("from") == src.repo for e in mounts)
    heads = [e for e in log if e.method == "HEAD" and "/blobs/" in e.path]
    assert [e.status for e in heads] == [200] * (n + 1)
    cancels = [e for e in log if e.method == "DELETE" and "/blobs/uploads/" in e.path]
    assert len(cancels) == 1
    assert not [e for e in log if e.method in ("PUT", "PATCH") and "/blobs/" in e.path]
    assert report.blobs_existing == n + 1
    assert report.blobs_mounted == 0 and report.blobs_uploaded == 0
    assert report.bytes_saved == report.bytes_total == src.total_blob_bytes
    # The probe (mount, HEAD, DELETE), a HEAD per other blob, and three manifest requests.
    assert report.requests == 3 + n + 3
    assert crane_digest(reg, f"{reg.host}/{dst_repo}:1.4") == src.digest


@pytest.mark.parametrize("which", ["registry_v2", "registry_ggcr"])
async def test_same_repository_retag_sends_no_blob_request(
    which: str, request: pytest.FixtureRequest
) -> None:
    reg: RegistryServer = request.getfixturevalue(which)
    src = images.push_image(reg, repo("web"), "1.4", layers=2)
    mark = reg.mark()
    report = await copy(src.ref, f"{reg.host}/{src.repo}:stable", reg)
    log = reg.access_log_since(mark)
    assert [e for e in log if e.is_blob_request] == []
    # The destination HEAD and the source GET are in flight together, then the PUT.
    methods = [e.method for e in log]
    assert sorted(methods[:2]) == ["GET", "HEAD"] and methods[2:] == ["PUT"]
    assert report.blobs_total == 0
    assert crane_digest(reg, f"{reg.host}/{src.repo}:stable") == src.digest


@pytest.mark.parametrize("which", ["registry_v2", "registry_ggcr"])
async def test_noop_rerun_costs_two_requests(which: str, request: pytest.FixtureRequest) -> None:
    """A copy expected to have work (the default) GETs the source while it HEADs the
    destination; a re-check (the operator's, of a Ready object) HEADs both, pulling nothing."""
    reg: RegistryServer = request.getfixturevalue(which)
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    dst_repo = repo("prod")
    dst = f"{reg.host}/{dst_repo}:1"
    first = await copy(src.ref, dst, reg)
    assert first.outcome is Outcome.COPIED
    mark = reg.mark()
    again = await copy(src.ref, dst, reg)
    assert again.outcome is Outcome.UP_TO_DATE and again.requests == 2
    log = reg.access_log_since(mark)
    assert sorted((e.method, e.repo) for e in log) == [("GET", src.repo), ("HEAD", dst_repo)]
    assert again.destination_digest == src.digest
    mark = reg.mark()
    recheck = await copy(src.ref, dst, reg, options=CopyOptions(fetch_source_early=False))
    assert recheck.outcome is Outcome.UP_TO_DATE and recheck.requests == 2
    assert [e.method for e in reg.access_log_since(mark)] == ["HEAD", "HEAD"]


async def test_mount_202_counts_blob_existing_and_cancels_session(
    registry_v2: RegistryServer,
) -> None:
    """The source repository lost its link to one blob (mount answers 202) while the
    destination already holds it: HEAD, cancel the session, count it `existing`."""
    reg = registry_v2
    src = images.push_image(reg, repo("dev"), "1", layers=2)
    dst_repo = repo("prod")
    layer = src.blobs[1]
    # Put exactly that layer into the destination repository, then unlink it from the source.
    with httpx.Client(headers=reg.admin_headers([dst_repo, src.repo], ["push", "pull"])) as c:
        r = c.post(
            f"{reg.url}/v2/{dst_repo}/blobs/uploads/",
            params={"mount": layer["digest"], "from": src.repo},
        )
        assert r.status_code == 201
        r = c.delete(f"{reg.url}/v2/{src.repo}/blobs/{layer['digest']}")
        assert r.status_code == 202
    mark = reg.mark()

    report = await copy(src.ref, f"{reg.host}/{dst_repo}:1", reg)

    log = reg.access_log_since(mark)
    assert report.blobs_existing == 1 and report.bytes_existing == layer["size"]
    assert report.blobs_mounted == 2
    assert any(e.method == "DELETE" and "/blobs/uploads/" in e.path for e in log)
    heads = [e for e in log if e.method == "HEAD" and "/blobs/" in e.path]
    assert len(heads) == 1
    assert crane_digest(reg, f"{reg.host}/{dst_repo}:1") == src.digest


async def test_additional_tags_and_digest_only_destination(registry_v3: RegistryServer) -> None:
    reg = registry_v3
    src = images.push_image(reg, repo("dev"), "3.1", layers=1)
    dst_repo = repo("prod")
    report = await copy(
        src.ref,
        f"{reg.host}/{dst_repo}:3.1",
        reg,
        options=CopyOptions(additional_tags=("stable", "3")),
    )
    for tag in ("3.1", "stable", "3"):
        assert crane_digest(reg, f"{reg.host}/{dst_repo}:{tag}") == src.digest
    assert report.tags == ["3.1", "stable", "3"]

    other = repo("pinned")
    pinned = await copy(src.digest_ref, f"{reg.host}/{other}@{src.digest}", reg)
    assert pinned.destination_digest == src.digest
    assert crane_digest(reg, f"{reg.host}/{other}@{src.digest}") == src.digest
    again = await copy(src.digest_ref, f"{reg.host}/{other}@{src.digest}", reg)
    assert again.outcome is Outcome.UP_TO_DATE and again.requests == 2  # HEAD ‖ GET
    recheck = await copy(
        src.digest_ref,
        f"{reg.host}/{other}@{src.digest}",
        reg,
        options=CopyOptions(fetch_source_early=False),
    )
    assert recheck.outcome is Outcome.UP_TO_DATE and recheck.requests == 1
