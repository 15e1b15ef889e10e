"""The blob memory: short keys, tenant partitions, the status record, the rebuild from bodies."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from imagecopy.controller import handlers
from imagecopy.controller.memory import BlobMemory
from imagecopy.controller.status import success_patch
from imagecopy.copy.engine import MEMORY_BLOBS, largest_blob_keys
from imagecopy.copy.locations import BlobLocations, blob_key
from imagecopy.copy.mounts import MountStrategy
from imagecopy.copy.report import CopyReport
from imagecopy.oci.descriptor import Descriptor
from imagecopy.oci.reference import Reference, Registry

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REG = Registry.parse("registry.example.com")


def digest(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


DESTINATION = "registry.example.com/mirror/app@" + digest(0)


def body(
    *,
    namespace: str = "team-a",
    uid: str = "u1",
    keys: Any = None,
    started: str = "2026-01-01T00:00:00Z",
    destination: Any = DESTINATION,
    source: str = "other.example.com/dev/app:1",
    generation: int = 1,
    observed: int = 1,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": "app", "uid": uid, "generation": generation},
        "spec": {"source": {"image": source}, "destination": {"image": "x"}},
        "status": {
            "observedGeneration": observed,
            "destinationImage": destination,
            "lastCopy": {
                "startTime": started,
                "largestBlobs": [blob_key(digest(i)) for i in range(1, 4)]
                if keys is None
                else keys,
            },
        },
    }


def test_a_sha256_digest_is_keyed_by_its_first_16_hex_digits() -> None:
    d = digest(1)
    assert blob_key(d) == d[7:23] and len(blob_key(d)) == 16
    assert blob_key(blob_key(d)) == blob_key(d)  # a key is its own key
    other = "sha512:" + "a" * 128
    assert blob_key(other) == other


def test_a_digest_and_its_key_find_the_same_entry() -> None:
    locations = BlobLocations()
    locations.add(REG, blob_key(digest(1)), "mirror/app", partition="a")
    assert locations.candidates(REG, digest(1), partition="a") == ["mirror/app"]


def test_one_tenants_repositories_are_never_another_tenants_candidates() -> None:
    locations = BlobLocations()
    locations.add(REG, digest(1), "team-x/app", partition="x")
    assert locations.candidates(REG, digest(1), partition="x") == ["team-x/app"]
    assert locations.candidates(REG, digest(1), partition="y") == []
    assert locations.candidates(REG, digest(1)) == []  # the CLI's partition is its own
    dst = Reference.parse("registry.example.com/team-y/app:1")
    src = Reference.parse("other.example.com/dev/app:1")
    theirs = MountStrategy(
        src, dst, enabled=True, mount_from=(), locations=locations, partition="y"
    )
    assert theirs.route(digest(1)).mount_from == ()
    ours = MountStrategy(src, dst, enabled=True, mount_from=(), locations=locations, partition="x")
    assert [r.path for r in ours.route(digest(1)).mount_from] == ["team-x/app"]


def test_each_blob_names_its_newest_repositories_bounded() -> None:
    locations = BlobLocations(max_repositories_per_blob=3)
    for name in ("a", "b", "c", "a", "d"):
        locations.add(REG, digest(1), name, partition="p")
    assert locations.candidates(REG, digest(1), partition="p", limit=5) == ["d", "a", "c"]
    assert locations.candidates(REG, digest(1), partition="p", exclude=("a",)) == ["d", "c"]


def test_the_index_stays_bounded_across_partitions() -> None:
    locations = BlobLocations(max_blobs=10)
    for n in range(30):
        locations.add(REG, digest(n), "r", partition=f"ns{n % 3}")
    assert len(locations) == 10
    assert locations.candidates(REG, digest(29), partition="ns2") == ["r"]
    assert locations.candidates(REG, digest(0), partition="ns0") == []  # the oldest went


def test_the_status_records_the_largest_sha256_blobs_largest_first() -> None:
    blobs = [Descriptor(LAYER, digest(n), size=n) for n in range(1, 101)]
    blobs.append(Descriptor(LAYER, "sha512:" + "b" * 128, size=10**9))  # no short key
    keys = largest_blob_keys(blobs)
    assert len(keys) == MEMORY_BLOBS == 64
    assert keys[:2] == [blob_key(digest(100)), blob_key(digest(99))]
    assert keys[-1] == blob_key(digest(37))
    assert largest_blob_keys(blobs[:2]) == [blob_key(digest(2)), blob_key(digest(1))]
    report = CopyReport(source="s", destination="d", largest_blobs=keys[:3])
    assert report.last_copy()["largestBlobs"] == keys[:3]
    assert "largestBlobs" not in report.to_json()  # the CLI's --json is unchanged
    patch = success_patch(None, report, 1, datetime.now(UTC))
    assert patch["lastCopy"]["largestBlobs"] == keys[:3]


def test_observe_feeds_destination_and_source_in_the_objects_namespace() -> None:
    memory = BlobMemory(BlobLocations())
    assert memory.observe(body()) == 3
    dst, src = REG, Registry.parse("other.example.com")
    assert memory.locations.candidates(dst, digest(1), partition="team-a") == ["mirror/app"]
    assert memory.locations.candidates(src, digest(3), partition="team-a") == ["dev/app"]
    assert memory.locations.candidates(dst, digest(1), partition="team-b") == []


def test_a_spec_changed_since_the_copy_does_not_name_its_source() -> None:
    memory = BlobMemory(BlobLocations())
    assert memory.observe(body(generation=2, observed=1)) == 3
    src = Registry.parse("other.example.com")
    assert memory.locations.candidates(src, digest(1), partition="team-a") == []
    assert memory.locations.candidates(REG, digest(1), partition="team-a") == ["mirror/app"]


def test_each_recorded_copy_is_read_once() -> None:
    memory = BlobMemory(BlobLocations())
    assert memory.observe(body()) == 3
    assert memory.observe(body()) == 0  # a status patch that did not copy (lastSyncTime)
    assert memory.observe(body(started="2026-01-02T00:00:00Z", keys=[blob_key(digest(9))])) == 1
    assert memory.locations.candidates(REG, digest(9), partition="team-a") == ["mirror/app"]


def test_a_hostile_or_old_status_feeds_nothing_and_raises_nothing() -> None:
    memory = BlobMemory(BlobLocations())
    assert memory.observe({}) == 0
    assert memory.observe({"metadata": "x", "status": ["y"]}) == 0
    assert memory.observe(body(keys="0123456789abcdef")) == 0  # not a list
    assert memory.observe(body(uid="u2", keys=["ZZ", 7, digest(1), "0" * 15])) == 0
    assert memory.observe(body(uid="u3", destination="not a ref!!", source="")) == 0
    assert memory.observe(body(uid="u4", destination=None, observed=0)) == 0
    old = body(uid="u5")
    del old["status"]["lastCopy"]["largestBlobs"]  # written by an operator before the memory
    assert memory.observe(old) == 0
    assert len(memory.locations) == 0
    many = body(uid="u6", keys=[blob_key(digest(n)) for n in range(200)])
    assert memory.observe(many) == MEMORY_BLOBS


def test_rebuild_from_a_listing() -> None:
    memory = BlobMemory(BlobLocations())
    bodies = [body(uid=f"u{n}", namespace=f"ns{n % 2}") for n in range(10)]
    assert memory.rebuild(bodies) == 30
    assert memory.locations.candidates(REG, digest(2), partition="ns1") == ["mirror/app"]


def test_the_memory_is_fed_by_a_kopf_index_handler() -> None:
    # An index handler runs for every listed object before that object's handlers, including
    # the listing a standby makes when it takes over; it stores nothing in Kopf's own index.
    registry = kopf.get_default_registry()
    indexers = [h for h in registry._indexing.get_all_handlers() if h.fn is handlers.blob_memory]
    assert len(indexers) == 1
    memo = kopf.Memo()
    memo.memory = BlobMemory(BlobLocations())
    handler: Any = handlers.blob_memory  # typed by Kopf as a handler of every kwarg
    # A coroutine: Kopf would run a plain function in a worker thread, for every event.
    assert asyncio.iscoroutinefunction(handler)
    assert asyncio.run(handler(memo=memo, body=kopf.Body(cast(kopf.RawBody, body())))) is None
    assert memo.memory.locations.candidates(REG, digest(1), partition="team-a") == ["mirror/app"]
