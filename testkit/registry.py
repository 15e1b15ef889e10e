"""Real OCI registries as subprocesses, for integration tests, e2e tests and benchmarks.

Three implementations:

- ``impl="v2"``: Debian's ``/usr/bin/docker-registry`` (distribution 2.8.2).
- ``impl="v3"``: distribution v3 (``.tools/bin/registry``, built by ``scripts/install-tools.sh``).
- ``impl="ggcr"``: go-containerregistry's ``pkg/registry`` v0.22.1 (``.tools/bin/ggcr-registry``,
  the tiny program in ``testkit/ggcr-registry/``), referrers API on, auth ``"none"`` only.

Auth modes: ``"none"``, ``"basic"`` (htpasswd, bcrypt) and ``"token"`` (Bearer tokens from the
in-process :class:`~testkit.token_issuer.TokenIssuer`). ``tls=True`` serves HTTPS with a
server certificate from a throwaway CA (``ca_file``).

Access log
----------
Both implementations wrap their handler in gorilla's ``CombinedLoggingHandler(os.Stdout, …)``,
so stdout is an Apache combined log, one line per request, including unauthenticated 401s and
the ``/v2/`` pings::

    127.0.0.1 - - [27/Nov/2026:18:00:00 +0000] "POST /v2/b/blobs/uploads/?mount=sha256:…&from=a HTTP/1.1" 201 0 "" "python-httpx/0.28.1"

The subprocess' stdout is redirected to ``access.log``; the application log (logrus, stderr)
goes to ``registry.log``. The format is identical on 2.8.2 and v3.1.1 (verified by
``tests/integration/test_support_registry.py``). A line is written when the handler returns,
which can be a hair after the client saw the response; :meth:`RegistryServer.sync` sends a
sentinel request (``GET /v2/?__imagecopy_sync=N``) and waits for its line, so
:meth:`mark` / :meth:`access_log_since` are race-free. Sentinel lines are filtered out.

Observed behaviour (asserted in ``tests/integration/test_support_registry.py``)
-----------------------------------------------------------------------------
Both 2.8.2 and v3.1.1:

- ``POST /v2/<dst>/blobs/uploads/?mount=<d>&from=<src>`` where ``<src>`` holds the blob → **201**
  with ``Location: /v2/<dst>/blobs/<d>`` and ``Docker-Content-Digest``.
- Mount where ``<src>`` lacks the blob (even if ``<dst>`` already has it) → **202**, a new upload
  session (``Location`` = upload URL with ``_state`` query) that must be used or DELETEd.
- Mount from a repository that does not exist → 202 as well.
- Token auth: a mount POST whose token lacks ``pull`` on ``<src>`` → **401** (the registry
  requires pull on ``from`` before touching the mount; the ``WWW-Authenticate`` challenge
  names both scopes).
- The referrers API (``GET /v2/<repo>/referrers/<digest>``) is not served by either (404);
  clients must use the tag-schema fallback (see ``testkit/images.py``).

go-containerregistry (``ggcr``), measured the same way:

- No cross-repository mount: ``POST …/blobs/uploads/?mount=<d>&from=<src>`` is answered **202**
  with an ordinary upload session (``Location: /v2/<dst>/blobs/uploads/<id>``), whether or not
  ``<src>`` holds the blob.
- One blob store for every repository: ``HEAD /v2/<any>/blobs/<d>`` is 200 once any repository
  received ``<d>`` (so a same-registry copy finds every blob already there).
- The referrers API is served (200, an image index; ``artifactType`` is not filtered and no
  ``OCI-Filters-Applied`` is sent; the ``artifactType`` it lists is the config's media type,
  not the manifest's own ``artifactType``), but a manifest PUT with a ``subject`` gets no
  ``OCI-Subject`` header. Manifests are kept in memory (lost on restart).
- ``DELETE`` of an upload session is answered 400 (sessions are not tracked).
- The access log is written by the program's own middleware in the same combined format.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
import yaml

from testkit.processes import free_port, kill_process_group, stop_process_group
from testkit.tls import TestPKI, make_test_pki
from testkit.token_issuer import Scope, TokenIssuer
from testkit.tools import TOOLS_BIN

__all__ = [
    "AccessLogEntry",
    "RegistryServer",
    "find_registry_binary",
    "parse_access_line",
    "select",
]

V2_BINARY = "/usr/bin/docker-registry"

Impl = Literal["v2", "v3", "ggcr"]
GGCR_TOOL = "ggcr-registry"
AuthMode = Literal["none", "basic", "token"]

_LIVE: set[RegistryServer] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        with contextlib.suppress(Exception):
            s.stop()


atexit.register(_stop_all)


def find_registry_binary(impl: Impl) -> str | None:
    """Path of the registry binary for ``impl`` or None when it is not installed."""
    if impl == "v2":
        if os.access(V2_BINARY, os.X_OK):
            return V2_BINARY
        return shutil.which("docker-registry")
    candidate = TOOLS_BIN / ("registry" if impl == "v3" else GGCR_TOOL)
    if os.access(candidate, os.X_OK):
        return str(candidate)
    return None


# --- access log --------------------------------------------------------------------------------

_COMBINED = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<bytes>\d+|-)'
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)


@dataclass(frozen=True)
class AccessLogEntry:
    """One request of the registry's access log."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    bytes: int
    remote: str
    user_agent: str
    raw: str
    raw_query: str = ""

    def q(self, key: str) -> str | None:
        """First value of query parameter ``key``."""
        vals = self.query.get(key)
        return vals[0] if vals else None

    @property
    def is_mount(self) -> bool:
        return (
            self.method == "POST"
            and self.path.endswith("/blobs/uploads/")
            and "mount" in self.query
        )

    @property
    def is_blob_request(self) -> bool:
        """A request on blob content or an upload session (``/blobs/…``), mounts included."""
        return "/blobs/" in self.path

    @property
    def repo(self) -> str | None:
        """The repository name a ``/v2/<name>/…`` request addresses."""
        m = re.match(r"^/v2/(.+?)/(blobs|manifests|tags|referrers)/", self.path)
        return m.group(1) if m else None

    def __str__(self) -> str:
        uri = self.path + (f"?{self.raw_query}" if self.raw_query else "")
        return f"{self.method} {uri} {self.status}"


def parse_access_line(line: str) -> AccessLogEntry | None:
    m = _COMBINED.match(line.strip())
    if not m:
        return None
    uri = urlsplit(m.group("uri"))
    b = m.group("bytes")
    return AccessLogEntry(
        method=m.group("method"),
        path=uri.path,
        query=parse_qs(uri.query, keep_blank_values=True),
        status=int(m.group("status")),
        bytes=0 if b == "-" else int(b),
        remote=m.group("remote"),
        user_agent=m.group("agent") or "",
        raw=line.rstrip("\n"),
        raw_query=uri.query,
    )


def select(
    entries: Iterable[AccessLogEntry],
    *,
    method: str | None = None,
    path: str | None = None,
    status: int | None = None,
    repo: str | None = None,
    query: str | None = None,
) -> list[AccessLogEntry]:
    """Entries matching every given filter: exact ``method``/``status``/``repo``, ``path`` as a
    regex (``re.search``), ``query`` as a parameter name that must be present.

    >>> mounts = select(log, method="POST", repo=dst, query="mount")
    >>> assert [e.status for e in mounts] == [201] * n
    >>> assert not [e for e in log if e.repo == dst and e.is_blob_request and not e.is_mount]
    """
    out: list[AccessLogEntry] = []
    for e in entries:
        if method is not None and e.method != method:
            continue
        if status is not None and e.status != status:
            continue
        if repo is not None and e.repo != repo:
            continue
        if path is not None and not re.search(path, e.path):
            continue
        if query is not None and query not in e.query:
            continue
        out.append(e)
    return out


_SYNC_PARAM = "__imagecopy_sync"


# --- the server ------------------------------------------------------------------------------


@dataclass(eq=False)
class RegistryServer:
    """A registry subprocess. Construct, then :meth:`start` (or use as a context manager)."""

    impl: Impl = "v2"
    auth: AuthMode = "none"
    tls: bool = False
    username: str = "alice"
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    token_issuer: TokenIssuer | None = None
    workdir: Path | None = None
    binary: str | None = None
    extra_config: dict[str, Any] | None = None
    startup_timeout: float = 20.0
    keep_workdir: bool = False

    port: int = 0
    root_dir: Path = field(init=False)
    pki: TestPKI | None = None
    ca_file: Path | None = field(init=False, default=None)
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None, repr=False)
    _owns_issuer: bool = field(init=False, default=False, repr=False)
    _own_workdir: bool = field(init=False, default=False, repr=False)
    _sync_n: int = field(init=False, default=0, repr=False)
    #: ``http.secret`` signs the ``_state`` of upload URLs: kept across restarts so a session
    #: started before a restart is still addressable after it.
    _secret: str = field(init=False, default_factory=lambda: secrets.token_hex(16), repr=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.impl not in ("v2", "v3", "ggcr"):
            raise ValueError(f"impl must be v2, v3 or ggcr, not {self.impl!r}")
        if self.impl == "ggcr" and self.auth != "none":
            raise ValueError("the ggcr registry serves no auth: use auth='none'")
        if self.auth not in ("none", "basic", "token"):
            raise ValueError(f"auth must be none, basic or token, not {self.auth!r}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"imagecopy-reg-{self.impl}-"))
            self._own_workdir = True
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root_dir = self.workdir / "storage"

    # -- properties --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """``verify=`` value for httpx: an SSL context trusting the test CA for TLS registries."""
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "config.yml"

    @property
    def access_log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "access.log"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "registry.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        """``host/repo:tag`` or ``host/repo@sha256:…``."""
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    # -- config ------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        assert self.workdir is not None
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": self._secret,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.tls:
            assert self.pki is not None
            cfg["http"]["tls"] = {
                "certificate": str(self.pki.server_chain),
                "key": str(self.pki.server_key),
            }
        if self.auth == "basic":
            import bcrypt

            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(f"{self.username}:{hashed}\n")
            cfg["auth"] = {"htpasswd": {"realm": "imagecopy-test", "path": str(htpasswd)}}
        elif self.auth == "token":
            issuer = self.token_issuer
            assert issuer is not None
            cfg["auth"] = {
                "token": {
                    "realm": issuer.realm,
                    "service": issuer.service,
                    "issuer": issuer.issuer,
                    "rootcertbundle": str(issuer.rootcertbundle),
                }
            }
        if self.extra_config:
            _deep_merge(cfg, self.extra_config)
        return cfg

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> RegistryServer:
        if self.running:
            return self
        binary = self.binary or find_registry_binary(self.impl)
        if binary is None:
            raise FileNotFoundError(
                f"registry binary for impl={self.impl} not found (run scripts/install-tools.sh)"
            )
        self.binary = binary
        assert self.workdir is not None
        if self.tls:
            if self.pki is None and self.token_issuer is not None and self.auth == "token":
                self.pki = self.token_issuer.pki  # one CA for registry and realm
            if self.pki is None:
                self.pki = make_test_pki(self.workdir / "pki")
            self.ca_file = self.pki.ca_cert
        if self.auth == "token" and self.token_issuer is None:
            # a TLS registry gets an HTTPS realm (peers refuse an http realm for https
            # registries), signed by the same CA
            self.token_issuer = TokenIssuer(
                users={self.username: self.password},
                workdir=self.workdir / "issuer",
                tls=self.tls,
                pki=self.pki,
            ).start()
            self._owns_issuer = True
        if self.auth == "token":
            issuer = self.token_issuer
            assert issuer is not None
            full = (
                {"*": ["*"]} if issuer.acl is not None and self.username not in issuer.acl else None
            )
            issuer.add_user(self.username, self.password, full)
        self.root_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port != 0
        last_err = ""
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port()
            self.config_path.write_text(yaml.safe_dump(self._config(), sort_keys=False))
            env = dict(os.environ)
            env.setdefault("OTEL_TRACES_EXPORTER", "none")
            env.setdefault("OTEL_METRICS_EXPORTER", "none")
            env.setdefault("OTEL_LOGS_EXPORTER", "none")
            # keep the log files across restarts (append)
            out = open(self.access_log_path, "ab")  # noqa: SIM115
            err = open(self.log_path, "ab")  # noqa: SIM115
            try:
                self._proc = subprocess.Popen(
                    self._command(binary),
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            finally:
                out.close()
                err.close()
            with _LIVE_LOCK:
                _LIVE.add(self)
            ok, last_err = self._wait_ready()
            if ok:
                return self
            self._kill()
            if fixed_port or "address already in use" not in last_err:
                break
        raise RuntimeError(f"registry {self.impl} did not start: {last_err}")

    def _command(self, binary: str) -> list[str]:
        if self.impl != "ggcr":
            return [binary, "serve", str(self.config_path)]
        cmd = [binary, "-addr", f"127.0.0.1:{self.port}", "-blobs", str(self.root_dir / "blobs")]
        if self.tls:
            assert self.pki is not None
            cmd += ["-cert", str(self.pki.server_chain), "-key", str(self.pki.server_key)]
        return cmd

    def _wait_ready(self) -> tuple[bool, str]:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(verify=self.verify, timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    return False, self.log_path.read_text(errors="replace")[-4000:]
                try:
                    r = c.get(f"{self.url}/v2/")
                    if r.status_code in (200, 401):
                        return True, ""
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        return False, "timeout waiting for /v2/: " + self.log_path.read_text(errors="replace")[
            -4000:
        ]

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        stop_process_group(proc, timeout=5)
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL the registry (no graceful shutdown; storage is left as the crash left it).
        :meth:`start` brings it back on the same port, storage and secret."""
        proc = self._proc
        if proc is None:
            return
        kill_process_group(proc, timeout=5)
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def open_upload_sessions(self, repository: str | None = None) -> list[str]:
        """Upload sessions open in the storage (of ``repository``, or of every repository):
        ``<repo>/_uploads/<id>`` directories that still hold a ``startedat`` file (distribution
        resumes a session from it; a cancelled session leaves at most an empty
        ``hashstates/``)."""
        base = self.root_dir / "docker/registry/v2/repositories"
        if not base.is_dir():
            return []
        dirs = [base / repository / "_uploads"] if repository else list(base.rglob("_uploads"))
        return sorted(
            str(p.relative_to(base))
            for d in dirs
            if d.is_dir()
            for p in d.iterdir()
            if (p / "startedat").exists()
        )

    def stop(self) -> None:
        """Stop the process (and the token issuer this server started itself). A temporary
        workdir this server created is removed, unless ``IMAGECOPY_KEEP_REGISTRY_DIRS`` is set
        or ``keep_workdir`` is true."""
        self._kill()
        if self._owns_issuer and self.token_issuer is not None:
            self.token_issuer.stop()
        if (
            self._own_workdir
            and not self.keep_workdir
            and not os.environ.get("IMAGECOPY_KEEP_REGISTRY_DIRS")
            and self.workdir is not None
        ):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients and credentials -------------------------------------------------------------
    def admin_headers(
        self, repo: str | Iterable[str], actions: Sequence[str] = ("pull", "push", "delete")
    ) -> dict[str, str]:
        """An ``Authorization`` header granting ``actions`` on ``repo`` (one or several), in
        any auth mode. Token mode mints straight from the in-process issuer (not recorded)."""
        if self.auth == "none":
            return {}
        if self.auth == "basic":
            cred = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {cred}"}
        assert self.token_issuer is not None
        repos = [repo] if isinstance(repo, str) else list(repo)
        access = [Scope("repository", r, tuple(actions)) for r in repos]
        access.append(Scope("registry", "catalog", ("*",)))
        token = self.token_issuer.mint(access, subject=self.username)
        return {"Authorization": f"Bearer {token}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client with ``base_url`` and TLS trust set for this registry."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, verify=self.verify, **kwargs)

    def docker_config(self, path: str | Path, *, merge: bool = True) -> Path:
        """Write (or merge into) a docker ``config.json`` with this registry's credentials.

        ``path`` may be a directory (``config.json`` is created in it) or a file path.
        Returns the file path. In ``none`` mode an entry is still written (harmless)."""
        p = Path(path)
        if p.is_dir() or p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / "config.json"
        data: dict[str, Any] = {}
        if merge and p.exists():
            data = json.loads(p.read_text() or "{}")
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        data.setdefault("auths", {})[self.host] = {"auth": auth}
        p.write_text(json.dumps(data, indent=2))
        return p

    # -- access log --------------------------------------------------------------------------
    def _read_entries(self) -> list[AccessLogEntry]:
        if not self.access_log_path.exists():
            return []
        out: list[AccessLogEntry] = []
        with open(self.access_log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                e = parse_access_line(line)
                if e is not None:
                    out.append(e)
        return out

    def sync(self, timeout: float = 5.0) -> int:
        """Make every request answered so far visible in the log; return the log length
        (sentinel lines included) at that point."""
        with self._lock:
            self._sync_n += 1
            n = self._sync_n
        token = f"{os.getpid()}-{n}-{secrets.token_hex(4)}"
        with httpx.Client(verify=self.verify, timeout=5.0) as c:
            c.get(f"{self.url}/v2/", params={_SYNC_PARAM: token})
        deadline = time.monotonic() + timeout
        while True:
            entries = self._read_entries()
            for i, e in enumerate(entries):
                if e.q(_SYNC_PARAM) == token:
                    return i + 1
            if time.monotonic() > deadline:
                raise TimeoutError("registry access log did not show the sync request")
            time.sleep(0.01)

    def mark(self) -> int:
        """A position in the access log; pass it to :meth:`access_log_since`."""
        return self.sync()

    def access_log(self, *, sync: bool = True) -> list[AccessLogEntry]:
        """Every request in the access log (sentinels removed)."""
        if sync:
            self.sync()
        return [e for e in self._read_entries() if _SYNC_PARAM not in e.query]

    def access_log_since(self, mark: int, *, sync: bool = True) -> list[AccessLogEntry]:
        """Requests logged after :meth:`mark` returned ``mark`` (sentinels removed).

        Note: the log is shared by everything using this registry; in a session-scoped
        registry, filter further on your test's unique repository names."""
        end = self.sync() if sync else None
        entries = self._read_entries()
        window = entries[mark:end]
        return [e for e in window if _SYNC_PARAM not in e.query]

    # -- storage -----------------------------------------------------------------------------
    def blob_data_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        if self.impl == "ggcr":
            return self.root_dir / "blobs" / algo / hexd
        return (
            self.root_dir / "docker" / "registry" / "v2" / "blobs" / algo / hexd[:2] / hexd / "data"
        )

    def corrupt_blob(self, digest: str, data: bytes | None = None) -> Path:
        """Rewrite the stored bytes of ``digest`` so the registry serves content that does not
        match its digest. Default: same length, every byte inverted (so ``Content-Length``
        still matches and only digest verification can notice)."""
        p = self.blob_data_path(digest)
        if not p.exists():
            raise FileNotFoundError(f"blob {digest} not in {self.root_dir}")
        if data is None:
            data = bytes(b ^ 0xFF for b in p.read_bytes())
        p.write_bytes(data)
        return p


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
