"""Child processes of tests and benchmarks: ports for them to listen on, and process groups.

- :func:`free_port` — a loopback TCP port that was free a moment ago;
- :func:`new_group_dying_with_parent` — a ``preexec_fn``: the child leads a process group of
  its own and gets SIGKILL when its parent dies, so no server outlives a test session;
- :func:`stop_process_group` — SIGTERM the child's group, wait, then SIGKILL it;
- :func:`kill_process_group` — SIGKILL the child's group at once (a crash, an OOM kill).

The stop helpers address the group by the child's pid, so the child must have been started as
a group leader (``start_new_session=True``, ``preexec_fn=os.setsid`` or
:func:`new_group_dying_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from typing import Any

__all__ = [
    "free_port",
    "kill_process_group",
    "new_group_dying_with_parent",
    "stop_process_group",
]

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_group_dying_with_parent() -> None:
    """``preexec_fn``: a process group of its own, and SIGKILL when the parent dies.

    Linux delivers ``PR_SET_PDEATHSIG`` when the *thread* that forked exits, so start children
    this way from a thread that lives as long as they should (the main thread).
    """
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group, wait up to ``timeout`` s for ``proc``, then SIGKILL the
    group (whatever of it is left: children of a leader that already exited, too) and reap."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    kill_process_group(proc, timeout)


def kill_process_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGKILL ``proc``'s process group at once, then wait up to ``timeout`` s for ``proc``."""
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
