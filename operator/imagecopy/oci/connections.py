"""httpcore's connection pool as an httpx transport, tuned for registry traffic; the only
module that touches httpcore.

Why not `httpx.AsyncHTTPTransport`: profiling same-registry copies (bench/README.md) showed
about 40% of the client's CPU in the pool asking each idle connection "is the socket
readable?" through anyio's extra-attribute machinery (a dict rebuilt per call), and blob
streams paying one event-loop round and one h11 event per 64 KiB read. This module keeps
httpcore (pooling, HTTP/1.1 and HTTP/2) and replaces the network backend with its own sockets
(``_SocketStream``, TLS in ``_TLSStream``): the cross-registry profile showed anyio's cancel
scope per read and write, and asyncio 3.11's transport copying the unsent rest of every 1 MiB
write into its own buffer, as a large share of the CPU per GiB. Reads ask the socket for up to
1 MiB, writes send the caller's buffer until it is all out, the loop watches a socket only
while a read or write must wait, and the liveness check uses one cached poller per socket. h11's
receive buffer hands a body read back as the bytes object the socket returned
(``_BodyBuffer``, in every HTTP/1.1 connection the pool makes) instead of four copies of it.
It also replaces the pool's request assignment, which httpcore makes quadratic in the pool's
size (``_Pool``). The
verified TLS context is built on first use, so plain-HTTP runs never load a CA bundle.

The backend is also where the network guard (``oci.netguard``) sits: ``connect_tcp`` resolves
the host once, has every address vetted, and connects to a vetted address. httpcore still
sends the original name in the Host header and uses it for TLS SNI and certificate checks,
because only the socket's address changes. A name that does not resolve fails the connection
(``httpx.ConnectError``) without a connection attempt. TLS verification is chosen per
``(host, port)``: a separate httpcore pool serves the hosts whose certificates are not
verified, so no glob or mount pattern can widen that set.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import functools
import select
import socket
import ssl
import struct
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import anyio
import httpcore
import httpx
from h11._receivebuffer import ReceiveBuffer

from .netguard import NetworkGuard, ResolutionFailed

__all__ = ["READ_BYTES", "PoolTransport"]

#: Bytes asked of the socket per read (httpcore asks for 64 KiB).
READ_BYTES = 1024 * 1024

_T = TypeVar("_T")


class _Readable:
    """Whether an idle keep-alive connection has something to read: then the server closed
    it (or spoke out of turn) and the pool must not reuse it. The pool asks this of every idle
    connection whenever a request starts or ends, so the poller is made once per socket."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._poller: select.poll | None = None

    def __call__(self) -> bool:
        sock = self._sock
        if sock is None or sock.fileno() < 0:
            return True
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN)
        return bool(self._poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    """Another backend's stream (a test's, or anyio's for Unix sockets) with the cached
    liveness check and 1 MiB reads."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")
        self._readable = _Readable(self._socket)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._readable()
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


#: Linux's ioctl for the bytes a socket has not yet had acknowledged (``SIOCOUTQ``).
_OUTQ = getattr(termios, "TIOCOUTQ", None)


def _drop_unsent(sock: socket.socket) -> None:
    """Have ``close`` reset a connection that still has request bytes queued in the kernel.

    Only an abandoned request leaves bytes there (an upload cancelled or failed mid-body:
    once a response arrives, the request it answers was acknowledged). Nobody will read an
    answer to them, yet a plain close would still send them, and on a slow link the clean-up
    that follows (the session's ``DELETE``, on another connection) would queue behind
    megabytes of a dead upload. Where the kernel cannot tell (not Linux) nothing changes."""
    if _OUTQ is None:
        return
    try:
        (unsent,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))
        if unsent > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return


def _wake(waiter: asyncio.Future[bool], ready: bool) -> None:
    if not waiter.done():
        waiter.set_result(ready)


class _SocketStream(httpcore.AsyncNetworkStream):
    """A connected non-blocking TCP socket, driven by the event loop's readiness callbacks.

    A read is one ``recv`` of up to ``READ_BYTES`` (asyncio's transports read 256 KiB and
    queue it); a write sends the caller's buffer itself, through a ``memoryview``, until it
    is all in the kernel (asyncio 3.11's transport copies every unsent rest into its own
    buffer). The loop is asked to watch the socket only while a read or write must wait, and
    a timeout is one timer on that wait: no task, no cancel scope per call.
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._readable = _Readable(sock)
        self._waiters: list[asyncio.Future[bool]] = []

    async def _wait(self, writing: bool, timeout: float | None) -> bool:
        """Wait until the socket can be read (written); False when ``timeout`` ran out."""
        loop = self._loop
        waiter: asyncio.Future[bool] = loop.create_future()
        if writing:
            loop.add_writer(self._fd, _wake, waiter, True)
        else:
            loop.add_reader(self._fd, _wake, waiter, True)
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter, False)
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            self._waiters.remove(waiter)
            if timer is not None:
                timer.cancel()
            if self._fd >= 0:
                if writing:
                    loop.remove_writer(self._fd)
                else:
                    loop.remove_reader(self._fd)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        size = max(max_bytes, READ_BYTES)
        while True:
            try:
                return self._sock.recv(size)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
            if not await self._wait(False, timeout):
                raise httpcore.ReadTimeout("timed out reading from the registry")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        deadline = None if timeout is None else self._loop.time() + timeout
        view = memoryview(buffer)
        while True:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc
            if sent == len(view):
                return
            view = view[sent:]
            left = None if deadline is None else max(deadline - self._loop.time(), 0.0)
            if not await self._wait(True, left):
                raise httpcore.WriteTimeout("timed out writing to the registry")

    async def aclose(self) -> None:
        if self._fd >= 0:
            # A read or write still waiting (another task's) finds the socket closed.
            fd, self._fd = self._fd, -1
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
            for waiter in self._waiters:
                _wake(waiter, True)
            _drop_unsent(self._sock)
        self._sock.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await _TLSStream.wrap(self, ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._readable()
        if info == "socket":
            return self._sock
        try:
            if info == "client_addr":
                return self._sock.getsockname()
            if info == "server_addr":
                return self._sock.getpeername()
        except OSError:
            return None
        return None


class _TLSStream(httpcore.AsyncNetworkStream):
    """TLS over another stream: an ``ssl.SSLObject`` between two memory buffers, the records
    carried by the stream underneath (so TLS inside TLS works too). A close does not wait for
    the peer's ``close_notify`` (as httpcore's own backends: an HTTP/1.1 body has its own
    length), and an end of stream without one reads as the end."""

    def __init__(
        self,
        raw: httpcore.AsyncNetworkStream,
        ssl_object: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self._raw = raw
        self._ssl = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing

    @classmethod
    async def wrap(
        cls,
        raw: httpcore.AsyncNetworkStream,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float | None,
    ) -> _TLSStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
        stream = cls(raw, ssl_object, incoming, outgoing)
        try:
            await stream._run(ssl_object.do_handshake, timeout)
        except (httpcore.ReadTimeout, httpcore.WriteTimeout) as exc:
            await raw.aclose()
            raise httpcore.ConnectTimeout(f"TLS handshake: {exc}") from exc
        except (httpcore.NetworkError, ssl.SSLError) as exc:
            await raw.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            await raw.aclose()
            raise
        return stream

    async def _flush(self, timeout: float | None) -> None:
        if self._outgoing.pending:
            await self._raw.write(self._outgoing.read(), timeout)

    async def _run(self, operation: Callable[[], _T], timeout: float | None) -> _T:
        """Run ``operation`` on the TLS object, carrying records both ways until it is done."""
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                await self._flush(timeout)
                data = await self._raw.read(READ_BYTES, timeout)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            await self._flush(timeout)
            return result

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        size = max(max_bytes, READ_BYTES)
        try:
            first = await self._run(functools.partial(self._ssl.read, size), timeout)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        # A record holds at most 16 KiB: take whatever else is already decryptable too.
        parts = [first]
        held = len(first)
        while held < size and (self._ssl.pending() or self._incoming.pending):
            try:
                more = self._ssl.read(size - held)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            except ssl.SSLError as exc:
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
            if not more:
                break
            parts.append(more)
            held += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        view = memoryview(buffer)
        while view:
            try:
                written = await self._run(functools.partial(self._ssl.write, view), timeout)
            except ssl.SSLError as exc:
                raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc
            view = view[written:]

    async def aclose(self) -> None:
        await self._raw.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await _TLSStream.wrap(self, ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._ssl
        if info == "is_readable":
            return bool(self._ssl.pending()) or self._raw.get_extra_info("is_readable")
        return self._raw.get_extra_info(info)


async def _connect(
    address: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
    socket_options: Iterable[Any] | None,
) -> _SocketStream:
    """A TCP connection to ``address`` (an IP address, already vetted) as a ``_SocketStream``."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        if local_address:
            sock.bind((local_address, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (address, port))
    except TimeoutError:
        sock.close()
        raise httpcore.ConnectTimeout(f"connecting to {address}:{port} timed out") from None
    except OSError as exc:
        sock.close()
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
    except BaseException:
        sock.close()
        raise
    return _SocketStream(sock, loop)


class _BodyBuffer(ReceiveBuffer):
    """h11's receive buffer, except that a network read arriving while the buffer is empty
    is kept as the bytes object it is, and a body read that takes all of it gets that very
    object back: h11 otherwise copies each read into its buffer, out of it twice, and
    httpcore once more (``bytes(event.data)``), four copies of every blob byte downloaded.
    Anything else (status line, headers, a read that only partly belongs to the body) first
    moves the kept read into the buffer and is h11's own code."""

    def __init__(self) -> None:
        super().__init__()
        self._whole: bytes | None = None

    def _settle(self) -> None:
        if self._whole is not None:
            whole, self._whole = self._whole, None
            super().__iadd__(whole)

    def __iadd__(self, byteslike: bytes | bytearray) -> _BodyBuffer:
        if self._whole is None and not self._data and type(byteslike) is bytes:
            self._whole = byteslike
        else:
            self._settle()
            super().__iadd__(byteslike)
        return self

    def __len__(self) -> int:
        return len(self._data) + (0 if self._whole is None else len(self._whole))

    def __bytes__(self) -> bytes:
        self._settle()
        return super().__bytes__()

    def maybe_extract_at_most(self, count: int) -> bytearray | None:
        whole = self._whole
        if whole is not None and count >= len(whole):
            self._whole = None
            # h11 and httpcore only read the body's bytes (``Data.data``, ``bytes()`` of it).
            return cast(bytearray, whole)
        self._settle()
        return super().maybe_extract_at_most(count)

    def maybe_extract_next_line(self) -> bytearray | None:
        self._settle()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self) -> list[bytearray] | None:
        self._settle()
        return super().maybe_extract_lines()

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        self._settle()
        return super().is_next_line_obviously_invalid_request_line()


class _HTTP11Connection(httpcore.AsyncHTTP11Connection):
    """httpcore's HTTP/1.1 connection with ``_BodyBuffer`` as h11's receive buffer."""

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.AsyncNetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        super().__init__(origin, stream, keepalive_expiry)
        state = self._h11_state
        if type(state._receive_buffer) is ReceiveBuffer and not state._receive_buffer:
            state._receive_buffer = _BodyBuffer()


class _Connection(httpcore.AsyncHTTPConnection):
    """httpcore's connection to one origin, speaking HTTP/1.1 through ``_HTTP11Connection``.

    httpcore makes the protocol's connection on the first request, after connecting; this
    makes it the same way (HTTP/2 when ALPN chose it or only HTTP/2 is allowed), then lets
    httpcore carry on with a connection already there.
    """

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if self._connection is None and self.can_handle_request(request.url.origin):
            try:
                async with self._request_lock:
                    if self._connection is None:
                        stream = await self._connect(request)
                        ssl_object = stream.get_extra_info("ssl_object")
                        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
                        if alpn == "h2" or (self._http2 and not self._http1):
                            self._connection = httpcore.AsyncHTTP2Connection(
                                origin=self._origin,
                                stream=stream,
                                keepalive_expiry=self._keepalive_expiry,
                            )
                        else:
                            self._connection = _HTTP11Connection(
                                self._origin, stream, self._keepalive_expiry
                            )
            except BaseException:
                self._connect_failed = True
                raise
        return await super().handle_async_request(request)


class _Pool(httpcore.AsyncConnectionPool):
    """httpcore's connection pool with a linear assignment pass.

    httpcore (1.0) re-runs ``_assign_requests_to_connections`` whenever a request starts or
    ends, and in it builds, for every idle connection, a list of all connections (to compare
    with the keep-alive limit) and, for every queued request, a list of the available ones:
    quadratic in the pool's size. With the 48 connections a wave of mounts keeps busy that was
    most of a same-registry copy's CPU. This pass keeps httpcore's rules — drop closed
    connections, close expired ones, give a queued request the first available connection to
    its origin, else a new connection while there is room, else replace an idle one — in one
    walk per queued request that stops at the first fit; an idle connection is checked for
    expiry (keep-alive time, or closed by the server) only when the walk reaches it. The
    keep-alive limit is the connection limit here (``PoolTransport``), so it never closes a
    connection on its own.

    An HTTP/1.1 connection handed to a request stays idle, so "available", until that request
    starts on it; httpcore hands it to every request queued meanwhile, and all but one of them
    find it taken (``ConnectionNotAvailable``) and go round the pool again: about four extra
    passes per request in a wave of mounts. Here a connection held by a request is not
    offered to another (HTTP/1.1; an HTTP/2 connection takes many). With no request queued
    there is nothing to assign; closed connections are dropped as a walk reaches them.
    """

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        queued = [request for request in self._requests if request.is_queued()]
        if not queued:
            return closing
        live = self._connections
        held: set[httpcore.AsyncConnectionInterface] = set()
        if not self._http2:
            held = {r.connection for r in self._requests if r.connection is not None}
        for pool_request in queued:
            origin = pool_request.request.url.origin
            idle: httpcore.AsyncConnectionInterface | None = None
            chosen: httpcore.AsyncConnectionInterface | None = None
            for connection in list(live):
                if connection.is_closed():
                    # Dropped when the walk reaches it: a walk that finds no fit has seen
                    # every connection, so the count below never includes a closed one.
                    live.remove(connection)
                    continue
                if connection in held:
                    continue
                if connection.is_idle() and connection.has_expired():
                    # Asked only of a connection about to be reused or replaced, not of
                    # every idle one on every request (a poll each).
                    live.remove(connection)
                    closing.append(connection)
                    continue
                if connection.can_handle_request(origin) and connection.is_available():
                    chosen = connection
                    break
                if idle is None and connection.is_idle():
                    idle = connection
            if chosen is None:
                if len(live) >= self._max_connections:
                    if idle is None:
                        continue  # stays queued until a connection frees up
                    live.remove(idle)
                    closing.append(idle)
                chosen = self.create_connection(origin)
                live.append(chosen)
            pool_request.assign_to_connection(chosen)
            if not self._http2:
                held.add(chosen)
        return closing

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return _Connection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=self._http1,
            http2=self._http2,
            retries=self._retries,
            local_address=self._local_address,
            uds=self._uds,
            network_backend=self._network_backend,
            socket_options=self._socket_options,
        )


class _Backend(httpcore.AsyncNetworkBackend):
    """The network behind the guard: connects only to vetted addresses, over our own
    sockets (``_SocketStream``, ``_TLSStream``).

    ``inner`` is replaced by tests that must see which addresses would be connected to
    without any packet leaving the host.
    """

    def __init__(
        self, guard: NetworkGuard, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._guard = guard
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with anyio.fail_after(timeout):
                addresses = await self._guard.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except ResolutionFailed as exc:
            raise httpcore.ConnectError(str(exc)) from None
        failure: Exception | None = None
        # In the resolver's order (RFC 6724 for getaddrinfo), one at a time, within the
        # connect timeout as a whole.
        for address in addresses:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                if self._inner is None:
                    return await _connect(address, port, left, local_address, socket_options)
                stream = await self._inner.connect_tcp(
                    address, port, left, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _Stream(stream)
        assert failure is not None  # resolve() never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - registries are reached over TCP
        inner = self._inner or httpcore.AnyIOBackend()
        return _Stream(await inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        if self._inner is None:
            await asyncio.sleep(seconds)
        else:
            await self._inner.sleep(seconds)


@contextmanager
def _mapped_errors() -> Any:
    """Raise httpx's exception for httpcore's (same names), so retry and error mapping work."""
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TimeoutException)(str(exc)) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TransportError)(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for part in self._inner:
                yield part

    async def aclose(self) -> None:
        with _mapped_errors():
            await self._inner.aclose()


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Mode(enum.Enum):
    """How a connection speaks: one httpcore pool per mode."""

    PLAIN = "plain"
    VERIFIED = "verified TLS"
    UNVERIFIED = "unverified TLS"


class PoolTransport(httpx.AsyncBaseTransport):
    """An httpcore pool behind the httpx transport interface; TLS contexts made on first use.

    ``guard`` vets every address connected to (default: ``NetworkGuard()`` with the default
    blocked networks). ``skip_verify(host, port)`` names the hosts whose certificates are not
    verified; every other TLS connection uses ``ssl_context()``.
    """

    def __init__(
        self,
        ssl_context: Callable[[], ssl.SSLContext],
        *,
        max_connections: int,
        keepalive_expiry: float = 60.0,
        http2: bool = False,
        guard: NetworkGuard | None = None,
        skip_verify: Callable[[str, int], bool] | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._make_ssl_context = ssl_context
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._http2 = http2
        self._backend = _Backend(guard or NetworkGuard(), network)
        self._skip_verify = skip_verify
        self._pools: dict[_Mode, httpcore.AsyncConnectionPool] = {}

    def _mode(self, url: httpx.URL) -> _Mode:
        if url.scheme != "https":
            return _Mode.PLAIN
        port = url.port or 443
        if self._skip_verify is not None and self._skip_verify(url.host, port):
            return _Mode.UNVERIFIED
        return _Mode.VERIFIED

    def _pool(self, mode: _Mode) -> httpcore.AsyncConnectionPool:
        pool = self._pools.get(mode)
        if pool is None:
            if mode == _Mode.VERIFIED:
                context = self._make_ssl_context()
            elif mode == _Mode.UNVERIFIED:
                context = _unverified_context()
            else:
                # Plain-HTTP connections never use the context: skip loading CA certificates.
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            pool = _Pool(
                ssl_context=context,
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                keepalive_expiry=self._keepalive_expiry,
                http1=True,
                http2=self._http2,
                network_backend=self._backend,
            )
            self._pools[mode] = pool
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        pool = self._pool(self._mode(request.url))
        with _mapped_errors():
            response = await pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
