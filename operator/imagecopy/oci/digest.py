"""Content digests: compute and verify sha256/sha512 digests of bytes and streams, and tell
a digest fit to name content (and to go into a URL) from any other text."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .errors import DigestMismatch, UnsupportedMediaType

__all__ = ["DigestVerifier", "compute_digest", "is_digest", "verify_bytes"]

_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
#: The only digests content is named by: the algorithm and exactly its length of lower-case hex.
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def is_digest(text: object) -> bool:
    """Whether ``text`` is ``sha256:<64 lower-case hex>`` or ``sha512:<128 lower-case hex>``:
    the digests a descriptor, a header or a URL path may carry (nothing else reaches a URL)."""
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def _hasher(algorithm: str) -> Any:
    try:
        return _ALGORITHMS[algorithm]()
    except KeyError:
        raise UnsupportedMediaType(
            f"digest algorithm {algorithm!r} is not supported (sha256 and sha512 are)"
        ) from None


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    h = _hasher(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"


def verify_bytes(data: bytes, expected: str, what: str) -> None:
    algorithm = expected.split(":", 1)[0]
    actual = compute_digest(data, algorithm)
    if actual != expected:
        raise DigestMismatch(f"{what} has digest {actual}, expected {expected}")


class DigestVerifier:
    """Hashes a stream incrementally and checks digest and size at the end."""

    def __init__(self, expected: str, size: int | None) -> None:
        self.expected = expected
        self.size = size
        self._hash = _hasher(expected.split(":", 1)[0])
        self.seen = 0

    def update(self, chunk: bytes) -> None:
        self.count(len(chunk))
        self.hash(chunk)

    def count(self, nbytes: int) -> None:
        """The size half of ``update``: ``DigestMismatch`` once the stream is too long."""
        self.seen += nbytes
        if self.size is not None and self.seen > self.size:
            raise DigestMismatch(
                f"blob {self.expected} is longer than its descriptor's {self.size} bytes"
            )

    def hash(self, chunk: bytes) -> None:
        """The digest half of ``update``. hashlib lets go of the GIL for buffers over 2 KiB,
        so this may run in a worker thread, one call at a time and in stream order."""
        self._hash.update(chunk)

    def verify(self) -> None:
        if self.size is not None and self.seen != self.size:
            raise DigestMismatch(
                f"blob {self.expected} has {self.seen} bytes, its descriptor says {self.size}"
            )
        actual = f"{self.expected.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if actual != self.expected:
            raise DigestMismatch(f"blob content has digest {actual}, expected {self.expected}")
