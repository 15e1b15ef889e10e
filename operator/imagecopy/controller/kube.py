"""The operator's one login to Kubernetes, and its own API calls beyond what Kopf does for
the watched resource: ``get`` of Secrets and ServiceAccounts, and merge patches of
``ImageCopy`` status (docs/reference.md §2, §9).

One login: ``login_from_environment`` (the in-cluster service account, else the kubeconfig
of ``KUBECONFIG`` or ``~/.kube/config``) is what the ``@kopf.on.login`` handler returns to
Kopf, and ``KubeClient.connect`` builds this module's ``kubernetes`` client from that same
``ConnectionInfo``. Kopf runs the login again when the API refuses its credentials; every
new ``ConnectionInfo`` reconnects this client too. Calls made before the first login wait
for it.

Uses the synchronous ``kubernetes`` client in a worker thread (``kubernetes_asyncio`` is not a
dependency). Only ``get`` is ever called on Secrets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import urllib3

from ..oci.errors import ImageCopyError

__all__ = [
    "GROUP",
    "PLURAL",
    "SERVICE_ACCOUNT_NAMESPACE_FILE",
    "VERSION",
    "Forbidden",
    "KubeClient",
    "KubernetesUnavailable",
    "PemFiles",
    "api_configuration",
    "login_from_environment",
]

GROUP = "imagecopy.dev"
VERSION = "v1alpha1"
PLURAL = "imagecopies"
FIELD_MANAGER = "imagecopy-operator"
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_TIMEOUT = (10.0, 30.0)


class KubernetesUnavailable(ImageCopyError):
    """The Kubernetes API did not answer a call the copy needs; worth another try."""

    label = "kubernetes API unavailable"


class Forbidden(Exception):
    """The API refused the operator (RBAC)."""


# -- the login --------------------------------------------------------------------------------


def login_from_environment(*, trust_env: bool = False) -> kopf.ConnectionInfo:
    """Log in the way ``kubectl`` in a pod or on a workstation would: the in-cluster service
    account, else the current kubeconfig context (exec and auth-provider plugins included).

    Blocking (files, maybe a credential plugin): run it in a thread. Raises
    ``kopf.LoginError`` when neither is available.
    """
    from kubernetes import client, config

    # A private Configuration: the client library's process-wide default stays untouched.
    configuration = client.Configuration()
    default_namespace: str | None = None
    try:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        default_namespace = _read_text(SERVICE_ACCOUNT_NAMESPACE_FILE)
    except config.ConfigException:
        # Read at login time (the library reads $KUBECONFIG once, at import).
        kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
            _, context = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=kubeconfig
            )
            default_namespace = ((context or {}).get("context") or {}).get("namespace")
        except (config.ConfigException, OSError) as exc:
            raise kopf.LoginError(
                "cannot log in to Kubernetes: no in-cluster service account and no usable "
                f"kubeconfig ({type(exc).__name__})"
            ) from None

    # The library keeps the whole Authorization value ("bearer <token>") under one key
    # (renamed in kubernetes 36); a credential plugin's token is fetched by this very call.
    header = (
        configuration.get_api_key_with_prefix("BearerToken")
        or configuration.get_api_key_with_prefix("authorization")
        or ""
    )
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,  # may be a temporary file the library wrote
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        default_namespace=default_namespace or None,
        trust_env=trust_env,
    )


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None


def api_configuration(info: kopf.ConnectionInfo, files: PemFiles) -> Any:
    """A ``kubernetes.client.Configuration`` that connects exactly as Kopf does with
    ``info``: the same server, CA, client certificate, TLS verification and Authorization
    header. Certificate and key data are written to ``files`` (the library wants paths)."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = info.server
    configuration.verify_ssl = not info.insecure
    if info.ca_path:
        configuration.ssl_ca_cert = os.fsdecode(info.ca_path)
    elif info.ca_data:
        configuration.ca_cert_data = _pem(info.ca_data)
    configuration.cert_file = _path(info.certificate_path) or files.write(
        "client.crt", info.certificate_data
    )
    configuration.key_file = _path(info.private_key_path) or files.write(
        "client.key", info.private_key_data
    )
    authorization = _authorization(info)
    if authorization:
        # Sent verbatim as the Authorization header (no prefix is configured); every
        # supported library version reads this key.
        configuration.api_key = {"authorization": authorization}
    if info.proxy_url:
        configuration.proxy = info.proxy_url
    return configuration


def _authorization(info: kopf.ConnectionInfo) -> str | None:
    """The Authorization header value Kopf sends for ``info`` (basic, scheme + token,
    bare token as Bearer)."""
    if info.username and info.password:
        pair = f"{info.username}:{info.password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"
    if info.scheme and info.token:
        return f"{info.scheme} {info.token}"
    if info.token:
        return f"Bearer {info.token}"
    return info.scheme or None


def _path(value: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> str | None:
    return os.fsdecode(value) if value else None


def _pem(data: str | bytes) -> str:
    """kubeconfig ``*-data`` fields are base64 of PEM; Kopf also accepts PEM itself."""
    text = data.decode("ascii") if isinstance(data, bytes) else data
    if text.startswith("-----BEGIN "):
        return text
    return base64.b64decode(text).decode("ascii")


class PemFiles:
    """Certificate and key data as files (the library wants paths), in a private
    directory removed on ``close``."""

    def __init__(self) -> None:
        self._directory: str | None = None
        self._count = 0

    def write(self, name: str, data: str | bytes | None) -> str | None:
        if not data:
            return None
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="imagecopy-kube-")  # mode 0700
        self._count += 1
        path = os.path.join(self._directory, f"{self._count}-{name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(_pem(data))
        return path

    def close(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


# -- the client -------------------------------------------------------------------------------


class _Apis:
    """The typed API groups over one ``ApiClient`` (one login)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)


class KubeClient:
    """A few typed calls over the ``kubernetes`` client, connected by ``connect``."""

    def __init__(self, *, login_timeout: float = 60.0) -> None:
        self._login_timeout = login_timeout
        self._apis: _Apis | None = None
        self._connected = asyncio.Event()
        # Clients of earlier logins: a call in a worker thread may still be using one.
        self._retired: list[Any] = []
        self._files = PemFiles()

    @property
    def connected(self) -> bool:
        return self._apis is not None

    def connect(self, info: kopf.ConnectionInfo) -> None:
        """Use the credentials of a (new) login from now on. Call it on the event loop."""
        from kubernetes import client

        apis = _Apis(client.ApiClient(api_configuration(info, self._files)))
        if self._apis is not None:
            self._retired.append(self._apis.api_client)
        self._apis = apis
        self._connected.set()

    def close(self) -> None:
        for api_client in [*self._retired, *([self._apis.api_client] if self._apis else [])]:
            api_client.close()
        self._retired.clear()
        self._apis = None
        self._connected.clear()
        self._files.close()

    async def _current(self, what: str) -> _Apis:
        """The API of the latest login; waits for the first one."""
        if self._apis is None:
            try:
                await asyncio.wait_for(self._connected.wait(), self._login_timeout)
            except TimeoutError:
                raise KubernetesUnavailable(
                    f"{what} failed: the operator has not logged in to Kubernetes yet"
                ) from None
        assert self._apis is not None
        return self._apis

    # -- reads ------------------------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Secret as a JSON object, None when it does not exist.

        Raises ``Forbidden`` when RBAC denies it, ``KubernetesUnavailable`` on other errors.
        """
        what = f"reading Secret {namespace}/{name}"
        apis = await self._current(what)
        return await asyncio.to_thread(
            _read, apis.core.read_namespaced_secret, namespace, name, what
        )

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        what = f"reading ServiceAccount {namespace}/{name}"
        apis = await self._current(what)
        return await asyncio.to_thread(
            _read, apis.core.read_namespaced_service_account, namespace, name, what
        )

    # -- status -----------------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """JSON-merge-patch ``status`` through the ``/status`` subresource.

        Returns False when the object is gone. Other failures raise ``KubernetesUnavailable``.
        """
        what = f"writing the status of {namespace}/{name}"
        apis = await self._current(what)
        return await asyncio.to_thread(_patch_status, apis, namespace, name, dict(status), what)


def _read(
    method: Callable[..., Any], namespace: str, name: str, what: str
) -> Mapping[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        response = method(name, namespace, _preload_content=False, _request_timeout=_TIMEOUT)
        document = json.loads(response.data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            raise Forbidden(f"{what} is forbidden") from None
        raise KubernetesUnavailable(f"{what} failed with {exc.status}") from None
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
        raise KubernetesUnavailable(f"{what} failed: {type(exc).__name__}") from None
    return document if isinstance(document, Mapping) else None


def _patch_status(
    apis: _Apis, namespace: str, name: str, status: dict[str, Any], what: str
) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        apis.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=_TIMEOUT,
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise KubernetesUnavailable(f"{what} failed with {exc.status}") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise KubernetesUnavailable(f"{what} failed: {type(exc).__name__}") from None
    return True
