"""Bounds on what a registry sends, against the hostile registry (``testkit/hostile.py``).

Each test runs the real copy engine against a real HTTP server misbehaving on purpose and
checks two things: the copy ends in a typed error with the reason of docs/reference.md §3,
and the server's own records show the bound held on the wire (bytes it managed to send
before the client hung up, requests it saw, requests in flight at once). Source and
destination are both on the hostile registry, so every request of the copy is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from imagecopy.controller.failures import Failure, failure_for
from imagecopy.copy import Copier, CopyOptions, CopyReport
from imagecopy.oci.bounds import Bounds
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.errors import (
    Forbidden,
    ImageCopyError,
    LimitExceeded,
    RegistryError,
    RegistryNotAllowed,
    Unauthorized,
    UnsupportedMediaType,
)
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference
from imagecopy.oci.retry import RetryPolicy
from testkit.hostile import (
    BEHAVIOURS,
    MIB,
    PRIVATE_REPOSITORY,
    SOURCE_REPOSITORY,
    Behaviour,
    HostileRegistry,
)

pytestmark = pytest.mark.integration

Factory = Callable[..., HostileRegistry]
SOURCE_MANIFEST = f"/v2/{SOURCE_REPOSITORY}/manifests/1"
#: What the kernel may still accept after the client stopped reading: the socket buffers of
#: both ends on loopback (a few MiB with autotuning), far below the 64 MiB bodies.
BUFFERS = 16 * MIB


@pytest.fixture
def hostile() -> Iterator[Factory]:
    started: list[HostileRegistry] = []

    def factory(behaviour: Behaviour | str) -> HostileRegistry:
        reg = HostileRegistry(behaviour).start()
        started.append(reg)
        return reg

    yield factory
    for reg in started:
        reg.stop()


async def copy(
    reg: HostileRegistry,
    options: CopyOptions | None = None,
    *,
    max_connections: int = 16,
    attempts: int = 4,
) -> CopyReport:
    """``hostile/source:1`` → ``mirror/copy:1`` on the same hostile registry."""
    settings = TransportSettings(
        plain_http=frozenset({reg.host, reg.other_host}),
        max_connections=max_connections,
        retry=RetryPolicy(attempts=attempts),
    )
    async with RegistryPool(settings) as pool:
        return await Copier(pool).copy(
            Reference.parse(reg.ref(SOURCE_REPOSITORY, "1")),
            Reference.parse(reg.ref("mirror/copy", "1"), default_tag=None),
            options or CopyOptions(),
            CredentialStore(),
        )


async def failed_copy(reg: HostileRegistry, **kwargs: object) -> tuple[ImageCopyError, Failure]:
    """The typed error a copy ends in (anything else fails the test), and its meaning."""
    with pytest.raises(ImageCopyError) as info:
        await copy(reg, **kwargs)  # type: ignore[arg-type]
    return info.value, failure_for(info.value)


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_a_huge_error_body_is_read_for_64_kib_then_the_connection_is_dropped(
    hostile: Factory, framing: str
) -> None:
    # 403 to manifest GETs: an answer whose body the client reads for its error codes.
    reg = hostile(
        BEHAVIOURS["huge-error"].with_(error_status=403, error_method="GET", huge_framing=framing)
    )
    error, failure = await failed_copy(reg)
    assert isinstance(error, Forbidden) and failure.reason == "Forbidden"
    assert "403" in str(error)  # a cut body is not JSON: the status alone speaks
    (get,) = [r for r in reg.wait_finished() if r.method == "GET" and r.path == SOURCE_MANIFEST]
    assert get.body_size is not None and get.body_size > 64 * MIB
    assert get.aborted, "the client read the whole 64 MiB error body"
    assert get.bytes_sent < BUFFERS


async def test_a_deeply_nested_error_body_gives_the_status_reason(hostile: Factory) -> None:
    reg = hostile(BEHAVIOURS["deep-error"].with_(error_status=403, error_method="GET"))
    error, failure = await failed_copy(reg)
    assert isinstance(error, Forbidden) and error.code is None
    assert failure.reason == "Forbidden" and failure.stalled


async def test_a_deeply_nested_manifest_is_an_unsupported_media_type(hostile: Factory) -> None:
    reg = hostile("deep-manifest")
    error, failure = await failed_copy(reg)
    assert isinstance(error, UnsupportedMediaType)
    assert "nests JSON more than 64 levels deep" in str(error)
    assert failure.reason == "UnsupportedMediaType" and failure.stalled


async def test_a_deeply_nested_token_body_is_a_typed_failure(hostile: Factory) -> None:
    # The preset's 100,000 levels are 200 kB: over the 64 KiB bound before any parsing.
    error, failure = await failed_copy(hostile("deep-token"))
    assert isinstance(error, Unauthorized) and "answered more than 64 KiB" in str(error)
    # Within the bound (5,000 levels in 10 kB), the depth scan refuses it, typed.
    error, failure = await failed_copy(hostile(BEHAVIOURS["deep-token"].with_(json_depth=5000)))
    assert type(error) is RegistryError and "other than a JSON object" in str(error)
    assert failure.reason == "InternalError"


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_a_huge_token_body_is_unauthorized_after_64_kib(
    hostile: Factory, framing: str
) -> None:
    reg = hostile(BEHAVIOURS["huge-token"].with_(huge_framing=framing))
    error, failure = await failed_copy(reg)
    assert isinstance(error, Unauthorized)
    assert str(error) == f"the token service at http://{reg.host} answered more than 64 KiB"
    assert failure.reason == "Unauthorized" and failure.stalled
    tokens = [r for r in reg.wait_finished() if r.path == "/token"]
    assert tokens and all(r.aborted and r.bytes_sent < BUFFERS for r in tokens)


async def test_a_redirect_with_a_huge_body_is_followed_without_reading_it(
    hostile: Factory,
) -> None:
    reg = hostile("huge-redirect")
    report = await copy(reg)
    assert report.blobs_uploaded == 2  # both blobs came from the other host
    redirects = [r for r in reg.wait_finished() if r.status == 307 and r.method == "GET"]
    assert len(redirects) == 2
    for record in redirects:
        assert record.body_size is not None and record.body_size > 64 * MIB
        assert record.aborted and record.bytes_sent < BUFFERS


async def test_huge_response_headers_end_in_limit_exceeded(hostile: Factory) -> None:
    reg = hostile("huge-headers")
    error, failure = await failed_copy(reg, attempts=1)
    assert isinstance(error, LimitExceeded)
    assert str(error) == f"{reg.host} answered with response headers over 100 KiB"
    assert failure.reason == "LimitExceeded" and failure.stalled


# --------------------------------------------------------------------------- graphs


async def test_an_endless_index_stops_at_the_depth_limit(hostile: Factory) -> None:
    reg = hostile(BEHAVIOURS["endless-index"].with_(index_depth=50))
    error, failure = await failed_copy(reg)
    assert isinstance(error, LimitExceeded)
    assert failure.reason == "LimitExceeded" and failure.stalled
    root = reg.content.source_manifest(SOURCE_REPOSITORY, "1")
    assert root is not None
    assert str(error) == (
        f"the index {root.digest} nests indexes 9 levels deep, more than the limit of 8"
    )
    gets = reg.requests(method="GET", path="/manifests/")
    assert len(gets) == 9  # the root and 8 levels below it; the 9th is never asked for
    assert reg.requests(method="PUT") == []


async def test_a_wide_index_over_the_children_limit_fetches_no_child(hostile: Factory) -> None:
    reg = hostile("wide-index")
    error, failure = await failed_copy(reg)
    assert isinstance(error, LimitExceeded) and failure.reason == "LimitExceeded"
    root = reg.content.source_manifest(SOURCE_REPOSITORY, "1")
    assert root is not None
    assert str(error) == (f"the index {root.digest} has 1000 children, more than the limit of 256")
    assert [r.path for r in reg.requests(method="GET")] == [SOURCE_MANIFEST]


async def test_a_wide_index_within_a_raised_limit_keeps_16_manifest_requests_in_flight(
    hostile: Factory,
) -> None:
    # The operator's pool holds 64 connections (2 x 8 streams x 4 copies): only the
    # manifest semaphore keeps the walk from using them all.
    reg = hostile(BEHAVIOURS["wide-index"].with_(delay_ms=50))
    options = CopyOptions(bounds=Bounds(max_index_children=1000))
    report = await copy(reg, options, max_connections=64)
    assert report.manifests_copied == 1001
    assert len(reg.stored_manifests("mirror/copy")) == 1
    peak = reg.peak_in_flight_by["manifests"]
    assert 2 <= peak <= 16, peak


@pytest.mark.parametrize("behaviour", ["traversal-digest", "traversal-child"])
async def test_a_traversal_digest_is_refused_before_any_request(
    hostile: Factory, behaviour: str
) -> None:
    reg = hostile(behaviour)
    error, failure = await failed_copy(reg)
    assert isinstance(error, UnsupportedMediaType)
    assert "malformed descriptor" in str(error) and "is not a valid digest" in str(error)
    assert failure.reason == "UnsupportedMediaType" and failure.stalled
    records = reg.wait_finished()
    assert reg.requests(path=f"^/v2/{PRIVATE_REPOSITORY}/") == []
    assert all(".." not in r.path for r in records)
    # only the destination check and the root (in flight together): nothing the root names
    # was requested
    assert sorted((r.method, r.path) for r in records) == [
        ("GET", SOURCE_MANIFEST),
        ("HEAD", "/v2/mirror/copy/manifests/1"),
    ]


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_redirect_to_a_host_with_invalid_punycode_is_refused_typed(
    hostile: Factory, scheme: str
) -> None:
    reg = hostile(Behaviour(redirect_to=f"{scheme}://xn--a.example{{path}}"))
    error, failure = await failed_copy(reg)
    assert isinstance(error, RegistryNotAllowed)
    assert "not a valid internationalised host name" in str(error)
    assert failure.reason == "RegistryNotAllowed" and failure.stalled
