"""A hostile registry: a real HTTP server that speaks enough of the distribution API to drive a
copy, and misbehaves on purpose.

It emulates what a tenant's own registry may send to a shared operator (issue 10). It is an
in-memory registry — ``/v2/`` ping, manifests (HEAD/GET/PUT), blobs (HEAD/GET), upload
sessions (POST with ``mount``/``digest``, PATCH, PUT, DELETE), a referrers endpoint answering
404, and a token endpoint (GET and the OAuth2 POST) at ``/token`` — whose answers a small,
data-driven :class:`Behaviour` bends. In process::

    reg = HostileRegistry(BEHAVIOURS["huge-token"]).start()
    reg.ref(SOURCE_REPOSITORY, "1")          # "127.0.0.1:PORT/hostile/source:1"
    ... run a copy ...
    [r for r in reg.requests() if r.path == "/token"][0].bytes_sent   # stopped early?
    reg.stop()

As a process (e2e tests)::

    python -m testkit.hostile --port 0 --behaviour endless-index [--set index_depth=500] \\
        [--tls-dir DIR] [--requests requests.jsonl]

prints ``READY 127.0.0.1:PORT 127.0.0.2:PORT2`` once listening (the second address is the
"other host" listener, below), appends one JSON line per finished request to ``--requests``
and runs until SIGTERM/SIGINT. :class:`HostileProcess` starts and reads it from a test.

Content
-------
- ``hostile/source`` (:data:`SOURCE_REPOSITORY`) holds the behaviour's root manifest under
  *every* tag, plus everything that root names (a config and one small gzip'd tar layer).
- ``other/private`` (:data:`PRIVATE_REPOSITORY`) stands for another tenant's repository: a blob
  and a manifest no copy may ever request. Traversal digests aim at it.
- Every other repository starts empty and stores what is pushed to it (a destination).

Listeners
---------
The registry listens on ``127.0.0.1`` (HTTPS when started with a :class:`~testkit.tls.TestPKI`)
and on ``127.0.0.2`` (plain HTTP, always): the *other host*, a different origin that serves the
same content and ``/token`` without asking for auth — a CDN, a foreign token realm or a foreign
upload location. URL templates in a behaviour may use ``{self}`` (the registry's origin),
``{other}`` (``http://127.0.0.2:PORT2``), ``{port}``, ``{other_port}``, ``{name}`` (the
repository of the request), ``{path}`` (its path) and ``{id}`` (an upload session id).

Behaviour fields (:class:`Behaviour`; :data:`BEHAVIOURS` names presets of them)
------------------------------------------------------------------------------
- ``manifest`` — what the source's tags name:
  ``image`` (an ordinary image manifest);
  ``endless-index`` (an index whose one child is another index, ``index_depth`` levels deep —
  10,000 by default, computed bottom-up at start so every digest is valid; a digest-addressed
  chain cannot be truly infinite, but no bounded client reaches its end);
  ``wide-index`` (an index with ``index_children`` distinct image manifests, default 1,000);
  ``deep-json`` (a manifest whose ``x`` field nests ``json_depth`` arrays, default 100,000
  levels in 200 KB — well under the 4 MiB manifest limit);
  ``traversal-digest`` (an image manifest whose layer digest is
  ``sha256:<hex>/../../../../other/private/blobs/sha256:<hex>``: used unvalidated in a URL it
  reaches :data:`PRIVATE_REPOSITORY`; ``traversal_in="child"`` puts it in an index's child
  instead, aiming at a private manifest; ``traversal_digest`` overrides the text).
- ``auth`` — ``none``; ``basic`` (401 ``Basic`` without an ``Authorization: Basic`` header;
  any credentials pass); ``bearer`` (401 ``Bearer realm=…,service="hostile",scope=…`` without
  a Bearer token; any token passes). ``realm`` is the realm URL template (default
  ``{self}/token``; ``{other}/token`` is a plain-HTTP realm on another host).
- ``token_body`` — what ``/token`` answers: ``normal`` (a token, ``expires_in`` 300),
  ``huge`` (a ``{"token": "AAAA…"}`` body of ``huge_bytes``), ``deep`` (``token`` nests
  ``json_depth`` arrays), ``overflow`` (``"expires_in": 1e400``).
- ``error_status`` / ``error_method`` / ``error_path`` / ``error_body`` — requests on the main
  listener whose method (None: any) and path (a regex, ``re.search``) match get
  ``error_status`` with an OCI error body: ``normal``, ``huge`` (``huge_bytes`` of message) or
  ``deep`` (``errors`` nests ``json_depth`` arrays). Checked before auth. ``error_code`` is
  the code of the ``normal`` body (default ``MANIFEST_UNKNOWN``); ``error_headers`` are sent
  with the error (``dockerhub-rate-limited``: Docker Hub's ``ratelimit-*`` headers).
- ``huge_bytes`` (64 MiB) and ``huge_framing`` — ``chunked`` (no ``Content-Length``: the
  client learns the size only by reading) or ``length`` (announced up front).
- ``redirect_to`` / ``redirect_method`` / ``redirect_path`` — a 307 to this URL template for
  matching requests on the main listener (default: blob GETs); ``redirect_body`` ``huge``
  gives the 307 a ``huge_bytes`` body (``normal``: none). ``http://169.254.169.254/…``,
  ``http://[::ffff:169.254.169.254]/…`` and ``http://[64:ff9b::a9fe:a9fe]/…`` are the blocked
  targets; ``{other}{path}`` is a CDN that really serves the blob.
- ``upload_location`` — the ``Location`` of every upload session opened (POST, mount POSTs
  included, which then never mount), e.g. a blocked address, ``{other}/v2/{name}/blobs/uploads/{id}``
  (another host that completes the upload), or ``http://127.0.0.1:{port}/…`` on a TLS
  registry (the same host and port, plain HTTP).
- ``upload_status`` — every POST/PATCH/PUT under ``/blobs/uploads/`` answers this (e.g. 502).
- ``header_bytes`` — every answer carries an ``X-Hostile-Padding`` header this long.
- ``delay_ms`` — sleep this long before answering any ``/v2/`` request on the main listener, so
  concurrency is observable (:attr:`HostileRegistry.peak_in_flight`, and per kind of request —
  ``manifests``, ``blobs``, ``uploads``, ``referrers``, ``token``, ``other`` — in
  :attr:`HostileRegistry.peak_in_flight_by`).

Records
-------
Every request is recorded (:class:`RequestRecord`) as it starts and completed when its answer
ends: listener, method, raw path and query, headers with ``Authorization``,
``Proxy-Authorization`` and ``Cookie`` reduced to ``<scheme> <redacted sha256:…>`` (a
fingerprint: :func:`fingerprint` of a known credential compares equal, the secret itself is
never stored), request body bytes, status, response body bytes the kernel accepted
(``bytes_sent``) against the size the answer would have had (``body_size``), and whether the
client hung up before the end (``aborted``). The server stops writing a body when the client
goes away or after 30 s without progress, so ``bytes_sent`` of a huge body read by a bounded
client stays near the client's limit plus socket buffers.
``open_uploads`` counts upload sessions opened and neither completed nor cancelled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlsplit

from testkit.images import OCI_INDEX, OCI_MANIFEST, blob_digest, make_config, make_layer
from testkit.processes import new_group_dying_with_parent, stop_process_group
from testkit.tls import TestPKI, make_test_pki

__all__ = [
    "BEHAVIOURS",
    "BLOCKED_TARGETS",
    "PRIVATE_REPOSITORY",
    "SOURCE_REPOSITORY",
    "Behaviour",
    "HostileProcess",
    "HostileRegistry",
    "RequestRecord",
    "fingerprint",
    "main",
    "request_kind",
]

SOURCE_REPOSITORY = "hostile/source"
PRIVATE_REPOSITORY = "other/private"
OTHER_HOST = "127.0.0.2"
MIB = 1024 * 1024
CHUNK = 64 * 1024
#: Seconds a connection may make no progress (reading a request, accepting a write) before
#: the server gives up on it.
IO_TIMEOUT = 30.0

#: Metadata-service addresses in the forms a guard must normalise: literal IPv4, IPv4-mapped
#: IPv6 (dotted and hex), IPv4-compatible IPv6 and NAT64. Never connected to by the tests.
BLOCKED_TARGETS = (
    "http://169.254.169.254",
    "http://[::ffff:169.254.169.254]",
    "http://[::ffff:a9fe:a9fe]",
    "http://[::169.254.169.254]",
    "http://[64:ff9b::a9fe:a9fe]",
)

ManifestKind = Literal["image", "endless-index", "wide-index", "deep-json", "traversal-digest"]
BodyKind = Literal["normal", "huge", "deep", "overflow"]
_REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def request_kind(path: str) -> str:
    """What a request path is for: ``manifests``, ``uploads``, ``blobs``, ``referrers``,
    ``token`` or ``other`` (the keys of :attr:`HostileRegistry.peak_in_flight_by`)."""
    if path == "/token":
        return "token"
    for kind, pattern in (
        ("manifests", _MANIFEST),
        ("uploads", _UPLOAD),
        ("referrers", _REFERRERS),
        ("blobs", _BLOB),
    ):
        if pattern.match(path):
            return kind
    return "other"


def fingerprint(value: str) -> str:
    """What a record keeps of a credential header value: ``sha256:<first 16 hex>``."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def _redact(value: str) -> str:
    scheme = value.split(" ", 1)[0] if " " in value else "?"
    return f"{scheme} <redacted {fingerprint(value)}>"


@dataclass(frozen=True)
class Behaviour:
    """How the registry misbehaves. Fields: see the module docstring."""

    name: str = "custom"
    description: str = ""
    manifest: ManifestKind = "image"
    index_depth: int = 10_000
    index_children: int = 1_000
    json_depth: int = 100_000
    traversal_in: Literal["layer", "child"] = "layer"
    traversal_digest: str | None = None
    auth: Literal["none", "basic", "bearer"] = "none"
    realm: str = "{self}/token"
    token_body: BodyKind = "normal"
    error_status: int | None = None
    error_method: str | None = None
    error_path: str = r"/manifests/"
    error_body: BodyKind = "normal"
    error_code: str = "MANIFEST_UNKNOWN"
    error_headers: tuple[tuple[str, str], ...] = ()
    huge_bytes: int = 64 * MIB
    huge_framing: Literal["chunked", "length"] = "chunked"
    redirect_to: str | None = None
    redirect_method: str | None = "GET"
    redirect_path: str = r"/blobs/sha256:[0-9a-f]{64}$"
    redirect_body: BodyKind = "normal"
    upload_location: str | None = None
    upload_status: int | None = None
    header_bytes: int = 0
    delay_ms: int = 0

    def with_(self, **changes: Any) -> Behaviour:
        """A copy with fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, base: Behaviour, settings: Iterable[str]) -> Behaviour:
        """``base`` with ``field=value`` overrides (values parsed as JSON, else taken as text)."""
        names = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for item in settings:
            key, sep, raw = item.partition("=")
            if not sep or key not in names:
                raise ValueError(f"--set wants field=value with a Behaviour field, got {item!r}")
            try:
                changes[key] = json.loads(raw)
            except ValueError:
                changes[key] = raw
        return base.with_(**changes)


_BEARER = Behaviour(auth="bearer")

#: Named presets; ``python -m testkit.hostile --behaviour NAME``.
BEHAVIOURS: dict[str, Behaviour] = {
    b.name: b
    for b in (
        Behaviour("normal", "a well-behaved registry without auth"),
        _BEARER.with_(name="bearer", description="a well-behaved registry with Bearer auth"),
        Behaviour("basic", "a well-behaved registry with Basic auth", auth="basic"),
        _BEARER.with_(name="huge-token", description="/token answers 64 MiB", token_body="huge"),
        _BEARER.with_(name="deep-token", description="/token answers deep JSON", token_body="deep"),
        _BEARER.with_(
            name="overflow-token", description="expires_in is 1e400", token_body="overflow"
        ),
        _BEARER.with_(
            name="plain-realm-other-host",
            description="a plain-HTTP token realm on another host",
            realm="{other}/token",
        ),
        Behaviour(
            "huge-error",
            "manifest requests answer 404 with a 64 MiB error body",
            error_status=404,
            error_body="huge",
        ),
        Behaviour(
            "deep-error",
            "manifest requests answer 404 with a deeply nested error body",
            error_status=404,
            error_body="deep",
        ),
        Behaviour("endless-index", "an index of an index of an index …", manifest="endless-index"),
        Behaviour("wide-index", "an index with 1,000 image manifests", manifest="wide-index"),
        Behaviour("deep-manifest", "a manifest nested 100,000 levels", manifest="deep-json"),
        Behaviour(
            "traversal-digest",
            "a layer digest that walks into another repository",
            manifest="traversal-digest",
        ),
        Behaviour(
            "traversal-child",
            "an index child digest that walks into another repository",
            manifest="traversal-digest",
            traversal_in="child",
        ),
        Behaviour(
            "redirect-metadata",
            "blob GETs redirect to the metadata service",
            redirect_to="http://169.254.169.254/latest/meta-data/",
        ),
        Behaviour(
            "redirect-mapped",
            "blob GETs redirect to the metadata service as IPv4-mapped IPv6",
            redirect_to="http://[::ffff:169.254.169.254]/latest/meta-data/",
        ),
        Behaviour(
            "redirect-nat64",
            "blob GETs redirect to the metadata service through NAT64",
            redirect_to="http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        ),
        Behaviour(
            "redirect-cdn",
            "blob GETs redirect to another host that serves them",
            redirect_to="{other}{path}",
        ),
        Behaviour(
            "upload-location-metadata",
            "upload sessions live at the metadata service",
            upload_location="http://169.254.169.254/upload/{id}",
        ),
        Behaviour(
            "upload-location-mapped",
            "upload sessions live at the metadata service as IPv4-mapped IPv6",
            upload_location="http://[::ffff:169.254.169.254]/upload/{id}",
        ),
        _BEARER.with_(
            name="upload-location-other-host",
            description="upload sessions live on another host (which completes them)",
            upload_location="{other}/v2/{name}/blobs/uploads/{id}",
        ),
        Behaviour("upload-502", "every upload request answers 502", upload_status=502),
        Behaviour("huge-headers", "every answer has a 1 MiB header", header_bytes=MIB),
        Behaviour(
            "dockerhub-rate-limited",
            "manifest GETs answer 429 TOOMANYREQUESTS with Docker Hub's rate-limit headers",
            error_status=429,
            error_method="GET",
            error_code="TOOMANYREQUESTS",
            error_headers=(
                ("ratelimit-limit", "100;w=21600"),
                ("ratelimit-remaining", "0;w=21600"),
                ("docker-ratelimit-source", "192.0.2.7"),
            ),
        ),
        Behaviour(
            "huge-redirect",
            "blob requests redirect to another host that serves them, with a 64 MiB body",
            redirect_to="{other}{path}",
            redirect_method=None,
            redirect_body="huge",
        ),
    )
}


@dataclass
class RequestRecord:
    """One request the hostile registry saw (credentials reduced to fingerprints)."""

    n: int
    listener: Literal["main", "other"]
    method: str
    path: str
    query: str
    headers: dict[str, str]
    started: float
    request_bytes: int = 0
    status: int | None = None
    body_size: int | None = None
    bytes_sent: int = 0
    aborted: bool = False
    finished: bool = False
    duration: float = 0.0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def q(self, key: str) -> str | None:
        values = parse_qs(self.query, keep_blank_values=True).get(key)
        return values[0] if values else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        return cls(**dict(data))

    def __str__(self) -> str:
        uri = self.path + (f"?{self.query}" if self.query else "")
        return f"[{self.listener}] {self.method} {uri} {self.status} ({self.bytes_sent} B sent)"


# --------------------------------------------------------------------------- answers


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterator[bytes] = b""
    size: int = 0  # the body's full size
    chunked: bool = False


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _error_json(code: str, message: str) -> bytes:
    return _json_bytes({"errors": [{"code": code, "message": message}]})


def _filler(prefix: bytes, n: int, suffix: bytes) -> Iterator[bytes]:
    yield prefix
    block = b"A" * CHUNK
    while n > 0:
        piece = block if n >= CHUNK else block[:n]
        n -= len(piece)
        yield piece
    yield suffix


def _answer_json(status: int, data: bytes, *headers: tuple[str, str]) -> _Answer:
    return _Answer(status, [("Content-Type", "application/json"), *headers], data, len(data))


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class _Manifest:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return blob_digest(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


class _Store:
    """One repository: blobs, manifests by digest, tags."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, _Manifest] = {}
        self.tags: dict[str, str] = {}

    def put_manifest(self, manifest: _Manifest, tag: str | None = None) -> str:
        digest = manifest.digest
        self.manifests[digest] = manifest
        if tag is not None:
            self.tags[tag] = digest
        return digest


class _EndlessChain:
    """``depth`` index levels over one image, built bottom-up so every digest is right; only
    digests and sizes are kept, each level's bytes are rebuilt when asked for."""

    def __init__(self, depth: int, leaf: _Manifest) -> None:
        self.leaf = leaf
        self.levels: list[tuple[str, int]] = [(leaf.digest, len(leaf.data))]
        self.by_digest: dict[str, int] = {}
        child_type = leaf.media_type
        for level in range(depth):
            data = self._body(child_type, *self.levels[-1], level)
            digest = blob_digest(data)
            self.levels.append((digest, len(data)))
            self.by_digest[digest] = len(self.levels) - 1
            child_type = OCI_INDEX

    @staticmethod
    def _body(child_type: str, digest: str, size: int, level: int) -> bytes:
        return _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": child_type, "digest": digest, "size": size}],
                "annotations": {"hostile.level": str(level)},
            }
        )

    def get(self, digest: str) -> _Manifest | None:
        if digest == self.leaf.digest:
            return self.leaf
        i = self.by_digest.get(digest)
        if i is None:
            return None
        child_type = self.leaf.media_type if i == 1 else OCI_INDEX
        return _Manifest(OCI_INDEX, self._body(child_type, *self.levels[i - 1], i - 1))

    @property
    def root(self) -> _Manifest:
        top = self.get(self.levels[-1][0])
        assert top is not None
        return top


class _Content:
    """What the source and the private repository hold for one behaviour."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.layer = make_layer(1024, seed=1010)
        self.config = make_config([self.layer], label="hostile")
        assert self.layer.data is not None and self.config.data is not None
        self.image = self._image()
        self.private_blob = b"another tenant's secret layer " + os.urandom(8).hex().encode()
        self.private_blob_digest = blob_digest(self.private_blob)
        self.private_manifest = self._image(annotations={"hostile.private": "yes"})
        self.chain: _EndlessChain | None = None
        self.children: dict[str, _Manifest] = {}
        self._root: _Manifest | None = None
        kind = behaviour.manifest
        if kind == "endless-index":
            self.chain = _EndlessChain(behaviour.index_depth, self.image)
        elif kind == "wide-index":
            for i in range(behaviour.index_children):
                child = self._image(annotations={"hostile.n": str(i)})
                self.children[child.digest] = child

    def _image(self, **extra: Any) -> _Manifest:
        return _Manifest(
            OCI_MANIFEST,
            _json_bytes(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": self.config.descriptor(),
                    "layers": [self.layer.descriptor()],
                    **extra,
                }
            ),
        )

    def traversal(self, repository: str, target: str) -> str:
        """A digest that, pasted into ``/v2/<repository>/<blobs|manifests>/``, walks up to
        ``/v2/`` and down into :data:`PRIVATE_REPOSITORY`."""
        if self.behaviour.traversal_digest is not None:
            return self.behaviour.traversal_digest
        ups = "/.." * (repository.count("/") + 3)
        return f"{self.layer.digest}{ups}/{PRIVATE_REPOSITORY}/{target}"

    def root(self, repository: str) -> _Manifest:
        b = self.behaviour
        if b.manifest == "endless-index":
            assert self.chain is not None
            return self.chain.root
        if b.manifest == "wide-index":
            entries = [
                c.descriptor(platform={"os": "linux", "architecture": "amd64"})
                for c in self.children.values()
            ]
            return _Manifest(
                OCI_INDEX,
                _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
            )
        if b.manifest == "deep-json":
            head = _json_bytes(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": self.config.descriptor(),
                    "layers": [self.layer.descriptor()],
                }
            )
            return _Manifest(OCI_MANIFEST, head[:-1] + b',"x":' + _nested(b.json_depth) + b"}")
        if b.manifest == "traversal-digest":
            if b.traversal_in == "child":
                target = f"manifests/{self.private_manifest.digest}"
                child = {
                    "mediaType": OCI_MANIFEST,
                    "digest": self.traversal(repository, target),
                    "size": len(self.private_manifest.data),
                }
                body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}
                return _Manifest(OCI_INDEX, _json_bytes(body))
            layer = {
                **self.layer.descriptor(),
                "digest": self.traversal(repository, f"blobs/{self.private_blob_digest}"),
            }
            body = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": self.config.descriptor(),
                "layers": [layer],
            }
            return _Manifest(OCI_MANIFEST, _json_bytes(body))
        return self.image

    def source_manifest(self, repository: str, ref: str) -> _Manifest | None:
        if self._root is None:
            self._root = self.root(repository)
        root = self._root
        if not ref.startswith("sha256:") or ref == root.digest:
            return root
        for candidate in (self.image, self.children.get(ref)):
            if candidate is not None and candidate.digest == ref:
                return candidate
        return self.chain.get(ref) if self.chain is not None else None

    def source_blob(self, digest: str) -> bytes | None:
        for blob in (self.layer, self.config):
            if blob.digest == digest:
                return blob.data
        return None


# --------------------------------------------------------------------------- the server


_MANIFEST = re.compile(r"^/v2/(?P<name>.+?)/manifests/(?P<ref>[^/]+)$")
_UPLOAD = re.compile(r"^/v2/(?P<name>.+?)/blobs/uploads/(?P<id>[^/]*)$")
_BLOB = re.compile(r"^/v2/(?P<name>.+?)/blobs/(?P<digest>.+)$")
_REFERRERS = re.compile(r"^/v2/(?P<name>.+?)/referrers/(?P<digest>[^/]+)$")
_TAGS = re.compile(r"^/v2/(?P<name>.+?)/tags/list$")


class _Upload:
    def __init__(self, name: str) -> None:
        self.name = name
        self.data = bytearray()


class HostileRegistry:
    """The hostile registry in this process (threads). ``start()``, use, ``stop()``."""

    def __init__(self, behaviour: Behaviour | str = "normal", *, pki: TestPKI | None = None):
        self.behaviour = BEHAVIOURS[behaviour] if isinstance(behaviour, str) else behaviour
        self.pki = pki
        self.content = _Content(self.behaviour)
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._listeners: list[_Listener] = []
        self._stores: dict[str, _Store] = {}
        self._uploads: dict[str, _Upload] = {}
        self._in_flight = 0
        self._in_flight_by: dict[str, int] = {}
        self._tokens = 0
        self.peak_in_flight = 0
        #: The peak of requests in flight at once, by kind (:func:`request_kind`).
        self.peak_in_flight_by: dict[str, int] = {}
        self.on_record: Callable[[RequestRecord], None] | None = None
        private = self._store(PRIVATE_REPOSITORY)
        private.blobs[self.content.private_blob_digest] = self.content.private_blob
        private.put_manifest(self.content.private_manifest, "secret")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, port: int = 0, other_port: int = 0) -> HostileRegistry:
        if self._listeners:
            return self
        context = None
        if self.pki is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.pki.server_chain), str(self.pki.server_key))
        self._listeners = [
            _Listener(self, "main", "127.0.0.1", port, context),
            _Listener(self, "other", OTHER_HOST, other_port, None),
        ]
        return self

    def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._listeners[0].port

    @property
    def other_port(self) -> int:
        return self._listeners[1].port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def other_host(self) -> str:
        return f"{OTHER_HOST}:{self.other_port}"

    @property
    def scheme(self) -> str:
        return "https" if self.pki is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def other_url(self) -> str:
        return f"http://{self.other_host}"

    def ref(self, repository: str = SOURCE_REPOSITORY, tag_or_digest: str = "latest") -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repository}{sep}{tag_or_digest}"

    def expand(self, template: str, **values: str) -> str:
        """A URL template with ``{self}``, ``{other}``, ``{port}``, ``{other_port}``, …"""
        return template.format_map(
            {
                "self": self.url,
                "other": self.other_url,
                "port": str(self.port),
                "other_port": str(self.other_port),
                "name": "",
                "path": "",
                "id": "",
                **values,
            }
        )

    # -- records -----------------------------------------------------------------------------
    def requests(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        listener: str | None = None,
    ) -> list[RequestRecord]:
        """Records (copies) matching an exact ``method``/``listener`` and a ``path`` regex."""
        with self._lock:
            records = [dataclasses.replace(r, headers=dict(r.headers)) for r in self._records]
        return [
            r
            for r in records
            if (method is None or r.method == method)
            and (listener is None or r.listener == listener)
            and (path is None or re.search(path, r.path))
        ]

    def wait_for(
        self, predicate: Callable[[list[RequestRecord]], bool], timeout: float = 30.0
    ) -> list[RequestRecord]:
        """Poll the records until ``predicate(records)`` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.requests()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(
                    "hostile registry: condition not met; requests:\n"
                    + "\n".join(map(str, records[-30:]))
                )
            time.sleep(0.05)

    def wait_finished(self, timeout: float = 40.0) -> list[RequestRecord]:
        """Wait until every request seen so far has ended (bodies written or abandoned)."""
        return self.wait_for(lambda rs: all(r.finished for r in rs), timeout)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self.peak_in_flight = self._in_flight
            self.peak_in_flight_by = dict(self._in_flight_by)

    @property
    def open_uploads(self) -> int:
        with self._lock:
            return len(self._uploads)

    def stored_manifests(self, repository: str) -> dict[str, str]:
        """Tags → digests pushed to ``repository``."""
        with self._lock:
            return dict(self._store(repository).tags)

    # -- handling ----------------------------------------------------------------------------
    def _store(self, name: str) -> _Store:
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = _Store()
        return store

    def _begin(self, h: _Handler) -> RequestRecord:
        split = urlsplit(h.path)
        headers = {
            k.lower(): (_redact(v) if k.lower() in _REDACTED_HEADERS else v)
            for k, v in h.headers.items()
        }
        with self._lock:
            record = RequestRecord(
                n=len(self._records),
                listener=h.listener,
                method=h.command,
                path=split.path,
                query=split.query,
                headers=headers,
                started=time.time(),
            )
            self._records.append(record)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            kind = request_kind(record.path)
            now = self._in_flight_by[kind] = self._in_flight_by.get(kind, 0) + 1
            self.peak_in_flight_by[kind] = max(self.peak_in_flight_by.get(kind, 0), now)
        return record

    def _end(self, record: RequestRecord) -> None:
        with self._lock:
            self._in_flight -= 1
            self._in_flight_by[request_kind(record.path)] -= 1
            record.finished = True
            record.duration = time.time() - record.started
        if self.on_record is not None:
            self.on_record(record)

    def handle(self, h: _Handler) -> None:
        record = self._begin(h)
        try:
            body = h.read_body()
            record.request_bytes = len(body)
            answer = self._answer(h, record, body)
            record.status = answer.status
            record.body_size = answer.size if h.command != "HEAD" else 0
            h.write_answer(answer, record, self.behaviour.header_bytes)
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            record.aborted = True
            h.close_connection = True
        finally:
            self._end(record)

    def _answer(self, h: _Handler, record: RequestRecord, body: bytes) -> _Answer:
        b = self.behaviour
        path, method, main = record.path, record.method, record.listener == "main"
        if path == "/token":
            return self._token()
        if not path.startswith("/v2"):
            return _answer_json(404, _error_json("NOT_FOUND", "no such endpoint"))
        if main and b.delay_ms:
            time.sleep(b.delay_ms / 1000)
        if (
            main
            and b.error_status is not None
            and (b.error_method is None or b.error_method == method)
            and re.search(b.error_path, path)
        ):
            return self._error(b.error_status)
        if main and b.auth != "none":
            challenge = self._challenge(h, path, method)
            if challenge is not None:
                return challenge
        if (
            main
            and b.redirect_to is not None
            and (b.redirect_method is None or b.redirect_method == method)
            and re.search(b.redirect_path, path)
        ):
            location = self.expand(b.redirect_to, path=path)
            if b.redirect_body == "huge":
                answer = self._huge(307, b"<html>", b"</html>")
                answer.headers.append(("Location", location))
                return answer
            return _Answer(307, [("Location", location), ("Content-Length", "0")])
        if path in ("/v2", "/v2/"):
            return _answer_json(200, b"{}", ("Docker-Distribution-API-Version", "registry/2.0"))
        if (m := _UPLOAD.match(path)) is not None:
            if b.upload_status is not None and method in ("POST", "PATCH", "PUT"):
                return _answer_json(b.upload_status, _error_json("UNAVAILABLE", "upload refused"))
            return self._upload(m["name"], m["id"], method, record, body)
        if (m := _MANIFEST.match(path)) is not None:
            return self._manifest(m["name"], m["ref"], method, body, h)
        if (m := _REFERRERS.match(path)) is not None:
            return _answer_json(404, _error_json("NOT_FOUND", "no referrers API"))
        if (m := _TAGS.match(path)) is not None:
            with self._lock:
                tags = sorted(self._store(m["name"]).tags)
            return _answer_json(200, _json_bytes({"name": m["name"], "tags": tags}))
        if (m := _BLOB.match(path)) is not None:
            return self._blob(m["name"], m["digest"], method)
        return _answer_json(404, _error_json("NAME_UNKNOWN", "no such endpoint"))

    def _challenge(self, h: _Handler, path: str, method: str) -> _Answer | None:
        b = self.behaviour
        sent = h.headers.get("Authorization", "")
        if b.auth == "basic":
            if sent.lower().startswith("basic "):
                return None
            header = 'Basic realm="hostile"'
        else:
            if sent.lower().startswith("bearer "):
                return None
            header = f'Bearer realm="{self.expand(b.realm)}",service="hostile"'
            m = re.match(r"^/v2/(.+?)/(manifests|blobs|referrers|tags)/", path)
            if m:
                actions = "pull" if method in ("GET", "HEAD") else "pull,push"
                header += f',scope="repository:{m[1]}:{actions}"'
        data = _error_json("UNAUTHORIZED", "authentication required")
        return _answer_json(401, data, ("WWW-Authenticate", header))

    def _huge(self, status: int, prefix: bytes, suffix: bytes) -> _Answer:
        b = self.behaviour
        size = len(prefix) + b.huge_bytes + len(suffix)
        chunked = b.huge_framing == "chunked"
        headers = [("Content-Type", "application/json")]
        if not chunked:
            headers.append(("Content-Length", str(size)))
        return _Answer(status, headers, _filler(prefix, b.huge_bytes, suffix), size, chunked)

    def _token(self) -> _Answer:
        b = self.behaviour
        if b.token_body == "huge":
            return self._huge(200, b'{"token":"', b'"}')
        if b.token_body == "deep":
            return _answer_json(200, b'{"token":' + _nested(b.json_depth) + b"}")
        with self._lock:
            self._tokens += 1
            token = f"hostile-token-{self._tokens}"
        if b.token_body == "overflow":
            data = b'{"token":"%s","expires_in":1e400}' % token.encode()
        else:
            data = _json_bytes({"token": token, "access_token": token, "expires_in": 300})
        return _answer_json(200, data)

    def _error(self, status: int) -> _Answer:
        b = self.behaviour
        if b.error_body == "huge":
            return self._huge(status, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"', b'"}]}')
        if b.error_body == "deep":
            return _answer_json(status, b'{"errors":' + _nested(b.json_depth) + b"}")
        answer = _answer_json(status, _error_json(b.error_code, "hostile error"))
        answer.headers.extend(b.error_headers)
        return answer

    def _manifest(self, name: str, ref: str, method: str, body: bytes, h: _Handler) -> _Answer:
        if method == "PUT":
            media_type = h.headers.get("Content-Type", OCI_MANIFEST)
            manifest = _Manifest(media_type, body)
            with self._lock:
                digest = self._store(name).put_manifest(
                    manifest, None if ref.startswith("sha256:") else ref
                )
            return _Answer(
                201,
                [
                    ("Location", f"/v2/{name}/manifests/{digest}"),
                    ("Docker-Content-Digest", digest),
                    ("Content-Length", "0"),
                ],
            )
        if method == "DELETE":
            return _answer_json(405, _error_json("UNSUPPORTED", "no deletes here"))
        found: _Manifest | None
        if name == SOURCE_REPOSITORY:
            found = self.content.source_manifest(name, ref)
        else:
            with self._lock:
                store = self._store(name)
                found = store.manifests.get(store.tags.get(ref, ref))
        if found is None:
            return _answer_json(404, _error_json("MANIFEST_UNKNOWN", "manifest unknown"))
        return _Answer(
            200,
            [("Content-Type", found.media_type), ("Docker-Content-Digest", found.digest)],
            found.data,
            len(found.data),
        )

    def _blob(self, name: str, digest: str, method: str) -> _Answer:
        if method not in ("GET", "HEAD"):
            return _answer_json(405, _error_json("UNSUPPORTED", "method not allowed"))
        data: bytes | None
        if name == SOURCE_REPOSITORY:
            data = self.content.source_blob(digest)
        else:
            with self._lock:
                data = self._store(name).blobs.get(digest)
        if data is None:
            return _answer_json(404, _error_json("BLOB_UNKNOWN", "blob unknown"))
        headers = [("Content-Type", "application/octet-stream"), ("Docker-Content-Digest", digest)]
        return _Answer(200, headers, data, len(data))

    def _session(self, name: str, upload_id: str) -> _Answer:
        b = self.behaviour
        location = (
            self.expand(b.upload_location, name=name, id=upload_id)
            if b.upload_location is not None
            else f"/v2/{name}/blobs/uploads/{upload_id}"
        )
        with self._lock:
            size = len(self._uploads[upload_id].data)
        return _Answer(
            202,
            [
                ("Location", location),
                ("Docker-Upload-UUID", upload_id),
                ("Range", f"0-{max(size - 1, 0)}"),
                ("Content-Length", "0"),
            ],
        )

    def _stored(self, name: str, digest: str, data: bytes) -> _Answer:
        if blob_digest(data) != digest:
            return _answer_json(400, _error_json("DIGEST_INVALID", "digest did not match"))
        with self._lock:
            self._store(name).blobs[digest] = data
        return _Answer(
            201,
            [
                ("Location", f"/v2/{name}/blobs/{digest}"),
                ("Docker-Content-Digest", digest),
                ("Content-Length", "0"),
            ],
        )

    def _upload(
        self, name: str, upload_id: str, method: str, record: RequestRecord, body: bytes
    ) -> _Answer:
        query = parse_qs(record.query)
        if method == "POST" and not upload_id:
            mount, source = query.get("mount", [""])[0], query.get("from", [""])[0]
            if mount and self.behaviour.upload_location is None:
                with self._lock:
                    data = self._store(source).blobs.get(mount)
                if data is not None:
                    return self._stored(name, mount, data)
            digest = query.get("digest", [""])[0]
            if digest and not mount:
                return self._stored(name, digest, body)
            upload_id = uuid.uuid4().hex
            with self._lock:
                self._uploads[upload_id] = _Upload(name)
            return self._session(name, upload_id)
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            return _answer_json(404, _error_json("BLOB_UPLOAD_UNKNOWN", "upload unknown"))
        if method == "DELETE":
            with self._lock:
                self._uploads.pop(upload_id, None)
            return _Answer(204)
        if method == "PATCH":
            upload.data.extend(body)
            return self._session(name, upload_id)
        if method == "PUT":
            upload.data.extend(body)
            with self._lock:
                self._uploads.pop(upload_id, None)
            return self._stored(upload.name, query.get("digest", [""])[0], bytes(upload.data))
        if method == "GET":
            return self._session(name, upload_id)
        return _answer_json(405, _error_json("UNSUPPORTED", "method not allowed"))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hostile-registry"
    sys_version = ""
    timeout = IO_TIMEOUT
    owner: HostileRegistry
    listener: Literal["main", "other"]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the records are the log

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out.extend(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def write_answer(self, answer: _Answer, record: RequestRecord, padding: int) -> None:
        self.send_response(answer.status)
        names = {k.lower() for k, _ in answer.headers}
        for key, value in answer.headers:
            self.send_header(key, value)
        if padding:
            self.send_header("X-Hostile-Padding", "p" * padding)
        if answer.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in names:
            self.send_header("Content-Length", str(answer.size))
        self.end_headers()
        if self.command == "HEAD":
            return
        pieces = [answer.body] if isinstance(answer.body, bytes) else answer.body
        for piece in pieces:
            if not piece:
                continue
            if answer.chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            record.bytes_sent += len(piece)
        if answer.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _dispatch(self) -> None:
        self.owner.handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 would make a client's parallel connections wait
    # for SYN retries, hiding the concurrency a test means to observe.
    request_queue_size = 128


class _Listener:
    def __init__(
        self,
        owner: HostileRegistry,
        name: Literal["main", "other"],
        address: str,
        port: int,
        context: ssl.SSLContext | None,
    ) -> None:
        handler = type("Handler", (_Handler,), {"owner": owner, "listener": name})
        self.server = _Server((address, port), handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns at once
            name=f"hostile-{name}",
            daemon=True,
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- as a process


class HostileProcess:
    """``python -m testkit.hostile`` as a child process, for e2e tests.

    ``start()`` waits for ``READY``; :meth:`requests` reads the finished requests it logged.
    """

    def __init__(
        self,
        behaviour: str = "normal",
        *,
        settings: Mapping[str, Any] | None = None,
        tls_dir: Path | None = None,
        workdir: Path | None = None,
    ) -> None:
        import tempfile

        self.behaviour = behaviour
        self.settings = dict(settings or {})
        self.tls_dir = tls_dir
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="imagecopy-hostile-"))
        self.requests_path = self.workdir / "requests.jsonl"
        self.host = ""
        self.other_host = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def start(self, timeout: float = 30.0) -> HostileProcess:
        from testkit.tools import REPO_ROOT

        argv = [
            sys.executable,
            "-m",
            "testkit.hostile",
            "--port",
            "0",
            "--behaviour",
            self.behaviour,
            "--requests",
            str(self.requests_path),
        ]
        for key, value in self.settings.items():
            argv += ["--set", f"{key}={json.dumps(value)}"]
        if self.tls_dir is not None:
            argv += ["--tls-dir", str(self.tls_dir)]
        self._stderr = open(self.workdir / "stderr.log", "w")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=new_group_dying_with_parent,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if line.startswith("READY "):
                self.host, self.other_host = line.split()[1:3]
                return self
            if not line and self._proc.poll() is not None:
                break
        self.stop()
        log = (self.workdir / "stderr.log").read_text(errors="replace")
        raise RuntimeError(f"the hostile registry did not start:\n{log}")

    def ref(self, repository: str = SOURCE_REPOSITORY, tag_or_digest: str = "latest") -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repository}{sep}{tag_or_digest}"

    def requests(self) -> list[RequestRecord]:
        if not self.requests_path.exists():
            return []
        lines = self.requests_path.read_text().splitlines()
        return [RequestRecord.from_json(json.loads(line)) for line in lines if line.strip()]

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, timeout=5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> HostileProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.hostile", description="a registry that misbehaves on purpose"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--other-port", type=int, default=0)
    parser.add_argument("--behaviour", default="normal", choices=sorted(BEHAVIOURS))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--tls-dir", type=Path, help="serve HTTPS with a test CA written here")
    parser.add_argument("--requests", type=Path, help="append one JSON line per request here")
    args = parser.parse_args(argv)
    behaviour = Behaviour.from_settings(BEHAVIOURS[args.behaviour], args.set)
    pki = make_test_pki(args.tls_dir) if args.tls_dir is not None else None
    registry = HostileRegistry(behaviour, pki=pki)
    lock = threading.Lock()
    if args.requests is not None:
        out = open(args.requests, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

        def log(record: RequestRecord) -> None:
            with lock:
                out.write(json.dumps(record.to_json()) + "\n")

        registry.on_record = log
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    registry.start(args.port, args.other_port)
    print(f"READY {registry.host} {registry.other_host}", flush=True)
    stop.wait()
    with contextlib.suppress(Exception):
        registry.stop()


if __name__ == "__main__":
    main()
