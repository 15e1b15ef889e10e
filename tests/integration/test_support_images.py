"""The image builders push valid content, and independent peers (crane, skopeo) agree."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable

import pytest

from testkit import images as im
from testkit.peers import crane_digest, crane_validate, skopeo_digest, skopeo_inspect_raw
from testkit.registry import RegistryServer
from tests.support.fixtures import UniqueRepo

pytestmark = pytest.mark.integration


def test_make_layer_is_a_deterministic_gzipped_tar() -> None:
    a, b = im.make_layer(3000, seed=7), im.make_layer(3000, seed=7)
    assert a.digest == b.digest and a.data == b.data
    assert im.make_layer(3000, seed=8).digest != a.digest
    assert a.data is not None and a.size == len(a.data)
    raw = gzip.decompress(a.data)
    assert im.blob_digest(raw) == a.diff_id
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        (member,) = tar.getmembers()
        assert member.size == 3000
    assert len(a.data) > 3000  # incompressible


@pytest.mark.parametrize("impl", ["v2", "v3"])
def test_builders_and_peers_agree(
    impl: str, request: pytest.FixtureRequest, unique_repo: UniqueRepo, peer_tools: dict[str, str]
) -> None:
    reg: RegistryServer = request.getfixturevalue(f"registry_{impl}")
    oci = im.push_image(reg, unique_repo("oci"), "v1", layers=3)
    docker = im.push_image(reg, unique_repo("docker"), "v1", docker=True)
    index = im.push_index(reg, unique_repo("index"), "v1", duplicate_layer=True, attestations=True)
    mlist = im.push_index(
        reg, unique_repo("list"), "v1", docker=True, platforms=("linux/amd64", "linux/arm/v7")
    )
    nested = im.push_nested_index(reg, unique_repo("nested"), "v1")
    for img in (oci, docker, index, mlist, nested):
        assert crane_digest(reg, img.ref) == img.digest
        assert skopeo_digest(reg, img.ref) == img.digest
        crane_validate(reg, img.ref)
    assert skopeo_inspect_raw(reg, index.ref) == index.manifest
    assert docker.media_type == im.DOCKER_MANIFEST and mlist.media_type == im.DOCKER_LIST
    assert len(oci.blobs) == 4 and oci.total_blob_bytes == sum(b["size"] for b in oci.blobs)
    # shared base layer + a duplicated layer: blobs keep duplicates, unique_blobs does not
    assert len(index.blobs) > len(index.unique_blobs)
    amd64 = index.children[0].manifest_json
    arm64 = index.children[1].manifest_json
    assert amd64["layers"][0]["digest"] == arm64["layers"][0]["digest"]
    assert amd64["layers"][-1]["digest"] == amd64["layers"][1]["digest"]
    atts = [m for m in index.manifest_json["manifests"] if m.get("annotations")]
    assert len(atts) == 2
    for a in atts:
        assert a["platform"] == {"architecture": "unknown", "os": "unknown"}
        assert a["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    assert {a["annotations"]["vnd.docker.reference.digest"] for a in atts} == {
        index.children[0].digest,
        index.children[1].digest,
    }
    assert nested.manifest_json["manifests"][0]["mediaType"] == im.OCI_INDEX
    assert [m.digest for m in nested.manifests][-1] == nested.digest


@pytest.mark.parametrize("impl", ["v2", "v3"])
def test_artifacts_referrers_fallback_and_no_referrers_api(
    impl: str, request: pytest.FixtureRequest, unique_repo: UniqueRepo, peer_tools: dict[str, str]
) -> None:
    reg: RegistryServer = request.getfixturevalue(f"registry_{impl}")
    repo = unique_repo()
    subject = im.push_image(reg, repo, "v1")
    sbom = im.push_artifact(reg, repo, subject)
    sig = im.push_artifact(reg, repo, subject, artifact_type="application/vnd.example.signature")
    m = sbom.manifest_json
    assert m["config"] == {"mediaType": im.EMPTY_CONFIG, "digest": im.EMPTY_JSON_DIGEST, "size": 2}
    assert m["artifactType"] == sbom.artifact_type and m["subject"]["digest"] == subject.digest
    assert crane_digest(reg, sbom.digest_ref) == sbom.digest
    fallback = im.referrers_fallback_index(reg, repo, subject.digest)
    assert fallback is not None
    assert [(d["digest"], d["artifactType"]) for d in fallback["manifests"]] == [
        (sbom.digest, sbom.artifact_type),
        (sig.digest, sig.artifact_type),
    ]
    # neither distribution 2.8.2 nor v3.1.1 serves the referrers API
    with reg.client() as c:
        assert c.get(f"/v2/{repo}/referrers/{subject.digest}").status_code == 404


def test_big_blob_is_streamed(registry_v3: RegistryServer, unique_repo: UniqueRepo) -> None:
    """A small size keeps the test fast; 512 MiB (the default) is for memory benchmarks."""
    reg = registry_v3
    repo = unique_repo()
    size = 3 * 1024 * 1024 + 123
    img = im.push_big_image(reg, repo, "big", size)
    layer = img.manifest_json["layers"][0]
    assert layer["size"] == im.tar_stream_size(size)
    mark = reg.mark()
    with reg.client() as c, c.stream("GET", f"/v2/{repo}/blobs/{layer['digest']}") as r:
        h = hashlib.sha256()
        for chunk in r.iter_bytes():
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == layer["digest"]
    assert [e.bytes for e in reg.access_log_since(mark) if e.method == "GET"] == [layer["size"]]


def test_seed_makes_shared_layers(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo
) -> None:
    reg = start_registry(impl="v2", auth="basic")
    base = im.make_layer(1500, seed=42)
    a = im.push_image(reg, unique_repo("a"), "v1", base_layers=[base])
    b = im.push_image(reg, unique_repo("b"), "v1", base_layers=[base])
    assert a.blobs[1]["digest"] == b.blobs[1]["digest"] == base.digest
    assert json.loads(a.manifest)["layers"][0]["digest"] == base.digest
