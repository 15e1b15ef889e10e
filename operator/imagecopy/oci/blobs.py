"""Make a blob present in a repository, by the cheapest route the registry allows.

``ensure_blob`` owns the whole sequence: existence check, cross-repository mount from each
candidate, the 202 answer (an upload session: check, then cancel it or stream into it),
monolithic streaming PUT, the chunked PATCH fallback (honouring ``OCI-Chunk-Min-Length``)
and the retry of an interrupted transfer. It returns what happened — mounted, existing or
uploaded, and every mount refusal with its reason — so the copy engine decides policy
without ever seeing a status code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum

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

#: Operations whose failure the transport cannot retry (a streamed body, or a response that
#: broke after it began): only these start the transfer again. Everything else the
#: transport already retried, so retrying here would multiply the tries.
RETRIED_HERE = frozenset({"upload blob", "upload blob chunk", "read blob"})

#: A fresh, verified stream of the blob's bytes (called once per transfer attempt).
Content = Callable[[], AsyncIterator[bytes]]


class BlobOutcome(StrEnum):
    MOUNTED = "mounted"
    UPLOADED = "uploaded"
    EXISTING = "existing"


@dataclass(frozen=True)
class BlobPlacement:
    """How the blob came to be present, and the mount refusals met on the way."""

    outcome: BlobOutcome
    refusals: tuple[tuple[Repository, MountRefusal], ...] = ()


@dataclass(frozen=True)
class UploadOptions:
    #: Largest PATCH body of the chunked-upload fallback (raised to the registry's minimum).
    chunk_size: int = 8 * 1024 * 1024
    #: Transfers of one blob (the first included); each retry is paid from the copy's budget.
    attempts: int = 3


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
    (``UNSUPPORTED``) stops the tries. Then the bytes are streamed from ``content``.
    """
    checked = False
    if check_first:
        if await repo.blob_exists(desc.digest):
            return BlobPlacement(BlobOutcome.EXISTING)
        checked = True
    refusals: list[tuple[Repository, MountRefusal]] = []
    session: UploadSession | None = None
    for source in mount_from:
        async with _slot(limits.mounts):
            answer = await repo.mount_blob(desc.digest, source)
        if answer.mounted:
            return BlobPlacement(BlobOutcome.MOUNTED, tuple(refusals))
        if answer.session is not None:
            session = answer.session
            break
        assert answer.refusal is not None
        refusals.append((source, answer.refusal))
        if answer.refusal is MountRefusal.UNSUPPORTED:
            break
    if not checked and await repo.blob_exists(desc.digest):
        if session is not None:
            await repo.cancel_upload(session)
        return BlobPlacement(BlobOutcome.EXISTING, tuple(refusals))
    await _upload(repo, desc, content, session, options, limits)
    return BlobPlacement(BlobOutcome.UPLOADED, tuple(refusals))


async def _upload(
    repo: RepositoryClient,
    desc: Descriptor,
    content: Content,
    session: UploadSession | None,
    options: UploadOptions,
    limits: Limits,
) -> None:
    """Stream the blob into ``session`` (or a new one); a transfer that failed where the
    transport could not retry (``RETRIED_HERE``) is tried again while attempts and the
    copy's budget last."""
    attempts = max(1, options.attempts)
    budget = repo.session.budget
    backoff = repo.session.settings.retry.backoff
    for attempt in range(1, attempts + 1):
        async with _slot(limits.uploads):
            if session is None:
                session = await repo.start_upload()
            try:
                if not await repo.put_blob(session, desc, content()):
                    # The registry wants chunks: start over with a fresh session.
                    await repo.cancel_upload(session)
                    session = await repo.start_upload()
                    await repo.patch_blob(
                        session, desc, content(), _chunk_size(repo, session, options)
                    )
                return
            except DigestMismatch:
                await repo.cancel_upload(session)
                raise
            except RegistryError as exc:
                await repo.cancel_upload(session)
                session = None
                retry = exc.retryable and exc.operation in RETRIED_HERE
                if not retry or attempt == attempts or not budget.spend():
                    raise
                log.info("retrying blob %s after: %s", desc.digest, exc)
        await asyncio.sleep(backoff.delay(attempt))


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
