"""pytest fixtures for real registries, token issuer, peers and the net proxy.

The fixtures are thin wrappers over :mod:`testkit`, which owns the servers and helpers.
Imported by ``tests/conftest.py`` (``from tests.support.fixtures import *``); the e2e test
modules that need registries do the same. Session-scoped registries are started once; tests
stay isolated by using unique repository names (:func:`unique_repo`).

Missing binaries: the fixture calls ``pytest.skip`` with a reason, unless the environment
variable ``IMAGECOPY_REQUIRE_TOOLS`` is set (CI), in which case it fails.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.netproxy import NetProxy
from testkit.registry import RegistryServer, find_registry_binary
from testkit.token_issuer import TokenIssuer
from testkit.tools import TOOLS_BIN, find_tool

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "READER_PASSWORD",
    "READER_USER",
    "UniqueRepo",
    "docker_config_dir",
    "netproxy",
    "peer_tools",
    "registry_ggcr",
    "registry_tls",
    "registry_v2",
    "registry_v2_basic",
    "registry_v3",
    "registry_v3_token",
    "require_tool",
    "start_registry",
    "token_issuer",
    "tools_on_path",
    "unique_repo",
]

ADMIN_USER = "alice"
ADMIN_PASSWORD = "alice-" + secrets.token_hex(6)
READER_USER = "reader"
READER_PASSWORD = "reader-" + secrets.token_hex(6)


def require_tool(name: str, path: str | None) -> str:
    """Return ``path`` or skip (fail under ``IMAGECOPY_REQUIRE_TOOLS``) with a reason."""
    if path:
        return path
    reason = f"{name} is not installed (run scripts/install-tools.sh)"
    if os.environ.get("IMAGECOPY_REQUIRE_TOOLS"):
        pytest.fail(reason + " and IMAGECOPY_REQUIRE_TOOLS is set", pytrace=False)
    pytest.skip(reason)


_REGISTRY_NAMES = {
    "v2": "docker-registry (distribution 2.8.2)",
    "v3": "registry (distribution v3)",
    "ggcr": "ggcr-registry (go-containerregistry pkg/registry)",
}


def _registry_binary(impl: str) -> str:
    name = _REGISTRY_NAMES[impl]
    return require_tool(name, find_registry_binary(impl))  # type: ignore[arg-type]


@pytest.fixture(scope="session", autouse=True)
def tools_on_path() -> Iterator[Path]:
    """Put ``.tools/bin`` first on ``PATH`` for the whole session."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{TOOLS_BIN}{os.pathsep}{old}"
    yield TOOLS_BIN
    os.environ["PATH"] = old


@pytest.fixture(scope="session")
def peer_tools() -> dict[str, str]:
    """Paths of ``crane`` and ``skopeo`` (skips when missing)."""
    return {name: require_tool(name, find_tool(name)) for name in ("crane", "skopeo")}


def _start(request: pytest.FixtureRequest, **kw: Any) -> RegistryServer:
    impl = kw.get("impl", "v2")
    _registry_binary(impl)
    reg = RegistryServer(**kw)
    request.addfinalizer(reg.stop)
    return reg.start()


@pytest.fixture(scope="session")
def token_issuer() -> Iterator[TokenIssuer]:
    """The session's token issuer (plain HTTP). Users: ``alice`` (everything) and ``reader``
    (pull only). ``issuer.requests`` records every token request; call ``issuer.clear()``
    or filter by your repository names."""
    issuer = TokenIssuer(
        users={ADMIN_USER: ADMIN_PASSWORD, READER_USER: READER_PASSWORD},
        acl={ADMIN_USER: {"*": ["*"]}, READER_USER: {"*": ["pull"]}},
    ).start()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="session")
def registry_v2(request: pytest.FixtureRequest) -> RegistryServer:
    """distribution 2.8.2, no auth, plain HTTP."""
    return _start(request, impl="v2")


@pytest.fixture(scope="session")
def registry_v3(request: pytest.FixtureRequest) -> RegistryServer:
    """distribution v3, no auth, plain HTTP."""
    return _start(request, impl="v3")


@pytest.fixture(scope="session")
def registry_ggcr(request: pytest.FixtureRequest) -> RegistryServer:
    """go-containerregistry's registry: no auth, plain HTTP, referrers API, no mounts."""
    return _start(request, impl="ggcr")


@pytest.fixture(scope="session")
def registry_v2_basic(request: pytest.FixtureRequest) -> RegistryServer:
    """distribution 2.8.2 with htpasswd (bcrypt) basic auth: ``username``/``password``."""
    return _start(request, impl="v2", auth="basic", username=ADMIN_USER, password=ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def registry_v3_token(request: pytest.FixtureRequest, token_issuer: TokenIssuer) -> RegistryServer:
    """distribution v3 with Bearer token auth from :func:`token_issuer` (user ``alice``)."""
    return _start(
        request,
        impl="v3",
        auth="token",
        token_issuer=token_issuer,
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
    )


@pytest.fixture(scope="session")
def registry_tls(request: pytest.FixtureRequest) -> RegistryServer:
    """distribution 2.8.2 over HTTPS with a test CA (``ca_file``), no auth."""
    return _start(request, impl="v2", tls=True)


@pytest.fixture
def start_registry(request: pytest.FixtureRequest) -> Callable[..., RegistryServer]:
    """Factory for a private registry: ``start_registry(impl="v3", auth="token", tls=True)``.
    Keyword arguments are :class:`RegistryServer`'s. Stopped when the test ends."""

    def factory(**kw: Any) -> RegistryServer:
        return _start(request, **kw)

    return factory


@pytest.fixture
def netproxy(request: pytest.FixtureRequest) -> Callable[..., NetProxy]:
    """Factory: ``netproxy(registry.host, delay_ms=10)`` → a started :class:`NetProxy`
    (``.address`` is its host:port). Stopped when the test ends."""

    def factory(upstream: str, **kw: Any) -> NetProxy:
        proxy = NetProxy(upstream, **kw)
        request.addfinalizer(proxy.stop)
        proxy.start()
        return proxy

    return factory


class UniqueRepo:
    """Callable giving fresh repository names for one test: ``unique_repo("src")`` →
    ``t/<test-name>-<hex>/src``. ``str(unique_repo)`` is the test's base name."""

    def __init__(self, test_name: str) -> None:
        slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"
        self.base = f"t/{slug}-{secrets.token_hex(3)}"
        self._n = 0

    def __call__(self, suffix: str | None = None) -> str:
        if suffix is None:
            self._n += 1
            suffix = f"r{self._n}"
        suffix = re.sub(r"[^a-z0-9._/-]+", "-", suffix.lower()).strip("-./") or "r"
        return f"{self.base}/{suffix}"

    def __str__(self) -> str:
        return self.base


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> UniqueRepo:
    """Unique repository names for this test (see :class:`UniqueRepo`)."""
    return UniqueRepo(request.node.name)


@pytest.fixture
def docker_config_dir() -> Iterator[Path]:
    """An empty temp dir to write docker ``config.json`` files into."""
    with tempfile.TemporaryDirectory(prefix="dockercfg-") as d:
        yield Path(d)
