"""The CLI's copy path imports only what a copy needs (issue 14: start-up time).

Each case runs ``imagecopy.cli.main`` in a fresh interpreter (stdout and stderr are pipes, not a
terminal) and reads back the names in ``sys.modules`` when it returns. The copy goes to a
closed local port, so it runs the whole start of a copy (argument parsing, credentials, the
registry pool, the engine, the first request) and fails with "registry unreachable".
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

#: Never needed by a copy: the operator's stack, metrics, the terminal renderer (only on a
#: TTY), cryptography (only when verifying signatures), httpx's own command-line client.
FORBIDDEN = (
    "kopf",
    "kubernetes",
    "prometheus_client",
    "rich",
    "cryptography",
    "click",
    "pygments",
    "imagecopy.controller.main",
    "imagecopy.controller.handlers",
)

_PROGRAM = """
import json, sys
from imagecopy.cli import main
rc = main(json.loads(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, out)
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _modules_after(argv: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _PROGRAM, json.dumps(argv), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), proc.stderr
    data = json.loads(out.read_text())
    return int(data["rc"]), set(data["modules"])


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_copy_path_imports_no_operator_metrics_or_renderer(tmp_path: Path) -> None:
    host = f"127.0.0.1:{_closed_port()}"
    argv = ["copy", f"{host}/a:1", f"{host}/b:1", "--plain-http", host, "--connect-timeout", "1"]
    rc, modules = _modules_after(argv, tmp_path)
    assert rc == 1  # registry unreachable: the copy really started
    assert "imagecopy.copy.engine" in modules and "httpx" in modules
    loaded = [name for name in FORBIDDEN if _loaded(modules, name)]
    assert loaded == []


@pytest.mark.parametrize("argv", [["version"], ["copy", "--help"]])
def test_version_and_help_import_no_engine(tmp_path: Path, argv: list[str]) -> None:
    _rc, modules = _modules_after(argv, tmp_path)
    assert not _loaded(modules, "httpx")
    assert "imagecopy.copy.engine" not in modules
