"""Registry auth flow: challenges, scopes, token cache, realm checks.

Every flow gets its caches (``TokenCache``, ``ChallengeCache``) passed in, as the pool does;
tests that share them between flows pin what a pool's copies may and may not share. Most tests talk to real registries (distribution v3 with the in-process token issuer, 2.8.2
with htpasswd) and count what crossed the wire in the registry's access log and the issuer's
request record. Token-service corners (no OAuth2 POST, ``access_token`` only, 5xx, 429,
garbage) come from ``ScriptedTokens``, a real HTTP token server whose answers the test picks;
its tokens are signed by the real issuer, so the registry accepts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from imagecopy.oci.auth import (
    MAX_TOKENS,
    MOUNT_SOURCE,
    OPTIONAL_SCOPES,
    SCOPES,
    Challenge,
    ChallengeCache,
    RefusedScopes,
    RegistryAuth,
    Token,
    TokenCache,
    TokenKey,
    grants,
    merge_scopes,
    parse_www_authenticate,
    scopes_for_request,
)
from imagecopy.oci.auth.scopes import drop_grants, optional_scopes
from imagecopy.oci.credentials import ANONYMOUS, Credential
from imagecopy.oci.egress import HostList
from imagecopy.oci.errors import (
    RateLimited,
    RegistryError,
    RegistryUnreachable,
    ScopeRefused,
    Unauthorized,
)
from imagecopy.oci.reference import Registry
from testkit.registry import RegistryServer
from testkit.token_issuer import Scope, TokenIssuer, parse_scope
from tests.support.fixtures import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    READER_PASSWORD,
    READER_USER,
    UniqueRepo,
)

ALICE = Credential(ADMIN_USER, ADMIN_PASSWORD)
#: The test registries and token issuers listen on loopback over plain HTTP: configured so,
#: as a copy's settings would, or their plain-HTTP realms are refused.
LOOPBACK_PLAIN_HTTP = HostList.parse(["127.0.0.1", "localhost"])
READER = Credential(READER_USER, READER_PASSWORD)
MISSING = "sha256:" + "0" * 64


# --- helpers ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_auth(
    registry: str,
    credential: Credential,
    *,
    token_client: httpx.AsyncClient,
    tokens: TokenCache | None = None,
    challenges: ChallengeCache | None = None,
    **kwargs: Any,
) -> RegistryAuth:
    """A flow with fresh caches unless the test shares some."""
    return RegistryAuth(
        Registry.parse(registry),
        credential,
        token_client=token_client,
        tokens=tokens if tokens is not None else TokenCache(),
        challenges=challenges if challenges is not None else ChallengeCache(),
        **kwargs,
    )


@asynccontextmanager
async def client_for(
    registry: RegistryServer,
    credential: Credential = ALICE,
    *,
    token_verify: Any = True,
    **kwargs: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, RegistryAuth]]:
    kwargs.setdefault("plain_http", LOOPBACK_PLAIN_HTTP)
    async with httpx.AsyncClient(timeout=10, verify=token_verify) as token_client:
        auth = make_auth(
            registry.host, credential, token_client=token_client, scheme=registry.scheme, **kwargs
        )
        async with httpx.AsyncClient(
            base_url=registry.url, auth=auth, timeout=10, verify=registry.verify
        ) as client:
            yield client, auth


def pull(repo: str) -> dict[str, Any]:
    return {SCOPES: (f"repository:{repo}:pull",)}


def push(repo: str, *mount_from: str) -> dict[str, Any]:
    return {SCOPES: (f"repository:{repo}:push,pull", *(f"repository:{s}:pull" for s in mount_from))}


async def head_blob(client: httpx.AsyncClient, repo: str) -> httpx.Response:
    return await client.head(f"/v2/{repo}/blobs/{MISSING}", extensions=pull(repo))


async def push_blob(client: httpx.AsyncClient, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = await client.post(f"/v2/{repo}/blobs/uploads/", extensions=push(repo))
    assert started.status_code == 202, started.text
    location = started.headers["Location"]  # used verbatim: ``_state`` must not be re-encoded
    separator = "&" if "?" in location else "?"
    done = await client.put(
        f"{location}{separator}digest={digest}", content=data, extensions=push(repo)
    )
    assert done.status_code == 201, done.text
    return digest


def token_requests_for(issuer: TokenIssuer, repo: str) -> list[list[str]]:
    """Scopes asked in each recorded token request that names ``repo``."""
    return [
        r.requested()
        for r in list(issuer.requests)
        if any(s.name.startswith(repo) for s in r.scopes_requested)
    ]


def log_for(registry: RegistryServer, mark: int, repo: str) -> list[tuple[str, int]]:
    return [
        (e.method, e.status)
        for e in registry.access_log_since(mark)
        if e.repo is not None and e.repo.startswith(repo)
    ]


# --- WWW-Authenticate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull",
                    },
                )
            ],
        ),
        (
            'Bearer realm="https://t/token",scope="repository:a:push,pull repository:b:pull",'
            'error="insufficient_scope"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://t/token",
                        "scope": "repository:a:push,pull repository:b:pull",
                        "error": "insufficient_scope",
                    },
                )
            ],
        ),
        (
            'BEARER Realm="https://t", SERVICE=reg',
            [("bearer", {"realm": "https://t", "service": "reg"})],
        ),
        (
            'Bearer realm = "https://t" , service = "s"',
            [("bearer", {"realm": "https://t", "service": "s"})],
        ),
        (r'Bearer realm="https://t/\"q\""', [("bearer", {"realm": 'https://t/"q"'})]),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="r", Bearer realm="https://t",service="s"',
            [("basic", {"realm": "r"}), ("bearer", {"realm": "https://t", "service": "s"})],
        ),
        (
            ['Basic realm="r"', 'Bearer realm="https://t"'],
            [("basic", {"realm": "r"}), ("bearer", {"realm": "https://t"})],
        ),
        ("Bearer", [("bearer", {})]),
        ('Bearer realm="https://t', [("bearer", {"realm": "https://t"})]),
        ("", []),
        (" , ,, ", []),
        ("=x, ==", []),
        ('"junk", Bearer realm=https://t', [("bearer", {"realm": "https://t"})]),
        ('Bearer realm="a", realm="b"', [("bearer", {"realm": "a"})]),
    ],
)
def test_parse_www_authenticate(
    values: str | list[str], expected: list[tuple[str, dict[str, str]]]
) -> None:
    """Malformed inputs here are synthetic: a real registry cannot be made to send them."""
    assert [(c.scheme, dict(c.params)) for c in parse_www_authenticate(values)] == expected


def test_challenge_scope_may_name_several_scopes() -> None:
    challenge = Challenge("bearer", {"scope": "repository:a:pull  repository:b:push"})
    assert challenge.scopes == ("repository:a:pull", "repository:b:push")
    assert Challenge("bearer").scopes == ()


# --- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([["repository:a:pull"], ["repository:a:push"]], ("repository:a:push,pull",)),
        ([["repository:a:pull,push"]], ("repository:a:push,pull",)),
        (
            [["repository:src:pull"], ["repository:dst:pull,push"]],
            ("repository:dst:push,pull", "repository:src:pull"),
        ),
        (
            [["repository:dst:push,pull", "repository:src:pull"], ["repository:src:pull"]],
            ("repository:dst:push,pull", "repository:src:pull"),
        ),
        ([["repository:a:pull", "repository:a:pull"]], ("repository:a:pull",)),
        ([["repository:a:delete", "repository:a:pull"]], ("repository:a:pull,delete",)),
        (
            [["registry:catalog:*"], ["repository:a:pull"]],
            ("registry:catalog:*", "repository:a:pull"),
        ),
        ([["repository(plugin):p:pull"]], ("repository(plugin):p:pull",)),
        ([["opaque"], ["opaque"]], ("opaque",)),
        ([[], []], ()),
    ],
)
def test_merge_scopes(groups: list[list[str]], expected: tuple[str, ...]) -> None:
    assert merge_scopes(*groups) == expected


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "http://r/v2/a/b/manifests/v1", ("repository:a/b:pull",)),
        ("HEAD", "http://r/v2/a/blobs/sha256:x", ("repository:a:pull",)),
        ("PUT", "http://r/v2/a/manifests/v1", ("repository:a:push,pull",)),
        ("PATCH", "http://r/v2/a/blobs/uploads/uuid?_state=x", ("repository:a:push,pull",)),
        (
            "POST",
            "http://r/v2/dst/blobs/uploads/?mount=sha256:x&from=src/x",
            ("repository:dst:push,pull", "repository:src/x:pull"),
        ),
        ("GET", "http://r/v2/a/tags/list", ("repository:a:pull",)),
        ("GET", "http://r/v2/blobs/blobs/x", ("repository:blobs:pull",)),
        ("GET", "http://r/v2/", ()),
        ("GET", "http://r/v2/_catalog", ()),
        ("GET", "http://r/other", ()),
    ],
)
def test_scopes_are_inferred_from_the_path_without_the_extension(
    method: str, url: str, expected: tuple[str, ...]
) -> None:
    assert scopes_for_request(httpx.Request(method, url)) == expected


def test_explicit_scopes_win_and_are_merged() -> None:
    request = httpx.Request(
        "GET",
        "http://r/v2/a/manifests/x",
        extensions={SCOPES: ("repository:b:pull", "repository:a:push", "repository:b:pull")},
    )
    assert scopes_for_request(request) == ("repository:a:push", "repository:b:pull")
    single = httpx.Request("GET", "http://r/v2/", extensions={SCOPES: "repository:c:pull"})
    assert scopes_for_request(single) == ("repository:c:pull",)


# --- bearer flow against a real registry ------------------------------------------------------


async def test_one_401_and_one_token_then_every_request_is_authorized_up_front(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    mark = registry_v3_token.mark()
    async with client_for(registry_v3_token) as (client, auth):
        statuses = [(await head_blob(client, repo)).status_code for _ in range(5)]
    assert statuses == [404] * 5  # authorized: the blob is simply absent
    assert log_for(registry_v3_token, mark, repo) == [("HEAD", 401)] + [("HEAD", 404)] * 5
    assert token_requests_for(token_issuer, repo) == [[f"repository:{repo}:pull"]]
    assert auth.token_requests == 1


async def test_token_request_names_service_user_and_push_scope_first(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    src, dst = unique_repo("src"), unique_repo("dst")
    async with client_for(registry_v3_token) as (client, _):
        await client.post(f"/v2/{dst}/blobs/uploads/", extensions=push(dst, src))
    [record] = [r for r in token_issuer.requests if r.requested() and dst in r.requested()[0]]
    assert record.method == "GET"
    assert record.user == ADMIN_USER
    assert record.service == token_issuer.service
    assert record.requested() == [f"repository:{dst}:push,pull", f"repository:{src}:pull"]


async def test_challenge_scope_is_merged_with_the_request_scopes(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    """The request claims only pull on ``other``; the registry's challenge adds push on dst.
    The addition is remembered: the same request again costs no 401."""
    dst, other = unique_repo("dst"), unique_repo("other")
    mark = registry_v3_token.mark()
    async with client_for(registry_v3_token) as (client, auth):
        for _ in range(2):
            response = await client.post(
                f"/v2/{dst}/blobs/uploads/", extensions={SCOPES: (f"repository:{other}:pull",)}
            )
            assert response.status_code == 202
    asked = token_requests_for(token_issuer, dst)
    assert len(asked) == 1
    assert asked[0][0].startswith(f"repository:{dst}:")
    assert set(asked[0][0].rsplit(":", 1)[1].split(",")) == {"push", "pull"}
    assert asked[0][1:] == [f"repository:{other}:pull"]
    assert log_for(registry_v3_token, mark, dst) == [("POST", 401), ("POST", 202), ("POST", 202)]
    assert auth.token_requests == 1


async def test_cross_repository_mount_works_with_both_scopes(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    src, dst = unique_repo("src"), unique_repo("dst")
    mark = registry_v3_token.mark()
    async with client_for(registry_v3_token) as (client, _):
        digest = await push_blob(client, src, b"layer bytes for mounting")
        mounted = await client.post(
            f"/v2/{dst}/blobs/uploads/",
            params={"mount": digest, "from": src},
            extensions=push(dst, src),
        )
    assert mounted.status_code == 201
    # The challenge is known by then: the token for both scopes is fetched before sending.
    assert log_for(registry_v3_token, mark, dst) == [("POST", 201)]
    assert token_requests_for(token_issuer, dst) == [
        [f"repository:{dst}:push,pull", f"repository:{src}:pull"]
    ]


async def test_cached_token_with_a_superset_scope_is_reused(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    async with client_for(registry_v3_token) as (client, auth):
        await push_blob(client, repo, b"superset")
        before = auth.token_requests
        assert (await head_blob(client, repo)).status_code == 404  # needs pull only
        assert auth.token_requests == before
    assert token_requests_for(token_issuer, repo) == [[f"repository:{repo}:push,pull"]]


async def test_twenty_concurrent_first_requests_fetch_one_token(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    async with client_for(registry_v3_token) as (client, auth):
        responses = await asyncio.gather(*(head_blob(client, repo) for _ in range(20)))
    assert {r.status_code for r in responses} == {404}
    assert auth.token_requests == 1
    assert len(token_requests_for(token_issuer, repo)) == 1


async def test_twenty_concurrent_requests_after_the_challenge_cost_no_401(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    warm, repo = unique_repo("warm"), unique_repo("hot")
    async with client_for(registry_v3_token) as (client, auth):
        await head_blob(client, warm)
        mark = registry_v3_token.mark()
        responses = await asyncio.gather(*(head_blob(client, repo) for _ in range(20)))
    assert {r.status_code for r in responses} == {404}
    assert log_for(registry_v3_token, mark, repo) == [("HEAD", 404)] * 20
    assert auth.token_requests == 2
    assert token_requests_for(token_issuer, repo) == [[f"repository:{repo}:pull"]]


async def test_expired_token_is_fetched_again_before_sending(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    clock = Clock()
    async with client_for(registry_v3_token, clock=clock) as (client, auth):
        await head_blob(client, repo)
        clock.now += token_issuer.ttl - 60  # still fresh
        await head_blob(client, repo)
        assert auth.token_requests == 1
        clock.now += 55  # inside the refresh margin before expiry
        mark = registry_v3_token.mark()
        assert (await head_blob(client, repo)).status_code == 404
    assert auth.token_requests == 2
    assert log_for(registry_v3_token, mark, repo) == [("HEAD", 404)]


async def test_a_token_the_registry_rejects_is_replaced_once(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo
) -> None:
    issuer = TokenIssuer(users={ADMIN_USER: ADMIN_PASSWORD}).start()
    try:
        registry = start_registry(
            impl="v3",
            auth="token",
            token_issuer=issuer,
            username=ADMIN_USER,
            password=ADMIN_PASSWORD,
        )
        repo = unique_repo()
        issuer.issuer = "someone-else"  # tokens the registry will not trust
        async with client_for(registry) as (client, auth):
            first = await head_blob(client, repo)
            assert first.status_code == 401  # second 401: returned, no loop
            assert auth.token_requests == 1
            issuer.issuer = "imagecopy-test-issuer"
            mark = registry.mark()
            assert (await head_blob(client, repo)).status_code == 404
            assert (await head_blob(client, repo)).status_code == 404
        assert auth.token_requests == 2
        assert log_for(registry, mark, repo) == [("HEAD", 401), ("HEAD", 404), ("HEAD", 404)]
    finally:
        issuer.stop()


async def test_insufficient_access_returns_the_second_401(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    mark = registry_v3_token.mark()
    async with client_for(registry_v3_token, READER) as (client, auth):
        response = await client.post(f"/v2/{repo}/blobs/uploads/", extensions=push(repo))
    assert response.status_code == 401
    assert auth.token_requests == 1
    assert log_for(registry_v3_token, mark, repo) == [("POST", 401), ("POST", 401)]


async def test_anonymous_access_fetches_an_anonymous_token(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    async with client_for(registry_v3_token, ANONYMOUS) as (client, _):
        response = await head_blob(client, repo)
    assert response.status_code == 401  # the issuer grants anonymous users nothing
    [record] = [r for r in token_issuer.requests if r.requested() == [f"repository:{repo}:pull"]]
    assert record.user is None


async def test_wrong_password_raises_unauthorized_without_the_secret(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    secret = "wrong-" + "s3cr3t-value"
    async with client_for(registry_v3_token, Credential(ADMIN_USER, secret)) as (client, _):
        with pytest.raises(Unauthorized) as info:
            await head_blob(client, repo)
    message = str(info.value)
    assert message == (
        f"registry {registry_v3_token.host} rejected the credentials for repository:{repo}:pull"
    )
    assert secret not in message
    assert info.value.status == 401


async def test_identity_token_uses_the_oauth2_refresh_grant(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    refresh = token_issuer.new_refresh_token(ADMIN_USER)
    credential = Credential(username="<token>", identity_token=refresh)
    async with client_for(registry_v3_token, credential) as (client, _):
        assert (await head_blob(client, repo)).status_code == 404
    [record] = [r for r in token_issuer.requests if r.requested() == [f"repository:{repo}:pull"]]
    assert (record.method, record.grant_type, record.client_id) == (
        "POST",
        "refresh_token",
        "imagecopy",
    )
    assert record.user == ADMIN_USER
    assert refresh not in repr(credential)


async def test_unknown_identity_token_is_unauthorized(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    credential = Credential(username="<token>", identity_token="not-a-known-refresh-token")
    async with client_for(registry_v3_token, credential) as (client, _):
        with pytest.raises(Unauthorized, match="rejected the credentials") as info:
            await head_blob(client, unique_repo())
    assert "not-a-known" not in str(info.value)


async def test_registry_token_is_sent_as_is(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    token = token_issuer.mint([Scope("repository", repo, ("pull",))], subject=ADMIN_USER)
    async with client_for(registry_v3_token, Credential(registry_token=token)) as (client, auth):
        statuses = [(await head_blob(client, repo)).status_code for _ in range(3)]
        other = await head_blob(client, unique_repo("other"))
    assert statuses == [404, 404, 404]
    assert other.status_code == 401  # the fixed token does not cover it; returned after one retry
    assert auth.token_requests == 0
    assert token_requests_for(token_issuer, repo) == []


async def test_streaming_body_gets_the_401_back_and_teaches_the_challenge(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()

    async def body() -> AsyncIterator[bytes]:
        yield b"not replayable"

    async with client_for(registry_v3_token) as (client, auth):
        response = await client.post(
            f"/v2/{repo}/blobs/uploads/", content=body(), extensions=push(repo)
        )
        assert response.status_code == 401
        assert auth.token_requests == 0
        assert auth.challenge is not None and auth.challenge.scheme == "bearer"
        mark = registry_v3_token.mark()
        assert (await head_blob(client, repo)).status_code == 404
    assert log_for(registry_v3_token, mark, repo) == [("HEAD", 404)]


async def test_requests_to_other_hosts_pass_through_untouched(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    async with httpx.AsyncClient() as token_client:
        auth = make_auth("127.0.0.1:1", ALICE, token_client=token_client, scheme="http")
        async with httpx.AsyncClient(base_url=registry_v3_token.url, auth=auth) as client:
            response = await head_blob(client, repo)
    assert response.status_code == 401
    assert "authorization" not in response.request.headers
    assert auth.token_requests == 0 and auth.challenge is None


def test_sync_clients_are_refused() -> None:
    auth = make_auth("r.io", ALICE, token_client=httpx.AsyncClient())
    with httpx.Client(auth=auth) as client, pytest.raises(RuntimeError, match="AsyncClient"):
        client.get("http://127.0.0.1:1/v2/")


def test_repr_of_auth_never_shows_secrets() -> None:
    credential = Credential("u", "pass-XYZ", identity_token="id-XYZ", registry_token="reg-XYZ")
    auth = make_auth("r.io", credential, token_client=httpx.AsyncClient())
    assert "XYZ" not in repr(auth)
    assert "r.io" in repr(auth)


# --- caches shared between flows (as a pool shares them between copies) ----------------------


def shared_caches() -> dict[str, Any]:
    """Caches for ``client_for(..., **caches)``: one pool's, shared by its flows."""
    return {"tokens": TokenCache(), "challenges": ChallengeCache()}


def token_users_for(issuer: TokenIssuer, repo: str) -> list[str | None]:
    """Who asked, in each recorded token request that names ``repo`` (None: anonymous)."""
    return [
        r.user for r in list(issuer.requests) if any(s.name == repo for s in r.scopes_requested)
    ]


async def test_two_flows_with_one_credential_share_the_token_and_the_challenge(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    """The second flow (a later copy) pays neither a 401 nor a token request."""
    repo = unique_repo()
    caches = shared_caches()
    async with client_for(registry_v3_token, ALICE, **caches) as (client, first):
        assert (await head_blob(client, repo)).status_code == 404
    mark = registry_v3_token.mark()
    same = Credential(ADMIN_USER, ADMIN_PASSWORD)  # equal to ALICE, another object
    async with client_for(registry_v3_token, same, **caches) as (client, second):
        assert (await head_blob(client, repo)).status_code == 404
    assert (first.token_requests, second.token_requests) == (1, 0)
    assert log_for(registry_v3_token, mark, repo) == [("HEAD", 404)]
    assert token_requests_for(token_issuer, repo) == [[f"repository:{repo}:pull"]]


async def test_concurrent_flows_with_one_credential_fetch_one_token(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    caches = shared_caches()
    async with (
        client_for(registry_v3_token, ALICE, **caches) as (one, a),
        client_for(registry_v3_token, ALICE, **caches) as (two, b),
    ):
        responses = await asyncio.gather(*(head_blob(c, repo) for c in [one, two] * 10))
    assert {r.status_code for r in responses} == {404}
    assert a.token_requests + b.token_requests == 1
    assert len(token_requests_for(token_issuer, repo)) == 1


async def test_a_token_is_never_served_to_another_credential(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    """ALICE's push token is cached when READER, sharing the caches, asks to push: READER
    fetches its own token and is refused (with ALICE's the upload would have started)."""
    repo = unique_repo()
    caches = shared_caches()
    async with client_for(registry_v3_token, ALICE, **caches) as (client, alice):
        started = await client.post(f"/v2/{repo}/blobs/uploads/", extensions=push(repo))
        assert started.status_code == 202
    mark = registry_v3_token.mark()
    async with client_for(registry_v3_token, READER, **caches) as (client, reader):
        refused = await client.post(f"/v2/{repo}/blobs/uploads/", extensions=push(repo))
        pulled = await head_blob(client, repo)
    assert refused.status_code == 401
    assert pulled.status_code == 404  # READER's own token (asked for push,pull) holds pull
    assert alice.token_requests == 1
    assert reader.token_requests == 2  # one up front, one fresh after the 401
    assert log_for(registry_v3_token, mark, repo) == [("POST", 401), ("POST", 401), ("HEAD", 404)]
    assert token_users_for(token_issuer, repo) == [ADMIN_USER, READER_USER, READER_USER]


async def test_a_wrong_password_is_not_rescued_by_a_cached_token(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    caches = shared_caches()
    async with client_for(registry_v3_token, **caches) as (client, _):
        assert (await head_blob(client, repo)).status_code == 404
    wrong = Credential(ADMIN_USER, "not-" + ADMIN_PASSWORD)
    async with client_for(registry_v3_token, wrong, **caches) as (client, auth):
        with pytest.raises(Unauthorized, match="rejected the credentials"):
            await head_blob(client, repo)
    assert auth.token_requests == 1


async def test_anonymous_and_authenticated_flows_never_share_tokens(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    """In both orders: an anonymous token would make ALICE's HEAD a 401, ALICE's token would
    make the anonymous HEAD a 404."""
    repo = unique_repo()
    caches = shared_caches()
    statuses: list[int] = []
    for credential in (ANONYMOUS, ALICE, ANONYMOUS):
        async with client_for(registry_v3_token, credential, **caches) as (client, _):
            statuses.append((await head_blob(client, repo)).status_code)
    assert statuses == [401, 404, 401]
    # The second anonymous flow sends the first one's cached anonymous token; refused, it
    # fetches a fresh one, anonymously again.
    assert token_users_for(token_issuer, repo) == [None, ADMIN_USER, None]


def test_token_cache_lookup_never_crosses_registries_or_credentials() -> None:
    registry = Registry.parse("r.io")
    pull_a = grants(["repository:a:pull"])
    token = Token("tok", grants(["repository:a:push,pull"]), refresh_at=100.0)
    cache = TokenCache()
    cache.store(TokenKey(registry, ALICE.cache_key, token.grants), token)
    assert cache.lookup(TokenKey(registry, ALICE.cache_key, pull_a), now=0.0) is token
    same = Credential(ADMIN_USER, ADMIN_PASSWORD).cache_key
    assert cache.lookup(TokenKey(registry, same, pull_a), now=0.0) is token
    for other in (
        TokenKey(registry, READER.cache_key, pull_a),
        TokenKey(registry, ANONYMOUS.cache_key, pull_a),
        TokenKey(registry, Credential(ADMIN_USER).cache_key, pull_a),
        TokenKey(Registry.parse("r.io:5000"), ALICE.cache_key, pull_a),
        TokenKey(registry, ALICE.cache_key, grants(["repository:b:pull"])),
    ):
        assert cache.lookup(other, now=0.0) is None, other


def test_token_cache_drops_expired_tokens_and_keeps_the_newest_max_entries() -> None:
    registry = Registry.parse("r.io")

    def key(n: int, credential: Credential = ALICE) -> TokenKey:
        return TokenKey(registry, credential.cache_key, grants([f"repository:r{n}:pull"]))

    cache = TokenCache(max_entries=3)
    stored = [Token(f"t{n}", key(n).grants, refresh_at=100.0 + n) for n in range(4)]
    for n, token in enumerate(stored):
        cache.store(key(n), token)
    cache.store(key(4, READER), Token("r4", key(4).grants, refresh_at=200.0))
    assert len(cache) == 3  # oldest first, whoever's they were
    assert [cache.lookup(key(n), now=0.0) for n in range(4)] == [None, None, *stored[2:]]
    assert cache.lookup(key(4, READER), now=0.0) is not None
    assert cache.lookup(key(3), now=102.0) is stored[3]
    assert len(cache) == 2  # ALICE's t2 expired at 102 and went on that access
    assert cache.lookup(key(3), now=103.0) is None
    assert len(cache) == 1
    assert f"max_entries={MAX_TOKENS}" in repr(TokenCache()) and MAX_TOKENS == 4096


def test_token_cache_discard_forgets_only_the_token_it_is_given() -> None:
    registry = Registry.parse("r.io")
    key = TokenKey(registry, ALICE.cache_key, grants(["repository:a:pull"]))
    old, new = (Token(v, key.grants, refresh_at=100.0) for v in ("old", "new"))
    cache = TokenCache()
    cache.store(key, old)
    cache.store(key, new)  # replaces the token for the same grants
    assert len(cache) == 1
    cache.discard(key, old)  # a stale rejection must not drop the fresh token
    assert cache.lookup(key, now=0.0) is new
    cache.discard(TokenKey(registry, READER.cache_key, key.grants), new)
    assert cache.lookup(key, now=0.0) is new
    cache.discard(key, new)
    assert cache.lookup(key, now=0.0) is None and len(cache) == 0


def test_challenge_cache_remembers_per_registry_and_is_bounded() -> None:
    a, b, c = (Registry.parse(host) for host in ("a.io", "b.io:5000", "c.io"))
    basic, bearer = Challenge("basic"), Challenge("bearer", {"realm": "https://t/token"})
    cache = ChallengeCache(max_entries=2)
    cache.remember(a, basic)
    cache.remember(b, basic)
    cache.remember(a, bearer)  # re-learning refreshes a
    cache.remember(c, basic)
    assert (cache.get(a), cache.get(b), cache.get(c)) == (bearer, None, basic)
    assert cache.get(Registry.parse("b.io")) is None and len(cache) == 2


def test_cache_keys_and_caches_never_show_secrets() -> None:
    credential = Credential("u", "pass-XYZ", identity_token="id-XYZ", registry_token="reg-XYZ")
    key = TokenKey(Registry.parse("r.io"), credential.cache_key, grants(["repository:a:pull"]))
    token = Token("tok-XYZ", key.grants, refresh_at=1.0)
    tokens = TokenCache()
    tokens.store(key, token)
    for text in (repr(credential.cache_key), str(credential.cache_key), repr(key), str(key)):
        assert "XYZ" not in text and "pass" not in text
    assert "XYZ" not in repr(token) and "XYZ" not in repr(tokens)


def test_only_http_and_https_are_registry_schemes() -> None:
    with pytest.raises(ValueError, match="http or https"):
        make_auth("r.io", ALICE, token_client=httpx.AsyncClient(), scheme="ftp")


# --- basic auth ------------------------------------------------------------------------------


async def test_basic_auth_is_sent_preemptively_once_known(
    registry_v2_basic: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    mark = registry_v2_basic.mark()
    async with client_for(registry_v2_basic) as (client, auth):
        statuses = [(await head_blob(client, repo)).status_code for _ in range(3)]
    assert statuses == [404] * 3
    assert log_for(registry_v2_basic, mark, repo) == [("HEAD", 401)] + [("HEAD", 404)] * 3
    assert auth.token_requests == 0


async def test_basic_auth_with_a_wrong_password_returns_the_second_401(
    registry_v2_basic: RegistryServer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    mark = registry_v2_basic.mark()
    async with client_for(registry_v2_basic, Credential(ADMIN_USER, "nope")) as (client, _):
        assert (await head_blob(client, repo)).status_code == 401
    assert log_for(registry_v2_basic, mark, repo) == [("HEAD", 401), ("HEAD", 401)]


async def test_basic_challenge_without_credentials_is_returned(
    registry_v2_basic: RegistryServer, unique_repo: UniqueRepo
) -> None:
    async with client_for(registry_v2_basic, ANONYMOUS) as (client, _):
        assert (await head_blob(client, unique_repo())).status_code == 401


# --- realm validation ------------------------------------------------------------------------


async def test_plain_http_realm_on_another_host_is_refused(
    start_registry: Callable[..., RegistryServer],
    token_issuer: TokenIssuer,
    unique_repo: UniqueRepo,
) -> None:
    realm = "http://tokens.example.invalid/token"
    registry = start_registry(
        impl="v2",
        auth="token",
        token_issuer=token_issuer,
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        extra_config={"auth": {"token": {"realm": realm}}},
    )
    async with client_for(registry) as (client, auth):
        with pytest.raises(Unauthorized, match="refusing to send them") as info:
            await head_blob(client, unique_repo())
    assert "http://tokens.example.invalid" in str(info.value)
    assert ADMIN_PASSWORD not in str(info.value)
    assert auth.token_requests == 0
    trusted = HostList.parse(["tokens.example.invalid"])
    async with client_for(registry, plain_http=trusted) as (client, auth):
        with pytest.raises(httpx.ConnectError):  # allowed, so it is tried
            await head_blob(client, unique_repo())
    assert auth.token_requests == 1


async def test_https_realm_is_accepted(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo
) -> None:
    issuer = TokenIssuer(users={ADMIN_USER: ADMIN_PASSWORD}, tls=True).start()
    try:
        registry = start_registry(
            impl="v2",
            auth="token",
            token_issuer=issuer,
            username=ADMIN_USER,
            password=ADMIN_PASSWORD,
        )
        assert issuer.realm.startswith("https://")
        verify = ssl.create_default_context(cafile=str(issuer.pki.ca_cert))
        async with client_for(registry, token_verify=verify) as (client, _):
            assert (await head_blob(client, unique_repo())).status_code == 404
    finally:
        issuer.stop()


@pytest.mark.parametrize(
    ("registry", "scheme", "plain_http", "realm", "allowed"),
    [
        ("r.io", "https", [], "https://auth.elsewhere.io/token", True),
        ("r.io", "https", [], "/token", True),
        ("r.io", "http", ["r.io"], "/token", True),
        ("r.io:5000", "http", ["r.io:5000", "r.io:80"], "http://r.io/token", True),
        ("r.io:5000", "http", ["r.io"], "http://r.io:9000/token", True),
        ("127.0.0.1:5000", "http", ["127.0.0.1:5000", "localhost"], "http://localhost:9/t", True),
        # An HTTPS registry never gets a plain-HTTP realm, not even on its own host.
        ("r.io", "https", [], "http://r.io:8080/token", False),
        ("r.io", "https", [], "http://r.io/token", False),
        # A plain-HTTP registry does not make other hosts (or ports) plain-HTTP realms.
        ("r.io:5000", "http", ["r.io:5000"], "http://r.io/token", False),
        ("r.io:5000", "http", ["r.io:5000"], "http://auth.elsewhere.io/token", False),
        ("127.0.0.1:5000", "http", ["127.0.0.1:5000"], "http://localhost:9000/token", False),
        ("127.0.0.1:5000", "http", ["127.0.0.1:5000"], "http://10.0.0.1/token", False),
        ("r.io", "https", [], "ftp://r.io/token", False),
    ],
)
async def test_realm_rules(
    registry: str, scheme: str, plain_http: list[str], realm: str, allowed: bool
) -> None:
    """The registry is ``httpx.MockTransport``: a real one cannot name arbitrary realm hosts
    without DNS for them. Relative realms resolve against the registry. A plain-HTTP realm is
    accepted only on a host the plain-HTTP list names."""
    token_hosts: list[str] = []

    def registry_answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Bearer tok":
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})

    def token_answer(request: httpx.Request) -> httpx.Response:
        token_hosts.append(str(request.url.copy_with(query=None)))
        return httpx.Response(200, json={"token": "tok"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(token_answer)) as tokens:
        auth = make_auth(
            registry,
            ALICE,
            token_client=tokens,
            scheme=scheme,
            plain_http=HostList.parse(plain_http),
        )
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(registry_answer), auth=auth
        ) as client:
            url = f"{scheme}://{registry}/v2/a/manifests/v1"
            if allowed:
                assert (await client.get(url)).status_code == 200
                assert len(token_hosts) == 1
            else:
                with pytest.raises(Unauthorized, match="refusing"):
                    await client.get(url)
                assert token_hosts == []
    if realm == "/token":
        assert token_hosts == [f"{scheme}://{registry}/token"]


async def test_malformed_or_unusable_challenges_return_the_401() -> None:
    """Uses ``httpx.MockTransport``: real registries do not send malformed challenges."""
    headers_seen: list[list[str]] = [
        [],
        ["Bearer"],
        ['Bearer service="s"'],
        ["Negotiate abc=="],
        ['"garbage'],
        ["=x=y"],
    ]
    for headers in headers_seen:
        calls = 0

        def answer(request: httpx.Request, headers: list[str] = headers) -> httpx.Response:
            nonlocal calls
            calls += 1
            return httpx.Response(401, headers=[("WWW-Authenticate", h) for h in headers])

        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as tokens:
            auth = make_auth("r.io", ALICE, token_client=tokens)
            async with httpx.AsyncClient(
                transport=httpx.MockTransport(answer), auth=auth
            ) as client:
                response = await client.get("https://r.io/v2/a/manifests/v1")
        assert response.status_code == 401
        assert calls == 1, headers
        assert auth.token_requests == 0


# --- token service corners (ScriptedTokens: a real HTTP token server) ------------------------


@dataclass
class ScriptedTokens:
    """Token server: GET and POST /token, answers per ``post_status``/``answers``.

    Valid answers carry tokens minted by ``issuer`` for exactly the requested scopes.
    """

    issuer: TokenIssuer
    post_status: int | None = None
    answers: list[tuple[int, Any]] = field(default_factory=list)
    fields: Callable[[str], dict[str, Any]] = lambda token: {"token": token}
    seen: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def start(self) -> ScriptedTokens:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _token(self, query: dict[str, list[str]]) -> None:
                owner.seen.append((self.command, query, self.headers.get("Authorization")))
                if owner.answers:
                    self._reply(*owner.answers.pop(0))
                    return
                scopes = [s for v in query.get("scope", []) for s in v.split()]
                access = [p for p in map(parse_scope, scopes) if p is not None]
                token = owner.issuer.mint(access, subject=ADMIN_USER)
                self._reply(200, owner.fields(token))

            def do_GET(self) -> None:
                self._token(parse_qs(urlsplit(self.path).query))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                if owner.post_status is not None:
                    owner.seen.append(("POST", form, None))
                    self._reply(owner.post_status, {"error": "no"})
                    return
                self._token(form)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def reset(self) -> None:
        self.post_status = None
        self.answers.clear()
        self.fields = lambda token: {"token": token}
        self.seen.clear()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="module")
def scripted_pair(
    token_issuer: TokenIssuer,
) -> Iterator[tuple[RegistryServer, ScriptedTokens]]:
    tokens = ScriptedTokens(token_issuer).start()
    registry = RegistryServer(
        impl="v3",
        auth="token",
        token_issuer=token_issuer,
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        extra_config={"auth": {"token": {"realm": tokens.realm}}},
    ).start()
    yield registry, tokens
    registry.stop()
    tokens.stop()


@pytest.fixture
def scripted(
    scripted_pair: tuple[RegistryServer, ScriptedTokens],
) -> Iterator[tuple[RegistryServer, ScriptedTokens]]:
    scripted_pair[1].reset()
    yield scripted_pair
    scripted_pair[1].reset()


async def test_oauth2_post_falls_back_to_get_on_404_and_405(
    scripted: tuple[RegistryServer, ScriptedTokens], unique_repo: UniqueRepo
) -> None:
    registry, tokens = scripted
    for status in (404, 405):
        tokens.reset()
        tokens.post_status = status
        credential = Credential("alice", "pw", identity_token="refresh-abc")
        async with client_for(registry, credential) as (client, _):
            assert (await head_blob(client, unique_repo())).status_code == 404
        (post_method, form, _), (get_method, query, authorization) = tokens.seen
        assert post_method == "POST" and get_method == "GET"
        assert form["grant_type"] == ["refresh_token"]
        assert form["refresh_token"] == ["refresh-abc"]
        assert form["client_id"] == ["imagecopy"]
        assert query["account"] == ["alice"]
        assert authorization is not None and authorization.startswith("Basic ")


async def test_oauth2_scope_is_space_joined(
    scripted: tuple[RegistryServer, ScriptedTokens], unique_repo: UniqueRepo
) -> None:
    registry, tokens = scripted
    src, dst = unique_repo("src"), unique_repo("dst")
    async with client_for(registry, Credential(identity_token="r")) as (client, _):
        await client.post(f"/v2/{dst}/blobs/uploads/", extensions=push(dst, src))
    [(_, form, _)] = tokens.seen
    assert form["scope"] == [f"repository:{dst}:push,pull repository:{src}:pull"]
    assert "service" in form


async def test_access_token_field_and_default_lifetime(
    scripted: tuple[RegistryServer, ScriptedTokens], unique_repo: UniqueRepo
) -> None:
    """Without ``expires_in`` a token lives 60 s: refreshed 10 s early, at 50 s."""
    registry, tokens = scripted
    tokens.fields = lambda token: {"access_token": token}
    repo = unique_repo()
    clock = Clock()
    async with client_for(registry, clock=clock) as (client, auth):
        assert (await head_blob(client, repo)).status_code == 404
        clock.now += 49
        assert (await head_blob(client, repo)).status_code == 404
        assert auth.token_requests == 1
        clock.now += 2
        assert (await head_blob(client, repo)).status_code == 404
        assert auth.token_requests == 2


async def test_issued_at_in_the_past_shortens_the_lifetime(
    scripted: tuple[RegistryServer, ScriptedTokens], unique_repo: UniqueRepo
) -> None:
    import datetime as dt

    registry, tokens = scripted
    issued = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=200)).isoformat()
    tokens.fields = lambda token: {"token": token, "expires_in": 300, "issued_at": issued}
    repo = unique_repo()
    clock = Clock()
    async with client_for(registry, clock=clock) as (client, auth):
        await head_blob(client, repo)
        clock.now += 95  # about 100 s were left, minus a 10 s margin
        await head_blob(client, repo)
        assert auth.token_requests == 2


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (503, {"error": "down"}, RegistryUnreachable, "answered 503"),
        (429, {"error": "slow down"}, RateLimited, "rate limiting"),
        (403, {"error": "denied"}, Unauthorized, "rejected the credentials"),
        (400, {"error": "bad"}, RegistryError, "answered 400"),
        (200, b"<html>not json</html>", RegistryError, "JSON object"),
        (200, {"no": "token"}, RegistryError, "without a token"),
        (200, {"token": ""}, RegistryError, "without a token"),
    ],
)
async def test_token_service_failures_map_to_errors(
    scripted: tuple[RegistryServer, ScriptedTokens],
    unique_repo: UniqueRepo,
    status: int,
    body: Any,
    error: type[Exception],
    text: str,
) -> None:
    registry, tokens = scripted
    tokens.answers = [(status, body)]
    async with client_for(registry) as (client, _):
        with pytest.raises(error, match=text) as info:
            await head_blob(client, unique_repo())
    assert ADMIN_PASSWORD not in str(info.value)
    assert isinstance(info.value, RegistryError) and info.value.status == status
    assert info.value.operation == "token request"
    assert info.value.registry == registry.host


async def test_anonymous_rejection_says_so(
    scripted: tuple[RegistryServer, ScriptedTokens], unique_repo: UniqueRepo
) -> None:
    registry, tokens = scripted
    tokens.answers = [(401, {"error": "no"})]
    async with client_for(registry, ANONYMOUS) as (client, _):
        with pytest.raises(Unauthorized, match="refused anonymous access"):
            await head_blob(client, unique_repo())


async def test_get_token_request_carries_no_credentials_when_anonymous(
    scripted: tuple[RegistryServer, ScriptedTokens], unique_repo: UniqueRepo
) -> None:
    registry, tokens = scripted
    async with client_for(registry, ANONYMOUS) as (client, _):
        await head_blob(client, unique_repo())
    [(method, query, authorization)] = tokens.seen
    assert method == "GET" and authorization is None and "account" not in query


# --- optional scopes: refused mount sources never fail a request ---------------------------


def test_drop_grants_removes_only_the_named_actions() -> None:
    scopes = ("repository:d:push,pull", "repository:a:pull", "registry:catalog:*")
    assert drop_grants(scopes, grants(["repository:a:pull"])) == (
        "repository:d:push,pull",
        "registry:catalog:*",
    )
    assert drop_grants(scopes, grants(["repository:d:pull"]))[0] == "repository:d:push"


def test_optional_scopes_never_include_what_the_request_requires() -> None:
    request = httpx.Request(
        "POST",
        "http://r/v2/d/blobs/uploads/",
        extensions={
            SCOPES: ("repository:d:push,pull", "repository:s:pull"),
            OPTIONAL_SCOPES: ("repository:s:pull", "repository:m:pull"),
            MOUNT_SOURCE: "repository:x:pull",
        },
    )
    listed, optional = optional_scopes(request)
    assert listed == ("repository:s:pull", "repository:m:pull", "repository:x:pull")
    assert optional.optional == grants(["repository:m:pull", "repository:x:pull"])
    assert optional.essential == grants(["repository:x:pull"])
    plain = httpx.Request("GET", "http://r/v2/d/manifests/x", extensions=pull("d"))
    assert optional_scopes(plain) == ((), type(optional)())


def test_refused_scopes_expire_and_are_per_credential_and_bounded() -> None:
    memory = RefusedScopes(seconds=60, max_entries=2)
    reg = Registry.parse("hub.example")
    a = grants(["repository:a:pull"])
    b = grants(["repository:b:pull"])
    memory.remember(reg, ALICE.cache_key, a, now=100)
    assert memory.refused(reg, ALICE.cache_key, a | b, now=150) == a
    assert memory.refused(reg, READER.cache_key, a, now=150) == frozenset()
    assert memory.refused(Registry.parse("other.example"), ALICE.cache_key, a, now=150) == set()
    assert memory.refused(reg, ALICE.cache_key, a, now=161) == frozenset()  # expired
    memory.remember(reg, ALICE.cache_key, a | b | grants(["repository:c:pull"]), now=200)
    assert len(memory) == 2 and "grants=2" in repr(memory)


async def test_a_first_mount_whose_source_the_token_service_refuses_is_not_sent(
    registry_v3_token: RegistryServer, token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    """Docker Hub's rule on the session issuer: ``solo`` may pull only its own repositories.
    A first request (no challenge known yet) naming another's as its mount source: the token
    is asked again without it, the refusal remembered, and the mount never sent."""
    mine, theirs = unique_repo("solo/mine"), unique_repo("theirs")
    token_issuer.add_user("solo", "solo-pw", {f"{unique_repo}/solo/*": ["*"]})
    token_issuer.all_or_nothing = True
    memory = RefusedScopes()
    mark = registry_v3_token.mark()
    try:
        async with client_for(registry_v3_token, Credential("solo", "solo-pw"), refused=memory) as (
            client,
            auth,
        ):
            mount = {
                "params": {"mount": MISSING, "from": theirs},
                "extensions": {**push(mine), MOUNT_SOURCE: f"repository:{theirs}:pull"},
            }
            with pytest.raises(ScopeRefused) as caught:
                await client.post(f"/v2/{mine}/blobs/uploads/", **mount)
            assert "refused pull access to the mount source" in str(caught.value)
            assert "solo-pw" not in str(caught.value)
            # remembered: the next one is refused without any request at all
            before = auth.token_requests
            with pytest.raises(ScopeRefused):
                await client.post(f"/v2/{mine}/blobs/uploads/", **mount)
            assert auth.token_requests == before
            # and the destination's own requests still work with the token granted
            started = await client.post(f"/v2/{mine}/blobs/uploads/", extensions=push(mine))
            assert started.status_code == 202
    finally:
        token_issuer.all_or_nothing = False
    asked = [r for r in token_issuer.requests if r.user == "solo"]
    assert [r.status for r in asked] == [401, 200]
    assert [str(s) for s in asked[0].refused] == [f"repository:{theirs}:pull"]
    # the only mount request the registry saw is the unauthenticated first one (the challenge)
    assert [s for m, s in log_for(registry_v3_token, mark, mine) if m == "POST"] == [401, 202]


async def test_a_rejected_token_is_replaced_when_a_refused_optional_scope_was_left_out(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo
) -> None:
    """The token served without a refused optional scope is the one discarded when the
    registry stops accepting it (not kept because the request also named the refused one)."""
    mine, theirs = unique_repo("solo/mine"), unique_repo("theirs")
    issuer = TokenIssuer(
        users={"solo": "solo-pw"},
        acl={"solo": {f"{unique_repo}/solo/*": ["*"]}},
        all_or_nothing=True,
    ).start()
    try:
        registry = start_registry(
            impl="v3", auth="token", token_issuer=issuer, username=ADMIN_USER, password="pw"
        )
        extensions = {**pull(mine), OPTIONAL_SCOPES: (f"repository:{theirs}:pull",)}
        issuer.issuer = "someone-else"  # tokens the registry will not trust
        async with client_for(registry, Credential("solo", "solo-pw")) as (client, auth):
            url = f"/v2/{mine}/blobs/{MISSING}"
            assert (await client.head(url, extensions=extensions)).status_code == 401
            assert auth.token_requests == 2  # refused with the optional scope, granted without
            issuer.issuer = "imagecopy-test-issuer"
            assert (await client.head(url, extensions=extensions)).status_code == 404
            assert auth.token_requests == 3
        solo = [r for r in issuer.requests if r.user == "solo"]
        assert [r.status for r in solo] == [401, 200, 200]
        assert all(f"repository:{theirs}:pull" not in r.requested() for r in solo[1:])
    finally:
        issuer.stop()
