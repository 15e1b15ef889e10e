"""The one table from exceptions to condition reasons and stalled/transient."""

from __future__ import annotations

import pytest

from imagecopy.controller.deadline import CopyTimeout
from imagecopy.controller.failures import MESSAGE_LIMIT, RULES, failure_for
from imagecopy.controller.kube import KubernetesUnavailable
from imagecopy.oci import errors
from imagecopy.oci.errors import Side

#: The failure reasons of the contract (docs/reference.md §3); the others (Copied, UpToDate,
#: TagExists, Suspended, Copying) are not failures.
CONTRACT_FAILURE_REASONS = {
    "InvalidSpec",
    "SecretNotFound",
    "SecretInvalid",
    "Unauthorized",
    "Forbidden",
    "SourceNotFound",
    "RegistryUnreachable",
    "InsufficientStorage",
    "TLSError",
    "RateLimited",
    "PushRejected",
    "TagConflict",
    "DigestMismatch",
    "UnsupportedMediaType",
    "ManifestTooLarge",
    "LimitExceeded",
    "RegistryNotAllowed",
    "InternalError",
    "CopyTimeout",
    "SignatureMissing",
    "SignatureInvalid",
}
TRANSIENT_REASONS = {
    "RegistryUnreachable",
    "InsufficientStorage",
    "RateLimited",
    "InternalError",
    "CopyTimeout",
    "SignatureMissing",
}

SRC = Side.SOURCE
DST = Side.DESTINATION


def registry_error(cls: type[errors.RegistryError], side: Side | None = None) -> Exception:
    return cls("reg.example answered", status=400, operation="get manifest", side=side)


ROWS: list[tuple[BaseException, str, bool]] = [
    (errors.InvalidSpec("spec.source.image is required"), "InvalidSpec", True),
    (errors.InvalidReference("the tag 'x y' is invalid"), "InvalidSpec", True),
    (errors.SecretNotFound("Secret pull not found in namespace ns"), "SecretNotFound", True),
    (errors.SecretInvalid("Secret ns/pull has type Opaque"), "SecretInvalid", True),
    (errors.RegistryNotAllowed("the source registry is not allowed"), "RegistryNotAllowed", True),
    (errors.TagConflict("prod/web:1 points at another digest"), "TagConflict", True),
    (KubernetesUnavailable("reading Secret ns/pull failed with 500"), "InternalError", False),
    (registry_error(errors.Unauthorized, SRC), "Unauthorized", True),
    (registry_error(errors.Unauthorized, DST), "Unauthorized", True),
    (registry_error(errors.Forbidden, DST), "Forbidden", True),
    (registry_error(errors.NotFound, SRC), "SourceNotFound", True),
    (registry_error(errors.NotFound), "SourceNotFound", True),
    (registry_error(errors.NotFound, DST), "PushRejected", True),
    (registry_error(errors.RegistryUnreachable, SRC), "RegistryUnreachable", False),
    (registry_error(errors.RegistryUnreachable, DST), "RegistryUnreachable", False),
    (registry_error(errors.InsufficientStorage, DST), "InsufficientStorage", False),
    (registry_error(errors.RateLimited, SRC), "RateLimited", False),
    (registry_error(errors.LimitExceeded, SRC), "LimitExceeded", True),
    (registry_error(errors.TLSError, SRC), "TLSError", True),
    (registry_error(errors.PushRejected, DST), "PushRejected", True),
    (registry_error(errors.DigestMismatch, SRC), "DigestMismatch", True),
    (registry_error(errors.UnsupportedMediaType, SRC), "UnsupportedMediaType", True),
    (registry_error(errors.ManifestTooLarge, SRC), "ManifestTooLarge", True),
    (registry_error(errors.RegistryError, SRC), "InternalError", False),
    (errors.ImageCopyError("no token in the token service's answer"), "InternalError", False),
    (RuntimeError("boom"), "InternalError", False),
    (CopyTimeout("the copy made no progress for 2m"), "CopyTimeout", False),
    (errors.SignatureMissing("r/web@sha256:… has no cosign signature"), "SignatureMissing", False),
    (errors.SignatureInvalid("none of the 1 signatures verifies"), "SignatureInvalid", True),
]


@pytest.mark.parametrize(("exc", "reason", "stalled"), ROWS, ids=lambda v: repr(v)[:60])
def test_each_error_maps_to_its_reason_and_kind(
    exc: BaseException, reason: str, stalled: bool
) -> None:
    failure = failure_for(exc)
    assert failure.reason == reason
    assert failure.stalled is stalled


def test_every_failure_reason_of_the_contract_is_covered_by_a_row() -> None:
    assert {reason for _, reason, _ in ROWS} == CONTRACT_FAILURE_REASONS


def test_the_table_names_only_reasons_of_the_contract_with_their_documented_kind() -> None:
    for rule in RULES:
        assert rule.reason in CONTRACT_FAILURE_REASONS, rule
        assert rule.stalled is (rule.reason not in TRANSIENT_REASONS), rule


def test_no_rule_is_shadowed_by_an_earlier_one() -> None:
    for i, later in enumerate(RULES):
        for earlier in RULES[:i]:
            covers_side = earlier.side is None or earlier.side is later.side
            assert not (issubclass(later.error, earlier.error) and covers_side), (earlier, later)


def test_a_destination_404_is_push_rejected_not_source_not_found() -> None:
    exc = errors.NotFound(
        "reg.example/prod/web: the upload session is gone",
        status=404,
        code="BLOB_UPLOAD_UNKNOWN",
        operation="upload blob",
        side=Side.DESTINATION,
        registry="reg.example",
    )
    failure = failure_for(exc)
    assert failure.reason == "PushRejected"
    assert failure.stalled
    assert failure.message == "reg.example/prod/web: the upload session is gone"


def test_messages_are_one_bounded_line() -> None:
    failure = failure_for(errors.InvalidSpec("spec.interval:\n  " + "x" * 5000))
    assert "\n" not in failure.message
    assert failure.message.startswith("spec.interval: xxx")
    assert len(failure.message) == MESSAGE_LIMIT
    assert failure.message.endswith("...")


def test_an_empty_message_falls_back_to_the_label() -> None:
    assert failure_for(errors.TLSError("  ")).message == "TLS error"


def test_unexpected_exceptions_name_only_their_type() -> None:
    failure = failure_for(KeyError("Authorization: Basic c2VjcmV0"))
    assert failure.reason == "InternalError"
    assert not failure.stalled
    assert "c2VjcmV0" not in failure.message
    assert failure.message == "Internal error (KeyError); the operator log has the details."
