"""The pool's own request building and sending (``oci.pool``): what goes on the wire is what
``httpx.AsyncClient`` would send, and no cookie is kept.

The request comparison needs no server. The cookie tests use ``httpx.MockTransport``: the
registries the tests run (distribution, ggcr) never set a cookie, so a registry (or a proxy
in front of one) that does cannot be made from them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from imagecopy.oci import mediatypes as mt
from imagecopy.oci.credentials import Credential, CredentialStore
from imagecopy.oci.errors import Side
from imagecopy.oci.pool import MAX_AUTH_BODY_BYTES, RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference

DIGEST = "sha256:" + "b" * 64
BASE = "https://r.example/v2/team/app"


@pytest.mark.parametrize(
    ("method", "url", "headers", "params", "content"),
    [
        ("HEAD", f"{BASE}/manifests/v1", {"Accept": mt.ACCEPT_MANIFESTS}, None, None),
        (
            "POST",
            f"{BASE}/blobs/uploads/",
            {"Content-Length": "0"},
            {"mount": DIGEST, "from": "team/base image"},
            None,
        ),
        (
            "GET",
            f"{BASE}/referrers/{DIGEST}",
            {"accept": mt.OCI_INDEX},
            {"artifactType": "application/vnd.example+json"},
            None,
        ),
        (
            "PATCH",
            "https://r.example/v2/team/app/blobs/uploads/u1?_state=a%2Fb&x=1",
            {"Content-Type": "application/octet-stream", "user-agent": "other"},
            None,
            b"0123456789",
        ),
        ("PUT", httpx.URL(f"{BASE}/blobs/uploads/u2?_state=s"), None, {"digest": DIGEST}, b"x"),
    ],
)
async def test_requests_are_built_as_the_httpx_client_builds_them(
    method: str,
    url: str | httpx.URL,
    headers: dict[str, str] | None,
    params: dict[str, str] | None,
    content: bytes | None,
) -> None:
    pool = RegistryPool(TransportSettings(timeout=7, connect_timeout=3))
    try:
        ours = pool.build_request(
            method, url, headers=headers, params=params, content=content, extensions={}
        )
        theirs = pool.http.build_request(
            method, url, headers=headers, params=params, content=content
        )
    finally:
        await pool.aclose()
    assert ours.method == theirs.method
    assert str(ours.url) == str(theirs.url)
    assert ours.url.raw_path == theirs.url.raw_path
    assert ours.headers.raw == theirs.headers.raw
    assert ours.extensions["timeout"] == theirs.extensions["timeout"]
    assert ours.read() == theirs.read()


async def test_a_cookie_a_registry_sets_is_never_sent_back() -> None:
    """A registry answering ``Set-Cookie``: neither the next registry request nor a request
    that follows redirects (sent through ``pool.http``) carries it."""
    seen: list[str | None] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        return httpx.Response(
            404,
            headers={"Set-Cookie": "session=abc; Path=/", "Docker-Content-Digest": DIGEST},
        )

    async with RegistryPool(TransportSettings(), transport=httpx.MockTransport(registry)) as pool:
        repo = pool.session().repository(Reference.parse("r.example/team/app:v1"), Side.SOURCE)
        assert await repo.head_manifest("v1") is None
        assert await repo.head_manifest("v1") is None
        assert await repo.blob_exists(DIGEST) is False  # follows redirects: pool.http
        assert await repo.blob_exists(DIGEST) is False
        assert not list(pool.http.cookies.jar)
    assert seen == [None, None, None, None]


async def test_a_challenge_with_a_huge_body_is_answered_on_a_new_connection() -> None:
    """The 401 a Basic challenge comes with is read up to ``MAX_AUTH_BODY_BYTES`` and closed
    before the request is sent again with credentials; the body past that is never read."""
    pulled = 0

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 1
                yield b"x" * 16384

    def registry(request: httpx.Request) -> httpx.Response:
        if "authorization" not in request.headers:
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Basic realm="r"'}, stream=Endless()
            )
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    store = CredentialStore({"r.example": Credential("u", "p")})
    async with RegistryPool(TransportSettings(), transport=httpx.MockTransport(registry)) as pool:
        repo = pool.session(store).repository(Reference.parse("r.example/team/app:v1"), Side.SOURCE)
        info = await repo.head_manifest("v1")
    assert info is not None and info.digest == DIGEST
    assert pulled * 16384 <= MAX_AUTH_BODY_BYTES + 16384
