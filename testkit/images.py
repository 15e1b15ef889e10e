"""Build and push test content with plain httpx, independent of the product's own client.

Everything here talks to a :class:`~testkit.registry.RegistryServer` directly (using its
``admin_headers`` so it works in every auth mode) and returns what it pushed, so tests can
compare a copy's destination against known digests and sizes.

Builders (all return :class:`PushedImage`):

- :func:`push_image` — single-platform OCI image (or Docker schema2 with ``docker=True``),
  N gzip'd tar layers of random, incompressible content, a real config with ``diff_ids``.
- :func:`push_index` — multi-platform OCI index / Docker manifest list; a base layer shared by
  all platforms, optionally a layer duplicated inside one manifest, optionally buildkit-style
  attestation manifests (``unknown/unknown`` + ``vnd.docker.reference.*`` annotations).
- :func:`push_nested_index` — an index whose child is another index.
- :func:`push_artifact` — an artifact manifest with the empty config, ``artifactType`` and a
  ``subject``; with ``referrers_tag=True`` (default) the referrers tag-schema fallback index
  (tag ``sha256-<hex>``) is updated too. Neither 2.8.2 nor v3.1.1 serves
  ``GET /v2/<repo>/referrers/<digest>`` (404, see test_support_images.py), so the fallback
  tag is what copies of referrers will find.
- :func:`push_big_blob` / :func:`push_big_image` — a 512 MiB (default) uncompressed-tar layer
  streamed as one chunked PATCH; never held in memory (RSS stays flat).

Layers are KiB-sized by default so tests stay fast. ``seed`` makes content deterministic
(the same seed yields the same digest in any repository, which is how shared layers are made);
the default ``seed=None`` gives fresh random content.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from testkit.registry import RegistryServer

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "EMPTY_CONFIG",
    "EMPTY_JSON",
    "EMPTY_JSON_DIGEST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_TAR",
    "OCI_MANIFEST",
    "Blob",
    "PushedImage",
    "append_query",
    "blob_digest",
    "make_config",
    "make_layer",
    "push_artifact",
    "push_big_blob",
    "push_big_image",
    "push_blob",
    "push_image",
    "push_index",
    "push_manifest",
    "push_nested_index",
    "referrers_tag",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
IN_TOTO = "application/vnd.in-toto+json"

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


def blob_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def append_query(url: str, **params: str) -> str:
    """Add query parameters to ``url`` keeping the ones it has (upload ``Location`` URLs carry
    ``_state``). Note: ``httpx`` *replaces* a URL's query when given ``params=``."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Blob:
    """A blob's bytes (None for streamed big blobs) and descriptor fields."""

    digest: str
    size: int
    media_type: str
    data: bytes | None = None
    diff_id: str | None = None  # layers: digest of the uncompressed tar
    annotations: dict[str, str] | None = None

    def descriptor(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass
class PushedImage:
    """What a builder pushed. ``blobs`` lists every blob descriptor the manifest tree names
    (configs and layers, duplicates kept in order of appearance); ``unique_blobs`` dedups."""

    registry: str  # host:port
    repo: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes
    blobs: list[dict[str, Any]] = field(default_factory=list)
    children: list[PushedImage] = field(default_factory=list)
    artifact_type: str | None = None
    subject: str | None = None

    @property
    def ref(self) -> str:
        """``host/repo:tag`` (or ``host/repo@digest`` when untagged)."""
        if self.tag:
            return f"{self.registry}/{self.repo}:{self.tag}"
        return self.digest_ref

    @property
    def digest_ref(self) -> str:
        return f"{self.registry}/{self.repo}@{self.digest}"

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def unique_blobs(self) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for b in self.blobs:
            if b["digest"] not in seen:
                seen.add(b["digest"])
                out.append(b)
        return out

    @property
    def total_blob_bytes(self) -> int:
        """Sum of sizes of the distinct blobs (what a full copy must account for)."""
        return sum(int(b["size"]) for b in self.unique_blobs)

    @property
    def manifests(self) -> list[PushedImage]:
        """This manifest and every descendant, children first."""
        out: list[PushedImage] = []
        for c in self.children:
            out.extend(c.manifests)
        out.append(self)
        return out

    @property
    def manifest_json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.manifest)
        return parsed

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        d.update(extra)
        return d


# --- content --------------------------------------------------------------------------------


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))


def make_layer(
    size: int = 2048,
    seed: int | None = None,
    *,
    media_type: str = OCI_LAYER,
    name: str | None = None,
) -> Blob:
    """A real gzip'd tar holding one file of ``size`` random (incompressible) bytes.

    Deterministic for a given ``seed`` (tar and gzip timestamps are fixed). The blob's size is
    a little over ``size`` (tar headers + gzip framing)."""
    rng = _rng(seed)
    content = rng.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name or f"layer-{rng.getrandbits(32):08x}.bin")
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    if media_type in (OCI_LAYER_TAR,):
        data = tar_bytes
    else:
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=1) as gz:
            gz.write(tar_bytes)
        data = out.getvalue()
    return Blob(
        digest=blob_digest(data),
        size=len(data),
        media_type=media_type,
        data=data,
        diff_id=blob_digest(tar_bytes),
    )


def make_config(
    layers: Sequence[Blob],
    *,
    os_name: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    docker: bool = False,
    label: str | None = None,
) -> Blob:
    cfg: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"imagecopy.test": label or ""}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"imagecopy test layer {i}"} for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    data = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    return Blob(blob_digest(data), len(data), DOCKER_CONFIG if docker else OCI_CONFIG, data)


# --- HTTP -----------------------------------------------------------------------------------


def _client(reg: RegistryServer, repo: str | Sequence[str]) -> httpx.Client:
    return reg.client(headers=reg.admin_headers(repo))


def _check(resp: httpx.Response, *ok: int) -> httpx.Response:
    if resp.status_code not in ok:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}"
        )
    return resp


def blob_exists(reg: RegistryServer, repo: str, digest: str) -> bool:
    with _client(reg, repo) as c:
        return c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200


def push_blob(
    reg: RegistryServer, repo: str, data: bytes | Blob, *, client: httpx.Client | None = None
) -> str:
    """Monolithic upload (``POST`` then ``PUT ?digest=``). Returns the digest."""
    raw = data.data if isinstance(data, Blob) else data
    assert raw is not None
    digest = blob_digest(raw)
    c = client or _client(reg, repo)
    try:
        r = _check(c.post(f"/v2/{repo}/blobs/uploads/"), 202)
        loc = r.headers["Location"]
        _check(
            c.put(
                append_query(loc, digest=digest),
                content=raw,
                headers={"Content-Type": "application/octet-stream"},
            ),
            201,
        )
    finally:
        if client is None:
            c.close()
    return digest


def push_manifest(
    reg: RegistryServer,
    repo: str,
    ref: str,
    body: bytes,
    media_type: str,
    *,
    client: httpx.Client | None = None,
) -> str:
    """``PUT /v2/<repo>/manifests/<ref>``; returns the digest of ``body``."""
    c = client or _client(reg, repo)
    try:
        r = _check(
            c.put(
                f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type}
            ),
            201,
        )
    finally:
        if client is None:
            c.close()
    digest = blob_digest(body)
    got = r.headers.get("Docker-Content-Digest")
    if got and got != digest:
        raise RuntimeError(f"registry computed {got}, expected {digest}")
    return digest


def get_manifest(reg: RegistryServer, repo: str, ref: str) -> httpx.Response:
    with _client(reg, repo) as c:
        return c.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _push_manifest_image(
    reg: RegistryServer,
    repo: str,
    tag: str | None,
    config: Blob,
    layers: Sequence[Blob],
    *,
    docker: bool,
    annotations: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> PushedImage:
    c = client or _client(reg, repo)
    try:
        pushed: set[str] = set()
        for b in [config, *layers]:
            if b.digest not in pushed:
                assert b.data is not None
                push_blob(reg, repo, b.data, client=c)
                pushed.add(b.digest)
        mt = DOCKER_MANIFEST if docker else OCI_MANIFEST
        m: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
        if annotations and not docker:
            m["annotations"] = annotations
        body = _dump(m)
        digest = push_manifest(reg, repo, tag or blob_digest(body), body, mt, client=c)
    finally:
        if client is None:
            c.close()
    return PushedImage(
        registry=reg.host,
        repo=repo,
        tag=tag,
        digest=digest,
        media_type=mt,
        manifest=body,
        blobs=[config.descriptor()] + [layer.descriptor() for layer in layers],
    )


def push_image(
    reg: RegistryServer,
    repo: str,
    tag: str | None = "latest",
    *,
    layers: int = 2,
    layer_size: int = 2048,
    seed: int | None = None,
    docker: bool = False,
    platform: str = "linux/amd64",
    extra_layers: Sequence[Blob] = (),
    base_layers: Sequence[Blob] = (),
) -> PushedImage:
    """A single-platform image: ``base_layers`` + ``layers`` fresh layers + ``extra_layers``.

    ``tag=None`` pushes by digest only."""
    rng = _rng(seed)
    lmt = DOCKER_LAYER if docker else OCI_LAYER
    fresh = [make_layer(layer_size + i, rng.getrandbits(63), media_type=lmt) for i in range(layers)]
    all_layers = [*base_layers, *fresh, *extra_layers]
    os_name, arch, variant = _split_platform(platform)
    config = make_config(
        all_layers,
        os_name=os_name,
        arch=arch,
        variant=variant,
        docker=docker,
        label=f"{rng.getrandbits(32):08x}",
    )
    return _push_manifest_image(reg, repo, tag, config, all_layers, docker=docker)


def _split_platform(p: str) -> tuple[str, str, str | None]:
    parts = p.split("/")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else None


def _platform_obj(p: str) -> dict[str, str]:
    os_name, arch, variant = _split_platform(p)
    d = {"architecture": arch, "os": os_name}
    if variant:
        d["variant"] = variant
    return d


def _push_attestation(
    reg: RegistryServer, repo: str, subject: PushedImage, rng: random.Random, client: httpx.Client
) -> PushedImage:
    """A buildkit-style attestation manifest (in-toto SBOM layer) for ``subject``."""
    stmt = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": "_", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
            "predicate": {"spdxVersion": "SPDX-2.3", "nonce": rng.getrandbits(64)},
        }
    ).encode()
    layer = Blob(
        blob_digest(stmt),
        len(stmt),
        IN_TOTO,
        stmt,
        annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"},
    )
    # diff_ids stay empty: in-toto layers are not filesystem layers (crane validate agrees)
    cfg_data = json.dumps(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    ).encode()
    config = Blob(blob_digest(cfg_data), len(cfg_data), OCI_CONFIG, cfg_data)
    return _push_manifest_image(reg, repo, None, config, [layer], docker=False, client=client)


def push_index(
    reg: RegistryServer,
    repo: str,
    tag: str | None = "latest",
    *,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    docker: bool = False,
    layers: int = 1,
    layer_size: int = 2048,
    shared_base: bool = True,
    duplicate_layer: bool = False,
    attestations: bool = False,
    seed: int | None = None,
) -> PushedImage:
    """A multi-platform OCI index (or Docker manifest list with ``docker=True``).

    - ``shared_base``: one base layer common to every platform manifest.
    - ``duplicate_layer``: the first platform's manifest lists one of its layers twice.
    - ``attestations``: one buildkit attestation manifest per platform (OCI only)."""
    rng = _rng(seed)
    lmt = DOCKER_LAYER if docker else OCI_LAYER
    base = [make_layer(layer_size, rng.getrandbits(63), media_type=lmt)] if shared_base else []
    children: list[PushedImage] = []
    entries: list[dict[str, Any]] = []
    with _client(reg, repo) as c:
        for i, p in enumerate(platforms):
            fresh = [
                make_layer(layer_size + 17 * i + j, rng.getrandbits(63), media_type=lmt)
                for j in range(layers)
            ]
            all_layers = [*base, *fresh]
            if duplicate_layer and i == 0:
                all_layers.append(fresh[0] if fresh else base[0])
            os_name, arch, variant = _split_platform(p)
            config = make_config(
                all_layers,
                os_name=os_name,
                arch=arch,
                variant=variant,
                docker=docker,
                label=f"{rng.getrandbits(32):08x}",
            )
            child = _push_manifest_image(
                reg, repo, None, config, all_layers, docker=docker, client=c
            )
            children.append(child)
            entries.append(child.descriptor(platform=_platform_obj(p)))
        if attestations and not docker:
            for child in list(children):
                att = _push_attestation(reg, repo, child, rng, c)
                children.append(att)
                entries.append(
                    att.descriptor(
                        platform={"architecture": "unknown", "os": "unknown"},
                        annotations={
                            "vnd.docker.reference.digest": child.digest,
                            "vnd.docker.reference.type": "attestation-manifest",
                        },
                    )
                )
        mt = DOCKER_LIST if docker else OCI_INDEX
        body = _dump({"schemaVersion": 2, "mediaType": mt, "manifests": entries})
        digest = push_manifest(reg, repo, tag or blob_digest(body), body, mt, client=c)
    blobs = [b for ch in children for b in ch.blobs]
    return PushedImage(reg.host, repo, tag, digest, mt, body, blobs, children)


def push_nested_index(
    reg: RegistryServer,
    repo: str,
    tag: str | None = "latest",
    *,
    seed: int | None = None,
    layer_size: int = 2048,
) -> PushedImage:
    """An OCI index holding an inner index (linux/amd64 + linux/arm64) and one more image
    (linux/s390x)."""
    rng = _rng(seed)
    inner = push_index(reg, repo, None, seed=rng.getrandbits(63), layer_size=layer_size)
    extra = push_image(
        reg,
        repo,
        None,
        layers=1,
        layer_size=layer_size,
        seed=rng.getrandbits(63),
        platform="linux/s390x",
    )
    entries = [inner.descriptor(), extra.descriptor(platform=_platform_obj("linux/s390x"))]
    body = _dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    digest = push_manifest(reg, repo, tag or blob_digest(body), body, OCI_INDEX)
    return PushedImage(
        reg.host, repo, tag, digest, OCI_INDEX, body, inner.blobs + extra.blobs, [inner, extra]
    )


# --- referrers -------------------------------------------------------------------------------


def referrers_tag(digest: str) -> str:
    """The referrers tag-schema fallback tag for ``digest``: ``sha256-<hex>``."""
    algo, _, hexd = digest.partition(":")
    return f"{algo}-{hexd}"


def push_artifact(
    reg: RegistryServer,
    repo: str,
    subject: PushedImage | dict[str, Any],
    *,
    artifact_type: str = "application/vnd.example.sbom.v1+json",
    content: bytes | None = None,
    tag: str | None = None,
    annotations: dict[str, str] | None = None,
    referrers_tag_fallback: bool = True,
) -> PushedImage:
    """An artifact manifest: empty config, one layer, ``artifactType`` and ``subject``.

    With ``referrers_tag_fallback`` the index under tag ``sha256-<subject hex>`` is
    (created or) extended with this artifact's descriptor, as ORAS/cosign do against
    registries without the referrers API."""
    subj = subject.descriptor() if isinstance(subject, PushedImage) else dict(subject)
    subj.pop("platform", None)
    subj.pop("annotations", None)
    data = content if content is not None else json.dumps({"nonce": os.urandom(8).hex()}).encode()
    layer = Blob(blob_digest(data), len(data), "application/json", data)
    empty = Blob(EMPTY_JSON_DIGEST, 2, EMPTY_CONFIG, EMPTY_JSON)
    ann = {"org.opencontainers.image.created": "2026-01-01T00:00:00Z", **(annotations or {})}
    with _client(reg, repo) as c:
        push_blob(reg, repo, EMPTY_JSON, client=c)
        push_blob(reg, repo, data, client=c)
        m = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": empty.descriptor(),
            "layers": [layer.descriptor()],
            "subject": subj,
            "annotations": ann,
        }
        body = _dump(m)
        digest = push_manifest(reg, repo, tag or blob_digest(body), body, OCI_MANIFEST, client=c)
        art = PushedImage(
            reg.host,
            repo,
            tag,
            digest,
            OCI_MANIFEST,
            body,
            [empty.descriptor(), layer.descriptor()],
            artifact_type=artifact_type,
            subject=subj["digest"],
        )
        if referrers_tag_fallback:
            _add_to_referrers_tag(reg, repo, subj["digest"], art.descriptor(annotations=ann), c)
    return art


def _add_to_referrers_tag(
    reg: RegistryServer, repo: str, subject_digest: str, desc: dict[str, Any], c: httpx.Client
) -> None:
    tag = referrers_tag(subject_digest)
    r = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_INDEX})
    if r.status_code == 200:
        index = r.json()
    else:
        _check(r, 404)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if all(m["digest"] != desc["digest"] for m in index["manifests"]):
        index["manifests"].append(desc)
    push_manifest(reg, repo, tag, _dump(index), OCI_INDEX, client=c)


def referrers_fallback_index(
    reg: RegistryServer, repo: str, subject_digest: str
) -> dict[str, Any] | None:
    r = get_manifest(reg, repo, referrers_tag(subject_digest))
    if r.status_code == 404:
        return None
    _check(r, 200)
    parsed: dict[str, Any] = r.json()
    return parsed


# --- big blobs -------------------------------------------------------------------------------

_MiB = 1024 * 1024


def _big_chunks(size: int, seed: int, chunk: int) -> Iterator[bytes]:
    """``size`` pseudo-random bytes in ``chunk``-sized pieces (random per chunk from the seed)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def _tar_stream(payload_size: int, seed: int, chunk: int) -> Iterator[bytes]:
    """An uncompressed tar with one file of ``payload_size`` random bytes, streamed."""
    info = tarfile.TarInfo("big.bin")
    info.size = payload_size
    info.mtime = 0
    info.mode = 0o644
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    yield from _big_chunks(payload_size, seed, chunk)
    pad = (-payload_size) % 512
    yield b"\0" * (pad + 1024)


def tar_stream_size(payload_size: int) -> int:
    return 512 + payload_size + (-payload_size) % 512 + 1024


def push_big_blob(
    reg: RegistryServer,
    repo: str,
    size: int = 512 * _MiB,
    *,
    seed: int = 1,
    chunk_size: int = 1 * _MiB,
    as_tar: bool = True,
) -> Blob:
    """Stream a big blob into ``repo``: one ``PATCH`` with a chunked (``Transfer-Encoding``)
    body generated ``chunk_size`` bytes at a time, digest computed on the way, then
    ``PUT ?digest=``. Nothing is held in memory (the process' RSS grows by ~40 MiB at most,
    whatever ``size``). With ``as_tar`` the blob is a valid uncompressed tar (``size`` = payload
    size; the blob is ~1.5 KiB bigger, see :func:`tar_stream_size`) usable as an image layer."""
    h = hashlib.sha256()
    total = 0

    def body() -> Iterator[bytes]:
        nonlocal total
        pieces = (
            _tar_stream(size, seed, chunk_size) if as_tar else _big_chunks(size, seed, chunk_size)
        )
        for piece in pieces:
            h.update(piece)
            total += len(piece)
            yield piece

    with _client(reg, repo) as c:
        r = _check(c.post(f"/v2/{repo}/blobs/uploads/"), 202)
        r = _check(
            c.patch(
                r.headers["Location"],
                content=body(),
                headers={"Content-Type": "application/octet-stream"},
                timeout=600.0,
            ),
            202,
        )
        digest = "sha256:" + h.hexdigest()
        _check(c.put(append_query(r.headers["Location"], digest=digest)), 201)
    mt = OCI_LAYER_TAR if as_tar else "application/octet-stream"
    return Blob(digest, total, mt, None, diff_id=digest if as_tar else None)


def push_big_image(
    reg: RegistryServer,
    repo: str,
    tag: str | None = "big",
    size: int = 512 * _MiB,
    *,
    seed: int = 1,
) -> PushedImage:
    """A single-layer OCI image whose layer is a ``size``-byte streamed uncompressed tar."""
    layer = push_big_blob(reg, repo, size, seed=seed)
    config = make_config([layer], label=f"big-{seed}")
    with _client(reg, repo) as c:
        assert config.data is not None
        push_blob(reg, repo, config.data, client=c)
        m = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        }
        body = _dump(m)
        digest = push_manifest(reg, repo, tag or blob_digest(body), body, OCI_MANIFEST, client=c)
    return PushedImage(
        reg.host, repo, tag, digest, OCI_MANIFEST, body, [config.descriptor(), layer.descriptor()]
    )
