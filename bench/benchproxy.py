"""A byte-transparent TCP relay for benchmarks: per-direction delay plus passive HTTP/1.1
accounting (one record per request: method, path, status, body bytes, start/end times).

Run as its own process so its CPU never lands on the measured client::

    python bench/benchproxy.py --upstream 127.0.0.1:5000 --delay-ms 10

It prints ``READY <port>`` on stdout, then answers commands on stdin, one per line:

- ``dump``  — prints one JSON line ``{"records": [...], "opaque": N}`` and clears the records;
- ``quit``  — exits.

Delay model (what a 20 ms RTT link does): every byte is held ``delay`` seconds in each
direction (client→upstream and upstream→client) without limiting throughput, and a new
connection waits one RTT (2 × delay) before its first byte is forwarded, as a TCP handshake
would cost. ``--delay-ms 0`` relays without queues.

Accounting is passive: the relay never rewrites bytes (the ``Host`` header stays the proxy's,
so registries build ``Location`` URLs that point back through the proxy). A request's
``start`` is when its first byte reached the proxy from the client; its ``end`` is when the
last byte of its final response was handed to the client. Connections that do not speak
HTTP/1.x (a TLS ClientHello from a client probing HTTPS) are relayed and counted as
``opaque``.

This is the benchmark's own helper; ``bench/netproxy.py`` (fault injection, bandwidth caps)
is a separate, general tool.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

CHUNK = 256 * 1024
QUEUE_DEPTH = 64


@dataclass
class Record:
    conn: int
    method: str
    path: str
    status: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    start: float = 0.0
    end: float = 0.0


@dataclass
class State:
    records: list[Record] = field(default_factory=list)
    opaque: int = 0
    next_conn: int = 0


class _Parser:
    """Incremental HTTP/1.1 message framing for one direction of one connection."""

    def __init__(self) -> None:
        self.buf = b""
        self.mode = "head"  # head | body | chunk_size | chunk_data | chunk_crlf | trailer | eof
        self.left = 0
        self.body = 0
        self.broken = False

    def _head(self) -> tuple[str, dict[str, str]] | None:
        idx = self.buf.find(b"\r\n\r\n")
        if idx < 0:
            if len(self.buf) > 65536 or (self.buf and not self.buf[:1].isalpha()):
                self.broken = True
            return None
        raw = self.buf[:idx].decode("latin-1")
        self.buf = self.buf[idx + 4 :]
        first, *lines = raw.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return first, headers

    def _start_body(self, headers: dict[str, str], no_body: bool, to_eof: bool) -> None:
        self.body = 0
        if no_body:
            self.mode, self.left = "body", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode = "chunk_size"
        elif "content-length" in headers:
            self.mode, self.left = "body", int(headers["content-length"])
        elif to_eof:
            self.mode = "eof"
        else:
            self.mode, self.left = "body", 0

    def _body(self) -> bool:
        """Consume body bytes from buf; True when the message is complete."""
        while True:
            if self.mode == "body":
                n = min(self.left, len(self.buf))
                self.left -= n
                self.body += n
                self.buf = self.buf[n:]
                if self.left == 0:
                    self.mode = "head"
                    return True
                return False
            if self.mode == "eof":
                self.body += len(self.buf)
                self.buf = b""
                return False
            if self.mode == "chunk_size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return False
                size = int(self.buf[:i].split(b";")[0].strip() or b"0", 16)
                self.buf = self.buf[i + 2 :]
                if size == 0:
                    self.mode = "trailer"
                else:
                    self.mode, self.left = "chunk_data", size
                continue
            if self.mode == "chunk_data":
                n = min(self.left, len(self.buf))
                self.left -= n
                self.body += n
                self.buf = self.buf[n:]
                if self.left:
                    return False
                self.mode, self.left = "chunk_crlf", 2
                continue
            if self.mode == "chunk_crlf":
                n = min(self.left, len(self.buf))
                self.left -= n
                self.buf = self.buf[n:]
                if self.left:
                    return False
                self.mode = "chunk_size"
                continue
            if self.mode == "trailer":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return False
                line = self.buf[:i]
                self.buf = self.buf[i + 2 :]
                if not line:
                    self.mode = "head"
                    return True
                continue
            return False


class Connection:
    def __init__(self, state: State, conn_id: int) -> None:
        self.state = state
        self.id = conn_id
        self.req = _Parser()
        self.resp = _Parser()
        self.pending: collections.deque[Record] = collections.deque()
        self.current_req: Record | None = None
        self.current_resp: Record | None = None
        self.opaque = False

    # request direction: called when bytes arrive from the client
    def on_request_bytes(self, data: bytes, now: float) -> None:
        if self.opaque:
            return
        p = self.req
        p.buf += data
        while p.buf and not self.opaque:
            if p.mode == "head":
                started = self.current_req is None
                if started:
                    self.current_req = Record(self.id, "", "", start=now)
                head = p._head()
                if head is None:
                    if p.broken:
                        self._go_opaque()
                    return
                first, headers = head
                parts = first.split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    self._go_opaque()
                    return
                rec = self.current_req
                assert rec is not None
                rec.method, rec.path = parts[0], parts[1]
                self.pending.append(rec)
                p._start_body(headers, no_body=False, to_eof=False)
                if p.mode == "body" and p.left == 0:
                    p.mode = "head"
                    self.current_req = None
                    continue
            done = p._body()
            rec = self.current_req
            if rec is not None:
                rec.req_bytes = p.body
            if done:
                self.current_req = None
            else:
                return

    # response direction: called when bytes are handed to the client
    def on_response_bytes(self, data: bytes, now: float) -> None:
        if self.opaque:
            return
        p = self.resp
        p.buf += data
        while p.buf:
            if p.mode == "head":
                head = p._head()
                if head is None:
                    if p.broken:
                        self._go_opaque()
                    return
                first, headers = head
                parts = first.split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                    self._go_opaque()
                    return
                status = int(parts[1])
                if 100 <= status < 200:
                    continue  # interim (100 Continue): no body, not final
                rec = self.pending.popleft() if self.pending else Record(self.id, "?", "?")
                rec.status = status
                self.current_resp = rec
                no_body = rec.method == "HEAD" or status in (204, 304)
                p._start_body(headers, no_body=no_body, to_eof=True)
            done = p._body()
            rec = self.current_resp
            if rec is not None:
                rec.resp_bytes = p.body
                if done:
                    rec.end = now
                    self.state.records.append(rec)
                    self.current_resp = None
            if not done:
                return

    def on_close(self, now: float) -> None:
        rec = self.current_resp
        if rec is not None and self.resp.mode == "eof":
            rec.end = now
            self.state.records.append(rec)
            self.current_resp = None

    def _go_opaque(self) -> None:
        if not self.opaque:
            self.opaque = True
            self.state.opaque += 1
            self.pending.clear()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    on_arrive: Callable[[bytes, float], None] | None,
    on_deliver: Callable[[bytes, float], None] | None,
    initial_hold: float = 0.0,
) -> None:
    """Relay reader → writer, holding each chunk ``delay`` seconds after its arrival."""
    try:
        if delay <= 0 and initial_hold <= 0:
            while data := await reader.read(CHUNK):
                now = time.monotonic()
                if on_arrive:
                    on_arrive(data, now)
                writer.write(data)
                await writer.drain()
                if on_deliver:
                    on_deliver(data, time.monotonic())
        else:
            q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_DEPTH)
            opened = time.monotonic()

            async def pump() -> None:
                while data := await reader.read(CHUNK):
                    now = time.monotonic()
                    if on_arrive:
                        on_arrive(data, now)
                    await q.put((max(now + delay, opened + initial_hold), data))
                await q.put((0.0, b""))

            task = asyncio.create_task(pump())
            try:
                while True:
                    due, data = await q.get()
                    if not data:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
                    if on_deliver:
                        on_deliver(data, time.monotonic())
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _handle(
    state: State,
    upstream: tuple[str, int],
    delay: float,
    creader: asyncio.StreamReader,
    cwriter: asyncio.StreamWriter,
) -> None:
    state.next_conn += 1
    conn = Connection(state, state.next_conn)
    try:
        ureader, uwriter = await asyncio.open_connection(*upstream, limit=CHUNK * 4)
    except OSError:
        cwriter.close()
        return
    for w in (cwriter, uwriter):
        sock = w.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hold = 2 * delay  # the TCP handshake costs one RTT before the first byte goes out
    up = asyncio.create_task(
        _pipe(creader, uwriter, delay, conn.on_request_bytes, None, initial_hold=hold)
    )
    down = asyncio.create_task(_pipe(ureader, cwriter, delay, None, conn.on_response_bytes))
    await asyncio.gather(up, down, return_exceptions=True)
    conn.on_close(time.monotonic())
    for w in (cwriter, uwriter):
        with contextlib.suppress(Exception):
            w.close()


async def _control(state: State, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = line.decode().strip()
        if cmd == "dump":
            out = {"records": [asdict(r) for r in state.records], "opaque": state.opaque}
            state.records = []
            state.opaque = 0
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
        elif cmd == "quit":
            break
    stop.set()


async def main_async(upstream: str, delay_ms: float, port: int) -> None:
    host, _, p = upstream.rpartition(":")
    state = State()
    delay = delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: _handle(state, (host, int(p)), delay, r, w),
        "127.0.0.1",
        port,
        limit=CHUNK * 4,
        backlog=256,
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    ctl = asyncio.create_task(_control(state, stop))
    async with server:
        await stop.wait()
    ctl.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the registry")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction")
    ap.add_argument("--port", type=int, default=0, help="listen port (0 = any)")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args.upstream, args.delay_ms, args.port))


if __name__ == "__main__":
    main()
