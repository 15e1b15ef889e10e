"""The images of the scaling sweep: same-registry copy time against image size and layer count.

Size sweep at 8 layers: 8 MiB, 128 MiB, 1 GiB, 4 GiB. Layer-count sweep at 128 MiB: 1, 8, 32,
128 layers (the 8-layer 128 MiB image is in both). Generating ~5.6 GiB must be cheap, so:

- layers are **uncompressed** tars (``application/vnd.oci.image.layer.v1.tar``, ``diff_id`` =
  digest) of one file whose content is a seeded 1 MiB random block repeated: no gzip pass (gzip
  of random bytes runs at ~50 MB/s here), and a same-registry copy never reads a byte of it;
- every blob is generated while it is uploaded (``POST`` + one streamed ``PATCH`` + ``PUT
  ?digest=``), never written to a file first;
- the source registry's storage lives in the per-user cache
  (``~/.cache/imagecopy/bench/scaling-registry/``) with a manifest of what was pushed: a later
  run finds the images there (a ``HEAD`` per image) and pushes nothing. Destination
  repositories of earlier runs (only manifests and links: every blob was mounted) are removed
  before the registry starts.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from testkit.registry import RegistryServer

MiB = 1024 * 1024
GiB = 1024 * MiB
BLOCK = 1 * MiB

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class ScaleImage:
    layers: int
    total: int

    @property
    def key(self) -> str:
        return f"l{self.layers}-{self.total // MiB}m"

    @property
    def repo(self) -> str:
        return f"scaling/{self.key}"

    @property
    def label(self) -> str:
        size = f"{self.total // GiB} GiB" if self.total >= GiB else f"{self.total // MiB} MiB"
        return f"{size}, {self.layers} layer{'s' if self.layers > 1 else ''}"


SIZE_SWEEP = tuple(ScaleImage(8, s) for s in (8 * MiB, 128 * MiB, 1 * GiB, 4 * GiB))
LAYER_SWEEP = tuple(ScaleImage(n, 128 * MiB) for n in (1, 8, 32, 128))
QUICK_SIZE_SWEEP = SIZE_SWEEP[:3]


def all_images(sizes: tuple[ScaleImage, ...] = SIZE_SWEEP) -> list[ScaleImage]:
    seen: dict[str, ScaleImage] = {}
    for im in (*sizes, *LAYER_SWEEP):
        seen.setdefault(im.key, im)
    return list(seen.values())


def _layer_pieces(size: int, seed: int) -> Iterator[bytes]:
    """A tar of exactly ``size`` bytes (size a multiple of 512, ≥ 2 KiB): one member whose
    content is a seeded random block, repeated."""
    payload = size - 512 - 1024  # header + the two zero end blocks
    info = tarfile.TarInfo(f"payload-{seed}.bin")
    info.size = payload
    info.mtime = 0
    info.mode = 0o644
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    block = random.Random(seed).randbytes(BLOCK)
    left = payload
    while left:
        n = min(BLOCK, left)
        yield block if n == BLOCK else block[:n]
        left -= n
    yield b"\0" * ((-payload) % 512 + 1024)


def _layer_size(im: ScaleImage) -> int:
    per = im.total // im.layers
    return per - per % 512


def _push_streamed(c: httpx.Client, repo: str, pieces: Iterator[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0

    def body() -> Iterator[bytes]:
        nonlocal size
        for p in pieces:
            h.update(p)
            size += len(p)
            yield p

    r = c.post(f"/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    loc = r.headers["Location"]
    r = c.patch(loc, content=body(), headers={"Content-Type": "application/octet-stream"})
    if r.status_code != 202:
        raise RuntimeError(f"PATCH -> {r.status_code}: {r.text[:300]}")
    loc = r.headers["Location"]
    digest = "sha256:" + h.hexdigest()
    r = c.put(f"{loc}{'&' if '?' in loc else '?'}digest={digest}", content=b"")
    if r.status_code != 201:
        raise RuntimeError(f"PUT {digest} -> {r.status_code}: {r.text[:300]}")
    return digest, size


def push_scale_image(base_url: str, im: ScaleImage, seed0: int) -> tuple[str, dict[str, int]]:
    """Push ``im`` (generated on the fly); returns the manifest digest and the blob sizes."""
    sizes: dict[str, int] = {}
    descs: list[dict[str, object]] = []
    per = _layer_size(im)
    with httpx.Client(base_url=base_url, timeout=900) as c:
        for i in range(im.layers):
            digest, size = _push_streamed(c, im.repo, _layer_pieces(per, seed0 + i))
            sizes[digest] = size
            descs.append({"mediaType": OCI_TAR, "digest": digest, "size": size})
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"imagecopy.bench": f"scaling {im.key}"}},
                "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        cfg, cfg_size = _push_streamed(c, im.repo, iter([config]))
        sizes[cfg] = cfg_size
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": cfg_size},
                "layers": descs,
            },
            indent=2,
        ).encode()
        r = c.put(
            f"/v2/{im.repo}/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        if r.status_code != 201:
            raise RuntimeError(f"manifest push -> {r.status_code}: {r.text[:300]}")
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), sizes


@dataclass(frozen=True)
class Pushed:
    image: ScaleImage
    digest: str
    blob_sizes: dict[str, int]


class ScalingRegistry:
    """The cached source registry of the sweep (see the module docstring)."""

    def __init__(self, cache: Path) -> None:
        self.dir = cache / "scaling-registry"
        self.meta_path = cache / "scaling-images.json"
        repos = self.dir / "storage" / "docker" / "registry" / "v2" / "repositories" / "bench"
        shutil.rmtree(repos, ignore_errors=True)  # earlier runs' destinations
        self.registry = RegistryServer(impl="v2", workdir=self.dir, keep_workdir=True)

    def start(self) -> ScalingRegistry:
        self.registry.start()
        return self

    def stop(self) -> None:
        self.registry.stop()

    def ensure(self, images: list[ScaleImage], log: object = print) -> list[Pushed]:
        meta: dict[str, dict[str, object]] = {}
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text())
        out: list[Pushed] = []
        with httpx.Client(base_url=self.registry.url, timeout=30) as c:
            for im in images:
                m = meta.get(im.key)
                if m is not None:
                    r = c.head(f"/v2/{im.repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
                    if r.headers.get("Docker-Content-Digest") == m["digest"]:
                        sizes = {str(k): int(v) for k, v in dict(m["blobs"]).items()}  # type: ignore[call-overload]
                        out.append(Pushed(im, str(m["digest"]), sizes))
                        continue
                if callable(log):
                    log(f"scaling: generating and pushing {im.label} (once; cached)")
                digest, sizes = push_scale_image(self.registry.url, im, zlib.crc32(im.key.encode()))
                meta[im.key] = {"digest": digest, "blobs": sizes}
                self.meta_path.write_text(json.dumps(meta, indent=1))
                out.append(Pushed(im, digest, sizes))
        return out
