"""Status and condition mapping: pure functions, no cluster."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from imagecopy.controller.kube import KubernetesUnavailable
from imagecopy.controller.status import (
    apply_patch,
    classify,
    condition,
    failure_patch,
    is_settled,
    progressing_patch,
    retry_delay,
    set_condition,
    success_patch,
    suspended_patch,
    totals_after,
)
from imagecopy.copy.report import CopyReport, Outcome
from imagecopy.oci import errors

T0 = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def copied_report(**kw: object) -> CopyReport:
    report = CopyReport(
        source="reg.example/dev/web:1",
        destination="reg.example/prod/web:1",
        source_digest="sha256:" + "a" * 64,
        destination_digest="sha256:" + "a" * 64,
        destination_pinned="reg.example/prod/web@sha256:" + "a" * 64,
        outcome=Outcome.COPIED,
        manifests_copied=1,
        blobs_mounted=3,
        blobs_existing=1,
        bytes_mounted=3000,
        bytes_existing=1000,
        requests=7,
        duration_seconds=0.25,
        start_time=T0,
    )
    for key, value in kw.items():
        setattr(report, key, value)
    return report


def conditions_by_type(status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["type"]: c for c in status["conditions"]}  # type: ignore[index,union-attr,attr-defined]


def test_transition_time_changes_only_when_status_flips() -> None:
    conds = set_condition([], "Ready", "False", "Copying", "m", 1, T0)
    assert conds[0]["lastTransitionTime"] == "2026-11-27T18:00:00Z"
    same = set_condition(conds, "Ready", "False", "SourceNotFound", "other", 2, T1)
    assert same[0]["lastTransitionTime"] == "2026-11-27T18:00:00Z"
    assert same[0]["reason"] == "SourceNotFound"
    assert same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Ready", "True", "Copied", "ok", 2, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-11-27T18:05:00Z"


def test_success_after_copy_sets_ready_last_copy_totals_and_pinned_image() -> None:
    patch = success_patch({}, copied_report(), 3, T0)
    conds = conditions_by_type(patch)
    assert [c["type"] for c in patch["conditions"]] == ["Ready", "Reconciling", "Stalled"]
    assert conds["Ready"]["status"] == "True"
    assert conds["Ready"]["reason"] == "Copied"
    assert (
        conds["Ready"]["message"]
        == "4 blobs: 3 mounted, 1 existing, 0 uploaded; 3.9 KiB not transferred"
    )
    assert conds["Reconciling"]["status"] == "False"
    assert conds["Stalled"]["status"] == "False"
    assert patch["observedGeneration"] == 3
    assert patch["lastSyncTime"] == "2026-11-27T18:00:00Z"
    assert patch["lastCopy"]["blobs"]["mounted"] == 3
    assert patch["lastCopy"]["bytesSaved"] == 4000
    assert patch["totals"] == {"copies": 1, "mountedBlobs": 3, "bytesSaved": 4000}
    assert patch["destinationImage"].endswith("@sha256:" + "a" * 64)


def test_totals_accumulate_across_copies_and_ignore_no_ops() -> None:
    first = apply_patch({}, success_patch({}, copied_report(), 1, T0))
    second = apply_patch(first, success_patch(first, copied_report(), 1, T1))
    assert second["totals"] == {"copies": 2, "mountedBlobs": 6, "bytesSaved": 8000}
    noop = copied_report(outcome=Outcome.UP_TO_DATE)
    third_patch = success_patch(second, noop, 1, T1)
    assert "lastCopy" not in third_patch  # only a copy that moved anything replaces it
    assert "totals" not in third_patch
    third = apply_patch(second, third_patch)
    assert third["totals"]["copies"] == 2
    assert third["lastCopy"] == second["lastCopy"]
    assert totals_after(None, noop) == {"copies": 0, "mountedBlobs": 0, "bytesSaved": 0}


def test_up_to_date_is_ready_with_reason_up_to_date_and_fresh_sync_time() -> None:
    before = apply_patch({}, success_patch({}, copied_report(), 1, T0))
    patch = success_patch(before, copied_report(outcome=Outcome.UP_TO_DATE), 1, T1)
    ready = condition(patch, "Ready")
    assert ready is not None and ready["reason"] == "UpToDate"
    assert ready["lastTransitionTime"] == "2026-11-27T18:00:00Z"  # stayed True
    assert patch["lastSyncTime"] == "2026-11-27T18:05:00Z"


def test_needs_a_change_failures_stall() -> None:
    for exc in (
        errors.InvalidSpec("bad"),
        errors.SecretNotFound("Secret x not found"),
        errors.SecretInvalid("bad secret"),
        errors.Unauthorized("401"),
        errors.Forbidden("403"),
        errors.SourceNotFound("gone"),
        errors.TagConflict("moved"),
        errors.RegistryNotAllowed("no"),
        errors.TLSError("tls"),
        errors.DigestMismatch("dm"),
        errors.UnsupportedMediaType("schema1"),
        errors.ManifestTooLarge("big"),
        errors.PushRejected("no"),
    ):
        failure = classify(exc)
        assert failure.stalled, exc
        assert failure.reason == exc.reason
        patch = failure_patch({}, failure, 2, T0)
        conds = conditions_by_type(patch)
        assert conds["Ready"]["status"] == "False"
        assert conds["Ready"]["reason"] == exc.reason
        assert conds["Stalled"]["status"] == "True"
        assert conds["Reconciling"]["status"] == "False"
        assert patch["observedGeneration"] == 2


def test_transient_failures_keep_reconciling() -> None:
    for exc, reason in (
        (errors.RegistryUnreachable("down"), "RegistryUnreachable"),
        (errors.RateLimited("429"), "RateLimited"),
        (KubernetesUnavailable("api down"), "InternalError"),
        (errors.RegistryError("weird 400"), "InternalError"),
    ):
        failure = classify(exc)
        assert not failure.stalled
        assert failure.reason == reason
        conds = conditions_by_type(failure_patch({}, failure, 1, T0))
        assert conds["Reconciling"]["status"] == "True"
        assert conds["Stalled"]["status"] == "False"
        assert conds["Ready"]["status"] == "False"


def test_unknown_exceptions_are_internal_errors_without_their_message() -> None:
    failure = classify(RuntimeError("Authorization: Basic c2VjcmV0"))
    assert failure.reason == "InternalError"
    assert not failure.stalled
    assert "c2VjcmV0" not in failure.message
    assert "RuntimeError" in failure.message


def test_progress_and_suspend() -> None:
    ready = apply_patch({}, success_patch({}, copied_report(), 1, T0))
    progress = progressing_patch(ready, 2, T1, "Copying a to b")
    conds = conditions_by_type(progress)
    assert conds["Reconciling"]["status"] == "True"
    assert conds["Ready"]["status"] == "Unknown"
    assert progress["observedGeneration"] == 2
    assert not is_settled(apply_patch(ready, progress), 2)
    assert is_settled(ready, 1)
    assert not is_settled(ready, 2)

    suspended = conditions_by_type(suspended_patch(ready, 2, T1))
    assert suspended["Ready"]["reason"] == "Suspended"
    assert suspended["Ready"]["status"] == "True"  # the destination is what it was
    assert suspended["Reconciling"]["status"] == "False"
    assert suspended["Stalled"]["status"] == "False"


def test_foreign_conditions_are_kept() -> None:
    status = {"conditions": [{"type": "Custom", "status": "True", "reason": "X", "message": ""}]}
    patch = success_patch(status, copied_report(), 1, T0)
    assert [c["type"] for c in patch["conditions"]] == ["Ready", "Reconciling", "Stalled", "Custom"]


def test_retry_delay_grows_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, 2.0, 60.0, rng) for n in range(1, 10)]
    assert 1.0 <= delays[0] <= 2.0
    assert 2.0 <= delays[1] <= 4.0
    assert all(30.0 <= d <= 60.0 for d in delays[5:])


def test_apply_patch_merges_objects_and_replaces_lists() -> None:
    status = {"a": {"x": 1, "y": 2}, "l": [1, 2], "k": 1}
    assert apply_patch(status, {"a": {"y": 3}, "l": [3], "k": None}) == {
        "a": {"x": 1, "y": 3},
        "l": [3],
    }
