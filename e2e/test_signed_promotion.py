"""Signed promotion end to end: ``spec.verify`` on a real API server, the operator as a
process, real registries, images signed by the real cosign (v2: legacy ``.sig`` tags; v3:
sigstore bundle referrers), and cosign verifying the destination afterwards.

Nothing unverified is ever written: the registry's access log of the destination repository
must show no PUT, POST or PATCH while the object reports ``SignatureMissing`` or
``SignatureInvalid``. Signing later with the trusted key heals the object without an edit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.cosign import Cosign, KeyPair, cosign
from testkit.images import MANIFEST_ACCEPT, push_image
from testkit.registry import RegistryServer
from testkit.tools import find_tool
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)
from tests.support.fixtures import require_tool

pytestmark = pytest.mark.e2e

WRITES = ("PUT", "POST", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


@pytest.fixture
def icp(control_plane: ControlPlane, namespace: str, operator: OperatorProcess) -> ImageCopies:
    return ImageCopies(control_plane, namespace)


@pytest.fixture(scope="module")
def cosign2() -> Cosign:
    require_tool("cosign2", find_tool("cosign2"))
    return cosign(2)


@pytest.fixture(scope="module")
def cosign3() -> Cosign:
    require_tool("cosign3", find_tool("cosign3"))
    return cosign(3)


@pytest.fixture(scope="module")
def release_key(cosign2: Cosign, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign2.generate_key_pair(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def other_key(cosign2: Cosign, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign2.generate_key_pair(tmp_path_factory.mktemp("other"))


def key_secret(icp: ImageCopies, pub: Path, name: str = "cosign-keys") -> None:
    icp.cp.kubectl(
        "create", "secret", "generic", name, "-n", icp.ns, f"--from-file=release.pub={pub}"
    )


def verified_spec(src: str, dst: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": {"image": src},
        "destination": {"image": dst},
        "referrers": True,
        "verify": {"provider": "cosign", "secretRef": {"name": "cosign-keys"}},
        **extra,
    }


def manifest_digest(reg: RegistryServer, repo: str, ref: str) -> str | None:
    with reg.client(headers=reg.admin_headers(repo)) as c:
        r = c.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return str(r.headers["Docker-Content-Digest"])


def writes_to(reg: RegistryServer, mark: int, repo: str) -> list[str]:
    return [str(e) for e in reg.access_log_since(mark) if e.repo == repo and e.method in WRITES]


def assert_verified(obj: dict[str, Any], digest: str) -> None:
    verification = obj["status"]["verification"]
    assert verification["digest"] == digest
    assert verification["verified"] is True
    assert verification["keys"] == ["cosign-keys/release.pub"]
    assert verification["validSignatures"] >= 1
    ready = ImageCopies.condition(obj, "Ready")
    assert "signed by cosign-keys/release.pub" in ready["message"]


def test_cosign_v2_signed_image_is_promoted_and_verifies_at_the_destination(
    icp: ImageCopies,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    cosign2: Cosign,
    release_key: KeyPair,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/web"), unique_repo("prod/web")
    image = push_image(registry_v2, src, "1.0", layers=2)
    cosign2.sign(registry_v2, registry_v2.ref(src, image.digest), release_key)
    key_secret(icp, release_key.pub)

    icp.apply(
        "web",
        verified_spec(registry_v2.ref(src, "1.0"), registry_v2.ref(dst, "1.0"), interval="2s"),
    )
    obj = icp.wait_condition("web", reason="Copied", operator=operator)
    assert_verified(obj, image.digest)
    assert obj["status"]["lastCopy"]["referrers"] == 1  # the .sig tag
    assert manifest_digest(registry_v2, dst, "1.0") == image.digest
    # cosign itself trusts what arrived.
    payloads = cosign2.verify(registry_v2, registry_v2.ref(dst, "1.0"), release_key.pub)
    assert payloads and payloads[0]["critical"]["image"]["docker-manifest-digest"] == image.digest  # type: ignore[index]

    # A no-op resync re-verifies nothing: two HEADs, no signature read.
    synced = obj["status"]["lastSyncTime"]
    mark = registry_v2.mark()
    obj = icp.wait_for("web", lambda o: o["status"].get("lastSyncTime") != synced, timeout=30)
    time.sleep(0.5)
    entries = [e for e in registry_v2.access_log_since(mark) if e.repo in (src, dst)]
    per_sync = [e for e in entries if ".sig" in e.path or "/blobs/" in e.path]
    assert per_sync == [], [str(e) for e in per_sync]
    assert all(e.method == "HEAD" for e in entries), [str(e) for e in entries]
    assert_verified(obj, image.digest)


def test_cosign_v3_bundle_signed_image_is_promoted_across_registries(
    icp: ImageCopies,
    operator: OperatorProcess,
    registry_v3: RegistryServer,
    registry_v2: RegistryServer,
    cosign3: Cosign,
    release_key: KeyPair,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/api"), unique_repo("mirror/api")
    image = push_image(registry_v3, src, "2.0", layers=2)
    cosign3.sign(registry_v3, registry_v3.ref(src, image.digest), release_key)
    key_secret(icp, release_key.pub)

    icp.apply("api", verified_spec(registry_v3.ref(src, "2.0"), registry_v2.ref(dst, "2.0")))
    obj = icp.wait_condition("api", reason="Copied", operator=operator)
    assert_verified(obj, image.digest)
    assert obj["status"]["lastCopy"]["referrers"] >= 1  # the bundle referrer
    assert manifest_digest(registry_v2, dst, "2.0") == image.digest
    cosign3.verify(registry_v2, registry_v2.ref(dst, "2.0"), release_key.pub)


def test_unsigned_image_is_not_promoted_until_it_is_signed(
    icp: ImageCopies,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    cosign2: Cosign,
    release_key: KeyPair,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/job"), unique_repo("prod/job")
    image = push_image(registry_v2, src, "3.0", layers=1)
    key_secret(icp, release_key.pub)
    mark = registry_v2.mark()

    icp.apply("job", verified_spec(registry_v2.ref(src, "3.0"), registry_v2.ref(dst, "3.0")))
    obj = icp.wait_condition("job", status="False", reason="SignatureMissing", operator=operator)
    assert icp.condition(obj, "Reconciling")["status"] == "True"  # retried, not Stalled
    assert icp.condition(obj, "Stalled")["status"] == "False"
    assert "no cosign signature" in icp.condition(obj, "Ready")["message"]
    assert obj["status"]["verification"] == {
        "digest": image.digest,
        "verified": False,
        "signatures": 0,
        "validSignatures": 0,
        "keys": [],
        "dockerReferences": [],
    }
    assert writes_to(registry_v2, mark, dst) == []
    assert manifest_digest(registry_v2, dst, "3.0") is None

    # CI signs a little later: the object heals on its own.
    cosign2.sign(registry_v2, registry_v2.ref(src, image.digest), release_key)
    obj = icp.wait_condition("job", reason="Copied", timeout=90, operator=operator)
    assert_verified(obj, image.digest)
    assert manifest_digest(registry_v2, dst, "3.0") == image.digest


def test_image_signed_by_another_key_is_refused_then_heals(
    icp: ImageCopies,
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    cosign2: Cosign,
    release_key: KeyPair,
    other_key: KeyPair,
    unique_repo: Any,
) -> None:
    src, dst = unique_repo("dev/db"), unique_repo("prod/db")
    image = push_image(registry_v2, src, "4.0", layers=1)
    cosign2.sign(registry_v2, registry_v2.ref(src, image.digest), other_key)
    key_secret(icp, release_key.pub)
    mark = registry_v2.mark()

    icp.apply("db", verified_spec(registry_v2.ref(src, "4.0"), registry_v2.ref(dst, "4.0")))
    obj = icp.wait_condition("db", "Stalled", "True", reason="SignatureInvalid", operator=operator)
    assert icp.condition(obj, "Ready")["status"] == "False"
    assert "cosign-keys/release.pub" in icp.condition(obj, "Ready")["message"]
    refused = obj["status"]["verification"]
    assert refused["digest"] == image.digest and refused["verified"] is False
    assert refused["signatures"] == 1 and refused["keys"] == []
    assert writes_to(registry_v2, mark, dst) == []

    # The release key signs too: the next stalled retry promotes it, both signatures travel.
    cosign2.sign(registry_v2, registry_v2.ref(src, image.digest), release_key)
    obj = icp.wait_condition("db", reason="Copied", timeout=90, operator=operator)
    assert_verified(obj, image.digest)
    assert obj["status"]["verification"]["signatures"] == 2
    cosign2.verify(registry_v2, registry_v2.ref(dst, "4.0"), release_key.pub)
    cosign2.verify(registry_v2, registry_v2.ref(dst, "4.0"), other_key.pub)


def test_keyless_verification_is_refused_by_the_api_server(icp: ImageCopies) -> None:
    spec = verified_spec("127.0.0.1:5000/a:1", "127.0.0.1:5000/b:1")
    spec["verify"]["matchOIDCIdentity"] = [
        {"issuer": "https://issuer.example", "subject": "ci@example.com"}
    ]
    with pytest.raises(Exception, match="keyless verification is not supported"):
        icp.apply("keyless", spec)
