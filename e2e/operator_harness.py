"""The operator as a real process against a test control plane, for e2e tests and the demo.

``OperatorProcess(control_plane, env={...}).start()`` runs
``.venv/bin/imagecopy operator --standalone -A --liveness …`` with the control plane's admin
kubeconfig, captures its output to a log file, waits until Kopf's liveness endpoint answers,
and ``stop()`` (or ``kill()``: SIGKILL, for restart tests) ends it. The process runs in its own
process group and dies with its parent, so no operator outlives a test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from testkit.processes import (
    free_port,
    kill_process_group,
    new_group_dying_with_parent,
    stop_process_group,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGECOPY_BIN = REPO_ROOT / ".venv" / "bin" / "imagecopy"
START_TIMEOUT = 60.0

#: Settings every test operator uses: loopback registries speak plain HTTP; Stalled objects
#: are retried every few seconds so healing is observable in a test.
TEST_ENV = {
    "IMAGECOPY_PLAIN_HTTP_REGISTRIES": "127.0.0.1",
    "IMAGECOPY_ALLOWED_REGISTRIES": "127.0.0.1,127.0.0.1:*,localhost:*",
    "IMAGECOPY_STALLED_RETRY": "3s",
}


class OperatorProcess:
    def __init__(
        self,
        control_plane: Any,
        env: Mapping[str, str] | None = None,
        *,
        args: tuple[str, ...] = (),
        kopf_options: tuple[str, ...] = ("--standalone", "--all-namespaces"),
        log_path: Path | None = None,
        kubeconfig: Path | None = None,
        verbose: bool = True,
    ) -> None:
        self.control_plane = control_plane
        #: Kopf's ``--verbose`` (debug-level logs); the chart's default is info level.
        self.verbose = verbose
        #: The control plane's admin kubeconfig unless another is given.
        self.kubeconfig = kubeconfig
        self.extra_env = {**TEST_ENV, **(env or {})}
        self.args = args
        self.kopf_options = kopf_options
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="imagecopy-op-")) / "operator.log"
        self.metrics_port = 0
        self.liveness_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> OperatorProcess:
        if self.running:
            return self
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGECOPY_")}
        env.update(self.extra_env)
        env["KUBECONFIG"] = str(self.kubeconfig or self.control_plane.kubeconfig)
        env["IMAGECOPY_METRICS_PORT"] = str(self.metrics_port)
        env["PYTHONUNBUFFERED"] = "1"
        argv = [
            str(IMAGECOPY_BIN) if IMAGECOPY_BIN.exists() else sys.executable,
            *([] if IMAGECOPY_BIN.exists() else ["-m", "imagecopy"]),
            "operator",
            *self.kopf_options,
            *(["--verbose"] if self.verbose else []),
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            *self.args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting operator: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                preexec_fn=new_group_dying_with_parent,
            )
        try:
            self._wait_alive()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_alive(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"the operator exited during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"the operator did not become alive in {START_TIMEOUT:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful: Kopf stops daemons), then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        stop_process_group(proc, timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the operator at once, as a node failure or OOM kill would."""
        proc = self._proc
        if proc is None:
            return
        kill_process_group(proc, timeout=10)
        self._proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def metric_value(text: str, sample: str) -> float:
    """The value of one sample line (``name{labels}``) in a /metrics text; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------- kubectl helpers


class ImageCopies:
    """kubectl shortcuts for ImageCopies (and their Secrets and Events) in one namespace."""

    def __init__(self, control_plane: Any, namespace: str) -> None:
        self.cp = control_plane
        self.ns = namespace

    def apply(self, name: str, spec: Mapping[str, Any]) -> None:
        import yaml

        obj = {
            "apiVersion": "imagecopy.dev/v1alpha1",
            "kind": "ImageCopy",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": dict(spec),
        }
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))

    def patch_spec(self, name: str, patch: Mapping[str, Any]) -> None:
        import json

        self.cp.kubectl(
            "patch",
            "imagecopy",
            name,
            "-n",
            self.ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": patch}),
        )

    def get(self, name: str) -> dict[str, Any]:
        import json

        out = self.cp.kubectl("get", "imagecopy", name, "-n", self.ns, "-o", "json")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def exists(self, name: str) -> bool:
        out = self.cp.kubectl("get", "imagecopy", name, "-n", self.ns, "-o", "name", check=False)
        return out.returncode == 0

    def delete(self, name: str, timeout: float = 30) -> None:
        self.cp.kubectl(
            "delete",
            "imagecopy",
            name,
            "-n",
            self.ns,
            f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )

    @staticmethod
    def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any]:
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    def wait_for(
        self,
        name: str,
        predicate: Any,
        timeout: float = 60.0,
        what: str = "the expected status",
        operator: OperatorProcess | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(name)
            if predicate(obj):
                return obj
            time.sleep(0.3)
        import json

        logs = f"\noperator log:\n{operator.log_tail()}" if operator else ""
        raise AssertionError(
            f"{self.ns}/{name} did not reach {what} in {timeout:.0f}s; status:\n"
            f"{json.dumps(obj.get('status'), indent=2)}{logs}"
        )

    def wait_condition(
        self,
        name: str,
        type_: str = "Ready",
        status: str = "True",
        reason: str | None = None,
        timeout: float = 60.0,
        operator: OperatorProcess | None = None,
    ) -> dict[str, Any]:
        def ok(obj: Mapping[str, Any]) -> bool:
            cond = self.condition(obj, type_)
            return cond.get("status") == status and (reason is None or cond.get("reason") == reason)

        return self.wait_for(
            name, ok, timeout, f"{type_}={status}" + (f" ({reason})" if reason else ""), operator
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        import json

        out = self.cp.kubectl(
            "get",
            "events",
            "-n",
            self.ns,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        )
        items: list[dict[str, Any]] = json.loads(out.stdout).get("items", [])
        return items

    def create_docker_secret(
        self, name: str, server: str, username: str, password: str, namespace: str | None = None
    ) -> None:
        self.cp.kubectl(
            "create",
            "secret",
            "docker-registry",
            name,
            "-n",
            namespace or self.ns,
            f"--docker-server={server}",
            f"--docker-username={username}",
            f"--docker-password={password}",
        )
