"""Make a blob present in a repository, by the cheapest route the registry allows.

``ensure_blob`` owns the whole sequence: existence check, cross-repository mount from each
candidate, the 202 answer (an upload session: check, then cancel it or stream into it),
monolithic streaming PUT, the chunked PATCH fallback (honouring ``OCI-Chunk-Min-Length``)
and the restart of an interrupted transfer from a fresh session. It returns what happened —
mounted, existing or uploaded, and every mount refusal with its reason — so the copy engine
decides policy without ever seeing a status code.

It also owns every upload session it opens: whatever ends a transfer (a failure, or the
task being cancelled because a sibling failed or the process is stopping), the session is
cancelled (``DELETE``), best effort and within ``UploadOptions.cancel_timeout``, before the
error goes on. A session a cancelled POST may have opened is waited for and cancelled too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from .descriptor import Descriptor
from .errors import DigestMismatch, PushRejected, RegistryError
from .reference import Repository
from .repository import MountRefusal, RepositoryClient, UploadSession

__all__ = [
    "MAX_CHUNK_BYTES",
    "RETRIED_HERE",
    "BlobOutcome",
    "BlobPlacement",
    "Content",
    "Limits",
    "UploadOptions",
    "ensure_blob",
]

log = logging.getLogger("imagecopy.oci")

#: The largest chunk the chunked fallback buffers, whatever a registry asks for.
MAX_CHUNK_BYTES = 64 * 1024 * 1024

#: Operations whose failure the transport does not retry — a POST or PATCH (never replayed:
#: a repeat could open a second session or append a chunk twice), a streamed body, a
#: response that broke after it began: only these start the transfer over, from a fresh
#: session. Everything else the transport already retried, so retrying here would multiply
#: the tries.
RETRIED_HERE = frozenset({"start upload", "upload blob", "upload blob chunk", "read blob"})

#: Registry error codes saying the session, not the bytes, is wrong: a chunk out of step
#: with it (a replayed or lost PATCH), or a session the registry no longer knows. The
#: transfer starts over; it is not a rejection.
_SESSION_ERRORS = frozenset({"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "RANGE_INVALID"})
#: Statuses of an upload request that mean the same when no code says otherwise.
_SESSION_STATUSES = frozenset({416})
_UPLOAD_WRITES = frozenset({"upload blob", "upload blob chunk"})

T = TypeVar("T")

#: A fresh, verified stream of the blob's bytes (called once per transfer attempt).
Content = Callable[[], AsyncIterator[bytes]]


class BlobOutcome(StrEnum):
    MOUNTED = "mounted"
    UPLOADED = "uploaded"
    EXISTING = "existing"


@dataclass(frozen=True)
class BlobPlacement:
    """How the blob came to be present, the mount refusals met on the way, and the status of
    every mount request that did not link the blob (refusals, a 202 session, a failed POST:
    0 when no answer came), in order: what ``status.lastCopy.mount`` counts. A candidate
    whose ``pull`` the token service refused is a refusal (``TOKEN_REFUSED``) but no
    request: it is not in ``declined``."""

    outcome: BlobOutcome
    refusals: tuple[tuple[Repository, MountRefusal], ...] = ()
    declined: tuple[int, ...] = ()

    @property
    def token_refusals(self) -> int:
        """Mount candidates dropped because the token service refused their ``pull``."""
        return sum(1 for _, refusal in self.refusals if refusal is MountRefusal.TOKEN_REFUSED)

    @property
    def mount_attempts(self) -> int:
        """Mount requests sent for this blob."""
        return len(self.declined) + (1 if self.outcome is BlobOutcome.MOUNTED else 0)


@dataclass(frozen=True)
class UploadOptions:
    #: Largest PATCH body of the chunked-upload fallback (raised to the registry's minimum).
    chunk_size: int = 8 * 1024 * 1024
    #: Transfers of one blob (the first included); each retry is paid from the copy's budget.
    attempts: int = 3
    #: Seconds the ``DELETE`` of an abandoned upload session may take on the way out of a
    #: failed or cancelled transfer; past that the session is left to expire on its own.
    cancel_timeout: float = 5.0


@dataclass(frozen=True)
class Limits:
    """Optional limiters: mounts are cheap and run wide, streams are narrower."""

    mounts: asyncio.Semaphore | None = None
    uploads: asyncio.Semaphore | None = None


def _slot(limit: asyncio.Semaphore | None) -> AbstractAsyncContextManager[object]:
    return limit if limit is not None else nullcontext()


async def ensure_blob(
    repo: RepositoryClient,
    desc: Descriptor,
    content: Content,
    *,
    mount_from: Sequence[Repository] = (),
    check_first: bool = True,
    options: UploadOptions = UploadOptions(),
    limits: Limits = Limits(),
) -> BlobPlacement:
    """Make ``desc`` present in ``repo``.

    With ``check_first`` the blob is looked for (HEAD) before anything else; without it
    (mount-first, for a mount source known to hold the blob) the first request is a mount
    and a HEAD happens only if no mount succeeds. Candidates in ``mount_from`` are tried in
    order until one mounts or opens a session; a registry that does not mount at all
    (``UNSUPPORTED``) stops the tries, and so does a mount that failed (5xx, 408, 429 or a
    broken connection: a POST is not repeated), after which the blob is looked for again,
    since the mount may have happened. Then the bytes are streamed from ``content``.
    """
    checked = False
    if check_first:
        if await repo.blob_exists(desc.digest):
            return BlobPlacement(BlobOutcome.EXISTING)
        checked = True
    refusals: list[tuple[Repository, MountRefusal]] = []
    declined: list[int] = []
    session: UploadSession | None = None
    try:
        for source in mount_from:
            try:
                async with _slot(limits.mounts):
                    answer = await _opening(
                        repo,
                        repo.mount_blob(desc.digest, source),
                        lambda answer: answer.session,
                        options.cancel_timeout,
                    )
            except RegistryError as exc:
                if not exc.retryable:
                    raise
                log.info("mount of blob %s from %s failed, uploading: %s", desc.digest, source, exc)
                declined.append(exc.status or 0)
                checked = False
                break
            if answer.mounted:
                return BlobPlacement(BlobOutcome.MOUNTED, tuple(refusals), tuple(declined))
            if answer.refusal is MountRefusal.TOKEN_REFUSED:
                # No request was sent: the candidate is dropped, the next one tried.
                refusals.append((source, answer.refusal))
                continue
            declined.append(answer.status)
            if answer.session is not None:
                session = answer.session
                break
            assert answer.refusal is not None
            refusals.append((source, answer.refusal))
            if answer.refusal is MountRefusal.UNSUPPORTED:
                break
        if not checked and await repo.blob_exists(desc.digest):
            if session is not None:
                opened, session = session, None
                await _discard(repo, opened, options.cancel_timeout)
            return BlobPlacement(BlobOutcome.EXISTING, tuple(refusals), tuple(declined))
    except BaseException:
        if session is not None:
            await _discard(repo, session, options.cancel_timeout)
        raise
    await _upload(repo, desc, content, session, options, limits)
    return BlobPlacement(BlobOutcome.UPLOADED, tuple(refusals), tuple(declined))


async def _upload(
    repo: RepositoryClient,
    desc: Descriptor,
    content: Content,
    session: UploadSession | None,
    options: UploadOptions,
    limits: Limits,
) -> None:
    """Stream the blob into ``session`` (or a new one), which this call then owns.

    A transfer that failed where the transport does not retry (``_starts_over``) starts over
    from a fresh session while attempts and the copy's budget last; a registry that asked for
    chunks once gets chunks from then on. Before a second transfer the blob is looked for: a
    transfer whose answer was lost may have stored it.
    """
    attempts = max(1, options.attempts)
    budget = repo.session.budget
    backoff = repo.session.settings.retry.backoff
    chunked = False
    streams: list[AsyncIterator[bytes]] = []

    def fresh() -> AsyncIterator[bytes]:
        stream = content()
        streams.append(stream)
        return stream

    try:
        for attempt in range(1, attempts + 1):
            try:
                async with _slot(limits.uploads):
                    if attempt > 1 and await repo.blob_exists(desc.digest):
                        return
                    if session is None:
                        session = await _start(repo, options)
                    if not chunked:
                        if await repo.put_blob(session, desc, fresh()):
                            session = None
                            return
                        # The registry wants chunks: start over with a fresh session.
                        chunked = True
                        spent, session = session, None
                        await _discard(repo, spent, options.cancel_timeout)
                        session = await _start(repo, options)
                    await repo.patch_blob(
                        session, desc, fresh(), _chunk_size(repo, session, options)
                    )
                    session = None
                    return
            except BaseException as exc:
                # The source first: a transfer cut short leaves its response open otherwise.
                await _close_streams(streams)
                if session is not None:
                    spent, session = session, None
                    await _discard(repo, spent, options.cancel_timeout)
                if not isinstance(exc, RegistryError) or not _starts_over(exc):
                    raise
                if attempt == attempts or not budget.spend():
                    raise
                log.info("starting blob %s over after: %s", desc.digest, exc)
            await asyncio.sleep(backoff.delay(attempt))
    finally:
        await _close_streams(streams)


def _starts_over(exc: RegistryError) -> bool:
    """Whether a failed transfer is worth another one from a fresh session."""
    if exc.operation not in RETRIED_HERE or isinstance(exc, DigestMismatch):
        return False
    if exc.retryable:
        return True
    # A replayed or out-of-step chunk (416, RANGE_INVALID) or a session the registry lost is
    # the session's fault, not the blob's: a new session takes the same bytes.
    return exc.operation in _UPLOAD_WRITES and (
        exc.code in _SESSION_ERRORS or (exc.status in _SESSION_STATUSES and exc.code is None)
    )


async def _start(repo: RepositoryClient, options: UploadOptions) -> UploadSession:
    return await _opening(
        repo, repo.start_upload(), lambda session: session, options.cancel_timeout
    )


async def _opening(
    repo: RepositoryClient,
    request: Coroutine[Any, Any, T],
    session_of: Callable[[T], UploadSession | None],
    timeout: float,
) -> T:
    """Await a POST that may open an upload session (a start, or a mount answered 202) so
    that cancelling the caller meanwhile leaks no session: the POST is let finish (within
    ``timeout``) and the session it opened is cancelled."""
    task = asyncio.ensure_future(request)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        async def close() -> None:
            try:
                session = session_of(await task)
            except (Exception, asyncio.CancelledError):
                return  # the POST failed or was cut short: no session came of it
            if session is not None:
                await repo.cancel_upload(session)

        await _best_effort(repo, close(), timeout)
        raise


async def _close_streams(streams: list[AsyncIterator[bytes]]) -> None:
    while streams:
        aclose = getattr(streams.pop(), "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as exc:  # already broken: nothing more to release
                log.debug("closing a blob stream failed: %s", exc)


async def _discard(repo: RepositoryClient, session: UploadSession, timeout: float) -> None:
    """Cancel ``session``: best effort, within ``timeout``, even while being cancelled."""
    await _best_effort(repo, repo.cancel_upload(session), timeout)


async def _best_effort(repo: RepositoryClient, work: Awaitable[None], timeout: float) -> None:
    """Run clean-up ``work`` to its end or for ``timeout`` seconds, whichever comes first.

    It runs in its own task, so a caller that is being cancelled (its failure already on
    the way) still cleans up; if the caller is cancelled again meanwhile, the clean-up goes
    on alone, still bounded by ``timeout`` (the pool waits for it before it closes). Its
    own failure is logged, never raised.
    """
    task = asyncio.ensure_future(work)
    repo.session.track_cleanup(task)
    # The timer also keeps the task referenced when nobody awaits it any more.
    timer = asyncio.get_running_loop().call_later(max(timeout, 0.0), task.cancel)
    task.add_done_callback(lambda done: _finished(done, timer))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # the caller, not the clean-up, is being cancelled
        log.debug("clean-up did not finish within %.1fs", timeout)
    except Exception as exc:
        log.debug("clean-up failed: %s", exc)


def _finished(task: asyncio.Future[None], timer: asyncio.TimerHandle) -> None:
    timer.cancel()
    if not task.cancelled():
        task.exception()  # retrieved: a clean-up nobody awaits any more fails quietly


def _chunk_size(repo: RepositoryClient, session: UploadSession, options: UploadOptions) -> int:
    size = max(options.chunk_size, session.chunk_min_length)
    if size > MAX_CHUNK_BYTES:
        raise repo.error(
            PushRejected,
            "upload blob",
            f"{repo.name} demands upload chunks of at least {session.chunk_min_length} bytes; "
            f"imagecopy buffers at most {MAX_CHUNK_BYTES} bytes per chunk",
        )
    return size
