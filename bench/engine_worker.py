"""The ``imagecopy-engine`` row: copies inside one long-lived Python process.

The driver starts this as a child process, ``python -m bench.engine_worker`` from the
repository root (so its ``ru_maxrss`` is the engine's own, and the driver's work never lands
on the measured loop; ``imagecopy`` comes from the editable install), then sends one JSON command per line on
stdin and reads one JSON answer per line on stdout::

    {"src": "...", "dst": "...", "fresh_locations": false, "profile": null}
    -> {"ok": true, "wall_s": 0.12, "rss_bytes": ..., "maxrss_bytes": ..., "report": {...}}

``RegistryPool`` and ``Copier`` are built once (``--plain-http HOST`` repeatable); the
connection pool stays warm between copies, which is the point of this row.
``fresh_locations`` gives the copy a new ``BlobLocations`` (so a cross-registry copy cannot
mount from the destination repository an earlier run filled: every run moves the bytes).
With ``profile`` set to a path, the copy runs under pyinstrument and the text and HTML
reports are written next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from imagecopy.copy.engine import Copier
from imagecopy.copy.locations import BlobLocations
from imagecopy.copy.options import CopyOptions
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _maxrss_bytes() -> int:
    """The peak RSS of this process since exec (``VmHWM``; ``ru_maxrss`` would include the
    parent's size inherited through fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


OPTIONS: dict[str, Any] = {}


async def _one(copier: Copier, cmd: dict[str, Any]) -> dict[str, Any]:
    run_copier = copier
    if cmd.get("fresh_locations"):
        # Fresh blob locations, the process's registry memory kept (as in the operator).
        run_copier = Copier(copier.pool, BlobLocations(), copier.refusals)
    src = Reference.parse(cmd["src"])
    dst = Reference.parse(cmd["dst"], default_tag=None)
    profile = cmd.get("profile")
    profiler = None
    if profile:
        from pyinstrument import Profiler

        # async_mode disabled: samples show where the loop spends CPU (awaiting shows as the
        # selector), which is what matters when the network wait is the proxy's delay
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    t0, c0 = time.perf_counter(), _cpu_s()
    report = await run_copier.copy(src, dst, CopyOptions(**OPTIONS))
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    if profiler is not None:
        profiler.stop()
        out = Path(str(profile))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".txt").write_text(
            profiler.output_text(unicode=False, color=False, show_all=True)
        )
        out.with_suffix(".html").write_text(profiler.output_html())
    return {
        "ok": True,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_bytes": _rss_bytes(),
        "maxrss_bytes": _maxrss_bytes(),
        "report": {
            "outcome": str(report.outcome),
            "requests": report.requests,
            "blobs_mounted": report.blobs_mounted,
            "blobs_uploaded": report.blobs_uploaded,
            "blobs_existing": report.blobs_existing,
            "bytes_uploaded": report.bytes_uploaded,
            "destination_digest": report.destination_digest,
        },
    }


async def serve(plain_http: list[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    baseline = _rss_bytes()
    async with RegistryPool(TransportSettings(plain_http=frozenset(plain_http))) as pool:
        copier = Copier(pool)
        sys.stdout.write(json.dumps({"ready": True, "rss_bytes": baseline}) + "\n")
        sys.stdout.flush()
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("quit"):
                break
            try:
                answer = await _one(copier, cmd)
            except Exception as exc:  # report, keep serving
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plain-http", action="append", default=[])
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="a CopyOptions field for experiments, e.g. mount_concurrency=16",
    )
    args = ap.parse_args()
    for item in args.option:
        key, _, value = item.partition("=")
        OPTIONS[key] = int(value)
    asyncio.run(serve(args.plain_http))


if __name__ == "__main__":
    main()
