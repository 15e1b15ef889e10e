"""Two tenants on a Docker Hub-like registry: one tenant's repositories in the operator's
blob-location index never make another tenant's copies fail (issue 11's acceptance).

The destination is a real distribution v3 behind a real token issuer with Docker Hub's rule
(``all_or_nothing``: one repository scope the caller may not pull refuses the whole token
request with 401). Tenant A (namespace A, its own Secret) owns ``a/*``, tenant B
(namespace B, another Secret) owns ``b/*``; neither may read the other's. A's copies fill
the operator's index with A's private repositories; B's copies of the same blobs, into the
same destination registry from another registry, then meet A's repositories as mount
candidates: they must still reach Ready by uploading, with no ``Unauthorized``, and say why
nothing was mounted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import MANIFEST_ACCEPT, push_image
from testkit.registry import RegistryServer
from testkit.token_issuer import TokenIssuer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

A_USER, A_PASSWORD = "tenant-a", "tenant-a-secret"
B_USER, B_PASSWORD = "tenant-b", "tenant-b-secret"
TOKEN_REFUSED = "the token service refused pull access to the mount source"
#: What B's copies say when the index is partitioned per tenant (they then see no candidate).
NO_CANDIDATE = "different registries and no known source repository"


@pytest.fixture(scope="module")
def hub_issuer() -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(
        users={A_USER: A_PASSWORD, B_USER: B_PASSWORD},
        acl={A_USER: {"a/*": ["*"]}, B_USER: {"b/*": ["*"]}},
        all_or_nothing=True,
        realm_host="127.0.0.1",  # the operator's plain-HTTP list names 127.0.0.1
    ).start()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def hub(hub_issuer: TokenIssuer) -> Iterator[RegistryServer]:
    reg = RegistryServer(
        impl="v3",
        auth="token",
        token_issuer=hub_issuer,
        username="hub-admin",
        password="hub-admin-pw",
    ).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


@pytest.fixture
def tenants(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> Iterator[tuple[ImageCopies, ImageCopies]]:
    other = control_plane.create_namespace()
    try:
        yield ImageCopies(control_plane, namespace), ImageCopies(control_plane, other)
    finally:
        control_plane.delete_namespace(other)


def _spec(src: str, dst: str) -> dict[str, Any]:
    return {
        "source": {"image": src},
        "destination": {"image": dst, "secretRef": {"name": "hub"}},
    }


def _digest(reg: RegistryServer, repo: str, tag: str) -> str:
    with reg.client(headers=reg.admin_headers(repo)) as c:
        r = c.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def test_one_tenants_private_repositories_never_fail_another_tenants_copies(
    tenants: tuple[ImageCopies, ImageCopies],
    operator: OperatorProcess,
    registry_v2: RegistryServer,
    hub: RegistryServer,
    hub_issuer: TokenIssuer,
    unique_repo: Any,
) -> None:
    a, b = tenants
    a.create_docker_secret("hub", hub.host, A_USER, A_PASSWORD)
    b.create_docker_secret("hub", hub.host, B_USER, B_PASSWORD)
    image = push_image(registry_v2, unique_repo("upstream/app"), "1.0", layers=3)
    blobs = len(image.unique_blobs)
    src = registry_v2.ref(image.repo, "1.0")

    # Tenant A: the first copy uploads, the second mounts from the first: the operator's
    # index now knows A's private repositories hold these blobs.
    a.apply("one", _spec(src, hub.ref("a/one", "1.0")))
    one = a.wait_condition("one", reason="Copied", operator=operator)
    assert one["status"]["lastCopy"]["blobs"]["uploaded"] == blobs
    a.apply("two", _spec(src, hub.ref("a/two", "1.0")))
    two = a.wait_condition("two", reason="Copied", operator=operator)
    assert two["status"]["lastCopy"]["blobs"]["mounted"] == blobs

    # Tenant B copies the same blobs into the same registry: A's repositories are the
    # remembered candidates, and B may not pull them.
    hub_issuer.clear()
    b.apply("mine", _spec(src, hub.ref("b/mine", "1.0")))
    mine = b.wait_condition("mine", reason="Copied", operator=operator)
    last = mine["status"]["lastCopy"]
    assert last["blobs"]["uploaded"] == blobs and last["blobs"]["mounted"] == 0
    reason = last["mount"]["reason"]
    assert reason in (TOKEN_REFUSED, NO_CANDIDATE), last["mount"]
    assert last["mount"]["attempted"] == 0  # no mount request naming A's repositories
    assert b.condition(mine, "Ready")["message"].endswith(f"; not mounted: {reason}")
    assert _digest(hub, "b/mine", "1.0") == image.digest
    # No Unauthorized on the way: not as a condition, not as an event.
    assert all(b.condition(mine, t).get("reason") != "Unauthorized" for t in ("Stalled",))
    assert not [e for e in b.events("mine") if e.get("reason") == "Unauthorized"]
    # B's credential never got a token naming A's repositories.
    b_tokens = [r for r in hub_issuer.requests if r.user == B_USER]
    assert b_tokens and all(not s.name.startswith("a/") for r in b_tokens for s in r.scopes_granted)
    if reason == TOKEN_REFUSED:
        # Each of A's repositories cost B one refused token request, once.
        refused = sorted(str(s) for r in b_tokens for s in r.refused)
        assert refused == ["repository:a/one:pull", "repository:a/two:pull"]

    # A second copy of B's: B's own repository is a candidate now and mounts; the refusals
    # are remembered, so no token request of B's is refused again.
    hub_issuer.clear()
    b.apply("again", _spec(src, hub.ref("b/again", "1.0")))
    again = b.wait_condition("again", reason="Copied", operator=operator)
    assert again["status"]["lastCopy"]["blobs"]["mounted"] == blobs
    assert all(r.status == 200 for r in hub_issuer.requests if r.user == B_USER)
    assert _digest(hub, "b/again", "1.0") == image.digest
