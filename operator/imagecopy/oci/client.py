"""The async registry client: connection pool, per-copy sessions and repository operations.

`RegistryPool` owns the HTTP connection pool and the transport stack (retries, request
counting, network guard, TLS per host) and lives as long as the process. A `Session` binds
one copy's credentials and request counter to the pool. A `Repository` speaks the
distribution API for one repository: manifests, blobs, upload sessions, mounts, referrers.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum

import httpx

from . import mediatypes as mt
from .auth import SCOPES, Challenge, RegistryAuth
from .credentials import CredentialStore
from .descriptor import MAX_MANIFEST_BYTES, Descriptor, Manifest, parse_manifest
from .digest import compute_digest, verify_bytes
from .errors import (
    Forbidden,
    ManifestTooLarge,
    NotFound,
    PushRejected,
    RateLimited,
    RegistryError,
    RegistryUnreachable,
    TLSError,
    Unauthorized,
)
from .netguard import NetworkGuardTransport, parse_networks
from .pool import PoolTransport
from .reference import Reference
from .transport import (
    STATS,
    CountingTransport,
    RequestStats,
    RetryPolicy,
    RetryTransport,
    stats_for,
)

__all__ = [
    "ManifestInfo",
    "MountOutcome",
    "MountResult",
    "RegistryPool",
    "Repository",
    "Session",
    "TransportSettings",
]

USER_AGENT = "imagecopy/0.1"


def _host_matches(registry: str, hosts: frozenset[str]) -> bool:
    hostname = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return registry in hosts or hostname in hosts


@dataclass(frozen=True)
class TransportSettings:
    """How to reach registries: schemes, TLS trust, retries, limits. Read once at start."""

    plain_http: frozenset[str] = frozenset()
    insecure: frozenset[str] = frozenset()
    ca_file: str | None = None
    blocked_networks: tuple[str, ...] = ()
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Small on purpose: httpcore scans every pooled connection on each request, so a big
    #: pool costs CPU per request; 16 covers 8 parallel GET→PUT streams.
    max_connections: int = 16
    http2: bool = False

    def scheme(self, registry: str) -> str:
        return "http" if _host_matches(registry, self.plain_http) else "https"

    def is_insecure(self, registry: str) -> bool:
        return _host_matches(registry, self.insecure) or _host_matches(registry, self.plain_http)


def _transport_stack(
    settings: TransportSettings, ssl_context: Callable[[], ssl.SSLContext]
) -> httpx.AsyncBaseTransport:
    transport: httpx.AsyncBaseTransport = PoolTransport(
        ssl_context, max_connections=settings.max_connections, http2=settings.http2
    )
    blocked = parse_networks(settings.blocked_networks)
    if blocked:
        transport = NetworkGuardTransport(transport, blocked)
    return RetryTransport(CountingTransport(transport, _stats_for), settings.retry)


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# The copy whose request is being sent; token requests made by the auth flow on its behalf
# carry no extension of their own but run in the same task, so they count for it too.
_CURRENT_STATS: ContextVar[RequestStats | None] = ContextVar("imagecopy_stats", default=None)


def _stats_for(request: httpx.Request) -> RequestStats | None:
    stats = stats_for(request)
    return stats if stats is not None else _CURRENT_STATS.get()


class RegistryPool:
    """One HTTP connection pool for every registry; shared by all copies of a process."""

    def __init__(self, settings: TransportSettings | None = None) -> None:
        self.settings = settings or TransportSettings()
        ca_file = self.settings.ca_file

        def verified_context() -> ssl.SSLContext:
            context = httpx.create_ssl_context()  # the system/certifi trust store
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
            return context

        mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
        if self.settings.insecure:
            insecure = _transport_stack(self.settings, _unverified_context)
            for host in sorted(self.settings.insecure):
                mounts[f"all://{host}"] = insecure
        self.http = httpx.AsyncClient(
            transport=_transport_stack(self.settings, verified_context),
            mounts=mounts,
            timeout=httpx.Timeout(self.settings.timeout, connect=min(10.0, self.settings.timeout)),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        #: Auth challenges seen per registry (not secret), shared by every session.
        self.challenges: dict[str, Challenge] = {}

    def session(self, credentials: CredentialStore | None = None) -> Session:
        return Session(self, credentials or CredentialStore.from_docker_config({}))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> RegistryPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Session:
    """One copy's view of the pool: its credentials, its auth state and its request count."""

    def __init__(self, pool: RegistryPool, credentials: CredentialStore) -> None:
        self.pool = pool
        self.credentials = credentials
        self.stats = RequestStats()
        self._auth: dict[str, RegistryAuth] = {}

    def auth(self, registry: str) -> RegistryAuth:
        auth = self._auth.get(registry)
        if auth is None:
            settings = self.pool.settings
            auth = RegistryAuth(
                registry,
                self.credentials.get(registry),
                token_client=self.pool.http,
                scheme=settings.scheme(registry),
                allow_insecure_realm=settings.is_insecure(registry),
                challenges=self.pool.challenges,
            )
            self._auth[registry] = auth
        return auth

    def repository(self, ref: Reference, scopes: tuple[str, ...] | None = None) -> Repository:
        return Repository(self, ref, scopes or (ref.scope("pull"),))


@dataclass(frozen=True)
class ManifestInfo:
    digest: str | None
    media_type: str
    size: int | None


class MountResult(Enum):
    MOUNTED = "mounted"
    SESSION = "session"  # 202: the registry opened an upload session instead
    REFUSED = "refused"  # mount not supported/allowed here


@dataclass(frozen=True)
class MountOutcome:
    result: MountResult
    location: str | None = None
    status: int = 0


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return ""
    parts = []
    for err in errors[:2]:
        if isinstance(err, dict):
            code = str(err.get("code") or "")
            message = str(err.get("message") or "")
            parts.append(f"{code} {message}".strip())
    detail = "; ".join(p for p in parts if p)
    return f" ({detail[:200]})" if detail else ""


class Repository:
    """Distribution API calls on one repository through one session."""

    def __init__(self, session: Session, ref: Reference, scopes: tuple[str, ...]) -> None:
        self.session = session
        self.ref = ref
        self.scopes = scopes
        self.registry = ref.registry
        self.name = ref.repository
        self._base = (
            f"{session.pool.settings.scheme(ref.registry)}://{ref.registry}/v2/{ref.repository}"
        )

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _http(self) -> httpx.AsyncClient:
        return self.session.pool.http

    def _url(self, path: str) -> str:
        return f"{self._base}/{path}"

    async def _send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
        scopes: tuple[str, ...] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            url,
            headers=headers,
            content=content,
            params=params,
            extensions={SCOPES: scopes or self.scopes, STATS: self.session.stats},
        )
        current = _CURRENT_STATS.set(self.session.stats)
        try:
            return await self._http.send(
                request,
                auth=self.session.auth(self.registry),
                stream=stream,
                follow_redirects=follow_redirects,
            )
        except httpx.ConnectError as exc:
            if _is_tls_error(exc):
                raise TLSError(
                    f"TLS handshake with {self.registry} failed: {_short(exc)}"
                ) from None
            raise RegistryUnreachable(f"cannot connect to {self.registry}: {_short(exc)}") from None
        except httpx.TimeoutException:
            raise RegistryUnreachable(f"{self.registry} did not answer in time") from None
        except httpx.TransportError as exc:
            raise RegistryUnreachable(
                f"connection to {self.registry} failed: {_short(exc)}"
            ) from None
        finally:
            _CURRENT_STATS.reset(current)

    def _fail(
        self,
        response: httpx.Response,
        what: str,
        *,
        not_found: type[RegistryError] = NotFound,
        rejected: type[RegistryError] = RegistryError,
    ) -> RegistryError:
        code = response.status_code
        detail = _error_detail(response)
        where = f"{self.registry}/{self.name}"
        if code == 401:
            return Unauthorized(f"{where} refused access to {what} (401){detail}", status=code)
        if code == 403:
            return Forbidden(f"{where} forbids {what} (403){detail}", status=code)
        if code == 404:
            return not_found(f"{what} not found in {where}{detail}", status=code)
        if code == 429:
            return RateLimited(f"{where} rate-limited {what} (429){detail}", status=code)
        if code >= 500 or code == 408:
            return RegistryUnreachable(f"{where} failed {what} with {code}{detail}", status=code)
        return rejected(f"{where} rejected {what} with {code}{detail}", status=code)

    # -- manifests --------------------------------------------------------------------------

    async def head_manifest(self, reference: str) -> ManifestInfo | None:
        response = await self._send(
            "HEAD", self._url(f"manifests/{reference}"), headers={"Accept": mt.ACCEPT_MANIFESTS}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"manifest {reference}")
        digest = response.headers.get("Docker-Content-Digest")
        if digest is None and reference.count(":") == 1 and "sha" in reference.split(":")[0]:
            digest = reference
        length = response.headers.get("Content-Length")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return ManifestInfo(
            digest, media_type, int(length) if length and length.isdigit() else None
        )

    async def get_manifest(
        self, reference: str, *, expected_digest: str | None = None, missing_ok: bool = False
    ) -> Manifest | None:
        response = await self._send(
            "GET",
            self._url(f"manifests/{reference}"),
            headers={"Accept": mt.ACCEPT_MANIFESTS},
            stream=True,
        )
        try:
            if response.status_code == 404 and missing_ok:
                return None
            if response.status_code != 200:
                await response.aread()
                raise self._fail(response, f"manifest {reference}")
            length = response.headers.get("Content-Length")
            where = f"manifest {self.registry}/{self.name}@{expected_digest or reference}"
            if length and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise ManifestTooLarge(
                    f"{where} is {length} bytes; manifests over 4 MiB are refused"
                )
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > MAX_MANIFEST_BYTES:
                    raise ManifestTooLarge(f"{where} is over 4 MiB; such manifests are refused")
        finally:
            await response.aclose()
        raw = bytes(data)
        header_digest = response.headers.get("Docker-Content-Digest")
        digest = expected_digest or header_digest
        if digest is not None:
            verify_bytes(raw, digest, where)
        else:
            digest = compute_digest(raw)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return parse_manifest(raw, media_type, where, digest)

    async def put_manifest(self, reference: str, manifest: Manifest) -> httpx.Headers:
        response = await self._send(
            "PUT",
            self._url(f"manifests/{reference}"),
            headers={"Content-Type": manifest.media_type},
            content=manifest.data,
        )
        await response.aread()
        if response.status_code not in (200, 201, 202):
            raise self._fail(
                response, f"manifest {reference}", not_found=PushRejected, rejected=PushRejected
            )
        returned = response.headers.get("Docker-Content-Digest")
        same_algorithm = returned and returned.split(":", 1)[0] == manifest.digest.split(":", 1)[0]
        if same_algorithm and returned != manifest.digest:
            raise PushRejected(
                f"{self.registry}/{self.name} stored manifest {reference} as {returned}, "
                f"expected {manifest.digest}"
            )
        return response.headers

    # -- blobs ------------------------------------------------------------------------------

    async def blob_exists(self, digest: str) -> bool:
        response = await self._send("HEAD", self._url(f"blobs/{digest}"), follow_redirects=True)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"blob {digest}")

    @asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[httpx.Response]:
        response = await self._send(
            "GET", self._url(f"blobs/{digest}"), stream=True, follow_redirects=True
        )
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._fail(response, f"blob {digest}")
            yield response
        finally:
            await response.aclose()

    async def mount_blob(
        self, digest: str, from_repository: str, scopes: tuple[str, ...] | None = None
    ) -> MountOutcome:
        response = await self._send(
            "POST",
            self._url("blobs/uploads/"),
            params={"mount": digest, "from": from_repository},
            headers={"Content-Length": "0"},
            scopes=scopes,
        )
        await response.aread()
        code = response.status_code
        if code == 201:
            return MountOutcome(MountResult.MOUNTED, status=code)
        if code == 202 and response.headers.get("Location"):
            return MountOutcome(MountResult.SESSION, self._location(response), status=code)
        if code in (401, 403, 404, 405) or (400 <= code < 500 and code not in (408, 429)):
            return MountOutcome(MountResult.REFUSED, status=code)
        raise self._fail(response, f"mount of blob {digest}")

    def _location(self, response: httpx.Response) -> str:
        location = response.headers["Location"]
        # Location may be relative; it carries state in its query string: keep it verbatim.
        return str(response.request.url.join(location))

    async def start_upload(self) -> str:
        response = await self._send(
            "POST", self._url("blobs/uploads/"), headers={"Content-Length": "0"}
        )
        await response.aread()
        if response.status_code != 202 or not response.headers.get("Location"):
            raise self._fail(response, "blob upload", not_found=PushRejected, rejected=PushRejected)
        return self._location(response)

    async def cancel_upload(self, location: str) -> None:
        try:
            response = await self._send("DELETE", location)
            await response.aread()
        except RegistryError:
            pass  # best effort: an abandoned session expires on its own

    async def put_blob(self, location: str, desc: Descriptor, body: AsyncIterator[bytes]) -> int:
        """Monolithic upload with a streaming body; returns the status code (201 on success)."""
        url = httpx.URL(location).copy_merge_params({"digest": desc.digest})
        response = await self._send(
            "PUT",
            url,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            content=body,
        )
        await response.aread()
        if response.status_code in (201, 204):
            return response.status_code
        if response.status_code in (400, 405, 415, 416):
            # Digest errors are the registry's verdict on the bytes; other answers mean the
            # registry wants a chunked upload instead.
            detail = _error_detail(response)
            if "DIGEST_INVALID" in detail:
                raise PushRejected(
                    f"{self.registry}/{self.name} rejected blob {desc.digest}{detail}",
                    status=response.status_code,
                )
            return response.status_code
        raise self._fail(
            response, f"upload of blob {desc.digest}", not_found=PushRejected, rejected=PushRejected
        )

    async def patch_blob(
        self, location: str, desc: Descriptor, body: AsyncIterator[bytes], chunk_size: int
    ) -> None:
        """Chunked upload: PATCH bounded chunks, then PUT with the digest."""
        offset = 0
        buffer = bytearray()

        async def flush(loc: str, piece: bytes) -> str:
            nonlocal offset
            response = await self._send(
                "PATCH",
                loc,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    "Content-Length": str(len(piece)),
                },
                content=piece,
            )
            await response.aread()
            if response.status_code != 202 or not response.headers.get("Location"):
                raise self._fail(
                    response, f"chunk upload of blob {desc.digest}", rejected=PushRejected
                )
            offset += len(piece)
            return self._location(response)

        async for chunk in body:
            buffer.extend(chunk)
            while len(buffer) >= chunk_size:  # chunks never exceed chunk_size
                location = await flush(location, bytes(buffer[:chunk_size]))
                del buffer[:chunk_size]
        if buffer:
            location = await flush(location, bytes(buffer))
        url = httpx.URL(location).copy_merge_params({"digest": desc.digest})
        response = await self._send("PUT", url, headers={"Content-Length": "0"})
        await response.aread()
        if response.status_code not in (201, 204):
            raise self._fail(
                response,
                f"upload of blob {desc.digest}",
                not_found=PushRejected,
                rejected=PushRejected,
            )

    # -- referrers --------------------------------------------------------------------------

    async def referrers(self, digest: str) -> tuple[list[Descriptor], bool]:
        """Referrers of `digest` and whether the registry serves the referrers API."""
        response = await self._send(
            "GET", self._url(f"referrers/{digest}"), headers={"Accept": mt.OCI_INDEX}
        )
        await response.aread()
        if response.status_code == 200:
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith(mt.OCI_INDEX):
                index = parse_manifest(response.content, mt.OCI_INDEX, f"referrers of {digest}")
                return list(index.manifests), True
        elif response.status_code not in (404, 400, 405):
            raise self._fail(response, f"referrers of {digest}")
        tagged = await self.get_manifest(referrers_tag(digest), missing_ok=True)
        if tagged is None or not tagged.is_index:
            return [], False
        return list(tagged.manifests), False


def referrers_tag(digest: str) -> str:
    """The tag of the referrers tag schema: `sha256-<hex>`."""
    return digest.replace(":", "-")


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
