"""The one retry policy: capped exponential backoff with jitter, ``Retry-After``, and a
per-copy retry budget.

Three places wait before trying again, and all of them use ``Backoff``: the transport
(another try of one HTTP request a repeat cannot harm), the blob transfer (an upload
started over from a fresh session, where the transport must not replay a POST, a PATCH or a
streamed body) and the controller's schedule (the next reconcile after a transient
failure). Retries do not multiply: each layer retries only what the layer below it cannot,
and every retry of one copy, at any layer, is paid from one ``RetryBudget``. The worst case
is in docs/reference.md §5 ("Worst case").
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Backoff", "Jitter", "RetryBudget", "RetryPolicy", "parse_retry_after"]


#: Doublings past which ``Backoff.step`` stops growing: ``2.0 ** 1023`` is the largest finite
#: power of two, and every real cap is reached long before.
_MAX_DOUBLINGS = 1000


class Jitter(StrEnum):
    #: Anywhere between 0 and the step: spreads retries of many clients the most.
    FULL = "full"
    #: Half the step fixed, half random: never sooner than half the step.
    EQUAL = "equal"


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before retry ``n`` (1-based): ``base * 2**(n-1)`` capped at ``cap``,
    jittered; a server's ``Retry-After`` wins when given, up to ``retry_after_max``."""

    base: float = 0.2
    cap: float = 10.0
    jitter: Jitter = Jitter.FULL
    retry_after_max: float = 60.0

    def step(self, retry: int) -> float:
        """The un-jittered wait before retry ``retry``, for any ``retry`` however large."""
        # ``2.0 ** n`` raises OverflowError past n = 1023 (the controller counts failures
        # without end); any doubling past that is capped anyway.
        exponent = min(max(retry - 1, 0), _MAX_DOUBLINGS)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(
        self, retry: int, rng: random.Random | None = None, *, retry_after: float | None = None
    ) -> float:
        """The wait before retry ``retry``; ``retry_after`` is what the server asked for,
        already parsed (``parse_retry_after``)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        step = self.step(retry)
        source = rng or random
        if self.jitter is Jitter.EQUAL:
            return step / 2 + source.uniform(0.0, step / 2)
        return source.uniform(0.0, step)


class RetryBudget:
    """Retries one copy may still spend, across all its requests and blob transfers.

    A copy against a failing registry stops after this many retries in total instead of
    retrying each of its requests to the limit; the reconcile then fails with the last
    error and the controller's schedule decides when to look again.
    """

    def __init__(self, retries: int) -> None:
        self._left = max(retries, 0)
        self.spent = 0

    @property
    def remaining(self) -> int:
        return self._left

    def spend(self) -> bool:
        """Take one retry; False when none is left."""
        if self._left <= 0:
            return False
        self._left -= 1
        self.spent += 1
        return True


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently registry requests are tried.

    ``attempts`` bounds the tries of one HTTP request (the first included) and, separately,
    the transfers of one blob; ``budget`` bounds the retries of a whole copy.
    """

    attempts: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    budget: int = 16

    def new_budget(self) -> RetryBudget:
        return RetryBudget(self.budget)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or HTTP-date), at least 0.

    ``None`` when absent or unreadable, so the caller falls back to its own backoff.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 64:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)
