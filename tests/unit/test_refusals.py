"""Remembered mount refusals (``copy.refusals``) and how the mount policy uses them: one
refused attempt per registry and credential per memory period, a probe before the rest."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from imagecopy.controller.settings import Settings, SettingsError
from imagecopy.copy.locations import BlobLocations
from imagecopy.copy.mounts import MountRoute, MountStrategy
from imagecopy.copy.refusals import MountRefusals
from imagecopy.copy.report import CopyReport, MountPolicy
from imagecopy.oci.blobs import BlobOutcome, BlobPlacement
from imagecopy.oci.reference import Reference
from imagecopy.oci.repository import MountRefusal

SRC = Reference.parse("r.example/dev/web:1")
DST = Reference.parse("r.example/prod/web:1")
OTHER = Reference.parse("s.example/mirror/web:1")
DIGEST = "sha256:" + "a" * 64
NOON = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def memory(ttl: float = 600.0, limit: int = 100) -> tuple[MountRefusals, Clock]:
    clock = Clock()
    return MountRefusals(ttl, limit=limit, clock=clock, now=lambda: NOON), clock


def strategy(
    refusals: MountRefusals, credential: str = "alice", src: Reference = SRC, **kw: object
) -> MountStrategy:
    return MountStrategy(
        src,
        DST,
        enabled=True,
        mount_from=kw.pop("mount_from", ()),  # type: ignore[arg-type]
        locations=kw.pop("locations", BlobLocations()),  # type: ignore[arg-type]
        refusals=refusals,
        credential=credential,
    )


def refused(status: int, refusal: MountRefusal, source: Reference = SRC) -> BlobPlacement:
    return BlobPlacement(BlobOutcome.UPLOADED, ((source.repo, refusal),), (status,))


def test_a_refusal_on_one_registry_is_remembered_per_registry_and_credential() -> None:
    refusals, clock = memory()
    first = strategy(refusals)
    assert first.route(DIGEST).mount_from == (SRC.repo,)
    first.learn(refused(401, MountRefusal.UNAUTHORIZED))
    assert not first.enabled  # the rest of this copy checks and uploads

    again = strategy(refusals)
    assert not again.enabled and again.route(DIGEST).mount_from == ()
    assert again.skipped is not None and again.skipped.status == 401
    assert again.skipped.sentence() == (
        "registry refused cross-repository mounts recently (401); "
        "not asked again until 2026-01-01T12:10:00Z"
    )
    # Another credential is its own case: still asked.
    assert strategy(refusals, credential="bob").route(DIGEST).mount_from == (SRC.repo,)
    # After the memory period one mount is asked again.
    clock.t += 600
    assert strategy(refusals).route(DIGEST).mount_from == (SRC.repo,)
    assert len(refusals) == 0


def test_a_202_on_one_registry_makes_later_blobs_and_copies_look_first_then_mount() -> None:
    refusals, _ = memory()
    first = strategy(refusals)
    first.learn(BlobPlacement(BlobOutcome.UPLOADED, (), (202,)))
    # Still asked (the 202 opens the upload's session for free), but after a HEAD.
    assert first.enabled and first.route(DIGEST) == MountRoute((SRC.repo,), True)
    remembered = refusals.registry("r.example", "alice")
    assert remembered is not None and remembered.status == 202
    later = strategy(refusals)
    assert later.enabled and later.skipped is None
    assert later.route(DIGEST) == MountRoute((SRC.repo,), True)
    # Across registries a 202 entry changes nothing; a real refusal outranks it.
    assert strategy(refusals, src=OTHER).enabled
    refusals.remember_registry("r.example", "alice", 403)
    refused_entry = refusals.registry("r.example", "alice")
    assert refused_entry is not None and refused_entry.status == 403
    # A mount that worked teaches nothing.
    fine, _ = memory()
    ok = strategy(fine)
    ok.learn(BlobPlacement(BlobOutcome.MOUNTED))
    assert ok.enabled and len(fine) == 0


def test_across_registries_a_refused_candidate_is_skipped_and_the_others_kept() -> None:
    refusals, _ = memory()
    locations = BlobLocations()
    locations.add_many(DST.registry, [DIGEST], "team/a")
    locations.add_many(DST.registry, [DIGEST], "team/b")
    first = strategy(refusals, src=OTHER, locations=locations)
    candidates = first.route(DIGEST).mount_from
    assert {r.path for r in candidates} == {"team/a", "team/b"}
    a = next(r for r in candidates if r.path == "team/a")
    first.learn(BlobPlacement(BlobOutcome.UPLOADED, ((a, MountRefusal.UNAUTHORIZED),), (401, 202)))
    assert first.enabled  # Harbor's 401 is about team/a, not the registry
    second = strategy(refusals, src=OTHER, locations=locations)
    assert [r.path for r in second.route(DIGEST).mount_from] == ["team/b"]
    assert second.skipped is not None and second.skipped.status == 401
    # A registry that does not mount at all (405) is remembered registry-wide.
    second.learn(
        BlobPlacement(BlobOutcome.UPLOADED, ((candidates[0], MountRefusal.UNSUPPORTED),), (405,))
    )
    assert not strategy(refusals, src=OTHER, locations=locations).enabled


def test_memory_is_bounded_and_ttl_zero_remembers_nothing() -> None:
    refusals, _ = memory(limit=2)
    for name in ("a", "b", "c"):
        refusals.remember_registry(f"{name}.example", "k", 403)
    assert len(refusals) == 2
    assert refusals.registry("a.example", "k") is None  # the oldest went first
    assert refusals.registry("c.example", "k") is not None
    off, _ = memory(ttl=0)
    off.remember_registry("a.example", "k", 403)
    assert off.registry("a.example", "k") is None and len(off) == 0


async def test_the_first_blob_probes_and_the_rest_wait_for_its_answer() -> None:
    refusals, _ = memory()
    mounts = strategy(refusals)
    route, probe = await mounts.next_route(DIGEST)
    assert probe and route.mount_from == (SRC.repo,)
    waiting = asyncio.ensure_future(mounts.next_route(DIGEST))
    await asyncio.sleep(0)
    assert not waiting.done()  # held until the probe's answer
    mounts.learn(refused(403, MountRefusal.FORBIDDEN))
    mounts.settle()
    later, later_probe = await asyncio.wait_for(waiting, 5)
    assert not later_probe and later.mount_from == () and later.check_first


def test_the_report_says_mounts_were_skipped_because_of_the_memory() -> None:
    refusals, _ = memory()
    refusals.remember_registry("r.example", "alice", 401)
    mounts = strategy(refusals)
    report = CopyReport(source="a", destination="b", mount_policy=MountPolicy.SAME_REGISTRY)
    report.count_blob(10, BlobOutcome.UPLOADED)
    report.mounts_skipped = mounts.skipped
    assert report.mount_json() == {
        "attempted": 0,
        "refused": 0,
        "reason": "registry refused cross-repository mounts recently (401); "
        "not asked again until 2026-01-01T12:10:00Z",
    }
    assert "; not mounted: registry refused cross-repository mounts recently" in report.summary()


def test_the_ttl_setting_is_parsed_strictly() -> None:
    assert Settings.from_env({}).mount_refusal_ttl == 600.0
    assert Settings.from_env({"IMAGECOPY_MOUNT_REFUSAL_TTL": "2m"}).mount_refusal_ttl == 120.0
    assert Settings.from_env({"IMAGECOPY_MOUNT_REFUSAL_TTL": "off"}).mount_refusal_ttl == 0.0
    for bad in ("soon", "0.5s", "48h", "-1m"):
        with pytest.raises(SettingsError, match="IMAGECOPY_MOUNT_REFUSAL_TTL"):
            Settings.from_env({"IMAGECOPY_MOUNT_REFUSAL_TTL": bad})


async def test_once_a_registry_mounted_the_next_copies_skip_the_probe() -> None:
    refusals, clock = memory(ttl=60)
    first = strategy(refusals)
    route, probe = await first.next_route(DIGEST)
    assert probe  # nothing known yet: one mount alone first
    first.learn(BlobPlacement(BlobOutcome.MOUNTED, (), ()))
    first.settle()

    second = strategy(refusals)
    route, probe = await second.next_route(DIGEST)
    assert not probe and route.mount_from == (SRC.repo,)  # the whole wave goes out at once
    assert await asyncio.wait_for(strategy(refusals).next_route(DIGEST), 1) == (route, False)

    other = strategy(refusals, credential="bob")  # another credential: probed afresh
    assert (await other.next_route(DIGEST))[1]

    clock.t += 61  # the period is over: probe again
    assert (await strategy(refusals).next_route(DIGEST))[1]


def test_a_refusal_ends_what_a_mount_taught() -> None:
    refusals, _ = memory()
    refusals.remember_mounted("r.example", "alice")
    assert refusals.mounted("r.example", "alice")
    refusals.remember_registry("r.example", "alice", 405)
    assert not refusals.mounted("r.example", "alice")
    off, _ = memory(ttl=0)
    off.remember_mounted("r.example", "alice")
    assert not off.mounted("r.example", "alice")


async def test_without_the_probe_the_first_copy_sends_its_mounts_at_once() -> None:
    """``probe=False`` (the CLI): no blob waits for a first mount's answer; a registry that
    refused is still not asked again, and the probe comes back for it once that is over."""
    digests = [f"sha256:{n:064x}" for n in range(3)]
    probing = strategy(MountRefusals(600))
    answers = [await probing.next_route(d) for d in digests[:1]]
    assert answers == [(MountRoute((SRC.repo,), False), True)]  # one probe, the rest wait

    clock = Clock()
    refusals = MountRefusals(600, clock=clock, now=lambda: NOON, probe=False)
    wave = strategy(refusals)
    answers = [await wave.next_route(d) for d in digests]
    assert answers == [(MountRoute((SRC.repo,), False), False)] * 3  # one wave, no probe
    wave.learn(refused(405, MountRefusal.UNSUPPORTED))
    assert not wave.enabled and not strategy(refusals).enabled  # remembered as before
    assert not refusals.mounted("r.example", "alice")
    clock.t += 600
    assert refusals.mounted("r.example", "alice") and strategy(refusals).enabled
    # ttl 0 remembers nothing and still sends no probe.
    assert MountRefusals(0, probe=False).mounted("r.example", "alice")
