"""Helpers for the copy-engine integration tests: run the real engine against real registries."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from imagecopy.copy import Copier, CopyOptions, CopyReport
from imagecopy.copy.locations import BlobLocations
from imagecopy.copy.refusals import MountRefusals
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.pool import RegistryPool, TransportSettings
from imagecopy.oci.reference import Reference
from imagecopy.oci.retry import Backoff, RetryPolicy
from testkit.registry import RegistryServer

FAST_RETRY = RetryPolicy(attempts=3, backoff=Backoff(base=0.05, cap=0.2, retry_after_max=2.0))


def repo(prefix: str = "t") -> str:
    """A fresh repository name, so tests sharing a registry never see each other's content."""
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def settings_for(*registries: RegistryServer, retry: RetryPolicy = FAST_RETRY) -> TransportSettings:
    plain = {r.host for r in registries if not r.tls}
    # A plain-HTTP token realm is used only when its own host is configured for plain HTTP.
    plain |= {
        f"{r.token_issuer.realm_host}:{r.token_issuer.port}"
        for r in registries
        if r.token_issuer is not None and not r.token_issuer.tls
    }
    ca = next((str(r.ca_file) for r in registries if r.tls and r.ca_file), None)
    return TransportSettings(plain_http=frozenset(plain), ca_file=ca, retry=retry)


def credentials_for(*registries: RegistryServer) -> CredentialStore:
    auths = {}
    for r in registries:
        if r.auth != "none":
            auths[r.host] = {"username": r.username, "password": r.password}
    return CredentialStore.from_docker_config(json.dumps({"auths": auths}))


async def copy(
    src: str,
    dst: str,
    *registries: RegistryServer,
    options: CopyOptions | None = None,
    settings: TransportSettings | None = None,
    credentials: CredentialStore | None = None,
    locations: BlobLocations | None = None,
    refusals: MountRefusals | None = None,
) -> CopyReport:
    async with RegistryPool(settings or settings_for(*registries)) as pool:
        copier = Copier(pool, locations, refusals)
        return await copier.copy(
            Reference.parse(src),
            Reference.parse(dst, default_tag=None),
            options or CopyOptions(),
            credentials if credentials is not None else credentials_for(*registries),
        )


def docker_config(tmp_path: Path, *registries: RegistryServer) -> Path:
    path = tmp_path / "docker-config.json"
    auths = {
        r.host: {"username": r.username, "password": r.password}
        for r in registries
        if r.auth != "none"
    }
    path.write_text(json.dumps({"auths": auths}))
    return path
