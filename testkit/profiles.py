"""Registry profiles: a front (reverse proxy) that makes a real distribution registry answer
like Docker Hub, Harbor, GHCR, ECR, GitLab, Quay, zot or Artifactory.

Every request is forwarded to the real registry (``testkit.registry``) unless the profile's
registry answers differently there; where distribution lacks a behaviour (the referrers API,
201 on a chunk) the front answers from the real registry's data — referrers built from the
manifests it saw pushed with a ``subject``, a mount decided from the manifests the source
repository really holds — never canned bytes. The facts each profile emulates (issue 11)::

    dockerhub    token service: 401 for the whole token request when any scope names a
                 repository the caller may not pull (``TokenIssuer(all_or_nothing=True)``,
                 on the upstream's issuer); ``ratelimit-limit`` / ``ratelimit-remaining`` on
                 manifest answers, only GETs counted (HEAD is free)
    harbor       mount from an unpullable or missing project → 401; missing blob → 202
                 (distribution's own answer); referrers API
    ghcr         mount from a package without access → 403; the referrers endpoint answers
                 303 to a second path of the front (same origin), GHCR's rate-limited API:
                 404 while its budget (``ghcr_api_budget`` requests) lasts, then 429 with
                 ``Retry-After``; ``ghcr_redirect=False``: the endpoint *is* that API;
                 ``ghcr_blob_cdn=True``: a blob GET the caller may make is answered 307 to a
                 second server of the front (another origin, GHCR's package CDN) serving the
                 bytes, which records whether credentials reached it (``cdn_records``)
    ecr          mounting off → every mount 202 (a plain session); on → only a blob some
                 manifest of the ``from`` repository references is mounted, else 202; a
                 chunk (PATCH) is answered 201 instead of 202; referrers API
    gitlab       201, or 202 for every failure, a ``from`` outside the destination's
                 top-level namespace included
    quay         needs ``from``; missing blob / repository / no read → 202; referrers → 400;
                 a mounted blob that no manifest pushed into that repository references
                 within ``quay_mount_ttl`` seconds is forgotten: 404 to HEAD/GET, and a
                 manifest PUT naming it is refused with 400 ``MANIFEST_BLOB_UNKNOWN``
    zot          ignores ``from``: 201 for a blob it holds in any repository; ``zot-old``
                 answers 405 to every mount; referrers API with ``OCI-Subject``
    artifactory  referrers API (7.90+); ``artifactory-old`` answers 406 there

"May not pull" is the front's ``denied`` set of repository paths (``deny(path)``) except on
``dockerhub``, where the upstream's token ACL decides, as Docker Hub's token service does.

The front duck-types :class:`~testkit.registry.RegistryServer` (``host``, ``client()``,
``admin_headers()``, ``mark()`` / ``access_log_since()``, credentials) so ``testkit.images``
pushes through it and ``testkit.peers`` reads back through it; its transcript holds every
request with the status the client saw and whether the front answered it itself.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from testkit.registry import RegistryServer

__all__ = ["PROFILES", "FrontRecord", "Profile", "ProfileFront"]

Profile = Literal[
    "dockerhub",
    "harbor",
    "ghcr",
    "ecr",
    "ecr-mounting",
    "gitlab",
    "quay",
    "zot",
    "zot-old",
    "artifactory",
    "artifactory-old",
]
PROFILES: tuple[Profile, ...] = (
    "dockerhub",
    "harbor",
    "ghcr",
    "ecr",
    "ecr-mounting",
    "gitlab",
    "quay",
    "zot",
    "zot-old",
    "artifactory",
    "artifactory-old",
)

#: How each profile's registry answers ``GET /v2/<name>/referrers/<digest>``: ``api`` (the
#: front serves it), a status, ``ghcr`` (a 303 to GHCR's rate-limited API) or ``upstream``
#: (distribution's own 404).
_REFERRERS: dict[str, str | int] = {
    "dockerhub": "upstream",
    "harbor": "api",
    "ghcr": "ghcr",
    "ecr": "api",
    "ecr-mounting": "api",
    "gitlab": "upstream",
    "quay": 400,
    "zot": "api",
    "zot-old": "api",
    "artifactory": "api",
    "artifactory-old": 406,
}

_INDEX = "application/vnd.oci.image.index.v1+json"
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    _INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
#: GHCR's rate-limited API, where the front's referrers endpoint redirects (same origin).
GHCR_API = "/_ghcr/api"
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
RATE_LIMIT = 100


@dataclass(frozen=True)
class FrontRecord:
    """One request as the client saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    #: The front answered (or rewrote the answer) instead of passing the registry's on.
    emulated: bool = False
    #: The request carried an ``Authorization`` header.
    authorized: bool = False

    def q(self, key: str) -> str | None:
        vals = self.query.get(key)
        return vals[0] if vals else None

    @property
    def is_mount(self) -> bool:
        return (
            self.method == "POST"
            and self.path.endswith("/blobs/uploads/")
            and ("mount" in self.query)
        )

    @property
    def is_blob_request(self) -> bool:
        return "/blobs/" in self.path

    def __str__(self) -> str:
        q = urlencode([(k, v) for k, vs in self.query.items() for v in vs])
        mark = " (front)" if self.emulated else ""
        return f"{self.method} {self.path}{'?' + q if q else ''} {self.status}{mark}"


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    emulated: bool = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def _repo_of(path: str) -> tuple[str, str, str] | None:
    """``/v2/<name>/<kind>/<rest>`` → (name, kind, rest)."""
    if not path.startswith("/v2/"):
        return None
    for kind in ("/blobs/", "/manifests/", "/tags/", "/referrers/"):
        at = path.find(kind, 4)
        if at > 4:
            return path[4:at], kind.strip("/"), path[at + len(kind) :]
    return None


def _error(status: int, code: str, message: str) -> _Answer:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return _Answer(status, [("Content-Type", "application/json")], body, emulated=True)


@dataclass
class ProfileFront:
    """A started front: ``ProfileFront("harbor", upstream).start()``; ``stop()`` when done."""

    profile: Profile
    upstream: RegistryServer
    denied: set[str] = field(default_factory=set)
    records: list[FrontRecord] = field(default_factory=list)
    rate_remaining: int = RATE_LIMIT
    #: Take blob bytes only in chunks: a monolithic ``PUT`` with a body is answered 416
    #: (as registries that require chunked uploads do), so clients fall back to ``PATCH``.
    chunked_only: bool = False
    #: GHCR: requests its rate-limited API answers before it answers 429.
    ghcr_api_budget: int = 1
    #: GHCR: the referrers endpoint redirects (303) to the rate-limited API; False: the
    #: endpoint itself is rate-limited.
    ghcr_redirect: bool = True
    #: The ``Retry-After`` (seconds) of GHCR's 429.
    ghcr_retry_after: int = 1
    #: Quay: seconds a mounted blob lives unless a manifest referencing it is pushed into
    #: the repository it was mounted into.
    quay_mount_ttl: float = 60.0
    #: Seconds the front holds every manifest PUT before handling it (a slow client).
    manifest_put_delay: float = 0.0
    #: GHCR: blob GETs are redirected to the front's CDN (another origin).
    ghcr_blob_cdn: bool = False
    #: (path, carried ``Authorization``) of every request the CDN answered.
    cdn_records: list[tuple[str, bool]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _cdn: ThreadingHTTPServer | None = None
    _ghcr_api_used: int = 0
    #: Quay: (repository, digest) → when it was mounted, until a manifest references it.
    _mounted: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: (repository, subject digest) → referrer descriptors, from manifests pushed through.
    _referrers: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: repository → digests of the manifests pushed into it through the front (by tag or
    #: digest: ECR counts an untagged manifest too).
    _pushed: dict[str, set[str]] = field(default_factory=dict)

    # -- the RegistryServer face -------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    tls = False
    ca_file = None
    pki = None
    impl = "front"

    @property
    def auth(self) -> str:
        return self.upstream.auth

    @property
    def username(self) -> str:
        return self.upstream.username

    @property
    def password(self) -> str:
        return self.upstream.password

    @property
    def token_issuer(self) -> Any:
        return self.upstream.token_issuer

    @property
    def verify(self) -> bool:
        return False

    def admin_headers(
        self, repo: str | Iterable[str], actions: Sequence[str] = ("pull", "push", "delete")
    ) -> dict[str, str]:
        return self.upstream.admin_headers(repo, actions)

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, **kwargs)

    def docker_config(self, path: str | Path, *, merge: bool = True) -> Path:
        written = self.upstream.docker_config(path, merge=merge)
        data = json.loads(written.read_text())
        data["auths"][self.host] = data["auths"].pop(self.upstream.host)
        written.write_text(json.dumps(data))
        return written

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    def mark(self) -> int:
        with self._lock:
            return len(self.records)

    def access_log_since(self, mark: int) -> list[FrontRecord]:
        with self._lock:
            return list(self.records[mark:])

    def deny(self, *paths: str) -> None:
        """The caller may not pull these repositories (mount ``from`` decisions only)."""
        self.denied.update(paths)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ProfileFront:
        front = self

        class Handler(_Handler):
            owner = front

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        if self.ghcr_blob_cdn:

            class Cdn(_CdnHandler):
                owner = front

            self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
            self._cdn.daemon_threads = True
            threading.Thread(target=self._cdn.serve_forever, daemon=True).start()
        return self

    @property
    def cdn_host(self) -> str:
        """The CDN's ``host:port`` (``ghcr_blob_cdn``): another origin than ``host``."""
        assert self._cdn is not None
        return f"127.0.0.1:{self._cdn.server_address[1]}"

    def stop(self) -> None:
        if self._cdn is not None:
            self._cdn.shutdown()
            self._cdn.server_close()
            self._cdn = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ProfileFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the registry ------------------------------------------------------------------------
    def forward(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> _Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=60)
        try:
            target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in _HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            return _Answer(resp.status, out, data)
        finally:
            conn.close()

    def _get_json(self, path: str, headers: list[tuple[str, str]]) -> Any:
        accept = [("Accept", ", ".join(_MANIFEST_TYPES))]
        auth = [(k, v) for k, v in headers if k.lower() in ("authorization", "host")]
        answer = self.forward("GET", path, {}, [*auth, *accept], b"")
        if answer.status != 200:
            return None
        return json.loads(answer.body)

    def _referenced(self, repo: str, digest: str, headers: list[tuple[str, str]]) -> bool:
        """Whether a manifest of ``repo`` (by tag, and the manifests its indexes list)
        references ``digest``: ECR's condition for a mount."""
        tags = self._get_json(f"/v2/{repo}/tags/list", headers) or {}
        with self._lock:
            pushed = sorted(self._pushed.get(repo, ()))
        pending = [*(tags.get("tags") or []), *pushed]
        seen: set[str] = set()
        while pending:
            ref = pending.pop()
            if ref in seen:
                continue
            seen.add(ref)
            m = self._get_json(f"/v2/{repo}/manifests/{ref}", headers)
            if not isinstance(m, dict):
                continue
            for d in [m.get("config") or {}, *(m.get("layers") or [])]:
                if d.get("digest") == digest:
                    return True
            pending += [c["digest"] for c in m.get("manifests") or [] if "digest" in c]
        return False

    def _holder(self, digest: str, headers: list[tuple[str, str]]) -> str | None:
        """A repository of the registry that holds ``digest`` (zot's discovery)."""
        catalog = self._get_json("/v2/_catalog?n=1000", headers) or {}
        auth = [(k, v) for k, v in headers if k.lower() in ("authorization", "host")]
        for name in catalog.get("repositories") or []:
            if self.forward("HEAD", f"/v2/{name}/blobs/{digest}", {}, auth, b"").status == 200:
                return str(name)
        return None

    def _project_exists(self, project: str, headers: list[tuple[str, str]]) -> bool:
        catalog = self._get_json("/v2/_catalog?n=1000", headers) or {}
        return any(
            str(name).split("/", 1)[0] == project for name in catalog.get("repositories") or []
        )

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> _Answer:
        p = self.profile
        if p == "ghcr" and path.startswith(GHCR_API + "/"):
            return self._ghcr_api()
        parts = _repo_of(path)
        if parts is not None and parts[1] == "manifests" and method == "PUT":
            if self.manifest_put_delay:
                time.sleep(self.manifest_put_delay)
            if p == "quay":
                refused = self._quay_forgotten_in(parts[0], body)
                if refused is not None:
                    return refused
        blob_read = parts is not None and parts[1] == "blobs" and method in ("GET", "HEAD")
        cdn = self._cdn is not None and blob_read and method == "GET"
        if p == "ghcr" and cdn and parts and parts[2].startswith("sha256:"):
            # The caller's own credentials decide (a HEAD upstream); the bytes come from the CDN.
            probe = self.forward("HEAD", path, {}, headers, b"")
            if probe.status != 200:
                return probe
            location = f"http://{self.cdn_host}{path}?token=signed"
            return _Answer(307, [("Location", location)], b"", emulated=True)
        if p == "quay" and blob_read and parts and self._quay_forgotten(parts[0], parts[2]):
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        mount = method == "POST" and path.endswith("/blobs/uploads/") and "mount" in query
        if mount and parts is not None:
            answer = self._mount(parts[0], path, query, headers, body)
            if answer is not None:
                return answer
        if parts is not None and parts[1] == "referrers" and method == "GET":
            how = _REFERRERS[p]
            if how == "ghcr":
                if self.ghcr_redirect:
                    q = f"?{urlencode(query, doseq=True)}" if query else ""
                    return _Answer(303, [("Location", f"{GHCR_API}{path}{q}")], b"", emulated=True)
                return self._ghcr_api()
            if isinstance(how, int):
                return _error(how, "UNSUPPORTED", "referrers API not available")
            if how == "api":
                return self._referrers_answer(parts[0], parts[2], query)
        if (
            self.chunked_only
            and method == "PUT"
            and "/blobs/uploads/" in path
            and "digest" in query
            and body
        ):
            return _error(416, "BLOB_UPLOAD_INVALID", "monolithic uploads are not accepted")
        if (
            p == "dockerhub"
            and method == "GET"
            and parts is not None
            and parts[1] == "manifests"
            and self.rate_remaining <= 0
        ):
            # The pull quota is spent: Docker Hub's 429 with its quota headers.
            answer = _error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.")
            answer.headers += [
                ("ratelimit-limit", f"{RATE_LIMIT};w=21600"),
                ("ratelimit-remaining", "0;w=21600"),
            ]
            return answer
        answer = self.forward(method, path, query, headers, body)
        if parts is None:
            return answer
        name, kind, _ = parts
        if mount and p == "quay" and answer.status == 201:
            with self._lock:
                self._mounted[(name, (query.get("mount") or [""])[0])] = time.monotonic()
        if kind == "manifests" and method == "PUT" and answer.status == 201:
            digest = answer.header("Docker-Content-Digest")
            if digest:
                with self._lock:
                    self._pushed.setdefault(name, set()).add(digest)
            if p == "quay":
                with self._lock:  # referenced now: kept for good
                    for d in _blob_digests(body):
                        self._mounted.pop((name, d), None)
            self._note_subject(name, body, headers, answer)
        if kind == "manifests" and p == "dockerhub" and method in ("GET", "HEAD"):
            with self._lock:
                if method == "GET" and answer.status == 200:
                    self.rate_remaining = max(0, self.rate_remaining - 1)
                left = self.rate_remaining
            answer.headers += [
                ("ratelimit-limit", f"{RATE_LIMIT};w=21600"),
                ("ratelimit-remaining", f"{left};w=21600"),
            ]
        if p.startswith("ecr") and kind == "blobs" and method == "PATCH" and answer.status == 202:
            answer.status, answer.emulated = 201, True
        return answer

    def _ghcr_api(self) -> _Answer:
        """GHCR's rate-limited API: no referrers there (404) until the budget is spent."""
        with self._lock:
            self._ghcr_api_used += 1
            spent = self._ghcr_api_used > self.ghcr_api_budget
        if not spent:
            return _error(404, "NOT_FOUND", "not found")
        answer = _error(429, "TOOMANYREQUESTS", "rate limit exceeded")
        answer.headers.append(("Retry-After", str(self.ghcr_retry_after)))
        return answer

    def _quay_forgotten(self, name: str, digest: str) -> bool:
        """Quay: ``digest`` was mounted into ``name`` longer than the TTL ago and no manifest
        pushed there references it (then it is forgotten for good)."""
        with self._lock:
            at = self._mounted.get((name, digest))
            return at is not None and time.monotonic() - at > self.quay_mount_ttl

    def _quay_forgotten_in(self, name: str, body: bytes) -> _Answer | None:
        """Quay's refusal of a manifest naming a forgotten blob, or None."""
        for digest in _blob_digests(body):
            if self._quay_forgotten(name, digest):
                return _error(400, "MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
        return None

    def _mount(
        self,
        name: str,
        path: str,
        query: dict[str, list[str]],
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> _Answer | None:
        """The profile's answer to a mount, or None to let the registry answer."""
        p = self.profile
        digest = (query.get("mount") or [""])[0]
        source = (query.get("from") or [""])[0]
        plain = {k: v for k, v in query.items() if k not in ("mount", "from")}

        def session() -> _Answer:
            # The registry opens an ordinary upload session instead of mounting.
            answer = self.forward("POST", path, plain, headers, body)
            answer.emulated = True
            return answer

        denied = source in self.denied
        if p == "harbor":
            project = source.split("/", 1)[0]
            if denied or not self._project_exists(project, headers):
                return _error(401, "UNAUTHORIZED", f"unauthorized to access repository: {source}")
            return None
        if p == "ghcr":
            return _error(403, "DENIED", "permission_denied: read_package") if denied else None
        if p == "ecr":
            return session()
        if p == "ecr-mounting":
            return None if self._referenced(source, digest, headers) else session()
        if p == "gitlab":
            outside = source.split("/", 1)[0] != name.split("/", 1)[0]
            return session() if denied or outside else None
        if p == "quay":
            return session() if denied or not source else None
        if p == "zot":
            holder = self._holder(digest, headers)
            if holder is None:
                return session()
            answer = self.forward(
                "POST", path, {**plain, "mount": [digest], "from": [holder]}, headers, body
            )
            answer.emulated = holder != source
            return answer
        if p == "zot-old":
            return _error(405, "UNSUPPORTED", "cross-repository mount not supported")
        return None

    def _note_subject(
        self, name: str, body: bytes, headers: list[tuple[str, str]], answer: _Answer
    ) -> None:
        """Index a manifest pushed with a ``subject``; send ``OCI-Subject`` where the
        profile's registry has the referrers API."""
        try:
            m = json.loads(body)
        except ValueError:
            return
        subject = m.get("subject") if isinstance(m, dict) else None
        if not isinstance(subject, dict) or "digest" not in subject:
            return
        digest = answer.header("Docker-Content-Digest")
        if digest is None:
            return
        media_type = m.get("mediaType") or next(
            (v for k, v in headers if k.lower() == "content-type"), ""
        )
        desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(body)}
        artifact_type = m.get("artifactType") or (m.get("config") or {}).get("mediaType")
        if artifact_type:
            desc["artifactType"] = artifact_type
        if m.get("annotations"):
            desc["annotations"] = m["annotations"]
        with self._lock:
            self._referrers.setdefault((name, subject["digest"]), {})[digest] = desc
        if _REFERRERS[self.profile] == "api":
            answer.headers.append(("OCI-Subject", subject["digest"]))
            answer.emulated = True

    def _referrers_answer(self, name: str, digest: str, query: dict[str, list[str]]) -> _Answer:
        with self._lock:
            found = list(self._referrers.get((name, digest), {}).values())
        headers = [("Content-Type", _INDEX)]
        wanted = (query.get("artifactType") or [None])[0]
        if wanted is not None:
            found = [d for d in found if d.get("artifactType") == wanted]
            headers.append(("OCI-Filters-Applied", "artifactType"))
        index = {"schemaVersion": 2, "mediaType": _INDEX, "manifests": found}
        return _Answer(200, headers, json.dumps(index).encode(), emulated=True)


def _blob_digests(body: bytes) -> list[str]:
    """The config and layer digests a manifest body names (none for an index)."""
    try:
        m = json.loads(body)
    except ValueError:
        return []
    if not isinstance(m, dict):
        return []
    descs = [m.get("config"), *(m.get("layers") or [])]
    return [d["digest"] for d in descs if isinstance(d, dict) and isinstance(d.get("digest"), str)]


class _CdnHandler(BaseHTTPRequestHandler):
    """GHCR's package CDN: serves a blob named by a signed URL, with no registry auth."""

    owner: ProfileFront
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        front = self.owner
        path = urlsplit(self.path).path
        with front._lock:
            front.cdn_records.append((path, "Authorization" in self.headers))
        parts = _repo_of(path)
        status, body = 404, b""
        if parts is not None and parts[1] == "blobs":
            admin = [("Host", front.upstream.host)]
            admin += front.upstream.admin_headers(parts[0], ("pull",)).items()
            answer = front.forward("GET", path, {}, admin, b"")
            status, body = answer.status, answer.body
        self.send_response_only(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Handler(BaseHTTPRequestHandler):
    owner: ProfileFront
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        body = self._body()
        headers = list(self.headers.items())
        front = self.owner
        try:
            answer = front.handle(self.command, split.path, query, headers, body)
        except Exception as exc:  # a bug in the front: say so, loudly, as a 500
            answer = _error(500, "FRONT_ERROR", f"{type(exc).__name__}: {exc}")
        with front._lock:
            front.records.append(
                FrontRecord(
                    self.command,
                    split.path,
                    query,
                    answer.status,
                    answer.emulated,
                    authorized="Authorization" in self.headers,
                )
            )
        self.send_response_only(answer.status)
        sent_length = False
        for k, v in answer.headers:
            if k.lower() == "content-length":
                if self.command == "HEAD":
                    self.send_header(k, v)
                    sent_length = True
                continue
            self.send_header(k, v)
        if not sent_length:
            self.send_header(
                "Content-Length", str(len(answer.body)) if self.command != "HEAD" else "0"
            )
        self.end_headers()
        if self.command != "HEAD" and answer.body:
            self.wfile.write(answer.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
