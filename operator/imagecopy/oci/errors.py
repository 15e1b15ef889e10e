"""The error tree of the registry client and the copy engine.

Errors carry facts, not verdicts: a ``RegistryError`` says which registry answered, to which
operation, on which side of the copy, with which HTTP status and which registry error code
(parsed from the OCI error body). What a failure *means* for an ``ImageCopy`` — its
condition reason, and whether it is retried soon or only after a change — is decided in one
table in ``imagecopy.controller.failures`` (docs/reference.md §3). Messages are one
readable sentence and never carry a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "DigestMismatch",
    "Forbidden",
    "ImageCopyError",
    "InsufficientStorage",
    "InvalidReference",
    "InvalidSpec",
    "LimitExceeded",
    "ManifestTooLarge",
    "NotFound",
    "PushRejected",
    "RateLimited",
    "RegistryError",
    "RegistryNotAllowed",
    "RegistryUnreachable",
    "ScopeRefused",
    "SecretInvalid",
    "SecretNotFound",
    "Side",
    "SignatureError",
    "SignatureInvalid",
    "SignatureMissing",
    "TLSError",
    "TagConflict",
    "Unauthorized",
    "UnsupportedMediaType",
]


class Side(StrEnum):
    """Which end of a copy a registry request was for."""

    SOURCE = "source"
    DESTINATION = "destination"


class ImageCopyError(Exception):
    """Base of every error imagecopy raises on purpose."""

    #: A short lower-case label for CLI output: "<label>: <message>".
    label: str = "internal error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidReference(ImageCopyError):
    label = "invalid reference"


class InvalidSpec(ImageCopyError):
    label = "invalid input"


class SecretNotFound(ImageCopyError):
    label = "secret not found"


class SecretInvalid(ImageCopyError):
    label = "secret invalid"


class SignatureError(ImageCopyError):
    """The verification gate refused the source; ``verdict`` is what it found (the
    ``status.verification`` object, ``verified: false``)."""

    def __init__(self, message: str, *, verdict: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.verdict = dict(verdict) if verdict is not None else None


class SignatureMissing(SignatureError):
    """``verify`` asked for a signature and the source has none (yet): signing often
    follows the push by seconds, so this is retried."""

    label = "signature missing"


class SignatureInvalid(SignatureError):
    """The source has signatures, and none verifies with a trusted key for its digest."""

    label = "signature invalid"


class RegistryNotAllowed(ImageCopyError):
    label = "registry not allowed"


class TagConflict(ImageCopyError):
    label = "tag conflict"


class RegistryError(ImageCopyError):
    """An answer (or the lack of one) from a registry, with the protocol facts."""

    label = "registry error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        operation: str | None = None,
        side: Side | None = None,
        registry: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The HTTP status, when an answer came back.
        self.status = status
        #: The first registry error code of the OCI error body (``MANIFEST_UNKNOWN``,
        #: ``DENIED``, ``TOOMANYREQUESTS``...), upper-case.
        self.code = code
        #: What was being done: ``get manifest``, ``mount blob``, ``upload blob``...
        self.operation = operation
        self.side = side
        self.registry = registry

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (the protocol's view: no answer,
        408, 429 or a 5xx)."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


class Unauthorized(RegistryError):
    label = "unauthorized"

    @property
    def retryable(self) -> bool:
        return False


class ScopeRefused(Unauthorized):
    """The token service refuses a scope a request could do without (a mount source's
    ``pull``): the request was not sent. Caught where the request is made optional (a mount
    candidate is dropped); it never ends a copy."""

    label = "scope refused"


class Forbidden(RegistryError):
    label = "forbidden"

    @property
    def retryable(self) -> bool:
        return False


class NotFound(RegistryError):
    label = "not found"

    @property
    def retryable(self) -> bool:
        return False


class RegistryUnreachable(RegistryError):
    """No usable answer: connect error, timeout, reset, 408 or a 5xx."""

    label = "registry unreachable"

    @property
    def retryable(self) -> bool:
        return True


class InsufficientStorage(RegistryUnreachable):
    """507: the registry has no space for a write. Retried like an unreachable registry
    (space may be freed), but named for what it is."""

    label = "insufficient storage"


class TLSError(RegistryError):
    label = "TLS error"

    @property
    def retryable(self) -> bool:
        return False


class RateLimited(RegistryError):
    label = "rate limited"

    @property
    def retryable(self) -> bool:
        return True


class PushRejected(RegistryError):
    """The destination refused a write (a 4xx to a PUT, POST or PATCH)."""

    label = "push rejected"

    @property
    def retryable(self) -> bool:
        return False


class DigestMismatch(RegistryError):
    label = "digest mismatch"

    @property
    def retryable(self) -> bool:
        return False


class UnsupportedMediaType(RegistryError):
    label = "unsupported media type"

    @property
    def retryable(self) -> bool:
        return False


class ManifestTooLarge(RegistryError):
    label = "manifest too large"

    @property
    def retryable(self) -> bool:
        return False


class LimitExceeded(RegistryError):
    """What a registry sent passes a bound (``oci.bounds``): an index with too many children,
    indexes nested too deep, too many manifests, blobs or referrers in one copy, response
    headers too long. Only a change (of the image, or of the limit) helps."""

    label = "limit exceeded"

    @property
    def retryable(self) -> bool:
        return False
