"""``oci.blobs.ensure_blob``: every route to a present blob, request by request.

These run against ``httpx.MockTransport`` on purpose: the integration tests cover the same
routes on real registries, but no real registry can be made to answer a mount with 202 and
no ``Location``, to demand a 64 MiB minimum chunk, or to fail exactly the n-th PUT; a
scripted answer per request pins each branch and its exact request sequence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from imagecopy.oci.blobs import (
    MAX_CHUNK_BYTES,
    BlobOutcome,
    BlobPlacement,
    UploadOptions,
    ensure_blob,
)
from imagecopy.oci.descriptor import Descriptor
from imagecopy.oci.digest import compute_digest
from imagecopy.oci.errors import PushRejected, RegistryUnreachable, Side
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference, Repository
from imagecopy.oci.repository import MountRefusal, RepositoryClient
from imagecopy.oci.retry import Backoff, RetryPolicy

DATA = b"0123456789abcdef"
DESC = Descriptor("application/octet-stream", compute_digest(DATA), len(DATA))
HOST = "r.example"
SESSION = f"https://{HOST}/v2/prod/web/blobs/uploads/s1?_state=abc"

Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class Script:
    """Answers by ``METHOD path`` (first match of a list is used once, the last repeats)."""

    answers: dict[str, list[Answer]]
    seen: list[httpx.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        self.bodies.append(await request.aread())
        key = f"{request.method} {request.url.path}"
        queue = self.answers.get(key)
        if not queue:
            return httpx.Response(599, text=f"unscripted {key}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return answer(request)

    def calls(self) -> list[str]:
        out = []
        for r in self.seen:
            mount = r.url.params.get("from")
            out.append(f"{r.method} {r.url.path}" + (f" from={mount}" if mount else ""))
        return out


def status(code: int, **headers: str) -> Answer:
    return lambda _request: httpx.Response(code, headers=headers)


def error(code: int, registry_code: str) -> Answer:
    body = {"errors": [{"code": registry_code, "message": "nope"}]}
    return lambda _request: httpx.Response(code, json=body)


def content() -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        yield DATA[:5]
        yield DATA[5:]

    return gen()


BLOB = f"/v2/prod/web/blobs/{DESC.digest}"
UPLOADS = "/v2/prod/web/blobs/uploads/"
SESSION_PATH = "/v2/prod/web/blobs/uploads/s1"


async def repository(script: Script, budget: int = 16) -> tuple[RegistryPool, RepositoryClient]:
    retry = RetryPolicy(attempts=1, backoff=Backoff(base=0.0, cap=0.0), budget=budget)
    pool = RegistryPool(TransportSettings(retry=retry), transport=httpx.MockTransport(script))
    repo = pool.session().repository(Reference.parse(f"{HOST}/prod/web:1"), Side.DESTINATION)
    return pool, repo


def source(path: str) -> Repository:
    return Reference.parse(f"{HOST}/{path}:x").repo


async def run(
    script: Script, *, mount_from: tuple[str, ...] = (), budget: int = 16, **kwargs: Any
) -> BlobPlacement:
    pool, repo = await repository(script, budget=budget)
    try:
        return await ensure_blob(
            repo,
            DESC,
            content,
            mount_from=tuple(source(p) for p in mount_from),
            **kwargs,
        )
    finally:
        await pool.aclose()


async def test_mount_first_links_the_blob_with_one_request() -> None:
    script = Script({f"POST {UPLOADS}": [status(201)]})
    placement = await run(script, mount_from=("dev/web",), check_first=False)
    assert placement.outcome is BlobOutcome.MOUNTED
    assert script.calls() == [f"POST {UPLOADS} from=dev/web"]


async def test_a_202_for_a_blob_already_there_is_cancelled_and_counted_existing() -> None:
    script = Script(
        {
            f"POST {UPLOADS}": [status(202, Location=SESSION)],
            f"HEAD {BLOB}": [status(200)],
            f"DELETE {SESSION_PATH}": [status(204)],
        }
    )
    placement = await run(script, mount_from=("dev/web",), check_first=False)
    assert placement.outcome is BlobOutcome.EXISTING
    assert script.calls() == [
        f"POST {UPLOADS} from=dev/web",
        f"HEAD {BLOB}",
        f"DELETE {SESSION_PATH}",
    ]


async def test_a_202_session_is_used_for_the_upload_with_its_state_kept() -> None:
    script = Script(
        {
            f"POST {UPLOADS}": [status(202, Location=SESSION)],
            f"HEAD {BLOB}": [status(404)],
            f"PUT {SESSION_PATH}": [status(201)],
        }
    )
    placement = await run(script, mount_from=("dev/web",), check_first=False)
    assert placement.outcome is BlobOutcome.UPLOADED
    put = script.seen[-1]
    assert put.url.params["_state"] == "abc" and put.url.params["digest"] == DESC.digest
    assert script.bodies[-1] == DATA


async def test_a_registry_that_does_not_mount_stops_the_candidates() -> None:
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [status(405), status(202, Location=SESSION)],
            f"PUT {SESSION_PATH}": [status(201)],
        }
    )
    placement = await run(script, mount_from=("a/one", "a/two"))
    assert placement.outcome is BlobOutcome.UPLOADED
    assert [r for _, r in placement.refusals] == [MountRefusal.UNSUPPORTED]
    assert script.calls() == [
        f"HEAD {BLOB}",
        f"POST {UPLOADS} from=a/one",
        f"POST {UPLOADS}",
        f"PUT {SESSION_PATH}",
    ]


async def test_a_refusing_candidate_passes_to_the_next_one() -> None:
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [error(404, "BLOB_UNKNOWN"), status(201)],
        }
    )
    placement = await run(script, mount_from=("a/one", "a/two"))
    assert placement.outcome is BlobOutcome.MOUNTED
    assert [(str(s.path), r) for s, r in placement.refusals] == [("a/one", MountRefusal.NOT_FOUND)]


async def test_a_202_without_location_is_a_noncompliant_refusal() -> None:
    script = Script(
        {
            f"POST {UPLOADS}": [status(202), status(202, Location=SESSION)],
            f"HEAD {BLOB}": [status(404)],
            f"PUT {SESSION_PATH}": [status(201)],
        }
    )
    placement = await run(script, mount_from=("dev/web",), check_first=False)
    assert placement.refusals[0][1] is MountRefusal.NONCOMPLIANT
    assert placement.outcome is BlobOutcome.UPLOADED


async def test_existing_blob_costs_one_head_and_no_mount() -> None:
    script = Script({f"HEAD {BLOB}": [status(200)]})
    placement = await run(script, mount_from=("a/one",))
    assert placement.outcome is BlobOutcome.EXISTING
    assert script.calls() == [f"HEAD {BLOB}"]


async def test_chunked_fallback_honours_the_registrys_minimum_chunk() -> None:
    chunked = f"https://{HOST}/v2/prod/web/blobs/uploads/s2"
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [
                status(202, Location=SESSION),
                status(202, Location=chunked, **{"OCI-Chunk-Min-Length": "6"}),
            ],
            f"PUT {SESSION_PATH}": [status(415)],
            f"DELETE {SESSION_PATH}": [status(204)],
            "PATCH /v2/prod/web/blobs/uploads/s2": [status(202, Location=chunked)],
            "PUT /v2/prod/web/blobs/uploads/s2": [status(201)],
        }
    )
    placement = await run(script, options=UploadOptions(chunk_size=4))
    assert placement.outcome is BlobOutcome.UPLOADED
    patches = [r for r in script.seen if r.method == "PATCH"]
    assert [p.headers["Content-Range"] for p in patches] == ["0-5", "6-11", "12-15"]
    final = script.seen[-1]
    assert final.method == "PUT" and final.url.params["digest"] == DESC.digest


async def test_an_absurd_minimum_chunk_is_refused_not_buffered() -> None:
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [
                status(202, Location=SESSION),
                status(202, Location=SESSION, **{"OCI-Chunk-Min-Length": str(MAX_CHUNK_BYTES + 1)}),
            ],
            f"PUT {SESSION_PATH}": [status(415)],
            f"DELETE {SESSION_PATH}": [status(204)],
        }
    )
    with pytest.raises(PushRejected, match="chunks of at least"):
        await run(script)
    assert script.calls()[-1] == f"DELETE {SESSION_PATH}"


async def test_digest_invalid_is_the_registrys_verdict_not_a_chunk_request() -> None:
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [status(202, Location=SESSION)],
            f"PUT {SESSION_PATH}": [error(400, "DIGEST_INVALID")],
            f"DELETE {SESSION_PATH}": [status(204)],
        }
    )
    with pytest.raises(PushRejected) as caught:
        await run(script)
    assert caught.value.code == "DIGEST_INVALID" and caught.value.side is Side.DESTINATION
    assert not [r for r in script.seen if r.method == "PATCH"]


async def test_an_interrupted_transfer_is_retried_from_the_budget() -> None:
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [status(202, Location=SESSION)],
            f"PUT {SESSION_PATH}": [status(503), status(201)],
            f"DELETE {SESSION_PATH}": [status(204)],
        }
    )
    placement = await run(script)
    assert placement.outcome is BlobOutcome.UPLOADED
    assert script.calls().count(f"PUT {SESSION_PATH}") == 2
    assert script.bodies[-1] == DATA  # a fresh stream for the second transfer


async def test_no_budget_left_means_no_second_transfer() -> None:
    script = Script(
        {
            f"HEAD {BLOB}": [status(404)],
            f"POST {UPLOADS}": [status(202, Location=SESSION)],
            f"PUT {SESSION_PATH}": [status(503), status(201)],
            f"DELETE {SESSION_PATH}": [status(204)],
        }
    )
    with pytest.raises(RegistryUnreachable) as caught:
        await run(script, budget=0)
    assert caught.value.operation == "upload blob" and caught.value.status == 503
    assert script.calls().count(f"PUT {SESSION_PATH}") == 1
