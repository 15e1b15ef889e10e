"""Signature parsing and verification (``oci.cosign``, ``copy.verify``) on cosign's own output.

Every signature here is made at test time by the real cosign binary (``cosign generate`` for
the simple-signing payload, ``cosign sign-blob`` / ``attest-blob`` for the signatures and
bundles), with keys cosign generated or imported: ECDSA P-256 (cosign's default), P-384,
RSA and Ed25519. No signature bytes are written by hand; only the hostile-input cases edit
cosign's output on purpose.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from imagecopy.copy.attachments import merge_layers
from imagecopy.copy.verify import (
    TrustedKey,
    Verification,
    VerifyPolicy,
    check_signature,
    evaluate,
    load_key,
)
from imagecopy.oci.cosign import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    attachment_tag,
    pae,
    parse_bundle,
    parse_simple_signing,
)
from imagecopy.oci.descriptor import parse_manifest
from imagecopy.oci.errors import InvalidSpec
from testkit.cosign import Cosign, KeyPair, cosign
from testkit.tools import find_tool
from tests.support.fixtures import require_tool

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
IMAGE = f"registry.example/prod/web@{DIGEST}"


@pytest.fixture(scope="module")
def cosign2() -> Cosign:
    require_tool("cosign2", find_tool("cosign2"))
    return cosign(2)


def _private_pem(kind: str) -> bytes:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "p384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def keys(cosign2: Cosign, tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """Key pairs as cosign holds them: its own P-256, and imported P-384, RSA, Ed25519."""
    root = tmp_path_factory.mktemp("keys")
    pairs = {"p256": cosign2.generate_key_pair(root / "p256")}
    for kind in ("p384", "rsa", "ed25519"):
        pem = root / f"{kind}.pem"
        pem.write_bytes(_private_pem(kind))
        pairs[kind] = cosign2.import_key_pair(pem, root / kind)
    pairs["other"] = cosign2.generate_key_pair(root / "other")
    return pairs


def _trusted(pair: KeyPair, name: str = "keys/release.pub") -> TrustedKey:
    return load_key(name, pair.pub.read_bytes())


def _payload(tool: Cosign, tmp: Path, image: str = IMAGE) -> Path:
    """``cosign generate``: the simple-signing payload cosign signs for ``image``."""
    path = tmp / "payload.json"
    path.write_text(tool.run("generate", image))
    return path


def _sign_blob(tool: Cosign, pair: KeyPair, path: Path) -> str:
    flags = ["--use-signing-config=false", "--new-bundle-format=false"] if tool.major >= 3 else []
    return tool.run(
        "sign-blob", "--key", str(pair.key), "--tlog-upload=false", "--yes", *flags, str(path)
    ).strip()


@pytest.fixture(scope="module")
def cosign3() -> Cosign:
    require_tool("cosign3", find_tool("cosign3"))
    return cosign(3)


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa", "ed25519"])
def test_simple_signing_signature_verifies_with_its_key_only(
    kind: str, cosign2: Cosign, cosign3: Cosign, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    payload_path = _payload(cosign2, tmp_path)
    # cosign v2.6.5's sign-blob panics on Ed25519 keys (no hash for pure Ed25519); v3 signs.
    signer = cosign3 if kind == "ed25519" else cosign2
    signature = _sign_blob(signer, keys[kind], payload_path)
    sig = parse_simple_signing(payload_path.read_bytes(), signature, attachment_tag(DIGEST, ".sig"))
    assert sig.problem is None
    assert sig.claimed_digest == DIGEST
    assert sig.docker_reference == "registry.example/prod/web"

    assert check_signature(_trusted(keys[kind]), sig)
    assert not check_signature(_trusted(keys["other"]), sig)

    verdict = evaluate(
        DIGEST, [sig], [_trusted(keys["other"], "k/other.pub"), _trusted(keys[kind])]
    )
    assert verdict.verified and verdict.keys == ("keys/release.pub",)
    assert verdict.valid == 1 and verdict.signatures == 1
    assert verdict.docker_references == ("registry.example/prod/web",)
    # The same signature does not vouch for another image.
    assert not evaluate(OTHER, [sig], [_trusted(keys[kind])]).verified


def test_tampered_payload_fails(cosign2: Cosign, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    payload_path = _payload(cosign2, tmp_path)
    signature = _sign_blob(cosign2, keys["p256"], payload_path)
    tampered = payload_path.read_bytes().replace(b"prod/web", b"prod/evil")
    sig = parse_simple_signing(tampered, signature, "t")
    assert sig.claimed_digest == DIGEST
    assert not check_signature(_trusted(keys["p256"]), sig)


def test_blob_bundle_message_signature(
    cosign2: Cosign, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """A sigstore bundle with a message signature (``sign-blob --bundle``) names the digest
    of the signed bytes; verified prehashed."""
    blob = tmp_path / "artifact.bin"
    blob.write_bytes(b"some artifact bytes\n")
    bundle = tmp_path / "artifact.bundle"
    cosign2.run(
        "sign-blob",
        "--key",
        str(keys["p256"].key),
        "--tlog-upload=false",
        "--yes",
        "--new-bundle-format",
        "--bundle",
        str(bundle),
        str(blob),
    )
    import hashlib

    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    sigs = parse_bundle(bundle.read_bytes(), digest, "bundle")
    assert len(sigs) == 1 and sigs[0].claimed_digest == digest and sigs[0].prehashed
    assert evaluate(digest, sigs, [_trusted(keys["p256"])]).verified
    assert not evaluate(digest, sigs, [_trusted(keys["other"])]).verified


def test_dsse_bundle_signature(cosign2: Cosign, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    """A DSSE envelope (``attest-blob``): the signature is over the pre-authentication
    encoding; an in-toto statement of another predicate is an attestation, not a signature."""
    blob = tmp_path / "artifact.bin"
    blob.write_bytes(b"attested bytes\n")
    predicate = tmp_path / "predicate.json"
    predicate.write_text(json.dumps({"buildType": "test"}))
    bundle = tmp_path / "att.bundle"
    cosign2.run(
        "attest-blob",
        "--key",
        str(keys["p256"].key),
        "--tlog-upload=false",
        "--yes",
        "--new-bundle-format",
        "--bundle",
        str(bundle),
        "--predicate",
        str(predicate),
        "--type",
        "https://sigstore.dev/cosign/sign/v1",
        str(blob),
    )
    import hashlib

    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    sigs = parse_bundle(bundle.read_bytes(), digest, "bundle")
    assert sigs and sigs[0].claimed_digest == digest
    assert evaluate(digest, sigs, [_trusted(keys["p256"])]).verified
    assert not evaluate(digest, sigs, [_trusted(keys["other"])]).verified

    other = tmp_path / "slsa.bundle"
    cosign2.run(
        "attest-blob",
        "--key",
        str(keys["p256"].key),
        "--tlog-upload=false",
        "--yes",
        "--new-bundle-format",
        "--bundle",
        str(other),
        "--predicate",
        str(predicate),
        "--type",
        "custom",
        str(blob),
    )
    assert parse_bundle(other.read_bytes(), digest, "bundle") == []


# -- hostile and edge input (no cosign needed) ------------------------------------------------


def test_hostile_simple_signing_is_a_problem_not_a_crash() -> None:
    assert parse_simple_signing(b"{}", "AAAA", "x").problem
    assert parse_simple_signing(b"not json", "AAAA", "x").problem
    assert parse_simple_signing(b'{"critical": {}}', None, "x").problem
    assert parse_simple_signing(b'{"critical": {}}', "%%%", "x").problem
    ok = parse_simple_signing(
        b'{"critical": {"image": {"docker-manifest-digest": 5}}}', "AAAA", "x"
    )
    assert ok.problem is None and ok.claimed_digest is None


def test_hostile_bundles() -> None:
    assert parse_bundle(b"[]", DIGEST, "b")[0].problem
    assert parse_bundle(b"{}", DIGEST, "b")[0].problem
    envelope = {"dsseEnvelope": {"payloadType": "x", "payload": "e30=", "signatures": []}}
    assert parse_bundle(json.dumps(envelope).encode(), DIGEST, "b")[0].problem
    message = {"messageSignature": {"signature": "AAAA"}}
    assert parse_bundle(json.dumps(message).encode(), DIGEST, "b")[0].problem


def test_pae_is_dsse_v1() -> None:
    assert pae("application/x", b"hi") == b"DSSEv1 13 application/x 2 hi"


def test_load_key_refuses_what_is_not_a_public_key() -> None:
    with pytest.raises(InvalidSpec, match=r"k/a\.pub is not a PEM public key"):
        load_key("k/a.pub", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(InvalidSpec):
        load_key("k/b.pub", _private_pem("p384"))


def test_verification_round_trips_and_is_reused_only_for_trusted_keys() -> None:
    key = load_key(
        "keys/a.pub",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    verdict = Verification(DIGEST, True, 2, 1, ("keys/a.pub",), ("r/x",))
    again = Verification.from_json(json.loads(json.dumps(verdict.to_json())))
    assert again == verdict
    assert VerifyPolicy((key,), again).reuse(DIGEST) == verdict
    assert VerifyPolicy((key,), again).reuse(OTHER) is None
    renamed = TrustedKey("keys/b.pub", key.key)
    assert VerifyPolicy((renamed,), again).reuse(DIGEST) is None
    assert Verification.from_json({"digest": DIGEST, "verified": False, "keys": []}) is None
    assert Verification.from_json("nonsense") is None


def _sig_manifest(*layers: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": DIGEST,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": SIMPLE_SIGNING,
                    "digest": d,
                    "size": 10,
                    "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(d.encode()).decode()},
                }
                for d in layers
            ],
        }
    ).encode()


def test_merge_rule_is_a_union_of_layers_destination_first() -> None:
    a, b, c = ("sha256:" + x * 64 for x in "123")
    dest = parse_manifest(_sig_manifest(a, b), None, "dest")
    src = parse_manifest(_sig_manifest(b, c), None, "src")
    merged = merge_layers(dest, src)
    assert merged is not None
    assert [layer.digest for layer in merged.blobs[1:]] == [a, b, c]
    assert merged.blobs[0].digest == DIGEST  # the destination's config
    # Converged: merging again adds nothing.
    assert merge_layers(merged, src) is None
    assert merge_layers(dest, parse_manifest(_sig_manifest(a), None, "s")) is None


def test_an_oversized_or_unprintable_signed_reference_is_not_reported() -> None:
    for reference in ("r" * 1000, "reg/web\n:1"):
        payload = json.dumps(
            {"critical": {"identity": {"docker-reference": reference}, "image": {}}}
        ).encode()
        sig = parse_simple_signing(payload, "AAAA", "x")
        assert sig.problem is None and sig.docker_reference is None
