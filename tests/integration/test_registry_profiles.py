"""The registry matrix: every profile of ``testkit/profiles.py`` (a front that makes a real
distribution registry answer like Docker Hub, Harbor, GHCR, ECR, GitLab, Quay, zot or
Artifactory) and the three real implementations (distribution 2.8, 3.1, go-containerregistry)
x {same-registry copy, cross-registry copy with a remembered mount candidate, refused or
impossible mount, index copy, referrers}.

Each row asserts the destination digest read back by a peer (crane), the blob counts, the
``mount`` explanation of every blob not mounted, and the mount requests of the transcript:
no wasted request beyond one refused mount per registry (and credential) per memory period —
every scenario runs two copies in a row and the second pays no refused mount.

``IMAGECOPY_PROFILE_TABLE=<file>`` appends one JSON line per row (the table of the README's
"Registry compatibility" section and the issue's closing note).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from imagecopy.controller.failures import failure_for
from imagecopy.copy import CopyOptions, CopyReport
from imagecopy.copy.locations import BlobLocations
from imagecopy.copy.refusals import MountRefusals
from imagecopy.oci.errors import PushRejected, RateLimited
from imagecopy.oci.pool import TransportSettings
from testkit import images
from testkit.peers import crane_digest
from testkit.profiles import GHCR_API, PROFILES, ProfileFront
from testkit.registry import RegistryServer
from testkit.token_issuer import TokenIssuer
from tests.integration.copyhelpers import copy, credentials_for, settings_for

pytestmark = pytest.mark.integration

REAL = ("distribution-2.8", "distribution-3.1", "ggcr")
TARGETS = (*PROFILES, *REAL)
#: Profiles whose registry serves the referrers API (the others: the tag schema).
REFERRERS_API = {"harbor", "ecr", "ecr-mounting", "zot", "zot-old", "artifactory", "ggcr"}
NO_CANDIDATE = "different registries and no known source repository"
SEED = 1107


def _answered(status: int) -> str:
    return f"registry answered {status} to cross-repository mounts"


def _recently(status: int) -> str:
    return f"registry refused cross-repository mounts recently ({status}); not asked again until"


# What each target's registry does with a mount, per scenario: "mounted", an HTTP status
# (a refusal, or 202: a session the blob is uploaded into), or "existing" (go-containerregistry
# keeps one blob store, so the HEAD before any mount finds the blob).
SAME: dict[str, int | str] = {t: "mounted" for t in TARGETS} | {
    "ecr": 202,
    "zot-old": 405,
    "ggcr": 202,
}
CROSS: dict[str, int | str] = {t: "mounted" for t in TARGETS} | {
    "ecr": 202,
    "zot-old": 405,
    "ggcr": "existing",
}
# The candidate holds the blobs (no manifest names them) and the caller may not pull it.
REFUSED: dict[str, int | str] = {t: "mounted" for t in TARGETS} | {
    "dockerhub": "token",  # the whole token request is refused: the candidate is dropped
    "harbor": 401,
    "ghcr": 403,
    "ecr": 202,
    "ecr-mounting": 202,  # no manifest of the candidate references the blobs
    "gitlab": 202,
    "quay": 202,
    "zot-old": 405,
    "ggcr": "existing",
}


@dataclass
class Target:
    name: str
    reg: Any  # RegistryServer or ProfileFront
    source: RegistryServer  # the other registry, for cross-registry rows


@pytest.fixture(scope="module")
def upstream(request: pytest.FixtureRequest) -> Iterator[RegistryServer]:
    """One real distribution 3.1 behind every profile but Docker Hub's."""
    with RegistryServer(impl="v3") as reg:
        yield reg


@pytest.fixture(scope="module")
def hub_upstream() -> Iterator[RegistryServer]:
    """Docker Hub's profile sits on token auth with the all-or-nothing scope rule: the user
    may pull and push everything but ``secret/…``."""
    issuer = TokenIssuer(
        users={"alice": "hub-secret"},
        acl={"alice": {"ns*": ["*"], "t/*": ["*"]}},
        all_or_nothing=True,
    ).start()
    try:
        with RegistryServer(
            impl="v3", auth="token", username="alice", password="hub-secret", token_issuer=issuer
        ) as reg:
            yield reg
    finally:
        issuer.stop()


@pytest.fixture(scope="module")
def fronts(upstream: RegistryServer, hub_upstream: RegistryServer) -> Iterator[dict[str, Any]]:
    started = {
        p: ProfileFront(p, hub_upstream if p == "dockerhub" else upstream).start() for p in PROFILES
    }
    yield started
    for front in started.values():
        front.stop()


@pytest.fixture
def target(
    request: pytest.FixtureRequest,
    fronts: dict[str, Any],
    registry_v2: RegistryServer,
    registry_v3: RegistryServer,
    registry_ggcr: RegistryServer,
) -> Target:
    name: str = request.param
    real = {"distribution-2.8": registry_v2, "distribution-3.1": registry_v3, "ggcr": registry_ggcr}
    reg = real.get(name) or fronts[name]
    return Target(name, reg, registry_v3 if reg is registry_v2 else registry_v2)


def _ns(t: Target) -> str:
    """A fresh top-level namespace (GitLab mounts only within one); Docker Hub's ACL lets
    the user at ``ns…``."""
    return f"ns{uuid.uuid4().hex[:8]}"


def _mounts(t: Target, mark: int) -> list[Any]:
    return [e for e in t.reg.access_log_since(mark) if e.is_mount]


def _uploads_started(t: Target, mark: int) -> int:
    """POSTs that opened (or tried to open) an upload session, mounts included."""
    return sum(
        1
        for e in t.reg.access_log_since(mark)
        if e.method == "POST" and e.path.endswith("/blobs/uploads/")
    )


def _row(t: Target, scenario: str, reports: list[CopyReport], mounts: list[int], note: str) -> None:
    table = os.environ.get("IMAGECOPY_PROFILE_TABLE")
    if not table:
        return
    row = {
        "target": t.name,
        "scenario": scenario,
        "note": note,
        "copies": [
            {
                "blobs": r.last_copy()["blobs"],
                "mount": r.mount_json(),
                "requests": r.requests,
                "mountRequests": m,
            }
            for r, m in zip(reports, mounts, strict=True)
        ],
    }
    with open(table, "a") as f:
        f.write(json.dumps(row) + "\n")


def _check_outcome(report: CopyReport, expected: int | str, blobs: int, remembered: bool) -> None:
    """Counts and the ``mount`` explanation for one copy of ``blobs`` new blobs;
    ``remembered``: an earlier copy's refusal keeps this one from asking."""
    mount = report.mount_json()
    if expected == "mounted":
        assert report.blobs_mounted == blobs and report.blobs_uploaded == 0
        assert mount == {"attempted": blobs, "refused": 0, "reason": None}
    elif expected == "existing":
        assert report.blobs_existing == blobs and report.blobs_uploaded == 0
        assert mount["reason"] is None or mount["refused"] == mount["attempted"]
    elif expected == "token":
        assert report.blobs_uploaded == blobs and report.blobs_mounted == 0
        assert mount["reason"] is not None
    else:
        assert report.blobs_mounted == 0
        assert report.blobs_uploaded + report.blobs_existing == blobs
        if remembered:
            assert mount["attempted"] == 0 and mount["reason"].startswith(_recently(int(expected)))
        else:
            assert mount["refused"] == mount["attempted"] >= 1
            assert mount["reason"] == _answered(int(expected))


@pytest.mark.parametrize("target", TARGETS, indirect=True)
async def test_same_registry_copy(target: Target) -> None:
    t, ns = target, _ns(target)
    src = images.push_image(t.reg, f"{ns}/dev", "1", layers=2)
    expected = SAME[t.name]
    refusals = MountRefusals(600)
    reports, mounts = [], []
    for n in (1, 2):
        dst = f"{t.reg.host}/{ns}/prod{n}:1"
        mark = t.reg.mark()
        report = await copy(src.ref, dst, t.reg, refusals=refusals)
        sent = _mounts(t, mark)
        reports.append(report)
        mounts.append(len(sent))
        assert crane_digest(t.reg, dst) == src.digest
        if expected == "mounted":
            assert [e.status for e in sent] == [201] * 3
        elif t.name == "ggcr":
            # The probe's 202; then every blob is looked for first, and found.
            assert [e.status for e in sent] == ([202] if n == 1 else [])
        elif expected == 202:
            # After the probe's 202 each blob is looked for first; its mount then opens the
            # upload's own session: no POST beyond one per uploaded blob, in either copy.
            assert [e.status for e in sent] == [202] * 3
            assert _uploads_started(t, mark) == report.blobs_uploaded == 3
        elif n == 1:
            # One probe: its refusal keeps the copy's other blobs from asking.
            assert [e.status for e in sent] == [expected]
        else:
            assert sent == []  # remembered: the second copy pays no refused mount
        _check_outcome(
            report, "existing" if t.name == "ggcr" else expected, 3, n == 2 and expected != 202
        )
    _row(t, "same registry", reports, mounts, str(expected))


@pytest.mark.parametrize("target", TARGETS, indirect=True)
async def test_cross_registry_copy_mounts_from_a_remembered_repository(target: Target) -> None:
    t, ns = target, _ns(target)
    src = images.push_image(t.source, f"t/{uuid.uuid4().hex[:8]}", "1", layers=2)
    locations, refusals = BlobLocations(), MountRefusals(600)
    mark = t.reg.mark()
    first = await copy(
        src.ref,
        f"{t.reg.host}/{ns}/mirror:1",
        t.source,
        t.reg,
        locations=locations,
        refusals=refusals,
    )
    assert _mounts(t, mark) == []  # no candidate yet
    if t.name == "ggcr":
        assert first.blobs_existing + first.blobs_uploaded == 3
    else:
        assert first.blobs_uploaded == 3
        assert first.mount_json() == {"attempted": 0, "refused": 0, "reason": NO_CANDIDATE}
    expected = CROSS[t.name]
    reports, mounts = [first], [0]
    for n in (1, 2):
        dst = f"{t.reg.host}/{ns}/team{n}:1"
        mark = t.reg.mark()
        report = await copy(src.ref, dst, t.source, t.reg, locations=locations, refusals=refusals)
        sent = _mounts(t, mark)
        reports.append(report)
        mounts.append(len(sent))
        assert crane_digest(t.reg, dst) == src.digest
        if expected == "mounted":
            # Newest first: the second copy mounts from the first copy's destination.
            held = {f"{ns}/mirror", *(f"{ns}/team{k}" for k in range(1, n))}
            assert [e.status for e in sent] == [201] * 3
            assert {e.q("from") for e in sent} <= held
            _check_outcome(report, expected, 3, remembered=False)
        elif expected == 202:
            # Each 202 is the upload's own session: no POST beyond one per uploaded blob.
            assert [e.status for e in sent] == [202] * 3
            assert _uploads_started(t, mark) == report.blobs_uploaded == 3
            _check_outcome(report, expected, 3, remembered=False)
        elif expected == "existing":
            assert sent == [] and report.blobs_existing == 3
        else:
            assert [e.status for e in sent] == ([expected] if n == 1 else [])
            _check_outcome(report, expected, 3, remembered=n == 2)
    _row(t, "cross registry, remembered candidate", reports, mounts, str(expected))


@pytest.mark.parametrize("target", TARGETS, indirect=True)
async def test_a_refused_or_impossible_mount_uploads_and_is_not_asked_again(
    target: Target,
) -> None:
    t = target
    ns = _ns(t)
    # The candidate: the same blobs, no manifest, in a repository the caller may not pull.
    secret = f"secret/{uuid.uuid4().hex[:8]}"
    src = images.push_image(t.source, f"t/{uuid.uuid4().hex[:8]}", "1", layers=2, seed=SEED)
    held = images.push_image(t.reg, f"{secret}-full", None, layers=2, seed=SEED)
    assert {b["digest"] for b in held.blobs} == {b["digest"] for b in src.blobs}
    for blob in src.blobs:
        _link(t, f"{secret}-full", secret, blob["digest"])
    if isinstance(t.reg, ProfileFront):
        t.reg.deny(secret)
    expected = REFUSED[t.name]
    refusals = MountRefusals(600)
    options = CopyOptions(mount_from=(secret,))
    reports, mounts = [], []
    for n in (1, 2):
        dst = f"{t.reg.host}/{ns}/prod{n}:1"
        mark = t.reg.mark()
        report = await copy(src.ref, dst, t.source, t.reg, options=options, refusals=refusals)
        sent = _mounts(t, mark)
        reports.append(report)
        mounts.append(len(sent))
        assert crane_digest(t.reg, dst) == src.digest
        if expected == "mounted":
            assert [e.status for e in sent] == [201] * 3
            _check_outcome(report, expected, 3, remembered=False)
        elif expected == "token":
            assert sent == []  # the token service refused the candidate's scope
            _check_outcome(report, expected, 3, remembered=False)
            refused_tokens = [r for r in t.reg.token_issuer.requests if r.refused]
            assert refused_tokens  # Docker Hub's 401 for the whole request happened
            if n == 1:
                assert report.mount_json()["reason"].startswith(
                    "the token service refused pull access to the mount source"
                )
            else:
                assert report.mount_json()["reason"].startswith(_recently(401))
        elif expected == 202:
            assert [e.status for e in sent] == [202] * 3
            assert _uploads_started(t, mark) == report.blobs_uploaded == 3
            _check_outcome(report, expected, 3, remembered=False)
        elif expected == "existing":
            assert sent == [] and report.blobs_existing == 3
        else:
            assert [e.status for e in sent] == ([expected] if n == 1 else [])
            assert report.blobs_uploaded == 3
            mount = report.mount_json()
            if n == 1:
                assert mount == {"attempted": 1, "refused": 1, "reason": _answered(int(expected))}
            else:
                assert mount["attempted"] == 0 and mount["reason"].startswith(
                    _recently(int(expected))
                )
    _row(t, "refused or impossible mount", reports, mounts, str(expected))


def _link(t: Target, holder: str, repo: str, digest: str) -> None:
    """Put blob ``digest`` into ``repo`` without a manifest (a mount on the real registry
    behind the front, or an upload of its bytes where the registry cannot mount)."""
    reg = t.reg.upstream if isinstance(t.reg, ProfileFront) else t.reg
    with reg.client(headers=reg.admin_headers([repo, holder])) as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": holder})
        if r.status_code == 201:
            return
        assert r.status_code == 202, r.text
        data = c.get(f"/v2/{holder}/blobs/{digest}").content
        location = r.headers["Location"]
        put = c.put(images.append_query(location, digest=digest), content=data)
        assert put.status_code == 201, put.text


@pytest.mark.parametrize("target", TARGETS, indirect=True)
async def test_index_copy(target: Target) -> None:
    t, ns = target, _ns(target)
    src = images.push_index(t.reg, f"{ns}/dev", "1", platforms=("linux/amd64", "linux/arm64"))
    blobs = len({b["digest"] for child in src.children for b in child.blobs})
    expected = SAME[t.name]
    refusals = MountRefusals(600)
    reports, mounts = [], []
    for n in (1, 2):
        dst = f"{t.reg.host}/{ns}/prod{n}:1"
        mark = t.reg.mark()
        report = await copy(src.ref, dst, t.reg, refusals=refusals)
        sent = _mounts(t, mark)
        reports.append(report)
        mounts.append(len(sent))
        assert crane_digest(t.reg, dst) == src.digest
        assert report.manifests_copied == 3
        if expected == "mounted":
            assert len(sent) == blobs and {e.status for e in sent} == {201}
        elif t.name == "ggcr":
            assert [e.status for e in sent] == ([202] if n == 1 else [])
        elif expected == 202:
            assert [e.status for e in sent] == [202] * blobs
            assert _uploads_started(t, mark) == report.blobs_uploaded == blobs
        else:
            assert [e.status for e in sent] == ([expected] if n == 1 else [])
        _check_outcome(
            report,
            "existing" if t.name == "ggcr" else expected,
            blobs,
            n == 2 and expected != 202,
        )
    _row(t, "index", reports, mounts, str(expected))


@pytest.mark.parametrize("target", TARGETS, indirect=True)
async def test_referrers_are_copied_by_the_api_or_the_tag_schema(target: Target) -> None:
    t, ns = target, _ns(target)
    api = t.name in REFERRERS_API
    src = images.push_image(t.reg, f"{ns}/dev", "1", layers=1)
    art = images.push_artifact(t.reg, f"{ns}/dev", src, referrers_tag_fallback=not api)
    dst_repo = f"{ns}/prod"
    mark = t.reg.mark()
    report = await copy(
        src.ref, f"{t.reg.host}/{dst_repo}:1", t.reg, options=CopyOptions(referrers=True)
    )
    assert report.referrers == 1
    # The image's two blobs and the artifact's two (empty config, payload), placed as the
    # same-registry row says.
    expected = "existing" if t.name == "ggcr" else SAME[t.name]
    _check_outcome(report, expected, 4, remembered=False)
    assert crane_digest(t.reg, f"{t.reg.host}/{dst_repo}@{art.digest}") == art.digest
    log = t.reg.access_log_since(mark)
    listed = [e for e in log if e.method == "GET" and "/referrers/" in e.path]
    fallback = images.referrers_fallback_index(t.reg, dst_repo, src.digest)
    if api:
        with t.reg.client() as c:
            r = c.get(f"/v2/{dst_repo}/referrers/{src.digest}")
        assert r.status_code == 200
        assert [m["digest"] for m in r.json()["manifests"]] == [art.digest]
        assert fallback is None  # the destination's API lists the push: no tag schema index
    else:
        # GHCR's 303 (to its rate-limited API) is "no API" too, and is not followed.
        assert listed and listed[0].status in (303, 400, 404, 406)
        assert not [e for e in log if e.path.startswith(GHCR_API)]
        assert fallback is not None
        assert [m["digest"] for m in fallback["manifests"]] == [art.digest]
    _row(t, "referrers", [report], [len(_mounts(t, mark))], "api" if api else "tag schema")


async def test_ecr_answers_a_chunk_201_and_the_chunked_upload_completes(
    upstream: RegistryServer, registry_v2: RegistryServer
) -> None:
    """ECR answers a ``PATCH`` with 201 instead of the spec's 202: the chunk is taken."""
    with ProfileFront("ecr", upstream, chunked_only=True) as ecr:
        src = images.push_image(registry_v2, f"t/{uuid.uuid4().hex[:8]}", "1", layers=2)
        dst = f"{ecr.host}/{_ns(Target('ecr', ecr, registry_v2))}/app:1"
        mark = ecr.mark()
        report = await copy(src.ref, dst, registry_v2, ecr, options=CopyOptions(chunk_size=1024))
        log = ecr.access_log_since(mark)
        patches = [e for e in log if e.method == "PATCH"]
        assert patches and {e.status for e in patches} == {201}
        assert all(e.emulated for e in patches)
        assert [e.status for e in log if e.method == "PUT" and "/blobs/" in e.path].count(416) == 3
        assert report.blobs_uploaded == 3
        assert crane_digest(ecr, dst) == src.digest


async def test_docker_hub_counts_pulls_not_heads_and_a_spent_quota_is_said(
    fronts: dict[str, Any], registry_v2: RegistryServer
) -> None:
    hub: ProfileFront = fronts["dockerhub"]
    ns = f"ns{uuid.uuid4().hex[:8]}"
    src = images.push_image(hub, f"{ns}/dev", "1", layers=1)
    before, mark = hub.rate_remaining, hub.mark()
    await copy(src.ref, f"{hub.host}/{ns}/prod:1", hub)
    log = hub.access_log_since(mark)
    gets = [e for e in log if e.method == "GET" and "/manifests/" in e.path and e.status == 200]
    heads = [e for e in log if e.method == "HEAD" and "/manifests/" in e.path]
    assert gets and heads
    assert before - hub.rate_remaining == len(gets)  # HEAD requests are free
    spent, hub.rate_remaining = hub.rate_remaining, 0
    try:
        with pytest.raises(RateLimited) as limited:
            await copy(src.ref, f"{hub.host}/{ns}/prod2:1", hub)
    finally:
        hub.rate_remaining = spent
    # The quota headers in words are the tenants branch's (oci/ratelimit.py).
    assert "rate-limited" in str(limited.value) and "(429)" in str(limited.value)


# -- GHCR: the referrers endpoint's 303 to a rate-limited API -----------------------------


def _referrer_gets(log: list[Any]) -> list[Any]:
    return [e for e in log if e.method == "GET" and "/referrers/" in e.path]


async def test_ghcr_redirects_referrers_to_a_rate_limited_api_and_the_tag_schema_is_used(
    upstream: RegistryServer,
) -> None:
    """GHCR's referrers endpoint answers 303 to its rate-limited API. imagecopy never
    follows a redirect there (``RepositoryClient.list_referrers``: a 3xx means "no referrers
    API"), so the rate-limited API is never asked and the tag schema carries the referrers."""
    with ProfileFront("ghcr", upstream, ghcr_api_budget=1) as ghcr:
        ns = f"ns{uuid.uuid4().hex[:8]}"
        src = images.push_image(ghcr, f"{ns}/dev", "1", layers=1)
        art = images.push_artifact(ghcr, f"{ns}/dev", src, referrers_tag_fallback=True)
        mark = ghcr.mark()
        report = await copy(
            src.ref, f"{ghcr.host}/{ns}/prod:1", ghcr, options=CopyOptions(referrers=True)
        )
        log = ghcr.access_log_since(mark)
        assert report.referrers == 1
        assert crane_digest(ghcr, f"{ghcr.host}/{ns}/prod@{art.digest}") == art.digest
        fallback = images.referrers_fallback_index(ghcr, f"{ns}/prod", src.digest)
        assert fallback is not None
        assert [m["digest"] for m in fallback["manifests"]] == [art.digest]
        # One listing of the source, one of the destination after the push (no
        # ``OCI-Subject``): each a 303, each asked once per repository, none followed.
        gets = _referrer_gets(log)
        assert [(e.path.split("/referrers/")[0], e.status) for e in gets] == [
            (f"/v2/{ns}/dev", 303),
            (f"/v2/{ns}/prod", 303),
        ]
        assert all(e.emulated for e in gets)
        assert not [e for e in log if e.path.startswith(GHCR_API)]
        # The redirect is real: followed (as imagecopy does not), it reaches the API on the
        # same origin, which answers 404 while its budget lasts and then 429 with Retry-After.
        mark = ghcr.mark()
        with ghcr.client(follow_redirects=True) as c:
            first = c.get(f"/v2/{ns}/dev/referrers/{src.digest}")
            second = c.get(f"/v2/{ns}/dev/referrers/{src.digest}")
        assert first.status_code == 404 and second.status_code == 429
        assert second.headers["Retry-After"] == "1"
        assert [(e.path.startswith(GHCR_API), e.status) for e in ghcr.access_log_since(mark)] == [
            (False, 303),
            (True, 404),
            (False, 303),
            (True, 429),
        ]


async def test_ghcr_a_429_on_the_referrers_endpoint_is_rate_limited_not_no_api(
    upstream: RegistryServer,
) -> None:
    """Where the referrers endpoint itself is the rate-limited API, its 429 is retried
    (``Retry-After`` honoured) and then fails the copy as ``RateLimited`` — never taken for
    "no referrers API", which would silently drop the referrers."""
    with ProfileFront("ghcr", upstream, ghcr_redirect=False, ghcr_api_budget=0) as ghcr:
        ns = f"ns{uuid.uuid4().hex[:8]}"
        src = images.push_image(ghcr, f"{ns}/dev", "1", layers=1)
        mark = ghcr.mark()
        with pytest.raises(RateLimited) as limited:
            await copy(
                src.ref, f"{ghcr.host}/{ns}/prod:1", ghcr, options=CopyOptions(referrers=True)
            )
        log = ghcr.access_log_since(mark)
        gets = _referrer_gets(log)
        # FAST_RETRY's three attempts of the one listing, each answered 429.
        assert [e.status for e in gets] == [429, 429, 429]
        assert "rate-limited" in str(limited.value) and "(429)" in str(limited.value)
        assert failure_for(limited.value).reason == "RateLimited"
        # The listing comes before any write: nothing was pushed to the destination.
        assert not [e for e in log if e.method in ("PUT", "POST", "PATCH")]


async def test_ghcr_blob_redirects_to_another_origin_carry_no_credentials(
    registry_v2: RegistryServer,
) -> None:
    """GHCR answers a blob GET with a redirect to its package CDN, another origin: imagecopy
    follows it (blob reads follow redirects) and sends the registry's credentials only to the
    registry — the CDN sees none (docs/reference.md §9)."""
    with (
        RegistryServer(impl="v3", auth="basic") as up,
        ProfileFront("ghcr", up, ghcr_blob_cdn=True) as ghcr,
    ):
        src = images.push_image(ghcr, f"ns{uuid.uuid4().hex[:8]}/dev", "1", layers=2)
        dst = f"{registry_v2.host}/{uuid.uuid4().hex[:8]}/mirror:1"
        base = settings_for(ghcr, registry_v2)
        settings = TransportSettings(plain_http=base.plain_http | {ghcr.cdn_host}, retry=base.retry)
        mark = ghcr.mark()
        report = await copy(
            src.ref, dst, ghcr, registry_v2, settings=settings, credentials=credentials_for(ghcr)
        )
        assert report.blobs_uploaded == 3
        assert crane_digest(registry_v2, dst) == src.digest
        redirected = [
            e
            for e in ghcr.access_log_since(mark)
            if e.method == "GET" and "/blobs/sha256:" in e.path
        ]
        assert [(e.status, e.authorized) for e in redirected] == [(307, True)] * 3
        digests = {b["digest"] for b in src.blobs}
        assert {p.rsplit("/", 1)[1] for p, _ in ghcr.cdn_records} == digests
        assert [auth for _, auth in ghcr.cdn_records] == [False] * 3


# -- Quay: a mounted blob no manifest references expires ---------------------------------


async def test_quay_a_copy_pushes_its_manifest_before_its_mounts_expire(
    upstream: RegistryServer,
) -> None:
    """imagecopy pushes the manifest right after its blobs, so Quay's expiry of
    unreferenced mounts never bites a normal copy; a mount no manifest names does expire."""
    with ProfileFront("quay", upstream, quay_mount_ttl=30.0) as quay:
        ns = f"ns{uuid.uuid4().hex[:8]}"
        src = images.push_image(quay, f"{ns}/dev", "1", layers=2)
        mark = quay.mark()
        dst = f"{quay.host}/{ns}/prod:1"
        report = await copy(src.ref, dst, quay)
        assert report.blobs_mounted == 3 and report.blobs_uploaded == 0
        log = quay.access_log_since(mark)
        assert [e.status for e in log if e.is_mount] == [201] * 3
        assert [e.status for e in log if e.method == "PUT" and "/manifests/" in e.path] == [201]
        # Now every mount expires at once: the copied image's blobs are referenced by its
        # manifest and stay; a blob mounted with no manifest is forgotten.
        quay.quay_mount_ttl = 0.0
        blob = src.blobs[0]["digest"]
        with quay.client() as c:
            r = c.post(
                f"/v2/{ns}/orphan/blobs/uploads/", params={"mount": blob, "from": f"{ns}/dev"}
            )
            assert r.status_code == 201
            time.sleep(0.05)
            assert c.head(f"/v2/{ns}/orphan/blobs/{blob}").status_code == 404
            for b in src.blobs:
                assert c.head(f"/v2/{ns}/prod/blobs/{b['digest']}").status_code == 200
        assert crane_digest(quay, dst) == src.digest


async def test_quay_a_manifest_pushed_after_its_mounts_expired_fails_and_tags_nothing(
    upstream: RegistryServer,
) -> None:
    """The front holds the manifest PUT longer than the mounts live: Quay refuses it with
    ``MANIFEST_BLOB_UNKNOWN``, the copy fails as ``PushRejected`` in one sentence naming
    it, and no tag points at a manifest with missing blobs. The retry mounts again and lands."""
    with ProfileFront("quay", upstream, quay_mount_ttl=0.2, manifest_put_delay=0.5) as quay:
        ns = f"ns{uuid.uuid4().hex[:8]}"
        src = images.push_image(quay, f"{ns}/dev", "1", layers=2)
        dst = f"{quay.host}/{ns}/prod:1"
        mark = quay.mark()
        with pytest.raises(PushRejected) as rejected:
            await copy(src.ref, dst, quay)
        log = quay.access_log_since(mark)
        assert [e.status for e in log if e.is_mount] == [201] * 3
        puts = [e for e in log if e.method == "PUT" and "/manifests/" in e.path]
        assert [(e.path, e.status, e.emulated) for e in puts] == [
            (f"/v2/{ns}/prod/manifests/1", 400, True)
        ]
        message = str(rejected.value)
        assert "rejected manifest 1 with 400" in message and "MANIFEST_BLOB_UNKNOWN" in message
        assert failure_for(rejected.value).reason == "PushRejected"
        # Nothing half-written: the tag does not exist, on the front or the real registry.
        with quay.upstream.client(headers=quay.upstream.admin_headers(f"{ns}/prod")) as c:
            assert c.head(f"/v2/{ns}/prod/manifests/1").status_code == 404
            tags = c.get(f"/v2/{ns}/prod/tags/list")
            assert tags.status_code == 404 or not (tags.json().get("tags") or [])
        # A retry in time: a same-registry copy mounts first (no HEAD), so the forgotten
        # blobs are mounted again, fresh, and the manifest push follows within the TTL.
        quay.manifest_put_delay = 0.0
        quay.quay_mount_ttl = 30.0
        mark = quay.mark()
        report = await copy(src.ref, dst, quay)
        assert report.blobs_mounted == 3
        assert [e.status for e in quay.access_log_since(mark) if e.is_mount] == [201] * 3
        assert crane_digest(quay, dst) == src.digest


async def test_quay_an_index_whose_children_are_refused_is_never_tagged(
    upstream: RegistryServer,
) -> None:
    """An index's children are pushed (by digest) before the index at its tag: a child
    Quay refuses for its expired mounts stops the copy before any tag is written."""
    with ProfileFront("quay", upstream, quay_mount_ttl=0.2, manifest_put_delay=0.5) as quay:
        ns = f"ns{uuid.uuid4().hex[:8]}"
        src = images.push_index(quay, f"{ns}/dev", "1", platforms=("linux/amd64", "linux/arm64"))
        mark = quay.mark()
        with pytest.raises(PushRejected) as rejected:
            await copy(src.ref, f"{quay.host}/{ns}/prod:1", quay)
        assert "MANIFEST_BLOB_UNKNOWN" in str(rejected.value)
        log = quay.access_log_since(mark)
        puts = [e for e in log if e.method == "PUT" and "/manifests/" in e.path]
        assert puts and all(e.status == 400 for e in puts)
        assert all("/manifests/sha256:" in e.path for e in puts)  # children only, by digest
        with quay.upstream.client(headers=quay.upstream.admin_headers(f"{ns}/prod")) as c:
            assert c.head(f"/v2/{ns}/prod/manifests/1").status_code == 404
