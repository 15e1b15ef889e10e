"""A user-space HTTP/1.1 reverse proxy that adds latency, caps bandwidth, counts traffic and
injects faults. ``tc netem`` is not available on the test machines; this stands in for it.

In process::

    proxy = NetProxy(upstream="127.0.0.1:5000", delay_ms=10)
    addr = proxy.start()             # "127.0.0.1:PORT", served from a background thread
    proxy.add_fault(method="POST", query="mount=", status=405)   # registry refusing mounts
    ...
    proxy.stats.requests, proxy.stats.bytes_up, proxy.stats.bytes_down, proxy.stats.log
    proxy.stop()

As a process (benchmarks)::

    python -m testkit.netproxy --listen 127.0.0.1:0 --upstream 127.0.0.1:5000 --delay-ms 10 \\
        --stats-file stats.json [--bandwidth-bps 12500000] [--fault '{"status": 429, ...}']

prints ``127.0.0.1:PORT`` on stdout once listening, rewrites the stats file every
``--stats-interval`` seconds and on SIGTERM/SIGINT (then exits 0).

Behaviour
---------
- Persistent connections on both sides: each client connection gets its own upstream
  connection, reused for every request on it (reopened if the upstream closed it).
- Bodies (``Content-Length``, ``chunked``, read-until-close responses) are streamed in
  64 KiB pieces, never buffered whole. Request bodies are pumped concurrently with reading the
  response, so ``Expect: 100-continue`` and early upstream answers work.
- Delay model: ``delay_ms`` is slept before forwarding each request upstream and again before
  sending each response back, so one request/response pays about 2 x ``delay_ms`` (one RTT).
  Injected fault responses pay the same two delays.
- Bandwidth: ``bandwidth_bps`` (bytes per second, per direction, shared by all connections)
  paces every write with a token bucket.
- It rewrites nothing but one thing: an absolute ``Location`` whose host is the upstream's
  ``host:port`` is rewritten to the proxy's own address (scheme ``http``). The ``Host`` header is
  forwarded unchanged, and distribution builds its ``Location`` URLs from ``Host``, so with
  distribution the rewrite rarely triggers; it matters for registries configured with a fixed
  ``http.host``. ``stats.locations_rewritten`` counts it.
- The upstream is plain HTTP (put the proxy in front of a plain-HTTP registry).

Faults (:class:`Fault`): match on method (exact), path (regex, ``re.search``) and query
(substring of the raw query string); apply to the first ``times`` matches (``times=None``: every
match), and with ``every=N`` only to one matching request in N (a share of the traffic).
Actions:

- ``respond``: answer ``status`` + ``headers`` + ``body`` without forwarding (the request body is
  drained), e.g. 429 with ``Retry-After: 1`` or an HTTP-date, 503, 405 for ``POST …?mount=``.
- ``reset``: drop the connection with a TCP RST without forwarding.
- ``reset_after_forward``: forward the request, then RST instead of relaying the response
  (the upstream did the work; the client never learns it).
- ``truncate``: forward, relay the response head and only ``truncate_after`` body bytes, then
  close the connection.
- ``stall``: read the request, send nothing for ``stall_seconds``, then close.
- ``corrupt``: forward and relay the whole response, with the body byte at offset
  ``corrupt_at`` inverted (length and headers unchanged: only a digest check can tell).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Fault", "NetProxy", "ProxyStats", "RequestRecord", "main"]

CHUNK = 64 * 1024
HEAD_LIMIT = 1024 * 1024

FaultAction = Literal["respond", "reset", "reset_after_forward", "truncate", "stall", "corrupt"]


@dataclass
class Fault:
    """A fault injection rule. See the module docstring."""

    action: FaultAction = "respond"
    method: str | None = None
    path: str | None = None
    query: str | None = None
    times: int | None = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncate_after: int = 0
    stall_seconds: float = 30.0
    corrupt_at: int = 0
    #: Apply to one matching request in ``every`` (the 1st, the 1+every-th, …): a share.
    every: int = 1
    hits: int = 0
    seen: int = 0

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path is not None and not re.search(self.path, path):
            return False
        if self.query is not None and self.query not in query:
            return False
        self.seen += 1
        return (self.seen - 1) % self.every == 0

    @classmethod
    def from_json(cls, text: str) -> Fault:
        data = json.loads(text)
        if "body" in data and isinstance(data["body"], str):
            data["body"] = data["body"].encode()
        return cls(**data)


@dataclass
class RequestRecord:
    """One request seen by the proxy."""

    id: int
    conn: int
    method: str
    path: str
    query: str
    status: int | None = None
    fault: str | None = None
    req_head_bytes: int = 0
    req_body_bytes: int = 0
    resp_head_bytes: int = 0
    resp_body_bytes: int = 0
    started: float = 0.0
    duration_ms: float = 0.0
    location_rewritten: bool = False


@dataclass
class ProxyStats:
    """Counters (a snapshot when read from :attr:`NetProxy.stats`)."""

    requests: int = 0
    bytes_up: int = 0  # client -> upstream, heads + bodies (what reached the proxy)
    bytes_down: int = 0  # upstream -> client, heads + bodies (what the proxy sent back)
    connections: int = 0  # client connections accepted
    upstream_connections: int = 0  # upstream connections opened
    faults_injected: int = 0
    locations_rewritten: int = 0
    log: list[RequestRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    def count(
        self, method: str | None = None, path: str | None = None, query: str | None = None
    ) -> int:
        """Requests matching method / path regex / query substring."""
        n = 0
        for r in self.log:
            if method and r.method != method:
                continue
            if path and not re.search(path, r.path):
                continue
            if query and query not in r.query:
                continue
            n += 1
        return n


class _Throttle:
    """A token bucket shared by every connection, per direction."""

    def __init__(self, bps: float) -> None:
        self.bps = bps
        self._next = 0.0

    async def consume(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + n / self.bps
        wait = self._next - now
        if wait > 0.0005:
            await asyncio.sleep(wait)


class _Closed(Exception):
    pass


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    start = lines[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return start, headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    low = name.lower()
    for k, v in headers:
        if k.lower() == low:
            return v
    return None


def _build_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    out = start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return out.encode("latin-1")


class NetProxy:
    """The proxy. ``start()`` serves it from a background thread and returns ``host:port``."""

    def __init__(
        self,
        upstream: str,
        *,
        delay_ms: float = 0.0,
        bandwidth_bps: float | None = None,
        listen: str = "127.0.0.1:0",
        faults: list[Fault] | None = None,
    ) -> None:
        self.upstream = upstream
        up_host, _, up_port = upstream.rpartition(":")
        self._up_host = up_host.strip("[]")
        self._up_port = int(up_port)
        self.delay_ms = delay_ms
        self.bandwidth_bps = bandwidth_bps
        lh, _, lp = listen.rpartition(":")
        self._listen_host = lh.strip("[]") or "127.0.0.1"
        self._listen_port = int(lp or 0)
        self.faults: list[Fault] = list(faults or [])
        self._stats = ProxyStats()
        self._lock = threading.Lock()
        self._ids = 0
        self._inflight: set[int] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._up_throttle = _Throttle(bandwidth_bps) if bandwidth_bps else None
        self._down_throttle = _Throttle(bandwidth_bps) if bandwidth_bps else None
        self.address: str = ""
        self.on_record: Callable[[RequestRecord], None] | None = None

    # --- public API -------------------------------------------------------------------------
    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters and request log.

        A request is logged when the proxy has finished it, which can be a moment after the
        client read the last response byte; so, read from another thread, this first waits
        (up to 2 s) until no request is in flight. Use :meth:`snapshot` to never wait."""
        if threading.current_thread() is not self._thread:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                with self._lock:
                    if not self._inflight:
                        break
                time.sleep(0.002)
        return self.snapshot()

    def snapshot(self) -> ProxyStats:
        """The counters and request log right now (requests in flight are not in the log)."""
        with self._lock:
            return replace(self._stats, log=list(self._stats.log))

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats()

    def add_fault(self, **kwargs: Any) -> Fault:
        """Add a :class:`Fault` (keyword arguments as its fields); returns it (``.hits``)."""
        if isinstance(kwargs.get("body"), str):
            kwargs["body"] = kwargs["body"].encode()
        f = Fault(**kwargs)
        with self._lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> str:
        """Start serving in a background thread; returns ``host:port``."""
        if self._thread is not None:
            return self.address
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except BaseException as e:
                error.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="netproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            raise error[0]
        return self.address

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> NetProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve(self) -> str:
        """Start listening on the running loop (for the CLI or an async caller)."""
        self._server = await asyncio.start_server(
            self._handle_client, self._listen_host, self._listen_port, limit=HEAD_LIMIT
        )
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.address

    async def _shutdown(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- internals --------------------------------------------------------------------------
    def _count(self, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._stats.bytes_up += up
            self._stats.bytes_down += down

    async def _delay(self) -> None:
        if self.delay_ms > 0:
            await asyncio.sleep(self.delay_ms / 1000.0)

    async def _send_down(self, w: asyncio.StreamWriter, data: bytes) -> None:
        if self._down_throttle is not None:
            await self._down_throttle.consume(len(data))
        w.write(data)
        await w.drain()
        self._count(down=len(data))

    async def _send_up(self, w: asyncio.StreamWriter, data: bytes) -> None:
        if self._up_throttle is not None:
            await self._up_throttle.consume(len(data))
        w.write(data)
        await w.drain()

    def _match_fault(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, path, query):
                    f.hits += 1
                    self._stats.faults_injected += 1
                    return f
        return None

    async def _handle_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(cw)
        with self._lock:
            self._stats.connections += 1
            conn_id = self._stats.connections
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await cr.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self._count(up=len(head))
                keep, up = await self._one_request(conn_id, head, cr, cw, up)
                if not keep:
                    return
        except (_Closed, ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            if self._closing:
                return  # shutting down: end quietly
            raise
        finally:
            if up is not None:
                up[1].transport.abort()
            with contextlib.suppress(Exception):
                cw.close()
            self._writers.discard(cw)
            self._tasks.discard(task)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection(self._up_host, self._up_port, limit=HEAD_LIMIT)
        with self._lock:
            self._stats.upstream_connections += 1
        return r, w

    def _record(self, rec: RequestRecord) -> None:
        """Log ``rec`` once (later calls are no-ops); it stops counting as in flight."""
        with self._lock:
            if rec.id not in self._inflight:
                return
            self._inflight.discard(rec.id)
            rec.duration_ms = (time.monotonic() - rec.started) * 1000.0
            self._stats.log.append(rec)
        if self.on_record is not None:
            self.on_record(rec)

    async def _one_request(
        self,
        conn_id: int,
        head: bytes,
        cr: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        start, headers = _parse_head(head)
        method, target, version = [*start.split(" ", 2), "", ""][:3]
        parts = urlsplit(target)
        with self._lock:
            self._ids += 1
            self._stats.requests += 1
            rid = self._ids
        rec = RequestRecord(
            rid,
            conn_id,
            method,
            parts.path,
            parts.query,
            req_head_bytes=len(head),
            started=time.monotonic(),
        )
        with self._lock:
            self._inflight.add(rid)
        try:
            return await self._exchange(rec, version, headers, head, cr, cw, up)
        finally:
            self._record(rec)

    async def _exchange(
        self,
        rec: RequestRecord,
        version: str,
        headers: list[tuple[str, str]],
        head: bytes,
        cr: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        method = rec.method
        req_framing = _request_framing(headers)
        client_close = (
            _get(headers, "Connection") or ""
        ).lower() == "close" or version == "HTTP/1.0"
        fault = self._match_fault(method, rec.path, rec.query)
        if fault is not None:
            rec.fault = fault.action
            if fault.action == "reset":
                self._record(rec)
                _rst(cw)
                raise _Closed
            if fault.action == "stall":
                self._record(rec)
                await asyncio.sleep(fault.stall_seconds)
                _rst(cw)
                raise _Closed
            if fault.action == "respond":
                rec.req_body_bytes = await _pump_body(cr, None, req_framing, self._count_up_body)
                await self._delay()
                await self._delay()
                body = fault.body
                hdrs = [(k, v) for k, v in fault.headers.items() if k.lower() != "content-length"]
                hdrs.append(("Content-Length", str(len(body))))
                if not any(k.lower() == "content-type" for k, _ in hdrs) and body:
                    hdrs.append(("Content-Type", "application/json"))
                reason = _REASONS.get(fault.status, "Injected")
                out = _build_head(f"HTTP/1.1 {fault.status} {reason}", hdrs)
                rec.status = fault.status
                rec.resp_head_bytes = len(out)
                rec.resp_body_bytes = len(body) if method != "HEAD" else 0
                await self._send_down(cw, out + (body if method != "HEAD" else b""))
                self._record(rec)
                return not client_close, up

        # forward
        await self._delay()
        if up is None or up[1].is_closing() or up[0].at_eof():
            if up is not None:
                up[1].transport.abort()
            up = await self._open_upstream()
        ur, uw = up
        await self._send_up(uw, head)
        pump = asyncio.create_task(
            _pump_body(cr, uw, req_framing, self._body_counter(rec), self._up_throttle)
        )

        def client_gone(done: asyncio.Task[int]) -> None:
            # The client left mid-body: drop the upstream connection too, as a TCP proxy
            # would, so the server sees the abort now rather than when the proxy stops.
            if not done.cancelled() and done.exception() is not None:
                uw.transport.abort()

        pump.add_done_callback(client_gone)
        try:
            rhead = await ur.readuntil(b"\r\n\r\n")
            while True:
                rstart, rheaders = _parse_head(rhead)
                status = int(rstart.split(" ", 2)[1])
                if 100 <= status < 200 and status != 101:
                    await self._send_down(cw, rhead)
                    rhead = await ur.readuntil(b"\r\n\r\n")
                    continue
                break
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            pump.cancel()
            rec.fault = rec.fault or "upstream-closed"
            self._record(rec)
            uw.transport.abort()
            _rst(cw)
            raise _Closed from e
        rec.status = status
        if fault is not None and fault.action == "reset_after_forward":
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(pump, 30)
            self._record(rec)
            uw.transport.abort()
            _rst(cw)
            raise _Closed
        rheaders, rewritten = self._rewrite_location(rheaders)
        rec.location_rewritten = rewritten
        rhead = _build_head(rstart, rheaders) if rewritten else rhead
        await self._delay()
        await self._send_down(cw, rhead)
        rec.resp_head_bytes = len(rhead)
        resp_framing = _response_framing(method, status, rheaders)
        limit = fault.truncate_after if fault is not None and fault.action == "truncate" else None
        flip = fault.corrupt_at if fault is not None and fault.action == "corrupt" else None
        try:
            rec.resp_body_bytes = await self._relay_response_body(ur, cw, resp_framing, limit, flip)
        except _Truncated:
            pump.cancel()
            rec.resp_body_bytes = limit or 0
            self._record(rec)
            uw.transport.abort()
            _rst(cw)
            raise _Closed from None
        # the request body must be complete before the connection can be reused
        try:
            rec.req_body_bytes = await asyncio.wait_for(pump, 60)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            self._record(rec)
            uw.transport.abort()
            raise _Closed from None
        self._record(rec)
        upstream_close = (
            _get(rheaders, "Connection") or ""
        ).lower() == "close" or resp_framing == "eof"
        if upstream_close:
            uw.transport.abort()
            return False, None
        return not client_close, up

    def _body_counter(self, rec: RequestRecord) -> Callable[[int], None]:
        """Counts a forwarded request body as it arrives, so an interrupted request's
        record still says how much of its body the client sent."""

        def count(n: int) -> None:
            rec.req_body_bytes += n
            self._count_up_body(n)

        return count

    def _count_up_body(self, n: int) -> None:
        self._count(up=n)

    def _rewrite_location(
        self, headers: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], bool]:
        out: list[tuple[str, str]] = []
        changed = False
        for k, v in headers:
            if k.lower() == "location" and "://" in v:
                p = urlsplit(v)
                if p.netloc == self.upstream:
                    v = urlunsplit(("http", self.address, p.path, p.query, p.fragment))
                    changed = True
            out.append((k, v))
        if changed:
            with self._lock:
                self._stats.locations_rewritten += 1
        return out, changed

    async def _relay_response_body(
        self,
        ur: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        framing: int | str,
        limit: int | None,
        flip: int | None = None,
    ) -> int:
        sent = 0

        async def out(data: bytes) -> None:
            nonlocal sent
            if flip is not None and sent <= flip < sent + len(data):
                i = flip - sent
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            if limit is not None and sent + len(data) > limit:
                part = data[: max(0, limit - sent)]
                if part:
                    await self._send_down(cw, part)
                sent += len(part)
                raise _Truncated
            await self._send_down(cw, data)
            sent += len(data)

        if limit is not None and limit <= 0 and framing not in (0,):
            raise _Truncated
        if isinstance(framing, int):
            left = framing
            while left > 0:
                data = await ur.read(min(CHUNK, left))
                if not data:
                    raise _Closed
                left -= len(data)
                await out(data)
        elif framing == "chunked":
            await _relay_chunked(ur, out)
        elif framing == "eof":
            while True:
                data = await ur.read(CHUNK)
                if not data:
                    break
                await out(data)
        return sent


class _Truncated(Exception):
    pass


_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _request_framing(headers: list[tuple[str, str]]) -> int | str:
    te = (_get(headers, "Transfer-Encoding") or "").lower()
    if "chunked" in te:
        return "chunked"
    cl = _get(headers, "Content-Length")
    return int(cl) if cl else 0


def _response_framing(method: str, status: int, headers: list[tuple[str, str]]) -> int | str:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    te = (_get(headers, "Transfer-Encoding") or "").lower()
    if "chunked" in te:
        return "chunked"
    cl = _get(headers, "Content-Length")
    if cl is not None:
        return int(cl)
    return "eof"


async def _relay_chunked(r: asyncio.StreamReader, out: Callable[[bytes], Any]) -> int:
    """Relay a chunked body verbatim (sizes, extensions, trailers). Returns payload bytes."""
    payload = 0
    while True:
        line = await r.readuntil(b"\r\n")
        await out(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, ending with an empty line
                t = await r.readuntil(b"\r\n")
                await out(t)
                if t == b"\r\n":
                    return payload
        left = size + 2  # data + CRLF
        while left > 0:
            data = await r.readexactly(min(CHUNK, left))
            left -= len(data)
            await out(data)
        payload += size


async def _pump_body(
    r: asyncio.StreamReader,
    w: asyncio.StreamWriter | None,
    framing: int | str,
    count: Callable[[int], None],
    throttle: _Throttle | None = None,
) -> int:
    """Stream a request body to ``w`` (or drain it when ``w`` is None). Returns its size."""
    total = 0

    async def out(data: bytes) -> None:
        nonlocal total
        total += len(data)
        count(len(data))
        if w is not None:
            if throttle is not None:
                await throttle.consume(len(data))
            w.write(data)
            await w.drain()

    if framing == "chunked":
        await _relay_chunked(r, out)
    elif isinstance(framing, int):
        left = framing
        while left > 0:
            data = await r.read(min(CHUNK, left))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            await out(data)
    return total


# --- CLI -----------------------------------------------------------------------------------


def _write_stats(proxy: NetProxy, path: str) -> None:
    data = proxy.snapshot().to_json()
    data["upstream"] = proxy.upstream
    data["listen"] = proxy.address
    data["delay_ms"] = proxy.delay_ms
    data["bandwidth_bps"] = proxy.bandwidth_bps
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(
            data, f, default=lambda o: o.decode("latin-1") if isinstance(o, bytes) else str(o)
        )
    os.replace(tmp, path)


async def _amain(args: argparse.Namespace) -> int:
    faults = [Fault.from_json(f) for f in args.fault or []]
    proxy = NetProxy(
        args.upstream,
        delay_ms=args.delay_ms,
        bandwidth_bps=args.bandwidth_bps,
        listen=args.listen,
        faults=faults,
    )
    addr = await proxy.serve()
    print(addr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.stats_interval)
        if args.stats_file:
            _write_stats(proxy, args.stats_file)
    await proxy._shutdown()
    if args.stats_file:
        _write_stats(proxy, args.stats_file)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--upstream", required=True, help="HOST:PORT of a plain-HTTP server")
    p.add_argument("--delay-ms", type=float, default=0.0, help="per direction")
    p.add_argument("--bandwidth-bps", type=float, default=None, help="bytes/s per direction")
    p.add_argument("--stats-file", default=None)
    p.add_argument("--stats-interval", type=float, default=1.0)
    p.add_argument("--fault", action="append", help="a Fault as JSON, repeatable")
    args = p.parse_args(argv)
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
