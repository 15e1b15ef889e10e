"""The transport's own network streams (``oci.connections._SocketStream``, ``_TLSStream``)
against real sockets on loopback: bodies larger than the socket buffers both ways, in plain
TCP and TLS, read and write timeouts, and a close while another task waits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpcore
import httpx
import pytest

from imagecopy.oci.connections import PoolTransport, _connect
from imagecopy.oci.netguard import NetworkGuard
from testkit.tls import _cert_pem, issue_cert, key_pem, make_ca

BODY = 24 * 1024 * 1024  # larger than loopback's socket buffers: writes must wait


class EchoDigest:
    """An HTTP/1.1 server in a thread: each request's body is read and answered with its
    SHA-256, followed by ``BODY`` bytes of a pattern (``reply``) unless told otherwise."""

    def __init__(self, tls: ssl.SSLContext | None = None, stall: bool = False) -> None:
        self.tls = tls
        self.stall = stall  # accept, never read or answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            if not self.stall:
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            sock = conn if self.tls is None else self.tls.wrap_socket(conn, server_side=True)
            stream = sock.makefile("rb")
            while True:
                length = 0
                line = stream.readline()
                if not line:
                    return
                while line not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    line = stream.readline()
                digest = hashlib.sha256()
                left = length
                while left:
                    part = stream.read(min(left, 1 << 20))
                    digest.update(part)
                    left -= len(part)
                head = digest.hexdigest().encode()
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(head) + BODY) + head
                )
                sock.sendall(reply())
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def reply() -> bytes:
    return bytes(range(256)) * (BODY // 256)


@pytest.fixture
def plain() -> Iterator[EchoDigest]:
    server = EchoDigest()
    yield server
    server.close()


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca, ca_key = make_ca()
    leaf, leaf_key = issue_cert(ca, ca_key, "127.0.0.1", dns_names=["localhost"])
    (tmp_path / "ca.crt").write_bytes(_cert_pem(ca))
    (tmp_path / "leaf.crt").write_bytes(_cert_pem(leaf))
    (tmp_path / "leaf.key").write_bytes(key_pem(leaf_key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    return server, tmp_path / "ca.crt"


def _client(ca_file: Path | None = None, **timeouts: float) -> httpx.AsyncClient:
    def context() -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    transport = PoolTransport(
        context, max_connections=4, guard=NetworkGuard(blocked=(), resolver=_loopback)
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10, **timeouts))


async def _loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


async def _pieces(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _round_trip(client: httpx.AsyncClient, url: str) -> None:
    body = os.urandom(BODY)
    for content in (body, _pieces(body)):  # one 24 MiB write, then 1 MiB writes
        response = await client.post(
            url, content=content, headers={"Content-Length": str(len(body))}
        )
        assert response.status_code == 200
        assert response.content[:64] == hashlib.sha256(body).hexdigest().encode()
        assert response.content[64:] == reply()


async def test_plain_bodies_larger_than_the_socket_buffers_arrive_whole(
    plain: EchoDigest,
) -> None:
    async with _client() as client:
        await _round_trip(client, f"http://localhost:{plain.port}/")
    assert len(plain.accepted) == 1  # the second request reused the connection


async def test_tls_bodies_larger_than_the_socket_buffers_arrive_whole(tmp_path: Path) -> None:
    context, ca_file = _tls_pair(tmp_path)
    server = EchoDigest(tls=context)
    try:
        async with _client(ca_file) as client:
            await _round_trip(client, f"https://localhost:{server.port}/")
        assert len(server.accepted) == 1
    finally:
        server.close()


async def test_tls_handshake_with_an_untrusted_certificate_fails_to_connect(
    tmp_path: Path,
) -> None:
    context, _ = _tls_pair(tmp_path)
    server = EchoDigest(tls=context)
    try:
        async with _client() as client:
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.get(f"https://localhost:{server.port}/")
    finally:
        server.close()


async def test_a_server_that_never_answers_times_the_read_out() -> None:
    server = EchoDigest(stall=True)
    try:
        async with _client(read=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://localhost:{server.port}/")
    finally:
        server.close()


async def test_a_server_that_never_reads_times_the_write_out() -> None:
    server = EchoDigest(stall=True)
    try:
        async with _client(write=0.3) as client:
            with pytest.raises(httpx.WriteTimeout):
                await client.post(f"http://localhost:{server.port}/", content=os.urandom(BODY))
    finally:
        server.close()


async def test_a_tls_handshake_the_server_never_answers_times_the_connect_out() -> None:
    server = EchoDigest(stall=True)
    try:
        async with _client(connect=0.3) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"https://localhost:{server.port}/")
    finally:
        server.close()


async def test_closing_a_stream_wakes_the_task_waiting_to_read() -> None:
    server = EchoDigest(stall=True)
    try:
        stream = await _connect("127.0.0.1", server.port, 5.0, None, None)
        reader = asyncio.ensure_future(stream.read(1024, timeout=30))
        await asyncio.sleep(0.05)
        assert not reader.done()
        await stream.aclose()
        with pytest.raises(httpcore.ReadError):
            await asyncio.wait_for(reader, 5)
    finally:
        server.close()


async def test_a_refused_connection_is_a_connect_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(httpcore.ConnectError):
        await _connect("127.0.0.1", port, 5.0, None, None)


async def test_closing_mid_body_resets_instead_of_sending_the_rest() -> None:
    """A request abandoned mid-body (a cancelled upload) must not keep the link busy: the
    megabytes still queued in the kernel are dropped with a reset, not delivered."""
    server = EchoDigest(stall=True)
    try:
        stream = await _connect("127.0.0.1", server.port, 5.0, None, None)
        writer = asyncio.ensure_future(stream.write(os.urandom(BODY), timeout=30))
        await asyncio.sleep(0.2)
        assert not writer.done()  # the server reads nothing: the write waits, bytes queued
        writer.cancel()
        await stream.aclose()
        conn = server.accepted[0]
        conn.settimeout(5)
        received = 0
        with pytest.raises(ConnectionResetError):
            while part := conn.recv(1 << 20):
                received += len(part)
        assert received < BODY
    finally:
        server.close()


async def test_closing_after_a_whole_exchange_is_an_orderly_close() -> None:
    server = EchoDigest(stall=True)
    try:
        stream = await _connect("127.0.0.1", server.port, 5.0, None, None)
        await stream.write(b"x" * 1000, timeout=5)
        conn = server.accepted[0]
        conn.settimeout(5)
        assert len(conn.recv(4096)) == 1000
        conn.sendall(b"answer")
        assert await stream.read(1024, timeout=5) == b"answer"  # the request was acknowledged
        await stream.aclose()
        assert conn.recv(4096) == b""  # FIN: end of stream, no reset
    finally:
        server.close()
