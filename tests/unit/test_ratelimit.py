"""Rate-limit headers in the ``RateLimited`` message: Docker Hub's, the IETF draft's, hostile."""

from __future__ import annotations

import pytest

from imagecopy.controller.failures import failure_for
from imagecopy.oci.errors import RateLimited
from imagecopy.oci.ratelimit import rate_limit_note

HUB = "registry-1.docker.io"


def test_docker_hub_headers_in_words() -> None:
    headers = {
        "ratelimit-limit": "100;w=21600",
        "ratelimit-remaining": "0;w=21600",
        "docker-ratelimit-source": "192.0.2.7",
    }
    assert rate_limit_note(HUB, headers) == (
        f"{HUB} rate limit: 0 of 100 pulls left per 21600 s window, counted against 192.0.2.7"
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, ""),
        ({"ratelimit-remaining": "3"}, f"{HUB} rate limit: 3 pulls left"),
        (
            {"ratelimit-limit": "200;w=3600"},
            f"{HUB} rate limit: 200 pulls allowed per 3600 s window",
        ),
        (
            {"ratelimit-limit": "10", "ratelimit-remaining": "0", "ratelimit-reset": "42"},
            f"{HUB} rate limit: 0 of 10 pulls left, resets in 42 s",
        ),
        # hostile values never reach the message as sent
        ({"ratelimit-limit": "lots", "ratelimit-remaining": "-1"}, ""),
        (
            {"ratelimit-remaining": "0", "docker-ratelimit-source": "a b\r\nSet-Cookie: x"},
            f"{HUB} rate limit: 0 pulls left",
        ),
        ({"ratelimit-remaining": "9" * 40}, ""),
    ],
)
def test_partial_and_hostile_headers(headers: dict[str, str], expected: str) -> None:
    assert rate_limit_note(HUB, headers) == expected


def test_the_note_reaches_the_rate_limited_condition_message() -> None:
    note = rate_limit_note(HUB, {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0"})
    exc = RateLimited(f"{HUB}/library/busybox rate-limited manifest 1.36 (429); {note}", status=429)
    failure = failure_for(exc)
    assert failure.reason == "RateLimited" and not failure.stalled
    assert failure.message.endswith("0 of 100 pulls left per 21600 s window")
