"""Read an OCI image archive (``buildah push … oci-archive:FILE``) without a container engine.

``archive_sizes(path)`` returns the image's manifest digest, its compressed size (manifest, config
and layer blobs as stored) and its uncompressed size (the layers' tar streams after gunzip: what
the root filesystem occupies). ``python -m testkit.oci_archive FILE`` prints them; `make image`
reports the size that way.
"""

from __future__ import annotations

import gzip
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MB = 1_000_000


@dataclass(frozen=True)
class ArchiveSizes:
    manifest_digest: str
    layers: int
    compressed: int
    uncompressed: int

    def describe(self) -> str:
        return (
            f"{self.layers} layers, {self.compressed / MB:.1f} MB compressed, "
            f"{self.uncompressed / MB:.1f} MB uncompressed ({self.manifest_digest})"
        )


def _blob(tar: tarfile.TarFile, digest: str) -> IO[bytes]:
    algo, hexpart = digest.split(":", 1)
    return _member(tar, f"blobs/{algo}/{hexpart}")


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    member = tar.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in the archive")
    return member


def _json_blob(tar: tarfile.TarFile, digest: str) -> Any:
    return json.loads(_blob(tar, digest).read())


def archive_sizes(path: Path) -> ArchiveSizes:
    with tarfile.open(path) as tar:
        index = json.loads(_member(tar, "index.json").read())
        (desc,) = index["manifests"]
        manifest = _json_blob(tar, desc["digest"])
        compressed = desc["size"] + manifest["config"]["size"]
        uncompressed = 0
        for layer in manifest["layers"]:
            compressed += layer["size"]
            raw = _blob(tar, layer["digest"])
            gzipped = layer["mediaType"].endswith("+gzip")
            stream: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=raw) if gzipped else raw
            while chunk := stream.read(1 << 20):
                uncompressed += len(chunk)
        return ArchiveSizes(desc["digest"], len(manifest["layers"]), compressed, uncompressed)


def main(argv: list[str]) -> int:
    (path,) = argv
    print(f"image {path}: {archive_sizes(Path(path)).describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
