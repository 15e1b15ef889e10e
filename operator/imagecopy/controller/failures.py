"""What a failed attempt means for an ImageCopy: its condition reason, its message, and
whether only a change can help (Stalled) or another try soon may (transient).

Errors say what happened (``oci.errors``: which operation, which side, which status); this
module says what it means, in one table (docs/reference.md §3, "Reasons"). Rows are matched
in order, the first whose exception type (and side, when the row names one) fits wins, so a
subclass comes before its base.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..oci.errors import (
    DigestMismatch,
    Forbidden,
    ImageCopyError,
    InsufficientStorage,
    InvalidReference,
    InvalidSpec,
    LimitExceeded,
    ManifestTooLarge,
    NotFound,
    PushRejected,
    RateLimited,
    RegistryError,
    RegistryNotAllowed,
    RegistryUnreachable,
    SecretInvalid,
    SecretNotFound,
    Side,
    SignatureInvalid,
    SignatureMissing,
    TagConflict,
    TLSError,
    Unauthorized,
    UnsupportedMediaType,
)
from .deadline import CopyTimeout
from .kube import KubernetesUnavailable

__all__ = [
    "CAPPED_AT_STALLED_RETRY",
    "MESSAGE_LIMIT",
    "RULES",
    "Failure",
    "FailureRule",
    "failure_for",
]

#: Condition messages are at most this long (docs/reference.md §3).
MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Failure:
    """A failed attempt, ready for a condition: reason, one safe sentence, and its kind."""

    reason: str
    message: str
    #: True when only a change of spec, Secret, permissions or settings can help (kstatus
    #: Stalled); False when the same attempt may succeed later (retried with backoff).
    stalled: bool


@dataclass(frozen=True)
class FailureRule:
    """One row of the table: exceptions of ``error`` (on ``side``, when set) mean ``reason``."""

    error: type[BaseException]
    reason: str
    stalled: bool
    side: Side | None = None

    def matches(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.error):
            return False
        return self.side is None or getattr(exc, "side", None) is self.side


#: Transient reasons whose backoff never waits longer than a Stalled object would: a
#: signature pushed seconds after the image is picked up soon, and one pushed an hour later
#: at the stalled cadence.
CAPPED_AT_STALLED_RETRY = frozenset({"SignatureMissing"})

_STALLED = True
_TRANSIENT = False

RULES: tuple[FailureRule, ...] = (
    # The spec, the Secrets and the settings: only an edit helps.
    FailureRule(InvalidSpec, "InvalidSpec", _STALLED),
    FailureRule(InvalidReference, "InvalidSpec", _STALLED),
    FailureRule(SecretNotFound, "SecretNotFound", _STALLED),
    FailureRule(SecretInvalid, "SecretInvalid", _STALLED),
    FailureRule(RegistryNotAllowed, "RegistryNotAllowed", _STALLED),
    FailureRule(TagConflict, "TagConflict", _STALLED),
    # spec.verify: no signature yet (CI often signs seconds after the push) is retried;
    # signatures that do not verify need a new signature or another key.
    FailureRule(SignatureMissing, "SignatureMissing", _TRANSIENT),
    FailureRule(SignatureInvalid, "SignatureInvalid", _STALLED),
    # The Kubernetes API failing a read the copy needs: try again.
    FailureRule(KubernetesUnavailable, "InternalError", _TRANSIENT),
    # Cancelled at its deadline or for want of progress: the next try resumes the copy.
    FailureRule(CopyTimeout, "CopyTimeout", _TRANSIENT),
    # Registry answers.
    FailureRule(Unauthorized, "Unauthorized", _STALLED),
    FailureRule(Forbidden, "Forbidden", _STALLED),
    # A 404 while writing the destination (an upload session gone, a repository the
    # registry will not create) is the destination refusing the push, not a missing source.
    FailureRule(NotFound, "PushRejected", _STALLED, side=Side.DESTINATION),
    FailureRule(NotFound, "SourceNotFound", _STALLED),
    FailureRule(InsufficientStorage, "InsufficientStorage", _TRANSIENT),
    FailureRule(RegistryUnreachable, "RegistryUnreachable", _TRANSIENT),
    FailureRule(RateLimited, "RateLimited", _TRANSIENT),
    FailureRule(TLSError, "TLSError", _STALLED),
    FailureRule(PushRejected, "PushRejected", _STALLED),
    FailureRule(DigestMismatch, "DigestMismatch", _STALLED),
    FailureRule(UnsupportedMediaType, "UnsupportedMediaType", _STALLED),
    FailureRule(ManifestTooLarge, "ManifestTooLarge", _STALLED),
    # A bound of docs/reference.md §4 ("Verification and limits"): the image (or the limit)
    # has to change.
    FailureRule(LimitExceeded, "LimitExceeded", _STALLED),
    # An answer the client cannot use (no token, an unexpected 4xx on a read), and any
    # other error raised on purpose: the operator's problem, tried again.
    FailureRule(RegistryError, "InternalError", _TRANSIENT),
    FailureRule(ImageCopyError, "InternalError", _TRANSIENT),
)


def failure_for(exc: BaseException) -> Failure:
    """What ``exc`` means for the object's conditions and schedule.

    ``ImageCopyError`` messages are written to be shown (one sentence, no credentials).
    Anything else is an ``InternalError`` whose message names only the exception type, since
    a foreign message may carry URLs, headers or bodies.
    """
    if isinstance(exc, ImageCopyError):
        message = _sentence(exc.message) or _sentence(exc.label)
        for rule in RULES:
            if rule.matches(exc):
                return Failure(rule.reason, message, rule.stalled)
    return Failure(
        "InternalError",
        f"Internal error ({type(exc).__name__}); the operator log has the details.",
        stalled=False,
    )


def _sentence(text: str) -> str:
    """``text`` on one line, at most ``MESSAGE_LIMIT`` characters."""
    text = " ".join(text.split())
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 3] + "..."
    return text
