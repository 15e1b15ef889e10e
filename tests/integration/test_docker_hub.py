"""Docker Hub's conventions end to end, with ``registry-1.docker.io`` routed to local servers.

- Names: ``busybox``, ``library/busybox``, ``docker.io/…``, ``index.docker.io/…`` and
  ``registry-1.docker.io/…`` are one repository, ``registry-1.docker.io/library/busybox``.
- Tokens: Docker Hub's all-or-nothing token service (``TokenIssuer(all_or_nothing=True)``);
  an anonymous pull of a public ``library/`` image asks for exactly one scope.
- Rate limits: a 429 with ``ratelimit-limit`` / ``ratelimit-remaining`` /
  ``docker-ratelimit-source`` ends in ``RateLimited`` whose message says the quota in words.

The host override is test plumbing only: a transport at the bottom of the pool's stack sends
connections for ``registry-1.docker.io`` to a real distribution registry (or the hostile
server) on loopback, keeping the ``Host`` header; everything above it (egress rule, auth,
retries, the engine) sees Docker Hub's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from imagecopy.controller.failures import failure_for
from imagecopy.copy import Copier, CopyOptions
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.errors import RateLimited
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import DOCKER_HUB, Reference
from testkit import images
from testkit.hostile import SOURCE_REPOSITORY, HostileRegistry
from testkit.registry import RegistryServer
from testkit.token_issuer import TokenIssuer
from tests.integration.copyhelpers import FAST_RETRY, repo

pytestmark = pytest.mark.integration

SPELLINGS = (
    "busybox",
    "library/busybox",
    "docker.io/busybox",
    "docker.io/library/busybox",
    "index.docker.io/busybox",
    "index.docker.io/library/busybox",
    "registry-1.docker.io/library/busybox",
    "Docker.IO/library/busybox",
)


class HubOverride(httpx.AsyncBaseTransport):
    """Connects requests for ``registry-1.docker.io`` to ``target`` (``host:port``); the
    request itself (URL, ``Host`` header) is left as the client made it."""

    def __init__(self, target: str) -> None:
        self.target_host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.hub_requests = 0
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        original = request.url
        if original.host == DOCKER_HUB:
            self.hub_requests += 1
            request.url = original.copy_with(host=self.target_host, port=self.target_port)
        try:
            return await self._inner.handle_async_request(request)
        finally:
            request.url = original

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_names_one_repository(spelling: str) -> None:
    ref = Reference.parse(f"{spelling}:1.36")
    assert (str(ref.registry), ref.repository, ref.tag) == (DOCKER_HUB, "library/busybox", "1.36")
    assert ref.scope("pull") == "repository:library/busybox:pull"


def test_user_repositories_and_other_registries_keep_their_names() -> None:
    assert Reference.parse("docker.io/someone/app:1").repository == "someone/app"
    assert Reference.parse("someone/app:1").registry.host == DOCKER_HUB
    # a port makes it another registry, never Docker Hub, and no library/ is added
    other = Reference.parse("docker.io:5000/busybox:1")
    assert (str(other.registry), other.repository) == ("docker.io:5000", "busybox")


@pytest.fixture
def hub(start_registry: Callable[..., RegistryServer]) -> Iterator[RegistryServer]:
    """Docker Hub as a real distribution v3 behind an all-or-nothing token service that lets
    anyone pull ``library/*``."""
    issuer = TokenIssuer(
        users={"hub-admin": "hub-admin-pw"},
        acl={"hub-admin": {"*": ["*"]}},
        anonymous_acl={"library/*": ["pull"]},
        all_or_nothing=True,
    ).start()
    try:
        yield start_registry(
            impl="v3", auth="token", token_issuer=issuer, username="hub-admin", password="pw"
        )
    finally:
        issuer.stop()


async def test_a_copy_spelled_any_way_pulls_library_busybox_with_one_scope(
    hub: RegistryServer, registry_v2: RegistryServer
) -> None:
    image = images.push_image(hub, "library/busybox", "1.36", layers=2)
    issuer = hub.token_issuer
    assert issuer is not None
    realm = f"{issuer.realm_host}:{issuer.port}"
    settings = TransportSettings(
        plain_http=frozenset({DOCKER_HUB, realm, registry_v2.host}), retry=FAST_RETRY
    )
    override = HubOverride(hub.host)
    async with RegistryPool(settings, transport=override) as pool:
        copier = Copier(pool)
        issuer.clear()
        for spelling in SPELLINGS[::2]:  # one copy each of four spellings
            mark = hub.mark()
            dst = f"{registry_v2.host}/{repo('mirror')}:1.36"
            report = await copier.copy(
                Reference.parse(f"{spelling}:1.36"),
                Reference.parse(dst, default_tag=None),
                CopyOptions(),
                CredentialStore(),  # anonymous, like a public pull
            )
            assert report.source_digest == image.digest
            assert report.source == f"{DOCKER_HUB}/library/busybox:1.36"
            seen = {e.repo for e in hub.access_log_since(mark) if e.repo}
            assert seen == {"library/busybox"}
    # One anonymous token for all four (they are one repository), asked for exactly the one
    # pull scope, and granted it.
    scope = ["repository:library/busybox:pull"]
    asked = [(r.user, r.requested(), r.granted(), r.status) for r in issuer.requests]
    assert asked == [(None, scope, scope, 200)]
    assert override.hub_requests > 0


async def test_a_docker_hub_rate_limit_is_said_in_the_rate_limited_message() -> None:
    hostile = HostileRegistry("dockerhub-rate-limited").start()
    try:
        settings = TransportSettings(plain_http=frozenset({DOCKER_HUB}), retry=FAST_RETRY)
        async with RegistryPool(settings, transport=HubOverride(hostile.host)) as pool:
            with pytest.raises(RateLimited) as caught:
                await Copier(pool).copy(
                    Reference.parse(f"docker.io/{SOURCE_REPOSITORY}:1"),
                    Reference.parse(f"docker.io/{SOURCE_REPOSITORY}-copy:1"),
                    CopyOptions(),
                    CredentialStore(),
                )
        failure = failure_for(caught.value)
        assert failure.reason == "RateLimited" and not failure.stalled
        assert failure.message.endswith(
            f"{DOCKER_HUB} rate limit: 0 of 100 pulls left per 21600 s window, "
            "counted against 192.0.2.7"
        )
        assert "TOOMANYREQUESTS" in failure.message
        gets = [r for r in hostile.requests() if r.method == "GET" and "/manifests/" in r.path]
        assert gets and all(r.status == 429 for r in gets)
    finally:
        hostile.stop()
