"""``spec.verify`` in the controller: parsing, the key Secret, the status it writes, and the
SignatureMissing backoff cap. Pure: keys are generated with ``cryptography``, no registry."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from imagecopy.controller.kube import Forbidden
from imagecopy.controller.spec import VerifySpec, parse_spec
from imagecopy.controller.status import apply_merge_patch, success_patch
from imagecopy.controller.trust import keys_from_secret, verify_policy
from imagecopy.copy.report import CopyReport, Outcome
from imagecopy.copy.verify import Verification
from imagecopy.oci.errors import InvalidSpec, SecretInvalid, SecretNotFound

DIGEST = "sha256:" + "a" * 64
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "source": {"image": "reg.example/dev/web:1"},
        "destination": {"image": "reg.example/prod/web:1"},
        **extra,
    }


def pem(kind: str) -> bytes:
    key: Any
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    else:
        key = ed25519.Ed25519PrivateKey.generate().public_key()
    return bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def secret(**entries: bytes) -> dict[str, Any]:
    return {
        "type": "Opaque",
        "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in entries.items()},
    }


def test_verify_is_parsed_and_defaults_to_cosign() -> None:
    parsed = parse_spec(spec(verify={"secretRef": {"name": "cosign-keys"}}))
    assert parsed.verify == VerifySpec("cosign", "cosign-keys")
    assert parse_spec(spec()).verify is None


@pytest.mark.parametrize(
    ("verify", "needle"),
    [
        ({"provider": "notation", "secretRef": {"name": "k"}}, "provider 'notation'"),
        ({"provider": "cosign"}, "secretRef.name is required"),
        ({"secretRef": {"name": "Bad_Name"}}, "not a valid Secret name"),
        (
            {"secretRef": {"name": "k"}, "matchOIDCIdentity": [{"issuer": "x"}]},
            "keyless verification is not supported",
        ),
        ({"secretRef": {"name": "k"}, "certificateIdentity": "x"}, "keyless"),
        ({"secretRef": {"name": "k"}, "extra": 1}, "spec.verify.extra is not a known field"),
        ("yes", "spec.verify must be an object"),
    ],
)
def test_verify_problems_are_invalid_spec(verify: Any, needle: str) -> None:
    with pytest.raises(InvalidSpec, match=needle):
        parse_spec(spec(verify=verify))


def test_keys_come_from_pub_entries_named_secret_slash_entry() -> None:
    keys = keys_from_secret(
        secret(release_pub=pem("ec"), ops_pub=pem("rsa"), edge_pub=pem("ed"), readme=b"x"),
        "team-a",
        "cosign-keys",
    )
    assert [k.name for k in keys] == [
        "cosign-keys/edge.pub",
        "cosign-keys/ops.pub",
        "cosign-keys/release.pub",
    ]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (secret(readme=b"x"), "has no entry ending in .pub"),
        (secret(release_pub=b"not a key"), "cosign-keys/release.pub is not a PEM public key"),
        ({"data": {"release.pub": "%%%"}}, "not base64"),
        ({"data": None}, "has no entry ending in .pub"),
    ],
)
def test_bad_key_secrets_are_secret_invalid(data: Mapping[str, Any], needle: str) -> None:
    with pytest.raises(SecretInvalid, match=needle):
        keys_from_secret(data, "team-a", "cosign-keys")


class Secrets:
    def __init__(self, secret: Mapping[str, Any] | None, forbidden: bool = False) -> None:
        self.secret = secret
        self.forbidden = forbidden
        self.reads: list[tuple[str, str]] = []

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.reads.append((namespace, name))
        if self.forbidden:
            raise Forbidden("no")
        return self.secret

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None


async def test_policy_reads_only_its_own_namespace_and_keeps_the_known_verdict() -> None:
    reader = Secrets(secret(release_pub=pem("ec")))
    verdict = Verification(DIGEST, True, 1, 1, ("cosign-keys/release.pub",))
    status = {"verification": verdict.to_json()}
    got = await verify_policy(reader, "team-a", VerifySpec("cosign", "cosign-keys"), status)
    assert reader.reads == [("team-a", "cosign-keys")]
    assert got.reuse(DIGEST) == verdict
    assert got.reuse("sha256:" + "b" * 64) is None


async def test_policy_missing_or_forbidden_secret() -> None:
    with pytest.raises(SecretNotFound, match="not found in namespace team-a"):
        await verify_policy(Secrets(None), "team-a", VerifySpec("cosign", "k"), {})
    with pytest.raises(SecretNotFound, match="forbidden"):
        await verify_policy(Secrets({}, forbidden=True), "team-a", VerifySpec("cosign", "k"), {})


def report(verification: Verification | None, outcome: Outcome = Outcome.COPIED) -> CopyReport:
    return CopyReport(
        source="reg.example/dev/web:1",
        destination="reg.example/prod/web:1",
        source_digest=DIGEST,
        destination_digest=DIGEST,
        outcome=outcome,
        verification=verification,
    )


def test_status_records_the_verdict_and_the_ready_message_names_the_key() -> None:
    verdict = Verification(DIGEST, True, 2, 1, ("cosign-keys/release.pub",), ("reg/dev/web",))
    patch = success_patch({}, report(verdict), 1, NOW)
    assert patch["verification"] == verdict.to_json()
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["message"].endswith("; signed by cosign-keys/release.pub")
    status = apply_merge_patch({}, patch)
    # An unchanged verdict is not written again; a spec without verify removes it.
    assert "verification" not in success_patch(status, report(verdict, Outcome.UP_TO_DATE), 1, NOW)
    dropped = apply_merge_patch(status, success_patch(status, report(None), 2, NOW))
    assert "verification" not in dropped


async def test_signature_missing_backs_off_but_never_slower_than_the_stalled_cadence() -> None:
    import logging
    import random

    from prometheus_client import CollectorRegistry

    from imagecopy.controller.metrics import Metrics
    from imagecopy.controller.service import ImageCopyService, ObjectRef
    from imagecopy.controller.settings import Settings
    from imagecopy.controller.status import find_condition
    from imagecopy.oci.errors import SignatureMissing
    from tests.unit.test_controller_service import FakeCopier, Writer

    body: dict[str, Any] = {
        "metadata": {"generation": 1},
        "spec": spec(verify={"provider": "cosign", "secretRef": {"name": "cosign-keys"}}),
    }
    copier = FakeCopier()
    seen: list[Any] = []
    original = copier.copy

    async def recording(source: Any, destination: Any, options: Any = None, cred: Any = None):  # type: ignore[no-untyped-def]
        seen.append(options.verify)
        return await original(source, destination, options, cred)

    copier.copy = recording  # type: ignore[method-assign]
    verdict = Verification(DIGEST, False, 0, 0, ()).to_json()
    copier.results = [
        SignatureMissing("reg/dev/web@sha256:… has no cosign signature", verdict=verdict)
    ] * 8
    reader = Secrets(secret(release_pub=pem("ec")))
    service = ImageCopyService(
        copier=copier,
        secrets=reader,
        status_writer=Writer(body),
        events=lambda ref, type_, reason, message: None,
        metrics=Metrics(CollectorRegistry()),
        settings=Settings(stalled_retry=7.0, retry_base=2.0, retry_max=300.0),
        now=lambda: NOW,
        rng=random.Random(0),
    )
    ref = ObjectRef("team-a", "web", "uid-1")
    delays = [await service.reconcile(ref, body, logging.getLogger("t")) for _ in range(8)]
    assert delays[0] is not None and 1 <= delays[0] <= 2  # the transient backoff...
    assert all(d is not None and d <= 7.0 for d in delays)  # ...capped at the stalled cadence
    assert delays[-1] == 7.0
    ready = find_condition(body["status"], "Ready")
    assert ready is not None and ready["reason"] == "SignatureMissing"
    assert [k.name for k in seen[0].keys] == ["cosign-keys/release.pub"]
    assert reader.reads[0] == ("team-a", "cosign-keys")
    # The refused verdict is in the status (and not a reusable one).
    assert body["status"]["verification"] == verdict
    assert Verification.from_json(body["status"]["verification"]) is None
