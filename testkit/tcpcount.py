"""A TCP forwarder that counts the connections it accepts.

Put it in front of a server (the API server in e2e tests, TLS passes through untouched) and
point a client at it: ``connections`` tells how many TCP connections the client opened, which
is how a test proves that a client reuses its connections instead of opening one per request.

    with CountingTcpProxy("127.0.0.1", api_port) as proxy:
        ...  # client connects to 127.0.0.1:proxy.port
        proxy.connections, proxy.open_connections
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

__all__ = ["CountingTcpProxy"]

_CHUNK = 64 * 1024


class CountingTcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self._lock = threading.Lock()
        self._accepted = 0
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def connections(self) -> int:
        """Connections accepted since the start."""
        with self._lock:
            return self._accepted

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        with self._lock:
            return self._open

    def start(self) -> CountingTcpProxy:
        ready = threading.Event()
        loop = self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="tcpcount", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the counting proxy did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> CountingTcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        with self._lock:
            self._accepted += 1
            self._open += 1
        try:
            ur, uw = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            cw.close()
            self._closed()
            return
        try:
            await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))
        finally:
            for writer in (cw, uw):
                writer.close()
            self._closed()

    def _closed(self) -> None:
        with self._lock:
            self._open -= 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
