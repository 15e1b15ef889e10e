"""The network guard: the address checked is the address connected to.

Refusals are proved two ways. Addresses outside loopback (169.254.169.254 and its IPv6
spellings) go through the real connection layer with its socket backend replaced by
``NoNetwork``, which records what would have been connected to and connects to nothing: a
broken guard fails the test without a packet leaving the host. Everything that really
connects does so to a real HTTP server on 127.0.0.1, with a fake resolver mapping test names
to loopback addresses and 127.0.0.2 as the "blocked" network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from imagecopy.oci.connections import PoolTransport
from imagecopy.oci.errors import RegistryNotAllowed
from imagecopy.oci.netguard import (
    DEFAULT_BLOCKED_NETWORKS,
    NetworkGuard,
    embedded_ipv4,
    parse_blocked_networks,
)
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Registry
from testkit.tls import _cert_pem, issue_cert, key_pem, make_ca

METADATA = ipaddress.IPv4Address("169.254.169.254")


class NoNetwork(httpcore.AsyncNetworkBackend):
    """A socket backend that connects to nothing and records what it was asked for."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.attempts.append((host, port))
        raise httpcore.ConnectError("the test backend connects to nothing")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Resolver:
    """A resolver answering from a script: ``answers[name]`` is a list of answers, one per
    lookup (the last repeats); an exception in the list is raised."""

    answers: dict[str, list[Sequence[str] | BaseException]]
    lookups: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        script = self.answers[host]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def offline_client(
    resolver: Resolver | None = None, blocked: Sequence[str] = DEFAULT_BLOCKED_NETWORKS
) -> tuple[httpx.AsyncClient, NoNetwork]:
    network = NoNetwork()
    guard = NetworkGuard(blocked, resolver=resolver or Resolver({}))
    transport = PoolTransport(
        ssl.create_default_context, max_connections=4, guard=guard, network=network
    )
    return httpx.AsyncClient(transport=transport), network


@dataclass
class Server:
    """A real HTTP server on a loopback address: answers 200 with the Host header it got."""

    address: str = "127.0.0.1"
    close: bool = False
    tls: ssl.SSLContext | None = None
    hosts: list[str] = field(default_factory=list)
    connections: int = 0
    httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return int(self.httpd.server_address[1])

    def start(self) -> Server:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def setup(self) -> None:
                owner.connections += 1
                super().setup()

            def do_GET(self) -> None:
                owner.hosts.append(self.headers.get("Host", ""))
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if owner.close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = owner.close

        class Httpd(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = super().get_request()
                if owner.tls is not None:
                    sock = owner.tls.wrap_socket(sock, server_side=True)
                return sock, addr

        self.httpd = Httpd((self.address, 0), Handler)
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server().start()
    yield s
    s.stop()


@pytest.fixture
def decoy() -> Iterator[Server]:
    """A server on 127.0.0.2, the network the tests block: it must never see a connection."""
    s = Server(address="127.0.0.2").start()
    yield s
    s.stop()


# --- parsing ---------------------------------------------------------------------------------


def test_blocked_networks_setting_parses_none_default_and_cidrs() -> None:
    assert parse_blocked_networks("none") == ()
    assert parse_blocked_networks(" None ") == ()
    assert parse_blocked_networks("default") == DEFAULT_BLOCKED_NETWORKS
    assert parse_blocked_networks("default, 10.0.0.1/8, 10.0.0.0/8") == (
        *DEFAULT_BLOCKED_NETWORKS,
        "10.0.0.0/8",
    )
    assert parse_blocked_networks("fd00::1") == ("fd00::1/128",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("  ", "is empty"),
        (" , ", "is empty"),
        ("10.0.0.0/8,,fd00::/8", "empty entry"),
        ("none,10.0.0.0/8", "'none' cannot be combined"),
        ("10.0.0.0/33", "not a CIDR"),
        ("metadata", "not a CIDR"),
    ],
)
def test_an_empty_or_invalid_blocked_networks_setting_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_blocked_networks(text)


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("::ffff:169.254.169.254", METADATA),  # IPv4-mapped, dotted
        ("::ffff:a9fe:a9fe", METADATA),  # IPv4-mapped, hex
        ("::169.254.169.254", METADATA),  # IPv4-compatible (deprecated)
        ("::a9fe:a9fe", METADATA),
        ("64:ff9b::a9fe:a9fe", METADATA),  # NAT64 well-known prefix
        ("64:ff9b::169.254.169.254", METADATA),
        ("2002:a9fe:a9fe::1", METADATA),  # 6to4
        ("::1", None),  # IPv6 loopback, not 0.0.0.1
        ("::", None),
        ("2001:db8::1", None),
        ("169.254.169.254", None),
    ],
)
def test_ipv6_forms_that_carry_an_ipv4_address_are_normalised(
    address: str, embedded: ipaddress.IPv4Address | None
) -> None:
    assert embedded_ipv4(ipaddress.ip_address(address)) == embedded


def test_a_guard_checks_the_embedded_ipv4_address_and_the_address_itself() -> None:
    guard = NetworkGuard(["169.254.0.0/16", "64:ff9b::/96"])
    assert guard.blocked_network(ipaddress.ip_address("::ffff:169.254.1.1")) is not None
    assert guard.blocked_network(ipaddress.ip_address("64:ff9b::0808:0808")) is not None
    assert guard.blocked_network(ipaddress.ip_address("::ffff:8.8.8.8")) is None
    assert NetworkGuard([]).blocked_network(ipaddress.ip_address("169.254.169.254")) is None


# --- refusals before any connection ------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::a9fe:a9fe]",
        "[::a9fe:a9fe]",
        "[fe80::1]",
        "[fd00:ec2::254]",
        "100.100.100.200",
    ],
)
async def test_blocked_address_literals_are_refused_before_connecting(host: str) -> None:
    client, network = offline_client()
    async with client:
        with pytest.raises(RegistryNotAllowed, match="blocked network") as info:
            await client.get(f"http://{host}/v2/")
    assert network.attempts == []
    assert "never contacted" in str(info.value)


async def test_numeric_host_names_the_resolver_turns_into_a_blocked_address_are_refused() -> None:
    """``2852039166`` is 169.254.169.254 to ``getaddrinfo`` (no DNS query is made for it):
    the guard checks what the name resolves to, whatever its spelling."""
    guard = NetworkGuard(DEFAULT_BLOCKED_NETWORKS)  # the system resolver
    with pytest.raises(RegistryNotAllowed, match=r"2852039166 resolves to 169\.254\.169\.254"):
        await guard.resolve("2852039166", 80)


async def test_a_name_with_any_blocked_address_is_refused_whole() -> None:
    resolver = Resolver({"mixed.test": [["127.0.0.1", "::ffff:169.254.169.254"]]})
    client, network = offline_client(resolver)
    async with client:
        with pytest.raises(RegistryNotAllowed, match=r"mixed\.test resolves to ::ffff:"):
            await client.get("http://mixed.test/v2/")
    assert network.attempts == []


@pytest.mark.parametrize(
    "failure",
    [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), [], ["not-an-address"]],
)
async def test_a_name_that_does_not_resolve_fails_closed(failure: Any) -> None:
    client, network = offline_client(Resolver({"gone.test": [failure]}))
    async with client:
        with pytest.raises(httpx.ConnectError, match=r"gone\.test"):
            await client.get("http://gone.test/v2/")
    assert network.attempts == []


async def test_the_connection_goes_to_the_resolved_address_only() -> None:
    resolver = Resolver({"registry.test": [["127.0.0.9", "::1"]]})
    client, network = offline_client(resolver)
    async with client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://registry.test:5000/v2/")
    # One lookup; each vetted address tried in the resolver's order; never the name itself.
    assert resolver.lookups == ["registry.test"]
    assert network.attempts == [("127.0.0.9", 5000), ("::1", 5000)]


# --- real connections ------------------------------------------------------------------------


async def test_one_lookup_per_connection_and_the_host_header_keeps_the_name(
    server: Server,
) -> None:
    resolver = Resolver({"registry.test": [["127.0.0.1"]]})
    async with RegistryPool(
        TransportSettings(plain_http=frozenset({"registry.test"})), resolver=resolver
    ) as pool:
        for _ in range(3):
            response = await pool.http.get(f"http://registry.test:{server.port}/v2/")
            assert response.status_code == 200
    assert server.hosts == [f"registry.test:{server.port}"] * 3
    assert resolver.lookups == ["registry.test"]  # the kept-alive connection is reused
    assert server.connections == 1


async def test_a_name_that_rebinds_to_a_blocked_address_is_refused_at_connect(
    server: Server, decoy: Server
) -> None:
    """The first lookup says loopback 127.0.0.1; the next says 127.0.0.2, which this test
    blocks. No verdict is remembered: the second connection is refused and the decoy
    listening on 127.0.0.2 never sees a connection."""
    server.close = True  # every answer closes its connection: each request connects anew
    resolver = Resolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    settings = TransportSettings(
        plain_http=frozenset({"rebind.test"}), blocked_networks=("127.0.0.2/32",)
    )
    async with RegistryPool(settings, resolver=resolver) as pool:
        first = await pool.http.get(f"http://rebind.test:{server.port}/v2/")
        assert first.status_code == 200
        with pytest.raises(RegistryNotAllowed, match=r"rebind\.test resolves to 127\.0\.0\.2"):
            await pool.http.get(f"http://rebind.test:{decoy.port}/v2/")
    assert resolver.lookups == ["rebind.test", "rebind.test"]
    assert decoy.connections == 0


async def test_mapped_loopback_literal_of_a_blocked_address_is_refused(decoy: Server) -> None:
    """``[::ffff:127.0.0.2]`` would reach the decoy on 127.0.0.2 through a dual-stack
    socket; the guard refuses it as 127.0.0.2."""
    settings = TransportSettings(
        plain_http=frozenset({"[::ffff:127.0.0.2]"}), blocked_networks=("127.0.0.2/32",)
    )
    async with RegistryPool(settings) as pool:
        for host in ("[::ffff:127.0.0.2]", "[::ffff:7f00:2]"):
            with pytest.raises(RegistryNotAllowed, match=r"that is 127\.0\.0\.2"):
                await pool.http.get(f"http://{host}:{decoy.port}/v2/")
    assert decoy.connections == 0


def _pki(tmp_path: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    ca, ca_key = make_ca()
    leaf, leaf_key = issue_cert(ca, ca_key, name, dns_names=[name])
    (tmp_path / "ca.crt").write_bytes(_cert_pem(ca))
    (tmp_path / "leaf.crt").write_bytes(_cert_pem(leaf))
    (tmp_path / "leaf.key").write_bytes(key_pem(leaf_key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    return tmp_path / "ca.crt", context


async def test_tls_verifies_the_certificate_for_the_name_not_the_vetted_address(
    tmp_path: Path,
) -> None:
    """The socket goes to 127.0.0.1, yet SNI and the hostname check use ``registry.test``:
    its certificate is accepted, and the same server reached as ``other.test`` is not."""
    ca_file, context = _pki(tmp_path, "registry.test")
    server = Server(tls=context).start()
    try:
        resolver = Resolver({"registry.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        async with RegistryPool(TransportSettings(ca_file=str(ca_file)), resolver=resolver) as pool:
            ok = await pool.http.get(f"https://registry.test:{server.port}/v2/")
            assert ok.status_code == 200
            with pytest.raises(httpx.ConnectError, match=r"certificate|hostname"):
                await pool.http.get(f"https://other.test:{server.port}/v2/")
        assert server.hosts == [f"registry.test:{server.port}"]
    finally:
        server.stop()


async def test_unverified_tls_covers_exactly_the_hosts_listed(tmp_path: Path) -> None:
    """``insecure`` names ``registry.test:PORT``: its certificate (from a CA nobody trusts) is
    accepted; ``other.test`` on the same server is still verified and refused."""
    _, context = _pki(tmp_path, "registry.test")
    server = Server(tls=context).start()
    try:
        resolver = Resolver({"registry.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        settings = TransportSettings(insecure=frozenset({f"registry.test:{server.port}"}))
        assert settings.scheme(Registry("registry.test", server.port)) == "https"  # never http
        async with RegistryPool(settings, resolver=resolver) as pool:
            ok = await pool.http.get(f"https://registry.test:{server.port}/v2/")
            assert ok.status_code == 200
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await pool.http.get(f"https://other.test:{server.port}/v2/")
    finally:
        server.stop()


def test_insecure_and_plain_http_entries_are_exact() -> None:
    for entries in ({"*.corp"}, {"reg?.corp"}, {"*"}, {"http://reg.corp"}):
        with pytest.raises(ValueError, match="host"):
            TransportSettings(insecure=frozenset(entries))
        with pytest.raises(ValueError, match="host"):
            TransportSettings(plain_http=frozenset(entries))


async def test_the_default_transport_settings_block_the_default_networks() -> None:
    async with RegistryPool(TransportSettings()) as pool:
        assert [str(n) for n in pool.guard.blocked] == list(DEFAULT_BLOCKED_NETWORKS)


def test_every_ipv6_spelling_of_a_link_local_ipv4_address_is_blocked() -> None:
    guard = NetworkGuard(DEFAULT_BLOCKED_NETWORKS)
    for ipv4 in list(ipaddress.IPv4Network("169.254.0.0/16"))[::97]:
        high, low = int(ipv4) >> 16, int(ipv4) & 0xFFFF
        for spelling in (
            f"::ffff:{ipv4}",
            f"::ffff:{high:x}:{low:x}",
            f"::{ipv4}",
            f"64:ff9b::{ipv4}",
            f"64:ff9b::{high:x}:{low:x}",
            f"2002:{high:x}:{low:x}::1",
        ):
            with pytest.raises(RegistryNotAllowed):
                guard.check(f"[{spelling}]", spelling)


async def test_resolution_counts_against_the_connect_timeout() -> None:
    async def slow(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    network = NoNetwork()
    transport = PoolTransport(
        ssl.create_default_context,
        max_connections=1,
        guard=NetworkGuard(resolver=slow),
        network=network,
    )
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, connect=0.2)) as c:
        with pytest.raises(httpx.ConnectTimeout, match=r"resolving slow\.test timed out"):
            await c.get("http://slow.test/v2/")
    assert network.attempts == []
