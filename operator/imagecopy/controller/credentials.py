"""Registry credentials of one ImageCopy, from Secrets of the object's own namespace.

Rules (docs/reference.md §1, "``secretRef`` rules"):
- ``secretRef`` names a Secret in the ImageCopy's namespace. There is no way to name another
  namespace: the lookup always uses the object's namespace.
- Accepted Secret types: ``kubernetes.io/dockerconfigjson`` and ``kubernetes.io/dockercfg``.
- Without ``secretRef``, the ``imagePullSecrets`` of the namespace's ``default``
  ServiceAccount are tried (in order; missing or unreadable ones are skipped, like the
  kubelet does), then anonymous access.
- Only ``get`` calls are made: Secrets are never listed or watched.

The engine takes one credential per registry. When source and destination are on one
registry and both sides name a Secret, the destination's credential is used (it must push,
and on one registry a push credential normally pulls as well).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from ..oci.credentials import Credential, CredentialStore
from ..oci.errors import SecretInvalid, SecretNotFound
from .kube import Forbidden
from .spec import ImageCopySpec

__all__ = [
    "DOCKERCFG",
    "DOCKERCONFIGJSON",
    "SecretReader",
    "resolve_credentials",
    "store_from_secret",
]

log = logging.getLogger("imagecopy.controller")

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"
_DATA_KEYS = {DOCKERCONFIGJSON: ".dockerconfigjson", DOCKERCFG: ".dockercfg"}
DEFAULT_SERVICE_ACCOUNT = "default"


class SecretReader(Protocol):
    """``get`` of one Secret / ServiceAccount by namespace and name; None when absent.
    May raise ``kube.Forbidden``."""

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


def store_from_secret(secret: Mapping[str, Any], namespace: str, name: str) -> CredentialStore:
    """Credentials in a Secret of an accepted type; ``SecretInvalid`` otherwise."""
    where = f"Secret {namespace}/{name}"
    type_ = secret.get("type")
    key = _DATA_KEYS.get(str(type_))
    if key is None:
        raise SecretInvalid(
            f"{where} has type {type_ or 'Opaque'}; use {DOCKERCONFIGJSON} or {DOCKERCFG}"
        )
    data = secret.get("data") or {}
    encoded = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(encoded, str) or not encoded:
        raise SecretInvalid(f"{where} has no {key} key")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretInvalid(f"{where}: the {key} value is not base64") from None
    try:
        return CredentialStore.from_docker_config(raw)
    except SecretInvalid as exc:
        raise SecretInvalid(f"{where}: {exc.message}") from None


async def _named_secret(reader: SecretReader, namespace: str, name: str) -> CredentialStore:
    try:
        secret = await reader.read_secret(namespace, name)
    except Forbidden:
        raise SecretNotFound(
            f"Secret {namespace}/{name} cannot be read by the operator (forbidden)"
        ) from None
    if secret is None:
        raise SecretNotFound(f"Secret {name} not found in namespace {namespace}")
    return store_from_secret(secret, namespace, name)


async def _pull_secrets(reader: SecretReader, namespace: str) -> CredentialStore:
    """The imagePullSecrets of the namespace's default ServiceAccount, merged in order."""
    try:
        account = await reader.read_service_account(namespace, DEFAULT_SERVICE_ACCOUNT)
    except Forbidden:
        log.warning("cannot read ServiceAccount %s/default (forbidden)", namespace)
        return CredentialStore()
    if account is None:
        return CredentialStore()
    store = CredentialStore()
    for item in account.get("imagePullSecrets") or ():
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            continue
        try:
            secret = await reader.read_secret(namespace, name)
            if secret is None:
                continue
            store = store.merged(store_from_secret(secret, namespace, name))
        except (Forbidden, SecretInvalid) as exc:
            log.warning("skipping imagePullSecret %s/%s: %s", namespace, name, exc)
    return store


async def resolve_credentials(
    reader: SecretReader, namespace: str, spec: ImageCopySpec
) -> CredentialStore:
    """The credentials one copy uses: one per registry (source host, destination host)."""
    source_store = (
        await _named_secret(reader, namespace, spec.source_secret) if spec.source_secret else None
    )
    destination_store = (
        await _named_secret(reader, namespace, spec.destination_secret)
        if spec.destination_secret
        else None
    )
    fallback: CredentialStore | None = None
    if source_store is None or destination_store is None:
        fallback = await _pull_secrets(reader, namespace)
    source_side = source_store if source_store is not None else fallback
    destination_side = destination_store if destination_store is not None else fallback
    assert source_side is not None and destination_side is not None

    source_registry = spec.source.registry
    destination_registry = spec.destination.registry
    chosen: dict[str, Credential] = {}
    source_credential = source_side.get(str(source_registry))
    destination_credential = destination_side.get(str(destination_registry))
    if source_registry == destination_registry:
        credential = (
            destination_credential if not destination_credential.anonymous else source_credential
        )
        if not credential.anonymous:
            chosen[str(destination_registry)] = credential
    else:
        if not source_credential.anonymous:
            chosen[str(source_registry)] = source_credential
        if not destination_credential.anonymous:
            chosen[str(destination_registry)] = destination_credential
    return CredentialStore(chosen)
