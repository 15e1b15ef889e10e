"""The referrers API where a registry has it (go-containerregistry), the tag schema where it
does not (distribution): listing, ``artifactType`` filtering, and pushing with no tag schema
index when the destination's API lists the push."""

from __future__ import annotations

import json

import httpx
import pytest

from imagecopy.copy import CopyOptions
from imagecopy.oci.errors import Side
from imagecopy.oci.pool import RegistryPool
from imagecopy.oci.reference import Reference
from imagecopy.oci.referrers import find_referrers, referrers_tag
from testkit import images
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from tests.integration.copyhelpers import copy, repo, settings_for

pytestmark = pytest.mark.integration

SIG = "application/vnd.example.signature"


def _api_listing(reg: RegistryServer, name: str, subject: str) -> set[str]:
    with reg.client() as c:
        r = c.get(f"/v2/{name}/referrers/{subject}")
    assert r.status_code == 200, r.text
    return {m["digest"] for m in r.json()["manifests"]}


async def test_ggcr_to_ggcr_lists_by_the_api_and_writes_no_tag_schema_index(
    registry_ggcr: RegistryServer,
) -> None:
    reg = registry_ggcr
    src_repo = repo("dev")
    image = images.push_image(reg, src_repo, "signed", layers=1)
    # pushed as a client of the API would: no tag schema index at the source
    sbom = images.push_artifact(reg, src_repo, image, referrers_tag_fallback=False)
    sig = images.push_artifact(
        reg, src_repo, image, artifact_type=SIG, referrers_tag_fallback=False
    )
    dst_repo = repo("mirror")
    mark = reg.mark()

    report = await copy(
        image.ref, f"{reg.host}/{dst_repo}:signed", reg, options=CopyOptions(referrers=True)
    )

    assert report.referrers == 2
    log = reg.access_log_since(mark)
    tag = referrers_tag(image.digest)
    assert not [e for e in log if e.path.endswith(f"/manifests/{tag}")], [str(e) for e in log]
    listed = [e for e in log if "/referrers/" in e.path]
    # source: one listing per subject level (the image, then each referrer as a subject);
    # destination: one listing confirms the push was indexed
    assert all(e.status == 200 for e in listed)
    assert [e for e in listed if e.repo == dst_repo and e.method == "GET"]
    assert _api_listing(reg, dst_repo, image.digest) == {sbom.digest, sig.digest}
    assert images.referrers_fallback_index(reg, dst_repo, image.digest) is None
    assert crane_digest(reg, f"{reg.host}/{dst_repo}@{sig.digest}") == sig.digest


async def test_distribution_to_ggcr_uses_the_destinations_api(
    registry_v2: RegistryServer, registry_ggcr: RegistryServer
) -> None:
    src_repo = repo("dev")
    image = images.push_image(registry_v2, src_repo, "signed", layers=1)
    sbom = images.push_artifact(registry_v2, src_repo, image)
    dst_repo = repo("mirror")

    report = await copy(
        image.ref,
        f"{registry_ggcr.host}/{dst_repo}:signed",
        registry_v2,
        registry_ggcr,
        options=CopyOptions(referrers=True),
    )

    assert report.referrers == 1
    assert _api_listing(registry_ggcr, dst_repo, image.digest) == {sbom.digest}
    assert images.referrers_fallback_index(registry_ggcr, dst_repo, image.digest) is None


async def test_ggcr_to_distribution_falls_back_to_the_tag_schema(
    registry_ggcr: RegistryServer, registry_v3: RegistryServer
) -> None:
    src_repo = repo("dev")
    image = images.push_image(registry_ggcr, src_repo, "signed", layers=1)
    sbom = images.push_artifact(registry_ggcr, src_repo, image, referrers_tag_fallback=False)
    dst_repo = repo("mirror")
    mark = registry_v3.mark()

    report = await copy(
        image.ref,
        f"{registry_v3.host}/{dst_repo}:signed",
        registry_ggcr,
        registry_v3,
        options=CopyOptions(referrers=True),
    )

    assert report.referrers == 1
    index = images.referrers_fallback_index(registry_v3, dst_repo, image.digest)
    assert index is not None and [m["digest"] for m in index["manifests"]] == [sbom.digest]
    probes = [e for e in registry_v3.access_log_since(mark) if "/referrers/" in e.path]
    assert [e.status for e in probes] == [404]  # asked once, then remembered


def _push_typed_by_config(
    reg: RegistryServer, name: str, subject: images.PushedImage, kind: str
) -> str:
    """An artifact typed by its config media type: go-containerregistry lists the config's
    media type as ``artifactType`` (it ignores the manifest's own ``artifactType``)."""
    config = json.dumps({"kind": kind}).encode()
    blob = images.Blob(images.blob_digest(config), len(config), kind, config)
    images.push_blob(reg, name, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": images.OCI_MANIFEST,
        "config": blob.descriptor(),
        "layers": [],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": len(subject.manifest),
        },
    }
    body = json.dumps(manifest).encode()
    return images.push_manifest(reg, name, images.blob_digest(body), body, images.OCI_MANIFEST)


async def test_artifact_type_filter_on_a_registry_that_does_not_apply_it(
    registry_ggcr: RegistryServer,
) -> None:
    reg = registry_ggcr
    src_repo = repo("dev")
    image = images.push_image(reg, src_repo, "signed", layers=1)
    _push_typed_by_config(reg, src_repo, image, "application/vnd.example.sbom")
    sig = _push_typed_by_config(reg, src_repo, image, SIG)
    with httpx.Client() as c:  # the registry lists both whatever the filter
        r = c.get(f"{reg.url}/v2/{src_repo}/referrers/{image.digest}", params={"artifactType": SIG})
        assert len(r.json()["manifests"]) == 2 and "OCI-Filters-Applied" not in r.headers
    mark = reg.mark()
    async with RegistryPool(settings_for(reg)) as pool:
        client = pool.session().repository(Reference.parse(image.ref), Side.SOURCE)
        found = await find_referrers(client, image.digest, SIG)
    assert [d.digest for d in found.descriptors] == [sig] and found.from_api
    asked = [e for e in reg.access_log_since(mark) if "/referrers/" in e.path]
    assert [e.q("artifactType") for e in asked] == [SIG]
