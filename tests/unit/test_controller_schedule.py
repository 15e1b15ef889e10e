"""When a worker looks again: exact, with a scripted random source and a fixed clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imagecopy.controller.schedule import Schedule
from imagecopy.controller.settings import Settings
from imagecopy.controller.spec import ImageCopySpec, parse_spec
from imagecopy.controller.status import format_timestamp
from imagecopy.oci.retry import Jitter

NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)


class Extremes(random.Random):
    """``uniform`` answers its upper bound (or its lower one): the edges of every window."""

    def __init__(self, high: bool = True) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def schedule(high: bool = True, **settings: Any) -> Schedule:
    return Schedule.from_settings(Settings(**settings), rng=Extremes(high), now=lambda: NOW)


def spec(**fields: Any) -> ImageCopySpec:
    return parse_spec(
        {
            "source": {"image": "reg.example/dev/web:1"},
            "destination": {"image": "reg.example/prod/web:1"},
            **fields,
        }
    )


def ready_status(generation: int = 1, synced: datetime | None = NOW, **ready: Any) -> Any:
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Copied", **ready}],
    }
    if synced is not None:
        status["lastSyncTime"] = format_timestamp(synced)
    return status


def test_settings_build_an_equal_jitter_backoff_and_the_stalled_retry() -> None:
    s = Schedule.from_settings(Settings(retry_base=3.0, retry_max=40.0, stalled_retry=120.0))
    assert (s.backoff.base, s.backoff.cap, s.backoff.jitter) == (3.0, 40.0, Jitter.EQUAL)
    assert s.after_stalled_failure() == 120.0


def test_success_waits_the_interval_plus_at_most_five_percent_capped_at_30s() -> None:
    assert schedule(high=False).after_success(600.0) == 600.0
    assert schedule().after_success(600.0) == 630.0  # 5 % is 30 s
    assert schedule().after_success(60.0) == 63.0
    assert schedule().after_success(3600.0) == 3630.0  # the cap
    assert schedule().after_success(None) is None


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(1, 1.0, 2.0), (2, 2.0, 4.0), (3, 4.0, 8.0), (8, 128.0, 256.0), (9, 150.0, 300.0)],
)
def test_transient_failures_back_off_exponentially_never_below_half_the_step(
    failures: int, low: float, high: float
) -> None:
    s = dict(retry_base=2.0, retry_max=300.0)
    assert schedule(high=False, **s).after_transient_failure(failures) == low
    assert schedule(**s).after_transient_failure(failures) == high


def test_stalled_failures_retry_slowly() -> None:
    assert schedule(stalled_retry=7.0).after_stalled_failure() == 7.0


def test_first_look_is_immediate_for_a_new_generation_or_an_unusable_spec() -> None:
    s = schedule()
    assert s.first_look(spec(), None, 1) == 0
    assert s.first_look(spec(), {"observedGeneration": -1}, 1) == 0
    assert s.first_look(spec(), ready_status(generation=1), 2) == 0  # changed while down
    assert s.first_look(None, ready_status(), 1) == 0


def test_first_look_at_a_current_object_that_is_not_ready_comes_within_two_seconds() -> None:
    stalled = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "reason": "SourceNotFound"}],
    }
    assert schedule().first_look(spec(), stalled, 1) == 2.0
    assert schedule(high=False).first_look(spec(), stalled, 1) == 0.0


def test_first_look_at_a_ready_object_counts_its_interval_from_the_last_sync() -> None:
    synced = NOW - timedelta(minutes=4)
    every_10m = spec(interval="10m")
    assert schedule(high=False).first_look(every_10m, ready_status(synced=synced), 1) == 360.0
    assert schedule().first_look(every_10m, ready_status(synced=synced), 1) == 390.0  # +10 %
    overdue = ready_status(synced=NOW - timedelta(hours=2))
    assert schedule(high=False).first_look(every_10m, overdue, 1) == 0.0
    never_synced = ready_status(synced=None)
    assert schedule(high=False).first_look(every_10m, never_synced, 1) == 600.0


def test_first_look_at_a_ready_object_without_interval_waits_for_a_change() -> None:
    assert schedule().first_look(spec(), ready_status(), 1) is None


def test_first_look_at_a_suspended_object_waits_unless_the_suspension_is_not_recorded() -> None:
    suspended = spec(suspend=True)
    recorded = ready_status(reason="Suspended")
    assert schedule().first_look(suspended, recorded, 1) is None
    assert schedule().first_look(suspended, ready_status(), 1) == 0
    assert schedule().first_look(suspended, recorded, 2) == 0
