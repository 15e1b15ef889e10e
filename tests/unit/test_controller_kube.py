"""The one login (``login``) and the client built from it (``kube``), against a tiny fake
API server."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from imagecopy.controller.kube import Forbidden, KubeClient, KubernetesUnavailable
from imagecopy.controller.login import api_configuration, login_from_environment

PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


class FakeApi(ThreadingHTTPServer):
    """Answers a Secret read and a status patch over keep-alive HTTP/1.1; records what each
    request carried and counts the TCP connections it accepted."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeApi
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        entry = {
            "method": self.command,
            "path": self.path.split("?")[0],
            "authorization": self.headers.get("Authorization"),
            "content_type": self.headers.get("Content-Type"),
            "user_agent": self.headers.get("User-Agent"),
            "body": json.loads(self.rfile.read(length)) if length else None,
        }
        self.server.requests.append(entry)
        return entry

    def _answer(self, code: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        entry = self._record()
        if entry["path"] == "/api/v1/namespaces/ns/secrets/pull":
            self._answer(200, {"kind": "Secret", "metadata": {"name": "pull"}, "type": "Opaque"})
        elif entry["path"].startswith("/api/v1/namespaces/ns/serviceaccounts/default"):
            account = {
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "managedFields": [{"manager": "x"}]},
                "imagePullSecrets": [{"name": "pull"}],
            }
            self._answer(200, account)
        elif entry["path"] == "/api/v1/namespaces/ns/secrets/locked":
            self._answer(403, {"kind": "Status", "code": 403})
        else:
            self._answer(404, {"kind": "Status", "code": 404})

    def do_PATCH(self) -> None:
        entry = self._record()
        if entry["path"].endswith("/namespaces/ns/imagecopies/web/status"):
            self._answer(200, {"kind": "ImageCopy"})
        else:
            self._answer(404, {"kind": "Status", "code": 404})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def kubeconfig(tmp_path: Path, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "contexts": [
                    {
                        "name": "test",
                        "context": {"cluster": "c", "user": "u", "namespace": "team-a"},
                    }
                ],
                "clusters": [{"name": "c", "cluster": {"server": api.url}}],
                "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    return path


def test_login_outside_a_cluster_reads_the_current_kubeconfig_context(
    kubeconfig: Path, api: FakeApi
) -> None:
    info = login_from_environment(trust_env=True)
    assert info.server == api.url
    assert (info.scheme, info.token) == ("Bearer", "kubeconfig-token")
    assert info.default_namespace == "team-a"
    assert info.insecure is False
    assert info.trust_env is True


def test_login_without_cluster_or_kubeconfig_is_a_login_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kopf.LoginError):
        login_from_environment()


async def test_the_client_speaks_with_the_credentials_of_the_login(
    kubeconfig: Path, api: FakeApi
) -> None:
    kube = KubeClient()
    kube.connect(login_from_environment())
    try:
        secret = await kube.read_secret("ns", "pull")
        assert secret is not None and secret["metadata"]["name"] == "pull"
        assert await kube.read_secret("ns", "absent") is None
        assert await kube.patch_status("ns", "web", {"observedGeneration": 2})
        assert not await kube.patch_status("ns", "gone", {"observedGeneration": 2})
    finally:
        kube.close()
    assert {r["authorization"] for r in api.requests} == {"Bearer kubeconfig-token"}
    patch = api.requests[2]
    assert patch["method"] == "PATCH"
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"] == {"status": {"observedGeneration": 2}}


async def test_patches_and_reads_reuse_one_connection(api: FakeApi) -> None:
    """Issue 15: an unread patch answer kept its connection out of the pool, so every status
    patch opened a new connection. Calls one after another now share one."""
    kube = KubeClient()
    kube.connect(kopf.ConnectionInfo(server=api.url, token="t"))
    try:
        for generation in range(5):
            assert await kube.patch_status("ns", "web", {"observedGeneration": generation})
        assert not await kube.patch_status("ns", "gone", {"observedGeneration": 1})
        assert await kube.read_secret("ns", "pull") is not None
        assert await kube.read_secret("ns", "absent") is None
        assert await kube.patch_status("ns", "web", {"observedGeneration": 9})
    finally:
        kube.close()
    assert len(api.requests) == 9
    assert api.connections == 1


async def test_service_accounts_are_cached_for_a_while_and_bounded(api: FakeApi) -> None:
    """A quiet re-check must not GET the namespace's default ServiceAccount every time."""
    now = [0.0]
    kube = KubeClient(clock=lambda: now[0], account_ttl=60.0, account_cache_size=2)
    kube.connect(kopf.ConnectionInfo(server=api.url, token="t"))

    try:
        account = await kube.read_service_account("ns", "default")
        assert account == {"imagePullSecrets": [{"name": "pull"}]}  # only what is used
        now[0] = 59.0
        assert await kube.read_service_account("ns", "default") == account
        assert len(api.requests) == 1
        now[0] = 61.0  # expired: read again
        assert await kube.read_service_account("ns", "default") == account
        assert len(api.requests) == 2
        assert await kube.read_service_account("other", "default") is None  # absent: cached
        assert await kube.read_service_account("other", "default") is None
        assert len(api.requests) == 3
        await kube.read_service_account("third", "default")  # over the bound: LRU goes
        assert len(api.requests) == 4
        await kube.read_service_account("other", "default")
        assert len(api.requests) == 4
        await kube.read_service_account("ns", "default")
        assert len(api.requests) == 5
        # Secrets are never cached.
        await kube.read_secret("ns", "pull")
        await kube.read_secret("ns", "pull")
        assert len(api.requests) == 7
    finally:
        kube.close()


async def test_concurrent_misses_of_one_service_account_share_one_read(api: FakeApi) -> None:
    """When the entry expires, every re-check that comes due before the read returns waits
    for that read instead of making its own; a waiter cancelled meanwhile does not cancel it."""
    now = [0.0]
    kube = KubeClient(clock=lambda: now[0], account_ttl=60.0)
    kube.connect(kopf.ConnectionInfo(server=api.url, token="t"))
    try:
        impatient = asyncio.ensure_future(kube.read_service_account("ns", "default"))
        readers = [kube.read_service_account("ns", "default") for _ in range(50)]
        await asyncio.sleep(0)
        impatient.cancel()
        accounts = await asyncio.gather(*readers)
        assert all(a == {"imagePullSecrets": [{"name": "pull"}]} for a in accounts)
        assert len(api.requests) == 1
        now[0] = 61.0  # expired: the next burst makes one read again
        await asyncio.gather(*(kube.read_service_account("ns", "default") for _ in range(50)))
        assert len(api.requests) == 2
    finally:
        kube.close()


async def test_the_client_names_itself_in_the_user_agent(api: FakeApi) -> None:
    kube = KubeClient()
    kube.connect(kopf.ConnectionInfo(server=api.url, token="t"))
    try:
        await kube.read_secret("ns", "pull")
    finally:
        kube.close()
    assert api.requests[0]["user_agent"].startswith("imagecopy-operator/")


async def test_calls_before_the_first_login_wait_for_it_and_a_relogin_takes_over(
    api: FakeApi,
) -> None:
    kube = KubeClient()
    read = asyncio.create_task(kube.read_secret("ns", "pull"))
    await asyncio.sleep(0.05)
    assert not read.done()  # start-up ran first: the daemon's read waits for the login
    kube.connect(kopf.ConnectionInfo(server=api.url, token="first"))
    assert await asyncio.wait_for(read, 10) is not None
    kube.connect(kopf.ConnectionInfo(server=api.url, scheme="Bearer", token="second"))
    await kube.read_secret("ns", "pull")
    kube.close()
    assert [r["authorization"] for r in api.requests] == ["Bearer first", "Bearer second"]


async def test_a_missing_login_is_reported_as_kubernetes_unavailable() -> None:
    kube = KubeClient(login_timeout=0.01)
    with pytest.raises(KubernetesUnavailable, match="not logged in"):
        await kube.read_secret("ns", "pull")


async def test_forbidden_and_unreachable_reads(api: FakeApi) -> None:
    kube = KubeClient()
    kube.connect(kopf.ConnectionInfo(server=api.url, token="t"))
    with pytest.raises(Forbidden):
        await kube.read_secret("ns", "locked")
    kube.connect(kopf.ConnectionInfo(server="http://127.0.0.1:1", token="t"))
    with pytest.raises(KubernetesUnavailable, match="reading Secret ns/pull failed"):
        await kube.read_secret("ns", "pull")
    kube.close()


def test_api_configuration_mirrors_every_connection_field() -> None:
    info = kopf.ConnectionInfo(
        server="https://api.example:6443",
        ca_data=base64.b64encode(PEM.encode()).decode(),
        insecure=True,
        username="admin",
        password="s3cret",
        proxy_url="http://proxy.example:3128",
    )
    configuration = api_configuration(info)
    assert configuration.host == "https://api.example:6443"
    assert configuration.ca_cert_data == PEM
    assert configuration.verify_ssl is False
    assert configuration.proxy == "http://proxy.example:3128"
    basic = base64.b64encode(b"admin:s3cret").decode()
    assert configuration.auth_settings()["BearerToken"]["value"] == f"Basic {basic}"


def test_api_configuration_refuses_client_certificate_data() -> None:
    with pytest.raises(kopf.LoginError, match="as files"):
        api_configuration(kopf.ConnectionInfo(server="https://x", certificate_data=PEM))


def test_api_configuration_uses_paths_as_given() -> None:
    info = kopf.ConnectionInfo(
        server="https://10.0.0.1",
        ca_path="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        token="sa-token",
        certificate_path="/etc/client.crt",
        private_key_path="/etc/client.key",
    )
    configuration = api_configuration(info)
    assert configuration.ssl_ca_cert == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert configuration.verify_ssl is True
    assert (configuration.cert_file, configuration.key_file) == (
        "/etc/client.crt",
        "/etc/client.key",
    )
    assert configuration.auth_settings()["BearerToken"]["value"] == "Bearer sa-token"
