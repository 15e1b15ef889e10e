"""What rebuilding the blob memory costs at start-up (issue 15): not a test, a measurement.

    .venv/bin/python -m bench.memory_startup                 # 1,000 objects
    .venv/bin/python -m bench.memory_startup --objects 3000 --json

Builds N ``ImageCopy`` bodies as the API server lists them (each with a full
``status.lastCopy.largestBlobs`` of 64 keys, all distinct: the worst case; ten namespaces,
one destination registry), then feeds them to ``controller.memory.BlobMemory.observe`` (all that the
operator's index handler ``controller.handlers.blob_memory`` does) as Kopf does after its
listing. Reports wall and CPU time of the rebuild, the index's memory (tracemalloc:
bytes allocated and still held by the index) and the status bytes each object carries.
``measure()`` returns the figures for ``bench.scale`` to include.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import tracemalloc
from typing import Any, cast

import kopf

from imagecopy.controller.memory import BlobMemory
from imagecopy.copy.engine import MEMORY_BLOBS
from imagecopy.copy.locations import BlobLocations, blob_key

NAMESPACES = 10


def make_bodies(objects: int, blobs: int = MEMORY_BLOBS) -> list[dict[str, Any]]:
    bodies = []
    for n in range(objects):
        keys = [
            blob_key("sha256:" + hashlib.sha256(f"{n}/{i}".encode()).hexdigest())
            for i in range(blobs)
        ]
        ns = f"tenant-{n % NAMESPACES}"
        bodies.append(
            {
                "apiVersion": "imagecopy.dev/v1alpha1",
                "kind": "ImageCopy",
                "metadata": {
                    "namespace": ns,
                    "name": f"copy-{n}",
                    "uid": f"uid-{n}",
                    "generation": 1,
                },
                "spec": {
                    "source": {"image": f"source.example.com/team/app-{n}:1"},
                    "destination": {"image": f"mirror.example.com/{ns}/app-{n}:1"},
                },
                "status": {
                    "observedGeneration": 1,
                    "destinationImage": f"mirror.example.com/{ns}/app-{n}@sha256:{'0' * 64}",
                    "lastCopy": {"startTime": "2026-01-01T00:00:00Z", "largestBlobs": keys},
                },
            }
        )
    return bodies


def measure(objects: int = 1000) -> dict[str, Any]:
    # the wrapper Kopf hands to the index handler
    bodies = [kopf.Body(cast(kopf.RawBody, b)) for b in make_bodies(objects)]
    record = len(json.dumps(bodies[0]["status"]["lastCopy"]["largestBlobs"], separators=(",", ":")))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memory = BlobMemory(BlobLocations())
    wall, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        memory.observe(body)  # what controller.handlers.blob_memory does per object
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # Timed again without tracemalloc's overhead (a fresh memory: nothing is skipped as seen).
    memory = BlobMemory(BlobLocations())
    plain_wall, plain_cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        memory.observe(body)
    plain_wall, plain_cpu = time.perf_counter() - plain_wall, time.process_time() - plain_cpu
    entries = len(memory.locations)
    return {
        "objects": objects,
        "keysPerObject": MEMORY_BLOBS,
        "indexEntries": entries,
        "rebuildWallSeconds": round(plain_wall, 4),
        "rebuildCpuSeconds": round(plain_cpu, 4),
        "rebuildCpuMillisPerObject": round(1000 * plain_cpu / objects, 4),
        "tracedWallSeconds": round(wall, 4),
        "tracedCpuSeconds": round(cpu, 4),
        "indexBytes": held,
        "indexBytesPerEntry": round(held / max(1, entries)),
        "indexMiB": round(held / 2**20, 2),
        "statusBytesPerObject": record,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.objects)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
