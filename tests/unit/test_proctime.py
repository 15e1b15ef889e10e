"""testkit.proctime, the benchmark's process clock: blocking reap, rusage of the child alone.

These check the helper's own precision with generous bounds (the minimum of a few runs, so a
busy machine cannot fail them); nothing here times the product."""

from __future__ import annotations

import sys
import time

from testkit.proctime import Spawner, clock_info, floor, measure

MiB = 1024 * 1024


def test_a_sleeping_child_measures_its_sleep_not_a_polling_step() -> None:
    # Popen.wait(timeout) polls in steps growing to 50 ms and would report ~0.16 s for this
    # child; a blocking wait4 reports the sleep plus the spawn overhead (~1 ms).
    walls = [measure(["/bin/sleep", "0.123"]).wall_s for _ in range(3)]
    assert all(w >= 0.123 for w in walls), walls
    assert min(walls) < 0.123 + 0.030, walls


def test_the_wall_time_has_sub_millisecond_resolution() -> None:
    info = clock_info()
    assert info["resolution_s"] < 1e-3
    assert info["monotonic"] is True
    walls = {measure(["/bin/true"]).wall_ns for _ in range(5)}
    # nanosecond readings of a ~1 ms event: not all on a millisecond grid
    assert any(w % 1_000_000 for w in walls), walls


def test_peak_rss_is_the_childs_own_allocation() -> None:
    code = "b = b'x' * (100 * 1024 * 1024); print(len(b))"
    m = measure([sys.executable, "-c", code])
    assert m.rc == 0, m.stderr
    assert m.maxrss_bytes >= 100 * MiB


def test_cpu_time_is_the_childs_user_plus_system_time() -> None:
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n"
    m = measure([sys.executable, "-c", code])
    assert m.rc == 0, m.stderr
    assert m.cpu_s >= 0.29
    assert m.wall_s >= m.cpu_s * 0.9


def test_exit_status_and_stderr_are_reported() -> None:
    m = measure(["/bin/sh", "-c", "echo oops >&2; exit 3"])
    assert m.rc == 3
    assert "oops" in m.stderr
    assert not m.timed_out


def test_the_watchdog_kills_a_child_past_its_timeout() -> None:
    t0 = time.monotonic()
    m = measure(["/bin/sleep", "30"], timeout=0.5)
    assert m.timed_out
    assert m.rc == -9
    assert time.monotonic() - t0 < 20


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
