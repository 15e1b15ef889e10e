"""The operator at scale (issue 15): N ``ImageCopy`` objects on a real API server, the operator
as a process, one real registry. Not a test: it measures and writes ``bench/scale.md`` and
``bench/scale.json``.

    make bench-scale                                    # N = 100 and 1000
    .venv/bin/python -m bench.scale --sizes 100,1000,3000 --interval 60

For each N, in a fresh namespace with a ``default`` ServiceAccount:

1. bulk apply: one ``kubectl apply --server-side`` of N objects, each a same-registry copy of
   one 4-blob image into its own repository (every blob mounted), ``interval`` set;
2. all Ready: polled once a second (a list of the namespace's objects);
3. quiet: after a settle pause, one window of ``interval`` + 10 s in which every object is
   re-checked about once with nothing to copy; the API server's audit log gives the operator's
   requests (User-Agent ``imagecopy-operator/…`` and ``kopf/…``), the registry's access log its
   requests, the counting TCP proxy in front of the API server the connections opened;
4. restart: SIGTERM, start again, and a window of 20 s: time until the liveness endpoint
   answers, requests, and objects seen not Ready.

Operator CPU is user + system time from ``/proc/<pid>/stat``; peak RSS is ``VmHWM``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from e2e.controlplane import ControlPlane
from e2e.operator_harness import OperatorProcess
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


def ready_count(custom: Any, namespace: str) -> tuple[int, int]:
    items = custom.list_namespaced_custom_object(
        "imagecopy.dev", "v1alpha1", namespace, "imagecopies"
    )["items"]
    ready = 0
    for item in items:
        for cond in (item.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                ready += 1
    return ready, len(items)


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 1.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(period)
    raise RuntimeError(f"not reached in {timeout:.0f}s")


def run_size(
    n: int,
    plane: ControlPlane,
    registry: RegistryServer,
    source: str,
    interval: int,
    workdir: Path,
) -> dict[str, Any]:
    from kubernetes import client

    namespace = f"scale-{n}"
    plane.kubectl("create", "namespace", namespace)
    plane.kubectl("create", "serviceaccount", "default", "-n", namespace)
    api = plane.api_client()
    custom = client.CustomObjectsApi(api)
    result: dict[str, Any] = {"objects": n, "interval_s": interval}
    with CountingTcpProxy("127.0.0.1", plane.port) as proxy:
        kubeconfig = plane.admin_kubeconfig_via(
            f"https://127.0.0.1:{proxy.port}", workdir / f"kubeconfig-{n}"
        )
        operator = OperatorProcess(
            plane,
            {"IMAGECOPY_PROGRESS_INTERVAL": "10s"},
            kubeconfig=kubeconfig,
            kopf_options=("--standalone", f"--namespace={namespace}"),
            log_path=workdir / f"operator-{n}.log",
        ).start()
        try:
            pid = operator.pid
            assert pid is not None
            time.sleep(2)
            rss0 = status_kib(pid, "VmRSS")
            docs = [
                {
                    "apiVersion": "imagecopy.dev/v1alpha1",
                    "kind": "ImageCopy",
                    "metadata": {"name": f"c{i:05d}", "namespace": namespace},
                    "spec": {
                        "source": {"image": registry.ref(source, "v1")},
                        "destination": {"image": registry.ref(f"scale{n}/dst{i:05d}", "v1")},
                        "interval": f"{interval}s",
                    },
                }
                for i in range(n)
            ]
            manifest = workdir / f"objects-{n}.yaml"
            manifest.write_text(yaml.safe_dump_all(docs))
            cpu0 = cpu_seconds(pid)
            t0 = time.monotonic()
            plane.kubectl("apply", "--server-side", "-f", str(manifest), timeout=600)
            t_applied = time.monotonic()
            t_ready = wait_until(lambda: ready_count(custom, namespace)[0] == n, 1800)
            cpu1 = cpu_seconds(pid)
            result.update(
                apply_s=round(t_applied - t0, 1),
                ready_after_apply_start_s=round(t_ready - t0, 1),
                ready_after_last_created_s=round(t_ready - t_applied, 1),
                ready_per_s=round(n / (t_ready - t0), 1),
                cpu_ms_per_copy=round(1000 * (cpu1 - cpu0) / n, 1),
            )

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
            kinds: dict[str, int] = {}
            for e in window:
                kinds[kind_of(e)] = kinds.get(kind_of(e), 0) + 1
            result.update(
                quiet_rechecks=rechecks,
                quiet_api_requests=len(window),
                quiet_api_per_recheck=round(len(window) / max(rechecks, 1), 3),
                quiet_api_kinds=kinds,
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
                ready, total = ready_count(custom, namespace)
                not_ready = max(not_ready, total - ready)
                time.sleep(1)
            window = operator_requests(plane)[seen:]
            restart_kinds: dict[str, int] = {}
            for e in window:
                restart_kinds[kind_of(e)] = restart_kinds.get(kind_of(e), 0) + 1
            result.update(
                restart_alive_s=round(t_alive - t_start, 1),
                restart_api_requests=len(window),
                restart_api_kinds=restart_kinds,
                restart_registry_requests=len(registry.access_log_since(mark)),
                restart_objects_not_ready=not_ready,
            )
        finally:
            operator.stop()
            api.close()
    return result


def write_report(results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    (out / "scale.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    rows = [
        ("objects", "objects"),
        ("bulk apply (s)", "apply_s"),
        ("all Ready after apply start (s)", "ready_after_apply_start_s"),
        ("all Ready after the last was created (s)", "ready_after_last_created_s"),
        ("objects Ready per s", "ready_per_s"),
        ("operator CPU per copy (ms)", "cpu_ms_per_copy"),
        ("peak RSS (MiB)", "peak_rss_mib"),
        ("RSS per object above the idle operator (KiB)", "rss_kib_per_object"),
        ("quiet: re-checks in the window", "quiet_rechecks"),
        ("quiet: API requests per object per interval", "quiet_api_per_recheck"),
        ("quiet: registry requests per object per interval", "quiet_registry_per_recheck"),
        ("quiet: new API connections in the window", "quiet_new_connections"),
        ("quiet: operator CPU per re-check (ms)", "quiet_cpu_ms_per_recheck"),
        ("restart: until alive (s)", "restart_alive_s"),
        ("restart: API requests in 20 s", "restart_api_requests"),
        ("restart: registry requests in 20 s", "restart_registry_requests"),
        ("restart: objects seen not Ready", "restart_objects_not_ready"),
    ]
    lines = [
        "# Operator at scale (`make bench-scale`)",
        "",
        f"Run {meta['date']} on {meta['machine']} ({meta['cpus']} cores, shared with the API "
        f"server, etcd and the registry); `bench/scale.py` (method in its docstring). Same-"
        f"registry copies of one 4-blob image (every blob mounted), `interval: "
        f"{meta['interval']}s`, default operator settings; commit {meta['commit']}; "
        f"1-minute load average {meta['load']}.",
        "",
        "| | " + " | ".join(f"N = {r['objects']}" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, key in rows[1:]:
        lines.append(f"| {label} | " + " | ".join(str(r.get(key, "-")) for r in results) + " |")
    lines += ["", "Requests of the operator in the quiet window, by kind:", ""]
    for r in results:
        lines.append(f"- N = {r['objects']}: `{r['quiet_api_kinds']}`")
    lines += ["", "Requests of the operator in the 20 s after a restart, by kind:", ""]
    for r in results:
        lines.append(f"- N = {r['objects']}: `{r['restart_api_kinds']}`")
    (out / "scale.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="comma-separated object counts")
    parser.add_argument("--interval", type=int, default=60, help="spec.interval in seconds")
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="imagecopy-scale-"))
    load_before = os.getloadavg()[0]
    results = []
    with ControlPlane() as plane:
        plane.apply_crds()
        registry = RegistryServer(impl="v2").start()
        try:
            push_image(registry, "scale/src", "v1", layers=3, layer_size=64 * 1024)
            for n in sizes:
                print(f"N = {n} …", file=sys.stderr, flush=True)
                result = run_size(n, plane, registry, "scale/src", args.interval, workdir)
                print(json.dumps(result), file=sys.stderr, flush=True)
                results.append(result)
        finally:
            registry.stop()
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "interval": args.interval,
        "load": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "logs": str(workdir),
    }
    write_report(results, args.out, meta)
    print(f"wrote {args.out / 'scale.md'}; operator logs in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
