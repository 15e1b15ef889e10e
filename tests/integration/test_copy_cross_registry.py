"""Cross-registry copies: HEAD, mount candidates, verified streaming; graphs of every shape."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from imagecopy.copy import BlobLocations, CopyOptions, Outcome, TagPolicy
from imagecopy.oci.blobs import BlobOutcome
from imagecopy.oci.descriptor import Descriptor
from imagecopy.oci.errors import (
    DigestMismatch,
    InvalidSpec,
    NotFound,
    Side,
    TagConflict,
    TLSError,
    Unauthorized,
)
from imagecopy.oci.reference import parse_platform
from testkit import images
from testkit.peers import crane_digest, crane_validate, skopeo_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, credentials_for, repo, settings_for

pytestmark = pytest.mark.integration


def _uploads_by_digest(reg: RegistryServer, mark: int) -> Counter[str]:
    """Completed uploads (the PUT carrying ?digest=) per digest, from the access log."""
    return Counter(
        e.q("digest") or ""
        for e in reg.access_log_since(mark)
        if e.method == "PUT" and "/blobs/uploads/" in e.path and e.q("digest")
    )


@pytest.mark.parametrize("target", ["registry_v3", "registry_ggcr"])
async def test_index_with_shared_and_duplicated_layers_uploads_each_blob_once(
    target: str, registry_v2: RegistryServer, request: pytest.FixtureRequest
) -> None:
    """The same counts on distribution v3 and on go-containerregistry (no mounts either way:
    different registries and no known source repository)."""
    registry_v3: RegistryServer = request.getfixturevalue(target)
    src = images.push_index(
        registry_v2,
        repo("dev"),
        "multi",
        platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"),
        layers=2,
        shared_base=True,
        duplicate_layer=True,
        attestations=True,
    )
    dst = f"{registry_v3.host}/{repo('mirror')}:multi"
    mark = registry_v3.mark()

    report = await copy(src.ref, dst, registry_v2, registry_v3)

    uploads = _uploads_by_digest(registry_v3, mark)
    unique = {b["digest"] for b in src.blobs}
    assert set(uploads) == unique
    assert all(count == 1 for count in uploads.values()), uploads
    assert report.blobs_uploaded == len(unique)
    assert report.bytes_uploaded == src.total_blob_bytes
    assert report.manifests_copied == len(src.children) + 1
    assert crane_digest(registry_v3, dst) == src.digest
    crane_validate(registry_v3, dst)


@pytest.mark.parametrize("target", ["registry_v2", "registry_ggcr"])
async def test_nested_index_and_docker_manifest_list(
    target: str, registry_v3: RegistryServer, request: pytest.FixtureRequest
) -> None:
    registry_v2: RegistryServer = request.getfixturevalue(target)
    nested = images.push_nested_index(registry_v3, repo("dev"), "nested")
    dst = f"{registry_v2.host}/{repo('mirror')}:nested"
    report = await copy(nested.ref, dst, registry_v2, registry_v3)
    assert report.manifests_copied == len(nested.manifests)
    assert skopeo_digest(registry_v2, dst) == nested.digest
    crane_validate(registry_v2, dst)

    docker = images.push_index(registry_v3, repo("dev"), "list", docker=True)
    dst2 = f"{registry_v2.host}/{repo('mirror')}:list"
    report2 = await copy(docker.ref, dst2, registry_v2, registry_v3)
    assert report2.blobs_uploaded == len(docker.unique_blobs)
    assert crane_digest(registry_v2, dst2) == docker.digest
    single = images.push_image(registry_v3, repo("dev"), "s2", docker=True)
    dst3 = f"{registry_v2.host}/{repo('mirror')}:s2"
    await copy(single.ref, dst3, registry_v2, registry_v3)
    assert skopeo_digest(registry_v2, dst3) == single.digest


async def test_platform_filter_keeps_attestations_of_kept_platforms(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_index(
        registry_v2,
        repo("dev"),
        "all",
        platforms=("linux/amd64", "linux/arm64", "linux/s390x"),
        attestations=True,
    )
    dst = f"{registry_v3.host}/{repo('subset')}:amd64"
    options = CopyOptions(platforms=(parse_platform("linux/amd64"),))
    report = await copy(src.ref, dst, registry_v2, registry_v3, options=options)

    assert report.source_digest == src.digest
    assert report.destination_digest != src.digest
    raw = images.get_manifest(registry_v3, dst.split("/", 1)[1].split(":")[0], "amd64").json()
    kept = raw["manifests"]
    amd64 = src.children[0]
    assert [m["digest"] for m in kept] == [amd64.digest, src.children[3].digest]
    assert kept[1]["annotations"]["vnd.docker.reference.digest"] == amd64.digest
    assert crane_digest(registry_v3, dst) == report.destination_digest
    crane_validate(registry_v3, dst)
    again = await copy(src.ref, dst, registry_v2, registry_v3, options=options)
    assert again.outcome is Outcome.UP_TO_DATE

    with pytest.raises(InvalidSpec, match="none of the requested platforms"):
        await copy(
            src.ref,
            dst,
            registry_v2,
            registry_v3,
            options=CopyOptions(platforms=(parse_platform("windows/amd64"),)),
        )


async def test_artifact_referrers_copied_through_tag_schema(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src_repo = repo("dev")
    image = images.push_image(registry_v2, src_repo, "signed", layers=1)
    sbom = images.push_artifact(registry_v2, src_repo, image)
    sig = images.push_artifact(
        registry_v2, src_repo, image, artifact_type="application/vnd.example.signature"
    )
    dst_repo = repo("mirror")
    dst = f"{registry_v3.host}/{dst_repo}:signed"

    report = await copy(
        image.ref, dst, registry_v2, registry_v3, options=CopyOptions(referrers=True)
    )

    assert report.referrers == 2
    index = images.referrers_fallback_index(registry_v3, dst_repo, image.digest)
    assert index is not None
    listed = {m["digest"]: m for m in index["manifests"]}
    assert set(listed) == {sbom.digest, sig.digest}
    assert listed[sig.digest]["artifactType"] == "application/vnd.example.signature"
    assert crane_digest(registry_v3, f"{registry_v3.host}/{dst_repo}@{sbom.digest}") == sbom.digest
    # The empty config blob of the artifacts is copied like any other blob.
    assert report.blobs_uploaded == len(image.unique_blobs) + 3
    # Without --referrers nothing but the image moves.
    plain = await copy(image.ref, f"{registry_v3.host}/{repo('plain')}:x", registry_v2, registry_v3)
    assert plain.referrers == 0


async def test_an_artifact_copied_alone_is_listed_in_its_subjects_tag_schema_index(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    """A manifest with a subject, pushed to a registry without the referrers API (no
    ``OCI-Subject`` answer), is added to the subject's ``sha256-<hex>`` index."""
    src_repo = repo("dev")
    image = images.push_image(registry_v2, src_repo, "app", layers=1)
    sbom = images.push_artifact(registry_v2, src_repo, image)
    dst_repo = repo("mirror")
    await copy(image.ref, f"{registry_v3.host}/{dst_repo}:app", registry_v2, registry_v3)
    assert images.referrers_fallback_index(registry_v3, dst_repo, image.digest) is None

    report = await copy(
        f"{registry_v2.host}/{src_repo}@{sbom.digest}",
        f"{registry_v3.host}/{dst_repo}:sbom",
        registry_v2,
        registry_v3,
    )

    assert report.manifests_copied == 1
    index = images.referrers_fallback_index(registry_v3, dst_repo, image.digest)
    assert index is not None
    assert [m["digest"] for m in index["manifests"]] == [sbom.digest]
    assert index["manifests"][0]["artifactType"] == sbom.artifact_type


async def test_remembered_locations_turn_a_cross_registry_copy_into_mounts(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "base", layers=3)
    locations = BlobLocations()
    first_repo = repo("mirror")
    first = await copy(
        src.ref,
        f"{registry_v3.host}/{first_repo}:base",
        registry_v2,
        registry_v3,
        locations=locations,
    )
    assert first.blobs_uploaded == 4
    mark = registry_v3.mark()
    second = await copy(
        src.ref,
        f"{registry_v3.host}/{repo('team')}:base",
        registry_v2,
        registry_v3,
        locations=locations,
    )
    mounts = [e for e in registry_v3.access_log_since(mark) if e.is_mount]
    assert second.blobs_mounted == 4 and second.blobs_uploaded == 0
    assert {e.q("from") for e in mounts} == {first_repo}
    assert all(e.status == 201 for e in mounts)


async def test_remembered_locations_are_offered_only_within_their_tenant(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    # Two namespaces copy the same image into one registry: tenant y's copy is never offered
    # tenant x's repository (it uploads, and no request names x's repository), while x's
    # next copy mounts from it.
    src = images.push_image(registry_v2, repo("dev"), "base", layers=3)
    locations = BlobLocations()
    x_repo = repo("team-x")
    first = await copy(
        src.ref,
        f"{registry_v3.host}/{x_repo}:base",
        registry_v2,
        registry_v3,
        options=CopyOptions(partition="x"),
        locations=locations,
    )
    assert first.blobs_uploaded == 4
    mark = registry_v3.mark()
    other = await copy(
        src.ref,
        f"{registry_v3.host}/{repo('team-y')}:base",
        registry_v2,
        registry_v3,
        options=CopyOptions(partition="y"),
        locations=locations,
    )
    log = registry_v3.access_log_since(mark)
    assert other.blobs_uploaded == 4 and other.blobs_mounted == 0
    assert other.mounts_attempted == 0
    assert not [e for e in log if x_repo in e.path or e.q("from") == x_repo]
    mark = registry_v3.mark()
    again = await copy(
        src.ref,
        f"{registry_v3.host}/{repo('team-x')}:base",
        registry_v2,
        registry_v3,
        options=CopyOptions(partition="x"),
        locations=locations,
    )
    mounts = [e for e in registry_v3.access_log_since(mark) if e.is_mount]
    assert again.blobs_mounted == 4 and again.blobs_uploaded == 0
    assert {e.q("from") for e in mounts} == {x_repo} and all(e.status == 201 for e in mounts)


async def test_mount_from_repository_lacking_the_blob_uploads_into_the_202_session(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "x", layers=2)
    mark = registry_v3.mark()
    report = await copy(
        src.ref,
        f"{registry_v3.host}/{repo('mirror')}:x",
        registry_v2,
        registry_v3,
        options=CopyOptions(mount_from=("nothing/here",)),
    )
    log = registry_v3.access_log_since(mark)
    posts = [e for e in log if e.method == "POST"]
    assert len(posts) == 3 and all(e.is_mount and e.status == 202 for e in posts)
    assert report.blobs_uploaded == 3 and report.blobs_mounted == 0


async def test_corrupt_source_blob_aborts_before_any_manifest_is_pushed(
    registry_v3: RegistryServer,
) -> None:
    with RegistryServer(impl="v2") as src_reg:
        src = images.push_image(src_reg, repo("dev"), "bad", layers=3, layer_size=200_000)
        src_reg.corrupt_blob(src.blobs[2]["digest"])
        dst_repo = repo("mirror")
        mark = registry_v3.mark()
        with pytest.raises(DigestMismatch):
            await copy(src.ref, f"{registry_v3.host}/{dst_repo}:bad", src_reg, registry_v3)
        log = registry_v3.access_log_since(mark)
        assert not [e for e in log if e.method == "PUT" and "/manifests/" in e.path]
        bad = src.blobs[2]["digest"]
        # The upload of the corrupt blob was cut short before its last byte: never committed.
        assert not [e for e in log if e.q("digest") == bad and e.status == 201]
        assert not images.blob_exists(registry_v3, dst_repo, bad)
        assert images.get_manifest(registry_v3, dst_repo, "bad").status_code == 404


async def test_interrupted_copy_resumes_where_it_stopped(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "big", layers=6, layer_size=300_000)
    dst = f"{registry_v3.host}/{repo('mirror')}:big"
    done = asyncio.Event()

    class StopAfterTwo:
        count = 0

        def blob_started(self, desc: Descriptor) -> None:
            pass

        def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
            pass

        def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
            self.count += 1
            if self.count == 2:
                done.set()

    task = asyncio.create_task(
        copy(
            src.ref,
            dst,
            registry_v2,
            registry_v3,
            options=CopyOptions(concurrency=1, progress=StopAfterTwo()),
        )
    )
    await asyncio.wait_for(done.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (
        images.get_manifest(registry_v3, dst.split("/", 1)[1].split(":")[0], "big").status_code
        == 404
    )

    report = await copy(src.ref, dst, registry_v2, registry_v3)
    assert report.blobs_existing >= 2
    assert report.blobs_existing + report.blobs_uploaded == 7
    assert crane_digest(registry_v3, dst) == src.digest
    crane_validate(registry_v3, dst)


async def test_tag_policies(registry_v2: RegistryServer) -> None:
    reg = registry_v2
    a = images.push_image(reg, repo("dev"), "a", layers=1)
    b = images.push_image(reg, repo("dev"), "b", layers=1)
    dst = f"{reg.host}/{repo('prod')}:release"
    await copy(a.ref, dst, reg)

    with pytest.raises(TagConflict, match="Immutable"):
        await copy(b.ref, dst, reg, options=CopyOptions(tag_policy=TagPolicy.IMMUTABLE))
    assert crane_digest(reg, dst) == a.digest
    same = await copy(a.ref, dst, reg, options=CopyOptions(tag_policy=TagPolicy.IMMUTABLE))
    assert same.outcome is Outcome.UP_TO_DATE

    kept = await copy(b.ref, dst, reg, options=CopyOptions(tag_policy=TagPolicy.IF_NOT_PRESENT))
    assert kept.outcome is Outcome.TAG_EXISTS
    assert kept.destination_digest == a.digest
    assert crane_digest(reg, dst) == a.digest

    moved = await copy(b.ref, dst, reg)
    assert moved.outcome is Outcome.COPIED
    assert crane_digest(reg, dst) == b.digest


async def test_dry_run_counts_like_a_real_run_and_writes_nothing(
    registry_v2: RegistryServer, registry_v3: RegistryServer
) -> None:
    src = images.push_index(registry_v2, repo("dev"), "dry", layers=2)
    dst = f"{registry_v3.host}/{repo('mirror')}:dry"
    mark = registry_v3.mark()
    plan = await copy(src.ref, dst, registry_v2, registry_v3, options=CopyOptions(dry_run=True))
    writes = [
        e
        for e in registry_v3.access_log_since(mark)
        if e.method in ("PUT", "POST", "PATCH", "DELETE")
    ]
    assert writes == []
    assert plan.dry_run
    real = await copy(src.ref, dst, registry_v2, registry_v3)
    assert (plan.blobs_uploaded, plan.blobs_mounted, plan.blobs_existing) == (
        real.blobs_uploaded,
        real.blobs_mounted,
        real.blobs_existing,
    )
    assert plan.manifests_copied == real.manifests_copied
    assert plan.bytes_total == real.bytes_total


async def test_basic_auth_copy_and_wrong_password(
    registry_v2_basic: RegistryServer, registry_v2: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "1", layers=2)
    dst = f"{registry_v2_basic.host}/{repo('priv')}:1"
    report = await copy(src.ref, dst, registry_v2, registry_v2_basic)
    assert report.blobs_uploaded == 3
    assert skopeo_digest(registry_v2_basic, dst) == src.digest

    wrong = credentials_for()  # anonymous
    with pytest.raises(Unauthorized) as err:
        await copy(src.ref, dst + "x", registry_v2, registry_v2_basic, credentials=wrong)
    assert registry_v2_basic.password not in str(err.value)


async def test_tls_registry_needs_its_ca(
    registry_tls: RegistryServer, registry_v2: RegistryServer
) -> None:
    src = images.push_image(registry_v2, repo("dev"), "tls", layers=1)
    dst = f"{registry_tls.host}/{repo('secure')}:tls"
    with pytest.raises(TLSError):
        await copy(
            src.ref,
            dst,
            registry_v2,
            registry_tls,
            settings=settings_for(registry_v2).__class__(plain_http=frozenset({registry_v2.host})),
        )
    report = await copy(src.ref, dst, registry_v2, registry_tls)
    assert report.blobs_uploaded == 2
    assert crane_digest(registry_tls, dst) == src.digest


async def test_missing_source_is_a_clear_error(registry_v2: RegistryServer) -> None:
    with pytest.raises(NotFound, match="not found") as caught:
        await copy(
            f"{registry_v2.host}/{repo('nope')}:1", f"{registry_v2.host}/{repo('x')}:1", registry_v2
        )
    assert caught.value.side is Side.SOURCE
