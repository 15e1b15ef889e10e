"""The referrers endpoint, answer by answer: ``artifactType`` filtering and the defensive
reading of 400/406/303/429.

These run against ``httpx.MockTransport`` on purpose: the integration tests use the real
endpoint of go-containerregistry (which filters nothing) and distribution (404), but no real
registry here answers ``OCI-Filters-Applied``, Quay's 400, Artifactory's 406, GHCR's 303 or a
429 on this endpoint; a scripted answer pins each one.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from imagecopy.oci import mediatypes as mt
from imagecopy.oci.descriptor import Manifest, parse_manifest
from imagecopy.oci.errors import RateLimited, Side
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference
from imagecopy.oci.referrers import Referrers, find_referrers, push_manifest
from imagecopy.oci.retry import Backoff, RetryPolicy

HOST = "r.example"
SUBJECT = "sha256:" + "a" * 64
SBOM = "application/vnd.example.sbom"
SIG = "application/vnd.example.signature"


def _index(*types: str) -> bytes:
    manifests = [
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": "sha256:" + str(i) * 64,
            "size": 100 + i,
            "artifactType": t,
        }
        for i, t in enumerate(types, start=1)
    ]
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
    ).encode()


Handler = Callable[[httpx.Request], httpx.Response]


async def _run(handler: Handler, artifact_type: str | None = None) -> tuple[Referrers, list[str]]:
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        return handler(request)

    retry = RetryPolicy(attempts=1, backoff=Backoff(base=0.0, cap=0.0))
    async with RegistryPool(
        TransportSettings(retry=retry), transport=httpx.MockTransport(record)
    ) as pool:
        repo = pool.session().repository(Reference.parse(f"{HOST}/dev/app:1"), Side.SOURCE)
        found = await find_referrers(repo, SUBJECT, artifact_type)
        return found, seen


def _referrers(status: int, body: bytes = b"", **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if "/referrers/" in request.url.path:
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})

    return handler


async def test_the_filter_is_applied_here_when_the_registry_did_not() -> None:
    handler = _referrers(200, _index(SBOM, SIG), **{"Content-Type": mt.OCI_INDEX})
    found, seen = await _run(handler, SBOM)
    assert [d.artifact_type for d in found.descriptors] == [SBOM]
    assert found.from_api
    assert seen == [f"GET /v2/dev/app/referrers/{SUBJECT}?artifactType={SBOM.replace('/', '%2F')}"]


async def test_a_filter_the_registry_applied_is_trusted() -> None:
    # The registry says it filtered: its answer is taken as it is (here it lists both, which
    # shows that nothing was filtered again).
    handler = _referrers(
        200,
        _index(SBOM, SIG),
        **{"Content-Type": mt.OCI_INDEX, "OCI-Filters-Applied": "artifactType"},
    )
    found, _ = await _run(handler, SBOM)
    assert [d.artifact_type for d in found.descriptors] == [SBOM, SIG]


@pytest.mark.parametrize("status", [400, 404, 405, 406, 303])
async def test_no_api_answers_fall_back_to_the_tag_schema(status: int) -> None:
    headers = {"Location": "https://api.example/elsewhere"} if status == 303 else {}
    found, seen = await _run(_referrers(status, **headers))
    assert found.descriptors == () and not found.from_api
    assert seen[-1] == "GET /v2/dev/app/manifests/sha256-" + "a" * 64 + "?"
    assert "api.example" not in " ".join(seen)  # the redirect was not followed


async def test_a_200_that_is_not_an_index_is_no_api() -> None:
    found, seen = await _run(_referrers(200, b"<html/>", **{"Content-Type": "text/html"}))
    assert not found.from_api and len(seen) == 2


async def test_429_is_rate_limited_not_no_api() -> None:
    with pytest.raises(RateLimited) as info:
        await _run(_referrers(429, b"", **{"Retry-After": "1"}))
    assert info.value.retryable
    assert info.value.operation == "list referrers"


def _artifact() -> Manifest:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": SBOM, "digest": "sha256:" + "c" * 64, "size": 2},
            "layers": [],
            "subject": {"mediaType": mt.OCI_MANIFEST, "digest": SUBJECT, "size": 10},
        }
    ).encode()
    return parse_manifest(body, mt.OCI_MANIFEST, "artifact")


@pytest.mark.parametrize("registry", ["oci-subject", "api-lists-it", "no-api"])
async def test_a_push_with_a_subject_writes_a_tag_schema_index_only_without_the_api(
    registry: str,
) -> None:
    """``OCI-Subject`` on the PUT: nothing more. No header, but the API lists the push
    (go-containerregistry): one listing. No API (distribution): the tag schema index."""
    manifest = _artifact()
    listed = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": manifest.digest, "size": 1}],
    }
    seen: list[str] = []
    tag = "sha256-" + "a" * 64

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "PUT":
            headers = {"Docker-Content-Digest": manifest.digest}
            if registry == "oci-subject":
                headers["OCI-Subject"] = SUBJECT
            if request.url.path.endswith(tag):
                headers = {}
            return httpx.Response(201, headers=headers)
        if "/referrers/" in request.url.path:
            if registry == "no-api":
                return httpx.Response(404)
            return httpx.Response(200, json=listed, headers={"Content-Type": mt.OCI_INDEX})
        return httpx.Response(404)

    async with RegistryPool(
        TransportSettings(retry=RetryPolicy(attempts=1)), transport=httpx.MockTransport(handler)
    ) as pool:
        repo = pool.session().repository(Reference.parse(f"{HOST}/prod/app:1"), Side.DESTINATION)
        await push_manifest(repo, manifest.digest, manifest)
    put = f"PUT /v2/prod/app/manifests/{manifest.digest}"
    listing = f"GET /v2/prod/app/referrers/{SUBJECT}"
    expected = {
        "oci-subject": [put],
        "api-lists-it": [put, listing],
        "no-api": [
            put,
            listing,
            f"GET /v2/prod/app/manifests/{tag}",
            f"PUT /v2/prod/app/manifests/{tag}",
        ],
    }
    assert seen == expected[registry]
