"""The token issuer grants exactly what is asked (within the ACL), and the registry enforces it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from testkit.images import make_layer, push_blob
from testkit.registry import RegistryServer
from testkit.token_issuer import TokenIssuer, parse_scope
from tests.support.fixtures import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    READER_PASSWORD,
    READER_USER,
    UniqueRepo,
)

pytestmark = pytest.mark.integration


def _claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def _token(issuer: TokenIssuer, scopes: list[str], auth: tuple[str, str] | None) -> httpx.Response:
    params: list[tuple[str, str | int | float | bool | None]] = [("service", issuer.service)]
    params += [("scope", s) for s in scopes]
    return httpx.get(issuer.realm, params=params, auth=auth)


def test_parse_scope() -> None:
    s = parse_scope("repository:a/b:pull,push")
    assert s is not None and (s.type, s.name, s.actions) == ("repository", "a/b", ("pull", "push"))
    s = parse_scope("registry:catalog:*")
    assert s is not None and (s.name, s.actions) == ("catalog", ("*",))
    assert parse_scope("nonsense") is None


def test_grants_exactly_the_requested_scopes(
    token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    dst, src = unique_repo("dst"), unique_repo("src")
    r = _token(token_issuer, [f"repository:{dst}:push,pull"], (ADMIN_USER, ADMIN_PASSWORD))
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    claims = _claims(body["token"])
    assert claims["access"] == [{"type": "repository", "name": dst, "actions": ["push", "pull"]}]
    assert {"iss", "sub", "aud", "exp", "nbf", "iat", "jti"} <= set(claims)
    assert claims["sub"] == ADMIN_USER and claims["aud"] == token_issuer.service
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and len(header["x5c"]) == 2
    # both scopes, one space-separated parameter (docker CLI style)
    r = _token(
        token_issuer,
        [f"repository:{dst}:push,pull repository:{src}:pull"],
        (ADMIN_USER, ADMIN_PASSWORD),
    )
    assert [a["name"] for a in _claims(r.json()["token"])["access"]] == [dst, src]
    rec = [q for q in token_issuer.requests if any(s.name == src for s in q.scopes_requested)][-1]
    assert rec.user == ADMIN_USER
    assert (
        rec.requested()
        == rec.granted()
        == [f"repository:{dst}:push,pull", f"repository:{src}:pull"]
    )


def test_acl_anonymous_and_bad_credentials(
    token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    r = _token(token_issuer, [f"repository:{repo}:pull,push"], (READER_USER, READER_PASSWORD))
    assert _claims(r.json()["token"])["access"] == [
        {"type": "repository", "name": repo, "actions": ["pull"]}
    ]
    r = _token(token_issuer, [f"repository:{repo}:pull"], None)
    assert r.status_code == 200 and _claims(r.json()["token"])["access"] == []
    assert token_issuer.requests[-1].user is None
    r = _token(token_issuer, [f"repository:{repo}:pull"], (ADMIN_USER, "wrong"))
    assert r.status_code == 401
    assert token_issuer.requests[-1].status == 401


def test_oauth2_password_and_refresh_grants(
    token_issuer: TokenIssuer, unique_repo: UniqueRepo
) -> None:
    repo = unique_repo()
    form = {
        "grant_type": "password",
        "username": ADMIN_USER,
        "password": ADMIN_PASSWORD,
        "service": token_issuer.service,
        "scope": f"repository:{repo}:pull",
        "client_id": "imagecopy-test",
    }
    r = httpx.post(token_issuer.realm, data=form)
    assert r.status_code == 200
    refresh = r.json()["refresh_token"]
    r = httpx.post(
        token_issuer.realm,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": token_issuer.service,
            "scope": f"repository:{repo}:push",
        },
    )
    assert r.status_code == 200
    assert _claims(r.json()["access_token"])["access"] == [
        {"type": "repository", "name": repo, "actions": ["push"]}
    ]
    assert token_issuer.requests[-1].grant_type == "refresh_token"
    assert httpx.post(token_issuer.realm, data={**form, "password": "no"}).status_code == 401
    assert (
        httpx.post(
            token_issuer.realm, data={"grant_type": "refresh_token", "refresh_token": "x"}
        ).status_code
        == 401
    )


def _bearer_for(reg: RegistryServer, challenge: str, auth: tuple[str, str]) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    scopes = params.get("scope", "").split(" ")
    r = httpx.get(
        params["realm"],
        params=[("service", params["service"])] + [("scope", s) for s in scopes if s],
        auth=auth,
    )
    r.raise_for_status()
    token: str = r.json()["token"]
    return token


def test_registry_enforces_scopes_on_mount(
    registry_v3_token: RegistryServer, unique_repo: UniqueRepo
) -> None:
    reg = registry_v3_token
    issuer = reg.token_issuer
    assert issuer is not None
    src, dst = unique_repo("src"), unique_repo("dst")
    layer = make_layer(1024)
    push_blob(reg, src, layer)
    creds = (ADMIN_USER, ADMIN_PASSWORD)
    mount = {"mount": layer.digest, "from": src}
    with reg.client() as c:
        # the registry's challenge names both scopes it needs
        r = c.post(f"/v2/{dst}/blobs/uploads/", params=mount)
        assert r.status_code == 401
        assert f"repository:{src}:pull" in r.headers["WWW-Authenticate"]
        # a client that asks only for the destination scope gets exactly that → not mounted
        tok = _token(issuer, [f"repository:{dst}:push,pull"], creds).json()["token"]
        r = c.post(
            f"/v2/{dst}/blobs/uploads/", params=mount, headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 401
        assert "insufficient_scope" in r.headers["WWW-Authenticate"]
        # a reader cannot push even when asking for everything
        tok = _bearer_for(reg, r.headers["WWW-Authenticate"], (READER_USER, READER_PASSWORD))
        r = c.post(
            f"/v2/{dst}/blobs/uploads/", params=mount, headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 401
        # destination push,pull + source pull → 201
        tok = _token(
            issuer, [f"repository:{dst}:push,pull", f"repository:{src}:pull"], creds
        ).json()["token"]
        r = c.post(
            f"/v2/{dst}/blobs/uploads/", params=mount, headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 201


def test_v2_token_auth_accepts_issuer_tokens(
    start_registry: Callable[..., RegistryServer],
    token_issuer: TokenIssuer,
    unique_repo: UniqueRepo,
) -> None:
    reg = start_registry(
        impl="v2",
        auth="token",
        token_issuer=token_issuer,
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
    )
    src, dst = unique_repo("src"), unique_repo("dst")
    layer = make_layer(512)
    push_blob(reg, src, layer)  # admin_headers: a token minted in-process
    with reg.client() as c:
        tok = _token(
            token_issuer, [f"repository:{dst}:push,pull"], (ADMIN_USER, ADMIN_PASSWORD)
        ).json()["token"]
        r = c.post(
            f"/v2/{dst}/blobs/uploads/",
            params={"mount": layer.digest, "from": src},
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert r.status_code == 401
        tok = _token(
            token_issuer,
            [f"repository:{dst}:push,pull", f"repository:{src}:pull"],
            (ADMIN_USER, ADMIN_PASSWORD),
        ).json()["token"]
        r = c.post(
            f"/v2/{dst}/blobs/uploads/",
            params={"mount": layer.digest, "from": src},
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert r.status_code == 201


def test_rs256_tokens_are_accepted(
    start_registry: Callable[..., RegistryServer], unique_repo: UniqueRepo
) -> None:
    issuer = TokenIssuer(users={"bob": "pw"}, algorithm="RS256").start()
    try:
        reg = start_registry(
            impl="v2", auth="token", token_issuer=issuer, username="bob", password="pw"
        )
        repo = unique_repo()
        tok = _token(issuer, [f"repository:{repo}:push,pull"], ("bob", "pw")).json()["token"]
        assert jwt.get_unverified_header(tok)["alg"] == "RS256"
        with reg.client() as c:
            r = c.post(f"/v2/{repo}/blobs/uploads/", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 202
    finally:
        issuer.stop()


def test_all_or_nothing_refuses_the_whole_request_like_docker_hub() -> None:
    """Docker Hub's rule: one unpullable repository scope makes the whole token request a 401
    (authenticated); anonymous callers still get a token without what they may not pull."""
    issuer = TokenIssuer(
        users={"tenant-a": "pa", "tenant-b": "pb"},
        acl={"tenant-a": {"a/*": ["*"], "library/*": ["pull"]}, "tenant-b": {"b/*": ["*"]}},
        anonymous_acl={"library/*": ["pull"]},
        all_or_nothing=True,
    ).start()
    try:
        both = ["repository:b/app:push,pull", "repository:a/private:pull"]
        r = _token(issuer, both, ("tenant-b", "pb"))
        assert r.status_code == 401
        assert r.json() == {"details": "access to the requested resource is not authorized"}
        rec = issuer.requests[-1]
        assert rec.status == 401 and rec.granted() == []
        assert [str(s) for s in rec.refused] == ["repository:a/private:pull"]
        # without the unpullable scope the same caller gets exactly what it asked for
        r = _token(issuer, both[:1], ("tenant-b", "pb"))
        assert r.status_code == 200
        assert _claims(r.json()["token"])["access"] == [
            {"type": "repository", "name": "b/app", "actions": ["push", "pull"]}
        ]
        # a scope that may be pulled but not pushed is not a refusal: push is just left out
        r = _token(issuer, ["repository:library/busybox:push,pull"], ("tenant-a", "pa"))
        assert r.status_code == 200
        assert _claims(r.json()["token"])["access"][0]["actions"] == ["pull"]
        # anonymous: a 200 token that leaves out the private repository
        r = _token(issuer, ["repository:library/busybox:pull", "repository:a/private:pull"], None)
        assert r.status_code == 200
        assert [a["name"] for a in _claims(r.json()["token"])["access"]] == ["library/busybox"]
        # the OAuth2 form is refused the same way
        r = httpx.post(
            issuer.realm,
            data={
                "grant_type": "password",
                "username": "tenant-b",
                "password": "pb",
                "service": issuer.service,
                "scope": " ".join(both),
            },
        )
        assert r.status_code == 401 and issuer.requests[-1].refused
    finally:
        issuer.stop()
