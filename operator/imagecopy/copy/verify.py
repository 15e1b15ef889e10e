"""The verification gate: is the source image signed by one of the trusted public keys?

Policy (docs/reference.md §4, "Verification"):
- a signature counts when its signed bytes name the image's own digest (the simple-signing
  ``docker-manifest-digest``, the in-toto statement's subject, a message signature's digest)
  *and* its signature verifies with one of the keys;
- the image passes when at least one signature counts. None found at all is
  ``SignatureMissing`` (retried: signing often follows the push); found but none counting is
  ``SignatureInvalid``;
- keys are PEM public keys as cosign writes them (``cosign.pub``): ECDSA P-256/P-384/P-521,
  RSA (PKCS#1 v1.5 or PSS) and Ed25519. Cosign signs with SHA-256 by default and with the
  curve's own hash when it loads a P-384/P-521 key, so each is tried; all are sound.
- Transparency logs and certificates (keyless) are not verified and not needed: a key
  signature stands on its own.

All cryptography is the ``cryptography`` package's, in ``copy.signatures``, imported only
when a key is loaded (a copy without verification never loads it). Verification only reads the source and
runs before anything is written to the destination (``copy.engine``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..oci.cosign import Signature, find_signatures
from ..oci.errors import SignatureInvalid, SignatureMissing
from ..oci.repository import RepositoryClient

if TYPE_CHECKING:
    from .signatures import PublicKey

__all__ = [
    "TrustedKey",
    "Verification",
    "VerifyPolicy",
    "check_signature",
    "load_key",
    "verify_image",
]

#: At most this many signed docker-references are reported.
_MAX_REPORTED = 8


@dataclass(frozen=True)
class TrustedKey:
    """A public key and the name it is reported by (``<secret>/<entry>`` or a file path)."""

    name: str
    key: PublicKey = field(repr=False, compare=False)


def load_key(name: str, pem: bytes) -> TrustedKey:
    """A PEM public key (ECDSA, RSA or Ed25519); ``InvalidSpec`` naming ``name`` otherwise."""
    from .signatures import load_public_key

    return TrustedKey(name, load_public_key(name, pem))


def check_signature(key: TrustedKey, sig: Signature) -> bool:
    """Whether ``sig``'s signature over its signed bytes verifies with ``key``."""
    from .signatures import verify_signature

    return verify_signature(key.key, sig)


@dataclass(frozen=True)
class Verification:
    """The verdict for one source digest: ``status.verification`` and ``--json``."""

    digest: str
    verified: bool
    #: Signatures found, and those that verified with a trusted key.
    signatures: int
    valid: int
    #: Names of the keys that verified a signature.
    keys: tuple[str, ...]
    #: The ``docker-reference`` each valid signature names (where it was signed).
    docker_references: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "verified": self.verified,
            "signatures": self.signatures,
            "validSignatures": self.valid,
            "keys": list(self.keys),
            "dockerReferences": list(self.docker_references),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Verification | None:
        """A verification a status recorded; None for anything unusable."""
        if not isinstance(obj, Mapping):
            return None
        digest, verified = obj.get("digest"), obj.get("verified")
        keys = obj.get("keys")
        if not isinstance(digest, str) or verified is not True or not isinstance(keys, list):
            return None
        refs = obj.get("dockerReferences")
        signatures, valid = obj.get("signatures"), obj.get("validSignatures")
        return cls(
            digest,
            True,
            signatures if isinstance(signatures, int) else 0,
            valid if isinstance(valid, int) else 0,
            tuple(k for k in keys if isinstance(k, str)),
            tuple(r for r in refs if isinstance(r, str)) if isinstance(refs, list) else (),
        )

    def summary(self) -> str:
        return "signed by " + ", ".join(self.keys)


@dataclass(frozen=True)
class VerifyPolicy:
    """What the gate trusts, and what it already knows."""

    keys: tuple[TrustedKey, ...]
    #: An earlier verdict (from the status): the same digest, verified by a key that is
    #: still trusted, is not verified again (no requests).
    known: Verification | None = None

    def reuse(self, digest: str) -> Verification | None:
        known = self.known
        names = {k.name for k in self.keys}
        fits = known is not None and known.digest == digest and known.verified
        if fits and known is not None and known.keys and set(known.keys) <= names:
            return known
        return None


def evaluate(
    digest: str, signatures: Sequence[Signature], keys: Iterable[TrustedKey]
) -> Verification:
    """The verdict for ``digest`` given its signatures (pure)."""
    trusted = tuple(keys)
    matched: list[str] = []
    references: list[str] = []
    valid = 0
    for sig in signatures:
        if sig.claimed_digest != digest:
            continue
        hits = [k.name for k in trusted if check_signature(k, sig)]
        if hits:
            valid += 1
            matched.extend(h for h in hits if h not in matched)
            fresh = sig.docker_reference and sig.docker_reference not in references
            if fresh and sig.docker_reference and len(references) < _MAX_REPORTED:
                references.append(sig.docker_reference)
    return Verification(
        digest, valid > 0, len(signatures), valid, tuple(matched), tuple(references)
    )


async def verify_image(repo: RepositoryClient, digest: str, policy: VerifyPolicy) -> Verification:
    """Verify the image ``digest`` of ``repo`` (reads only); raises ``SignatureMissing`` or
    ``SignatureInvalid`` when it does not pass."""
    known = policy.reuse(digest)
    if known is not None:
        return known
    signatures = await find_signatures(repo, digest)
    where = f"{repo.registry}/{repo.name.path}@{digest}"
    if not signatures:
        raise SignatureMissing(
            f"{where} has no cosign signature (.sig tag or sigstore bundle)",
            verdict=Verification(digest, False, 0, 0, ()).to_json(),
        )
    verdict = evaluate(digest, signatures, policy.keys)
    if not verdict.verified:
        names = ", ".join(k.name for k in policy.keys)
        wrong_digest = sum(
            1 for s in signatures if s.problem is None and s.claimed_digest != digest
        )
        detail = f"; {wrong_digest} sign another digest" if wrong_digest else ""
        raise SignatureInvalid(
            f"none of the {len(signatures)} signatures of {where} verifies with {names}{detail}",
            verdict=verdict.to_json(),
        )
    return verdict
