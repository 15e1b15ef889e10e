"""Client CPU per request and per copy of the engine, for two code trees, interleaved.

Wall times on the shared machine are noise; the CPU the copying process itself spends
(``time.process_time``: user + system of this process, never the registry's or the proxy's)
per copy and per request is not. The driver starts one registry (and, by default, the 20 ms
RTT proxy of ``bench.run``), pushes the ``same-registry-index`` image (4 platforms x 8
layers) and the ``same-registry`` image (20 layers), then runs worker processes, alternating
between the trees given with ``--tree`` (round robin, ``--rounds`` times). A worker imports
``imagecopy`` from its tree (``PYTHONPATH=<tree>/operator``), builds one ``RegistryPool`` and
``Copier``, does one untimed warm-up copy of each image and then ``--copies`` copies of each
into fresh destination repositories, and reports process CPU and the request count
(``CopyReport.requests``) of each copy::

    .venv/bin/python -m bench.reqcpu --tree before=/work/main --tree after=. --rounds 3
    .venv/bin/python -m bench.reqcpu --tree after=. --profile /tmp/rq.prof   # cProfile, index copies

Reported per tree and image: the median CPU ms per copy and per request over all copies.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testkit.tools import REPO_ROOT

IMAGES = ("index", "single")


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from imagecopy.copy.engine import Copier
    from imagecopy.copy.options import CopyOptions
    from imagecopy.oci.pool import RegistryPool, TransportSettings
    from imagecopy.oci.reference import Reference

    host = args.host
    sources = {"index": f"{host}/src/multi:v1", "single": f"{host}/src/app:v1"}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in IMAGES}
    profiler: Any = None
    if args.profile and args.profile.endswith(".txt"):
        from pyinstrument import Profiler

        # sampled (not traced): shares without cProfile's per-call overhead
        profiler = Profiler(interval=0.0002, async_mode="disabled")
    elif args.profile:
        profiler = cProfile.Profile(time.process_time)
    async with RegistryPool(TransportSettings(plain_http=frozenset([host]))) as pool:
        copier = Copier(pool)
        for name in IMAGES:
            src = Reference.parse(sources[name])
            await copier.copy(
                src, Reference.parse(f"{host}/rq/{args.tag}/warm-{name}:v1"), CopyOptions()
            )
        for n in range(args.copies):
            for name in IMAGES:
                src = Reference.parse(sources[name])
                dst = Reference.parse(f"{host}/rq/{args.tag}/{name}-{n}:v1")
                if profiler is not None and name == "index":
                    profiler.start() if hasattr(profiler, "start") else profiler.enable()
                c0 = time.process_time()
                report = await copier.copy(src, dst, CopyOptions())
                cpu = time.process_time() - c0
                if profiler is not None and name == "index":
                    profiler.stop() if hasattr(profiler, "start") else profiler.disable()
                if report.destination_digest is None:
                    raise RuntimeError(f"copy of {name} failed: {report.outcome}")
                results[name].append({"cpu_ms": cpu * 1000, "requests": report.requests})
    if profiler is not None and hasattr(profiler, "start"):
        text = profiler.output_text(unicode=False, color=False, show_all=True)
        Path(args.profile).write_text(text)
    elif profiler is not None:
        profiler.dump_stats(args.profile)
    return results


def _run_worker(tree: Path, host: str, tag: str, copies: int, profile: str | None) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "operator"), str(REPO_ROOT)])
    argv = [sys.executable, "-m", "bench.reqcpu", "--worker", "--host", host, "--tag", tag]
    argv += ["--copies", str(copies)]
    if profile:
        argv += ["--profile", profile]
    out = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker for {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=8, help="copies of each image per worker")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="per direction; 0: no proxy")
    ap.add_argument(
        "--profile",
        help="profile the index copies of the first worker into this file: pyinstrument's "
        "text report when it ends in .txt, else cProfile stats (CPU time)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--host", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="w", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args))))
        return

    from bench.bigimage import MiB
    from bench.run import Proxy
    from testkit.images import push_image, push_index
    from testkit.registry import RegistryServer

    trees = [
        (label, Path(path).resolve()) for label, _, path in (t.partition("=") for t in args.tree)
    ]
    trees = trees or [("here", REPO_ROOT)]
    work = Path(tempfile.mkdtemp(prefix="imagecopy-reqcpu-"))
    reg = RegistryServer(impl="v2", workdir=work / "reg").start()
    proxy = None
    try:
        push_index(
            reg,
            "src/multi",
            "v1",
            platforms=("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le"),
            layers=7,
            layer_size=2 * MiB,
            shared_base=True,
            seed=4,
        )
        push_image(reg, "src/app", "v1", layers=20, layer_size=4 * MiB, seed=20)
        host = reg.host
        if args.delay_ms > 0:
            proxy = Proxy(reg.host, args.delay_ms)
            host = proxy.host
        samples: dict[str, dict[str, list[dict[str, float]]]] = {
            label: {name: [] for name in IMAGES} for label, _ in trees
        }
        uid = f"{int(time.time()) % 100000:05d}"
        for r in range(args.rounds):
            for label, tree in trees:
                profile = args.profile if (args.profile and r == 0) else None
                got = _run_worker(tree, host, f"{uid}-{label}-{r}", args.copies, profile)
                for name in IMAGES:
                    samples[label][name].extend(got[name])
                load = os.getloadavg()[0]
                cpus = [round(s["cpu_ms"]) for s in got["index"]]
                print(f"round {r} {label}: index cpu ms {cpus} (load {load:.1f})", flush=True)
        print(
            f"\nmedians over {args.rounds} rounds x {args.copies} copies (load now "
            f"{os.getloadavg()[0]:.1f}):"
        )
        print(
            f"{'tree':<10} {'image':<7} {'requests':>8} {'cpu ms/copy':>12} {'cpu ms/request':>15}"
        )
        for label, _ in trees:
            for name in IMAGES:
                rows = samples[label][name]
                per_copy = statistics.median(s["cpu_ms"] for s in rows)
                per_req = statistics.median(s["cpu_ms"] / s["requests"] for s in rows)
                reqs = statistics.median(s["requests"] for s in rows)
                print(f"{label:<10} {name:<7} {reqs:>8.0f} {per_copy:>12.1f} {per_req:>15.3f}")
    finally:
        if proxy is not None:
            proxy.close()
        reg.stop()


if __name__ == "__main__":
    main()
