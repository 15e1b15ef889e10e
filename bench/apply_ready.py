"""The operator path: create an ``ImageCopy`` on the real API server until it is ``Ready=True``.

A same-registry promotion of the 20-layer ``same-registry`` image through the 20 ms RTT proxy,
on a real etcd + kube-apiserver (``e2e/controlplane.py``) with the operator as a process
(``e2e/operator_harness.py``), one untimed warm-up then ``runs`` timed objects, each into its own
destination repository. Timed: from just before the create request (the API client; ``kubectl
apply`` would add its own ~0.1-0.2 s of process start and discovery) to the watch event that
shows ``Ready=True`` (a watch opened before the create, so no polling interval is added).

Where the time goes, from the operator's log (kopf's timestamps, millisecond resolution, same
wall clock as the driver): ``watch`` = created → the first log line about the object (the
handler starts); ``copy`` = the engine's own ``duration`` in the ``copy outcome=…`` line;
``before copy`` = handler start → copy start (finalizer, the first status writes, and the
``Ready`` status write itself, which the log shows ending just before the copy line: the copy
start is that write's end minus the copy's duration); ``after status write`` = the ``Ready``
status write answered (urllib3's log line) → the driver's watch shows ``Ready=True``.

    .venv/bin/python -m bench.apply_ready              # alone, prints JSON
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e.controlplane import ControlPlane
from e2e.operator_harness import OperatorProcess
from testkit.images import push_image
from testkit.registry import RegistryServer

GROUP, VERSION, PLURAL = "imagecopy.dev", "v1alpha1", "imagecopies"
LOG_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d{3})\]")
COPY_LINE = re.compile(r"copy outcome=(\S+) .*duration=([\d.]+)s")


def _ready(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready" and c.get("status") == "True":
            return True
    return False


def _log_ts(line: str) -> float | None:
    m = LOG_TS.match(line)
    if not m:
        return None
    stamp = m.group(1).replace(",", ".")
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def breakdown(log: str, namespace: str, name: str, created: float, ready: float) -> dict[str, Any]:
    """Phases of one object from the operator log (see the module docstring)."""
    tag = f"[{namespace}/{name}]"
    status_path = f"/namespaces/{namespace}/{PLURAL}/{name}/status"
    first: float | None = None
    last_status_write: float | None = None
    ready_write: float | None = None
    copy_s: float | None = None
    for line in log.splitlines():
        ts = _log_ts(line)
        if ts is None:
            continue
        if status_path in line and "PATCH" in line:
            last_status_write = ts  # urllib3 logs the answer: the write is done
            continue
        if tag not in line:
            continue
        if first is None:
            first = ts
        m = COPY_LINE.search(line)
        if m and copy_s is None:
            copy_s, ready_write = float(m.group(2)), last_status_write
    out: dict[str, Any] = {"total_s": round(ready - created, 4)}
    if first is not None:
        out["watch_s"] = round(first - created, 4)
    if copy_s is not None:
        out["copy_s"] = round(copy_s, 4)
        if ready_write is not None:
            if first is not None:
                out["before_copy_s"] = round(ready_write - copy_s - first, 4)
            out["after_status_write_s"] = round(ready - ready_write, 4)
    return out


def _wait_ready(custom: Any, namespace: str, name: str, rv: str, timeout: float) -> float:
    """Block on a watch of the namespace until ``name`` shows Ready=True; the time it did."""
    from kubernetes import watch

    w = watch.Watch()  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + timeout
    for ev in w.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        resource_version=rv,
        timeout_seconds=int(timeout),
    ):
        obj = ev["object"]
        if obj.get("metadata", {}).get("name") == name and _ready(obj):
            w.stop()  # type: ignore[no-untyped-call]
            return time.time()
        if time.monotonic() > deadline:
            break
    raise TimeoutError(f"{namespace}/{name} not Ready within {timeout:.0f} s")


def run(
    proxy_host: str,
    registry: RegistryServer,
    runs: int = 5,
    log: Any = print,
    requests: Callable[[], dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The apply→Ready row: ``proxy_host`` fronts ``registry`` with the injected RTT;
    ``requests`` (optional) drains the proxy's request log and returns its counts (requests,
    RTT chain, connections) since the previous call."""
    from kubernetes import client

    workdir = Path(tempfile.mkdtemp(prefix="imagecopy-bench-ready-"))
    push_image(registry, "ready/src", "v1", layers=20, layer_size=4 * 1024 * 1024, seed=21)
    src = f"{proxy_host}/ready/src:v1"
    results: list[dict[str, Any]] = []
    with ControlPlane() as plane:
        plane.apply_crds()
        namespace = "bench-ready"
        plane.kubectl("create", "namespace", namespace)
        plane.kubectl("create", "serviceaccount", "default", "-n", namespace)
        custom = client.CustomObjectsApi(plane.api_client())
        operator = OperatorProcess(
            plane,
            kopf_options=("--standalone", f"--namespace={namespace}"),
            log_path=workdir / "operator.log",
        ).start()
        try:
            time.sleep(1.0)  # let the operator's watch settle after the liveness answer
            for i in range(runs + 1):
                name = f"promote-{i}"
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ImageCopy",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "source": {"image": src},
                        "destination": {"image": f"{proxy_host}/ready/dst{i}:v1"},
                    },
                }
                listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                rv = str(listed["metadata"]["resourceVersion"])
                box: dict[str, Any] = {}

                def waiter(name: str = name, rv: str = rv, box: dict[str, Any] = box) -> None:
                    try:
                        box["ready"] = _wait_ready(custom, namespace, name, rv, 60.0)
                    except Exception as exc:  # reported below
                        box["error"] = exc

                t = threading.Thread(target=waiter, daemon=True)
                t.start()
                time.sleep(0.2)  # the watch request is on the wire before the create
                if requests is not None:
                    requests()
                created = time.time()
                p0 = time.perf_counter()
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
                t.join(70)
                p1 = time.perf_counter()
                if "ready" not in box:
                    raise RuntimeError(
                        f"{name}: {box.get('error', 'no Ready')}\n{operator.log_tail()}"
                    )
                time.sleep(0.3)  # the operator's log lines after the status write
                phases = breakdown(operator.logs(), namespace, name, created, box["ready"])
                phases["perf_counter_s"] = round(p1 - p0, 4)
                if requests is not None:
                    phases.update(requests())
                label = "warm-up" if i == 0 else f"run {i}/{runs}"
                log(f"apply-ready {label}: {json.dumps(phases)}")
                if i > 0:
                    results.append(phases)
        finally:
            operator.stop()
    walls = [r["total_s"] for r in results]

    def med(key: str) -> float | None:
        vals = [r[key] for r in results if key in r]
        return round(statistics.median(vals), 4) if vals else None

    return {
        "name": "apply-ready",
        "rtt_ms": 20,
        "image": {"layers": 20, "blobs": 21, "bytes": 20 * 4 * 1024 * 1024},
        "runs": runs,
        "wall_s": {
            "min": round(min(walls), 4),
            "median": round(statistics.median(walls), 4),
            "max": round(max(walls), 4),
        },
        "wall_s_runs": walls,
        "phases_median_s": {
            k: med(k) for k in ("watch_s", "before_copy_s", "copy_s", "after_status_write_s")
        },
        "registry_requests_median": med("requests"),
        "registry_rtts_median": med("rtts"),
        "runs_detail": results,
        "goal_s": 1.0,
        "met": statistics.median(walls) <= 1.0,
        "operator_log": str(workdir / "operator.log"),
    }


def main() -> int:
    from bench.run import Proxy, proxy_counts

    reg = RegistryServer(impl="v2").start()
    proxy = Proxy(reg.host, 10.0)
    try:
        result = run(proxy.host, reg, requests=lambda: proxy_counts(proxy))
        print(json.dumps(result, indent=2))
    finally:
        proxy.close()
        reg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
