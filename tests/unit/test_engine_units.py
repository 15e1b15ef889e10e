"""Pure pieces of the engine: manifest parsing limits, report numbers, locations, filtering."""

from __future__ import annotations

import json

import httpx
import pytest

from imagecopy.copy import BlobLocations, CopyReport, Outcome, human_bytes
from imagecopy.copy.platforms import filter_platforms
from imagecopy.oci import mediatypes as mt
from imagecopy.oci.descriptor import MAX_MANIFEST_BYTES, parse_manifest
from imagecopy.oci.digest import DigestVerifier, compute_digest
from imagecopy.oci.errors import (
    DigestMismatch,
    InvalidSpec,
    ManifestTooLarge,
    Side,
    UnsupportedMediaType,
)
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference, Registry, parse_platform

DIGEST = "sha256:" + "a" * 64


def _desc(digest: str, size: int = 10, **extra: object) -> dict[str, object]:
    return {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": size, **extra}


def test_schema1_manifests_are_refused_by_name() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    with pytest.raises(UnsupportedMediaType, match="schema1"):
        parse_manifest(body, mt.DOCKER_SCHEMA1_SIGNED, "manifest x")


def test_manifest_over_four_mebibytes_is_refused() -> None:
    body = b"{" + b" " * MAX_MANIFEST_BYTES + b"}"
    with pytest.raises(ManifestTooLarge, match="4 MiB"):
        parse_manifest(body, mt.OCI_MANIFEST, "manifest x")


async def test_client_refuses_a_huge_manifest_before_reading_it_all() -> None:
    """MockTransport: no real registry accepts a > 4 MiB manifest, so one cannot be served."""
    huge = b"{" + b" " * (MAX_MANIFEST_BYTES + 10) + b"}"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": mt.OCI_MANIFEST}, content=huge)

    pool = RegistryPool(TransportSettings(), transport=httpx.MockTransport(handler))
    try:
        repo = pool.session().repository(Reference.parse("r.example/a/b:1"), Side.SOURCE)
        with pytest.raises(ManifestTooLarge):
            await repo.get_manifest("1")
    finally:
        await pool.aclose()


async def test_client_verifies_manifest_bytes_against_the_digest() -> None:
    """MockTransport: a registry that serves bytes not matching the requested digest."""
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": []}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": mt.OCI_MANIFEST}, content=body)

    pool = RegistryPool(TransportSettings(), transport=httpx.MockTransport(handler))
    try:
        repo = pool.session().repository(Reference.parse("r.example/a/b:1"), Side.SOURCE)
        with pytest.raises(DigestMismatch):
            await repo.get_manifest(DIGEST, expected_digest=DIGEST)
        good = compute_digest(body)
        manifest = await repo.get_manifest(good, expected_digest=good)
        assert manifest is not None and manifest.digest == good
    finally:
        await pool.aclose()


def test_manifest_without_media_type_is_inferred_and_foreign_layers_flagged() -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": DIGEST,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": mt.DOCKER_FOREIGN_LAYER,
                    "digest": DIGEST,
                    "size": 5,
                    "urls": ["https://x"],
                }
            ],
        }
    ).encode()
    manifest = parse_manifest(body, None, "m")
    assert manifest.media_type == mt.OCI_MANIFEST
    assert manifest.blobs[1].foreign and not manifest.blobs[0].foreign
    # Served as plain JSON (some registries do for OCI manifests without mediaType): the
    # shape decides, not the Content-Type.
    assert parse_manifest(body, "application/json", "m").media_type == mt.OCI_MANIFEST


def test_digest_verifier_checks_size_and_content() -> None:
    data = b"hello"
    v = DigestVerifier(compute_digest(data), 5)
    v.update(data)
    v.verify()
    short = DigestVerifier(compute_digest(data), 6)
    short.update(data)
    with pytest.raises(DigestMismatch, match="6"):
        short.verify()
    long = DigestVerifier(compute_digest(data), 3)
    with pytest.raises(DigestMismatch):
        long.update(data)
    sha512 = DigestVerifier(compute_digest(data, "sha512"), None)
    sha512.update(data)
    sha512.verify()


def test_report_numbers_and_sentence() -> None:
    r = CopyReport(source="a", destination="b")
    r.blobs_mounted, r.bytes_mounted = 10, 1181116006
    r.blobs_existing, r.bytes_existing = 1, 102131302
    r.blobs_uploaded, r.bytes_uploaded = 1, 5242880
    assert r.blobs_total == 12
    assert r.bytes_saved == 1283247308
    assert r.summary() == "12 blobs: 10 mounted, 1 existing, 1 uploaded; 1.2 GiB not transferred"
    last = r.last_copy()
    assert last["bytes"] == {
        "total": 1288490188,
        "mounted": 1181116006,
        "uploaded": 5242880,
        "existing": 102131302,
    }
    assert last["saved"] == "1.2 GiB"
    out = r.to_json()
    for key in (
        "source",
        "destination",
        "sourceDigest",
        "destinationDigest",
        "manifests",
        "blobs",
        "bytes",
        "bytesSaved",
        "referrers",
        "requests",
        "durationSeconds",
        "dryRun",
    ):
        assert key in out
    r.outcome = Outcome.UP_TO_DATE
    assert "up to date" in r.summary()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_blob_locations_are_newest_first_bounded_and_per_registry() -> None:
    loc = BlobLocations(max_blobs=2, max_repositories_per_blob=2)
    r1, r2 = Registry.parse("r1.example"), Registry.parse("r2.example")
    loc.add(r1, "d1", "a")
    loc.add(r1, "d1", "b")
    loc.add(r1, "d1", "c")
    assert loc.candidates(r1, "d1") == ["c", "b"]
    assert loc.candidates(r2, "d1") == []
    assert loc.candidates(r1, "d1", exclude=["c"]) == ["b"]
    loc.add(r1, "d2", "a")
    loc.add(r1, "d3", "a")
    assert loc.candidates(r1, "d1") == []  # evicted: least recently seen
    assert len(loc) == 2


def test_platform_filter_keeps_attestations_of_kept_platforms() -> None:
    a, b, att_a, att_b = ("sha256:" + c * 64 for c in "abcd")
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            _desc(a, platform={"os": "linux", "architecture": "amd64"}),
            _desc(b, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
            _desc(
                att_a,
                platform={"os": "unknown", "architecture": "unknown"},
                annotations={
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": a,
                },
            ),
            _desc(
                att_b,
                platform={"os": "unknown", "architecture": "unknown"},
                annotations={
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": b,
                },
            ),
        ],
    }
    manifest = parse_manifest(json.dumps(index).encode(), mt.OCI_INDEX, "i")
    filtered = filter_platforms(manifest, (parse_platform("linux/arm64"),), "src")
    assert [d.digest for d in filtered.manifests] == [b, att_b]
    assert filtered.digest == compute_digest(filtered.data)
    same = filter_platforms(
        manifest, (parse_platform("linux/amd64"), parse_platform("linux/arm64")), "src"
    )
    assert same.data == manifest.data  # nothing dropped: source bytes kept
    with pytest.raises(InvalidSpec, match="linux/amd64"):
        filter_platforms(manifest, (parse_platform("linux/ppc64le"),), "src")


async def test_a_transfer_gate_that_refuses_is_entered_once_for_every_waiting_upload() -> None:
    """Uploads that queued for the gate while its first entry failed get that failure; none
    tries to enter again (the integration test saw two entries on a fresh machine)."""
    import asyncio
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from imagecopy.copy.engine import _TransferGate

    entries = 0

    class Refused(Exception):
        pass

    @asynccontextmanager
    async def refusing() -> AsyncIterator[None]:
        nonlocal entries
        entries += 1
        await asyncio.sleep(0.01)  # the other uploads queue meanwhile
        raise Refused
        yield  # pragma: no cover

    gate = _TransferGate(refusing)
    async with gate:
        results = await asyncio.gather(*(gate.open() for _ in range(4)), return_exceptions=True)
    assert entries == 1
    assert all(isinstance(r, Refused) for r in results)
