"""httpcore's connection pool as an httpx transport, tuned for registry traffic; the only
module that touches httpcore.

Why not `httpx.AsyncHTTPTransport`: profiling same-registry copies (bench/README.md) showed
about 40% of the client's CPU in the pool asking each idle connection "is the socket
readable?" through anyio's extra-attribute machinery (a dict rebuilt per call), and blob
streams paying one event-loop round and one h11 event per 64 KiB read. This module keeps
httpcore (pooling, HTTP/1.1 and HTTP/2, TLS) and changes the network backend — the
liveness check uses the socket cached at connect time (one poller per socket), and reads ask for
up to 1 MiB — and the pool's request assignment, which httpcore makes quadratic in the pool's
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

import enum
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore
import httpx

from .netguard import NetworkGuard, ResolutionFailed

__all__ = ["READ_BYTES", "PoolTransport"]

#: Bytes asked of the socket per read (httpcore asks for 64 KiB).
READ_BYTES = 1024 * 1024


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


class _Backend(httpcore.AsyncNetworkBackend):
    """anyio's backend behind the network guard: connects only to vetted addresses.

    ``inner`` is replaced by tests that must see which addresses would be connected to
    without any packet leaving the host.
    """

    def __init__(
        self, guard: NetworkGuard, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

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
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
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
