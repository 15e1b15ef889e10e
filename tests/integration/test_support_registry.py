"""The registry fixtures behave like real registries (because they are).

Observed on distribution 2.8.2 (``v2``) and v3.1.1 (``v3``) — and asserted here so a change of
behaviour in either is noticed:
- mount from a repo holding the blob → 201 (Location = the blob, Docker-Content-Digest set);
- mount when ``from`` lacks the blob → 202 upload session, even if the target already has it;
- the access log is a gorilla combined log on stdout on both implementations.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from testkit.images import append_query, make_layer, push_blob, push_image
from testkit.registry import RegistryServer, parse_access_line, select
from tests.support.fixtures import UniqueRepo

pytestmark = pytest.mark.integration


@pytest.fixture(params=["v2", "v3"])
def plain_registry(
    request: pytest.FixtureRequest,
) -> RegistryServer:
    reg: RegistryServer = request.getfixturevalue(f"registry_{request.param}")
    return reg


def test_parse_combined_log_line() -> None:
    line = (
        '127.0.0.1 - - [27/Nov/2026:18:00:00 +0000] "POST /v2/a/b/blobs/uploads/?mount=sha256%3Aab'
        '&from=c%2Fd HTTP/1.1" 201 0 "" "python-httpx/0.28.1"'
    )
    e = parse_access_line(line)
    assert e is not None
    assert (e.method, e.path, e.status, e.bytes) == ("POST", "/v2/a/b/blobs/uploads/", 201, 0)
    assert e.q("mount") == "sha256:ab" and e.q("from") == "c/d"
    assert e.is_mount and e.is_blob_request and e.repo == "a/b"
    assert e.user_agent == "python-httpx/0.28.1"


def test_access_log_sees_known_sequence(
    plain_registry: RegistryServer, unique_repo: UniqueRepo
) -> None:
    reg = plain_registry
    repo = unique_repo("seq")
    data = b"known sequence " + repo.encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    mark = reg.mark()
    with reg.client(headers={"User-Agent": "seq-test/1"}) as c:
        assert c.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        r = c.put(append_query(r.headers["Location"], digest=digest), content=data)
        assert r.status_code == 201
        r = c.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200 and r.content == data
    entries = [e for e in reg.access_log_since(mark) if e.repo == repo]
    assert [(e.method, e.status) for e in entries] == [
        ("HEAD", 404),
        ("POST", 202),
        ("PUT", 201),
        ("GET", 200),
    ]
    assert entries[2].q("digest") == digest
    assert entries[2].q("_state") is not None  # the upload URL's own query was kept
    assert entries[3].bytes == len(data)
    assert all(e.user_agent == "seq-test/1" for e in entries)
    # sentinel requests are hidden; the full log still has everything
    assert all("__imagecopy_sync" not in e.raw for e in reg.access_log())


@pytest.mark.parametrize("impl", ["v2", "v3"])
def test_mount_201_and_202(
    impl: str, request: pytest.FixtureRequest, unique_repo: UniqueRepo
) -> None:
    reg: RegistryServer = request.getfixturevalue(f"registry_{impl}")
    src, dst, other = unique_repo("src"), unique_repo("dst"), unique_repo("empty")
    layer = make_layer(1024)
    push_blob(reg, src, layer)
    mark = reg.mark()
    with reg.client() as c:
        # from a repository holding the blob → 201
        r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": layer.digest, "from": src})
        assert r.status_code == 201
        assert r.headers["Docker-Content-Digest"] == layer.digest
        assert r.headers["Location"].endswith(f"/v2/{dst}/blobs/{layer.digest}")
        assert c.head(f"/v2/{dst}/blobs/{layer.digest}").status_code == 200
        # target already has it, but `from` lacks it → 202, an upload session to use or cancel
        r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": layer.digest, "from": other})
        assert r.status_code == 202
        assert "/blobs/uploads/" in r.headers["Location"]
        assert c.delete(r.headers["Location"]).status_code == 204
    log = reg.access_log_since(mark)
    mounts = select(log, method="POST", repo=dst, query="mount")
    assert [(e.q("from"), e.status) for e in mounts] == [(src, 201), (other, 202)]
    assert mounts[0].bytes == 0  # the 201 mount moved no blob bytes
    others = [e for e in select(log, repo=dst) if not e.is_mount]
    assert [(e.method, e.status) for e in others] == [("HEAD", 200), ("DELETE", 204)]


def test_basic_auth_rejects_wrong_password(registry_v2_basic: RegistryServer) -> None:
    reg = registry_v2_basic
    with reg.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
        assert c.get("/v2/", auth=(reg.username, reg.password + "x")).status_code == 401
        assert c.get("/v2/", auth=("mallory", reg.password)).status_code == 401
        assert c.get("/v2/", auth=(reg.username, reg.password)).status_code == 200
        assert c.get("/v2/", headers=reg.admin_headers("any")).status_code == 200


def test_tls_registry_requires_the_test_ca(
    registry_tls: RegistryServer, unique_repo: UniqueRepo
) -> None:
    reg = registry_tls
    assert reg.url.startswith("https://") and reg.ca_file is not None
    with httpx.Client(verify=True) as c, pytest.raises(httpx.ConnectError):
        c.get(f"{reg.url}/v2/")
    with reg.client() as c:
        assert c.get("/v2/").status_code == 200
    img = push_image(reg, unique_repo("tls"), "v1")
    with reg.client() as c:
        r = c.get(f"/v2/{img.repo}/manifests/v1", headers={"Accept": img.media_type})
        assert r.status_code == 200 and r.content == img.manifest


def test_corrupt_blob_serves_mismatching_bytes(
    registry_v2: RegistryServer, unique_repo: UniqueRepo
) -> None:
    reg = registry_v2
    repo = unique_repo()
    layer = make_layer(4096)
    push_blob(reg, repo, layer)
    reg.corrupt_blob(layer.digest)
    with reg.client() as c:
        r = c.get(f"/v2/{repo}/blobs/{layer.digest}")
    assert r.status_code == 200
    assert len(r.content) == layer.size
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() != layer.digest


def test_docker_config_and_admin_headers(
    registry_v2_basic: RegistryServer, docker_config_dir: Path
) -> None:
    reg = registry_v2_basic
    path = reg.docker_config(docker_config_dir)
    cfg = json.loads(path.read_text())
    assert path.name == "config.json"
    assert list(cfg["auths"]) == [reg.host]
    assert reg.admin_headers("x")["Authorization"].startswith("Basic ")


def test_private_registry_factory_v3_token_tls(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo
) -> None:
    reg = start_registry(impl="v3", auth="token", tls=True)
    assert reg.token_issuer is not None and reg.token_issuer.url.startswith("https://")
    with reg.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and reg.token_issuer.realm in challenge
    img = push_image(reg, unique_repo(), "v1")
    assert img.digest.startswith("sha256:")
    assert reg._proc is not None
    pid, workdir = reg._proc.pid, reg.workdir
    assert workdir is not None and workdir.exists()
    reg.stop()
    assert not reg.running and not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_ggcr_has_no_mount_one_blob_store_and_the_referrers_api(
    registry_ggcr: RegistryServer, unique_repo: UniqueRepo
) -> None:
    """go-containerregistry's registry, as measured (the third implementation): a mount POST
    is an ordinary upload (202) even when ``from`` holds the blob; a blob pushed to one
    repository is HEAD-visible in every other; the referrers API answers an image index, but a
    push with a subject gets no ``OCI-Subject``."""
    reg = registry_ggcr
    src, dst = unique_repo("src"), unique_repo("dst")
    image = push_image(reg, src, "1", layers=1)
    layer = image.blobs[1]
    mark = reg.mark()
    with reg.client() as c:
        r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": layer["digest"], "from": src})
        assert r.status_code == 202
        assert f"/v2/{dst}/blobs/uploads/" in r.headers["Location"]
        assert c.delete(r.headers["Location"]).status_code == 400  # sessions are not tracked
        assert c.head(f"/v2/{dst}/blobs/{layer['digest']}").status_code == 200
        assert c.head(f"/v2/{unique_repo('x')}/blobs/{layer['digest']}").status_code == 200
        subject = {
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": len(image.manifest),
        }
        config: dict[str, object] = {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "size": 2,
            "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
        }
        r = c.post(f"/v2/{src}/blobs/uploads/", params={"digest": config["digest"]}, content=b"{}")
        assert r.status_code == 201
        artifact = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.sbom",
            "config": config,
            "layers": [config],
            "subject": subject,
        }
        body = json.dumps(artifact).encode()
        r = c.put(
            f"/v2/{src}/manifests/sha256:{hashlib.sha256(body).hexdigest()}",
            content=body,
            headers={"Content-Type": artifact["mediaType"]},
        )
        assert r.status_code == 201
        assert "OCI-Subject" not in r.headers
        r = c.get(f"/v2/{src}/referrers/{image.digest}", params={"artifactType": "x/none"})
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
        assert "OCI-Filters-Applied" not in r.headers  # the filter was not applied
        assert [m["digest"] for m in r.json()["manifests"]] == [
            "sha256:" + hashlib.sha256(body).hexdigest()
        ]
    log = select(reg.access_log_since(mark), repo=dst)
    assert [(e.method, e.status) for e in log] == [("POST", 202), ("DELETE", 400), ("HEAD", 200)]
    assert log[0].is_mount
