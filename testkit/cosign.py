"""The real ``cosign`` as a peer: it signs, attests and verifies on the test registries.

Two builds (``scripts/install-tools.sh``): ``cosign2`` (v2: legacy ``sha256-<hex>.sig`` /
``.att`` / ``.sbom`` tags) and ``cosign3`` (v3: sigstore bundles pushed as OCI referrers).
Everything is offline: no transparency log upload (``--tlog-upload=false``), no signing
config or TUF fetch, local key pairs (``generate-key-pair``, or ``import-key-pair`` of a key
made with ``cryptography`` for RSA, Ed25519 and P-384 — the signature is still cosign's),
and ``verify --insecure-ignore-tlog``.

Registry flags: plain HTTP ``--allow-http-registry``; TLS with the test CA via
``SSL_CERT_FILE``; credentials through ``$DOCKER_CONFIG/config.json`` (per call).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testkit.peers import PeerError
from testkit.registry import RegistryServer
from testkit.tools import TOOLS_BIN, find_tool

__all__ = ["COSIGN_PASSWORD", "Cosign", "KeyPair", "cosign"]

COSIGN_PASSWORD = "test-password"


@dataclass(frozen=True)
class KeyPair:
    key: Path  # cosign.key (encrypted with COSIGN_PASSWORD)
    pub: Path  # cosign.pub (PEM public key)


@dataclass(frozen=True)
class Cosign:
    """One cosign binary; ``major`` is 2 or 3."""

    path: str
    major: int

    def run(
        self,
        *args: str,
        reg: RegistryServer | None = None,
        cwd: Path | None = None,
        timeout: float = 180.0,
    ) -> str:
        with tempfile.TemporaryDirectory(prefix="cosign-") as home:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": home,
                "DOCKER_CONFIG": home,
                "COSIGN_PASSWORD": COSIGN_PASSWORD,
                "COSIGN_YES": "true",
                "TUF_ROOT": str(Path(home) / "tuf"),
                "SIGSTORE_NO_CACHE": "true",
            }
            flags: list[str] = []
            if reg is not None:
                if reg.auth != "none":
                    reg.docker_config(Path(home) / "config.json")
                if reg.tls:
                    assert reg.ca_file is not None
                    env["SSL_CERT_FILE"] = str(reg.ca_file)
                else:
                    flags.append("--allow-http-registry")
            cmd = [self.path, *args, *flags]
            proc = subprocess.run(
                cmd, capture_output=True, env=env, cwd=cwd, timeout=timeout, check=False
            )
        if proc.returncode != 0:
            raise PeerError(
                cmd,
                proc.returncode,
                proc.stdout.decode(errors="replace"),
                proc.stderr.decode(errors="replace"),
            )
        return proc.stdout.decode(errors="replace")

    # -- keys ---------------------------------------------------------------------------------

    def generate_key_pair(self, directory: Path) -> KeyPair:
        """ECDSA P-256, cosign's default."""
        directory.mkdir(parents=True, exist_ok=True)
        self.run("generate-key-pair", cwd=directory)
        return KeyPair(directory / "cosign.key", directory / "cosign.pub")

    def import_key_pair(self, private_pem: Path, directory: Path) -> KeyPair:
        """A key made elsewhere (PKCS#8 / PKCS#1 / SEC1 PEM), imported as cosign does."""
        directory.mkdir(parents=True, exist_ok=True)
        self.run(
            "import-key-pair",
            "--key",
            str(private_pem),
            "--output-key-prefix",
            "import",
            cwd=directory,
        )
        return KeyPair(directory / "import.key", directory / "import.pub")

    # -- signing ------------------------------------------------------------------------------

    def _offline(self) -> list[str]:
        flags = ["--tlog-upload=false"]
        if self.major >= 3:
            flags += ["--use-signing-config=false", "--new-bundle-format=true"]
        return flags

    def sign(self, reg: RegistryServer, ref: str, keys: KeyPair, *, recursive: bool = False) -> str:
        args = ["sign", "--key", str(keys.key), *self._offline()]
        if recursive:
            args.append("--recursive")
        return self.run(*args, ref, reg=reg)

    def attest(
        self,
        reg: RegistryServer,
        ref: str,
        keys: KeyPair,
        predicate: dict[str, object],
        kind: str = "slsaprovenance",
    ) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(predicate, f)
            path = f.name
        try:
            return self.run(
                "attest",
                "--key",
                str(keys.key),
                "--type",
                kind,
                "--predicate",
                path,
                *self._offline(),
                ref,
                reg=reg,
            )
        finally:
            os.unlink(path)

    def attach_sbom(self, reg: RegistryServer, ref: str, sbom: str) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".spdx.json", delete=False) as f:
            f.write(sbom)
            path = f.name
        try:
            return self.run("attach", "sbom", "--sbom", path, "--type", "spdx", ref, reg=reg)
        finally:
            os.unlink(path)

    # -- reading back -------------------------------------------------------------------------

    def verify(self, reg: RegistryServer, ref: str, pub: Path) -> list[dict[str, object]]:
        """``cosign verify --key PUB --insecure-ignore-tlog REF``: the verified payloads."""
        args = ["verify", "--key", str(pub), "--insecure-ignore-tlog=true"]
        if self.major >= 3:
            args.append("--new-bundle-format=true")
        out = self.run(*args, "--output", "json", ref, reg=reg)
        return _json_lines(out)

    def verify_attestation(
        self, reg: RegistryServer, ref: str, pub: Path, kind: str = "slsaprovenance"
    ) -> list[dict[str, object]]:
        args = [
            "verify-attestation",
            "--key",
            str(pub),
            "--insecure-ignore-tlog=true",
            "--type",
            kind,
        ]
        if self.major >= 3:
            args.append("--new-bundle-format=true")
        return _json_lines(self.run(*args, ref, reg=reg))

    def tree(self, reg: RegistryServer, ref: str) -> str:
        return self.run("tree", ref, reg=reg)

    def download_attestation(self, reg: RegistryServer, ref: str) -> list[dict[str, object]]:
        return _json_lines(self.run("download", "attestation", ref, reg=reg))

    def download_sbom(self, reg: RegistryServer, ref: str) -> str:
        return self.run("download", "sbom", ref, reg=reg)


def _json_lines(out: str) -> list[dict[str, object]]:
    out = out.strip()
    if not out:
        return []
    try:
        value = json.loads(out)
    except ValueError:
        return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    return value if isinstance(value, list) else [value]


def cosign(major: int) -> Cosign:
    """The ``cosign<major>`` tool; ``FileNotFoundError`` when it is not built."""
    name = f"cosign{major}"
    path = find_tool(name)
    if path is None:
        raise FileNotFoundError(
            f"{name} not found in {TOOLS_BIN} or PATH (scripts/install-tools.sh)"
        )
    return Cosign(path, major)
