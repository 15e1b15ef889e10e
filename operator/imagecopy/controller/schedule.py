"""When an object's worker looks again: the retry schedule of docs/reference.md §3.

- first look of a worker (a new object, or the operator starting): at once when the status
  is not for the current generation; within a moment when it is but is not Ready; else at the
  next ``interval`` counted from ``lastSyncTime``, with jitter so a restart does not check
  every object in the same second; never without an interval;
- after a success: ``interval`` plus a little jitter, else only on a spec change;
- after a transient failure: capped exponential backoff with equal jitter (``oci.retry``);
- after a Stalled failure: ``IMAGECOPY_STALLED_RETRY``;
- suspended: only on a spec change.

Pure: the random source and the clock are passed in. ``None`` means "only on a change".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..oci.retry import Backoff, Jitter
from .settings import Settings
from .spec import ImageCopySpec
from .status import is_current, is_ready_for, is_suspended_for, parse_timestamp

__all__ = ["Schedule"]

#: A restarted operator looks at current-but-not-Ready objects within this many seconds.
_RESTART_SPREAD = 2.0
#: Jitter after a success: up to this share of the interval ...
_SUCCESS_JITTER = 0.05
#: ... and on the first look after a restart (wider: every object restarts at once) ...
_FIRST_LOOK_JITTER = 0.1
#: ... never more than this many seconds.
_JITTER_CAP = 30.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Schedule:
    """Seconds until the next look, after each kind of result."""

    #: Seconds between tries of a Stalled object.
    stalled_retry: float = 300.0
    #: The wait before the n-th consecutive transient failure's retry.
    backoff: Backoff = field(default_factory=lambda: Backoff(2.0, 300.0, jitter=Jitter.EQUAL))
    rng: random.Random = field(default_factory=random.Random)
    now: Callable[[], datetime] = _utc_now

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> Schedule:
        return cls(
            stalled_retry=settings.stalled_retry,
            backoff=Backoff(settings.retry_base, settings.retry_max, jitter=Jitter.EQUAL),
            rng=rng or random.Random(),
            now=now,
        )

    def first_look(
        self, spec: ImageCopySpec | None, status: Mapping[str, Any] | None, generation: int
    ) -> float | None:
        """When a worker that just started looks first; ``spec`` None: it cannot be parsed
        (looked at once, so the problem is reported)."""
        if spec is None:
            return 0
        if spec.suspend:
            return None if is_suspended_for(status, generation) else 0
        if not is_ready_for(status, generation):
            # Not for this generation: a spec change while the operator was down, or a copy
            # cut short by a restart; resume it. Else Stalled or failing: retry soon.
            return self.rng.uniform(0, _RESTART_SPREAD) if is_current(status, generation) else 0
        if spec.interval is None:
            return None
        due = spec.interval
        last = parse_timestamp((status or {}).get("lastSyncTime"))
        if last is not None:
            due = max(0.0, (last - self.now()).total_seconds() + spec.interval)
        return due + self._jitter(spec.interval, _FIRST_LOOK_JITTER)

    def after_success(self, interval: float | None) -> float | None:
        """The next check of the source: ``interval`` plus jitter; None without one."""
        if interval is None:
            return None
        return interval + self._jitter(interval, _SUCCESS_JITTER)

    def after_transient_failure(self, failures: int) -> float:
        """The wait after the ``failures``-th transient failure in a row (1-based)."""
        return self.backoff.delay(failures, self.rng)

    def after_stalled_failure(self) -> float:
        """A Stalled object is tried again slowly: a fixed Secret or a registry permission
        granted later is picked up without a spec change."""
        return self.stalled_retry

    def _jitter(self, interval: float, share: float) -> float:
        return self.rng.uniform(0, min(interval * share, _JITTER_CAP))
