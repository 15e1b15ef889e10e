"""The cryptography of ``copy.verify``: loading cosign public keys and checking signatures.

Its own module because ``cryptography`` takes a noticeable share of the CLI's start-up; only a
copy that verifies signatures imports it (``copy.verify`` does, lazily).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from ..oci.cosign import Signature
from ..oci.errors import InvalidSpec

__all__ = ["PublicKey", "load_public_key", "verify_signature"]

_HashFactory = Callable[[], hashes.HashAlgorithm]
_HASHES: tuple[_HashFactory, ...] = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_PREHASH: dict[str, _HashFactory] = {
    "SHA2_256": hashes.SHA256,
    "SHA2_384": hashes.SHA384,
    "SHA2_512": hashes.SHA512,
}

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def load_public_key(name: str, pem: bytes) -> PublicKey:
    """A PEM public key (ECDSA, RSA or Ed25519); ``InvalidSpec`` naming ``name`` otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidSpec(f"{name} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise InvalidSpec(f"{name} is a {type(key).__name__}; use ECDSA, RSA or Ed25519")
    return key


def _verify_ec(key: ec.EllipticCurvePublicKey, sig: Signature) -> bool:
    if sig.prehashed is not None:
        algorithm = _PREHASH.get(sig.prehashed[0])
        if algorithm is None:
            return False
        try:
            key.verify(sig.signature, sig.prehashed[1], ec.ECDSA(utils.Prehashed(algorithm())))
            return True
        except InvalidSignature:
            return False
    for algorithm in _HASHES:
        try:
            key.verify(sig.signature, sig.signed, ec.ECDSA(algorithm()))
            return True
        except InvalidSignature:
            continue
    return False


def _verify_rsa(key: rsa.RSAPublicKey, sig: Signature) -> bool:
    candidates: list[tuple[bytes, hashes.HashAlgorithm | utils.Prehashed, hashes.HashAlgorithm]]
    if sig.prehashed is not None:
        algorithm = _PREHASH.get(sig.prehashed[0])
        if algorithm is None:
            return False
        candidates = [(sig.prehashed[1], utils.Prehashed(algorithm()), algorithm())]
    else:
        candidates = [(sig.signed, a(), a()) for a in _HASHES]
    for data, mode, plain in candidates:
        pads: list[padding.AsymmetricPadding] = [
            padding.PKCS1v15(),
            padding.PSS(mgf=padding.MGF1(plain), salt_length=padding.PSS.AUTO),
        ]
        for pad in pads:
            try:
                key.verify(sig.signature, data, pad, mode)
                return True
            except InvalidSignature:
                continue
    return False


def verify_signature(public: PublicKey, sig: Signature) -> bool:
    """Whether ``sig``'s signature over its signed bytes verifies with ``public``."""
    if sig.problem is not None or not sig.signature:
        return False
    if isinstance(public, ec.EllipticCurvePublicKey):
        return _verify_ec(public, sig)
    if isinstance(public, rsa.RSAPublicKey):
        return _verify_rsa(public, sig)
    if sig.prehashed is not None:
        return False  # Ed25519 signs messages, never digests
    try:
        public.verify(sig.signature, sig.signed)
        return True
    except InvalidSignature:
        return False
