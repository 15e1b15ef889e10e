"""The error tree of the registry client and the copy engine.

Every error knows the condition reason it maps to (API.md §1) and whether retrying later,
without a change of spec or credentials, can help (`transient`). Messages are one readable
sentence and never carry a credential.
"""

from __future__ import annotations

__all__ = [
    "DigestMismatch",
    "Forbidden",
    "ImageCopyError",
    "InvalidReference",
    "InvalidSpec",
    "ManifestTooLarge",
    "NotFound",
    "PushRejected",
    "RateLimited",
    "RegistryError",
    "RegistryNotAllowed",
    "RegistryUnreachable",
    "SecretInvalid",
    "SecretNotFound",
    "SourceNotFound",
    "TLSError",
    "TagConflict",
    "Unauthorized",
    "UnsupportedMediaType",
]


class ImageCopyError(Exception):
    """Base of every error imagecopy raises on purpose."""

    reason: str = "InternalError"
    #: A short lower-case label for CLI output: "<label>: <message>".
    label: str = "internal error"
    #: True when the same request may succeed later without any change.
    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidReference(ImageCopyError):
    reason = "InvalidSpec"
    label = "invalid reference"


class InvalidSpec(ImageCopyError):
    reason = "InvalidSpec"
    label = "invalid input"


class SecretNotFound(ImageCopyError):
    reason = "SecretNotFound"
    label = "secret not found"


class SecretInvalid(ImageCopyError):
    reason = "SecretInvalid"
    label = "secret invalid"


class RegistryNotAllowed(ImageCopyError):
    reason = "RegistryNotAllowed"
    label = "registry not allowed"


class RegistryError(ImageCopyError):
    """An answer (or the lack of one) from a registry."""

    reason = "InternalError"
    label = "registry error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unauthorized(RegistryError):
    reason = "Unauthorized"
    label = "unauthorized"


class Forbidden(RegistryError):
    reason = "Forbidden"
    label = "forbidden"


class NotFound(RegistryError):
    reason = "SourceNotFound"
    label = "not found"


class SourceNotFound(NotFound):
    reason = "SourceNotFound"
    label = "source not found"


class RegistryUnreachable(RegistryError):
    reason = "RegistryUnreachable"
    label = "registry unreachable"
    transient = True


class TLSError(RegistryError):
    reason = "TLSError"
    label = "TLS error"


class RateLimited(RegistryError):
    reason = "RateLimited"
    label = "rate limited"
    transient = True


class PushRejected(RegistryError):
    reason = "PushRejected"
    label = "push rejected"


class TagConflict(ImageCopyError):
    reason = "TagConflict"
    label = "tag conflict"


class DigestMismatch(RegistryError):
    reason = "DigestMismatch"
    label = "digest mismatch"


class UnsupportedMediaType(RegistryError):
    reason = "UnsupportedMediaType"
    label = "unsupported media type"


class ManifestTooLarge(RegistryError):
    reason = "ManifestTooLarge"
    label = "manifest too large"
