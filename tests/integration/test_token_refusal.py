"""Never fatal: a mount candidate whose token request is refused is dropped and the blob
uploads. A real distribution v3 behind a real token issuer with Docker Hub's all-or-nothing
rule (one unpullable repository scope refuses the whole token request with 401); two tenants
share one pool and one blob-location index, like the operator's."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from imagecopy.copy import BlobLocations, Copier, CopyOptions, CopyReport
from imagecopy.copy.report import TOKEN_REFUSED_REASON
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.errors import Unauthorized
from imagecopy.oci.pool import RegistryPool
from imagecopy.oci.reference import Reference
from testkit import images
from testkit.peers import crane_digest
from testkit.registry import RegistryServer
from testkit.token_issuer import TokenIssuer, TokenRequest
from tests.integration.copyhelpers import settings_for

pytestmark = pytest.mark.integration

A_USER, A_PASSWORD = "tenant-a", "a-secret"
B_USER, B_PASSWORD = "tenant-b", "b-secret"


@dataclass
class Hub:
    """A Docker Hub-like destination: tenants own ``a/*`` and ``b/*``, nobody else's."""

    source: RegistryServer
    dest: RegistryServer
    issuer: TokenIssuer

    def creds(self, user: str, password: str) -> CredentialStore:
        auths = {self.dest.host: {"username": user, "password": password}}
        return CredentialStore.from_docker_config(json.dumps({"auths": auths}))

    def requests_of(self, user: str) -> list[TokenRequest]:
        return [r for r in self.issuer.requests if r.user == user]


@pytest.fixture
def hub(
    registry_v2: RegistryServer, start_registry: Callable[..., RegistryServer]
) -> Iterator[Hub]:
    issuer = TokenIssuer(
        users={A_USER: A_PASSWORD, B_USER: B_PASSWORD},
        acl={A_USER: {"a/*": ["*"]}, B_USER: {"b/*": ["*"]}},
        all_or_nothing=True,
    ).start()
    try:
        dest = start_registry(
            impl="v3", auth="token", token_issuer=issuer, username="admin", password="admin-pw"
        )
        yield Hub(registry_v2, dest, issuer)
    finally:
        issuer.stop()


async def _copy(
    copier: Copier, src: str, dst: str, creds: CredentialStore, **options: object
) -> CopyReport:
    return await copier.copy(
        Reference.parse(src),
        Reference.parse(dst, default_tag=None),
        CopyOptions(**options),  # type: ignore[arg-type]
        creds,
    )


async def test_another_tenants_remembered_repositories_are_dropped_and_the_blobs_upload(
    hub: Hub,
) -> None:
    image = images.push_image(hub.source, "dh/app", "v1", layers=3)
    blobs = 4  # three layers and the config
    a_creds, b_creds = hub.creds(A_USER, A_PASSWORD), hub.creds(B_USER, B_PASSWORD)
    async with RegistryPool(settings_for(hub.source, hub.dest)) as pool:
        copier = Copier(pool, BlobLocations())
        first = await _copy(copier, image.ref, f"{hub.dest.host}/a/one:v1", a_creds)
        second = await _copy(copier, image.ref, f"{hub.dest.host}/a/two:v1", a_creds)
        assert (first.blobs_uploaded, second.blobs_mounted) == (blobs, blobs)

        # Tenant B: every remembered candidate is one of A's private repositories.
        hub.issuer.clear()
        mark = hub.dest.mark()
        report = await _copy(copier, image.ref, f"{hub.dest.host}/b/mine:v1", b_creds)
        assert report.blobs_uploaded == blobs and report.blobs_mounted == 0
        assert report.last_copy()["mount"] == {
            "attempted": 0,
            "refused": 0,
            "reason": TOKEN_REFUSED_REASON,
        }
        assert report.summary().endswith(f"; not mounted: {TOKEN_REFUSED_REASON}")
        # Each of A's repositories was refused once, then left out of every token request;
        # no mount request naming them was sent.
        refused = [r for r in hub.requests_of(B_USER) if r.status == 401]
        assert sorted(str(s) for r in refused for s in r.refused) == [
            "repository:a/one:pull",
            "repository:a/two:pull",
        ]
        assert not [e for e in hub.dest.access_log_since(mark) if e.is_mount]
        assert crane_digest(hub.dest, f"{hub.dest.host}/b/mine:v1") == image.digest

        # The refusal is remembered per registry and credential: the next copy of B's pays
        # no refused token request and mounts from B's own copy; A's copies still mount
        # from A's repositories.
        hub.issuer.clear()
        again = await _copy(copier, image.ref, f"{hub.dest.host}/b/again:v1", b_creds)
        assert again.blobs_mounted == blobs and again.mount_reason is None
        assert [r.status for r in hub.requests_of(B_USER)] and all(
            r.status == 200 and not r.refused for r in hub.requests_of(B_USER)
        )
        third = await _copy(copier, image.ref, f"{hub.dest.host}/a/three:v1", a_creds)
        assert third.blobs_mounted == blobs


async def test_an_unpullable_explicit_mount_source_is_dropped_and_a_pullable_one_mounts(
    hub: Hub,
) -> None:
    image = images.push_image(hub.source, "dh/base", "v1", layers=2)
    b_creds = hub.creds(B_USER, B_PASSWORD)
    async with RegistryPool(settings_for(hub.source, hub.dest)) as pool:
        copier = Copier(pool, BlobLocations())
        # A's copy of the image, and one of B's own, made with separate memories.
        await Copier(pool, BlobLocations()).copy(
            Reference.parse(image.ref),
            Reference.parse(f"{hub.dest.host}/a/base:v1"),
            CopyOptions(),
            hub.creds(A_USER, A_PASSWORD),
        )
        await Copier(pool, BlobLocations()).copy(
            Reference.parse(image.ref),
            Reference.parse(f"{hub.dest.host}/b/base:v1"),
            CopyOptions(),
            b_creds,
        )
        hub.issuer.clear()
        # Only an unpullable mountFrom: the copy's own token is asked again without it.
        alone = await _copy(
            copier, image.ref, f"{hub.dest.host}/b/alone:v1", b_creds, mount_from=("a/base",)
        )
        assert alone.blobs_uploaded == 3 and alone.mount_reason == TOKEN_REFUSED_REASON
        assert crane_digest(hub.dest, f"{hub.dest.host}/b/alone:v1") == image.digest
        # One unpullable and one pullable: which one is refused is found out, the other mounts.
        both = await _copy(
            copier,
            image.ref,
            f"{hub.dest.host}/b/both:v1",
            b_creds,
            mount_from=("a/base", "b/base"),
        )
        assert both.blobs_mounted == 3 and both.blobs_uploaded == 0
        assert both.mount_reason is None
        refused = {str(s) for r in hub.requests_of(B_USER) for s in r.refused}
        assert refused == {"repository:a/base:pull"}
        assert crane_digest(hub.dest, f"{hub.dest.host}/b/both:v1") == image.digest


async def test_a_refusal_that_is_the_credentials_own_still_fails_the_copy(hub: Hub) -> None:
    image = images.push_image(hub.source, "dh/x", "v1", layers=1)
    async with RegistryPool(settings_for(hub.source, hub.dest)) as pool:
        copier = Copier(pool, BlobLocations())
        # B may not push to A's repository: dropping mount sources cannot make that work.
        with pytest.raises(Unauthorized):
            await _copy(
                copier,
                image.ref,
                f"{hub.dest.host}/a/not-yours:v1",
                hub.creds(B_USER, B_PASSWORD),
                mount_from=("b/base",),
            )
        with pytest.raises(Unauthorized) as caught:
            await _copy(
                copier,
                image.ref,
                f"{hub.dest.host}/b/wrong-password:v1",
                hub.creds(B_USER, "wrong"),
                mount_from=("a/base",),
            )
        # the message names the copy's own repository, never the other tenant's, nor secrets
        assert "b/wrong-password" in str(caught.value)
        assert "a/base" not in str(caught.value) and "wrong" not in str(caught.value).replace(
            "b/wrong-password", ""
        )
