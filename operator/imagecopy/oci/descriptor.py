"""Descriptors and parsed manifests: what a manifest names, read from its exact bytes.

The raw bytes of a manifest are kept and pushed unchanged; parsing only extracts the
descriptors the copy needs to walk the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import mediatypes as mt
from .bounds import load_json
from .digest import compute_digest, is_digest
from .errors import ManifestTooLarge, UnsupportedMediaType

__all__ = [
    "MAX_MANIFEST_BYTES",
    "Descriptor",
    "Manifest",
    "parse_manifest",
]

MAX_MANIFEST_BYTES = 4 * 1024 * 1024

ATTESTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_DIGEST = "vnd.docker.reference.digest"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    annotations: dict[str, str] | None = field(default=None, compare=False, hash=False)
    artifact_type: str | None = None
    raw: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise UnsupportedMediaType(f"{where}: a descriptor is not a JSON object")
        digest = obj.get("digest")
        size = obj.get("size")
        if not isinstance(digest, str):
            raise UnsupportedMediaType(f"{where}: malformed descriptor: it has no digest")
        if not is_digest(digest):
            # Checked before the digest can go into any URL (a path traversal otherwise).
            shown = digest if len(digest) <= 160 else digest[:160] + "..."
            raise UnsupportedMediaType(
                f"{where}: malformed descriptor: {shown!r} is not a valid digest "
                "(sha256:<64 hex> or sha512:<128 hex>)"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UnsupportedMediaType(f"{where}: descriptor {digest} has no valid size")
        urls = obj.get("urls") or ()
        platform = obj.get("platform")
        annotations = obj.get("annotations")
        artifact_type = obj.get("artifactType")
        return cls(
            media_type=str(obj.get("mediaType") or ""),
            digest=digest,
            size=size,
            urls=tuple(str(u) for u in urls) if isinstance(urls, list) else (),
            platform=platform if isinstance(platform, dict) else None,
            annotations=annotations if isinstance(annotations, dict) else None,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            raw=obj,
        )

    @property
    def foreign(self) -> bool:
        """A non-distributable layer: it lives at its `urls`, registries do not hold it."""
        return bool(self.urls) or mt.is_non_distributable(self.media_type)

    @property
    def is_attestation(self) -> bool:
        return (self.annotations or {}).get(ATTESTATION_TYPE) == "attestation-manifest"

    @property
    def attests(self) -> str | None:
        return (self.annotations or {}).get(ATTESTATION_DIGEST)

    def to_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return dict(self.raw)
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True)
class Manifest:
    """A manifest or index with its exact bytes and the descriptors it names."""

    media_type: str
    digest: str
    data: bytes = field(repr=False)
    #: Child manifests (index entries).
    manifests: tuple[Descriptor, ...] = ()
    #: Config then layers (image manifests); blobs never manifests.
    blobs: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    json: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_index(self) -> bool:
        return mt.is_index(self.media_type)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> Descriptor:
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=len(self.data),
            artifact_type=self.artifact_type,
        )


def parse_manifest(
    data: bytes, media_type: str | None, where: str, digest: str | None = None
) -> Manifest:
    """Parse manifest bytes; `media_type` is the Content-Type the registry sent, if any."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(
            f"{where} is {len(data)} bytes; manifests over {MAX_MANIFEST_BYTES} bytes (4 MiB) are refused"
        )
    obj = load_json(data, where, error=UnsupportedMediaType)
    if not isinstance(obj, dict):
        raise UnsupportedMediaType(f"{where} is not a JSON object")
    declared = obj.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else (media_type or "")
    schema_version = obj.get("schemaVersion")
    if mt.is_schema1(kind) or schema_version == 1:
        raise UnsupportedMediaType(
            f"{where} is a Docker schema1 manifest, which is deprecated and not copied"
        )
    if not kind or kind == "application/json":
        # OCI allows mediaType to be omitted; infer from the shape.
        if "manifests" in obj:
            kind = mt.OCI_INDEX
        elif "layers" in obj or "config" in obj:
            kind = mt.OCI_MANIFEST
    if digest is None:
        digest = compute_digest(data)
    subject = (
        Descriptor.from_json(obj["subject"], where)
        if isinstance(obj.get("subject"), dict)
        else None
    )
    artifact_type = obj.get("artifactType")
    at = artifact_type if isinstance(artifact_type, str) else None
    if mt.is_index(kind) or (kind not in mt.MANIFEST_TYPES and "manifests" in obj):
        entries = obj.get("manifests") or []
        if not isinstance(entries, list):
            raise UnsupportedMediaType(f"{where}: 'manifests' is not a list")
        return Manifest(
            media_type=kind,
            digest=digest,
            data=data,
            manifests=tuple(Descriptor.from_json(e, where) for e in entries),
            subject=subject,
            artifact_type=at,
            json=obj,
        )
    if mt.is_manifest(kind) or "layers" in obj or "config" in obj:
        blobs: list[Descriptor] = []
        config = obj.get("config")
        if isinstance(config, dict):
            blobs.append(Descriptor.from_json(config, where))
        layers = obj.get("layers") or []
        if not isinstance(layers, list):
            raise UnsupportedMediaType(f"{where}: 'layers' is not a list")
        blobs.extend(Descriptor.from_json(layer, where) for layer in layers)
        return Manifest(
            media_type=kind,
            digest=digest,
            data=data,
            blobs=tuple(blobs),
            subject=subject,
            artifact_type=at,
            json=obj,
        )
    raise UnsupportedMediaType(f"{where} has unsupported media type {kind or 'unknown'!r}")
