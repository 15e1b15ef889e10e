"""Benchmark driver: imagecopy (CLI and in-process engine) against oras, crane, skopeo, regctl.

``make bench`` runs ``.venv/bin/python -m bench.run`` from the repository root; see
bench/README.md for the method. Writes bench/results.json, bench/results.md and
bench/wall_time.png.

    .venv/bin/python -m bench.run --quick                         # 2 runs, no profiles
    .venv/bin/python -m bench.run --scenarios same-registry,noop --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import apply_ready
from bench.bigimage import MiB, cached_layer, push_big_image
from bench.scaling import LAYER_SWEEP, QUICK_SIZE_SWEEP, SIZE_SWEEP, ScalingRegistry, all_images
from testkit.images import push_image, push_index
from testkit.proctime import Spawner, clock_info, floor, selfcheck
from testkit.registry import AccessLogEntry, RegistryServer
from testkit.tools import REPO_ROOT, find_tool

BENCH = REPO_ROOT / "bench"

PY = sys.executable
VENV_BIN = Path(PY).parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagecopy" / "bench"
PEERS = ("oras", "crane", "skopeo", "regctl")
ALL_TOOLS = ("imagecopy", "imagecopy-engine", *PEERS)
SCALING_PROXY_PORT = 29413  # below the ephemeral range
SCENARIOS = ("same-registry", "same-registry-index", "noop", "cross-registry")
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------


@dataclass
class ProcResult:
    wall_s: float
    rc: int
    maxrss_bytes: int
    cpu_s: float
    stderr: str


def run_measured(
    spawner: Spawner, argv: list[str], env: dict[str, str], timeout: float = 900.0
) -> ProcResult:
    """Run one tool process through the spawner (testkit/proctime.py): wall time from spawn
    to a blocking ``wait4`` reap (``perf_counter_ns``; a watchdog kills it past ``timeout``),
    peak RSS and CPU from the child's own rusage. The spawner is a small process because a
    child's ``ru_maxrss`` starts at its spawning parent's size (Linux keeps the pre-exec
    maximum); this driver is ~100 MiB, the spawner ~15 MiB (the floor in the results)."""
    m = spawner.measure(argv, env, timeout)
    err = m.stderr if not m.timed_out else f"killed after {timeout:.0f} s\n{m.stderr}"
    return ProcResult(m.wall_s, m.rc, m.maxrss_bytes, m.cpu_s, err[-3000:])


class Proxy:
    """testkit/proxy_server.py (netproxy in its own process) in front of one registry."""

    def __init__(self, upstream: str, delay_ms: float, listen: str = "127.0.0.1:0") -> None:
        self.delay_ms = delay_ms
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "testkit.proxy_server",
                "--upstream",
                upstream,
                "--delay-ms",
                str(delay_ms),
                "--listen",
                listen,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.host = line.split()[1]

    def dump(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        data: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class EngineWorker:
    """bench/engine_worker.py: one long-lived Python process running Copier.copy."""

    def __init__(self, plain_http: list[str], options: list[str]) -> None:
        argv = [PY, "-m", "bench.engine_worker"]
        for h in plain_http:
            argv += ["--plain-http", h]
        for o in options:
            argv += ["--option", o]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        hello = self._read()
        self.baseline_rss = int(hello["rss_bytes"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("engine worker died")
        data: dict[str, Any] = json.loads(line)
        return data

    def copy(
        self, src: str, dst: str, *, fresh_locations: bool = False, profile: str | None = None
    ) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cmd = {"src": src, "dst": dst, "fresh_locations": fresh_locations, "profile": profile}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- tools ------------------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    binary: str
    home: Path
    version: str = ""
    #: the exact command template (for the results), SRC/DST/hosts substituted per run
    template: str = ""

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.home)
        env["DOCKER_CONFIG"] = str(self.home / ".docker")
        env.pop("REGISTRY_AUTH_FILE", None)
        return env

    def argv(self, src: str, dst: str, hosts: list[str]) -> list[str]:
        if self.name == "imagecopy":
            a = [self.binary, "copy", src, dst]
            for h in hosts:
                a += ["--plain-http", h]
            return [*a, "--quiet"]
        if self.name == "oras":
            return [self.binary, "cp", "--from-plain-http", "--to-plain-http", src, dst]
        if self.name == "crane":
            return [self.binary, "copy", "--insecure", src, dst]
        if self.name == "skopeo":
            return [
                self.binary,
                "copy",
                "--quiet",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{src}",
                f"docker://{dst}",
            ]
        if self.name == "regctl":
            return [self.binary, "image", "copy", src, dst]
        raise ValueError(self.name)

    def prepare(self, hosts: list[str]) -> None:
        """Per-tool configuration for the registries of a scenario (untimed)."""
        if self.name == "regctl":
            for h in hosts:
                subprocess.run(
                    [self.binary, "registry", "set", "--tls", "disabled", h],
                    env=self.env,
                    check=True,
                    capture_output=True,
                )


def _first_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    m = re.search(r"v?\d+\.\d+\.\d+\S*", text)
    if m:
        return m.group(0)
    return text.splitlines()[0].strip() if text else "unknown"


def discover_tools(
    wanted: list[str], home_root: Path, install: bool
) -> tuple[dict[str, Tool], list[str]]:
    notes: list[str] = []
    if "regctl" in wanted and find_tool("regctl") is None and install:
        log("regctl missing: bench/install-peers.sh")
        subprocess.run(["bash", str(BENCH / "install-peers.sh")], check=False)
    tools: dict[str, Tool] = {}
    for name in wanted:
        home = home_root / name
        (home / ".docker").mkdir(parents=True, exist_ok=True)
        if name == "imagecopy-engine":
            tools[name] = Tool(name, PY, home)
            continue
        binary = str(VENV_BIN / "imagecopy") if name == "imagecopy" else find_tool(name)
        if binary is None or not os.access(binary, os.X_OK):
            notes.append(f"{name}: not installed, rows skipped")
            continue
        tools[name] = Tool(name, binary, home)
    vers = {
        "imagecopy": ["version"],
        "oras": ["version"],
        "crane": ["version"],
        "skopeo": ["--version"],
        "regctl": ["version", "--format", "{{.VCSTag}}"],
    }
    for t in tools.values():
        if t.name == "imagecopy-engine":
            t.version = _first_line([str(VENV_BIN / "imagecopy"), "version"])
            t.template = (
                "in one running Python process: Copier(RegistryPool(TransportSettings("
                "plain_http={HOSTS}))).copy(Reference.parse(SRC), Reference.parse(DST, "
                "default_tag=None), CopyOptions())"
            )
            continue
        t.version = _first_line([t.binary, *vers[t.name]], t.env)
        argv = t.argv("SRC", "DST", ["HOST"])
        argv[0] = t.name
        t.template = " ".join(argv)
        if t.name == "regctl":
            t.template = "regctl registry set --tls disabled HOST; " + t.template
    return tools, notes


# --- scenarios --------------------------------------------------------------------------------


@dataclass
class Run:
    ok: bool
    wall_s: float
    requests: int = 0
    blob_bytes: int = 0
    rss: int = 0
    cpu_s: float = 0.0
    rtts: int | None = None
    connections: int | None = None
    error: str = ""


@dataclass
class Scenario:
    name: str
    rtt_ms: int
    image: dict[str, int]
    src_repo: str
    tag: str
    digest: str
    registry: RegistryServer
    dst_registry: RegistryServer
    proxy: Proxy | None
    blob_sizes: dict[str, int]
    noop: bool = False
    #: a new destination registry (new port, empty storage) for every run: no tool can
    #: mount from what an earlier run left there (skopeo's blob-info cache would)
    fresh_dst: bool = False
    notes: list[str] = field(default_factory=list)
    #: a second proxy in front of a different destination registry (cross-registry at an RTT)
    dst_proxy: Proxy | None = None
    #: the engine forgets where blobs are between runs (a cross-registry copy into one
    #: destination registry must move the bytes every run, not mount from the last one)
    fresh_locations: bool = False
    #: the destination repositories' middle part (default: the name)
    slug: str = ""

    @property
    def src_host(self) -> str:
        return self.proxy.host if self.proxy else self.registry.host

    @property
    def dst_host(self) -> str:
        if self.dst_proxy is not None:
            return self.dst_proxy.host
        return self.proxy.host if self.proxy else self.dst_registry.host

    @property
    def proxies(self) -> list[Proxy]:
        return [p for p in (self.proxy, self.dst_proxy) if p is not None]

    @property
    def hosts(self) -> list[str]:
        return sorted({self.src_host, self.dst_host})

    @property
    def src(self) -> str:
        return f"{self.src_host}/{self.src_repo}:{self.tag}"

    def dst(self, repo: str) -> str:
        return f"{self.dst_host}/{repo}:{self.tag}"


def critical_path(requests: list[dict[str, Any]]) -> int:
    """The longest chain of strictly sequential requests (each starts after the previous one's
    response ended): the number of round trips the tool could not overlap."""
    spans = sorted(
        ((r["started"], r["started"] + r["duration_ms"] / 1000.0) for r in requests),
        key=lambda s: s[1],
    )
    n, last_end = 0, float("-inf")
    for start, end in spans:
        if start >= last_end:
            n += 1
            last_end = end
    return n


def proxy_counts(proxy: Proxy) -> dict[str, int]:
    """Drain the proxy's log: requests, their RTT chain and new connections since last time."""
    d = proxy.dump()
    reqs = d["requests"]
    return {
        "requests": len(reqs),
        "rtts": critical_path(reqs) if reqs else 0,
        "connections": int(d["connections"]),
    }


def blob_bytes_from_proxy(requests: list[dict[str, Any]]) -> int:
    """Blob content on the wire: upload bodies (PUT/PATCH on /blobs/) and blob GET answers."""
    total = 0
    for r in requests:
        if "/blobs/" not in r["path"]:
            continue
        if r["method"] in ("PUT", "PATCH", "POST"):
            total += int(r["req_body_bytes"])
        elif r["method"] == "GET":
            total += int(r["resp_body_bytes"])
    return total


def blob_bytes_from_logs(
    src: list[AccessLogEntry], dst: list[AccessLogEntry], sizes: dict[str, int]
) -> int:
    """Without a proxy: bytes the source served for blob GETs plus the size of every blob the
    destination committed (PUT …?digest=D → 201)."""
    total = sum(e.bytes for e in src if e.method == "GET" and "/blobs/sha" in e.path)
    for e in dst:
        d = e.q("digest")
        if e.method == "PUT" and e.status == 201 and d:
            total += sizes.get(d, 0)
    return total


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="imagecopy-bench-"))
        self.tools, self.notes = discover_tools(args.tools, self.work / "homes", args.install)
        self.registries: list[RegistryServer] = []
        self.proxies: list[Proxy] = []
        self.uid = f"{int(time.time()) % 100000:05d}"
        self.profiles = CACHE / "profiles"
        self.dst_n = 0
        self.spawner = Spawner(REPO_ROOT)

    # -- infrastructure ----------------------------------------------------------------------
    def registry(self, name: str) -> RegistryServer:
        reg = RegistryServer(impl="v2", workdir=self.work / name).start()
        self.registries.append(reg)
        return reg

    def proxy(self, reg: RegistryServer, delay_ms: float, listen: str = "127.0.0.1:0") -> Proxy:
        try:
            p = Proxy(reg.host, delay_ms, listen)
        except RuntimeError:
            if listen.endswith(":0"):
                raise
            p = Proxy(reg.host, delay_ms)  # the port is taken: any free one
        self.proxies.append(p)
        return p

    def close(self) -> None:
        self.spawner.close()
        for p in self.proxies:
            p.close()
        for r in self.registries:
            r.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    # -- scenario setup ----------------------------------------------------------------------
    def setup(self, name: str, reg: RegistryServer, reg2: RegistryServer, proxy: Proxy) -> Scenario:
        if name in ("same-registry", "noop"):
            repo = "src/app"
            if not getattr(self, "_app", None):
                img = push_image(reg, repo, "v1", layers=20, layer_size=4 * MiB, seed=20)
                self._app = img
            img = self._app
            sizes = {b["digest"]: int(b["size"]) for b in img.blobs}
            layer_bytes = sum(sizes.values())
            return Scenario(
                name,
                20,
                {"layers": 20, "blobs": len(sizes), "bytes": layer_bytes},
                repo,
                "v1",
                img.digest,
                reg,
                reg,
                proxy,
                sizes,
                noop=name == "noop",
            )
        if name == "same-registry-index":
            repo = "src/multi"
            idx = push_index(
                reg,
                repo,
                "v1",
                platforms=("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le"),
                layers=7,
                layer_size=2 * MiB,
                shared_base=True,
                seed=4,
            )
            sizes = {b["digest"]: int(b["size"]) for b in idx.blobs}
            return Scenario(
                name,
                20,
                {
                    "layers": len(sizes) - 4,
                    "platforms": 4,
                    "layers_per_platform": 8,
                    "blobs": len(sizes),
                    "bytes": sum(sizes.values()),
                },
                repo,
                "v1",
                idx.digest,
                reg,
                reg,
                proxy,
                sizes,
            )
        if name == "cross-registry":
            repo = "src/big"
            layers = [cached_layer(CACHE / "layers", 128 * MiB, 1000 + i) for i in range(8)]
            log("pushing the 1 GiB cross-registry source image")
            digest = push_big_image(reg.url, repo, "v1", layers)
            sizes = {la.digest: la.size for la in layers}
            return Scenario(
                name,
                0,
                {"layers": 8, "blobs": 9, "bytes": sum(sizes.values())},
                repo,
                "v1",
                digest,
                reg,
                reg2,
                None,
                sizes,
                fresh_dst=True,
            )
        raise ValueError(name)

    # -- measuring ---------------------------------------------------------------------------
    def verify(self, sc: Scenario, repo: str) -> str:
        reg = sc.dst_registry
        with httpx.Client(timeout=30) as c:
            r = c.head(f"{reg.url}/v2/{repo}/manifests/{sc.tag}", headers={"Accept": ACCEPT})
        got = r.headers.get("Docker-Content-Digest", "")
        if r.status_code != 200 or got != sc.digest:
            return f"destination {repo}:{sc.tag} is {r.status_code} {got}, expected {sc.digest}"
        return ""

    def prepopulate(self, sc: Scenario, repo: str) -> None:
        """noop: make the destination already up to date (directly, without the proxy)."""
        crane = find_tool("crane")
        assert crane is not None
        subprocess.run(
            [
                crane,
                "copy",
                "--insecure",
                f"{sc.registry.host}/{sc.src_repo}:{sc.tag}",
                f"{sc.dst_registry.host}/{repo}:{sc.tag}",
            ],
            check=True,
            capture_output=True,
        )

    def one_run(self, sc: Scenario, tool: Tool, repo: str, engine: EngineWorker | None) -> Run:
        with self.destination(sc, tool):
            return self._one_run(sc, tool, repo, engine)

    @contextlib.contextmanager
    def destination(self, sc: Scenario, tool: Tool) -> Iterator[None]:
        """For ``fresh_dst`` scenarios: a new, empty destination registry around one run."""
        if not sc.fresh_dst:
            yield
            return
        self.dst_n += 1
        work = self.work / f"dst-{self.dst_n}"
        sc.dst_registry = RegistryServer(impl="v2", workdir=work).start()
        try:
            tool.prepare(sc.hosts)
            yield
        finally:
            sc.dst_registry.stop()
            shutil.rmtree(work, ignore_errors=True)

    def _one_run(self, sc: Scenario, tool: Tool, repo: str, engine: EngineWorker | None) -> Run:
        marks = None
        if sc.proxy is not None:
            for p in sc.proxies:
                p.dump()  # drop whatever came before
        else:
            marks = (sc.registry.mark(), sc.dst_registry.mark())
        if engine is not None:
            ans = engine.copy(sc.src, sc.dst(repo), fresh_locations=sc.fresh_locations)
            if not ans.get("ok"):
                return Run(False, 0.0, error=str(ans.get("error")))
            run = Run(
                True, float(ans["wall_s"]), rss=int(ans["maxrss_bytes"]), cpu_s=float(ans["cpu_s"])
            )
        else:
            pr = run_measured(self.spawner, tool.argv(sc.src, sc.dst(repo), sc.hosts), tool.env)
            if pr.rc != 0:
                return Run(False, pr.wall_s, error=f"exit {pr.rc}: {pr.stderr.strip()[-500:]}")
            run = Run(True, pr.wall_s, rss=pr.maxrss_bytes, cpu_s=pr.cpu_s)
        if sc.proxy is not None:
            dumps = [p.dump() for p in sc.proxies]
            reqs = [r for d in dumps for r in d["requests"]]
            run.requests = len(reqs)
            run.blob_bytes = blob_bytes_from_proxy(reqs)
            run.rtts = critical_path(reqs)
            run.connections = sum(int(d["connections"]) for d in dumps)
            self.save_requests(sc, tool, reqs)
        else:
            assert marks is not None
            src_log = sc.registry.access_log_since(marks[0])
            dst_log = sc.dst_registry.access_log_since(marks[1])
            if sc.registry is sc.dst_registry:
                dst_log = []
            run.requests = len(src_log) + len(dst_log)
            run.blob_bytes = blob_bytes_from_logs(src_log, dst_log, sc.blob_sizes)
        err = self.verify(sc, repo)
        if err:
            run.ok, run.error = False, err
        return run

    def save_requests(self, sc: Scenario, tool: Tool, reqs: list[dict[str, Any]]) -> None:
        """Keep the last run's request log per tool (for RTT and request-count analysis)."""
        out = CACHE / "requests" / sc.name
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{tool.name}.json").write_text(json.dumps(reqs, indent=1))

    def scenario(
        self,
        sc: Scenario,
        *,
        only: tuple[str, ...] | None = None,
        runs: int | None = None,
        warmup: int | None = None,
    ) -> dict[str, Any]:
        args = self.args
        n_runs = args.runs if runs is None else runs
        n_warmup = args.warmup if warmup is None else warmup
        tools = [t for t in self.tools.values() if only is None or t.name in only]
        if not sc.fresh_dst:
            for t in tools:
                t.prepare(sc.hosts)
        # host without port: TransportSettings matches it for every port (fresh registries)
        plain = sorted({h.rsplit(":", 1)[0] for h in sc.hosts}) if sc.fresh_dst else sc.hosts
        engine = (
            EngineWorker(plain, args.engine_option)
            if any(t.name == "imagecopy-engine" for t in tools)
            else None
        )
        runs: dict[str, list[Run]] = {t.name: [] for t in tools}
        errors: dict[str, str] = {}
        counter = iter(range(1_000_000))

        def dest_repo(tool: Tool) -> str:
            slug = sc.slug or sc.name
            if sc.noop:
                return f"bench/{slug}/{tool.name}-{self.uid}"
            return f"bench/{slug}/{tool.name}-{self.uid}-{next(counter)}"

        if sc.noop:
            for t in tools:
                self.prepopulate(sc, dest_repo(t))
        # warm-up: one untimed run per tool (page cache, engine connection pool, registry)
        for t in tools:
            for _ in range(n_warmup):
                r = self.one_run(
                    sc, t, dest_repo(t), engine if t.name == "imagecopy-engine" else None
                )
                if not r.ok:
                    errors[t.name] = r.error
                    log(f"{sc.name}: {t.name} warm-up failed: {r.error}")
        order = [t for t in tools if t.name not in errors]
        for i in range(n_runs):
            rnd = random.Random(i)
            rnd.shuffle(order)  # interleave tools; shuffle against drift on a noisy machine
            for t in order:
                r = self.one_run(
                    sc, t, dest_repo(t), engine if t.name == "imagecopy-engine" else None
                )
                if not r.ok:
                    log(f"{sc.name}: {t.name} run {i} failed: {r.error}")
                    errors.setdefault(t.name, r.error)
                    continue
                runs[t.name].append(r)
            log(f"{sc.name}: round {i + 1}/{n_runs} done")
        if engine is not None and args.profile and sc.name in ("same-registry", "cross-registry"):
            out = self.profiles / sc.name
            log(f"{sc.name}: profiling one engine copy -> {out}.txt")
            with self.destination(sc, self.tools["imagecopy-engine"]):
                engine.copy(
                    sc.src,
                    sc.dst(dest_repo(self.tools["imagecopy-engine"])),
                    profile=str(out),
                )
            for p in sc.proxies:
                p.dump()
        baseline = engine.baseline_rss if engine is not None else 0
        if engine is not None:
            engine.close()
        return self.summarize(sc, runs, errors, baseline)

    # -- scaling sweep -----------------------------------------------------------------------
    def scaling(self, proxy_delay_ms: float) -> dict[str, Any]:
        """Same-registry copies of the sweep images (bench/scaling.py) for every tool, and the
        engine's cross-registry copy of each for contrast, all at the injected RTT."""
        args = self.args
        sizes = QUICK_SIZE_SWEEP if args.quick else SIZE_SWEEP
        images = all_images(sizes)
        sreg = ScalingRegistry(CACHE).start()
        try:
            t0 = time.monotonic()
            pushed = {p.image.key: p for p in sreg.ensure(images, log)}
            log(f"scaling: {len(images)} source images ready in {time.monotonic() - t0:.0f} s")
            reg = sreg.registry
            # The same proxy port every run: skopeo's blob-info cache (kept across processes)
            # then knows the sweep's blobs from an earlier run and mounts in its warm-up too,
            # instead of moving 5 GiB once per run.
            proxy = self.proxy(reg, proxy_delay_ms, f"127.0.0.1:{SCALING_PROXY_PORT}")
            dst = self.registry("scaling-dst")
            dst_proxy = self.proxy(dst, proxy_delay_ms)
            points: list[dict[str, Any]] = []
            cross: list[dict[str, Any]] = []
            for im in images:
                pu = pushed[im.key]
                image = {"layers": im.layers, "blobs": len(pu.blob_sizes), "bytes": im.total}
                sweeps = [n for n, sw in (("size", sizes), ("layers", LAYER_SWEEP)) if im in sw]
                sc = Scenario(
                    f"scaling {im.label}",
                    int(args.rtt_ms),
                    image,
                    im.repo,
                    "v1",
                    pu.digest,
                    reg,
                    reg,
                    proxy,
                    pu.blob_sizes,
                    slug=f"scaling/{im.key}",
                )
                log(f"scaling same-registry: {im.label}")
                summary = self.scenario(sc, runs=args.scaling_runs)
                summary["sweeps"] = sweeps
                points.append(summary)
                xc = Scenario(
                    f"scaling cross-registry {im.label}",
                    int(args.rtt_ms),
                    image,
                    im.repo,
                    "v1",
                    pu.digest,
                    reg,
                    dst,
                    proxy,
                    pu.blob_sizes,
                    dst_proxy=dst_proxy,
                    fresh_locations=True,
                    slug=f"scaling-cross/{im.key}",
                )
                small = im.total <= 128 * MiB
                log(f"scaling cross-registry (engine): {im.label}")
                xs = self.scenario(
                    xc, only=("imagecopy-engine",), runs=2 if small else 1, warmup=int(small)
                )
                xs["sweeps"] = sweeps
                cross.append(xs)
            return {"same_registry": points, "cross_registry_engine": cross}
        finally:
            sreg.stop()

    # -- results -----------------------------------------------------------------------------
    def summarize(
        self, sc: Scenario, runs: dict[str, list[Run]], errors: dict[str, str], engine_baseline: int
    ) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        for name, rs in runs.items():
            tool = self.tools[name]
            entry: dict[str, Any] = {
                "tool": name,
                "version": tool.version,
                "command": tool.template,
                "runs": len(rs),
            }
            if not rs:
                entry["error"] = errors.get(name, "no successful run")
                results.append(entry)
                continue
            walls = [r.wall_s for r in rs]
            entry["wall_s"] = {
                "min": round(min(walls), 4),
                "median": round(statistics.median(walls), 4),
                "max": round(max(walls), 4),
            }
            entry["wall_s_runs"] = [round(w, 4) for w in walls]
            entry["requests"] = int(statistics.median([r.requests for r in rs]))
            entry["blob_bytes_moved"] = int(statistics.median([r.blob_bytes for r in rs]))
            entry["peak_rss_bytes"] = max(r.rss for r in rs)
            entry["cpu_s"] = round(statistics.median([r.cpu_s for r in rs]), 3)
            if name == "imagecopy-engine":
                entry["rss_growth_bytes"] = max(r.rss for r in rs) - engine_baseline
            if sc.proxy is not None:
                rtts = [r.rtts for r in rs if r.rtts is not None]
                entry["rtts"] = int(statistics.median(rtts)) if rtts else None
                entry["wall_in_rtts"] = round(statistics.median(walls) / (sc.rtt_ms / 1000), 1)
                entry["new_connections"] = int(statistics.median([r.connections or 0 for r in rs]))
            else:
                entry["throughput_mib_s"] = round(
                    sc.image["bytes"] / statistics.median(walls) / MiB, 1
                )
            if name in errors:
                entry["error"] = errors[name]
            results.append(entry)
        peers = [r for r in results if r["tool"] in PEERS and "wall_s" in r]
        best = min(peers, key=lambda r: r["wall_s"]["median"]) if peers else None
        crane = next((r for r in results if r["tool"] == "crane" and "wall_s" in r), None)
        for r in results:
            if best is not None and "wall_s" in r:
                r["ratio_vs_best_peer"] = round(r["wall_s"]["median"] / best["wall_s"]["median"], 3)
            if crane is not None and "wall_s" in r and sc.proxy is None:
                r["ratio_vs_crane"] = round(r["wall_s"]["median"] / crane["wall_s"]["median"], 3)
        out: dict[str, Any] = {
            "name": sc.name,
            "rtt_ms": sc.rtt_ms,
            "image": sc.image,
            "source_digest": sc.digest,
            "best_peer": best["tool"] if best else None,
            "results": results,
        }
        out["targets"] = evaluate_targets(out)
        return out


def _get(results: list[dict[str, Any]], tool: str) -> dict[str, Any] | None:
    return next((r for r in results if r["tool"] == tool and "wall_s" in r), None)


def evaluate_targets(sc: dict[str, Any]) -> list[dict[str, Any]]:
    res = sc["results"]
    eng, cli = _get(res, "imagecopy-engine"), _get(res, "imagecopy")
    blobs = int(sc["image"].get("blobs", 0))
    out: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: float, op: str = "<=") -> None:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"target": what, "value": value, "limit": limit, "op": op, "met": met})

    def val(r: dict[str, Any] | None, key: str) -> float | None:
        return None if r is None else r.get(key)

    name = sc["name"]
    if name == "same-registry":
        add("engine wall / best peer", val(eng, "ratio_vs_best_peer"), 0.5)
        add("CLI wall / best peer", val(cli, "ratio_vs_best_peer"), 0.8)
        add("engine requests (blobs + 3)", val(eng, "requests"), blobs + 3)
        add("CLI requests (blobs + 3)", val(cli, "requests"), blobs + 3)
        add("engine blob bytes moved", val(eng, "blob_bytes_moved"), 0)
        add("CLI blob bytes moved", val(cli, "blob_bytes_moved"), 0)
        add("engine RTTs", val(eng, "rtts"), 5)
    elif name == "same-registry-index":
        add("engine wall / best peer", val(eng, "ratio_vs_best_peer"), 0.5)
        add("engine RTTs", val(eng, "rtts"), 7)
    elif name == "cross-registry":
        for label, r in (("engine", eng), ("CLI", cli)):
            v = val(r, "ratio_vs_best_peer")
            add(f"{label} throughput / best peer", None if not v else round(1 / v, 3), 1.0, ">=")
        add(
            "CLI peak RSS (MiB)",
            None if cli is None else round(cli["peak_rss_bytes"] / MiB, 1),
            150,
        )
        add(
            "engine peak RSS (MiB)",
            None if eng is None else round(eng["peak_rss_bytes"] / MiB, 1),
            150,
        )
    elif name == "noop":
        add("CLI wall / best peer", val(cli, "ratio_vs_best_peer"), 1.5)
        add("engine requests", val(eng, "requests"), 2)
        add("CLI requests", val(cli, "requests"), 2)
    return out


# --- reports ----------------------------------------------------------------------------------


def machine() -> str:
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1024 * 1024)
    return (
        f"{os.cpu_count()} cores, {mem} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )


def _selfcheck_line(check: dict[str, Any] | None) -> str:
    """results.md's line on the clock's self-check (testkit.proctime.selfcheck)."""
    if not check:
        return "- clock self-check: not run"
    walls = ", ".join(f"{w:.4f}" for w in check["sleep_walls_s"])
    verdict = "passed" if check["ok"] else "FAILED: wall times of this run are not to be trusted"
    return (
        f"- clock self-check {verdict}: `sleep {check['sleep_s']}` measured {walls} s "
        f"(fastest {check['sleep_excess_min_s'] * 1e3:.2f} ms over the sleep; a polling wait "
        f"would add up to 50 ms); a 0.2 s CPU spin reported {check['spin_cpu_s']:.3f} s CPU"
    )


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"


def write_markdown(data: dict[str, Any], path: Path) -> None:
    clk = data.get("clock", {})
    load0 = "/".join(f"{x:.1f}" for x in data.get("load_avg_start", []))
    load1 = "/".join(f"{x:.1f}" for x in data.get("load_avg_end", []))
    lines = [
        "# imagecopy benchmark results",
        "",
        f"- date: {data['date']}, commit {data.get('commit', '?')}, "
        f"{data.get('elapsed_s', 0):.0f} s in all",
        f"- machine: {data['machine']}; load average (1/5/15 min) {load0} at the start, "
        f"{load1} at the end",
        f"- clock: {clk.get('clock', '?')} ({clk.get('implementation', '?')}, resolution "
        f"{clk.get('resolution_s', 0):g} s); process rows are spawn to a blocking wait4 reap; "
        f"floor = /bin/true: {clk.get('true_wall_ns_median', 0) / 1e6:.2f} ms median "
        f"({clk.get('true_wall_ns_min', 0) / 1e6:.2f} ms min), peak RSS floor "
        f"{fmt_bytes(clk.get('true_maxrss_bytes'))} (the spawner's own size)",
        _selfcheck_line(clk.get("selfcheck")),
        f"- runs per tool: {data['runs']} timed after {data['warmup']} warm-up "
        f"(cross-registry {data.get('cross_runs', data['runs'])}, scaling points "
        f"{data.get('scaling_runs', '-')}); wall times are medians with min-max; ratios are "
        "medians over the fastest peer's median in the same run",
        "- method, commands and caveats: bench/README.md",
        "",
    ]
    for n in data.get("notes", []):
        lines.append(f"- note: {n}")
    lines += ["", "## Summary", "", *summary_markdown(data)]
    for sc in data["scenarios"]:
        img = ", ".join(
            f"{k} {fmt_bytes(v) if k == 'bytes' else v}" for k, v in sc["image"].items()
        )
        net = f"{sc['rtt_ms']} ms RTT via proxy" if sc["rtt_ms"] else "loopback, no proxy"
        lines += [
            "",
            f"## {sc['name']}",
            "",
            f"Image: {img}. Network: {net}. Best peer: {sc['best_peer']}.",
            "",
        ]
        cross = sc["rtt_ms"] == 0
        head = ["tool", "median s", "min-max s", "x best peer"]
        head += ["x crane", "MiB/s"] if cross else ["RTTs (chain)", "wall/RTT"]
        head += ["requests", "blob bytes moved", "peak RSS", "CPU s"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in sc["results"]:
            if "wall_s" not in r:
                lines.append(f"| {r['tool']} | failed: {r.get('error', '')[:80]} |")
                continue
            w = r["wall_s"]
            row = [
                r["tool"],
                f"{w['median']:.3f}",
                f"{w['min']:.3f}-{w['max']:.3f}",
                f"{r.get('ratio_vs_best_peer', 0):.2f}",
            ]
            if cross:
                row += [f"{r.get('ratio_vs_crane', 0):.2f}", f"{r.get('throughput_mib_s', 0)}"]
            else:
                row += [str(r.get("rtts")), str(r.get("wall_in_rtts"))]
            rss = fmt_bytes(r["peak_rss_bytes"])
            if "rss_growth_bytes" in r:
                rss += f" (+{fmt_bytes(r['rss_growth_bytes'])})"
            row += [str(r["requests"]), fmt_bytes(r["blob_bytes_moved"]), rss, f"{r['cpu_s']:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "| target | value | limit | met |", "|---|---|---|---|"]
        for t in sc["targets"]:
            met = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
            lines.append(f"| {t['target']} | {t['value']} | {t['op']} {t['limit']} | {met} |")
    if "scaling" in data:
        lines += scaling_markdown(data["scaling"])
    if "apply_ready" in data:
        lines += apply_ready_markdown(data["apply_ready"])
    lines += ["", "## Commands", ""]
    for name, cmd in data["commands"].items():
        lines.append(f"- `{name}` ({data['versions'].get(name, '')}): `{cmd}`")
    path.write_text("\n".join(lines) + "\n")


README_BEGIN = "<!-- bench:begin (generated by bench/run.py from bench/results.json) -->"
README_END = "<!-- bench:end -->"


def summary_markdown(data: dict[str, Any]) -> list[str]:
    """The headline table (results.md "Summary" and the README's benchmark section)."""
    tools = [t for t in ALL_TOOLS if t in data.get("versions", {})]
    head = ["scenario", *[f"{t} {data['versions'][t]}" for t in tools]]
    lines = [
        f"Run of {data['date'][:16].replace('T', ' ')} UTC, commit {data.get('commit', '?')[:12]}, "
        f"{data['machine'].split(',')[0]}, load average "
        f"{data.get('load_avg_start', [0])[0]:.1f} at the start and "
        f"{data.get('load_avg_end', [0])[0]:.1f} at the end; median wall s "
        "(x the best peer's median in the same run); clock resolution "
        f"{data.get('clock', {}).get('resolution_s', 0):g} s, /bin/true spawn floor "
        f"{data.get('clock', {}).get('true_wall_ns_median', 0) / 1e6:.2f} ms.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def row(label: str, sc: dict[str, Any]) -> str:
        by = {r["tool"]: r for r in sc["results"]}
        cells = [label]
        for t in tools:
            r = by.get(t)
            m = _median(r)
            if r is None or m is None:
                cells.append("-")
                continue
            text = f"{m:.3f}"
            if t.startswith("imagecopy") or t == sc.get("best_peer"):
                ratio = r.get("ratio_vs_best_peer")
                text += f" ({ratio:.2f})" if ratio is not None else ""
            if t == "imagecopy-engine":
                text = f"**{text}**"
            cells.append(text)
        return "| " + " | ".join(cells) + " |"

    for sc in data["scenarios"]:
        net = f"{sc['rtt_ms']} ms RTT" if sc["rtt_ms"] else "loopback"
        lines.append(row(f"{sc['name']} ({net})", sc))
        by = {r["tool"]: r for r in sc["results"]}
        cells = ["  requests / blob bytes moved"]
        for t in tools:
            r = by.get(t)
            cells.append(
                "-"
                if r is None or "requests" not in r
                else f"{r['requests']} / {fmt_bytes(r['blob_bytes_moved'])}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    for p in (data.get("scaling") or {}).get("same_registry", []):
        if p["image"]["bytes"] >= 4 * 1024 * MiB or p["image"]["layers"] >= 128:
            lines.append(row(p["name"] + f" ({p['rtt_ms']} ms RTT)", p))
    sweep = [
        p for p in (data.get("scaling") or {}).get("same_registry", []) if "size" in p["sweeps"]
    ]
    if len(sweep) >= 2:
        lo, hi = sweep[0], sweep[-1]
        parts = []
        for t in tools:
            a = _median(next((r for r in lo["results"] if r["tool"] == t), None))
            b = _median(next((r for r in hi["results"] if r["tool"] == t), None))
            if a and b:
                parts.append(f"{t} {a:.3f} → {b:.3f} s ({b / a:.2f}x)")
        lines += [
            "",
            f"Flat in bytes, {lo['name'].removeprefix('scaling ')} → "
            f"{hi['name'].removeprefix('scaling ')} (same registry, median): "
            + "; ".join(parts)
            + ".",
        ]
    lines += ["", "Targets (issue 14) in this run:", ""]
    for sc in data["scenarios"]:
        for t in sc["targets"]:
            met = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
            lines.append(
                f"- {sc['name']}: {t['target']} = {t['value']} ({t['op']} {t['limit']}: {met})"
            )
    ar = data.get("apply_ready")
    if ar:
        ph = ar["phases_median_s"]
        lines += [
            "",
            f"apply → Ready (operator on a real API server, 20-layer same-registry promotion, "
            f"{ar['rtt_ms']} ms RTT, median of {ar['runs']}): **{ar['wall_s']['median']:.3f} s** "
            f"(goal ≤ {ar['goal_s']} s: {'met' if ar['met'] else 'missed'}); watch → handler "
            f"{ph.get('watch_s')} s, handler → copy start {ph.get('before_copy_s')} s, copy "
            f"{ph.get('copy_s')} s, Ready written → seen {ph.get('after_status_write_s')} s.",
        ]
    return lines


def update_readme(data: dict[str, Any], readme: Path) -> bool:
    """Replace the generated block of the README's benchmark section; False if no markers."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    body = "\n".join(summary_markdown(data))
    readme.write_text(f"{head}{README_BEGIN}\n{body}\n{README_END}{tail}")
    return True


def _median(r: dict[str, Any] | None) -> float | None:
    return None if r is None or "wall_s" not in r else float(r["wall_s"]["median"])


def _sweep_rows(
    points: list[dict[str, Any]], cross: list[dict[str, Any]], sweep: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The points of one sweep with their cross-registry contrast, in the sweep's order."""
    key = "bytes" if sweep == "size" else "layers"
    rows = [(p, x) for p, x in zip(points, cross, strict=True) if sweep in p["sweeps"]]
    return sorted(rows, key=lambda r: int(r[0]["image"][key]))


def scaling_markdown(sc: dict[str, Any]) -> list[str]:
    points, cross = sc["same_registry"], sc["cross_registry_engine"]
    tools = [r["tool"] for r in points[0]["results"]] if points else []
    lines = [
        "",
        "## scaling: same-registry copy against image size and layer count",
        "",
        f"{points[0]['rtt_ms'] if points else 20} ms RTT via proxy, distribution 2.8; median "
        "wall s per tool (x best peer), then the engine's requests and RTT chain, and the "
        "engine's cross-registry copy of the same image (every byte moved, through a second "
        "proxy in front of a second registry) for contrast.",
    ]
    for sweep, title in (
        ("size", "against size (8 layers)"),
        ("layers", "against layers (128 MiB)"),
    ):
        rows = _sweep_rows(points, cross, sweep)
        if not rows:
            continue
        head = ["image", *tools, "engine requests", "engine RTTs", "cross-registry engine s"]
        lines += ["", f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p, x in rows:
            by = {r["tool"]: r for r in p["results"]}
            cells = [p["name"].removeprefix("scaling ")]
            for t in tools:
                r = by.get(t)
                m = _median(r)
                if m is None or r is None:
                    cells.append("failed")
                    continue
                ratio = r.get("ratio_vs_best_peer")
                cells.append(f"{m:.3f}" + (f" ({ratio:.2f})" if t.startswith("imagecopy") else ""))
            eng = by.get("imagecopy-engine", {})
            cells += [str(eng.get("requests", "-")), str(eng.get("rtts", "-"))]
            xe = next((r for r in x["results"] if r["tool"] == "imagecopy-engine"), None)
            xm = _median(xe)
            cells.append("-" if xm is None else f"{xm:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def apply_ready_markdown(ar: dict[str, Any]) -> list[str]:
    w, ph = ar["wall_s"], ar["phases_median_s"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return [
        "",
        "## apply-ready: ImageCopy created → Ready=True (operator on a real API server)",
        "",
        f"Same-registry promotion of the 20-layer image (21 blobs, 80 MiB) at {ar['rtt_ms']} ms "
        f"RTT; the API client creates the object, a watch opened before sees Ready=True; "
        f"median of {ar['runs']} after 1 warm-up. Operator log: {ar['operator_log']}.",
        "",
        "| median s | min-max s | goal | watch → handler | handler → copy start | copy "
        "| Ready status write → seen | registry requests / RTT chain |",
        "|---|---|---|---|---|---|---|---|",
        f"| {w['median']:.3f} | {w['min']:.3f}-{w['max']:.3f} | ≤ {ar['goal_s']} "
        f"({'met' if ar['met'] else '**missed**'}) | {f(ph.get('watch_s'))} | "
        f"{f(ph.get('before_copy_s'))} | {f(ph.get('copy_s'))} | "
        f"{f(ph.get('after_status_write_s'))} | {ar.get('registry_requests_median', '-')} / "
        f"{ar.get('registry_rtts_median', '-')} |",
    ]


COLORS = {
    "imagecopy": "#1f77b4",
    "imagecopy-engine": "#17becf",
    "oras": "#ff7f0e",
    "crane": "#2ca02c",
    "skopeo": "#d62728",
    "regctl": "#9467bd",
}


def write_scaling_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = data["scaling"]
    points, cross = sc["same_registry"], sc["cross_registry_engine"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, sweep in zip(axes, ("size", "layers"), strict=True):
        rows = _sweep_rows(points, cross, sweep)
        xs = [
            p["image"]["bytes"] / MiB if sweep == "size" else p["image"]["layers"] for p, _ in rows
        ]
        tools = [r["tool"] for r in rows[0][0]["results"]] if rows else []
        for t in tools:
            ys = [_median(next((r for r in p["results"] if r["tool"] == t), None)) for p, _ in rows]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=t, color=COLORS.get(t))
        ys = [
            _median(next((r for r in x["results"] if r["tool"] == "imagecopy-engine"), None))
            for _, x in rows
        ]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                marker="s",
                linestyle="--",
                color="grey",
                label="imagecopy-engine, cross-registry (bytes move)",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("image size, MiB (8 layers)" if sweep == "size" else "layers (128 MiB)")
        ax.set_ylabel("wall time, s (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(
            "same-registry copy vs image size"
            if sweep == "size"
            else "same-registry copy vs layers",
            fontsize=10,
        )
    axes[0].legend(fontsize=7)
    rtt = points[0]["rtt_ms"] if points else 20
    fig.suptitle(f"O(1) in bytes: same-registry copies at {rtt} ms RTT — {data['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = data["scenarios"]
    fig, axes = plt.subplots(1, len(scs), figsize=(4.2 * len(scs), 4.2), squeeze=False)
    colors = {
        "imagecopy": "#1f77b4",
        "imagecopy-engine": "#17becf",
        "oras": "#ff7f0e",
        "crane": "#2ca02c",
        "skopeo": "#d62728",
        "regctl": "#9467bd",
    }
    for ax, sc in zip(axes[0], scs, strict=True):
        rs = [r for r in sc["results"] if "wall_s" in r]
        names = [r["tool"] for r in rs]
        med = [r["wall_s"]["median"] for r in rs]
        lo = [r["wall_s"]["median"] - r["wall_s"]["min"] for r in rs]
        hi = [r["wall_s"]["max"] - r["wall_s"]["median"] for r in rs]
        ax.bar(
            range(len(rs)),
            med,
            yerr=[lo, hi],
            capsize=3,
            color=[colors.get(n, "grey") for n in names],
        )
        ax.set_xticks(range(len(rs)), names, rotation=40, ha="right", fontsize=8)
        net = f"{sc['rtt_ms']} ms RTT" if sc["rtt_ms"] else "loopback"
        ax.set_title(f"{sc['name']}\n({net})", fontsize=10)
        ax.set_ylabel("wall time, s (median, min-max)")
        for x, m in enumerate(med):
            ax.text(x, 0, f"{m:.2f}", ha="center", va="bottom", fontsize=7, color="white")
    fig.suptitle(f"imagecopy vs peers — {data['date'][:10]}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per tool (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset")
    ap.add_argument("--rtt-ms", type=float, default=20.0, help="injected RTT (default 20)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="make bench-quick: the same-registry rows alone (same-registry, "
        "same-registry-index, noop), 3 runs, no profiles, no scaling sweep, no apply-ready",
    )
    ap.add_argument(
        "--scaling-runs", type=int, default=3, help="timed runs per tool and sweep point (3)"
    )
    ap.add_argument(
        "--no-scaling", dest="scaling", action="store_false", help="skip the scaling sweep"
    )
    ap.add_argument(
        "--no-apply-ready",
        dest="apply_ready",
        action="store_false",
        help="skip the apply-to-Ready row (needs make controlplane)",
    )
    ap.add_argument(
        "--cross-runs",
        type=int,
        default=3,
        help="timed runs per tool of the 1 GiB cross-registry scenario (default 3)",
    )
    ap.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the pyinstrument profiles of the engine",
    )
    ap.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="do not try to build regctl when it is missing",
    )
    ap.add_argument("--out", default=str(BENCH), help="where results.* and wall_time.png go")
    ap.add_argument(
        "--report-only",
        metavar="RESULTS_JSON",
        help="measure nothing: re-render results.md, the plots and the README tables from a "
        "results.json into --out",
    )
    ap.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="CopyOptions field for the engine row (experiments), e.g. mount_concurrency=16",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.profile, args.scaling, args.apply_ready = 3, False, False, False
        if args.scenarios == ",".join(SCENARIOS):
            args.scenarios = "same-registry,same-registry-index,noop"
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.tools = [t for t in args.tools.split(",") if t]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    for t in args.tools:
        if t not in ALL_TOOLS:
            ap.error(f"unknown tool {t}")
    return args


@contextlib.contextmanager
def bench_session(args: argparse.Namespace) -> Iterator[Bench]:
    b = Bench(args)
    try:
        yield b
    finally:
        b.close()


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT)
    return out.stdout.strip()


def write_reports(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data, out / "results.md")
    try:
        write_plot(data, out / "wall_time.png")
        if "scaling" in data:
            write_scaling_plot(data, out / "scaling.png")
    except ImportError as exc:
        log(f"no plot: {exc}")
    if out.resolve() == BENCH.resolve():
        for readme in (REPO_ROOT / "README.md", BENCH / "README.md"):
            if update_readme(data, readme):
                log(f"{readme.relative_to(REPO_ROOT)}: benchmark table regenerated")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        write_reports(json.loads(Path(args.report_only).read_text()), Path(args.out))
        return 0
    started = time.monotonic()
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "operator"))
    data: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD") + (" (operator/ modified)" if dirty else ""),
        "machine": machine(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "runs": args.runs,
        "warmup": args.warmup,
        "cross_runs": args.cross_runs,
        "scaling_runs": args.scaling_runs,
        "engine_options": args.engine_option,
        "rtt_method": (
            "rtts = longest chain of strictly sequential requests seen at the proxy "
            "(each starts after the previous response ended); wall_in_rtts = "
            "median wall / RTT"
        ),
        "methods": {
            "wall": "CLI rows: posix_spawn to a blocking os.wait4 reap of the tool process, "
            "time.perf_counter_ns, in a small spawner process (testkit/proctime.py; a watchdog "
            "thread enforces the timeout with SIGKILL); imagecopy-engine: the await of "
            "Copier.copy in a warm worker process (perf_counter)",
            "requests_and_bytes": "delayed scenarios: testkit/netproxy.py request log; "
            "cross-registry: both registries' access logs (blob GET bytes + committed blob sizes)",
            "peak_rss": "ru_maxrss of the tool process from wait4 (at least the spawner's "
            "size, the floor below); engine: VmHWM of the worker process",
            "cpu": "ru_utime + ru_stime of the tool process from wait4; engine: getrusage "
            "delta per copy",
        },
        "scenarios": [],
    }
    with bench_session(args) as b:
        data["clock"] = {**clock_info(), **floor(b.spawner), "selfcheck": selfcheck(b.spawner)}
        if not data["clock"]["selfcheck"]["ok"]:
            b.notes.append(
                "clock self-check FAILED (see clock.selfcheck in results.json): the wall "
                "times of this run are not to be trusted"
            )
        data["notes"] = list(b.notes)
        data["versions"] = {t.name: t.version for t in b.tools.values()}
        data["commands"] = {t.name: t.template for t in b.tools.values()}
        reg = b.registry("registry-a")
        reg2 = b.registry("registry-b") if "cross-registry" in args.scenarios else reg
        proxy = b.proxy(reg, args.rtt_ms / 2)
        log(f"registry {reg.host}, proxy {proxy.host} (+{args.rtt_ms / 2:g} ms per direction)")
        for name in args.scenarios:
            sc = b.setup(name, reg, reg2, proxy)
            log(f"{name}: {sc.image}; tools {', '.join(b.tools)}")
            t0 = time.monotonic()
            runs = args.cross_runs if name == "cross-registry" else None
            data["scenarios"].append(b.scenario(sc, runs=runs))
            log(f"{name}: done in {time.monotonic() - t0:.0f} s")
        if args.scaling:
            t0 = time.monotonic()
            data["scaling"] = b.scaling(args.rtt_ms / 2)
            log(f"scaling: done in {time.monotonic() - t0:.0f} s")
        if args.apply_ready:
            t0 = time.monotonic()
            try:
                data["apply_ready"] = apply_ready.run(
                    proxy.host, reg, runs=5, log=log, requests=lambda: proxy_counts(proxy)
                )
            except Exception as exc:  # no control plane built: say so, keep the rest
                data["notes"].append(f"apply-ready: not run: {type(exc).__name__}: {exc}")
                log(f"apply-ready failed: {exc}")
            log(f"apply-ready: done in {time.monotonic() - t0:.0f} s")
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    data["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    write_reports(data, out)
    print((out / "results.md").read_text())
    log(f"finished in {data['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
