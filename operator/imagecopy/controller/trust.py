"""The public keys ``spec.verify`` trusts, from a Secret of the object's own namespace.

The Secret (any type; Flux's convention) holds one PEM public key per entry whose name ends
in ``.pub``; other entries are ignored. Keys are reported as ``<secret>/<entry>`` (e.g.
``cosign-keys/release.pub``). Only ``get`` is used, like every Secret read of the operator.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from ..copy.verify import TrustedKey, Verification, VerifyPolicy, load_key
from ..oci.errors import InvalidSpec, SecretInvalid, SecretNotFound
from .credentials import SecretReader
from .kube import Forbidden
from .spec import VerifySpec

__all__ = ["keys_from_secret", "verify_policy"]


def keys_from_secret(
    secret: Mapping[str, object], namespace: str, name: str
) -> tuple[TrustedKey, ...]:
    """The ``*.pub`` keys of a Secret; ``SecretInvalid`` when there is none or one is bad."""
    where = f"Secret {namespace}/{name}"
    data = secret.get("data") or {}
    if not isinstance(data, Mapping):
        raise SecretInvalid(f"{where} has no data")
    keys: list[TrustedKey] = []
    for entry in sorted(k for k in data if isinstance(k, str) and k.endswith(".pub")):
        value = data[entry]
        try:
            pem = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            raise SecretInvalid(f"{where}: the {entry} value is not base64") from None
        try:
            keys.append(load_key(f"{name}/{entry}", pem))
        except InvalidSpec as exc:
            raise SecretInvalid(f"{where}: {exc.message}") from None
    if not keys:
        raise SecretInvalid(f"{where} has no entry ending in .pub (a PEM public key)")
    return tuple(keys)


async def verify_policy(
    reader: SecretReader,
    namespace: str,
    verify: VerifySpec,
    status: Mapping[str, object] | None,
) -> VerifyPolicy:
    """The policy of one copy: the Secret's keys, and the verdict the status recorded."""
    try:
        secret = await reader.read_secret(namespace, verify.secret)
    except Forbidden:
        raise SecretNotFound(
            f"Secret {namespace}/{verify.secret} cannot be read by the operator (forbidden)"
        ) from None
    if secret is None:
        raise SecretNotFound(f"Secret {verify.secret} not found in namespace {namespace}")
    keys = keys_from_secret(secret, namespace, verify.secret)
    known = Verification.from_json((status or {}).get("verification"))
    return VerifyPolicy(keys, known)
