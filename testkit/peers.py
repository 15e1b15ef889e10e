"""Independent peers that read back what a copy wrote: ``crane`` and ``skopeo``.

Our own client must not be the only judge of our output. Each helper runs the peer as a
subprocess with the flags the registry needs:

- plain HTTP: crane ``--insecure``; skopeo ``--tls-verify=false`` (it then falls back to HTTP).
- TLS with the test CA: crane gets ``SSL_CERT_FILE=<ca>`` (Go's system-root override);
  skopeo ``--cert-dir <dir holding only ca.crt>``.
- credentials: crane reads ``$DOCKER_CONFIG/config.json`` (written per call in a temp dir);
  skopeo ``--creds user:password``. Token-auth registries work the same way: both peers answer
  the Bearer challenge with those Basic credentials at the issuer's realm.

Tool paths come from :func:`testkit.tools.find_tool`: ``.tools/bin`` first, then ``PATH``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testkit.registry import RegistryServer
from testkit.tools import TOOLS_BIN, find_tool

__all__ = [
    "PeerError",
    "crane",
    "crane_digest",
    "crane_validate",
    "skopeo",
    "skopeo_digest",
    "skopeo_inspect_raw",
]


class PeerError(RuntimeError):
    """A peer tool exited non-zero."""

    def __init__(self, cmd: list[str], rc: int, stdout: str, stderr: str) -> None:
        super().__init__(f"{' '.join(cmd)} exited {rc}: {stderr.strip()[-2000:]}")
        self.cmd = cmd
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


@dataclass
class _Run:
    stdout: bytes
    stderr: str


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120.0) -> _Run:
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise PeerError(
            cmd,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
    return _Run(proc.stdout, proc.stderr.decode(errors="replace"))


def _need(name: str) -> str:
    tool = find_tool(name)
    if tool is None:
        raise FileNotFoundError(
            f"{name} not found in {TOOLS_BIN} or PATH (scripts/install-tools.sh)"
        )
    return tool


# --- crane -----------------------------------------------------------------------------------


def crane(reg: RegistryServer, *args: str, timeout: float = 120.0) -> bytes:
    """Run ``crane ARGS`` against ``reg`` (flags, CA and credentials set). Returns stdout."""
    tool = _need("crane")
    with tempfile.TemporaryDirectory(prefix="crane-") as d:
        env = dict(os.environ)
        env["DOCKER_CONFIG"] = d
        env["HOME"] = d
        if reg.auth != "none":
            reg.docker_config(Path(d) / "config.json")
        cmd = [tool, *args]
        if reg.tls:
            assert reg.ca_file is not None
            env["SSL_CERT_FILE"] = str(reg.ca_file)
        else:
            cmd.append("--insecure")
        return _run(cmd, env, timeout).stdout


def crane_digest(reg: RegistryServer, ref: str) -> str:
    """``crane digest REF`` → ``sha256:…`` (the registry's digest of the manifest)."""
    return crane(reg, "digest", ref).decode().strip()


def crane_validate(reg: RegistryServer, ref: str, *, fast: bool = False) -> str:
    """``crane validate --remote REF``: fetches every blob and checks digests, sizes and
    diff_ids (indexes: every child). Raises :class:`PeerError` when invalid."""
    args = ["validate", "--remote", ref]
    if fast:
        args.append("--fast")
    return crane(reg, *args).decode()


# --- skopeo ----------------------------------------------------------------------------------


def skopeo(reg: RegistryServer, subcommand: str, *args: str, timeout: float = 120.0) -> bytes:
    """Run ``skopeo SUBCOMMAND <registry flags> ARGS`` against ``reg``. Returns stdout."""
    tool = _need("skopeo")
    with tempfile.TemporaryDirectory(prefix="skopeo-") as d:
        env = dict(os.environ)
        env["HOME"] = d
        env["REGISTRY_AUTH_FILE"] = str(Path(d) / "auth.json")
        flags: list[str] = []
        if reg.tls:
            assert reg.pki is not None
            flags.append(f"--cert-dir={reg.pki.cert_dir}")
        else:
            flags.append("--tls-verify=false")
        if reg.auth != "none":
            flags.append(f"--creds={reg.username}:{reg.password}")
        return _run([tool, subcommand, *flags, *args], env, timeout).stdout


def skopeo_inspect_raw(reg: RegistryServer, ref: str) -> bytes:
    """``skopeo inspect --raw docker://REF`` → the raw manifest bytes."""
    return skopeo(reg, "inspect", "--raw", f"docker://{ref}")


def skopeo_digest(reg: RegistryServer, ref: str) -> str:
    """sha256 of the raw manifest bytes skopeo reads (computed here, not trusted from it)."""
    return "sha256:" + hashlib.sha256(skopeo_inspect_raw(reg, ref)).hexdigest()
