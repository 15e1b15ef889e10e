"""Pure functions from (previous status, what happened) to the next ``status``.

Owns the condition rules of API.md §1: ``Ready``, ``Reconciling`` and ``Stalled`` in the
metav1.Condition shape, ``lastTransitionTime`` moved only when a condition's status flips,
kstatus semantics (Reconciling=True while work is under way, Stalled=True when only a change
can help), the mapping of errors to reasons, and the running ``totals``. No I/O, no clock:
the caller passes ``now``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..copy.report import CopyReport, Outcome
from ..oci.errors import ImageCopyError

__all__ = [
    "CONDITION_TYPES",
    "READY",
    "RECONCILING",
    "STALLED",
    "TRANSIENT_REASONS",
    "Failure",
    "apply_patch",
    "classify",
    "condition",
    "failure_patch",
    "is_settled",
    "progressing_patch",
    "retry_delay",
    "set_condition",
    "success_patch",
    "suspended_patch",
    "timestamp",
    "totals_after",
]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)

#: Reasons another try may fix without any change; everything else stalls.
TRANSIENT_REASONS = frozenset({"RegistryUnreachable", "RateLimited", "InternalError"})


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Failure:
    """A failed attempt, ready for a condition: reason, one safe sentence, and its kind."""

    reason: str
    message: str
    #: True when only a change of spec, Secret or settings can help (kstatus Stalled).
    stalled: bool


def classify(exc: BaseException) -> Failure:
    """Map an exception to a condition reason and message.

    ``ImageCopyError`` messages are written to be shown (one sentence, no credentials).
    Anything else is an ``InternalError`` whose message names only the exception type, since
    a foreign message may carry URLs, headers or bodies.
    """
    if isinstance(exc, ImageCopyError):
        reason = exc.reason or "InternalError"
        transient = exc.transient or reason in TRANSIENT_REASONS
        message = exc.message.strip() or exc.label
        return Failure(reason, _sentence(message), stalled=not transient)
    return Failure(
        "InternalError",
        f"Internal error ({type(exc).__name__}); the operator log has the details.",
        stalled=False,
    )


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 1024:
        text = text[:1021] + "..."
    return text


def condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` in a status, if present."""
    for cond in (status or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """A new condition list with ``type_`` set; ``lastTransitionTime`` kept unless the
    status flips (or the condition is new). Order: existing order, new ones appended."""
    result: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime")
        if cond.get("status") != status or not transition:
            transition = timestamp(now)
        result.append(_condition(type_, status, reason, message, generation, transition))
    if not found:
        result.append(_condition(type_, status, reason, message, generation, timestamp(now)))
    return result


def _condition(
    type_: str, status: str, reason: str, message: str, generation: int, transition: str
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": max(generation, 0),
        "lastTransitionTime": transition,
    }


def _conditions(
    status: Mapping[str, Any] | None,
    generation: int,
    now: datetime,
    *,
    ready: tuple[str, str, str],
    reconciling: tuple[str, str, str],
    stalled: tuple[str, str, str],
) -> list[dict[str, Any]]:
    existing = [
        dict(c)
        for c in (status or {}).get("conditions") or ()
        if isinstance(c, Mapping) and c.get("type")
    ]
    # Keep our three first and in a stable order; foreign conditions follow untouched.
    ours = {c["type"]: c for c in existing if c["type"] in CONDITION_TYPES}
    others = [c for c in existing if c["type"] not in CONDITION_TYPES]
    conditions = [ours[t] for t in CONDITION_TYPES if t in ours]
    for type_, (st, reason, message) in (
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
    ):
        conditions = set_condition(conditions, type_, st, reason, message, generation, now)
    return conditions + others


def progressing_patch(
    status: Mapping[str, Any] | None, generation: int, now: datetime, message: str
) -> dict[str, Any]:
    """Work on a new generation has started: Reconciling=True, Ready=Unknown (Copying)."""
    return {
        "observedGeneration": generation,
        "conditions": _conditions(
            status,
            generation,
            now,
            ready=("Unknown", "Copying", message),
            reconciling=("True", "Copying", message),
            stalled=("False", "Copying", ""),
        ),
    }


def totals_after(totals: Mapping[str, Any] | None, report: CopyReport) -> dict[str, int]:
    """``status.totals`` plus one copy; a copy that moved and linked nothing adds nothing."""
    current = {
        key: int(value)
        for key, value in (totals or {}).items()
        if key in ("copies", "mountedBlobs", "bytesSaved") and isinstance(value, int | float)
    }
    result = {
        "copies": current.get("copies", 0),
        "mountedBlobs": current.get("mountedBlobs", 0),
        "bytesSaved": current.get("bytesSaved", 0),
    }
    if report.outcome is Outcome.COPIED:
        result["copies"] += 1
        result["mountedBlobs"] += report.blobs_mounted
        result["bytesSaved"] += report.bytes_saved
    return result


def success_patch(
    status: Mapping[str, Any] | None, report: CopyReport, generation: int, now: datetime
) -> dict[str, Any]:
    """The destination holds the source per the spec: Ready=True with the report's reason."""
    reason = report.outcome.value
    message = report.summary()
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "lastSyncTime": timestamp(now),
        "conditions": _conditions(
            status,
            generation,
            now,
            ready=("True", reason, message),
            reconciling=("False", reason, ""),
            stalled=("False", reason, ""),
        ),
    }
    if report.source_digest:
        patch["sourceDigest"] = report.source_digest
    if report.destination_digest:
        patch["destinationDigest"] = report.destination_digest
    if report.destination_pinned:
        patch["destinationImage"] = report.destination_pinned
    if report.outcome is Outcome.COPIED:
        patch["lastCopy"] = report.last_copy()
        patch["totals"] = totals_after((status or {}).get("totals"), report)
    elif not (status or {}).get("totals"):
        patch["totals"] = totals_after(None, report)
    return patch


def failure_patch(
    status: Mapping[str, Any] | None, failure: Failure, generation: int, now: datetime
) -> dict[str, Any]:
    """A failed attempt: Ready=False; Stalled=True when it needs a change, else
    Reconciling=True (a retry is scheduled)."""
    if failure.stalled:
        reconciling = ("False", failure.reason, "")
        stalled = ("True", failure.reason, failure.message)
    else:
        reconciling = ("True", failure.reason, f"Retrying: {failure.message}")
        stalled = ("False", failure.reason, "")
    return {
        "observedGeneration": generation,
        "conditions": _conditions(
            status,
            generation,
            now,
            ready=("False", failure.reason, failure.message),
            reconciling=reconciling,
            stalled=stalled,
        ),
    }


def suspended_patch(
    status: Mapping[str, Any] | None, generation: int, now: datetime
) -> dict[str, Any]:
    """``spec.suspend``: no work. Ready keeps its status (the destination is what it was),
    with reason Suspended; nothing is in progress and nothing is stalled."""
    ready = condition(status, READY)
    ready_status = str(ready.get("status")) if ready else "Unknown"
    message = "Suspended: no copies until spec.suspend is false"
    return {
        "observedGeneration": generation,
        "conditions": _conditions(
            status,
            generation,
            now,
            ready=(ready_status, "Suspended", message),
            reconciling=("False", "Suspended", ""),
            stalled=("False", "Suspended", ""),
        ),
    }


def apply_patch(status: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` after a JSON merge patch of ``patch`` (objects merge, lists replace)."""
    result: dict[str, Any] = dict(status or {})
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = apply_patch(result[key], value)
        else:
            result[key] = value
    return result


def is_settled(status: Mapping[str, Any] | None, generation: int) -> bool:
    """The status describes this generation and Ready is True (nothing left to do now)."""
    if not status or status.get("observedGeneration") != generation:
        return False
    ready = condition(status, READY)
    return ready is not None and ready.get("status") == "True"


def retry_delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``failures`` (1-based) of a transient failure:
    exponential from ``base``, capped at ``cap``, with "equal jitter" (half fixed, half
    random) so retries of many objects spread out but never come sooner than half the step."""
    step = min(cap, base * (2.0 ** max(failures - 1, 0)))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter
