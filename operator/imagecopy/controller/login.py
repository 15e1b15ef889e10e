"""The operator's one login to Kubernetes, shared by Kopf and by ``kube.KubeClient``.

``login_from_environment`` logs in the way ``kubectl`` in a pod or on a workstation would
(the in-cluster service account, else the current kubeconfig context) and returns Kopf's
``ConnectionInfo``: the ``@kopf.on.login`` handler hands it to Kopf, and
``api_configuration`` turns the very same value into the ``kubernetes`` client configuration
of our Secret reads and status patches. One identity, one login, one place that re-logs in
(Kopf, when the API refuses the credentials).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import kopf

__all__ = ["SERVICE_ACCOUNT_NAMESPACE_FILE", "api_configuration", "login_from_environment"]

SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def login_from_environment(*, trust_env: bool = False) -> kopf.ConnectionInfo:
    """The in-cluster service account, else the current context of ``$KUBECONFIG`` (or
    ``~/.kube/config``), exec and auth-provider plugins included.

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
        # Paths only: the library writes kubeconfig "*-data" fields to files of its own.
        ca_path=configuration.ssl_ca_cert,
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


def api_configuration(info: kopf.ConnectionInfo) -> Any:
    """A ``kubernetes.client.Configuration`` that connects exactly as Kopf does with
    ``info``: the same server, CA, client certificate, TLS verification, proxy and
    Authorization header. (The default namespace is Kopf's; every call here names one.)"""
    from kubernetes import client

    if info.certificate_data or info.private_key_data:
        # The client library reads a client certificate from files only; our login always
        # gives paths, so this is a login that was changed without this function.
        raise kopf.LoginError("the Kubernetes client needs the client certificate as files")
    configuration = client.Configuration()
    configuration.host = info.server
    configuration.verify_ssl = not info.insecure
    if info.ca_path:
        configuration.ssl_ca_cert = os.fsdecode(info.ca_path)
    elif info.ca_data:
        configuration.ca_cert_data = _pem(info.ca_data)
    if info.certificate_path:
        configuration.cert_file = os.fsdecode(info.certificate_path)
    if info.private_key_path:
        configuration.key_file = os.fsdecode(info.private_key_path)
    authorization = _authorization(info)
    if authorization:
        # Sent verbatim as the Authorization header (no prefix is configured); every
        # supported library version reads this key.
        configuration.api_key = {"authorization": authorization}
    if info.proxy_url:
        configuration.proxy = info.proxy_url
    return configuration


def _authorization(info: kopf.ConnectionInfo) -> str | None:
    """The Authorization header Kopf sends for ``info``: basic, scheme and token, or a bare
    token as Bearer."""
    if info.username and info.password:
        pair = f"{info.username}:{info.password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"
    if info.scheme and info.token:
        return f"{info.scheme} {info.token}"
    if info.token:
        return f"Bearer {info.token}"
    return info.scheme or None


def _pem(data: str | bytes) -> str:
    """kubeconfig ``*-data`` fields are base64 of PEM; Kopf also accepts PEM itself."""
    text = data.decode("ascii") if isinstance(data, bytes) else data
    if text.startswith("-----BEGIN "):
        return text
    return base64.b64decode(text).decode("ascii")


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None
