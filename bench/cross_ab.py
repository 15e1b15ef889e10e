"""Interleaved A/B of the engine's cross-registry copy between source trees (issue 14).

    .venv/bin/python -m bench.cross_ab --tree before=/work/main --tree after=. --runs 3
    .venv/bin/python -m bench.cross_ab --tree after=. --tree wide=.:IMAGECOPY_X=1 --perf

The 1 GiB image of the ``cross-registry`` scenario (8 x 128 MiB layers, ``bench.bigimage``,
cached) is pushed once into a source registry; each ``--tree NAME=PATH[:VAR=VALUE;...]`` gets
its own ``bench.engine_worker`` process importing ``imagecopy`` from ``PATH/operator`` (plus
the environment variables given), and the trees take turns, in alternating order, copying into
a new, empty destination registry each run. Printed per run and as medians: wall s, the
worker's CPU s for the copy (getrusage delta: under load, the number to compare) and its peak
RSS. ``--profile`` writes pyinstrument profiles of each tree's last run, ``--perf`` records
it with ``perf record`` (``perf report -i ... --sort dso,sym``): native time by library, e.g.
libcrypto (sha256), memmove, the kernel's socket copies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from bench.bigimage import cached_layer, push_big_image
from testkit.registry import RegistryServer

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagecopy" / "bench"
OUT = CACHE / "cross-ab"


class Worker:
    def __init__(self, name: str, spec: str, plain_http: str) -> None:
        tree, _, extra = spec.partition(":")
        env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve() / "operator"))
        for pair in filter(None, extra.split(";")):
            key, _, value = pair.partition("=")
            env[key] = value
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.engine_worker", "--plain-http", plain_http],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"engine worker {self.name} died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def copy(self, src: str, dst: str, profile: str | None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cmd = {"src": src, "dst": dst, "fresh_locations": True, "profile": profile}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write('{"quit": true}\n')
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH[:VAR=V;...]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="pyinstrument, last run")
    parser.add_argument("--perf", action="store_true", help="perf record, last run")
    args = parser.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree)
    work = Path(tempfile.mkdtemp(prefix="imagecopy-cross-ab-"))
    OUT.mkdir(parents=True, exist_ok=True)
    src = RegistryServer(impl="v2", workdir=work / "src").start()
    workers: list[Worker] = []
    try:
        layers = [cached_layer(CACHE / "layers", 128 * MiB, 1000 + i) for i in range(8)]
        push_big_image(src.url, "src/big", "v1", layers)
        host = src.host.rsplit(":", 1)[0]
        workers = [Worker(name, spec, host) for name, spec in trees.items()]
        runs: dict[str, list[dict[str, Any]]] = {w.name: [] for w in workers}
        n = 0
        for r in range(args.runs):
            last = r == args.runs - 1
            for w in workers if r % 2 == 0 else workers[::-1]:
                n += 1
                dst = RegistryServer(impl="v2", workdir=work / f"dst{n}").start()
                perf = None
                if args.perf and last:
                    data = str(OUT / f"{w.name}.perf.data")
                    perf = subprocess.Popen(
                        ["perf", "record", "-q", "-o", data, "-p", str(w.proc.pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1)
                profile = str(OUT / w.name) if args.profile and last else None
                try:
                    answer = w.copy(f"{src.host}/src/big:v1", f"{dst.host}/dst/big:v1", profile)
                finally:
                    if perf is not None:
                        perf.send_signal(2)
                        perf.wait()
                    dst.stop()
                    shutil.rmtree(work / f"dst{n}", ignore_errors=True)
                if not answer.get("ok"):
                    raise RuntimeError(f"{w.name}: {answer.get('error')}")
                runs[w.name].append(answer)
                print(
                    f"{w.name:12s} run {r}: wall {answer['wall_s']:.2f} s, "
                    f"cpu {answer['cpu_s']:.2f} s, peak RSS {answer['maxrss_bytes'] / MiB:.0f} "
                    f"MiB (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        gib = sum(layer.size for layer in layers) / (1024 * MiB)
        for name, answers in runs.items():
            wall = statistics.median(a["wall_s"] for a in answers)
            cpu = statistics.median(a["cpu_s"] for a in answers)
            rss = max(a["maxrss_bytes"] for a in answers) / MiB
            print(
                f"{name:12s} median wall {wall:.2f} s, cpu {cpu:.2f} s "
                f"({cpu / gib:.2f} s per GiB of layers), peak RSS {rss:.0f} MiB"
            )
        if args.profile or args.perf:
            print(f"profiles in {OUT}")
    finally:
        for w in workers:
            w.close()
        src.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
