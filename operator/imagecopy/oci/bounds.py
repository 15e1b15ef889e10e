"""Bounds on everything a registry (or a Secret) sends: bytes read, JSON depth, graph size.

A registry is hostile input (docs/reference.md §9): it may answer with an endless body, JSON
nested past the interpreter's recursion limit, or an image graph with no end. This module
owns the numbers and the two pure tools that enforce the read bounds:

- ``read_bounded`` reads a streamed answer incrementally and stops as soon as it passes its
  limit (``Content-Length`` is checked first, before any byte is read); a compressed body is
  inflated in bounded steps, so a "gzip bomb" cannot expand past the limit either.
- ``RedirectBodyLimit`` (a transport layer) reads at most ``MAX_ERROR_BODY_BYTES`` of a
  redirect's body, and hands none of it on: httpx reads a redirect hop's body whole before
  following it, and it is never used.
- ``load_json`` refuses JSON nested deeper than ``MAX_JSON_DEPTH`` *before* ``json.loads``
  could raise ``RecursionError`` (one linear scan over the brackets outside strings), and
  turns every JSON failure into the caller's typed error.

``Bounds`` holds the limits of one copy's graph (children per index, index depth, manifests,
manifest bytes, blobs, referrers per subject); the copy engine checks them (``copy.plan``) and
the operator and the CLI can change them (docs/reference.md §4, §6, §7).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from typing import Any

import httpx

__all__ = [
    "MAX_ERROR_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_REFERRERS_BODY_BYTES",
    "MAX_RESPONSE_HEADER_BYTES",
    "BodyTooLarge",
    "Bounds",
    "RedirectBodyLimit",
    "json_depth_exceeds",
    "load_json",
    "parse_size",
    "read_bounded",
]

#: Deepest JSON nesting accepted anywhere (manifests, error and token bodies, docker configs).
#: Real documents nest about 5 levels (index → manifests → descriptor → annotations).
MAX_JSON_DEPTH = 64
#: Bytes of an error answer's body read at most; the rest is not read (the connection is
#: dropped). Enough for any OCI error body a registry really sends.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Bytes of a referrers API answer read at most (an OCI index, like a manifest).
MAX_REFERRERS_BODY_BYTES = 4 * 1024 * 1024
#: The response header block httpcore's h11 connection accepts (its
#: ``MAX_INCOMPLETE_EVENT_SIZE``); a longer one fails the request with a protocol error,
#: which the registry client reports as ``LimitExceeded``. Not configurable here: stated
#: for the reference.
MAX_RESPONSE_HEADER_BYTES = 100 * 1024

MIB = 1024 * 1024

_SIZE = re.compile(r"([0-9]{1,15})(KiB|MiB|GiB)?")
_SIZE_UNITS = {None: 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}

# A JSON string (escapes included, unterminated ones left to json.loads) or a bracket.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset("[{")
# Content-Encodings inflated (boundedly) by read_bounded, with zlib's window bits for each.
_INFLATE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class Bounds:
    """The limits of one copy's graph. Each is checked before the work it would allow is
    done (a child list before its children are fetched), and a copy over one fails with
    ``LimitExceeded`` naming the limit."""

    #: Child manifests one index may list.
    max_index_children: int = 256
    #: Levels of manifests below the root: an index of indexes deeper than this is refused.
    max_index_depth: int = 8
    #: Manifests one copy may hold: the root, its children at any depth, and the referrers
    #: with their own graphs.
    max_manifests: int = 1024
    #: Bytes of all those manifests together (each is also at most 4 MiB).
    max_manifest_bytes: int = 16 * MIB
    #: Distinct blobs one copy may name.
    max_blobs: int = 10_000
    #: Referrers one manifest (a subject) may have.
    max_referrers: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Bounds.{f.name} must be a whole number of at least 1")


def parse_size(text: str) -> int:
    """Bytes in ``16777216``, ``64KiB``, ``16MiB`` or ``1GiB``; ``ValueError`` for anything
    else (no decimal units, no fractions, no spaces inside)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size like 16777216, 64KiB, 16MiB or 1GiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


class BodyTooLarge(Exception):
    """``read_bounded`` passed its limit: ``seen`` bytes (or the announced length)."""

    def __init__(self, limit: int, seen: int, announced: bool) -> None:
        super().__init__(f"body over {limit} bytes")
        self.limit = limit
        self.seen = seen
        #: True when ``Content-Length`` said so before anything was read.
        self.announced = announced


class _DiscardedBody(httpx.AsyncByteStream):
    """A body read up to ``limit`` bytes and dropped: nothing is handed on (so nothing is
    inflated either); past the limit the rest is left unread and the connection dropped."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                break
        return
        yield b""  # pragma: no cover (makes this an async generator that yields nothing)

    async def aclose(self) -> None:
        await self._inner.aclose()


class RedirectBodyLimit(httpx.AsyncBaseTransport):
    """Bounds what a redirect answer costs: its body is read up to ``limit`` bytes (64 KiB)
    and discarded, so a 3xx with an endless body cannot make httpx read it whole."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int = MAX_ERROR_BODY_BYTES):
        self.inner = inner
        self.limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if 300 <= response.status_code < 400 and isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _DiscardedBody(response.stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("Content-Length", "").strip()
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, read incrementally; raises ``BodyTooLarge`` as
    soon as more than ``limit`` bytes are seen (or announced by ``Content-Length``, before
    reading). The decoded size is what counts: a ``gzip``/``deflate`` body is inflated in
    steps of at most what the limit still allows. Another encoding raises ``ValueError``.
    The caller closes the response (an unread rest makes httpcore drop the connection).
    """
    length = _content_length(response)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    identity = encoding in ("", "identity")
    if identity and length is not None and length > limit:
        raise BodyTooLarge(limit, length, announced=True)
    if not identity and encoding not in _INFLATE:
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    inflater = None if identity else zlib.decompressobj(_INFLATE[encoding])
    body = bytearray()
    # An answer built from bytes already in memory (a test transport's) is read as it is.
    chunks = _in_memory(response) if response.is_stream_consumed else response.aiter_raw()
    async for raw in chunks:
        if inflater is None:
            body += raw
        else:
            data = raw
            while data and len(body) <= limit:
                try:
                    body += inflater.decompress(data, limit + 1 - len(body))
                except zlib.error:
                    raise ValueError(f"the {encoding} body does not inflate") from None
                data = inflater.unconsumed_tail
        if len(body) > limit:
            raise BodyTooLarge(limit, len(body), announced=False)
    return bytes(body)


async def _in_memory(response: httpx.Response) -> AsyncIterator[bytes]:
    yield response.content


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether ``text`` nests brackets outside strings deeper than ``max_depth`` (linear)."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        elif len(token) == 1:
            depth -= 1  # a closer (strings are longer than one character)
    return False


def load_json(
    data: bytes | str,
    what: str,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    error: Callable[[str], Exception],
) -> Any:
    """``json.loads(data)``, or ``error(sentence)`` raised for text that is not UTF-8 (or
    the other encodings ``json.loads`` detects), not JSON, or nested deeper than
    ``max_depth``. ``what`` starts the sentence ("the docker config", "manifest …"); the
    sentence names a position at most, never the content."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
        except (UnicodeDecodeError, LookupError):
            raise error(f"{what} is not UTF-8 text") from None
    else:
        text = data
    if json_depth_exceeds(text, max_depth):
        raise error(f"{what} nests JSON more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError):
        # ValueError: an integer literal longer than Python converts (4300 digits).
        raise error(f"{what} is not valid JSON") from None
