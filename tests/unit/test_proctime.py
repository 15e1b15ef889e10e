"""testkit.proctime, the benchmark's process clock: blocking reap, rusage of the child alone.

Nothing here asserts how long anything took (make test never asserts a time): the clock's
precision is checked by the benchmark itself at the start of every run
(``testkit.proctime.selfcheck``, reported in bench/results.md). These tests check what the
clock reports and that it is the child's own: exit status, stderr, the watchdog's kill, peak
RSS, and CPU equal to what the child counted itself."""

from __future__ import annotations

import sys

from testkit.proctime import Spawner, clock_info, floor, measure, selfcheck

MiB = 1024 * 1024


def test_the_clock_is_monotonic_with_sub_millisecond_resolution() -> None:
    info = clock_info()
    assert info["resolution_s"] < 1e-3
    assert info["monotonic"] is True
    walls = {measure(["/bin/true"]).wall_ns for _ in range(5)}
    # nanosecond readings, not a millisecond (or coarser polling) grid
    assert any(w % 1_000_000 for w in walls), walls


def test_the_selfcheck_reports_its_readings() -> None:
    check = selfcheck(runs=1)
    assert set(check) == {"sleep_s", "sleep_walls_s", "sleep_excess_min_s", "spin_cpu_s", "ok"}
    assert len(check["sleep_walls_s"]) == 1
    assert check["sleep_excess_min_s"] == round(check["sleep_walls_s"][0] - check["sleep_s"], 6)


def test_peak_rss_is_the_childs_own_allocation() -> None:
    code = "b = b'x' * (100 * 1024 * 1024); print(len(b))"
    m = measure([sys.executable, "-c", code])
    assert m.rc == 0, m.stderr
    assert m.maxrss_bytes >= 100 * MiB


def test_cpu_time_is_what_the_child_counted_itself() -> None:
    # The child spins, then prints the CPU it has used so far; wait4's rusage, taken at its
    # exit, can only be that plus the few instructions of printing and exiting.
    code = (
        "import time\nt = time.process_time()\n"
        "while time.process_time() - t < 0.2:\n    pass\n"
        "import sys\nsys.stderr.write(repr(time.process_time()))\n"
    )
    m = measure([sys.executable, "-c", code])
    assert m.rc == 0, m.stderr
    counted = float(m.stderr)
    assert counted <= m.cpu_s + 0.011  # rusage is kept in clock ticks (10 ms)
    assert m.cpu_s <= counted + 0.05
    assert m.utime_s > 0


def test_exit_status_and_stderr_are_reported() -> None:
    m = measure(["/bin/sh", "-c", "echo oops >&2; exit 3"])
    assert m.rc == 3
    assert "oops" in m.stderr
    assert not m.timed_out


def test_the_watchdog_kills_a_child_past_its_timeout() -> None:
    m = measure(["/bin/sleep", "30"], timeout=0.5)
    assert m.timed_out
    assert m.rc == -9


def test_a_missing_program_is_exit_127() -> None:
    m = measure(["/nonexistent/tool"])
    assert m.rc == 127


def test_the_spawner_does_not_pass_the_drivers_size_to_its_children() -> None:
    ballast = b"y" * (200 * MiB)  # this process is now > 200 MiB
    direct = measure(["/bin/true"])
    assert direct.maxrss_bytes >= 200 * MiB  # Linux keeps the pre-exec maximum
    with Spawner() as sp:
        fl = floor(sp, runs=3)
        big = sp.measure([sys.executable, "-c", "b = b'x' * (64 * 1024 * 1024)"])
    assert fl["true_maxrss_bytes"] < 40 * MiB, fl
    assert fl["true_wall_ns_min"] > 0
    assert big.rc == 0 and big.maxrss_bytes >= 64 * MiB
    assert len(ballast) == 200 * MiB
