"""Rate-limit headers in words: what a 429 says about the quota, for the error message.

Docker Hub sends ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 0;w=21600``
(pulls per window of ``w`` seconds) and ``docker-ratelimit-source`` (the IP address or
account the pulls are counted against) on manifest answers; the IETF draft
``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` headers have the same
shape. Only these headers are read, each bounded and checked, so a hostile value never
reaches a message as it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["rate_limit_note"]

_QUOTA = re.compile(r"([0-9]{1,12})\s*(?:;\s*w\s*=\s*([0-9]{1,12}))?")
_SOURCE = re.compile(r"[A-Za-z0-9.:_-]{1,64}")


def _quota(value: str | None) -> tuple[int, int | None] | None:
    """``100;w=21600`` → (100, 21600); ``100`` → (100, None); anything else → None."""
    if not value:
        return None
    match = _QUOTA.fullmatch(value.strip())
    if match is None:
        return None
    window = match.group(2)
    return int(match.group(1)), int(window) if window else None


def rate_limit_note(registry: str, headers: Mapping[str, str]) -> str:
    """``"registry-1.docker.io rate limit: 0 of 100 pulls left per 21600 s window"``, or
    ``""`` when the answer carries no usable rate-limit header."""
    limit = _quota(headers.get("ratelimit-limit"))
    remaining = _quota(headers.get("ratelimit-remaining"))
    if limit is None and remaining is None:
        return ""
    window = (limit and limit[1]) or (remaining and remaining[1]) or None
    if remaining is not None and limit is not None:
        said = f"{remaining[0]} of {limit[0]} pulls left"
    elif remaining is not None:
        said = f"{remaining[0]} pulls left"
    else:
        assert limit is not None
        said = f"{limit[0]} pulls allowed"
    if window:
        said += f" per {window} s window"
    reset = _quota(headers.get("ratelimit-reset"))
    if reset is not None and reset[1] is None:
        said += f", resets in {reset[0]} s"
    source = (headers.get("docker-ratelimit-source") or "").strip()
    if _SOURCE.fullmatch(source):
        said += f", counted against {source}"
    return f"{registry} rate limit: {said}"
