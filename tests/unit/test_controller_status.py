"""Status and conditions: pure functions of (previous status, what happened, now)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagecopy.controller.failures import Failure, failure_for
from imagecopy.controller.status import (
    apply_merge_patch,
    copying_patch,
    failure_patch,
    find_condition,
    format_timestamp,
    is_current,
    is_ready_for,
    is_suspended_for,
    parse_timestamp,
    success_patch,
    suspended_patch,
    totals_after,
    true_conditions,
    with_condition,
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
    conds = with_condition([], "Ready", "False", "Copying", "m", 1, T0)
    assert conds[0]["lastTransitionTime"] == "2026-11-27T18:00:00Z"
    same = with_condition(conds, "Ready", "False", "SourceNotFound", "other", 2, T1)
    assert same[0]["lastTransitionTime"] == "2026-11-27T18:00:00Z"
    assert same[0]["reason"] == "SourceNotFound"
    assert same[0]["observedGeneration"] == 2
    flipped = with_condition(same, "Ready", "True", "Copied", "ok", 2, T1)
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


def test_a_copy_that_mounted_nothing_says_why_in_ready_and_last_copy() -> None:
    report = copied_report(
        blobs_mounted=0,
        bytes_mounted=0,
        blobs_uploaded=3,
        bytes_uploaded=3000,
        mounts_attempted=3,
        mounts_declined={202: 3},
    )
    why = "registry answered 202 to cross-repository mounts"
    patch = apply_merge_patch({}, success_patch({}, report, 1, T0))
    assert conditions_by_type(patch)["Ready"]["message"] == (
        f"4 blobs: 0 mounted, 1 existing, 3 uploaded; 1000 B not transferred; not mounted: {why}"
    )
    assert patch["lastCopy"]["mount"] == {"attempted": 3, "refused": 3, "reason": why}
    # The next copy mounts everything: the old reason does not linger.
    again = apply_merge_patch(patch, success_patch(patch, copied_report(mounts_attempted=3), 1, T1))
    assert again["lastCopy"]["mount"] == {"attempted": 3, "refused": 0}


def test_totals_accumulate_across_copies_and_ignore_no_ops() -> None:
    first = apply_merge_patch({}, success_patch({}, copied_report(), 1, T0))
    second = apply_merge_patch(first, success_patch(first, copied_report(), 1, T1))
    assert second["totals"] == {"copies": 2, "mountedBlobs": 6, "bytesSaved": 8000}
    noop = copied_report(outcome=Outcome.UP_TO_DATE)
    third_patch = success_patch(second, noop, 1, T1)
    assert "lastCopy" not in third_patch  # only a copy that moved anything replaces it
    assert "totals" not in third_patch
    third = apply_merge_patch(second, third_patch)
    assert third["totals"]["copies"] == 2
    assert third["lastCopy"] == second["lastCopy"]
    assert totals_after(None, noop) == {"copies": 0, "mountedBlobs": 0, "bytesSaved": 0}


def test_up_to_date_is_ready_with_reason_up_to_date_and_fresh_sync_time() -> None:
    before = apply_merge_patch({}, success_patch({}, copied_report(), 1, T0))
    patch = success_patch(before, copied_report(outcome=Outcome.UP_TO_DATE), 1, T1)
    ready = find_condition(patch, "Ready")
    assert ready is not None and ready["reason"] == "UpToDate"
    assert ready["lastTransitionTime"] == "2026-11-27T18:00:00Z"  # stayed True
    assert patch["lastSyncTime"] == "2026-11-27T18:05:00Z"


@pytest.mark.parametrize(
    "exc",
    [
        errors.SecretNotFound("Secret x not found"),
        errors.NotFound("gone", status=404, side=errors.Side.SOURCE),
        errors.TagConflict("moved"),
    ],
)
def test_a_stalled_failure_sets_ready_false_and_stalled_true(exc: Exception) -> None:
    failure = failure_for(exc)
    patch = failure_patch({}, failure, 2, T0)
    conds = conditions_by_type(patch)
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == failure.reason
    assert conds["Ready"]["message"] == failure.message
    assert conds["Stalled"]["status"] == "True"
    assert conds["Stalled"]["message"] == failure.message
    assert conds["Reconciling"]["status"] == "False"
    assert patch["observedGeneration"] == 2
    assert set(patch) == {"observedGeneration", "conditions"}  # the last success stays


def test_a_transient_failure_keeps_reconciling_with_a_retrying_message() -> None:
    failure = Failure("RegistryUnreachable", "reg.example refused the connection", stalled=False)
    conds = conditions_by_type(failure_patch({}, failure, 1, T0))
    assert conds["Ready"]["status"] == "False"
    assert conds["Reconciling"]["status"] == "True"
    assert conds["Reconciling"]["message"] == "Retrying: reg.example refused the connection"
    assert conds["Stalled"]["status"] == "False"
    assert {c["reason"] for c in conds.values()} == {"RegistryUnreachable"}


def test_status_readers() -> None:
    ready = apply_merge_patch({}, success_patch({}, copied_report(), 1, T0))
    assert is_current(ready, 1) and not is_current(ready, 2) and not is_current(None, 0)
    assert true_conditions(ready) == {"Ready"}
    assert true_conditions(None) == frozenset()
    suspended = apply_merge_patch(ready, suspended_patch(ready, 1, T1))
    assert is_suspended_for(suspended, 1)
    assert not is_suspended_for(suspended, 2)
    assert not is_suspended_for(ready, 1)
    assert parse_timestamp(format_timestamp(T1)) == T1
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None


def test_progress_and_suspend() -> None:
    ready = apply_merge_patch({}, success_patch({}, copied_report(), 1, T0))
    progress = copying_patch(ready, 2, T1, "Copying a to b")
    conds = conditions_by_type(progress)
    assert conds["Reconciling"]["status"] == "True"
    assert conds["Ready"]["status"] == "Unknown"
    assert progress["observedGeneration"] == 2
    assert not is_ready_for(apply_merge_patch(ready, progress), 2)
    assert is_ready_for(ready, 1)
    assert not is_ready_for(ready, 2)

    suspended = conditions_by_type(suspended_patch(ready, 2, T1))
    assert suspended["Ready"]["reason"] == "Suspended"
    assert suspended["Ready"]["status"] == "True"  # the destination is what it was
    assert suspended["Reconciling"]["status"] == "False"
    assert suspended["Stalled"]["status"] == "False"


def test_foreign_conditions_are_kept() -> None:
    status = {"conditions": [{"type": "Custom", "status": "True", "reason": "X", "message": ""}]}
    patch = success_patch(status, copied_report(), 1, T0)
    assert [c["type"] for c in patch["conditions"]] == ["Ready", "Reconciling", "Stalled", "Custom"]


def test_apply_merge_patch_merges_objects_and_replaces_lists() -> None:
    status = {"a": {"x": 1, "y": 2}, "l": [1, 2], "k": 1}
    assert apply_merge_patch(status, {"a": {"y": 3}, "l": [3], "k": None}) == {
        "a": {"x": 1, "y": 3},
        "l": [3],
    }
