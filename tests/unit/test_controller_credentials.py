"""Credential resolution from Secrets of the object's namespace.

The reader here is an in-memory stand-in for the two ``get`` calls; the real API server is
exercised by ``e2e/test_operator.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from imagecopy.controller.credentials import resolve_credentials, store_from_secret
from imagecopy.controller.kube import Forbidden
from imagecopy.controller.spec import parse_spec
from imagecopy.oci.errors import SecretInvalid, SecretNotFound


def docker_secret(auths: dict[str, tuple[str, str]], *, legacy: bool = False) -> dict[str, Any]:
    entries = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
        for host, (u, p) in auths.items()
    }
    if legacy:
        payload, type_, key = entries, "kubernetes.io/dockercfg", ".dockercfg"
    else:
        payload, type_, key = (
            {"auths": entries},
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
        )
    return {"type": type_, "data": {key: base64.b64encode(json.dumps(payload).encode()).decode()}}


class Reader:
    def __init__(
        self,
        secrets: dict[tuple[str, str], Mapping[str, Any]],
        accounts: dict[tuple[str, str], Mapping[str, Any]] | None = None,
        forbidden: set[str] | None = None,
    ) -> None:
        self.secrets = secrets
        self.accounts = accounts or {}
        self.forbidden = forbidden or set()
        self.calls: list[tuple[str, str, str]] = []

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.calls.append(("secret", namespace, name))
        if name in self.forbidden:
            raise Forbidden("no")
        return self.secrets.get((namespace, name))

    async def read_service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.calls.append(("serviceaccount", namespace, name))
        return self.accounts.get((namespace, name))


def spec(src: str, dst: str, src_secret: str | None = None, dst_secret: str | None = None) -> Any:
    source: dict[str, Any] = {"image": src}
    destination: dict[str, Any] = {"image": dst}
    if src_secret:
        source["secretRef"] = {"name": src_secret}
    if dst_secret:
        destination["secretRef"] = {"name": dst_secret}
    return parse_spec({"source": source, "destination": destination})


async def test_secret_refs_are_read_in_the_objects_namespace_only() -> None:
    reader = Reader(
        {
            ("team-a", "pull"): docker_secret({"src.example": ("u1", "p1")}),
            ("team-a", "push"): docker_secret({"dst.example": ("u2", "p2")}, legacy=True),
            ("team-b", "other"): docker_secret({"src.example": ("x", "y")}),
        }
    )
    store = await resolve_credentials(
        reader, "team-a", spec("src.example/a:1", "dst.example/b:1", "pull", "push")
    )
    assert store.get("src.example").username == "u1"
    assert store.get("dst.example").username == "u2"
    assert {ns for _, ns, _ in reader.calls} == {"team-a"}
    with pytest.raises(SecretNotFound, match="other not found in namespace team-a"):
        await resolve_credentials(
            reader, "team-a", spec("src.example/a:1", "dst.example/b:1", "other")
        )


async def test_without_secret_ref_the_default_service_account_pull_secrets_are_used() -> None:
    reader = Reader(
        {("ns", "regcred"): docker_secret({"src.example": ("sa", "pw")})},
        {("ns", "default"): {"imagePullSecrets": [{"name": "missing"}, {"name": "regcred"}]}},
    )
    store = await resolve_credentials(reader, "ns", spec("src.example/a:1", "dst.example/b:1"))
    assert store.get("src.example").username == "sa"
    assert store.get("dst.example").anonymous
    # and with no service account at all: anonymous
    empty = await resolve_credentials(Reader({}), "ns", spec("src.example/a:1", "dst.example/b:1"))
    assert len(empty) == 0


async def test_same_registry_prefers_the_destination_credential() -> None:
    reader = Reader(
        {
            ("ns", "pull"): docker_secret({"reg.example": ("reader", "r")}),
            ("ns", "push"): docker_secret({"reg.example": ("writer", "w")}),
        }
    )
    store = await resolve_credentials(
        reader, "ns", spec("reg.example/dev/a:1", "reg.example/prod/a:1", "pull", "push")
    )
    assert store.get("reg.example").username == "writer"


async def test_forbidden_secret_reads_as_not_found_and_wrong_types_are_invalid() -> None:
    reader = Reader({("ns", "opaque"): {"type": "Opaque", "data": {}}}, forbidden={"locked"})
    with pytest.raises(SecretNotFound, match="forbidden"):
        await resolve_credentials(reader, "ns", spec("a.example/a:1", "b.example/b:1", "locked"))
    with pytest.raises(SecretInvalid, match="type Opaque"):
        await resolve_credentials(reader, "ns", spec("a.example/a:1", "b.example/b:1", "opaque"))


def test_store_from_secret_refuses_broken_payloads_without_echoing_them() -> None:
    bad = {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "%%%"}}
    with pytest.raises(SecretInvalid, match="not base64"):
        store_from_secret(bad, "ns", "s")
    garbage = base64.b64encode(b"hunter2 not json").decode()
    with pytest.raises(SecretInvalid) as info:
        store_from_secret(
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": garbage}},
            "ns",
            "s",
        )
    assert "hunter2" not in str(info.value)
    with pytest.raises(SecretInvalid, match=r"no \.dockerconfigjson key"):
        store_from_secret({"type": "kubernetes.io/dockerconfigjson", "data": {}}, "ns", "s")
