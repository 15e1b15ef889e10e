"""The egress rule: plain HTTP only where configured, credentials only to the registry's
origin and its token realm, and the settings that say which hosts are which.

The registry and token service here are ``httpx.MockTransport``s: a real server cannot be
made to answer for arbitrary host names (``auth.elsewhere.test``) without DNS for them, and
these tests must show that a request is refused *before* it is sent. Real-server tests of
the same rules are in tests/integration/test_egress.py.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from imagecopy import cli
from imagecopy.controller.settings import RegistryPattern, Settings, SettingsError
from imagecopy.oci.auth import ChallengeCache, RegistryAuth, TokenCache
from imagecopy.oci.credentials import Credential, CredentialStore
from imagecopy.oci.egress import EgressRule, HostList, Origin
from imagecopy.oci.errors import InvalidSpec, RegistryNotAllowed, Unauthorized
from imagecopy.oci.netguard import DEFAULT_BLOCKED_NETWORKS
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Registry

SECRET = "s3cret-password"
ALICE = Credential("alice", SECRET)


class Recorder:
    """A scripted registry and token service on any host: records every request it got."""

    def __init__(self, realm: str, upload_location: str | None = None) -> None:
        self.realm = realm
        self.upload_location = upload_location
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # A copy: the auth flow adds headers to the request object it sends again.
        self.seen.append(httpx.Request(request.method, request.url, headers=request.headers))
        if request.url.path == "/token":
            return httpx.Response(200, json={"token": "tok"})
        if request.headers.get("authorization") != "Bearer tok":
            return httpx.Response(
                401, headers={"WWW-Authenticate": f'Bearer realm="{self.realm}",service="r"'}
            )
        if request.method == "POST" and self.upload_location:
            return httpx.Response(202, headers={"Location": self.upload_location})
        return httpx.Response(201 if request.method == "PUT" else 200)

    def authorized(self) -> list[str]:
        """``scheme://host:port path`` of each request that carried credentials."""
        return [
            f"{Origin.of(r.url)} {r.url.path}" for r in self.seen if "authorization" in r.headers
        ]


def credentials(registry: str) -> CredentialStore:
    auths = {registry: {"username": "alice", "password": SECRET}}
    return CredentialStore.from_docker_config(json.dumps({"auths": auths}))


async def send(pool: RegistryPool, registry: str, method: str, url: str) -> httpx.Response:
    session = pool.session(credentials(registry))
    request = session.request(method, url, scopes=("repository:a:push,pull",))
    return await session.send(request, Registry.parse(registry))


# --- host lists ------------------------------------------------------------------------------


def test_host_lists_are_exact_and_compare_any_spelling_of_an_address() -> None:
    hosts = HostList.parse(["Reg.Corp", "mirror.corp:5000", "[::FFFF:127.0.0.1]:8080"])
    assert hosts.covers("reg.corp", 443) and hosts.covers("reg.corp", None)  # every port
    assert hosts.covers("mirror.corp", 5000)
    assert not hosts.covers("mirror.corp", 5001) and not hosts.covers("mirror.corp", None)
    assert not hosts.covers("a.reg.corp", 443)
    assert hosts.covers("::ffff:7f00:1", 8080) and hosts.covers("[::ffff:127.0.0.1]", 8080)
    assert hosts.covers_url(httpx.URL("http://reg.corp/v2/"))
    assert HostList.parse(["mirror.corp:80"]).covers_url(httpx.URL("http://mirror.corp/x"))


@pytest.mark.parametrize("entry", ["*.corp", "reg?.corp", "*", "reg[1].corp", "http://r", ""])
def test_host_lists_refuse_patterns_and_urls(entry: str) -> None:
    with pytest.raises(ValueError, match="host or host:port"):
        HostList.parse([entry])


def test_insecure_never_implies_plain_http() -> None:
    settings = TransportSettings(insecure=frozenset({"reg.corp"}))
    assert settings.scheme(Registry.parse("reg.corp")) == "https"
    assert settings.egress.skips_verification("reg.corp", 443)
    assert not settings.egress.plain_http_allowed(httpx.URL("http://reg.corp/v2/"))
    plain = TransportSettings(plain_http=frozenset({"reg.corp:5000"}))
    assert plain.scheme(Registry.parse("reg.corp:5000")) == "http"
    assert plain.scheme(Registry.parse("reg.corp")) == "https"
    assert not plain.egress.skips_verification("reg.corp", 5000)


@pytest.mark.parametrize(
    ("plain_http", "realm", "refused"),
    [
        ([], "https://auth.elsewhere.test/token", False),
        ([], "http://reg.corp/token", True),
        ([], "http://reg.corp:8080/token", True),
        (["reg.corp:5000"], "http://reg.corp:8080/token", True),
        (["reg.corp:5000", "auth.corp:8080"], "http://auth.corp:8080/token", False),
        (["reg.corp"], "http://reg.corp:8080/token", False),
        ([], "ftp://reg.corp/token", True),
    ],
)
def test_a_plain_http_realm_needs_its_own_host_configured(
    plain_http: list[str], realm: str, refused: bool
) -> None:
    rule = EgressRule.from_entries(plain_http, [])
    assert (rule.realm_refusal(httpx.URL(realm)) is not None) is refused


# --- credentials only to the registry's origin --------------------------------------------------


async def test_an_upload_location_on_the_registry_host_over_http_gets_no_credentials() -> None:
    """``Location: http://r.io:443/…`` has the registry's host and port but not its scheme:
    the flow attaches nothing (before the fix the Bearer token went out over plain HTTP)."""
    registry = Recorder("https://auth.r.io/token", "http://r.io:443/v2/a/blobs/uploads/u1")
    tokens = Recorder("https://auth.r.io/token")
    async with httpx.AsyncClient(transport=httpx.MockTransport(tokens)) as token_client:
        auth = RegistryAuth(
            Registry.parse("r.io"),
            ALICE,
            token_client=token_client,
            tokens=TokenCache(),
            challenges=ChallengeCache(),
        )
        async with httpx.AsyncClient(transport=httpx.MockTransport(registry), auth=auth) as c:
            started = await c.post("https://r.io/v2/a/blobs/uploads/")
            assert started.status_code == 202
            await c.put(started.headers["Location"], content=b"x")
            await c.get("https://r.io:8443/v2/a/tags/list")  # same host, other port
    assert registry.authorized() == ["https://r.io:443 /v2/a/blobs/uploads/"]
    assert [r.url.scheme for r in registry.seen] == ["https", "https", "http", "https"]
    assert [r.method for r in tokens.seen] == ["GET"]


async def test_the_pool_refuses_plain_http_to_a_host_not_configured_for_it() -> None:
    """The same Location through the pool: the egress layer refuses it before it is sent."""
    registry = Recorder("https://r.io/token", "http://r.io:443/v2/a/blobs/uploads/u1")
    async with RegistryPool(TransportSettings(), transport=httpx.MockTransport(registry)) as pool:
        started = await send(pool, "r.io", "POST", "https://r.io/v2/a/blobs/uploads/")
        assert started.status_code == 202
        with pytest.raises(RegistryNotAllowed, match=r"r\.io:443 over plain HTTP"):
            await send(pool, "r.io", "PUT", started.headers["Location"])
    assert [r.url.scheme for r in registry.seen] == ["https", "https", "https"]


@pytest.mark.parametrize(
    ("settings", "registry", "realm"),
    [
        # Insecure (unverified TLS) says nothing about plain HTTP anywhere.
        (TransportSettings(insecure=frozenset({"r.io"})), "r.io", "http://auth.other.test/t"),
        # A plain-HTTP registry does not make another host a plain-HTTP realm...
        (
            TransportSettings(plain_http=frozenset({"r.io:5000"})),
            "r.io:5000",
            "http://auth.other.test/t",
        ),
        # ...nor another port of its own host.
        (TransportSettings(plain_http=frozenset({"r.io:5000"})), "r.io:5000", "http://r.io/t"),
        # An HTTPS registry never gets a plain-HTTP realm on its own host.
        (TransportSettings(), "r.io", "http://r.io:8080/t"),
    ],
)
async def test_basic_credentials_never_go_in_clear_to_a_token_realm(
    settings: TransportSettings, registry: str, realm: str
) -> None:
    answers = Recorder(realm)
    async with RegistryPool(settings, transport=httpx.MockTransport(answers)) as pool:
        scheme = settings.scheme(Registry.parse(registry))
        with pytest.raises(Unauthorized, match="refusing to send them") as info:
            await send(pool, registry, "GET", f"{scheme}://{registry}/v2/a/manifests/1")
    assert SECRET not in str(info.value)
    assert [r.url.path for r in answers.seen] == ["/v2/a/manifests/1"]  # no token request
    assert all("authorization" not in r.headers for r in answers.seen)


async def test_a_plain_http_realm_on_a_configured_host_is_used() -> None:
    answers = Recorder("http://auth.corp:8080/token")
    settings = TransportSettings(plain_http=frozenset({"r.io:5000", "auth.corp:8080"}))
    async with RegistryPool(settings, transport=httpx.MockTransport(answers)) as pool:
        response = await send(pool, "r.io:5000", "GET", "http://r.io:5000/v2/a/manifests/1")
    assert response.status_code == 200
    assert [f"{Origin.of(r.url)}{r.url.path}" for r in answers.seen] == [
        "http://r.io:5000/v2/a/manifests/1",
        "http://auth.corp:8080/token",
        "http://r.io:5000/v2/a/manifests/1",
    ]


# --- operator settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGECOPY_BLOCKED_NETWORKS": ""}, "IMAGECOPY_BLOCKED_NETWORKS: is empty"),
        ({"IMAGECOPY_BLOCKED_NETWORKS": "10.0.0.0/8,"}, "empty entry"),
        ({"IMAGECOPY_BLOCKED_NETWORKS": "none,10.0.0.0/8"}, "'none' cannot be combined"),
        ({"IMAGECOPY_ALLOWED_REGISTRIES": ""}, "set it to \\* to allow every registry"),
        ({"IMAGECOPY_ALLOWED_REGISTRIES": "reg[12].corp"}, "no character classes"),
        ({"IMAGECOPY_ALLOWED_REGISTRIES": "*.corp:50*"}, "invalid port"),
        ({"IMAGECOPY_ALLOWED_REGISTRIES": "ghcr.io,,quay.io"}, "empty entry"),
        ({"IMAGECOPY_INSECURE_REGISTRIES": "*.corp"}, "wildcards are not allowed"),
        ({"IMAGECOPY_PLAIN_HTTP_REGISTRIES": "reg.corp:http"}, "not a host or host:port"),
    ],
)
def test_settings_errors_name_the_variable_and_the_problem(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        Settings.from_env(env)
    assert next(iter(env)) in str(info.value)


def test_blocked_networks_setting_none_default_and_additions() -> None:
    assert Settings.from_env({"IMAGECOPY_BLOCKED_NETWORKS": "none"}).blocked_networks == ()
    extended = Settings.from_env({"IMAGECOPY_BLOCKED_NETWORKS": "default,10.0.0.0/8"})
    assert extended.blocked_networks == (*DEFAULT_BLOCKED_NETWORKS, "10.0.0.0/8")
    assert Settings.from_env({}).blocked_networks == DEFAULT_BLOCKED_NETWORKS


def test_plain_http_and_insecure_registries_are_separate_settings() -> None:
    s = Settings.from_env(
        {
            "IMAGECOPY_PLAIN_HTTP_REGISTRIES": "Mirror.Local:5000",
            "IMAGECOPY_INSECURE_REGISTRIES": "tls.local",
        }
    )
    assert s.plain_http_registries == frozenset({"mirror.local:5000"})
    assert s.insecure_registries == frozenset({"tls.local"})
    assert Settings.from_env({"IMAGECOPY_INSECURE_REGISTRIES": ""}).insecure_registries == set()


@pytest.mark.parametrize(
    ("pattern", "registry", "allowed"),
    [
        ("*", "ghcr.io", True),
        ("*", "ghcr.io:443", False),  # a host-only entry: a registry written without a port
        ("*:*", "ghcr.io:443", True),
        ("*.example.com", "a.b.example.com", True),  # * crosses dots
        ("*.example.com", "example.com", False),
        ("*.example.com", "evil-example.com", False),
        ("registry.example.com:5000", "registry.example.com:5000", True),
        ("registry.example.com:5000", "registry.example.com:5001", False),
        ("registry.example.com:5000", "registry.example.com", False),
        ("registry.example.com:*", "registry.example.com:5000", True),
        ("registry.example.com:*", "registry.example.com", False),
        ("Reg*.Example.com", "registry.example.com", True),  # case-insensitive
        ("10.0.*.*:*", "10.0.3.4:5000", True),
        ("[::1]:5000", "[0:0::1]:5000", True),
        ("[::1]", "[::1]:5000", False),
        ("docker.io", "docker.io", True),  # any Docker Hub alias allows Docker Hub
        ("index.docker.io", "registry-1.docker.io", True),
    ],
)
def test_allowed_registry_patterns_match_host_and_port_apart(
    pattern: str, registry: str, allowed: bool
) -> None:
    assert Settings(allowed_registries=(pattern,)).registry_allowed(registry) is allowed


def test_registry_pattern_brackets_are_only_ipv6_addresses() -> None:
    # ``?`` and ``[`` are no glob characters, and a host name cannot hold them.
    for bad in ("reg[0-9].corp", "reg?.corp", "[::1", "[*]:5000", "[::1]x", "a:b:c"):
        with pytest.raises(ValueError, match=r"\S"):
            RegistryPattern.parse(bad)


# --- the CLI's blocked networks ------------------------------------------------------------


def test_cli_blocked_networks_add_to_the_default_or_the_setting() -> None:
    assert cli._blocked_networks([], {}) == DEFAULT_BLOCKED_NETWORKS
    assert cli._blocked_networks(["10.0.0.0/8"], {}) == (*DEFAULT_BLOCKED_NETWORKS, "10.0.0.0/8")
    env = {"IMAGECOPY_BLOCKED_NETWORKS": "192.168.0.0/16"}
    assert cli._blocked_networks(["10.0.0.0/8"], env) == ("192.168.0.0/16", "10.0.0.0/8")
    assert cli._blocked_networks(["none"], env) == ()
    assert cli._blocked_networks(["10.0.0.0/8", "none"], {}) == ("10.0.0.0/8",)
    with pytest.raises(InvalidSpec, match="IMAGECOPY_BLOCKED_NETWORKS: is empty"):
        cli._blocked_networks([], {"IMAGECOPY_BLOCKED_NETWORKS": ""})
    with pytest.raises(InvalidSpec, match="--blocked-network: 'metadata' is not a CIDR"):
        cli._blocked_networks(["metadata"], {})


def test_cli_copy_refuses_a_blocked_registry_without_connecting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """127.0.0.1:9 has no listener; the copy fails on the guard, not on a connect error."""
    monkeypatch.delenv("IMAGECOPY_BLOCKED_NETWORKS", raising=False)
    code = cli.main(
        [
            "copy",
            "127.0.0.1:9/a/b:1",
            "127.0.0.1:9/a/c:1",
            "--plain-http",
            "127.0.0.1:9",
            "--blocked-network",
            "127.0.0.0/8",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "registry not allowed" in err and "127.0.0.0/8" in err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--plain-http", "*.corp"], {}, "--plain-http: '\\*.corp' is not an exact host"),
        (["--insecure", "*"], {}, "--insecure"),
        (["--blocked-network", "x"], {}, "--blocked-network"),
        ([], {"IMAGECOPY_BLOCKED_NETWORKS": ""}, "IMAGECOPY_BLOCKED_NETWORKS"),
    ],
)
def test_cli_refuses_bad_host_lists_and_networks_as_usage_errors(
    args: list[str],
    env: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["copy", "r.io/a:1", "r.io/b:1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err)
