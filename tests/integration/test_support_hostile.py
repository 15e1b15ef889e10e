"""testkit/hostile.py: each behaviour of the hostile registry does what its docstring says.

The server is driven with plain httpx (and raw sockets where httpx itself would refuse), so
these tests pin the instrument, not the product: they pass whatever the copy engine does.
Two tests run the real engine against the well-behaved presets to show the server speaks
enough of the distribution API to carry a whole copy, in both directions. Nothing here ever
connects to a blocked address: redirects and Locations are read, never followed there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from imagecopy.copy import Copier, CopyOptions, CopyReport
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference
from testkit.hostile import (
    BEHAVIOURS,
    BLOCKED_TARGETS,
    MIB,
    PRIVATE_REPOSITORY,
    SOURCE_REPOSITORY,
    Behaviour,
    HostileProcess,
    HostileRegistry,
    fingerprint,
)
from testkit.images import MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST, blob_digest
from testkit.registry import RegistryServer
from tests.support.fixtures import UniqueRepo

pytestmark = pytest.mark.integration

BEARER = {"Authorization": "Bearer anything"}
SOURCE_MANIFEST = f"/v2/{SOURCE_REPOSITORY}/manifests/1"


Factory = Callable[..., HostileRegistry]
CHUNK_SIZE = 256 * 1024


@pytest.fixture
def hostile() -> Iterator[Factory]:
    """Factory: ``hostile(behaviour)`` → a started registry, stopped when the test ends."""
    started: list[HostileRegistry] = []

    def factory(behaviour: Behaviour | str, **kw: object) -> HostileRegistry:
        reg = HostileRegistry(behaviour, **kw).start()  # type: ignore[arg-type]
        started.append(reg)
        return reg

    yield factory
    for reg in started:
        reg.stop()


def _manifest(c: httpx.Client, ref: str, repo: str = SOURCE_REPOSITORY) -> httpx.Response:
    r = c.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    assert r.status_code == 200, r.text[:200]
    # every manifest the server generates is served under its true digest
    assert r.headers["Docker-Content-Digest"] == blob_digest(r.content)
    return r


# --------------------------------------------------------------------------- a real registry


async def _engine_copy(src: str, dst: str, *plain: str) -> CopyReport:
    settings = TransportSettings(plain_http=frozenset(plain))
    async with RegistryPool(settings) as pool:
        return await Copier(pool).copy(
            Reference.parse(src),
            Reference.parse(dst, default_tag=None),
            CopyOptions(),
            CredentialStore(),
        )


@pytest.mark.parametrize("behaviour", ["normal", "bearer"])
async def test_the_engine_copies_from_and_to_the_well_behaved_presets(
    hostile: Factory,
    registry_v2: RegistryServer,
    unique_repo: UniqueRepo,
    behaviour: str,
) -> None:
    reg = hostile(behaviour)
    mirror, back = unique_repo("mirror"), unique_repo("back")
    report = await _engine_copy(
        reg.ref(SOURCE_REPOSITORY, "1"), registry_v2.ref(mirror, "1"), reg.host, registry_v2.host
    )
    digest = reg.content.image.digest
    assert report.destination_digest == digest
    with registry_v2.client() as c:
        r = c.head(f"/v2/{mirror}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert r.headers["Docker-Content-Digest"] == digest

    # and back into the hostile registry as a destination: uploads, then the manifest
    report = await _engine_copy(
        registry_v2.ref(mirror, "1"), reg.ref(back, "2"), reg.host, registry_v2.host
    )
    assert report.blobs_uploaded == 2
    assert reg.stored_manifests(back) == {"2": digest}
    assert reg.open_uploads == 0
    if behaviour == "bearer":
        assert reg.requests(path="^/token$")
        challenged = [r for r in reg.requests(path="^/v2/") if r.status == 401]
        assert challenged and all(r.authorization is None for r in challenged)


# --------------------------------------------------------------------------- records


def test_records_keep_a_fingerprint_of_credentials_never_the_credential(
    hostile: Factory,
) -> None:
    reg = hostile("basic")
    secret = "canary-" + hashlib.sha256(b"x").hexdigest()[:12]
    value = "Basic " + base64.b64encode(f"user:{secret}".encode()).decode()
    with httpx.Client(base_url=reg.url) as c:
        assert c.get("/v2/").status_code == 401
        assert c.get("/v2/", headers={"Authorization": value, "Cookie": "s=1"}).status_code == 200
    first, second = reg.requests()
    assert first.authorization is None and first.status == 401
    assert second.authorization == f"Basic <redacted {fingerprint(value)}>"
    assert second.headers["cookie"].startswith("? <redacted")
    assert secret not in json.dumps(second.to_json())
    assert value.split()[1] not in json.dumps(second.to_json())


def test_upload_sessions_are_counted_until_completed_or_cancelled(
    hostile: Factory,
) -> None:
    reg = hostile("normal")
    data = b"some bytes"
    with httpx.Client(base_url=reg.url) as c:
        first = c.post("/v2/t/a/blobs/uploads/")
        second = c.post("/v2/t/a/blobs/uploads/")
        assert first.status_code == second.status_code == 202
        assert reg.open_uploads == 2
        assert c.delete(first.headers["Location"]).status_code == 204
        loc = c.patch(second.headers["Location"], content=data[:4]).headers["Location"]
        done = c.put(loc, params={"digest": blob_digest(data)}, content=data[4:])
        assert done.status_code == 201
        assert reg.open_uploads == 0
        assert c.get(f"/v2/t/a/blobs/{blob_digest(data)}").content == data
        # a cross-repository mount of a blob the server holds
        mounted = c.post(
            "/v2/t/b/blobs/uploads/", params={"mount": blob_digest(data), "from": "t/a"}
        )
        assert mounted.status_code == 201 and reg.open_uploads == 0


# --------------------------------------------------------------------------- huge bodies


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_huge_token_body_counts_the_bytes_a_client_read_before_hanging_up(
    hostile: Factory, framing: str
) -> None:
    reg = hostile(BEHAVIOURS["huge-token"].with_(huge_framing=framing))
    with httpx.Client(base_url=reg.url) as c:
        challenge = c.get(SOURCE_MANIFEST)
        assert challenge.status_code == 401
        assert f'realm="{reg.url}/token"' in challenge.headers["WWW-Authenticate"]
        with c.stream("GET", "/token", params={"service": "hostile"}) as r:
            assert r.status_code == 200
            assert ("content-length" in r.headers) == (framing == "length")
            read = 0
            for piece in r.iter_raw():
                read += len(piece)
                if read >= MIB:
                    break
    (record,) = reg.wait_finished()[-1:]
    assert record.body_size == 64 * MIB + len(b'{"token":""}')
    assert record.aborted
    # what the kernel accepted: the client's megabyte plus socket buffers, far from 64 MiB
    assert MIB <= record.bytes_sent < 32 * MIB


def test_a_huge_body_read_to_the_end_is_exactly_its_size(hostile: Factory) -> None:
    reg = hostile(BEHAVIOURS["huge-error"].with_(huge_bytes=8 * MIB))
    with httpx.Client(base_url=reg.url) as c:
        r = c.get(SOURCE_MANIFEST)
    assert r.status_code == 404
    body = json.loads(r.content)
    assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert len(body["errors"][0]["message"]) == 8 * MIB
    (record,) = reg.wait_finished()
    assert record.bytes_sent == record.body_size == len(r.content) and not record.aborted


def test_huge_headers_are_sent_whole(hostile: Factory) -> None:
    reg = hostile("huge-headers")
    with socket.create_connection(("127.0.0.1", reg.port), timeout=10) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            piece = s.recv(CHUNK_SIZE)
            assert piece
            raw += piece
    head = raw.split(b"\r\n\r\n", 1)[0]
    (padding,) = [line for line in head.split(b"\r\n") if line.startswith(b"X-Hostile-Padding:")]
    assert len(padding.split(b": ", 1)[1]) == MIB


# --------------------------------------------------------------------------- deep and odd JSON


@pytest.mark.parametrize(
    ("behaviour", "path"),
    [("deep-token", "/token"), ("deep-error", SOURCE_MANIFEST), ("deep-manifest", SOURCE_MANIFEST)],
)
def test_deep_json_nests_a_hundred_thousand_levels(
    hostile: Factory, behaviour: str, path: str
) -> None:
    reg = hostile(behaviour)
    with httpx.Client(base_url=reg.url, headers=BEARER) as c:
        r = c.get(path, headers={"Accept": MANIFEST_ACCEPT})
    assert r.content.count(b"[") >= 100_000
    assert len(r.content) < 4 * MIB
    with pytest.raises(RecursionError):
        json.loads(r.content)
    if behaviour == "deep-manifest":
        assert r.status_code == 200
        assert r.headers["Docker-Content-Digest"] == blob_digest(r.content)
        assert r.headers["Content-Type"] == OCI_MANIFEST


def test_an_overflowing_expires_in_is_sent_as_written(hostile: Factory) -> None:
    reg = hostile("overflow-token")
    with httpx.Client(base_url=reg.url) as c:
        r = c.get("/token")
    assert b'"expires_in":1e400' in r.content
    assert json.loads(r.content)["expires_in"] == float("inf")


# --------------------------------------------------------------------------- generated graphs


def test_the_endless_index_is_an_index_of_indexes_with_valid_digests(
    hostile: Factory,
) -> None:
    reg = hostile("endless-index")
    with httpx.Client(base_url=reg.url) as c:
        ref = "1"
        for level in range(50):
            r = _manifest(c, ref)
            index = json.loads(r.content)
            assert index["mediaType"] == OCI_INDEX
            assert index["annotations"]["hostile.level"] == str(9_999 - level)
            (child,) = index["manifests"]
            assert child["mediaType"] == OCI_INDEX
            ref = child["digest"]
    # a short chain ends in an ordinary image
    reg = hostile(BEHAVIOURS["endless-index"].with_(index_depth=3))
    with httpx.Client(base_url=reg.url) as c:
        ref, kinds = "1", []
        for _ in range(4):
            doc = json.loads(_manifest(c, ref).content)
            kinds.append(doc["mediaType"])
            ref = doc["manifests"][0]["digest"] if "manifests" in doc else ""
    assert kinds == [OCI_INDEX] * 3 + [OCI_MANIFEST]


def test_the_wide_index_has_distinct_children_and_shows_concurrency(
    hostile: Factory,
) -> None:
    reg = hostile(BEHAVIOURS["wide-index"].with_(index_children=40, delay_ms=1500))
    with httpx.Client(base_url=reg.url) as c:
        children = json.loads(_manifest(c, "1").content)["manifests"]
    assert len({d["digest"] for d in children}) == 40
    reg.clear()

    ready = threading.Barrier(10)

    def fetch(digest: str) -> None:
        with httpx.Client(base_url=reg.url) as c:
            ready.wait()  # all ten start together, however busy the machine is
            _manifest(c, digest)

    threads = [threading.Thread(target=fetch, args=(d["digest"],)) for d in children[:10]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.peak_in_flight == 10


@pytest.mark.parametrize(
    ("behaviour", "kind"), [("traversal-digest", "blobs"), ("traversal-child", "manifests")]
)
def test_a_traversal_digest_pasted_into_a_url_lands_in_another_repository(
    hostile: Factory, behaviour: str, kind: str
) -> None:
    reg = hostile(behaviour)
    with httpx.Client(base_url=reg.url) as c:
        doc = json.loads(_manifest(c, "1").content)
        digest = (doc["layers"] if kind == "blobs" else doc["manifests"])[0]["digest"]
        assert "/../" in digest
        # what a client that does not validate digests would request (httpx drops the dots)
        r = c.get(f"/v2/{SOURCE_REPOSITORY}/{kind}/{digest}")
    assert r.status_code == 200
    (record,) = reg.requests(path=f"^/v2/{PRIVATE_REPOSITORY}/")
    assert record.path == f"/v2/{PRIVATE_REPOSITORY}/{kind}/{digest.rsplit('/', 1)[1]}"


# --------------------------------------------------------------------------- redirects, Locations


@pytest.mark.parametrize(
    "behaviour", ["redirect-metadata", "redirect-mapped", "redirect-nat64", "redirect-cdn"]
)
def test_blob_gets_redirect_where_the_behaviour_says(hostile: Factory, behaviour: str) -> None:
    reg = hostile(behaviour)
    layer = reg.content.layer
    path = f"/v2/{SOURCE_REPOSITORY}/blobs/{layer.digest}"
    with httpx.Client(base_url=reg.url) as c:
        assert c.head(path).status_code == 200  # only GETs are redirected
        r = c.get(path)
        assert r.status_code == 307
        location = r.headers["Location"]
        if behaviour != "redirect-cdn":
            assert location.startswith(BLOCKED_TARGETS)
            return
        assert location == f"{reg.other_url}{path}"
        followed = c.get(path, headers={"Authorization": "Bearer t"}, follow_redirects=True)
    assert followed.content == layer.data
    (cdn,) = reg.requests(listener="other")
    assert cdn.authorization is None  # httpx drops it across origins; the record shows it


@pytest.mark.parametrize("behaviour", ["upload-location-metadata", "upload-location-mapped"])
def test_upload_sessions_point_into_a_blocked_network(hostile: Factory, behaviour: str) -> None:
    reg = hostile(behaviour)
    with httpx.Client(base_url=reg.url) as c:
        for params in ({}, {"mount": reg.content.layer.digest, "from": SOURCE_REPOSITORY}):
            r = c.post("/v2/t/dst/blobs/uploads/", params=params)
            assert r.status_code == 202
            assert r.headers["Location"].startswith(BLOCKED_TARGETS)


def test_an_upload_on_another_host_completes_and_shows_what_was_sent_there(
    hostile: Factory,
) -> None:
    reg = hostile("upload-location-other-host")
    data = b"layer bytes"
    with httpx.Client(base_url=reg.url, headers=BEARER) as c:
        r = c.post("/v2/t/dst/blobs/uploads/")
        location = r.headers["Location"]
        assert location.startswith(f"{reg.other_url}/v2/t/dst/blobs/uploads/")
        done = c.put(location, params={"digest": blob_digest(data)}, content=data)
    assert done.status_code == 201 and reg.open_uploads == 0
    (put,) = reg.requests(listener="other")
    assert (
        put.method == "PUT"
        and put.authorization == f"Bearer <redacted {fingerprint(BEARER['Authorization'])}>"
    )


def test_a_plain_http_realm_on_another_host(hostile: Factory) -> None:
    reg = hostile("plain-realm-other-host")
    with httpx.Client(base_url=reg.url) as c:
        challenge = c.get(SOURCE_MANIFEST).headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="http://{reg.other_host}/token"')
        assert 'scope="repository:hostile/source:pull"' in challenge
        token = httpx.get(f"{reg.other_url}/token", auth=("u", "p")).json()["token"]
        assert c.get(SOURCE_MANIFEST, headers={"Authorization": f"Bearer {token}"}).is_success
    (realm,) = reg.requests(listener="other")
    assert realm.path == "/token" and (realm.authorization or "").startswith("Basic <redacted")


def test_every_upload_request_answers_502(hostile: Factory) -> None:
    reg = hostile("upload-502")
    with httpx.Client(base_url=reg.url) as c:
        assert c.post("/v2/t/dst/blobs/uploads/").status_code == 502
        assert c.get(f"/v2/{SOURCE_REPOSITORY}/blobs/{reg.content.layer.digest}").is_success
    assert reg.open_uploads == 0


# --------------------------------------------------------------------------- as a process


def test_the_process_serves_a_behaviour_over_tls_and_logs_requests(tmp_path: Path) -> None:
    with HostileProcess(
        "endless-index", settings={"index_depth": 7}, tls_dir=tmp_path / "pki"
    ) as proc:
        assert proc.host.startswith("127.0.0.1:") and proc.other_host.startswith("127.0.0.2:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        with httpx.Client(base_url=f"https://{proc.host}", verify=ctx) as c:
            doc = json.loads(_manifest(c, "1").content)
        assert doc["annotations"]["hostile.level"] == "6"
        records = proc.requests()
    assert [(r.method, r.path, r.status) for r in records] == [("GET", SOURCE_MANIFEST, 200)]


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="Behaviour field"):
        Behaviour.from_settings(BEHAVIOURS["normal"], ["no_such_field=1"])
    changed = Behaviour.from_settings(
        BEHAVIOURS["normal"], ["error_status=500", "redirect_to=http://x/"]
    )
    assert changed.error_status == 500 and changed.redirect_to == "http://x/"
