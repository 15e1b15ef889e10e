"""Media types the engine understands, and what each one is."""

from __future__ import annotations

__all__ = [
    "ACCEPT_MANIFESTS",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "is_index",
    "is_manifest",
    "is_non_distributable",
    "is_schema1",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# Schema1 types are accepted on purpose: a registry that cannot answer with one of the
# modern types would otherwise convert or 404, and we want to refuse schema1 by name.
ACCEPT_MANIFESTS = ", ".join(
    [
        OCI_INDEX,
        OCI_MANIFEST,
        DOCKER_MANIFEST_LIST,
        DOCKER_MANIFEST,
        DOCKER_SCHEMA1_SIGNED,
        DOCKER_SCHEMA1,
    ]
)


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def is_manifest(media_type: str) -> bool:
    return media_type in MANIFEST_TYPES


def is_schema1(media_type: str) -> bool:
    """Schema1 by media type; a body served as ``application/json`` is schema1 only when
    its ``schemaVersion`` says 1 (``descriptor.parse_manifest`` checks that)."""
    return media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)


def is_non_distributable(media_type: str) -> bool:
    return media_type == DOCKER_FOREIGN_LAYER or ".nondistributable." in media_type
