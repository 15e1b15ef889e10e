"""The distribution API of one repository: manifests, blobs, upload sessions, mounts.

A `RepositoryClient` builds every URL of the protocol and reads every status code; what it
returns are facts (`ManifestInfo`, a `Manifest`, a `MountAnswer`, an `UploadSession`), and
what it raises are `RegistryError`s naming the operation, the side and the registry's error
code. Making a blob present by the cheapest route is ``oci.blobs``; referrers are
``oci.referrers``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import httpx

from . import mediatypes as mt
from .bounds import (
    MAX_ERROR_BODY_BYTES,
    MAX_REFERRERS_BODY_BYTES,
    MAX_RESPONSE_HEADER_BYTES,
    BodyTooLarge,
    load_json,
    read_bounded,
)
from .descriptor import MAX_MANIFEST_BYTES, Descriptor, Manifest, parse_manifest
from .digest import DigestVerifier, compute_digest, is_digest, verify_bytes
from .errors import (
    DigestMismatch,
    Forbidden,
    InsufficientStorage,
    LimitExceeded,
    ManifestTooLarge,
    NotFound,
    PushRejected,
    RateLimited,
    RegistryError,
    RegistryNotAllowed,
    RegistryUnreachable,
    ScopeRefused,
    Side,
    TLSError,
    Unauthorized,
    UnsupportedMediaType,
)
from .ratelimit import rate_limit_note
from .reference import Registry, Repository, is_tag
from .retry import RetryBudget
from .transport import TransportSettings

__all__ = [
    "ManifestInfo",
    "MountAnswer",
    "MountRefusal",
    "RepositoryClient",
    "UploadSession",
    "registry_error_codes",
]

#: Blob bytes are passed on in pieces of about this size (``read_blob``): the reads of the
#: network joined, so the upload's HTTP stack runs once per piece rather than once per read.
BLOB_PIECE_BYTES = 1024 * 1024
#: Statuses that answer a successful manifest PUT.
_MANIFEST_STORED = frozenset({200, 201, 202})
#: Statuses that answer a completed blob upload.
_BLOB_STORED = frozenset({201, 204})
#: DELETEs of one abandoned upload session, each after learning where it moved (416), and
#: the pause between them; the caller bounds the whole in time (``oci.blobs``: 5 s).
_CANCEL_ROUNDS = 30
_CANCEL_PAUSE = 0.2
#: Answers to a monolithic PUT that mean "send it in chunks instead", unless the error code
#: says the bytes themselves were wrong.
_WANTS_CHUNKS = frozenset({400, 405, 415, 416})


E = TypeVar("E", bound=RegistryError)


@dataclass(frozen=True)
class ManifestInfo:
    """What a manifest HEAD tells: digest, media type and size (each when sent)."""

    digest: str | None
    media_type: str
    size: int | None


class MountRefusal(StrEnum):
    """Why a registry did not mount a blob (and did not open a session instead)."""

    #: 405 or 501: this registry does not mount at all.
    UNSUPPORTED = "unsupported"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    #: The source repository or blob is unknown to the registry.
    NOT_FOUND = "not found"
    #: Another 4xx.
    REJECTED = "rejected"
    #: An answer the protocol does not allow (202 without Location, a 2xx other than 201).
    NONCOMPLIANT = "non-compliant answer"
    #: The token service refused ``pull`` on the source (Docker Hub refuses the whole token
    #: request then): the mount request was not sent.
    TOKEN_REFUSED = "token refused"


@dataclass(frozen=True)
class UploadSession:
    """An open upload: where to send the bytes, and the smallest chunk the registry takes
    (``OCI-Chunk-Min-Length``, 0 when not given)."""

    location: str
    chunk_min_length: int = 0


@dataclass(frozen=True)
class MountAnswer:
    """201: ``mounted``; 202: ``session`` (an upload session to use or cancel); else
    ``refusal`` (with the status that said so)."""

    mounted: bool = False
    session: UploadSession | None = None
    refusal: MountRefusal | None = None
    status: int = 0


class _NotAnErrorBody(Exception):
    pass


def registry_error_codes(response: httpx.Response) -> list[tuple[str, str]]:
    """``(CODE, message)`` pairs of an OCI error body (``{"errors": [{code, message}]}``),
    at most three; an empty list for any other body (one nested deeper than
    ``MAX_JSON_DEPTH`` included). The registry client reads at most
    ``MAX_ERROR_BODY_BYTES`` of it (``RepositoryClient``)."""
    try:
        body = load_json(response.content, "the error body", error=_NotAnErrorBody)
    except (_NotAnErrorBody, httpx.ResponseNotRead):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    pairs: list[tuple[str, str]] = []
    for err in errors[:3]:
        if isinstance(err, dict):
            code = str(err.get("code") or "").strip().upper()[:64]
            message = " ".join(str(err.get("message") or "").split())[:200]
            if code or message:
                pairs.append((code, message))
    return pairs


class Channel(Protocol):
    """What a repository client sends through: one copy's session (``oci.pool.Session``)."""

    @property
    def settings(self) -> TransportSettings: ...

    @property
    def budget(self) -> RetryBudget: ...

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        scopes: tuple[str, ...],
        optional_scopes: tuple[str, ...] = (),
        mount_source: str | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Request: ...

    async def send(
        self,
        request: httpx.Request,
        registry: Registry,
        *,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response: ...

    def track_cleanup(self, task: asyncio.Future[None]) -> None:
        """Keep a clean-up that may outlive its caller until it ends (the pool waits for
        it before closing)."""


class RepositoryClient:
    """Distribution API calls on one repository, on one side of a copy, through a session."""

    def __init__(
        self,
        session: Channel,
        repository: Repository,
        side: Side,
        scopes: tuple[str, ...],
        *,
        optional_scopes: tuple[str, ...] = (),
        manifest_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.session = session
        #: Bounds the manifest requests (HEAD, GET, PUT, referrers) in flight at once; one
        #: semaphore shared by both sides of a copy.
        self.manifest_slots = manifest_slots
        self.name = repository
        self.side = side
        self.scopes = scopes
        #: Scopes asked for along with ``scopes`` unless the token service refuses them
        #: (the pull of explicit mount sources): a refusal never fails a request.
        self.optional_scopes = optional_scopes
        self.registry = repository.registry
        self._base = (
            f"{session.settings.scheme(self.registry)}://{self.registry}/v2/{repository.path}"
        )
        #: What the referrers endpoint said so far: True (it answered an index), False (no
        #: referrers API: 404, 400, 405, 406, a redirect or not an index), None (not asked).
        self.referrers_api: bool | None = None

    def __repr__(self) -> str:
        return f"RepositoryClient({self.side.value} {self.name})"

    # -- plumbing ---------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self._base}/{path}"

    def _reference_url(self, kind: str, reference: str, *, tags: bool = True) -> str:
        """``<base>/<kind>/<reference>`` for a valid digest (or tag, when ``tags``): nothing
        else reaches a URL path, so no text can walk out of the repository."""
        if not (is_digest(reference) or (tags and is_tag(reference))):
            shown = reference if len(reference) <= 160 else reference[:160] + "..."
            what = "a valid tag or digest" if tags else "a valid digest"
            raise self.error(
                UnsupportedMediaType,
                "check reference",
                f"refusing to request {shown!r} from {self.registry}/{self.name.path}: "
                f"it is not {what}",
            )
        return self._url(f"{kind}/{reference}")

    def _manifest_slot(self) -> AbstractAsyncContextManager[object]:
        return self.manifest_slots if self.manifest_slots is not None else nullcontext()

    async def _send(
        self,
        operation: str,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
        scopes: tuple[str, ...] | None = None,
        mount_source: str | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        request = self.session.request(
            method,
            url,
            scopes=scopes or self.scopes,
            optional_scopes=self.optional_scopes,
            mount_source=mount_source,
            headers=headers,
            content=content,
            params=params,
        )
        try:
            response = await self.session.send(
                request, self.registry, stream=True, follow_redirects=follow_redirects
            )
            return response if stream else await self._buffered(response)
        except httpx.RemoteProtocolError as exc:
            if "buffer too long" in str(exc).lower():
                # h11 refuses a header block over httpcore's 100 KiB before it is whole.
                raise self.error(
                    LimitExceeded,
                    operation,
                    f"{self.registry} answered with response headers over "
                    f"{MAX_RESPONSE_HEADER_BYTES // 1024} KiB",
                ) from None
            raise self.error(
                RegistryUnreachable,
                operation,
                f"connection to {self.registry} failed: {_short(exc)}",
            ) from None
        except UnicodeError:
            # idna's error for a punycode host (``xn--…``) that does not decode: a redirect
            # or upload Location naming a host no connection can be made to.
            raise RegistryNotAllowed(
                f"{self.registry} sent a URL whose host is not a valid internationalised host "
                "name; refusing to contact it"
            ) from None
        except httpx.ConnectError as exc:
            if _is_tls_error(exc):
                raise self.error(
                    TLSError, operation, f"TLS handshake with {self.registry} failed: {_short(exc)}"
                ) from None
            raise self.error(
                RegistryUnreachable, operation, f"cannot connect to {self.registry}: {_short(exc)}"
            ) from None
        except httpx.TimeoutException:
            raise self.error(
                RegistryUnreachable, operation, f"{self.registry} did not answer in time"
            ) from None
        except httpx.TransportError as exc:
            raise self.error(
                RegistryUnreachable,
                operation,
                f"connection to {self.registry} failed: {_short(exc)}",
            ) from None

    def error(self, kind: type[E], operation: str, message: str, *, status: int | None = None) -> E:
        """A ``kind`` error of ``operation`` on this repository, with its side and registry."""
        return kind(
            message, status=status, operation=operation, side=self.side, registry=str(self.registry)
        )

    def manifest_missing(self, reference: str) -> NotFound:
        """The error for a manifest this repository answered 404 for (``head_manifest`` or
        ``get_manifest(missing_ok=True)`` gave None)."""
        return self.error(NotFound, "get manifest", f"{reference} not found", status=404)

    async def _read_limited(
        self,
        response: httpx.Response,
        operation: str,
        what: str,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> bytes:
        """A manifest-like body, refused once it passes ``limit`` (4 MiB; by
        Content-Length first), read while streaming."""
        try:
            return await read_bounded(response, limit)
        except BodyTooLarge as exc:
            size = f"{exc.seen} bytes" if exc.announced else f"over {limit // (1024 * 1024)} MiB"
            raise self.error(
                ManifestTooLarge,
                operation,
                f"{what} is {size}; manifests over {limit // (1024 * 1024)} MiB are refused",
            ) from None
        except ValueError as exc:
            raise self.error(UnsupportedMediaType, operation, f"{what}: {exc}") from None
        except httpx.TransportError as exc:
            raise self.error(
                RegistryUnreachable,
                operation,
                f"reading {what} from {self.registry} failed: {_short(exc)}",
            ) from None

    async def _buffered(self, response: httpx.Response) -> httpx.Response:
        """``response`` with its body read, at most ``MAX_ERROR_BODY_BYTES`` of it: a longer
        body is cut there and the rest never read (closing an unfinished answer drops its
        connection). Answers the client reads whole — errors, upload and mount answers —
        go through here; bodies are used for their error codes only."""
        if response.is_stream_consumed:
            # Built from bytes already in memory (a test transport's answer): nothing to bound.
            return response
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= MAX_ERROR_BODY_BYTES:
                    del body[MAX_ERROR_BODY_BYTES:]
                    break
        except httpx.TransportError:
            pass  # the status and headers are the answer; a broken body only loses detail
        finally:
            await response.aclose()
        if response.headers.get("Content-Encoding", "identity").strip().lower() not in (
            "",
            "identity",
        ):
            body.clear()  # asked for identity: a compressed body is not inflated here
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=bytes(body),
            request=response.request,
        )

    def fail(
        self,
        response: httpx.Response,
        operation: str,
        what: str,
        *,
        rejected: type[RegistryError] = RegistryError,
    ) -> RegistryError:
        """The error for an unexpected answer to ``operation`` on ``what``; 4xx answers to
        writes (``rejected=PushRejected``) are push rejections."""
        status = response.status_code
        codes = registry_error_codes(response)
        code = codes[0][0] or None if codes else None
        detail = "; ".join(f"{c} {m}".strip() for c, m in codes[:2] if c or m)
        detail = f" ({detail[:200]})" if detail else ""
        where = f"{self.registry}/{self.name.path}"
        kind: type[RegistryError]
        if status == 401:
            kind, message = Unauthorized, f"{where} refused access to {what} (401){detail}"
        elif status == 403:
            kind, message = Forbidden, f"{where} forbids {what} (403){detail}"
        elif status == 404:
            kind, message = NotFound, f"{what} not found in {where}{detail}"
            if rejected is PushRejected:
                kind, message = PushRejected, f"{where} rejected {what} with 404{detail}"
        elif status == 429:
            kind, message = RateLimited, f"{where} rate-limited {what} (429){detail}"
            note = rate_limit_note(str(self.registry), response.headers)
            if note:
                message += f"; {note}"
        elif status == 507:
            kind = InsufficientStorage
            message = f"{where} has no space for {what} (507 Insufficient Storage){detail}"
        elif status >= 500 or status == 408:
            kind, message = RegistryUnreachable, f"{where} failed {what} with {status}{detail}"
        else:
            kind, message = rejected, f"{where} rejected {what} with {status}{detail}"
        return kind(
            message,
            status=status,
            code=code,
            operation=operation,
            side=self.side,
            registry=str(self.registry),
        )

    def location(self, response: httpx.Response) -> str:
        """The upload ``Location`` of an answer, absolute. It carries state in its query
        string, so it is kept verbatim."""
        return str(response.request.url.join(response.headers["Location"]))

    # -- manifests --------------------------------------------------------------------------

    async def head_manifest(self, reference: str) -> ManifestInfo | None:
        """What the registry holds at ``reference`` (tag or digest); None when nothing."""
        url = self._reference_url("manifests", reference)
        async with self._manifest_slot():
            response = await self._send(
                "check manifest", "HEAD", url, headers={"Accept": mt.ACCEPT_MANIFESTS}
            )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.fail(response, "check manifest", f"manifest {reference}")
        digest = response.headers.get("Docker-Content-Digest")
        if digest is not None and not is_digest(digest.strip()):
            # The copy may request what this names: it must be a digest, nothing else.
            raise self.error(
                UnsupportedMediaType,
                "check manifest",
                f"{self.registry}/{self.name.path} answered for manifest {reference} with a "
                "Docker-Content-Digest that is not a valid digest",
            )
        if digest is not None:
            digest = digest.strip()
        elif is_digest(reference):
            digest = reference
        length = response.headers.get("Content-Length")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return ManifestInfo(
            digest, media_type, int(length) if length and length.isdigit() else None
        )

    async def get_manifest(
        self, reference: str, *, expected_digest: str | None = None, missing_ok: bool = False
    ) -> Manifest | None:
        """The manifest at ``reference``, digest-verified, at most 4 MiB read."""
        url = self._reference_url("manifests", reference)
        async with self._manifest_slot():
            response = await self._send(
                "get manifest", "GET", url, headers={"Accept": mt.ACCEPT_MANIFESTS}, stream=True
            )
            try:
                if response.status_code == 404 and missing_ok:
                    return None
                if response.status_code != 200:
                    answer = await self._buffered(response)
                    raise self.fail(answer, "get manifest", f"manifest {reference}")
                where = f"manifest {self.registry}/{self.name.path}@{expected_digest or reference}"
                raw = await self._read_limited(response, "get manifest", where)
            finally:
                await response.aclose()
        header_digest = response.headers.get("Docker-Content-Digest")
        digest = expected_digest or header_digest
        if digest is not None:
            verify_bytes(raw, digest, where)
        else:
            digest = compute_digest(raw)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return parse_manifest(raw, media_type, where, digest)

    async def put_manifest(self, reference: str, manifest: Manifest) -> httpx.Headers:
        """Store ``manifest``'s exact bytes at ``reference``; returns the answer's headers."""
        url = self._reference_url("manifests", reference)
        async with self._manifest_slot():
            response = await self._send(
                "push manifest",
                "PUT",
                url,
                headers={"Content-Type": manifest.media_type},
                content=manifest.data,
            )
        if response.status_code not in _MANIFEST_STORED:
            raise self.fail(
                response, "push manifest", f"manifest {reference}", rejected=PushRejected
            )
        returned = response.headers.get("Docker-Content-Digest")
        same_algorithm = returned and returned.split(":", 1)[0] == manifest.digest.split(":", 1)[0]
        if same_algorithm and returned != manifest.digest:
            raise self.error(
                PushRejected,
                "push manifest",
                f"{self.registry}/{self.name.path} stored manifest {reference} as {returned}, "
                f"expected {manifest.digest}",
            )
        return response.headers

    # -- blobs ------------------------------------------------------------------------------

    async def blob_exists(self, digest: str) -> bool:
        url = self._reference_url("blobs", digest, tags=False)
        response = await self._send("check blob", "HEAD", url, follow_redirects=True)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self.fail(response, "check blob", f"blob {digest}")

    @asynccontextmanager
    async def _open_blob(self, digest: str) -> AsyncIterator[httpx.Response]:
        url = self._reference_url("blobs", digest, tags=False)
        response = await self._send("get blob", "GET", url, stream=True, follow_redirects=True)
        try:
            if response.status_code != 200:
                answer = await self._buffered(response)
                raise self.fail(answer, "get blob", f"blob {digest}")
            yield response
        finally:
            await response.aclose()

    async def read_blob(
        self, desc: Descriptor, on_bytes: Callable[[int], None] | None = None
    ) -> AsyncIterator[bytes]:
        """The blob's bytes, verified against ``desc``: the last chunk is held back until
        the digest and size check out, so a corrupt blob never completes an upload."""
        verifier = DigestVerifier(desc.digest, desc.size)
        # Network reads are hashed as they arrive, on the loop, while still in the CPU's
        # cache, and joined into pieces of about BLOB_PIECE_BYTES: each piece costs one pass
        # through the upload's HTTP stack instead of one per read. (Hashing in a worker
        # thread cost more CPU than it moved off the loop: a thread wake-up and GIL hand-offs
        # per piece, about 0.3 s per GiB of a cross-registry copy.) A piece is passed on only
        # once it is counted and hashed.
        parts: list[bytes] = []
        held = 0
        pending: bytes | None = None
        try:
            async with self._open_blob(desc.digest) as response:
                async for chunk in response.aiter_bytes():
                    verifier.count(len(chunk))
                    verifier.hash(chunk)
                    parts.append(chunk)
                    held += len(chunk)
                    if held < BLOB_PIECE_BYTES:
                        continue
                    piece = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts, held = [], 0
                    if pending is not None:
                        yield pending
                        if on_bytes is not None:
                            on_bytes(len(pending))
                    pending = piece
        except httpx.TransportError as exc:
            raise self.error(
                RegistryUnreachable,
                "read blob",
                f"reading blob {desc.digest} from {self.registry} failed: {_short(exc)}",
            ) from None
        rest = b"".join(parts)
        try:
            verifier.verify()
        except DigestMismatch as exc:
            raise self.error(
                DigestMismatch, "read blob", f"{self.side.value} {self.name}: {exc}"
            ) from None
        for last in (pending, rest):
            if last:
                yield last
                if on_bytes is not None:
                    on_bytes(len(last))

    async def mount_blob(self, digest: str, source: Repository) -> MountAnswer:
        """Ask the registry to link ``digest`` from ``source`` (same registry) into this
        repository; the token also asks ``pull`` on ``source``, optionally: when the token
        service refuses it, no request is sent and the answer is ``TOKEN_REFUSED``."""
        try:
            response = await self._send(
                "mount blob",
                "POST",
                self._url("blobs/uploads/"),
                params={"mount": digest, "from": source.path},
                headers={"Content-Length": "0"},
                mount_source=source.scope("pull"),
            )
        except ScopeRefused:
            return MountAnswer(refusal=MountRefusal.TOKEN_REFUSED, status=401)
        code = response.status_code
        if code == 201:
            return MountAnswer(mounted=True, status=code)
        if code == 202:
            if not response.headers.get("Location"):
                return MountAnswer(refusal=MountRefusal.NONCOMPLIANT, status=code)
            return MountAnswer(session=self._session_of(response), status=code)
        refusal = _MOUNT_REFUSALS.get(code)
        if refusal is None and 400 <= code < 500 and code not in (408, 429):
            refusal = MountRefusal.REJECTED
        if refusal is None and 200 <= code < 300:
            refusal = MountRefusal.NONCOMPLIANT
        if refusal is not None:
            return MountAnswer(refusal=refusal, status=code)
        raise self.fail(response, "mount blob", f"mount of blob {digest}")

    def _session_of(self, response: httpx.Response) -> UploadSession:
        raw = response.headers.get("OCI-Chunk-Min-Length", "").strip()
        minimum = int(raw) if raw.isdigit() and len(raw) <= 18 else 0
        return UploadSession(self.location(response), minimum)

    async def start_upload(self) -> UploadSession:
        response = await self._send(
            "start upload", "POST", self._url("blobs/uploads/"), headers={"Content-Length": "0"}
        )
        if response.status_code != 202 or not response.headers.get("Location"):
            raise self.fail(response, "start upload", "blob upload", rejected=PushRejected)
        return self._session_of(response)

    async def cancel_upload(self, session: UploadSession) -> None:
        """Best effort: an abandoned session expires on its own.

        A registry that does not answer (connection refused or reset: one restarting after
        a crash) is asked again every ``_CANCEL_PAUSE`` seconds, within the caller's bound.

        A session that took part of a body before the transfer was cut off has moved past
        the offset its ``Location`` carries, and distribution answers that ``Location`` 416;
        its status (``GET``, answered 204 with the current ``Location``) names the session
        as it is now, which is cancelled instead (a few rounds: bytes sent before the cut
        may still be landing).
        """
        location = session.location
        for round_ in range(_CANCEL_ROUNDS):
            if round_:
                # Bytes sent before the cut still land, or the registry is restarting: let
                # it, then look again.
                await asyncio.sleep(_CANCEL_PAUSE)
            try:
                response = await self._send("cancel upload", "DELETE", location)
                if response.status_code != 416:
                    return
                status = await self._send("check upload", "GET", location)
                if status.status_code != 204 or not status.headers.get("Location"):
                    return
                location = self.location(status)
            except RegistryUnreachable:
                continue  # no answer (a registry that crashed mid-upload): try again
            except RegistryError:
                return

    async def put_blob(
        self, session: UploadSession, desc: Descriptor, body: AsyncIterator[bytes]
    ) -> bool:
        """Monolithic upload with a streaming body. True when stored; False when the
        registry wants a chunked upload instead (its session is then spent)."""
        url = httpx.URL(session.location).copy_merge_params({"digest": desc.digest})
        response = await self._send(
            "upload blob",
            "PUT",
            url,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            content=body,
        )
        if response.status_code in _BLOB_STORED:
            return True
        codes = {code for code, _ in registry_error_codes(response)}
        if response.status_code in _WANTS_CHUNKS and not codes & {"DIGEST_INVALID", "SIZE_INVALID"}:
            return False
        raise self.fail(response, "upload blob", f"blob {desc.digest}", rejected=PushRejected)

    async def patch_blob(
        self,
        session: UploadSession,
        desc: Descriptor,
        body: AsyncIterator[bytes],
        chunk_size: int,
    ) -> None:
        """Chunked upload: PATCH chunks of exactly ``chunk_size`` bytes (the last may be
        shorter), then PUT with the digest."""
        offset = 0
        buffer = bytearray()
        location = session.location

        async def flush(loc: str, piece: bytes) -> str:
            nonlocal offset
            response = await self._send(
                "upload blob chunk",
                "PATCH",
                loc,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    "Content-Length": str(len(piece)),
                },
                content=piece,
            )
            # 202 is the spec's answer; Amazon ECR answers 201 (with the same Location).
            if response.status_code not in (201, 202) or not response.headers.get("Location"):
                raise self.fail(
                    response,
                    "upload blob chunk",
                    f"chunk of blob {desc.digest}",
                    rejected=PushRejected,
                )
            offset += len(piece)
            return self.location(response)

        async for chunk in body:
            buffer.extend(chunk)
            while len(buffer) >= chunk_size:  # chunks never exceed chunk_size
                location = await flush(location, bytes(buffer[:chunk_size]))
                del buffer[:chunk_size]
        if buffer:
            location = await flush(location, bytes(buffer))
        url = httpx.URL(location).copy_merge_params({"digest": desc.digest})
        response = await self._send("upload blob", "PUT", url, headers={"Content-Length": "0"})
        if response.status_code not in _BLOB_STORED:
            raise self.fail(response, "upload blob", f"blob {desc.digest}", rejected=PushRejected)

    # -- referrers API ----------------------------------------------------------------------

    async def list_referrers(
        self, digest: str, artifact_type: str | None = None
    ) -> tuple[Descriptor, ...] | None:
        """The referrers of ``digest`` by the referrers API, only those of ``artifact_type``
        when given (asked of the registry with ``?artifactType=``; filtered here when its
        answer lacks ``OCI-Filters-Applied: artifactType``), or None when the registry has no
        referrers API.

        No API: 404, 400 (Quay), 405, 406 (older Artifactory), a redirect (not followed: GHCR
        sends some requests to a rate-limited API) or a 200 that is not an image index. A 429
        that outlived the transport's retries is ``RateLimited``, never taken for "no API".
        """
        answer = await self._referrers(digest, artifact_type)
        if answer is None:
            return None
        index, filters = answer
        found = index.manifests
        if artifact_type is not None and "artifacttype" not in filters:
            found = tuple(d for d in found if d.artifact_type == artifact_type)
        return found

    async def _referrers(
        self, digest: str, artifact_type: str | None
    ) -> tuple[Manifest, frozenset[str]] | None:
        url = self._reference_url("referrers", digest, tags=False)
        params = {"artifactType": artifact_type} if artifact_type is not None else None
        async with self._manifest_slot():
            response = await self._send(
                "list referrers",
                "GET",
                url,
                headers={"Accept": mt.OCI_INDEX},
                params=params,
                stream=True,
            )
            try:
                code = response.status_code
                if code == 200:
                    content_type = response.headers.get("Content-Type", "")
                    if not content_type.startswith(mt.OCI_INDEX):
                        self.referrers_api = False
                        return None
                    data = await self._read_limited(
                        response,
                        "list referrers",
                        f"the referrers index of {digest} in {self.name}",
                        MAX_REFERRERS_BODY_BYTES,
                    )
                    index = parse_manifest(data, mt.OCI_INDEX, f"referrers of {digest}")
                    self.referrers_api = True
                    applied = response.headers.get("OCI-Filters-Applied", "")
                    filters = frozenset(f.strip().lower() for f in applied.split(",") if f)
                    return index, filters
                if code in _NO_REFERRERS_API or 300 <= code < 400:
                    self.referrers_api = False
                    return None
                answer = await self._buffered(response)
                raise self.fail(answer, "list referrers", f"referrers of {digest}")
            finally:
                await response.aclose()


#: Answers of the referrers endpoint that mean "no referrers API here" (redirects too).
_NO_REFERRERS_API = frozenset({400, 404, 405, 406})


_MOUNT_REFUSALS = {
    401: MountRefusal.UNAUTHORIZED,
    403: MountRefusal.FORBIDDEN,
    404: MountRefusal.NOT_FOUND,
    405: MountRefusal.UNSUPPORTED,
    501: MountRefusal.UNSUPPORTED,
}


def _is_tls_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return True
        current = current.__cause__ or current.__context__
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text or "TLS" in text


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
