"""The operator at scale (issue 15): N ``ImageCopy`` objects on a real API server, the operator
as a process, one real registry. Not a test: it measures and writes ``bench/scale.md`` and
``bench/scale.json``.

    make bench-scale                       # 100, 1000 and 3000 in one namespace, 1000 in ten
    .venv/bin/python -m bench.scale --runs 100x1,1000x10 --interval 60
    .venv/bin/python -m bench.scale --runs 300x1 --profile   # py-spy during the bulk phase

A run ``NxK`` puts N objects in K fresh namespaces (round robin), each with a ``default``
ServiceAccount; the operator watches those namespaces only, logs at the chart's default level
(info; ``--verbose`` for Kopf's debug logs) and otherwise runs with default settings.

1. bulk apply: one ``kubectl apply --server-side`` of N objects, each a same-registry copy of
   one 4-blob image into its own repository (every blob mounted), ``interval`` set; the
   operator's API requests from the apply's start until all are Ready are counted by kind;
2. all Ready: the operator's ``imagecopy_objects{condition="Ready"}`` gauge polled once a
   second, then confirmed by a list of the objects (a list of 3,000 objects every second
   would cost the shared API server more than the operator);
3. quiet: after a settle pause, one window of ``interval`` + 10 s in which every object is
   re-checked about once with nothing to copy; the API server's audit log gives the operator's
   requests (User-Agent ``imagecopy-operator/…`` and ``kopf/…``), the registry's access log its
   requests, the counting TCP proxy in front of the API server the connections opened;
4. restart: SIGTERM, start again, and a window of 20 s: time until the liveness endpoint
   answers, requests, and objects seen not Ready.

Operator CPU is user + system time from ``/proc/<pid>/stat``; peak RSS is ``VmHWM``.
``--profile`` samples the operator with ``py-spy`` (``pip install py-spy``; only the thread
holding the GIL, waits left out) from the apply's start until all are Ready, and reports the
functions with the most samples, on the stack and at its top (``bench/profile.py``).
``bench/scale-notes.md`` (the reading of a run, written by hand) is appended to the report;
``--report-only`` rewrites the report from ``bench/scale.json`` after editing it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.profile import summarize
from e2e.controlplane import ControlPlane
from e2e.operator_harness import OperatorProcess, metric_value
from testkit.images import push_image
from testkit.registry import RegistryServer
from testkit.tcpcount import CountingTcpProxy
from testkit.tools import REPO_ROOT

BENCH = REPO_ROOT / "bench"
OPERATOR_AGENTS = ("imagecopy-operator/", "kopf/")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def operator_requests(plane: ControlPlane) -> list[dict[str, Any]]:
    return [
        e for e in plane.audit_events() if str(e.get("userAgent", "")).startswith(OPERATOR_AGENTS)
    ]


def kind_of(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{event.get('verb')} {ref.get('resource', '-')}{sub}"


def ready_count(custom: Any, selector: str) -> tuple[int, int]:
    items = custom.list_cluster_custom_object(
        "imagecopy.dev", "v1alpha1", "imagecopies", label_selector=selector
    )["items"]
    ready = 0
    for item in items:
        for cond in (item.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                ready += 1
    return ready, len(items)


def gauge_ready(operator: OperatorProcess) -> float:
    try:
        return metric_value(operator.metrics(), 'imagecopy_objects{condition="Ready"}')
    except OSError:
        return -1.0


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 1.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(period)
    raise RuntimeError(f"not reached in {timeout:.0f}s")


def count_kinds(events: list[dict[str, Any]]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for e in events:
        kinds[kind_of(e)] = kinds.get(kind_of(e), 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def copy_durations(log: str) -> dict[str, float]:
    """Median, p90 and longest ``duration=`` of the operator's ``copy outcome`` lines."""
    values = sorted(
        float(match.group(1))
        for match in re.finditer(r"copy outcome=copied .*? duration=([0-9.]+)s", log, re.IGNORECASE)
    )
    if not values:
        return {}
    return {
        "copy_s_median": round(values[len(values) // 2], 2),
        "copy_s_p90": round(values[min(len(values) - 1, int(len(values) * 0.9))], 2),
        "copy_s_max": round(values[-1], 2),
    }


def parse_runs(text: str) -> list[tuple[int, int]]:
    runs = []
    for part in text.split(","):
        if part.strip():
            n, _, k = part.strip().partition("x")
            runs.append((int(n), int(k or 1)))
    return runs


def run_size(
    n: int,
    namespaces: int,
    plane: ControlPlane,
    registry: RegistryServer,
    source: str,
    interval: int,
    workdir: Path,
    *,
    profile: bool = False,
    verbose: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    from kubernetes import client

    run = f"{n}x{namespaces}"
    names = [f"scale-{run}-{k}" for k in range(namespaces)]
    for namespace in names:
        plane.kubectl("create", "namespace", namespace)
        plane.kubectl("create", "serviceaccount", "default", "-n", namespace)
    selector = f"bench-run={run}"
    api = plane.api_client()
    custom = client.CustomObjectsApi(api)
    result: dict[str, Any] = {
        "run": run,
        "objects": n,
        "namespaces": namespaces,
        "interval_s": interval,
    }
    with CountingTcpProxy("127.0.0.1", plane.port) as proxy:
        kubeconfig = plane.admin_kubeconfig_via(
            f"https://127.0.0.1:{proxy.port}", workdir / f"kubeconfig-{run}"
        )
        operator = OperatorProcess(
            plane,
            {"IMAGECOPY_PROGRESS_INTERVAL": "10s", **(env or {})},
            kubeconfig=kubeconfig,
            kopf_options=("--standalone", *(f"--namespace={ns}" for ns in names)),
            log_path=workdir / f"operator-{run}.log",
            verbose=verbose,
        ).start()
        spy: subprocess.Popen[bytes] | None = None
        try:
            pid = operator.pid
            assert pid is not None
            time.sleep(2)
            rss0 = status_kib(pid, "VmRSS")
            docs = [
                {
                    "apiVersion": "imagecopy.dev/v1alpha1",
                    "kind": "ImageCopy",
                    "metadata": {
                        "name": f"c{i:05d}",
                        "namespace": names[i % namespaces],
                        "labels": {"bench-run": run},
                    },
                    "spec": {
                        "source": {"image": registry.ref(source, "v1")},
                        "destination": {"image": registry.ref(f"scale{run}/dst{i:05d}", "v1")},
                        "interval": f"{interval}s",
                    },
                }
                for i in range(n)
            ]
            manifest = workdir / f"objects-{run}.yaml"
            manifest.write_text(yaml.safe_dump_all(docs))
            profile_raw = workdir / f"profile-{run}.txt"
            if profile:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        *("record", "--pid", str(pid), "--format", "raw", "--gil"),
                        *("--rate", "200", "--output", str(profile_raw)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
            seen = len(operator_requests(plane))
            cpu0 = cpu_seconds(pid)
            t0 = time.monotonic()
            plane.kubectl("apply", "--server-side", "-f", str(manifest), timeout=1200)
            t_applied = time.monotonic()
            wait_until(lambda: gauge_ready(operator) >= n, 1800, period=1.0)
            t_ready = time.monotonic()
            cpu1 = cpu_seconds(pid)
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
                spy.wait(60)
                spy = None
            wait_until(lambda: ready_count(custom, selector)[0] == n, 120)
            bulk = operator_requests(plane)[seen:]
            result.update(
                apply_s=round(t_applied - t0, 1),
                ready_after_apply_start_s=round(t_ready - t0, 1),
                ready_after_last_created_s=round(t_ready - t_applied, 1),
                ready_per_s=round(n / (t_ready - t0), 1),
                cpu_ms_per_copy=round(1000 * (cpu1 - cpu0) / n, 1),
                bulk_cpu_share=round((cpu1 - cpu0) / (t_ready - t0), 2),
                bulk_api_per_object=round(len(bulk) / n, 2),
                bulk_api_kinds=count_kinds(bulk),
                load_after_bulk=round(os.getloadavg()[0], 1),
            )
            result.update(copy_durations(operator.logs()))
            if profile and profile_raw.exists():
                result["profile"] = summarize(profile_raw.read_text())

            # Quiet: every object re-checked about once, nothing to copy.
            time.sleep(5)
            seen = len(operator_requests(plane))
            mark = registry.mark()
            connections = proxy.connections
            cpu2 = cpu_seconds(pid)
            time.sleep(interval + 10)
            cpu3 = cpu_seconds(pid)
            window = operator_requests(plane)[seen:]
            registry_requests = len(registry.access_log_since(mark))
            rechecks = sum(1 for e in window if kind_of(e) == "patch imagecopies/status")
            result.update(
                quiet_rechecks=rechecks,
                quiet_api_requests=len(window),
                quiet_api_per_recheck=round(len(window) / max(rechecks, 1), 3),
                quiet_api_kinds=count_kinds(window),
                quiet_registry_per_recheck=round(registry_requests / max(rechecks, 1), 3),
                quiet_new_connections=proxy.connections - connections,
                quiet_cpu_ms_per_recheck=round(1000 * (cpu3 - cpu2) / max(rechecks, 1), 2),
                peak_rss_mib=round(status_kib(pid, "VmHWM") / 1024, 1),
                rss_mib=round(status_kib(pid, "VmRSS") / 1024, 1),
            )
            result["rss_kib_per_object"] = round((status_kib(pid, "VmRSS") - rss0) / n, 1)

            # Restart: graceful stop, start again, 20 s window.
            operator.stop()
            seen = len(operator_requests(plane))
            mark = registry.mark()
            t_start = time.monotonic()
            operator.start()
            t_alive = time.monotonic()
            not_ready = 0
            end = time.monotonic() + 20
            while time.monotonic() < end:
                ready, total = ready_count(custom, selector)
                not_ready = max(not_ready, total - ready)
                time.sleep(2)
            window = operator_requests(plane)[seen:]
            result.update(
                restart_alive_s=round(t_alive - t_start, 1),
                restart_api_requests=len(window),
                restart_api_kinds=count_kinds(window),
                restart_registry_requests=len(registry.access_log_since(mark)),
                restart_objects_not_ready=not_ready,
            )
        finally:
            if spy is not None:
                spy.kill()
            operator.stop()
            api.close()
    return result


def write_report(results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    for r in results:
        if "bulk_cpu_share" not in r and r.get("ready_after_apply_start_s"):
            busy = r["cpu_ms_per_copy"] * r["objects"] / 1000
            r["bulk_cpu_share"] = round(busy / r["ready_after_apply_start_s"], 2)
    (out / "scale.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    rows = [
        ("operator CPU per copy (ms)", "cpu_ms_per_copy"),
        ("bulk: operator API requests per object", "bulk_api_per_object"),
        ("quiet: API requests per object per interval", "quiet_api_per_recheck"),
        ("quiet: registry requests per object per interval", "quiet_registry_per_recheck"),
        ("quiet: new API connections in the window", "quiet_new_connections"),
        ("quiet: operator CPU per re-check (ms)", "quiet_cpu_ms_per_recheck"),
        ("quiet: re-checks in the window", "quiet_rechecks"),
        ("bulk apply (s)", "apply_s"),
        ("all Ready after apply start (s)", "ready_after_apply_start_s"),
        ("all Ready after the last was created (s)", "ready_after_last_created_s"),
        ("objects Ready per s", "ready_per_s"),
        ("operator CPU share of one core in the bulk phase", "bulk_cpu_share"),
        ("one copy's duration, median (s)", "copy_s_median"),
        ("one copy's duration, p90 (s)", "copy_s_p90"),
        ("1-minute load average when all were Ready", "load_after_bulk"),
        ("peak RSS (MiB)", "peak_rss_mib"),
        ("RSS per object above the idle operator (KiB)", "rss_kib_per_object"),
        ("restart: until alive (s)", "restart_alive_s"),
        ("restart: API requests in 20 s", "restart_api_requests"),
        ("restart: registry requests in 20 s", "restart_registry_requests"),
        ("restart: objects seen not Ready", "restart_objects_not_ready"),
    ]
    lines = [
        "# Operator at scale (`make bench-scale`)",
        "",
        f"Run {meta['date']} on {meta['machine']} ({meta['cpus']} cores, shared with the API "
        f"server, etcd, the registry and other sessions' work); `bench/scale.py` (method in its "
        f"docstring). Same-registry copies of one 4-blob image (every blob mounted), `interval: "
        f"{meta['interval']}s`, "
        + (
            f"settings `{' '.join(meta['env'])}`"
            if meta.get("env")
            else "default operator settings"
        )
        + f", info-level logs; commit "
        f"{meta['commit']}; 1-minute load average {meta['load']}. The first rows do not "
        "depend on the machine's load; the times do.",
        "",
        "| | " + " | ".join(f"{r['objects']} in {r['namespaces']} ns" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(str(r.get(key, "-")) for r in results) + " |")
    for title, key in (
        ("from the apply's start until all were Ready", "bulk_api_kinds"),
        ("in the quiet window", "quiet_api_kinds"),
        ("in the 20 s after a restart", "restart_api_kinds"),
    ):
        lines += ["", f"Requests of the operator {title}, by kind:", ""]
        for r in results:
            lines.append(f"- {r['run']}: `{r.get(key)}`")
    for r in results:
        if "profile" in r:
            lines += ["", f"Profile of {r['run']} (py-spy, bulk phase):", "", r["profile"]]
    notes = out / "scale-notes.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    (out / "scale.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs",
        default="100x1,1000x1,1000x10,3000x1",
        help="comma-separated runs, N objects in K namespaces as NxK",
    )
    parser.add_argument("--interval", type=int, default=60, help="spec.interval in seconds")
    parser.add_argument("--profile", action="store_true", help="py-spy the bulk phase")
    parser.add_argument("--verbose", action="store_true", help="Kopf's debug-level logs")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an operator setting for every run (repeatable), e.g. IMAGECOPY_MAX_COPIES_IN_FLIGHT=8",
    )
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite scale.md from scale.json (and scale-notes.md) without running",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((args.out / "scale.json").read_text())
        write_report(saved["results"], args.out, saved["meta"])
        return 0
    runs = parse_runs(args.runs)
    workdir = Path(tempfile.mkdtemp(prefix="imagecopy-scale-"))
    load_before = os.getloadavg()[0]
    results = []
    with ControlPlane() as plane:
        plane.apply_crds()
        registry = RegistryServer(impl="v2").start()
        try:
            push_image(registry, "scale/src", "v1", layers=3, layer_size=64 * 1024)
            for n, namespaces in runs:
                print(f"{n} objects in {namespaces} namespaces …", file=sys.stderr, flush=True)
                result = run_size(
                    n,
                    namespaces,
                    plane,
                    registry,
                    "scale/src",
                    args.interval,
                    workdir,
                    profile=args.profile,
                    verbose=args.verbose,
                    env=dict(item.split("=", 1) for item in args.env),
                )
                print(json.dumps(result), file=sys.stderr, flush=True)
                results.append(result)
                # Written after every run, so a long run's first results are kept.
                write_report(
                    results, args.out, _meta(args.interval, load_before, workdir, args.env)
                )
        finally:
            registry.stop()
    write_report(results, args.out, _meta(args.interval, load_before, workdir, args.env))
    print(f"wrote {args.out / 'scale.md'}; operator logs in {workdir}", file=sys.stderr)
    return 0


def _meta(
    interval: int, load_before: float, workdir: Path, env: list[str] | None = None
) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "interval": interval,
        "load": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "logs": str(workdir),
        "env": env,
    }


if __name__ == "__main__":
    sys.exit(main())
