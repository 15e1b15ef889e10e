"""The connection pool's own request assignment (``oci.connections._Pool``) against a real
HTTP/1.1 keep-alive server on a local socket: the connection limit holds, queued requests all
get a connection, idle connections are reused, and one the server closed is not."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import httpcore
import httpx
import pytest

from imagecopy.oci.connections import PoolTransport
from imagecopy.oci.netguard import NetworkGuard


class KeepAliveServer:
    """Answers every request ``200 ok`` after ``delay`` seconds, keeping the connection open
    unless ``close_after_reply`` (then it closes it just after the answer, while idle)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.close_after_reply = False
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if self.close_after_reply:
                    await asyncio.sleep(0.05)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_now -= 1
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"


@pytest.fixture
async def server() -> AsyncIterator[KeepAliveServer]:
    srv = KeepAliveServer(delay=0.02)
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.server.close()
        await srv.server.wait_closed()


def _client(max_connections: int) -> httpx.AsyncClient:
    transport = PoolTransport(
        ssl.create_default_context,
        max_connections=max_connections,
        guard=NetworkGuard(blocked=()),
    )
    return httpx.AsyncClient(transport=transport)


async def test_requests_beyond_the_limit_wait_for_a_connection(server: KeepAliveServer) -> None:
    async with _client(max_connections=8) as client:
        answers = await asyncio.gather(*(client.get(server.url) for _ in range(40)))
        assert [a.status_code for a in answers] == [200] * 40
        assert server.connections == 8 and server.most_open == 8
        # A second wave reuses the idle connections.
        again = await asyncio.gather(*(client.get(server.url) for _ in range(8)))
        assert [a.status_code for a in again] == [200] * 8
        assert server.connections == 8


async def test_a_connection_the_server_closed_is_not_reused(server: KeepAliveServer) -> None:
    server.close_after_reply = True
    async with _client(max_connections=2) as client:
        first = await client.get(server.url)
        await asyncio.sleep(0.2)  # the server has closed it by now
        second = await client.get(server.url)
    assert first.status_code == second.status_code == 200
    assert server.connections == 2


async def test_a_wave_on_idle_connections_gives_each_request_its_own(
    server: KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests arriving together while connections are idle: none is handed a connection
    another request already holds, so none has to go round the pool again (httpcore's
    ``ConnectionNotAvailable`` → ``clear_connection``), and none waits for one."""
    cleared = 0
    clear = httpcore._async.connection_pool.AsyncPoolRequest.clear_connection

    def counting_clear(self: httpcore._async.connection_pool.AsyncPoolRequest) -> None:
        nonlocal cleared
        cleared += 1
        clear(self)

    monkeypatch.setattr(
        httpcore._async.connection_pool.AsyncPoolRequest, "clear_connection", counting_clear
    )
    async with _client(max_connections=16) as client:
        first = await asyncio.gather(*(client.get(server.url) for _ in range(16)))
        assert server.connections == 16
        # All 16 idle now: a second wave of 16 reuses them, one each.
        again = await asyncio.gather(*(client.get(server.url) for _ in range(16)))
    assert [a.status_code for a in (*first, *again)] == [200] * 32
    assert server.connections == 16 and server.most_open == 16
    assert cleared == 0
