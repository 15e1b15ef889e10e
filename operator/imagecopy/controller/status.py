"""Pure functions from (previous status, what happened) to the next ``status``.

Owns the condition rules of docs/reference.md §2 and §3: ``Ready``, ``Reconciling`` and
``Stalled`` in the metav1.Condition shape, ``lastTransitionTime`` moved only when a
condition's status flips, kstatus semantics (Reconciling=True while work is under way,
Stalled=True when only a change can help), and the running ``totals``. What an error means
(its reason, stalled or not) is ``failures``; this module only writes it down. No I/O, no
clock: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..copy.report import CopyReport, Outcome
from .failures import Failure

__all__ = [
    "CONDITION_TYPES",
    "READY",
    "RECONCILING",
    "STALLED",
    "SUSPENDED",
    "apply_merge_patch",
    "copying_patch",
    "failure_patch",
    "find_condition",
    "format_timestamp",
    "is_current",
    "is_ready_for",
    "is_suspended_for",
    "parse_timestamp",
    "success_patch",
    "suspended_patch",
    "totals_after",
    "true_conditions",
    "with_condition",
]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)
#: The reason of all three conditions while ``spec.suspend`` is true.
SUSPENDED = "Suspended"

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    return now.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_timestamp(value: Any) -> datetime | None:
    """The time a ``format_timestamp`` string names; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


# -- reading a status ----------------------------------------------------------------------


def find_condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` in a status, if present."""
    for cond in (status or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def true_conditions(status: Mapping[str, Any] | None) -> frozenset[str]:
    """The types of the conditions whose status is ``True``."""
    return frozenset(
        str(c.get("type"))
        for c in (status or {}).get("conditions") or ()
        if isinstance(c, Mapping) and c.get("status") == "True"
    )


def is_current(status: Mapping[str, Any] | None, generation: int) -> bool:
    """The status describes ``generation`` of the spec."""
    return status is not None and status.get("observedGeneration") == generation


def is_ready_for(status: Mapping[str, Any] | None, generation: int) -> bool:
    """The status describes ``generation`` and Ready is True: nothing left to do now."""
    ready = find_condition(status, READY)
    return is_current(status, generation) and ready is not None and ready.get("status") == "True"


def is_suspended_for(status: Mapping[str, Any] | None, generation: int) -> bool:
    """The status already records that ``generation`` is suspended."""
    ready = find_condition(status, READY)
    return is_current(status, generation) and ready is not None and ready.get("reason") == SUSPENDED


# -- building a status patch ---------------------------------------------------------------


def with_condition(
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
            transition = format_timestamp(now)
        result.append(_new_condition(type_, status, reason, message, generation, transition))
    if not found:
        result.append(
            _new_condition(type_, status, reason, message, generation, format_timestamp(now))
        )
    return result


def _new_condition(
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


#: (status, reason, message) of one condition.
_ConditionValue = tuple[str, str, str]


def _next_conditions(
    status: Mapping[str, Any] | None,
    generation: int,
    now: datetime,
    *,
    ready: _ConditionValue,
    reconciling: _ConditionValue,
    stalled: _ConditionValue,
) -> list[dict[str, Any]]:
    """The status's condition list with our three set: ours first in a stable order,
    conditions of other types after them, untouched."""
    existing = [
        dict(c)
        for c in (status or {}).get("conditions") or ()
        if isinstance(c, Mapping) and c.get("type")
    ]
    ours = {c["type"]: c for c in existing if c["type"] in CONDITION_TYPES}
    others = [c for c in existing if c["type"] not in CONDITION_TYPES]
    conditions = [ours[t] for t in CONDITION_TYPES if t in ours]
    for type_, (st, reason, message) in (
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
    ):
        conditions = with_condition(conditions, type_, st, reason, message, generation, now)
    return conditions + others


def copying_patch(
    status: Mapping[str, Any] | None, generation: int, now: datetime, message: str
) -> dict[str, Any]:
    """Work on a new generation has started: Reconciling=True, Ready=Unknown (Copying)."""
    return {
        "observedGeneration": generation,
        "conditions": _next_conditions(
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
        "lastSyncTime": format_timestamp(now),
        "conditions": _next_conditions(
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
    # The verdict for this digest (a spec without verify drops an old one).
    verification = report.verification.to_json() if report.verification else None
    if verification != (status or {}).get("verification"):
        patch["verification"] = verification
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
        "conditions": _next_conditions(
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
    ready = find_condition(status, READY)
    ready_status = str(ready.get("status")) if ready else "Unknown"
    message = "Suspended: no copies until spec.suspend is false"
    return {
        "observedGeneration": generation,
        "conditions": _next_conditions(
            status,
            generation,
            now,
            ready=(ready_status, SUSPENDED, message),
            reconciling=("False", SUSPENDED, ""),
            stalled=("False", SUSPENDED, ""),
        ),
    }


def apply_merge_patch(status: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` after a JSON merge patch of ``patch`` (objects merge, lists replace)."""
    result: dict[str, Any] = dict(status or {})
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = apply_merge_patch(result[key], value)
        else:
            result[key] = value
    return result
