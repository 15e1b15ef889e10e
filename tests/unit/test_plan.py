"""The plan and the walk, against an in-memory repository and a recording destination.

The integration tests check the same decisions on real registries through request logs;
here each decision is isolated: which reads a plan costs, what it refuses before any
write, and the order in which the executor writes (never a manifest before its content).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from imagecopy.copy.execute import DryRunDestination, Executor
from imagecopy.copy.locations import BlobLocations
from imagecopy.copy.mounts import MountRoute, MountStrategy
from imagecopy.copy.options import CopyOptions, TagPolicy
from imagecopy.copy.plan import Plan, Settled, destination_reference, make_plan
from imagecopy.copy.report import CopyReport, Outcome
from imagecopy.oci import mediatypes as mt
from imagecopy.oci.blobs import BlobOutcome, BlobPlacement
from imagecopy.oci.descriptor import Descriptor, Manifest, parse_manifest
from imagecopy.oci.digest import compute_digest
from imagecopy.oci.errors import InvalidSpec, NotFound, Side, TagConflict
from imagecopy.oci.reference import Reference, parse_platform
from imagecopy.oci.repository import ManifestInfo


def blob(content: bytes, media_type: str = "application/vnd.oci.image.layer.v1.tar") -> dict:
    return {"mediaType": media_type, "digest": compute_digest(content), "size": len(content)}


def image(*layers: bytes, foreign: bool = False) -> Manifest:
    obj: dict = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": blob(b"{}", "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer) for layer in layers],
    }
    if foreign:
        obj["layers"].append({**blob(b"far away"), "urls": ["https://example.com/x"]})
    data = json.dumps(obj).encode()
    return parse_manifest(data, mt.OCI_MANIFEST, "image")


def index(*children: tuple[Manifest, str]) -> Manifest:
    entries = []
    for child, platform in children:
        os_name, arch = platform.split("/")
        entries.append(
            {
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": child.size,
                "platform": {"os": os_name, "architecture": arch},
            }
        )
    data = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries})
    return parse_manifest(data.encode(), mt.OCI_INDEX, "index")


@dataclass
class FakeRepository:
    """Manifests by tag and digest, and a log of every read."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    registry: object = "fake"

    def put(self, manifest: Manifest, *tags: str) -> None:
        self.manifests[manifest.digest] = manifest
        for tag in tags:
            self.manifests[tag] = manifest

    def manifest_missing(self, reference: str) -> NotFound:
        return NotFound(f"{reference} not found", status=404, side=Side.SOURCE)

    async def head_manifest(self, reference: str) -> ManifestInfo | None:
        self.reads.append(f"HEAD {reference}")
        found = self.manifests.get(reference)
        return None if found is None else ManifestInfo(found.digest, found.media_type, found.size)

    async def get_manifest(
        self, reference: str, *, expected_digest: str | None = None, missing_ok: bool = False
    ) -> Manifest | None:
        self.reads.append(f"GET {reference}")
        found = self.manifests.get(reference)
        if found is None and not missing_ok:
            raise NotFound(f"{reference} not found", side=Side.SOURCE)
        return found


SRC = Reference.parse("r.example/dev/web:1.4")
DST = Reference.parse("other.example/prod/web:1.4")


async def plan_for(
    src_repo: FakeRepository,
    dst_repo: FakeRepository,
    src: Reference = SRC,
    dst: Reference = DST,
    **options: object,
) -> Plan | Settled:
    dst = destination_reference(src, dst)
    return await make_plan(src_repo, dst_repo, src, dst, CopyOptions(**options))  # type: ignore[arg-type]


async def test_an_unchanged_source_is_a_no_op_after_two_heads() -> None:
    """The operator's re-check of a Ready object: HEADs only, no pull."""
    root = image(b"a")
    src, dst = FakeRepository(), FakeRepository()
    src.put(root, "1.4")
    dst.put(root, "1.4")
    settled = await plan_for(src, dst, fetch_source_early=False)
    assert settled == Settled(Outcome.UP_TO_DATE, root.digest, root.digest)
    assert dst.reads == ["HEAD 1.4"] and src.reads == ["HEAD 1.4"]


async def test_a_source_fetched_early_decides_a_no_op_without_a_head() -> None:
    root = image(b"a")
    src, dst = FakeRepository(), FakeRepository()
    src.put(root, "1.4")
    dst.put(root, "1.4")
    settled = await plan_for(src, dst)
    assert settled == Settled(Outcome.UP_TO_DATE, root.digest, root.digest)
    assert dst.reads == ["HEAD 1.4"] and src.reads == ["GET 1.4"]


@dataclass
class GatedRepository(FakeRepository):
    """A destination whose HEADs answer only once ``gate`` is set, or fail."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False

    async def head_manifest(self, reference: str) -> ManifestInfo | None:
        await self.gate.wait()
        if self.fail:
            raise NotFound(f"{reference}: denied", status=403, side=Side.DESTINATION)
        return await super().head_manifest(reference)


@dataclass
class OpeningRepository(FakeRepository):
    """A source whose manifest GET opens ``gate`` (the destination's HEAD) before it
    answers: the plan completes only if the two are in flight at the same time."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    cancelled: bool = False

    async def get_manifest(
        self, reference: str, *, expected_digest: str | None = None, missing_ok: bool = False
    ) -> Manifest | None:
        self.gate.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True
        return await super().get_manifest(
            reference, expected_digest=expected_digest, missing_ok=missing_ok
        )


async def test_the_early_fetch_runs_while_the_destination_is_checked() -> None:
    root = image(b"a")
    dst = GatedRepository()
    src = OpeningRepository(gate=dst.gate)
    src.put(root, "1.4")
    plan = await asyncio.wait_for(plan_for(src, dst), 10)
    assert isinstance(plan, Plan) and plan.root.digest == root.digest
    assert src.reads == ["GET 1.4"] and dst.reads == ["HEAD 1.4"]


async def test_a_failed_destination_check_cancels_the_early_fetch_and_is_reported() -> None:
    root = image(b"a")
    dst = GatedRepository(fail=True)
    src = OpeningRepository(gate=dst.gate)
    src.put(root, "1.4")
    with pytest.raises(NotFound) as caught:
        await plan_for(src, dst)
    assert caught.value.side is Side.DESTINATION
    assert src.cancelled and not src.finished


async def test_a_source_missing_at_the_early_fetch_is_not_found() -> None:
    src, dst = FakeRepository(), FakeRepository()
    dst.put(image(b"a"), "1.4")
    with pytest.raises(NotFound, match="not found"):
        await plan_for(src, dst)
    assert src.reads == ["GET 1.4"]


async def test_a_missing_tag_fetches_the_source_without_a_head() -> None:
    root = image(b"a")
    src, dst = FakeRepository(), FakeRepository()
    src.put(root, "1.4")
    plan = await plan_for(src, dst)
    assert isinstance(plan, Plan)
    assert src.reads == ["GET 1.4"]
    assert plan.tags == ("1.4",) and plan.root.digest == root.digest


async def test_the_plan_holds_every_child_and_each_blob_once() -> None:
    shared = b"shared layer"
    amd, arm = image(shared, b"amd"), image(shared, b"arm", foreign=True)
    root = index((amd, "linux/amd64"), (arm, "linux/arm64"))
    src, dst = FakeRepository(), FakeRepository()
    for m in (amd, arm):
        src.put(m)
    src.put(root, "1.4")
    plan = await plan_for(src, dst)
    assert isinstance(plan, Plan)
    assert set(plan.nodes) == {root.digest, amd.digest, arm.digest}
    # config (shared by both), shared layer, amd, arm: the foreign layer is not copied
    assert len(plan.blobs) == 4
    assert all(not d.foreign for d in plan.blobs.values())


async def test_platforms_filter_the_root_and_the_walk() -> None:
    amd, arm = image(b"amd"), image(b"arm")
    root = index((amd, "linux/amd64"), (arm, "linux/arm64"))
    src, dst = FakeRepository(), FakeRepository()
    for m in (amd, arm):
        src.put(m)
    src.put(root, "1.4")
    plan = await plan_for(src, dst, platforms=(parse_platform("linux/arm64"),))
    assert isinstance(plan, Plan)
    assert plan.source_digest == root.digest and plan.root.digest != root.digest
    assert set(plan.nodes) == {plan.root.digest, arm.digest}
    assert f"GET {amd.digest}" not in src.reads


async def test_immutable_tags_are_checked_before_anything_is_written() -> None:
    old, new = image(b"old"), image(b"new")
    src, dst = FakeRepository(), FakeRepository()
    src.put(new, "1.4")
    dst.put(old, "1.4")
    with pytest.raises(TagConflict, match="Immutable"):
        await plan_for(src, dst, tag_policy=TagPolicy.IMMUTABLE)


async def test_if_not_present_leaves_an_existing_tag_alone() -> None:
    old, new = image(b"old"), image(b"new")
    src, dst = FakeRepository(), FakeRepository()
    src.put(new, "1.4")
    dst.put(old, "1.4")
    settled = await plan_for(src, dst, tag_policy=TagPolicy.IF_NOT_PRESENT)
    assert settled == Settled(Outcome.TAG_EXISTS, new.digest, old.digest)


async def test_a_missing_source_is_a_source_side_not_found() -> None:
    with pytest.raises(NotFound) as caught:
        await plan_for(FakeRepository(), FakeRepository())
    assert caught.value.side is Side.SOURCE


async def test_a_destination_digest_must_match_the_content() -> None:
    root = image(b"a")
    src = FakeRepository()
    src.put(root, "1.4")
    dst = Reference.parse("other.example/prod/web@sha256:" + "0" * 64)
    with pytest.raises(InvalidSpec, match="does not match"):
        await plan_for(src, FakeRepository(), dst=dst)


async def test_a_retag_reads_nothing_but_the_root() -> None:
    amd = image(b"amd")
    root = index((amd, "linux/amd64"))
    src = FakeRepository()
    src.put(amd)
    src.put(root, "1.4")
    retag = Reference.parse("r.example/dev/web:stable")
    plan = await plan_for(src, FakeRepository(), dst=retag)
    assert isinstance(plan, Plan) and plan.same_repository
    assert list(plan.nodes) == [root.digest]
    assert src.reads == ["GET 1.4"]


@dataclass
class RecordingDestination:
    """A destination that holds what was written, in order, and mounts nothing."""

    log: list[str] = field(default_factory=list)
    present: set[str] = field(default_factory=set)

    async def has_manifest(self, digest: str) -> bool:
        return digest in self.present

    async def ensure_blob(self, desc: Descriptor, route: MountRoute) -> BlobPlacement:
        self.log.append(f"blob {desc.digest}")
        self.present.add(desc.digest)
        return BlobPlacement(BlobOutcome.UPLOADED)

    async def push_manifest(self, reference: str, manifest: Manifest) -> None:
        for desc in (*manifest.blobs, *manifest.manifests):
            assert desc.foreign or desc.digest in self.present, "pushed before its content"
        self.log.append(f"manifest {reference}")
        self.present.add(manifest.digest)

    async def push_referrers(self, items: Sequence[tuple[Manifest, str]]) -> None:
        self.log.extend(f"referrer {m.digest}" for m, _ in items)


async def test_children_are_pushed_by_digest_before_the_root_by_tag() -> None:
    amd, arm = image(b"x", b"amd"), image(b"x", b"arm")
    root = index((amd, "linux/amd64"), (arm, "linux/arm64"))
    src = FakeRepository()
    for m in (amd, arm):
        src.put(m)
    src.put(root, "1.4")
    plan = await plan_for(src, FakeRepository(), additional_tags=("stable",))
    assert isinstance(plan, Plan)
    destination = RecordingDestination()
    report = CopyReport(source=str(SRC), destination=str(DST))
    mounts = MountStrategy(SRC, DST, enabled=True, mount_from=(), locations=BlobLocations())
    await Executor(plan, destination, mounts, report).run()
    assert destination.log[-2:] == ["manifest 1.4", "manifest stable"]
    assert destination.log.count(f"manifest {amd.digest}") == 1
    assert report.blobs_uploaded == 4  # shared config and shared layer once each
    assert report.manifests_copied == 3


async def test_a_dry_run_counts_with_the_same_walk() -> None:
    """The dry-run destination answers like a real one would plan: mount where a mount would
    be tried, upload elsewhere; nothing is written, every push is recorded."""
    root = image(b"a", b"b")
    src = FakeRepository()
    src.put(root, "1.4")
    same_registry = Reference.parse("r.example/prod/web:1.4")
    plan = await plan_for(src, FakeRepository(), dst=same_registry)
    assert isinstance(plan, Plan)

    class NoRequests:
        async def head_manifest(self, reference: str) -> None:
            raise AssertionError("mount-first needs no HEAD")

    dry = DryRunDestination(NoRequests())  # type: ignore[arg-type]
    report = CopyReport(source=str(SRC), destination=str(same_registry), dry_run=True)
    mounts = MountStrategy(
        SRC, same_registry, enabled=True, mount_from=(), locations=BlobLocations()
    )
    await Executor(plan, dry, mounts, report).run()
    assert report.blobs_mounted == 3 and report.blobs_uploaded == 0
    assert dry.pushed == ["1.4"]


def test_mount_strategy_routes_and_learns() -> None:
    from imagecopy.oci.reference import Registry
    from imagecopy.oci.repository import MountRefusal

    locations = BlobLocations()
    locations.add(Registry.parse("other.example"), "sha256:x", "cache/web")
    cross = MountStrategy(SRC, DST, enabled=True, mount_from=("base/web",), locations=locations)
    route = cross.route("sha256:x")
    assert route.check_first and [r.path for r in route.mount_from] == ["base/web", "cache/web"]
    refused = BlobPlacement(BlobOutcome.UPLOADED, ((route.mount_from[0], MountRefusal.NOT_FOUND),))
    cross.learn(refused)
    assert cross.enabled  # one repository lacking a blob says nothing of the next
    cross.learn(
        BlobPlacement(BlobOutcome.UPLOADED, ((route.mount_from[0], MountRefusal.UNSUPPORTED),))
    )
    assert not cross.enabled and cross.route("sha256:x") == MountRoute((), True)

    same = MountStrategy(
        SRC,
        Reference.parse("r.example/prod/web:1"),
        enabled=True,
        mount_from=(),
        locations=locations,
    )
    first = same.route("sha256:y")
    assert not first.check_first and [r.path for r in first.mount_from] == ["dev/web"]
    same.learn(
        BlobPlacement(BlobOutcome.UPLOADED, ((first.mount_from[0], MountRefusal.FORBIDDEN),))
    )
    assert same.route("sha256:y") == MountRoute((), True)
