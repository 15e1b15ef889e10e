"""Signatures travel, and the verification gate, against real registries and the real cosign.

cosign v2 signs, attests and attaches SBOMs with legacy ``sha256-<hex>.sig/.att/.sbom`` tags;
cosign v3 pushes sigstore bundles as OCI referrers. After our copy, cosign itself verifies the
destination (``verify --key … --insecure-ignore-tlog``) and reads the attestations back
(``verify-attestation``, ``download attestation``, ``tree``): our client is not the judge of
its own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagecopy.copy import CopyOptions, Outcome
from imagecopy.copy.verify import VerifyPolicy, load_key
from imagecopy.oci.errors import SignatureInvalid, SignatureMissing
from testkit import images
from testkit.cosign import Cosign, KeyPair, cosign
from testkit.registry import RegistryServer
from testkit.tools import REPO_ROOT, find_tool
from tests.integration.copyhelpers import copy, repo
from tests.support.fixtures import require_tool

pytestmark = pytest.mark.integration

WRITES = ("PUT", "POST", "PATCH", "DELETE")
PREDICATE = {"buildType": "https://example.com/ci", "builder": {"id": "ci"}}
SBOM = json.dumps({"spdxVersion": "SPDX-2.3", "name": "web", "SPDXID": "SPDXRef-DOCUMENT"})


@pytest.fixture(scope="module")
def cosign2() -> Cosign:
    require_tool("cosign2", find_tool("cosign2"))
    return cosign(2)


@pytest.fixture(scope="module")
def cosign3() -> Cosign:
    require_tool("cosign3", find_tool("cosign3"))
    return cosign(3)


@pytest.fixture(scope="module")
def keys(cosign2: Cosign, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, KeyPair]]:
    root = tmp_path_factory.mktemp("keys")
    yield {
        "release": cosign2.generate_key_pair(root / "release"),
        "other": cosign2.generate_key_pair(root / "other"),
    }


def policy(*pairs: KeyPair) -> VerifyPolicy:
    return VerifyPolicy(
        tuple(load_key(f"keys/{p.pub.parent.name}.pub", p.pub.read_bytes()) for p in pairs)
    )


def writes(reg: RegistryServer, mark: int, name: str) -> list[str]:
    return [str(e) for e in reg.access_log_since(mark) if e.repo == name and e.method in WRITES]


def sign_everything(tool: Cosign, reg: RegistryServer, ref: str, pair: KeyPair) -> None:
    tool.sign(reg, ref, pair)
    tool.attest(reg, ref, pair, PREDICATE)
    if tool.major == 2:
        tool.attach_sbom(reg, ref, SBOM)


@pytest.mark.parametrize("same_registry", [False, True], ids=["cross-registry", "same-registry"])
async def test_cosign_v2_tags_travel_and_cosign_verifies_the_destination(
    same_registry: bool,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    cosign2: Cosign,
    keys: dict[str, KeyPair],
) -> None:
    source, target = registry_v2, (registry_v2 if same_registry else registry_v3)
    src_repo, dst_repo = repo("dev"), repo("prod")
    image = images.push_image(source, src_repo, "1.0", layers=2)
    sign_everything(cosign2, source, source.ref(src_repo, image.digest), keys["release"])
    dst = target.ref(dst_repo, "1.0")

    options = CopyOptions(referrers=True, verify=policy(keys["release"]))
    report = await copy(source.ref(src_repo, "1.0"), dst, source, target, options=options)

    assert report.outcome is Outcome.COPIED
    assert report.referrers == 3  # .sig, .att, .sbom
    assert report.verification is not None and report.verification.verified
    assert report.verification.keys == ("keys/release.pub",)
    if same_registry:
        assert report.blobs_uploaded == 0  # signature blobs are mounted like any blob
    verified = cosign2.verify(target, dst, keys["release"].pub)
    assert verified[0]["critical"]["image"]["docker-manifest-digest"] == image.digest  # type: ignore[index]
    cosign2.verify_attestation(target, dst, keys["release"].pub)
    statements = cosign2.download_attestation(target, dst)
    assert statements and statements[0]["payloadType"] == "application/vnd.in-toto+json"
    assert "spdxVersion" in cosign2.download_sbom(target, dst)
    tree = cosign2.tree(target, dst)
    assert "Signatures" in tree and "Attestations" in tree and "SBOMs" in tree

    # A rerun is a no-op: two HEADs, no signature read, nothing written.
    mark = target.mark()
    again = await copy(
        source.ref(src_repo, "1.0"), dst, source, target, options=CopyOptions(referrers=True)
    )
    assert again.outcome is Outcome.UP_TO_DATE and again.requests == 2
    assert writes(target, mark, dst_repo) == []

    # Another tag of the same image: the attachments are found at the destination, one HEAD
    # each, and only the new tag is written.
    mark = target.mark()
    other = await copy(
        source.ref(src_repo, "1.0"),
        target.ref(dst_repo, "1.0-again"),
        source,
        target,
        options=CopyOptions(referrers=True),
    )
    assert other.referrers == 3 and other.outcome is Outcome.COPIED
    # (Same registry: blobs are mount-first, a mount per blob with no HEAD, as for any copy.)
    manifest_writes = [w for w in writes(target, mark, dst_repo) if "/manifests/" in w]
    assert manifest_writes == [f"PUT /v2/{dst_repo}/manifests/1.0-again 201"]
    assert other.manifests_existing >= 3


async def test_destination_signatures_are_merged_not_clobbered(
    registry_v2: RegistryServer, cosign2: Cosign, keys: dict[str, KeyPair]
) -> None:
    src_repo, dst_repo = repo("dev"), repo("prod")
    image = images.push_image(registry_v2, src_repo, "2.0", layers=1)
    cosign2.sign(registry_v2, registry_v2.ref(src_repo, image.digest), keys["release"])
    dst = registry_v2.ref(dst_repo, "2.0")
    # The destination holds the image already, signed there by someone else.
    await copy(registry_v2.ref(src_repo, "2.0"), dst, registry_v2)
    cosign2.sign(registry_v2, registry_v2.ref(dst_repo, image.digest), keys["other"])

    report = await copy(
        registry_v2.ref(src_repo, "2.0"),
        registry_v2.ref(dst_repo, "2.0-signed"),
        registry_v2,
        options=CopyOptions(referrers=True),
    )
    assert report.referrers == 1 and report.manifests_copied >= 1
    cosign2.verify(registry_v2, dst, keys["release"].pub)
    cosign2.verify(registry_v2, dst, keys["other"].pub)

    # Converged: another copy finds every source signature there and writes no .sig.
    mark = registry_v2.mark()
    await copy(
        registry_v2.ref(src_repo, "2.0"),
        registry_v2.ref(dst_repo, "2.0-third"),
        registry_v2,
        options=CopyOptions(referrers=True),
    )
    assert [w for w in writes(registry_v2, mark, dst_repo) if ".sig" in w] == []


@pytest.mark.parametrize("dest_impl", ["v2", "v3"], ids=["cross-registry", "same-registry"])
async def test_cosign_v3_bundles_travel_as_referrers(
    dest_impl: str,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    cosign3: Cosign,
    keys: dict[str, KeyPair],
) -> None:
    target = registry_v2 if dest_impl == "v2" else registry_v3
    src_repo, dst_repo = repo("dev"), repo("prod")
    image = images.push_image(registry_v3, src_repo, "3.0", layers=1)
    sign_everything(cosign3, registry_v3, registry_v3.ref(src_repo, image.digest), keys["release"])
    dst = target.ref(dst_repo, "3.0")

    options = CopyOptions(referrers=True, verify=policy(keys["release"]))
    report = await copy(registry_v3.ref(src_repo, "3.0"), dst, registry_v3, target, options=options)
    assert report.verification is not None and report.verification.verified
    assert report.referrers == 2  # the signature bundle and the attestation bundle
    cosign3.verify(target, dst, keys["release"].pub)
    cosign3.verify_attestation(target, dst, keys["release"].pub)
    tree = cosign3.tree(target, dst)
    assert tree.count("via OCI referrer") == 2
    # A rerun is a no-op.
    again = await copy(
        registry_v3.ref(src_repo, "3.0"),
        dst,
        registry_v3,
        target,
        options=CopyOptions(
            referrers=True, verify=VerifyPolicy(options.verify.keys, report.verification)
        ),
    )
    assert again.outcome is Outcome.UP_TO_DATE and again.requests == 2


async def test_the_gate_writes_nothing_for_unsigned_or_foreign_signed_images(
    registry_v2: RegistryServer, cosign2: Cosign, keys: dict[str, KeyPair]
) -> None:
    src_repo, dst_repo = repo("dev"), repo("prod")
    image = images.push_image(registry_v2, src_repo, "4.0", layers=1)
    options = CopyOptions(referrers=True, verify=policy(keys["release"]))
    mark = registry_v2.mark()
    with pytest.raises(SignatureMissing):
        await copy(
            registry_v2.ref(src_repo, "4.0"),
            registry_v2.ref(dst_repo, "4.0"),
            registry_v2,
            options=options,
        )
    cosign2.sign(registry_v2, registry_v2.ref(src_repo, image.digest), keys["other"])
    with pytest.raises(SignatureInvalid, match=r"keys/release\.pub"):
        await copy(
            registry_v2.ref(src_repo, "4.0"),
            registry_v2.ref(dst_repo, "4.0"),
            registry_v2,
            options=options,
        )
    assert writes(registry_v2, mark, dst_repo) == []


def test_cli_verify_key(
    registry_v2: RegistryServer, cosign2: Cosign, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    src_repo, dst_repo = repo("dev"), repo("prod")
    image = images.push_image(registry_v2, src_repo, "5.0", layers=1)
    cosign2.sign(registry_v2, registry_v2.ref(src_repo, image.digest), keys["release"])
    base = [
        sys.executable,
        "-m",
        "imagecopy",
        "copy",
        "--plain-http",
        registry_v2.host,
        "--referrers",
    ]
    args = [registry_v2.ref(src_repo, "5.0"), registry_v2.ref(dst_repo, "5.0")]

    refused = subprocess.run(
        [*base, "--verify-key", str(keys["other"].pub), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagecopy: signature invalid: ")

    ok = subprocess.run(
        [
            *base,
            "--json",
            "-q",
            "--verify-key",
            str(keys["other"].pub),
            "--verify-key",
            str(keys["release"].pub),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["verification"]["verified"] is True
    assert out["verification"]["keys"] == [str(keys["release"].pub)]
    assert out["verification"]["digest"] == image.digest
    assert out["referrers"] == 1


@pytest.mark.parametrize("signer", [2, 3])
async def test_what_verification_costs_in_requests(
    signer: int,
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    cosign2: Cosign,
    cosign3: Cosign,
    keys: dict[str, KeyPair],
) -> None:
    """The figures of docs/reference.md §4: the same copy with and without the gate. Both
    test registries lack the referrers API, so bundles are found through the tag schema."""
    tool = cosign2 if signer == 2 else cosign3
    src_repo = repo("dev")
    image = images.push_image(registry_v3, src_repo, "6.0", layers=1)
    tool.sign(registry_v3, registry_v3.ref(src_repo, image.digest), keys["release"])
    src = registry_v3.ref(src_repo, "6.0")

    plain = await copy(src, registry_v2.ref(repo("p"), "6.0"), registry_v3, registry_v2)
    gated_policy = policy(keys["release"])
    gated = await copy(
        src,
        registry_v2.ref(repo("g"), "6.0"),
        registry_v3,
        registry_v2,
        options=CopyOptions(verify=gated_policy),
    )
    extra = gated.requests - plain.requests
    # v2: GET .sig, its payload blob, GET /referrers (404), GET the tag-schema index (404).
    # v3: GET .sig (404), GET /referrers (404), the tag-schema index, the bundle and its blob.
    assert extra == (4 if signer == 2 else 5), (plain.requests, gated.requests)

    # A no-op resync of a verified digest: the two HEADs, nothing for the gate.
    assert gated.verification is not None
    known = VerifyPolicy(gated_policy.keys, gated.verification)
    dst = gated.destination
    again = await copy(src, dst, registry_v3, registry_v2, options=CopyOptions(verify=known))
    assert again.outcome is Outcome.UP_TO_DATE and again.requests == 2
    print(f"cosign v{signer}: verification costs {extra} requests per copy, 0 per no-op resync")


def _push_sig(reg: RegistryServer, name: str, digest: str, payload: bytes, note: str) -> None:
    """A hostile ``.sig`` manifest (not cosign's): a payload layer with any annotation."""
    config = b"{}"
    config_digest = images.push_blob(reg, name, config)
    layer_digest = images.push_blob(reg, name, payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": layer_digest,
                "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": note},
            }
        ],
    }
    images.push_manifest(
        reg,
        name,
        digest.replace(":", "-") + ".sig",
        json.dumps(manifest).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )


async def test_hostile_signature_tags_are_refused_with_a_sentence_and_nothing_written(
    registry_v2: RegistryServer, cosign2: Cosign, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """A payload over 1 MiB is not read; a payload naming another digest, signed by the
    trusted key (cosign's own signature over cosign's own payload), does not vouch for this
    image; garbage in the annotation verifies with no key."""
    options = CopyOptions(referrers=True, verify=policy(keys["release"]))
    src_repo, dst_repo = repo("dev"), repo("prod")

    big = images.push_image(registry_v2, src_repo, "big", layers=1)
    _push_sig(registry_v2, src_repo, big.digest, b"{" + b" " * (2 * 1024 * 1024) + b"}", "AAAA")
    mark = registry_v2.mark()
    with pytest.raises(SignatureInvalid, match="over 1 MiB are refused"):
        await copy(big.ref, registry_v2.ref(dst_repo, "big"), registry_v2, options=options)

    replay = images.push_image(registry_v2, src_repo, "replay", layers=1)
    other_image = f"{registry_v2.host}/{src_repo}@{big.digest}"
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(cosign2.run("generate", other_image))
    signature = cosign2.run(
        "sign-blob", "--key", str(keys["release"].key), "--tlog-upload=false", str(payload_file)
    ).strip()
    _push_sig(registry_v2, src_repo, replay.digest, payload_file.read_bytes(), signature)
    with pytest.raises(SignatureInvalid, match="1 sign another digest"):
        await copy(replay.ref, registry_v2.ref(dst_repo, "replay"), registry_v2, options=options)

    garbage = images.push_image(registry_v2, src_repo, "garbage", layers=1)
    _push_sig(registry_v2, src_repo, garbage.digest, b"not json", "%%% not base64")
    with pytest.raises(SignatureInvalid, match="none of the 1 signatures"):
        await copy(garbage.ref, registry_v2.ref(dst_repo, "garbage"), registry_v2, options=options)
    assert writes(registry_v2, mark, dst_repo) == []


async def test_recursively_signed_index_carries_every_child_signature(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    cosign2: Cosign,
    keys: dict[str, KeyPair],
) -> None:
    """``cosign sign --recursive`` signs the index and each platform manifest: every one of
    those ``.sig`` tags travels, and cosign verifies a child at the destination."""
    src_repo, dst_repo = repo("dev"), repo("mirror")
    index = images.push_index(
        registry_v2, src_repo, "multi", platforms=("linux/amd64", "linux/arm64")
    )
    cosign2.sign(
        registry_v2, registry_v2.ref(src_repo, index.digest), keys["release"], recursive=True
    )
    dst = registry_v3.ref(dst_repo, "multi")

    report = await copy(
        index.ref,
        dst,
        registry_v2,
        registry_v3,
        options=CopyOptions(referrers=True, verify=policy(keys["release"])),
    )
    assert report.referrers == 1 + len(index.children)
    for child in index.children:
        cosign2.verify(registry_v3, registry_v3.ref(dst_repo, child.digest), keys["release"].pub)


async def test_an_attestation_bundle_listed_with_its_predicate_is_not_read_by_the_gate(
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    cosign3: Cosign,
    keys: dict[str, KeyPair],
) -> None:
    """cosign's own tag-schema index lists bundles without annotations, so the gate reads
    each (the attestation too); the index imagecopy writes at the destination carries the
    predicate annotation, so verifying the copy reads only the signature bundle."""
    src_repo, dst_repo = repo("dev"), repo("prod")
    image = images.push_image(registry_v3, src_repo, "7.0", layers=1)
    sign_everything(cosign3, registry_v3, registry_v3.ref(src_repo, image.digest), keys["release"])
    src, dst = registry_v3.ref(src_repo, "7.0"), registry_v2.ref(dst_repo, "7.0")
    baseline = await copy(src, registry_v2.ref(repo("p"), "7.0"), registry_v3, registry_v2)
    gated = await copy(
        src,
        dst,
        registry_v3,
        registry_v2,
        options=CopyOptions(referrers=True, verify=policy(keys["release"])),
    )
    assert gated.referrers == 2

    # The copy as a source: .sig (404), /referrers (404), tag index, one bundle + its blob.
    again_plain = await copy(dst, registry_v3.ref(repo("q"), "7.0"), registry_v2, registry_v3)
    again_gated = await copy(
        dst,
        registry_v3.ref(repo("r"), "7.0"),
        registry_v2,
        registry_v3,
        options=CopyOptions(verify=policy(keys["release"])),
    )
    assert again_gated.requests - again_plain.requests == 5
    assert baseline.requests == again_plain.requests
