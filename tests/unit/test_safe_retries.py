"""Retries only where safe, every failure typed, cancellation hygiene (issue 10).

Transport cases run against ``ScriptedServer``, a real local HTTP server. The blob-layer cases
use ``httpx.MockTransport`` on purpose: they pin exact request sequences around answers a real
registry gives only by accident of timing (a 503 to exactly one PATCH, a 416 to a replayed
chunk, a session lost between two requests, a POST still in flight when the task is cancelled,
a DELETE that never answers); the integration tests (``tests/integration/test_cancellation.py``
and ``test_copy_faults.py``) run the same paths against real registries behind the fault proxy.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from imagecopy import cli
from imagecopy.controller.schedule import Schedule
from imagecopy.copy import engine
from imagecopy.copy.tasks import gather_all
from imagecopy.oci.blobs import RETRIED_HERE, BlobOutcome, UploadOptions, ensure_blob
from imagecopy.oci.descriptor import Descriptor
from imagecopy.oci.digest import compute_digest
from imagecopy.oci.errors import NotFound, PushRejected, RegistryUnreachable, Side
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference
from imagecopy.oci.retry import Backoff, Jitter, RetryPolicy
from tests.unit.test_transport import ScriptedServer, Sleeps, retry_client

# --- the transport replays only what a repeat cannot harm ------------------------------------


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer().start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_a_post_or_patch_answered_with_a_retry_status_is_sent_once(
    server: ScriptedServer, method: str, status: int
) -> None:
    """Before: the upload-start POST, a chunk PATCH and the refresh-token POST were replayed
    on 408/429/5xx, opening a second session or appending a chunk twice."""
    server.script = [(status, {"Retry-After": "0"})]
    sleeps = Sleeps()
    async with retry_client(RetryPolicy(attempts=4), sleeps) as client:
        response = await client.request(method, server.url + "/v2/a/blobs/uploads/", content=b"x")
    assert response.status_code == status
    assert len(server.seen) == 1 and sleeps.calls == []


async def test_the_refresh_token_post_is_not_replayed(server: ScriptedServer) -> None:
    server.script = [(503, {})]
    async with retry_client(RetryPolicy(attempts=4)) as client:
        response = await client.post(server.url + "/token", data={"grant_type": "refresh_token"})
    assert response.status_code == 503
    assert len(server.seen) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
async def test_idempotent_requests_are_still_retried_on_a_retry_status(
    server: ScriptedServer, method: str
) -> None:
    server.script = [(503, {})]
    async with retry_client(RetryPolicy(attempts=4)) as client:
        response = await client.request(method, server.url + "/v2/a/manifests/1", content=b"m")
    assert response.status_code == 200
    assert len(server.seen) == 2


# --- the blob layer starts over from a fresh session -----------------------------------------

DATA = b"0123456789abcdef"
DESC = Descriptor("application/octet-stream", compute_digest(DATA), len(DATA))
HOST = "r.example"
BLOB = f"/v2/prod/web/blobs/{DESC.digest}"
UPLOADS = "/v2/prod/web/blobs/uploads/"

Answer = Callable[[httpx.Request], Awaitable[httpx.Response] | httpx.Response]


def status(code: int, **headers: str) -> Answer:
    return lambda _request: httpx.Response(code, headers=headers)


def error(code: int, registry_code: str) -> Answer:
    body = {"errors": [{"code": registry_code, "message": "nope"}]}
    return lambda _request: httpx.Response(code, json=body)


def session(name: str) -> Answer:
    return status(202, Location=f"https://{HOST}{UPLOADS}{name}")


@dataclass
class Registry:
    """Answers by ``METHOD path`` (a list is used in order, its last entry repeats)."""

    answers: dict[str, list[Answer]]
    seen: list[str] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        key = f"{request.method} {request.url.path}"
        self.seen.append(key)
        queue = self.answers.get(key)
        if not queue:
            return httpx.Response(599, text=f"unscripted {key}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        response = answer(request)
        return await response if isinstance(response, Awaitable) else response


async def ensure(
    registry: Registry,
    *,
    mount_from: tuple[str, ...] = (),
    check_first: bool = True,
    options: UploadOptions | None = None,
    budget: int = 16,
) -> BlobOutcome:
    """``ensure_blob`` through a transport that retries (4 tries), as in production."""
    retry = RetryPolicy(attempts=4, backoff=Backoff(base=0.0, cap=0.0), budget=budget)
    transport = httpx.MockTransport(registry)
    async with RegistryPool(TransportSettings(retry=retry), transport=transport) as pool:
        repo = pool.session().repository(Reference.parse(f"{HOST}/prod/web:1"), Side.DESTINATION)

        async def content() -> Any:
            yield DATA[:5]
            yield DATA[5:]

        placement = await ensure_blob(
            repo,
            DESC,
            content,
            mount_from=tuple(Reference.parse(f"{HOST}/{p}:x").repo for p in mount_from),
            check_first=check_first,
            options=options or UploadOptions(chunk_size=8),
        )
    return placement.outcome


def test_upload_start_is_retried_by_the_blob_layer() -> None:
    assert "start upload" in RETRIED_HERE


async def test_a_failed_upload_start_is_started_again_not_replayed() -> None:
    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [status(503), session("s1")],
            f"PUT {UPLOADS}s1": [status(201)],
        }
    )
    assert await ensure(registry) is BlobOutcome.UPLOADED
    # The blob is looked for again before the second transfer: the first may have landed.
    assert registry.seen == [
        f"HEAD {BLOB}",
        f"POST {UPLOADS}",
        f"HEAD {BLOB}",
        f"POST {UPLOADS}",
        f"PUT {UPLOADS}s1",
    ]


def chunked_registry(chunk_answers: list[Answer]) -> Registry:
    """A registry that refuses the monolithic PUT (wants chunks) and answers the chunks of
    session ``s2`` with ``chunk_answers``; sessions ``s3`` on take chunks normally."""
    return Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [session("s1"), session("s2"), session("s3")],
            f"PUT {UPLOADS}s1": [status(405)],
            f"DELETE {UPLOADS}s1": [status(204)],
            f"PATCH {UPLOADS}s2": chunk_answers,
            f"DELETE {UPLOADS}s2": [status(204)],
            f"PATCH {UPLOADS}s3": [session("s3")],
            f"PUT {UPLOADS}s3": [status(201)],
        }
    )


async def test_a_patch_answered_503_starts_a_fresh_session() -> None:
    """Before: the transport replayed the PATCH into the same session."""
    registry = chunked_registry([session("s2"), status(503), session("s2")])
    assert await ensure(registry) is BlobOutcome.UPLOADED
    assert registry.seen.count(f"PATCH {UPLOADS}s2") == 2  # the first chunk, then the 503
    assert registry.seen[registry.seen.index(f"DELETE {UPLOADS}s2") :] == [
        f"DELETE {UPLOADS}s2",
        f"HEAD {BLOB}",
        f"POST {UPLOADS}",  # straight to chunks: the registry said it wants them
        f"PATCH {UPLOADS}s3",
        f"PATCH {UPLOADS}s3",
        f"PUT {UPLOADS}s3",
    ]


@pytest.mark.parametrize(
    "answer",
    [status(416), error(416, "RANGE_INVALID"), error(400, "BLOB_UPLOAD_INVALID")],
    ids=["416", "RANGE_INVALID", "BLOB_UPLOAD_INVALID"],
)
async def test_a_chunk_out_of_step_starts_over_instead_of_failing(answer: Answer) -> None:
    """Before: a replayed chunk answered 416 was PushRejected and stalled the object."""
    registry = chunked_registry([answer])
    assert await ensure(registry) is BlobOutcome.UPLOADED
    assert f"DELETE {UPLOADS}s2" in registry.seen and f"PUT {UPLOADS}s3" in registry.seen


async def test_a_lost_session_whose_blob_landed_is_uploaded_not_sent_again() -> None:
    """A completing PUT replayed after its answer was lost meets an unknown session."""
    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404), status(200)],
            f"POST {UPLOADS}": [session("s1")],
            f"PUT {UPLOADS}s1": [error(404, "BLOB_UPLOAD_UNKNOWN")],
            f"DELETE {UPLOADS}s1": [status(404)],
        }
    )
    assert await ensure(registry) is BlobOutcome.UPLOADED
    assert registry.seen.count(f"PUT {UPLOADS}s1") == 1


async def test_digest_invalid_on_a_chunked_upload_is_still_a_rejection() -> None:
    registry = chunked_registry([session("s2")])
    registry.answers[f"PUT {UPLOADS}s2"] = [error(400, "DIGEST_INVALID")]
    with pytest.raises(PushRejected) as caught:
        await ensure(registry)
    assert caught.value.code == "DIGEST_INVALID"
    assert registry.seen.count(f"POST {UPLOADS}") == 2
    assert registry.seen[-1] == f"DELETE {UPLOADS}s2"


async def test_restarts_are_bounded_by_attempts() -> None:
    registry = Registry({f"HEAD {BLOB}": [status(404)], f"POST {UPLOADS}": [status(503)]})
    with pytest.raises(RegistryUnreachable) as caught:
        await ensure(registry, options=UploadOptions(attempts=3))
    assert caught.value.operation == "start upload"
    assert registry.seen.count(f"POST {UPLOADS}") == 3


async def test_restarts_are_paid_from_the_copys_budget() -> None:
    registry = Registry({f"HEAD {BLOB}": [status(404)], f"POST {UPLOADS}": [status(503)]})
    with pytest.raises(RegistryUnreachable):
        await ensure(registry, options=UploadOptions(attempts=5), budget=1)
    assert registry.seen.count(f"POST {UPLOADS}") == 2


@pytest.mark.parametrize("check_first", [False, True], ids=["mount-first", "head-first"])
async def test_a_mount_answered_5xx_is_not_replayed_and_fails_over_to_upload(
    check_first: bool,
) -> None:
    """Before: the mount POST was replayed up to 4 times, then the copy failed."""
    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [status(503), session("s1")],
            f"PUT {UPLOADS}s1": [status(201)],
        }
    )
    outcome = await ensure(registry, mount_from=("dev/web", "dev/other"), check_first=check_first)
    assert outcome is BlobOutcome.UPLOADED
    head = [f"HEAD {BLOB}"] if check_first else []
    # One mount, no second candidate; the blob is looked for, since the mount may have happened.
    assert registry.seen == [
        *head,
        f"POST {UPLOADS}",
        f"HEAD {BLOB}",
        f"POST {UPLOADS}",
        f"PUT {UPLOADS}s1",
    ]


async def test_a_mount_that_happened_despite_its_503_counts_existing() -> None:
    registry = Registry({f"POST {UPLOADS}": [status(503)], f"HEAD {BLOB}": [status(200)]})
    assert await ensure(registry, mount_from=("dev/web",), check_first=False) is (
        BlobOutcome.EXISTING
    )
    assert registry.seen == [f"POST {UPLOADS}", f"HEAD {BLOB}"]


# --- a cancelled transfer cancels its session -------------------------------------------------


def blocking(gate: asyncio.Event, then: Answer) -> Answer:
    async def answer(request: httpx.Request) -> httpx.Response:
        gate.set()
        await asyncio.sleep(3600)
        response = then(request)
        assert isinstance(response, httpx.Response)
        return response

    return answer


async def cancel_when(gate: asyncio.Event, work: Awaitable[object]) -> None:
    task = asyncio.ensure_future(work)
    await asyncio.wait_for(gate.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_transfer_cancelled_mid_stream_deletes_its_session() -> None:
    """Before: a blob cancelled because a sibling failed left its session open."""
    gate = asyncio.Event()
    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [session("s1")],
            f"PUT {UPLOADS}s1": [blocking(gate, status(201))],
            f"DELETE {UPLOADS}s1": [status(204)],
        }
    )
    await cancel_when(gate, ensure(registry))
    assert registry.seen[-1] == f"DELETE {UPLOADS}s1"


async def test_a_session_opened_by_a_cancelled_post_is_deleted() -> None:
    gate = asyncio.Event()

    async def slow_session(request: httpx.Request) -> httpx.Response:
        gate.set()
        await asyncio.sleep(0.2)  # the caller is cancelled while the POST is under way
        return httpx.Response(202, headers={"Location": f"https://{HOST}{UPLOADS}s1"})

    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [slow_session],
            f"DELETE {UPLOADS}s1": [status(204)],
        }
    )
    await cancel_when(gate, ensure(registry))
    assert registry.seen == [f"HEAD {BLOB}", f"POST {UPLOADS}", f"DELETE {UPLOADS}s1"]


async def test_a_mount_session_is_deleted_when_the_check_after_it_is_cancelled() -> None:
    gate = asyncio.Event()
    registry = Registry(
        {
            f"POST {UPLOADS}": [session("s1")],
            f"HEAD {BLOB}": [blocking(gate, status(404))],
            f"DELETE {UPLOADS}s1": [status(204)],
        }
    )
    await cancel_when(gate, ensure(registry, mount_from=("dev/web",), check_first=False))
    assert registry.seen[-1] == f"DELETE {UPLOADS}s1"


async def test_a_session_delete_that_hangs_does_not_hold_the_cancellation() -> None:
    gate = asyncio.Event()
    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [session("s1")],
            f"PUT {UPLOADS}s1": [blocking(gate, status(201))],
            f"DELETE {UPLOADS}s1": [blocking(asyncio.Event(), status(204))],
        }
    )
    # The DELETE never answers: returning at all is the clean-up's own bound at work
    # (wait_for only turns a regression into a failure instead of a hung test).
    await asyncio.wait_for(
        cancel_when(gate, ensure(registry, options=UploadOptions(cancel_timeout=0.2))), 60
    )
    assert registry.seen[-1] == f"DELETE {UPLOADS}s1"


async def test_a_failed_transfer_deletes_its_session_before_the_error_goes_on() -> None:
    registry = Registry(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [session("s1")],
            f"PUT {UPLOADS}s1": [error(404, "NAME_UNKNOWN")],
            f"DELETE {UPLOADS}s1": [status(204)],
        }
    )
    with pytest.raises(PushRejected):
        await ensure(registry)
    assert registry.seen[-1] == f"DELETE {UPLOADS}s1"


async def test_gather_all_cancels_the_siblings_of_a_failure() -> None:
    """Before: ``asyncio.gather`` raised the first failure and left the others running."""
    cancelled: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    async def fails() -> str:
        await asyncio.sleep(0)
        raise NotFound("gone", status=404)

    with pytest.raises(NotFound):
        await asyncio.wait_for(gather_all(slow("a"), fails(), slow("b")), 5)
    assert sorted(cancelled) == ["a", "b"]
    assert await gather_all(asyncio.sleep(0, "x"), asyncio.sleep(0, "y")) == ["x", "y"]


# --- every failure typed ------------------------------------------------------------------------


@pytest.mark.parametrize("retry", [1_025, 1_100, 10_000, 10**9])
def test_backoff_never_overflows(retry: int) -> None:
    """Before: ``2.0 ** 1100`` raised OverflowError after ~1,000 failures in a row."""
    backoff = Backoff(base=0.2, cap=10.0)
    assert backoff.step(retry) == 10.0
    assert 0.0 <= backoff.delay(retry, random.Random(1)) <= 10.0
    assert 5.0 <= Backoff(0.2, 10.0, jitter=Jitter.EQUAL).delay(retry) <= 10.0


def test_the_controller_schedule_survives_endless_failures() -> None:
    schedule = Schedule(rng=random.Random(3))
    assert 150.0 <= schedule.after_transient_failure(5_000) <= 300.0


@pytest.fixture
def broken_copier(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(engine.Copier, "copy", broken)


ARGS = ["copy", "localhost:1/a:1", "localhost:1/b:1", "--plain-http", "localhost:1", "-q"]


def test_an_unexpected_error_is_one_line_and_exit_1(
    broken_copier: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: any exception outside ImageCopyError printed a traceback."""
    assert cli.main(ARGS) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "imagecopy: internal error: RuntimeError: a bug\n"


def test_debug_adds_the_traceback(broken_copier: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*ARGS, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.endswith("imagecopy: internal error: RuntimeError: a bug\n")


def test_an_internal_error_message_is_cut_short(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("x" * 5000)

    monkeypatch.setattr(engine.Copier, "copy", broken)
    assert cli.main(ARGS) == 1
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and len(line) < 260


def test_a_failure_before_the_copy_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagecopy.oci import credentials

    def broken(_path: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(credentials.CredentialStore, "load", broken)
    assert cli.main(ARGS) == 1
    assert capsys.readouterr().err == (
        "imagecopy: internal error: RecursionError: maximum recursion depth exceeded\n"
    )


def test_a_registry_error_is_still_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback refuses connections: a typed RegistryUnreachable, no traceback.
    assert cli.main(ARGS) == 1
    err = capsys.readouterr().err
    assert err.startswith("imagecopy: registry unreachable: ") and err.count("\n") == 1
