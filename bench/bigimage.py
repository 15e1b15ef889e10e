"""Big benchmark layers: real gzip'd tars of random (incompressible) content, generated once
into a cache directory (streamed, never held in memory) and pushed with streamed uploads."""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

MiB = 1024 * 1024
PIECE = 4 * MiB

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class LayerFile:
    path: Path
    digest: str
    size: int
    diff_id: str

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": OCI_LAYER, "digest": self.digest, "size": self.size}


def _tar_pieces(payload: int, seed: int) -> Iterator[bytes]:
    info = tarfile.TarInfo(f"payload-{seed}.bin")
    info.size = payload
    info.mtime = 0
    info.mode = 0o644
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    rng = random.Random(seed)
    left = payload
    while left:
        n = min(PIECE, left)
        yield rng.randbytes(n)
        left -= n
    yield b"\0" * ((-payload) % 512 + 1024)


def cached_layer(cache: Path, payload: int, seed: int) -> LayerFile:
    """The gzip'd tar for (payload, seed), generated on first use; its digests are cached."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"layer-{payload}-{seed}.tar.gz"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        m = json.loads(meta.read_text())
        return LayerFile(path, m["digest"], m["size"], m["diff_id"])
    tmp = path.with_suffix(".tmp")
    blob_h, tar_h = hashlib.sha256(), hashlib.sha256()
    size = 0
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing, header mtime 0
    with open(tmp, "wb") as f:
        for piece in _tar_pieces(payload, seed):
            tar_h.update(piece)
            out = comp.compress(piece)
            blob_h.update(out)
            f.write(out)
            size += len(out)
        out = comp.flush()
        blob_h.update(out)
        f.write(out)
        size += len(out)
    tmp.rename(path)
    layer = LayerFile(path, "sha256:" + blob_h.hexdigest(), size, "sha256:" + tar_h.hexdigest())
    meta.write_text(json.dumps({"digest": layer.digest, "size": size, "diff_id": layer.diff_id}))
    return layer


def _file_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


def _sep(url: str) -> str:
    return "&" if "?" in url else "?"


def push_blob_stream(
    c: httpx.Client, repo: str, digest: str, size: int, body: Iterator[bytes]
) -> None:
    if c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    loc = r.headers["Location"]
    r = c.put(
        f"{loc}{_sep(loc)}digest={digest}",
        content=body,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
    )
    if r.status_code != 201:
        raise RuntimeError(f"upload of {digest} -> {r.status_code}: {r.text[:300]}")


def push_big_image(base_url: str, repo: str, tag: str, layers: list[LayerFile]) -> str:
    """Push an OCI image made of ``layers`` (plus a real config); returns the manifest digest."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"imagecopy.bench": "cross-registry"}},
            "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    cfg_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with httpx.Client(base_url=base_url, timeout=600) as c:
        for la in layers:
            push_blob_stream(c, repo, la.digest, la.size, _file_pieces(la.path))
        push_blob_stream(c, repo, cfg_digest, len(config), iter([config]))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(config)},
                "layers": [la.descriptor() for la in layers],
            },
            indent=2,
        ).encode()
        r = c.put(
            f"/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if r.status_code != 201:
            raise RuntimeError(f"manifest push -> {r.status_code}: {r.text[:300]}")
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
