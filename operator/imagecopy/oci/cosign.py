"""Cosign's wire formats: where signatures live in a registry and what their bytes claim.

Two places hold the signatures of an image ``sha256:<hex>``:

- the legacy **tag** ``sha256-<hex>.sig`` (cosign v1/v2): an image manifest whose layers are
  *simple-signing* payloads (``critical.image.docker-manifest-digest`` names the image,
  ``critical.identity.docker-reference`` where it was signed), each with its base64
  signature in the layer annotation ``dev.cosignproject.cosign/signature``. Attestations
  (``.att``: DSSE envelopes) and SBOMs (``.sbom``) live at sibling tags;
- a **sigstore bundle referrer** (cosign v3): a manifest whose ``subject`` is the image and
  whose one layer is a bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a
  DSSE envelope (an in-toto statement naming the image digest) or a message signature.

This module only finds and parses; nothing here decides whether a signature is trusted
(``copy.verify`` does, with the public keys it is given). Parsing never raises on hostile
content: what cannot be parsed is an ``Unparsable`` signature, which verifies with no key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .bounds import load_json
from .descriptor import Descriptor, Manifest
from .errors import SignatureInvalid
from .referrers import find_referrers, referrers_tag
from .repository import RepositoryClient

__all__ = [
    "ATTACHMENT_SUFFIXES",
    "BUNDLE_PREFIX",
    "DSSE_ENVELOPE",
    "IN_TOTO",
    "MAX_SIGNATURE_BLOB",
    "SIGNATURE_ANNOTATION",
    "SIGN_PREDICATE",
    "SIMPLE_SIGNING",
    "Signature",
    "attachment_tag",
    "find_signatures",
    "pae",
    "parse_bundle",
    "parse_simple_signing",
]

SIG, ATT, SBOM = ".sig", ".att", ".sbom"
#: The tag suffixes cosign attaches to ``sha256-<hex>``, in the order they are copied.
ATTACHMENT_SUFFIXES = (SIG, ATT, SBOM)
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle"
IN_TOTO = "application/vnd.in-toto+json"
#: The predicate type of the in-toto statement ``cosign sign`` (v3, bundle format) signs.
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
#: Signature payloads and bundles are small; a larger blob is not read.
MAX_SIGNATURE_BLOB = 1024 * 1024
#: At most this many signatures of one image are read (each costs one blob GET).
MAX_SIGNATURES = 32


def attachment_tag(digest: str, suffix: str) -> str:
    """``sha256:<hex>`` + ``.sig`` → ``sha256-<hex>.sig``."""
    return referrers_tag(digest) + suffix


@dataclass(frozen=True)
class Signature:
    """One signature as found: the exact bytes it signs and what they claim.

    ``problem`` is set when the signature cannot be checked at all (malformed payload,
    missing signature); it then verifies with no key."""

    #: Where it was found, for messages: ``sha256-….sig`` or ``bundle sha256:…``.
    origin: str
    #: The bytes the signature is over (the payload, or the DSSE pre-authentication
    #: encoding of the envelope).
    signed: bytes
    signature: bytes
    #: The image digest the signed bytes name (None: they name none).
    claimed_digest: str | None
    #: ``critical.identity.docker-reference`` of a simple-signing payload, or the subject
    #: name of an in-toto statement.
    docker_reference: str | None = None
    #: For a message signature, the digest the bundle says the message has
    #: (``(algorithm, bytes)``); the signature is then over that digest, prehashed.
    prehashed: tuple[str, bytes] | None = None
    problem: str | None = None


def _b64(value: Any) -> bytes | None:
    """Standard or URL-safe base64 (padding optional); None for anything else or empty."""
    if not isinstance(value, str) or not value:
        return None
    padded = value + "=" * (-len(value) % 4)
    for altchars in (None, b"-_"):
        try:
            decoded = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        return decoded or None
    return None


class _NotJSON(Exception):
    pass


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        obj = load_json(data, "the signature payload", error=_NotJSON)
    except _NotJSON:
        return None
    return obj if isinstance(obj, dict) else None


#: A signed ``docker-reference`` longer than this is not reported (it ends up in a status).
MAX_REFERENCE = 512


def _reference(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_REFERENCE and value.isprintable():
        return value
    return None


def _broken(origin: str, problem: str) -> Signature:
    return Signature(origin, b"", b"", None, problem=problem)


def parse_simple_signing(payload: bytes, signature_b64: str | None, origin: str) -> Signature:
    """A layer of a ``.sig`` manifest: its payload bytes and the annotation's signature."""
    signature = _b64(signature_b64)
    if signature is None:
        return _broken(origin, "the layer has no base64 signature annotation")
    obj = _json(payload)
    critical = obj.get("critical") if obj else None
    if not isinstance(critical, dict):
        return _broken(origin, "the payload is not a simple-signing document")
    image = critical.get("image")
    identity = critical.get("identity")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    reference = identity.get("docker-reference") if isinstance(identity, dict) else None
    return Signature(
        origin,
        payload,
        signature,
        digest if isinstance(digest, str) else None,
        _reference(reference),
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes a DSSE signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _statement_subject(payload: bytes) -> tuple[list[str], str | None, str | None]:
    """(sha256 digests, first subject name, predicate type) of an in-toto statement."""
    obj = _json(payload)
    if obj is None:
        return [], None, None
    digests: list[str] = []
    name: str | None = None
    for subject in obj.get("subject") or ():
        if not isinstance(subject, dict):
            continue
        found = subject.get("digest")
        if isinstance(found, dict) and isinstance(found.get("sha256"), str):
            digests.append("sha256:" + found["sha256"])
            if name is None:
                name = _reference(subject.get("name"))
    predicate = obj.get("predicateType")
    return digests, name, predicate if isinstance(predicate, str) else None


def parse_bundle(data: bytes, subject: str, origin: str) -> list[Signature]:
    """The signatures of a sigstore bundle whose referrer names ``subject``.

    A DSSE envelope counts when it is an in-toto statement whose predicate is cosign's
    image signature (``SIGN_PREDICATE``); other predicates are attestations, copied but not
    signatures. A message signature signs the image digest itself."""
    bundle = _json(data)
    if bundle is None:
        return [_broken(origin, "the bundle is not JSON")]
    envelope = bundle.get("dsseEnvelope")
    if isinstance(envelope, dict):
        payload_type = envelope.get("payloadType")
        payload = _b64(envelope.get("payload"))
        if not isinstance(payload_type, str) or payload is None:
            return [_broken(origin, "the DSSE envelope has no payload")]
        digests, name, predicate = _statement_subject(payload)
        if payload_type == IN_TOTO and predicate not in (None, SIGN_PREDICATE):
            return []  # an attestation, not a signature
        claimed = subject if subject in digests else (digests[0] if digests else None)
        out: list[Signature] = []
        for entry in envelope.get("signatures") or ():
            sig = _b64(entry.get("sig")) if isinstance(entry, dict) else None
            if sig is None:
                out.append(_broken(origin, "a DSSE signature is not base64"))
                continue
            out.append(Signature(origin, pae(payload_type, payload), sig, claimed, name))
        return out or [_broken(origin, "the DSSE envelope has no signatures")]
    message = bundle.get("messageSignature")
    if isinstance(message, dict):
        sig = _b64(message.get("signature"))
        md = message.get("messageDigest")
        algorithm = md.get("algorithm") if isinstance(md, dict) else None
        value = _b64(md.get("digest")) if isinstance(md, dict) else None
        if sig is None or not isinstance(algorithm, str) or value is None:
            return [_broken(origin, "the message signature is incomplete")]
        claimed = None
        if algorithm == "SHA2_256":
            claimed = "sha256:" + value.hex()
        return [Signature(origin, b"", sig, claimed, prehashed=(algorithm, value))]
    return [_broken(origin, "the bundle holds neither a DSSE envelope nor a message signature")]


async def _read_small(repo: RepositoryClient, desc: Descriptor, what: str) -> bytes:
    if desc.size > MAX_SIGNATURE_BLOB:
        raise SignatureInvalid(
            f"{what} names a {desc.size}-byte blob; signature blobs over 1 MiB are refused"
        )
    data = bytearray()
    async for chunk in repo.read_blob(desc):
        data.extend(chunk)
    return bytes(data)


async def _legacy(repo: RepositoryClient, digest: str) -> list[Signature]:
    tag = attachment_tag(digest, SIG)
    manifest = await repo.get_manifest(tag, missing_ok=True)
    if manifest is None:
        return []
    layers = [b for b in manifest.blobs if b.media_type == SIMPLE_SIGNING][:MAX_SIGNATURES]
    out: list[Signature] = []
    for layer in layers:
        payload = await _read_small(repo, layer, tag)
        note = (layer.annotations or {}).get(SIGNATURE_ANNOTATION)
        out.append(parse_simple_signing(payload, note if isinstance(note, str) else None, tag))
    return out


def _bundle_layers(manifest: Manifest) -> Sequence[Descriptor]:
    return [b for b in manifest.blobs if b.media_type.startswith(BUNDLE_PREFIX)]


#: The annotation cosign puts on a bundle referrer: the predicate of its statement. The
#: referrers API (and the tag-schema indexes imagecopy writes) list it, which saves reading
#: an attestation bundle that cannot be a signature.
PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"


def _may_sign(desc: Descriptor) -> bool:
    if not (desc.artifact_type or "").startswith(BUNDLE_PREFIX) or desc.media_type.endswith(
        "index"
    ):
        return False
    predicate = (desc.annotations or {}).get(PREDICATE_ANNOTATION)
    return predicate is None or predicate == SIGN_PREDICATE


async def _bundles(repo: RepositoryClient, digest: str) -> list[Signature]:
    found = await find_referrers(repo, digest)
    wanted = [d for d in found.descriptors if _may_sign(d)][:MAX_SIGNATURES]
    out: list[Signature] = []
    for desc in wanted:
        manifest = await repo.get_manifest(desc.digest, expected_digest=desc.digest)
        assert manifest is not None
        origin = f"bundle {desc.digest}"
        for layer in _bundle_layers(manifest)[:1]:
            data = await _read_small(repo, layer, origin)
            out.extend(parse_bundle(data, digest, origin))
    return out


async def find_signatures(repo: RepositoryClient, digest: str) -> list[Signature]:
    """Every signature of ``digest`` in ``repo``: the ``.sig`` tag's layers, then the
    sigstore bundle referrers (referrers API, else the tag schema index).

    Requests: one GET of the ``.sig`` tag, one of the referrers API (plus one of the tag
    schema index when there is no API), and one GET per signature blob and bundle."""
    legacy = await _legacy(repo, digest)
    bundles = await _bundles(repo, digest)
    return legacy + bundles
