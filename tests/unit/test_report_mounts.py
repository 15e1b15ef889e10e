"""``CopyReport``'s mount counts and the sentence that explains a copy that mounted nothing."""

from __future__ import annotations

from imagecopy.copy import CopyReport
from imagecopy.copy.report import MountPolicy
from imagecopy.oci.blobs import BlobOutcome, BlobPlacement


def _report(policy: MountPolicy, *placements: BlobPlacement) -> CopyReport:
    r = CopyReport(source="a", destination="b", mount_policy=policy)
    for p in placements:
        r.count_blob(1024, p.outcome)
        r.count_mounts(p)
    return r


def test_every_mount_refused_with_one_status() -> None:
    r = _report(
        MountPolicy.SAME_REGISTRY,
        *[BlobPlacement(BlobOutcome.UPLOADED, declined=(401,)) for _ in range(12)],
    )
    assert r.mount_json() == {
        "attempted": 12,
        "refused": 12,
        "reason": "registry answered 401 to cross-repository mounts",
    }
    assert r.summary().endswith("; not mounted: registry answered 401 to cross-repository mounts")


def test_mixed_answers_are_counted_per_status_and_share() -> None:
    r = _report(
        MountPolicy.ACROSS_REGISTRIES,
        BlobPlacement(BlobOutcome.MOUNTED),
        BlobPlacement(BlobOutcome.MOUNTED, declined=(403,)),
        BlobPlacement(BlobOutcome.UPLOADED, declined=(202,)),
        BlobPlacement(BlobOutcome.UPLOADED, declined=(202,)),
        BlobPlacement(BlobOutcome.UPLOADED, declined=(0,)),
    )
    assert r.mounts_attempted == 6 and r.mounts_refused == 4
    assert r.mount_reason == (
        "registry answered 202 (2), no answer (1), 403 (1) to 4 of 6 cross-repository mounts"
    )


def test_no_candidate_across_registries_and_mounting_disabled() -> None:
    uploaded = BlobPlacement(BlobOutcome.UPLOADED)
    across = _report(MountPolicy.ACROSS_REGISTRIES, uploaded)
    assert across.mount_reason == "different registries and no known source repository"
    off = _report(MountPolicy.DISABLED, uploaded)
    assert off.mount_reason == "mounting is disabled for this copy"
    assert off.last_copy()["mount"] == {
        "attempted": 0,
        "refused": 0,
        "reason": "mounting is disabled for this copy",
    }


def test_nothing_to_explain_when_all_mounted_or_present() -> None:
    r = _report(
        MountPolicy.ACROSS_REGISTRIES,
        BlobPlacement(BlobOutcome.MOUNTED),
        BlobPlacement(BlobOutcome.EXISTING),
    )
    assert r.mount_json() == {"attempted": 1, "refused": 0, "reason": None}
    assert "not mounted" not in r.summary()


def test_token_refused_candidates_are_explained_without_counting_as_requests() -> None:
    from imagecopy.copy.report import TOKEN_REFUSED_REASON
    from imagecopy.oci.reference import Registry
    from imagecopy.oci.repository import MountRefusal

    theirs = Registry("hub.example").repository("a/private")
    dropped = ((theirs, MountRefusal.TOKEN_REFUSED),)
    r = _report(
        MountPolicy.ACROSS_REGISTRIES,
        *[BlobPlacement(BlobOutcome.UPLOADED, refusals=dropped) for _ in range(3)],
    )
    assert r.mounts_token_refused == 3
    assert r.mount_json() == {"attempted": 0, "refused": 0, "reason": TOKEN_REFUSED_REASON}
    mixed = _report(
        MountPolicy.ACROSS_REGISTRIES,
        BlobPlacement(BlobOutcome.UPLOADED, refusals=dropped, declined=(202,)),
    )
    assert (
        mixed.mount_reason
        == f"{TOKEN_REFUSED_REASON}; registry answered 202 to cross-repository mounts"
    )
    # a dropped candidate whose blob another candidate mounted needs no explanation
    fine = _report(
        MountPolicy.ACROSS_REGISTRIES, BlobPlacement(BlobOutcome.MOUNTED, refusals=dropped)
    )
    assert fine.mount_reason is None and fine.mounts_attempted == 1
