"""A throwaway Kubernetes control plane (etcd + kube-apiserver) for end-to-end tests.

The envtest approach of controller-runtime, in Python: no kubelet, no scheduler and no
kube-controller-manager, just a real API server with a real etcd behind it. That is enough to
install CRDs, exercise admission (schema, CEL rules, defaults, pruning, RBAC) and run the operator
against it.

Binaries are looked up in this order (the envtest conventions):

1. ``TEST_ASSET_ETCD``, ``TEST_ASSET_KUBE_APISERVER``, ``TEST_ASSET_KUBECTL`` (single binaries),
2. ``KUBEBUILDER_ASSETS`` (a folder holding all three),
3. ``.tools/k8s/current`` (what ``e2e/tools/build-control-plane.sh`` produces).

Usage::

    with ControlPlane() as cp:
        cp.apply_crds()
        ns = cp.create_namespace()
        cp.kubectl("apply", "-n", ns, "-f", "examples/imagecopy.yaml")

Without a controller-manager, namespaces stay ``Terminating`` after deletion and nothing garbage
collects owner references; :meth:`ControlPlane.delete_namespace` deletes the ImageCopies itself.

Every process runs in its own process group, dies with the Python process that started it
(``PR_SET_PDEATHSIG``) and is also stopped by an ``atexit`` guard, so no etcd or kube-apiserver
outlives a test session, even an interrupted one.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from testkit.processes import (
    free_port,
    kill_process_group,
    new_group_dying_with_parent,
    stop_process_group,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ASSETS = REPO_ROOT / ".tools" / "k8s" / "current"
CRD_DIR = REPO_ROOT / "deploy" / "crds"
LOG_ROOT = REPO_ROOT / "e2e" / ".logs"

ADMIN_USER = "imagecopy-e2e-admin"
#: Audit policy: one line per finished request (metadata only), except the API server's own
#: loopback traffic and health probes.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["system:apiserver"]
- level: None
  nonResourceURLs: ["/readyz*", "/healthz*", "/livez*"]
- level: Metadata
"""
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, started or talked to."""


class BinariesNotFound(ControlPlaneError):
    """etcd, kube-apiserver or kubectl is missing."""


class KubectlError(ControlPlaneError):
    """kubectl exited non-zero; ``stderr`` holds its message."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")


@dataclass(frozen=True)
class Binaries:
    """Paths of the three control-plane binaries."""

    etcd: Path
    kube_apiserver: Path
    kubectl: Path

    @classmethod
    def find(cls) -> Binaries:
        """Locate the binaries: TEST_ASSET_<NAME> if set, else KUBEBUILDER_ASSETS/<name>, else
        .tools/k8s/current/<name> (where build-control-plane.sh links them).

        Raises :class:`BinariesNotFound` naming what is missing and how to get it.
        """
        folders = [Path(p) for p in (os.environ.get("KUBEBUILDER_ASSETS"),) if p]
        folders.append(DEFAULT_ASSETS)
        found: dict[str, Path] = {}
        missing: list[str] = []
        for name in ("etcd", "kube-apiserver", "kubectl"):
            override = os.environ.get("TEST_ASSET_" + name.upper().replace("-", "_"))
            candidates = [Path(override)] if override else [f / name for f in folders]
            for path in candidates:
                if path.is_file() and os.access(path, os.X_OK):
                    found[name] = path.resolve()
                    break
            else:
                missing.append(" or ".join(map(str, candidates)))
        if missing:
            raise BinariesNotFound(
                "control-plane binaries not found: "
                + ", ".join(missing)
                + " (run `make controlplane`, or point KUBEBUILDER_ASSETS at a folder holding "
                "etcd, kube-apiserver and kubectl)"
            )
        return cls(found["etcd"], found["kube-apiserver"], found["kubectl"])


# --------------------------------------------------------------------------- process hygiene

_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


def _stop_all() -> None:
    with _live_lock:
        planes = list(_live)
    for plane in planes:
        plane.stop()


atexit.register(_stop_all)


def _install_sigterm_handler() -> None:
    """Turn SIGTERM into KeyboardInterrupt so finalizers and atexit run (if nobody handles it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def _on_sigterm(signum: int, frame: object) -> None:
        # pytest treats KeyboardInterrupt as "interrupted": it stops and runs the finalizers.
        _stop_all()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _on_sigterm)


WORKDIR_PREFIX = "imagecopy-cp-"


def reap_stale_workdirs() -> None:
    """Remove work directories whose owning process is gone (e.g. it was SIGKILLed)."""
    for owner_file in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/owner.pid"):
        try:
            pid = int(owner_file.read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(owner_file.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _rsa_key_pair(key_path: Path, pub_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(server: str, ca_pem: bytes, user: str, token: str, namespace: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": user, "context": {"cluster": "e2e", "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }
    return yaml.safe_dump(config, sort_keys=False)


# --------------------------------------------------------------------------- the control plane


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with an admin kubeconfig.

    ``start()`` blocks until ``/readyz`` answers ok; ``stop()`` is idempotent and also runs at
    interpreter exit. Use it as a context manager, or through the ``control_plane`` pytest fixture.
    """

    def __init__(self, binaries: Binaries | None = None, *, keep_logs_on_failure: bool = True):
        self.binaries = binaries or Binaries.find()
        self.keep_logs_on_failure = keep_logs_on_failure
        reap_stale_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self.etcd_port = 0
        self.port = 0
        self.token = secrets.token_hex(24)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}
        self._logs: dict[str, Path] = {}
        self._started = False
        self._stopped = False

    # -- properties

    @property
    def server(self) -> str:
        """The API server URL, ``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user in group ``system:masters``)."""
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per line (``AUDIT_POLICY``)."""
        return self.workdir / "audit.log"

    def admin_kubeconfig_via(self, server: str, path: Path) -> Path:
        """An admin kubeconfig that reaches the API server at ``server`` (e.g. a proxy in
        front of it, serving the same certificate)."""
        path.write_text(
            _kubeconfig(server, self.ca_file.read_bytes(), ADMIN_USER, self.token, "default")
        )
        path.chmod(0o600)
        return path

    def audit_events(self, user_agent_prefix: str | None = None) -> list[dict[str, Any]]:
        """Finished requests so far (stage ``ResponseComplete``), optionally only those whose
        User-Agent starts with ``user_agent_prefix``. Events of one request share ``auditID``;
        a watch also logs ``ResponseStarted``, which is left out."""
        events: list[dict[str, Any]] = []
        if not self.audit_log.exists():
            return events
        with open(self.audit_log, encoding="utf-8") as log:
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if event.get("stage") != "ResponseComplete":
                    continue
                if user_agent_prefix and not str(event.get("userAgent", "")).startswith(
                    user_agent_prefix
                ):
                    continue
                events.append(event)
        return events

    @property
    def ca_file(self) -> Path:
        """The API server's self-signed serving certificate (use it as the CA bundle)."""
        return self.workdir / "certs" / "apiserver.crt"

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep_logs=exc is not None)

    def start(self) -> ControlPlane:
        """Start etcd and kube-apiserver, write the kubeconfig, wait until ready."""
        if self._started:
            return self
        self._started = True
        _install_sigterm_handler()
        with _live_lock:
            _live.add(self)
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready()
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def stop(self, keep_logs: bool = False) -> Path | None:
        """Stop both processes (SIGTERM, then SIGKILL) and remove the work directory.

        With ``keep_logs`` (and ``keep_logs_on_failure``), the logs are copied to
        ``e2e/.logs/<time>-<pid>/`` first; that folder is returned.
        """
        if self._stopped:
            return None
        self._stopped = True
        # apiserver first, so it does not log a storm of etcd errors
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.get(name)
            if proc is not None:
                stop_process_group(proc, STOP_TIMEOUT)
        kept: Path | None = None
        if keep_logs and self.keep_logs_on_failure and self._logs:
            kept = LOG_ROOT / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            kept.mkdir(parents=True, exist_ok=True)
            for path in self._logs.values():
                if path.exists():
                    shutil.copy2(path, kept / path.name)
        shutil.rmtree(self.workdir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
        return kept

    def pids(self) -> list[int]:
        """PIDs of the running processes (for tests of this harness)."""
        return [p.pid for p in self._procs.values() if p.poll() is None]

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self._argv[name] = argv
        log_path = self.workdir / f"{name}.log"
        self._logs[name] = log_path
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # PR_SET_PDEATHSIG fires when the forking *thread* exits: only from the main thread
                preexec_fn=(
                    new_group_dying_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else os.setsid
                ),
            )
        self._procs[name] = proc
        return proc

    def _start_etcd(self) -> None:
        self.etcd_port = free_port()
        url = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                "--listen-peer-urls=http://localhost:0",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def restart(self, downtime: float = 0.0, *, etcd: bool = True) -> None:
        """Kill kube-apiserver (and etcd) with SIGKILL, wait ``downtime`` seconds, start them
        again on the same ports, data and certificates; return once ``/readyz`` is ok."""
        names = ("kube-apiserver", "etcd") if etcd else ("kube-apiserver",)
        for name in names:
            proc = self._procs.get(name)
            if proc is not None:
                kill_process_group(proc, STOP_TIMEOUT)
        time.sleep(downtime)
        if etcd:
            self._respawn("etcd")
        self._respawn("kube-apiserver")
        self._wait_ready()

    def _respawn(self, name: str) -> None:
        log = self._logs[name]
        previous = log.read_bytes() if log.exists() else b""
        self._spawn(name, self._argv[name])
        with open(log, "r+b") as f:  # _spawn truncates the log: keep what came before
            current = f.read()
            f.seek(0)
            f.write(previous + b"\n=== restarted\n" + current)

    def _start_apiserver(self) -> None:
        certs = self.workdir / "certs"
        certs.mkdir()
        sa_key, sa_pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        _rsa_key_pair(sa_key, sa_pub)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{uuid.uuid4()},"system:masters"\n')
        tokens.chmod(0o600)
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--cert-dir={certs}",
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://127.0.0.1:{self.port}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--token-auth-file={tokens}",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--v=1",
            ],
        )

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {proc.returncode} during start-up:\n{self.log_tail(name)}"
                    )
            if self.ca_file.exists():
                request = urllib.request.Request(
                    f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
                )
                try:
                    with urllib.request.urlopen(
                        request, context=self._ssl_context(), timeout=5
                    ) as resp:
                        if resp.status == 200:
                            self.kubeconfig.write_text(
                                _kubeconfig(
                                    self.server,
                                    self.ca_file.read_bytes(),
                                    ADMIN_USER,
                                    self.token,
                                    "default",
                                )
                            )
                            self.kubeconfig.chmod(0o600)
                            return
                except urllib.error.HTTPError as e:
                    last = f"/readyz answered {e.code}"
                except (OSError, ssl.SSLError) as e:
                    last = str(e)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {START_TIMEOUT:.0f}s ({last}):\n"
            + self.log_tail("kube-apiserver")
        )

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of a process log."""
        path = self._logs.get(name)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- kubectl and friends

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; raise :class:`KubectlError` on failure.

        ``kubeconfig`` defaults to the admin one; pass one from
        :meth:`service_account_kubeconfig` to act as a ServiceAccount.
        """
        argv = [
            str(self.binaries.kubectl),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stdout, result.stderr)
        return result

    def apply_crds(self, paths: Sequence[Path] | None = None, timeout: float = 60.0) -> list[str]:
        """Apply CRD manifests (default: every file in deploy/crds/) and wait until Established.

        Returns the CRD names.
        """
        files = list(paths) if paths is not None else sorted(CRD_DIR.glob("*.yaml"))
        if not files:
            raise ControlPlaneError(f"no CRD manifests in {CRD_DIR}")
        names: list[str] = []
        for path in files:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    names.append(doc["metadata"]["name"])
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        for name in names:
            self.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{name}",
                f"--timeout={int(timeout)}s",
                timeout=timeout + 10,
            )
        return names

    def create_namespace(
        self, name: str | None = None, labels: dict[str, str] | None = None
    ) -> str:
        """Create a namespace (a random ``e2e-xxxxxx`` name by default) and return its name."""
        name = name or f"e2e-{secrets.token_hex(4)}"
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"imagecopy.dev/e2e": "true", **(labels or {})}},
        }
        self.kubectl("create", "-f", "-", input=yaml.safe_dump(manifest))
        return name

    def delete_namespace(self, name: str, timeout: float = 15.0) -> None:
        """Delete the ImageCopies of a namespace, then the namespace itself.

        There is no namespace controller here, so the ImageCopies are deleted explicitly (waiting
        up to ``timeout`` for finalizers, e.g. the operator's, then removing leftover finalizers)
        so that no object of a finished test stays visible cluster-wide. The namespace stays
        ``Terminating``.
        """
        if self._stopped:
            return
        crd_known = (
            self.kubectl("get", "crd", "imagecopies.imagecopy.dev", check=False).returncode == 0
        )
        if crd_known:
            self.kubectl("delete", "imagecopies", "--all", "-n", name, "--wait=false", check=False)
            deadline = time.monotonic() + timeout
            left: list[str] = []
            while True:
                out = self.kubectl("get", "imagecopies", "-n", name, "-o", "name", check=False)
                left = out.stdout.split() if out.returncode == 0 else []
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for obj in left:
                self.kubectl(
                    "patch",
                    obj,
                    "-n",
                    name,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        create: bool = True,
        duration: str = "1h",
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The token comes from the TokenRequest API (``kubectl create token``); the account is
        created first unless ``create`` is false. RBAC applies: grant it roles to test them.
        """
        if create:
            self.kubectl(
                "create", "serviceaccount", name, "-n", namespace, check=False
            )  # AlreadyExists is fine
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = self.workdir / f"kubeconfig-sa-{namespace}-{name}"
        path.write_text(
            _kubeconfig(
                self.server,
                self.ca_file.read_bytes(),
                f"system:serviceaccount:{namespace}:{name}",
                token,
                namespace,
            )
        )
        path.chmod(0o600)
        return path

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for this control plane (admin by default)."""
        from kubernetes import config

        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )
