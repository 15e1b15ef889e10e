"""``oci.connections._BodyBuffer`` (h11's receive buffer handing body reads back uncopied)
gives h11 exactly the events its own buffer gives, however the bytes are split into reads:
responses with a length, chunked, followed by the next response on the same connection, or
by bytes nobody asked for."""

from __future__ import annotations

import random
from typing import Any

import h11
import pytest

from imagecopy.oci.connections import _BodyBuffer

BODY = bytes(random.Random(7).getrandbits(8) for _ in range(300_000))


def _response(body: bytes, chunked: bool = False) -> bytes:
    if not chunked:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for start in range(0, len(body), 70_000):
        part = body[start : start + 70_000]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def _events(wire: bytes, cuts: list[int], ours: bool, responses: int) -> list[Any]:
    """What a client connection makes of ``wire`` read in pieces ending at ``cuts``."""
    conn = h11.Connection(our_role=h11.CLIENT)
    if ours:
        conn._receive_buffer = _BodyBuffer()
    reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    seen: list[Any] = []
    for n in range(responses):
        if n:
            conn.start_next_cycle()
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(reads.pop(0) if reads else b"")
                continue
            if isinstance(event, h11.Data):
                seen.append(("data", bytes(event.data)))
            elif isinstance(event, h11.Response):
                seen.append(("response", event.status_code, list(event.headers)))
            else:
                seen.append(type(event).__name__)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                break
    seen.append(("left over", conn.trailing_data))
    return seen


@pytest.mark.parametrize("seed", range(12))
def test_body_buffer_gives_the_events_of_h11s_own(seed: int) -> None:
    rng = random.Random(seed)
    wire = _response(BODY, chunked=seed % 3 == 1) + _response(BODY[:1000], chunked=seed % 2 == 0)
    extra = b"HTTP/1.1 200 OK\r\n" if seed % 4 == 3 else b""  # the server spoke out of turn
    wire += extra
    cuts = sorted(rng.sample(range(1, len(wire)), rng.randint(1, 40)))
    if seed % 5 == 0:
        cuts = [len(_response(BODY)) - 5]  # headers and almost all the body in one read
    theirs = _events(wire, cuts, ours=False, responses=2)
    mine = _events(wire, cuts, ours=True, responses=2)
    assert mine == theirs
    assert b"".join(e[1] for e in mine if isinstance(e, tuple) and e[0] == "data") == (
        BODY + BODY[:1000]
    )


def test_a_read_that_is_all_body_comes_back_as_the_same_object() -> None:
    buffer = _BodyBuffer()
    read = b"x" * 5000
    buffer += read
    assert len(buffer) == 5000
    got: object = buffer.maybe_extract_at_most(10_000)
    assert got is read
    assert not buffer
    buffer += read
    part = buffer.maybe_extract_at_most(1000)  # the body ends inside the read: h11's way
    assert part is not None and bytes(part) == read[:1000] and len(buffer) == 4000
    assert bytes(buffer) == read[1000:]
