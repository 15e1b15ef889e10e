"""The operator's own Kubernetes API calls beyond what Kopf does for the watched resource:
``get`` of Secrets and ServiceAccounts, and merge patches of ``ImageCopy`` status.

Uses the synchronous ``kubernetes`` client in a worker thread (``kubernetes_asyncio`` is not a
dependency), configured the way Kopf logs in: in-cluster service account, else the
kubeconfig (``KUBECONFIG`` or ``~/.kube/config``). Only ``get`` is ever called on Secrets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import urllib3

from ..oci.errors import ImageCopyError

__all__ = ["GROUP", "PLURAL", "VERSION", "KubeClient", "KubernetesUnavailable"]

GROUP = "imagecopy.dev"
VERSION = "v1alpha1"
PLURAL = "imagecopies"
FIELD_MANAGER = "imagecopy-operator"
_TIMEOUT = (10.0, 30.0)


class KubernetesUnavailable(ImageCopyError):
    """The Kubernetes API did not answer a read the copy needs; worth another try."""

    reason = "InternalError"
    label = "kubernetes API unavailable"
    transient = True


class Forbidden(Exception):
    """The API refused the operator (RBAC)."""


class KubeClient:
    """A few typed calls over one ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls) -> KubeClient:
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        self.api_client.close()

    # -- reads ------------------------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Secret as a JSON object, None when it does not exist.

        Raises ``Forbidden`` when RBAC denies it, ``KubernetesUnavailable`` on other errors.
        """
        return await asyncio.to_thread(
            self._read, self._core.read_namespaced_secret, namespace, name, "Secret"
        )

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await asyncio.to_thread(
            self._read,
            self._core.read_namespaced_service_account,
            namespace,
            name,
            "ServiceAccount",
        )

    def _read(self, method: Any, namespace: str, name: str, kind: str) -> Mapping[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(name, namespace, _preload_content=False, _request_timeout=_TIMEOUT)
            document = json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(f"reading {kind} {namespace}/{name} is forbidden") from None
            raise KubernetesUnavailable(
                f"reading {kind} {namespace}/{name} failed with {exc.status}"
            ) from None
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
            raise KubernetesUnavailable(
                f"reading {kind} {namespace}/{name} failed: {type(exc).__name__}"
            ) from None
        return document if isinstance(document, Mapping) else None

    # -- status -----------------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """JSON-merge-patch ``status`` through the ``/status`` subresource.

        Returns False when the object is gone. Other failures raise ``KubernetesUnavailable``.
        """
        return await asyncio.to_thread(self._patch_status, namespace, name, dict(status))

    def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self._custom.patch_namespaced_custom_object_status(
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
            raise KubernetesUnavailable(
                f"writing the status of {namespace}/{name} failed with {exc.status}"
            ) from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise KubernetesUnavailable(
                f"writing the status of {namespace}/{name} failed: {type(exc).__name__}"
            ) from None
        return True
