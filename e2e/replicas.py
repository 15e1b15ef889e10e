"""Several operator replicas sharing one Kopf peering object, for HA tests and benchmarks.

``Replicas(control_plane, 2).start()`` installs the chart's peering CRDs, creates a peering
object of its own (a ``ClusterKopfPeering``, or a ``KopfPeering`` in each of ``namespaces``),
and starts ``procs[0]`` (the highest priority: the active one) before the others, so the standbys
never copy anything while the active one is alive. Each replica is an
:class:`e2e.operator_harness.OperatorProcess` running ``--peering=NAME --priority=P`` with a
readable Kopf identity (``POD_ID``), so the peering object's ``status`` names them.

    with Replicas(control_plane, 2, env={"IMAGECOPY_PEERING_LIFETIME": "20s"}) as ha:
        active, standby = ha.procs
        ...
        active.kill()                      # SIGKILL; .stop() is the graceful SIGTERM
        ha.wait_active(standby, timeout=60)
        assert ha.handled(namespace, "web") == [active]

Which replica works is read from Kopf's own log lines (``Resuming``/``Pausing the watch-stream``);
which replica handled an object from the ``[namespace/name]`` prefix of its log lines.
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from e2e.operator_harness import REPO_ROOT, OperatorProcess

PEERING_CRDS = REPO_ROOT / "deploy" / "helm" / "imagecopy-operator" / "crds" / "kopf-peering.yaml"
RESUMED = "Resuming the watch-stream for imagecopies"
PAUSED = ("Pausing the watch-stream for imagecopies", "Pausing operations in favour of")
#: Kopf's default log format starts each line with ``[YYYY-mm-dd HH:MM:SS,mmm]``.
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_time(line: str) -> datetime | None:
    """The timestamp of one operator log line (the host's clock), None for other lines."""
    m = _STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") if m else None


def is_active(proc: OperatorProcess) -> bool:
    """Whether the replica runs and its last pause/resume line says it serves objects."""
    if not proc.running:
        return False
    state = False
    for line in proc.logs().splitlines():
        if RESUMED in line:
            state = True
        elif any(p in line for p in PAUSED):
            state = False
    return state


def object_lines(proc: OperatorProcess, namespace: str, name: str) -> list[str]:
    """The replica's log lines about one object (Kopf prefixes them ``[namespace/name]``)."""
    tag = f"[{namespace}/{name}]"
    return [line for line in proc.logs().splitlines() if tag in line]


def copy_lines(proc: OperatorProcess, namespace: str, name: str) -> list[str]:
    """The replica's one-line copy reports of one object (``copy outcome=…``)."""
    return [line for line in object_lines(proc, namespace, name) if "copy outcome=" in line]


class Replicas:
    """``count`` operator processes in one peering object; ``procs[0]`` has the top priority."""

    def __init__(
        self,
        control_plane: Any,
        count: int = 2,
        *,
        env: Mapping[str, str] | None = None,
        namespaces: Sequence[str] = (),
        peering: str | None = None,
        kubeconfig: Path | None = None,
        log_dir: Path | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self.cp = control_plane
        self.namespaces = tuple(namespaces)
        self.peering = peering or f"imagecopy-{secrets.token_hex(3)}"
        logs = log_dir or Path(tempfile.mkdtemp(prefix="imagecopy-ha-"))
        scope = tuple(f"--namespace={ns}" for ns in self.namespaces) or ("--all-namespaces",)
        self.procs: list[OperatorProcess] = []
        for i in range(count):
            identity = f"{self.peering}-r{i}"
            self.procs.append(
                OperatorProcess(
                    control_plane,
                    {**(env or {}), "POD_ID": identity},
                    kopf_options=(
                        f"--peering={self.peering}",
                        f"--priority={self.priority(i)}",
                        *scope,
                    ),
                    log_path=logs / f"{identity}.log",
                    kubeconfig=kubeconfig,
                )
            )

    @staticmethod
    def priority(index: int) -> int:
        """Kopf priority of ``procs[index]``: 1000, 900, … (higher works, lower waits)."""
        return 1000 - 100 * index

    @staticmethod
    def identity_of(proc: OperatorProcess) -> str:
        return proc.extra_env["POD_ID"]

    # ----------------------------------------------------------------------------- lifecycle

    def create_peering(self) -> None:
        self.cp.apply_crds([PEERING_CRDS])
        docs: list[dict[str, Any]] = (
            [
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "KopfPeering",
                    "metadata": {"name": self.peering, "namespace": ns},
                }
                for ns in self.namespaces
            ]
            if self.namespaces
            else [
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": self.peering},
                }
            ]
        )
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def delete_peering(self) -> None:
        if self.namespaces:
            for ns in self.namespaces:
                self.cp.kubectl(
                    "delete", "kopfpeering", self.peering, "-n", ns, "--ignore-not-found"
                )
        else:
            self.cp.kubectl("delete", "clusterkopfpeering", self.peering, "--ignore-not-found")

    def start(self, timeout: float = 60.0) -> Replicas:
        """Peering object, then ``procs[0]`` until it is active, then the others until every
        replica is listed in the peering object (and they stay paused)."""
        self.create_peering()
        first, *rest = self.procs
        first.start()
        self.wait_active(first, timeout)
        for proc in rest:
            proc.start()
        self.wait_registered(timeout)
        return self

    def stop(self) -> None:
        """Every replica stopped gracefully (SIGTERM), then the peering object deleted."""
        for proc in self.procs:
            proc.stop()
        self.delete_peering()

    def __enter__(self) -> Replicas:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- observing

    def peers(self) -> dict[str, dict[str, Any]]:
        """The peering object's ``status``: identity → ``{priority, lifetime, lastseen}``
        (the first watched namespace's object when namespaced)."""
        where = ("-n", self.namespaces[0]) if self.namespaces else ()
        kind = "kopfpeering" if self.namespaces else "clusterkopfpeering"
        out = self.cp.kubectl("get", kind, self.peering, *where, "-o", "json")
        status: dict[str, dict[str, Any]] = json.loads(out.stdout).get("status") or {}
        return status

    def active(self) -> list[OperatorProcess]:
        """The replicas serving objects now (one, when peering works)."""
        return [p for p in self.procs if is_active(p)]

    def wait_active(self, proc: OperatorProcess, timeout: float = 60.0) -> float:
        """Wait until ``proc`` serves objects; returns the seconds waited."""
        start = time.monotonic()
        while not is_active(proc):
            if not proc.running:
                raise AssertionError(f"replica exited:\n{proc.log_tail()}")
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"{self.identity_of(proc)} not active in {timeout:.0f}s:\n{proc.log_tail()}"
                )
            time.sleep(0.2)
        return time.monotonic() - start

    def wait_registered(self, timeout: float = 60.0) -> None:
        """Wait until every running replica has an entry in the peering object."""
        want = {self.identity_of(p) for p in self.procs if p.running}
        deadline = time.monotonic() + timeout
        while not want <= set(self.peers()):
            if time.monotonic() > deadline:
                raise AssertionError(f"peering lists {sorted(self.peers())}, want {sorted(want)}")
            time.sleep(0.3)

    def handled(self, namespace: str, name: str) -> list[OperatorProcess]:
        """The replicas whose logs show they handled the object at some point."""
        return [p for p in self.procs if object_lines(p, namespace, name)]

    def copied(self, namespace: str, name: str) -> list[OperatorProcess]:
        """The replicas that logged a copy report for the object (one per copy attempt)."""
        return [p for p in self.procs for _ in copy_lines(p, namespace, name)]
