"""The operator's own Kubernetes API calls beyond what Kopf does for the watched resource:
``get`` of Secrets and ServiceAccounts, and merge patches of ``ImageCopy`` status
(docs/reference.md §2, §9).

The client has no login of its own: ``connect`` takes the ``ConnectionInfo`` of Kopf's login
(``login``), and every re-login connects it again.

ServiceAccount reads are cached per namespace and name for ``SERVICE_ACCOUNT_TTL`` seconds
(at most ``SERVICE_ACCOUNT_CACHE_SIZE`` entries, least recently used dropped first; only
``imagePullSecrets`` is kept): every check of every object without ``secretRef`` needs the
namespace's ``default`` account, and a quiet re-check should cost one API call, its status
patch (issue 15). Concurrent misses of one account share one read. Secrets are never cached. Calls made before the first login wait
for it.

Uses the synchronous ``kubernetes`` client in a worker thread (``kubernetes_asyncio`` is not a
dependency). Only ``get`` is ever called on Secrets.

Connections are kept: every answer is read to its end and its connection handed back to
urllib3's pool (``_drain``), so status patches and reads reuse a few TLS connections instead of
opening one per call. The client names itself ``imagecopy-operator/<version>`` (User-Agent),
which is how API server audit logs tell its calls from Kopf's (``kopf/<version>``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import kopf
import urllib3

from .. import __version__
from ..oci.errors import ImageCopyError
from .login import api_configuration

__all__ = [
    "GROUP",
    "PLURAL",
    "SERVICE_ACCOUNT_CACHE_SIZE",
    "SERVICE_ACCOUNT_TTL",
    "VERSION",
    "Forbidden",
    "KubeClient",
    "KubernetesUnavailable",
]

GROUP = "imagecopy.dev"
VERSION = "v1alpha1"
PLURAL = "imagecopies"
FIELD_MANAGER = "imagecopy-operator"
_TIMEOUT = (10.0, 30.0)
USER_AGENT = f"imagecopy-operator/{__version__}"
#: Seconds a ServiceAccount read is reused, and how many are kept.
SERVICE_ACCOUNT_TTL = 60.0
SERVICE_ACCOUNT_CACHE_SIZE = 1024


class KubernetesUnavailable(ImageCopyError):
    """The Kubernetes API did not answer a call the copy needs; worth another try."""

    label = "kubernetes API unavailable"


class Forbidden(Exception):
    """The API refused the operator (RBAC)."""


class _Apis:
    """The typed API groups over one ``ApiClient`` (one login)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)


class KubeClient:
    """A few typed calls over the ``kubernetes`` client, connected by ``connect``."""

    def __init__(
        self,
        *,
        login_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        account_ttl: float = SERVICE_ACCOUNT_TTL,
        account_cache_size: int = SERVICE_ACCOUNT_CACHE_SIZE,
    ) -> None:
        self._login_timeout = login_timeout
        self._clock = clock
        self._account_ttl = account_ttl
        self._account_cache_size = account_cache_size
        #: (namespace, name) → (expiry, the account's imagePullSecrets part or None).
        self._accounts: OrderedDict[tuple[str, str], tuple[float, Mapping[str, Any] | None]] = (
            OrderedDict()
        )
        #: The account reads under way, by key (``read_service_account``).
        self._account_reads: dict[tuple[str, str], asyncio.Future[Mapping[str, Any] | None]] = {}
        self._apis: _Apis | None = None
        self._connected = asyncio.Event()
        # Clients of earlier logins: a call in a worker thread may still be using one.
        self._retired: list[Any] = []

    @property
    def connected(self) -> bool:
        return self._apis is not None

    def connect(self, info: kopf.ConnectionInfo) -> None:
        """Use the credentials of a (new) login from now on. Call it on the event loop."""
        from kubernetes import client

        api_client = client.ApiClient(api_configuration(info))
        api_client.user_agent = USER_AGENT
        apis = _Apis(api_client)
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
        """The ServiceAccount's ``imagePullSecrets`` (``{"imagePullSecrets": [...]}``), None
        when it does not exist; cached (module docstring). Errors as ``read_secret``; they
        are not cached."""
        key = (namespace, name)
        now = self._clock()
        cached = self._accounts.get(key)
        if cached is not None and cached[0] > now:
            self._accounts.move_to_end(key)
            return cached[1]
        # One read per account at a time: when the entry expires, every re-check that comes
        # due meanwhile waits for that read (3,000 objects in one namespace made 247 reads
        # of one account in a quiet minute without this). A waiter's cancellation leaves the
        # read to the others.
        pending = self._account_reads.get(key)
        if pending is None:
            pending = self._account_reads[key] = asyncio.ensure_future(self._read_account(key))
            pending.add_done_callback(lambda done: self._account_read_done(key, done))
        return await asyncio.shield(pending)

    def _account_read_done(
        self, key: tuple[str, str], done: asyncio.Future[Mapping[str, Any] | None]
    ) -> None:
        if self._account_reads.get(key) is done:
            del self._account_reads[key]
        if not done.cancelled():
            done.exception()  # retrieved: the waiters, if any are left, have it raised

    async def _read_account(self, key: tuple[str, str]) -> Mapping[str, Any] | None:
        namespace, name = key
        what = f"reading ServiceAccount {namespace}/{name}"
        apis = await self._current(what)
        account = await asyncio.to_thread(
            _read, apis.core.read_namespaced_service_account, namespace, name, what
        )
        kept = None if account is None else {"imagePullSecrets": account.get("imagePullSecrets")}
        self._accounts[key] = (self._clock() + self._account_ttl, kept)
        self._accounts.move_to_end(key)
        while len(self._accounts) > self._account_cache_size:
            self._accounts.popitem(last=False)
        return kept

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
        document = json.loads(_drain(response))
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
    """One PATCH straight through the client's connection pool: the generated
    ``patch_namespaced_custom_object_status`` validates its arguments (pydantic) and walks the
    body to serialize it, about a third of the operator's CPU per status write (issue 15)."""
    api_client = apis.api_client
    path = (
        f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}/"
        f"{quote(name, safe='')}/status"
    )
    headers = {
        **api_client.default_headers,
        "Accept": "application/json",
        "Content-Type": "application/merge-patch+json",
    }
    api_client.update_params_for_auth(headers, [], ["BearerToken"], path, "PATCH", None)
    url = f"{api_client.configuration.host}{path}?fieldManager={FIELD_MANAGER}"
    body = json.dumps({"status": status}, separators=(",", ":")).encode()
    try:
        response = api_client.rest_client.pool_manager.request(
            "PATCH",
            url,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(connect=_TIMEOUT[0], read=_TIMEOUT[1]),
            preload_content=False,
        )
        # Unread, the answer would keep its connection out of the pool for good: the next
        # call would open a new TCP+TLS connection (issue 15).
        _drain(response)
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise KubernetesUnavailable(f"{what} failed: {type(exc).__name__}") from None
    if response.status == 404:
        return False
    if not 200 <= response.status < 300:
        raise KubernetesUnavailable(f"{what} failed with {response.status}")
    return True


def _drain(response: Any) -> bytes:
    """The whole body of an unpreloaded answer; its connection goes back to the pool."""
    try:
        return bytes(response.data)
    finally:
        response.release_conn()
