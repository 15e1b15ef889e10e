"""Toxiproxy (Shopify, v2.5.0) as a subprocess, driven through its HTTP API.

TCP-level faults between a client and a real server: latency, a bandwidth cap (slow trickle),
a connection reset after a delay, slicing into small segments, a cut after N bytes
(truncation), a stall (data held back until the connection times out) and a disabled proxy
(connection refused: a partition). HTTP-status faults (429, 5xx, a flipped byte) are
``testkit/netproxy.py``'s job; chain the two when a test needs both.

::

    with ToxiproxyServer() as toxi:
        link = toxi.proxy("dst", upstream=registry.host)   # link.address is host:port
        link.add("bandwidth", stream="downstream", rate=64)   # KiB/s
        link.add("limit_data", stream="downstream", bytes=300_000)
        link.disable(); link.enable()                      # partition, healed
        link.clear()                                       # every toxic removed

Built by ``scripts/install-tools.sh`` into ``.tools/bin/toxiproxy-server``. Toxic names and
attributes are toxiproxy's own (``latency`` ms, ``bandwidth`` rate in KB/s, ``reset_peer`` and
``timeout`` ``timeout`` in ms, ``slicer`` ``average_size``/``size_variation``/``delay`` µs,
``limit_data`` ``bytes``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from testkit.processes import free_port, stop_process_group
from testkit.tools import TOOLS_BIN

__all__ = ["ToxicProxy", "ToxiproxyServer", "find_toxiproxy"]

Stream = Literal["upstream", "downstream"]


def find_toxiproxy() -> str | None:
    """Path of ``toxiproxy-server`` or None when it is not installed."""
    candidate = TOOLS_BIN / "toxiproxy-server"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("toxiproxy-server")


@dataclass
class ToxicProxy:
    """One proxy of a running toxiproxy: ``address`` forwards to ``upstream``."""

    server: ToxiproxyServer
    name: str
    address: str
    upstream: str

    def add(
        self, kind: str, *, stream: Stream = "downstream", toxicity: float = 1.0, **attributes: Any
    ) -> str:
        """Add a toxic of type ``kind``; returns its name (for :meth:`remove`)."""
        name = f"{kind}_{stream}_{time.monotonic_ns()}"
        self.server.api(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return name

    def remove(self, toxic: str) -> None:
        self.server.api("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def toxics(self) -> list[dict[str, Any]]:
        result = self.server.api("GET", f"/proxies/{self.name}/toxics")
        return list(result) if isinstance(result, list) else []

    def clear(self) -> None:
        """Remove every toxic of this proxy."""
        for toxic in self.toxics():
            self.remove(str(toxic["name"]))

    def disable(self) -> None:
        """Close the listener and every connection through it: new connections are refused."""
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": True})


class ToxiproxyServer:
    """A ``toxiproxy-server`` subprocess on a free loopback port."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_toxiproxy()
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="imagecopy-toxi-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "toxiproxy.log"

    def start(self) -> ToxiproxyServer:
        if self.binary is None:
            raise FileNotFoundError("toxiproxy-server not found (run scripts/install-tools.sh)")
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-host", "127.0.0.1", "-port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"toxiproxy exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self._http.get(f"{self.url}/version").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("toxiproxy did not answer /version within 20s")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, timeout=5)
            self._proc = None
        self._http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ToxiproxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the toxiproxy API; raise on an error status; return the decoded JSON body."""
        resp = self._http.request(method, f"{self.url}{path}", json=body)
        if resp.status_code >= 400:
            raise RuntimeError(f"toxiproxy {method} {path}: {resp.status_code} {resp.text}")
        return resp.json() if resp.content else None

    def proxy(self, name: str, upstream: str) -> ToxicProxy:
        """Create a proxy listening on a free loopback port, forwarding to ``upstream``."""
        listen = f"127.0.0.1:{free_port()}"
        self.api(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )
        return ToxicProxy(self, name, listen, upstream)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.api("POST", "/reset")
