"""The fault table renderer: what a rerun changes (exact times, counts) never reaches the
Markdown; what matters (survived, corrupt, leaked) always does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.reliability import (
    COUNT_BUCKETS,
    TIME_BUCKETS,
    bucket,
    render,
    summary,
    update_readme,
)


def row(**kw: Any) -> dict[str, Any]:
    base = {
        "fault": "f", "number": 1, "path": "engine", "final_state": "complete",
        "recover_seconds": 2.3, "bytes_resent": 0, "requests": 40, "ok": True,
        "corrupt": False, "leaked_sessions": 0,
    }  # fmt: skip
    return {**base, **kw}


@pytest.mark.parametrize(
    ("value", "expected"), [(0.2, "≤ 15 s"), (14.9, "≤ 15 s"), (88, "≤ 180 s"), (999, "> 180 s")]
)
def test_times_are_bucketed(value: float, expected: str) -> None:
    assert bucket(value, TIME_BUCKETS, " s") == expected


def test_a_rerun_with_other_exact_figures_renders_the_same_table() -> None:
    first = [row(recover_seconds=2.1, requests=41, bytes_resent=1000, resend_bound=9000)]
    first.append(row(number=2))
    second = [row(number=2, requests=37)]
    second.append(row(recover_seconds=3.9, requests=48, bytes_resent=0, resend_bound=9000))
    assert render(first) == render(second)
    assert bucket(41, COUNT_BUCKETS) == "≤ 100"


def test_failures_corruption_and_leaks_are_counted() -> None:
    rows = [row(), row(number=2, ok=False, corrupt=True), row(number=3, leaked_sessions=2)]
    assert summary(rows) == "2/3 faults survived, 1 corrupt destinations, 2 leaked sessions"
    assert "| 2 | f | engine | **no** |" in render(rows)


def test_the_readme_line_is_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("see: <!-- faults -->old<!-- /faults -->.\n")
    update_readme(readme, [row()])
    assert readme.read_text() == (
        "see: <!-- faults -->1/1 faults survived, 0 corrupt destinations, "
        "0 leaked sessions<!-- /faults -->.\n"
    )
