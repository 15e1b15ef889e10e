"""The CLI's copy path imports only what a copy needs (issue 14: start-up time).

Each case runs ``imagecopy.cli.main`` in a fresh interpreter (stdout and stderr are pipes, not a
terminal) and reads back the names in ``sys.modules`` when it returns. The copy goes to a
closed local port, so it runs the whole start of a copy (argument parsing, credentials, the
registry pool, the engine, the first request) and fails with "registry unreachable".
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: Never needed by a copy: the operator's stack, metrics, YAML, the terminal renderer (only on
#: a TTY), cryptography and the signature checks (only when verifying signatures),
#: httpx's own command-line client and the HTTP/2 stack (off by default: TransportSettings.http2).
FORBIDDEN = (
    "kopf",
    "kubernetes",
    "prometheus_client",
    "yaml",
    "rich",
    "cryptography",
    "click",
    "pygments",
    "h2",
    "imagecopy.controller.main",
    "imagecopy.controller.handlers",
    "imagecopy.controller.kube",
    "imagecopy.controller.metrics",
    "imagecopy.copy.signatures",
)

#: Not needed by ``version`` or ``--help``: the event loop and the JSON codec come with a copy.
FORBIDDEN_WITHOUT_COPY = ("asyncio", "json", "imagecopy.oci", "imagecopy.copy")

_PROGRAM = """
import gc, sys
from imagecopy.cli import main
rc = main(sys.argv[3:])
modules = sorted(sys.modules)
with open(sys.argv[1], "w") as out:
    out.write(repr({"rc": rc, "modules": modules, "gc": gc.isenabled()}))
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_main(argv: list[str], tmp_path: Path) -> dict[str, Any]:
    """``main(argv)`` in a fresh interpreter: its exit code, ``sys.modules`` when it returned
    (before anything else imports a module) and whether the garbage collector is on again."""
    out = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(out), "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), proc.stderr
    data: dict[str, Any] = ast.literal_eval(out.read_text())
    return data


def _modules_after(argv: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    data = _run_main(argv, tmp_path)
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


def test_the_collector_is_on_again_after_a_copy_in_process(tmp_path: Path) -> None:
    """``main`` turns the garbage collector off while a copy starts; a caller that runs it in
    its own process (tests, the operator's tools) gets it back on, success or failure."""
    host = f"127.0.0.1:{_closed_port()}"
    failed = _run_main(["copy", f"{host}/a:1", f"{host}/b:1", "--plain-http", host], tmp_path)
    assert failed["rc"] == 1 and failed["gc"] is True
    usage = _run_main(["copy", "a:1", "a:1", "--concurrency", "0"], tmp_path)
    assert usage["rc"] == 2 and usage["gc"] is True


@pytest.mark.parametrize("argv", [["version"], ["copy", "--help"]])
def test_version_and_help_import_no_engine(tmp_path: Path, argv: list[str]) -> None:
    _rc, modules = _modules_after(argv, tmp_path)
    assert not _loaded(modules, "httpx")
    assert "imagecopy.copy.engine" not in modules
    loaded = [name for name in FORBIDDEN_WITHOUT_COPY if _loaded(modules, name)]
    assert loaded == []


@pytest.mark.parametrize(
    ("argv", "code", "stdout", "stderr"),
    [
        (["version"], 0, "imagecopy 0.1.0\n", ""),
        (["copy", "a:1"], 2, "", "the following arguments are required: DESTINATION"),
        (["copy", "a:1", "a:1"], 2, "", "imagecopy: invalid input: "),
    ],
)
def test_the_program_flushes_its_output_and_keeps_its_exit_code(
    argv: list[str], code: int, stdout: str, stderr: str
) -> None:
    """``python -m imagecopy`` (as the console script, ``cli.run``) leaves with ``os._exit``:
    what it printed to pipes still arrives whole, and the exit code is main's."""
    operator_dir = str(Path(__file__).resolve().parents[2] / "operator")
    proc = subprocess.run(
        [sys.executable, "-m", "imagecopy", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": operator_dir},
    )
    assert proc.returncode == code
    assert proc.stdout == stdout if stdout or code else True
    assert stderr in proc.stderr
    if code == 0:
        assert proc.stderr == ""
