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

With ``--operator``, the same objects are created on a real API server (``e2e.controlplane``)
with the status a successful copy writes (Ready, no interval: nothing to copy at start-up),
and the operator process is started (once to settle: finalizers, creations), then twice
each with the keys in every status and with ``largestBlobs: []``, alternately (medians). The difference in CPU (start to idle) and RSS is what rebuilding the
memory costs the real process; neither start makes a registry request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import kopf
import yaml

from imagecopy.controller.memory import BlobMemory
from imagecopy.copy.engine import MEMORY_BLOBS
from imagecopy.copy.locations import BlobLocations, blob_key

NAMESPACES = 10
#: Starts of the operator per variant (the median is reported).
ROUNDS = 2


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


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def measure_operator(objects: int = 1000, settle: float = 20.0) -> dict[str, Any]:
    """Start the operator over ``objects`` settled objects, with and without the memory."""
    from kubernetes import client

    from e2e.controlplane import ControlPlane
    from e2e.operator_harness import OperatorProcess
    from imagecopy.controller.status import success_patch
    from imagecopy.copy.report import CopyReport

    result: dict[str, Any] = {"objects": objects, "settleSeconds": settle}
    with ControlPlane() as plane:
        plane.apply_crds()
        namespace = plane.create_namespace()
        workdir = Path(tempfile.mkdtemp(prefix="imagecopy-memory-bench-"))
        bodies = make_bodies(objects)
        docs = []
        for b in bodies:
            meta = b["metadata"]
            docs.append(
                {
                    "apiVersion": b["apiVersion"],
                    "kind": b["kind"],
                    "metadata": {"name": meta["name"], "namespace": namespace},
                    "spec": b["spec"],
                }
            )
        manifest = workdir / "objects.yaml"
        manifest.write_text(yaml.safe_dump_all(docs))
        plane.kubectl("apply", "--server-side", "-f", str(manifest), timeout=600)
        api = plane.api_client()
        custom = client.CustomObjectsApi(api)
        group, version, plural = "imagecopy.dev", "v1alpha1", "imagecopies"
        now = datetime.now(UTC)
        for b in bodies:
            n = b["metadata"]["name"]
            report = CopyReport(
                source=b["spec"]["source"]["image"],
                destination=b["spec"]["destination"]["image"],
                source_digest="sha256:" + "0" * 64,
                destination_digest="sha256:" + "0" * 64,
                destination_pinned=b["status"]["destinationImage"],
                largest_blobs=b["status"]["lastCopy"]["largestBlobs"],
            )
            status = success_patch(None, report, 1, now)
            custom.patch_namespaced_custom_object_status(
                group, version, namespace, plural, n, {"status": status}
            )

        def run(name: str, until_handled: bool = False) -> dict[str, float]:
            operator = OperatorProcess(
                plane,
                kopf_options=("--standalone", f"--namespace={namespace}"),
                log_path=workdir / f"operator-{name}.log",
            )
            t0 = time.monotonic()
            operator.start()
            alive = time.monotonic() - t0
            pid = operator.pid
            assert pid is not None
            if until_handled:  # the first start adds finalizers and handles every creation
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    if operator.logs().count("Creation is processed") >= objects:
                        break
                    time.sleep(2)
            time.sleep(settle)
            figures = {
                "aliveSeconds": round(alive, 2),
                "cpuSecondsToIdle": round(_proc_cpu_seconds(pid), 2),
                "rssMiB": round(_proc_kib(pid, "VmRSS") / 1024, 1),
            }
            operator.stop()
            return figures

        run("warm-up", until_handled=True)
        runs: dict[str, list[dict[str, float]]] = {"withMemory": [], "withoutMemory": []}
        for round_ in range(ROUNDS):
            for variant in ("withMemory", "withoutMemory"):
                keys: list[str] = []
                for b in bodies:
                    if variant == "withMemory":
                        keys = b["status"]["lastCopy"]["largestBlobs"]
                    custom.patch_namespaced_custom_object_status(
                        group,
                        version,
                        namespace,
                        plural,
                        b["metadata"]["name"],
                        {"status": {"lastCopy": {"largestBlobs": keys}}},
                    )
                runs[variant].append(run(f"{variant}-{round_}"))
        for variant, figures in runs.items():
            result[variant] = {
                key: round(statistics.median(f[key] for f in figures), 2) for key in figures[0]
            }
        result["runs"] = runs
        api.close()
    with_, without = result["withMemory"], result["withoutMemory"]
    result["memoryCpuSeconds"] = round(with_["cpuSecondsToIdle"] - without["cpuSecondsToIdle"], 2)
    result["memoryRssMiB"] = round(with_["rssMiB"] - without["rssMiB"], 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--operator", action="store_true", help="also start the operator on a real API server"
    )
    args = parser.parse_args(argv)
    result = measure(args.objects)
    if args.operator:
        result["operator"] = measure_operator(args.objects)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
