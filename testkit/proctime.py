"""A clock for child processes you can trust: wall time, CPU and peak RSS of one run.

:func:`measure` spawns ``argv`` (``posix_spawn``) and reaps the child with a **blocking** ``os.wait4``: the
wall time is ``time.perf_counter_ns`` from just before the spawn to the moment the kernel hands
back the exit status (no polling: ``Popen.wait(timeout)`` sleeps in steps growing to 50 ms and
rounds every time up to that step). A watchdog thread enforces the timeout by sending SIGKILL
through a pidfd (so it can never hit a recycled pid). CPU (``ru_utime + ru_stime``) and peak RSS
(``ru_maxrss``) come from the ``rusage`` that ``wait4`` returns for that child alone.

One Linux subtlety: ``ru_maxrss`` survives ``execve`` — the kernel keeps the maximum of the
pre-exec address space (for a vfork/posix_spawn child that is the parent's whole RSS, for a
forked one a copy of its anonymous pages). A child spawned by a big driver process therefore
reports at least the driver's size. The
benchmark driver runs :class:`Spawner`, ``python -S -m testkit.proctime``: a small process
(a few MiB of anonymous memory, no site packages) that does the spawn/wait4 on command, so
the inherited floor is that small process; :func:`floor` measures it with ``/bin/true`` (wall
time = the spawn overhead, RSS = the inherited floor) and the results report both.

Protocol of the spawner (one JSON object per line on stdin, one answer per line on stdout)::

    {"argv": [...], "env": {...}, "timeout": 900}
    -> {"wall_ns": ..., "rc": 0, "maxrss_bytes": ..., "utime_s": ..., "stime_s": ..., ...}

Nothing here imports anything outside the standard library (``-S`` keeps the spawner small).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Measured", "Spawner", "clock_info", "floor", "measure", "selfcheck"]

STDERR_TAIL = 4000


@dataclass(frozen=True)
class Measured:
    """One child process run: spawn→reap wall time, exit, and its own rusage."""

    wall_ns: int
    #: exit status, or -signal when killed by a signal
    rc: int
    maxrss_bytes: int
    utime_s: float
    stime_s: float
    timed_out: bool
    stderr: str = ""

    @property
    def wall_s(self) -> float:
        return self.wall_ns / 1e9

    @property
    def cpu_s(self) -> float:
        return self.utime_s + self.stime_s


def _kill(pid: int, pidfd: int | None) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def measure(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
    *,
    capture_stderr: bool = True,
) -> Measured:
    """Run ``argv`` (stdin and stdout on /dev/null) and measure it; see the module docstring."""
    args = [str(a) for a in argv]
    environ = dict(os.environ if env is None else env)
    with tempfile.TemporaryFile() as err:
        errfd = err.fileno() if capture_stderr else os.open(os.devnull, os.O_WRONLY)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, errfd, 2),
            ]
            t0 = time.perf_counter_ns()
            # posix_spawn: vfork + exec in glibc, ~1 ms cheaper than fork of a Python process
            try:
                pid = os.posix_spawn(args[0], args, environ, file_actions=actions)
            except OSError as exc:  # no such program, not executable: a failed run
                return Measured(0, 127, 0, 0.0, 0.0, False, f"spawn failed: {exc}")
            pidfd: int | None = None
            with contextlib.suppress(OSError, AttributeError):
                pidfd = os.pidfd_open(pid)
            fired = threading.Event()

            def watchdog() -> None:
                fired.set()
                _kill(pid, pidfd)

            timer = threading.Timer(timeout, watchdog)
            timer.daemon = True
            timer.start()
            try:
                while True:
                    try:
                        _, status, ru = os.wait4(pid, 0)  # blocks until the child is gone
                        break
                    except InterruptedError:  # pragma: no cover - PEP 475 retries already
                        continue
                wall = time.perf_counter_ns() - t0
            finally:
                timer.cancel()
                timer.join()
                if pidfd is not None:
                    os.close(pidfd)
        finally:
            os.close(devnull)
            if not capture_stderr:
                os.close(errfd)
        text = ""
        if capture_stderr:
            err.seek(0)
            text = err.read().decode(errors="replace")[-STDERR_TAIL:]
    rc = os.waitstatus_to_exitcode(status)
    return Measured(
        wall_ns=wall,
        rc=rc,
        maxrss_bytes=ru.ru_maxrss * 1024,  # Linux reports KiB
        utime_s=ru.ru_utime,
        stime_s=ru.ru_stime,
        timed_out=fired.is_set(),
        stderr=text,
    )


def clock_info() -> dict[str, Any]:
    """The clock behind every wall time (``time.perf_counter``)."""
    info = time.get_clock_info("perf_counter")
    return {
        "clock": "time.perf_counter_ns",
        "implementation": info.implementation,
        "resolution_s": info.resolution,
        "monotonic": info.monotonic,
    }


class Spawner:
    """``python -S -m testkit.proctime``: :func:`measure` in a small process (see the module
    docstring for why); start from the repository root (``cwd``)."""

    def __init__(self, cwd: Path | None = None, python: str = sys.executable) -> None:
        root = cwd or Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [python, "-S", "-m", "testkit.proctime"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    def measure(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900.0
    ) -> Measured:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd: dict[str, Any] = {"argv": list(argv), "env": dict(os.environ if env is None else env)}
        cmd["timeout"] = timeout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the spawner process died")
        return Measured(**json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def floor(spawner: Spawner | None = None, runs: int = 21) -> dict[str, Any]:
    """What a do-nothing child (``/bin/true``) measures: the spawn→reap overhead (median, min)
    and the inherited peak-RSS floor."""
    run = spawner.measure if spawner is not None else measure
    results = [run(["/bin/true"], {"PATH": "/usr/bin:/bin"}, 30.0) for _ in range(runs)]
    walls = sorted(m.wall_ns for m in results)
    return {
        "true_wall_ns_median": walls[len(walls) // 2],
        "true_wall_ns_min": walls[0],
        "true_maxrss_bytes": max(m.maxrss_bytes for m in results),
        "runs": runs,
    }


#: What the self-check sleeps for: long enough to be far above the clock's resolution and the
#: spawn overhead, short enough to cost nothing in a benchmark run.
SELFCHECK_SLEEP_S = 0.123
#: Excess over the sleep above which the clock is reported as not to be trusted: a polling
#: wait (``Popen.wait(timeout)``) rounds up to steps of up to 50 ms.
SELFCHECK_TOLERANCE_S = 0.010


def selfcheck(spawner: Spawner | None = None, runs: int = 3) -> dict[str, Any]:
    """The benchmark's own check of this clock, run at the start of ``make bench`` (never in
    ``make test``: it is a measurement of time). A child that sleeps ``SELFCHECK_SLEEP_S`` must
    measure no less than the sleep and, at its fastest run, within ``SELFCHECK_TOLERANCE_S``
    of it; a child spinning for 0.2 s of CPU must report that CPU from ``wait4``."""
    run = spawner.measure if spawner is not None else measure
    env = {"PATH": "/usr/bin:/bin"}
    walls = [run(["/bin/sleep", str(SELFCHECK_SLEEP_S)], env, 30.0).wall_s for _ in range(runs)]
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2:\n    pass\n"
    cpu = run([sys.executable, "-S", "-c", spin], env, 60.0).cpu_s
    excess = min(walls) - SELFCHECK_SLEEP_S
    ok = all(w >= SELFCHECK_SLEEP_S for w in walls) and excess <= SELFCHECK_TOLERANCE_S
    return {
        "sleep_s": SELFCHECK_SLEEP_S,
        "sleep_walls_s": [round(w, 6) for w in walls],
        "sleep_excess_min_s": round(excess, 6),
        "spin_cpu_s": round(cpu, 4),
        "ok": ok and cpu >= 0.2,
    }


def _serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        m = measure(cmd["argv"], cmd.get("env"), float(cmd.get("timeout", 900.0)))
        sys.stdout.write(json.dumps(asdict(m)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
