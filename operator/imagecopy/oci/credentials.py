"""Registry credentials and the Docker config files they come from.

This module owns ``Credential`` (what one registry login holds, never shown by ``repr``), its
``CredentialKey`` (a fingerprint that names it in caches without holding it) and
``CredentialStore`` (credentials by normalised registry, read from a Docker ``config.json``, a
legacy ``.dockercfg`` or the equivalent Kubernetes Secret payloads).

Only inline entries are read: ``auth`` (base64 ``user:password``), ``username`` +
``password``, ``identitytoken`` and ``registrytoken``. ``credsStore`` and ``credHelpers`` are
ignored on purpose: running helper programs is not possible inside the operator and would make
the CLI behave differently from it. Entries a helper manages (empty objects) are skipped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagecopy.oci.bounds import load_json
from imagecopy.oci.errors import InvalidReference, SecretInvalid
from imagecopy.oci.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, Registry, normalize_registry

__all__ = [
    "ANONYMOUS",
    "Credential",
    "CredentialKey",
    "CredentialStore",
    "normalize_registry_key",
]

# Top-level keys of config.json besides "auths"; their presence means "not a legacy .dockercfg".
_CONFIG_JSON_KEYS = frozenset(
    {
        "credsStore",
        "credHelpers",
        "HttpHeaders",
        "psFormat",
        "imagesFormat",
        "detachKeys",
        "currentContext",
        "plugins",
        "proxies",
        "experimental",
        "stackOrchestrator",
        "aliases",
        "features",
    }
)

# Drawn once per process: a fingerprint means something only inside the process that made it,
# so one that reaches a log or a core dump cannot be used to test password guesses offline.
_FINGERPRINT_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class CredentialKey:
    """Names one credential in a cache (tokens are never shared between two of them) without
    holding it: a keyed SHA-256 over every field, secrets included."""

    fingerprint: str

    def __repr__(self) -> str:
        return f"CredentialKey({self.fingerprint[:12]})"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class Credential:
    """What one registry login holds. Secrets never appear in ``repr`` or ``str``."""

    username: str = ""
    password: str = field(default="", repr=False)
    #: Docker's ``identitytoken``: an OAuth2 refresh token exchanged at the token endpoint.
    identity_token: str = field(default="", repr=False)
    #: Docker's ``registrytoken``: a bearer token sent to the registry as is.
    registry_token: str = field(default="", repr=False)

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    @property
    def cache_key(self) -> CredentialKey:
        """This credential's identity for caches: equal for equal credentials, different when
        any field differs (anonymous included), and not reversible to the secrets."""
        # JSON keeps field boundaries: ("a:b", "") and ("a", ":b") must not collide.
        fields = json.dumps(
            [self.username, self.password, self.identity_token, self.registry_token]
        ).encode()
        return CredentialKey(hmac.new(_FINGERPRINT_KEY, fields, hashlib.sha256).hexdigest())

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}"]
        for name in ("password", "identity_token", "registry_token"):
            if getattr(self, name):
                parts.append(f"{name}=<set>")
        return f"Credential({', '.join(parts)})"

    __str__ = __repr__


ANONYMOUS = Credential()


def normalize_registry_key(key: str) -> str:
    """The registry a Docker config key names, normalised like ``Reference.registry``.

    Strips a scheme and any path (``https://index.docker.io/v1/`` → Docker Hub), lower-cases
    the host and folds Docker Hub aliases. Text that is not a host name is returned
    lower-cased and stripped, so lookups simply miss instead of failing.
    """
    text = key.strip()
    lowered = text.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    host = text.split("/", 1)[0]
    try:
        return normalize_registry(host)
    except InvalidReference:
        lowered_host = host.lower()
        return DOCKER_HUB if lowered_host in DOCKER_HUB_ALIASES else lowered_host


def _key(registry: Registry | str) -> str:
    # A Registry is normalised already: its text is the store's key.
    return str(registry) if isinstance(registry, Registry) else normalize_registry_key(registry)


def _string_field(entry: Mapping[str, Any], name: str, registry: str) -> str:
    value = entry.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SecretInvalid(
            f"the docker config entry for {registry} has a non-string {name!r} field"
        )
    return value


def _credential_from_entry(key: str, entry: Any) -> Credential:
    registry = normalize_registry_key(key)
    if not isinstance(entry, Mapping):
        raise SecretInvalid(f"the docker config entry for {registry} is not a JSON object")
    username = _string_field(entry, "username", registry)
    password = _string_field(entry, "password", registry)
    auth = _string_field(entry, "auth", registry).strip()
    if auth:
        try:
            decoded = base64.b64decode(auth + "=" * (-len(auth) % 4), validate=True).decode()
        except (binascii.Error, ValueError):
            raise SecretInvalid(
                f"the 'auth' field of the docker config entry for {registry} is not valid "
                "base64 of UTF-8 text"
            ) from None
        user, colon, secret = decoded.partition(":")
        if not colon:
            raise SecretInvalid(
                f"the 'auth' field of the docker config entry for {registry} does not decode "
                "to username:password"
            )
        username, password = user, secret
    return Credential(
        username=username,
        password=password,
        identity_token=_string_field(entry, "identitytoken", registry),
        registry_token=_string_field(entry, "registrytoken", registry),
    )


class CredentialStore:
    """Credentials by normalised registry; immutable once built."""

    def __init__(self, credentials: Mapping[str, Credential] | None = None) -> None:
        self._credentials: dict[str, Credential] = {}
        for key, credential in (credentials or {}).items():
            self._credentials.setdefault(normalize_registry_key(key), credential)

    @classmethod
    def from_docker_config(cls, data: bytes | str | Mapping[str, Any]) -> CredentialStore:
        """Read a ``config.json`` (``{"auths": {...}}``) or legacy ``.dockercfg`` document.

        Several keys naming one registry (``docker.io`` and ``https://index.docker.io/v1/``):
        the first entry with credentials wins. Raises ``SecretInvalid`` naming what is wrong
        without echoing the content.
        """
        document: Any
        if isinstance(data, bytes | str):
            # Positions only in the sentence: the document is not safe to show.
            document = load_json(data, "the docker config", error=SecretInvalid)
        else:
            document = data
        if not isinstance(document, Mapping):
            raise SecretInvalid("the docker config is not a JSON object")

        entries: Mapping[str, Any]
        if "auths" in document:
            auths = document["auths"]
            if auths is None:
                auths = {}
            if not isinstance(auths, Mapping):
                raise SecretInvalid("the 'auths' field of the docker config is not a JSON object")
            entries = auths
        elif _CONFIG_JSON_KEYS.intersection(document):
            entries = {}  # a config.json without inline credentials
        else:
            entries = document  # legacy .dockercfg: registries at the top level

        credentials: dict[str, Credential] = {}
        for key, entry in entries.items():
            if not isinstance(key, str) or not key.strip():
                raise SecretInvalid("the docker config has an empty registry key")
            credential = _credential_from_entry(key, entry)
            if not credential.anonymous:
                credentials.setdefault(normalize_registry_key(key), credential)
        return cls(credentials)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> CredentialStore:
        """Read a Docker config file; a missing file is an empty store.

        The default is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``. A
        directory is read as ``<dir>/config.json`` (like ``docker --config``).
        """
        if path is None:
            directory = os.environ.get("DOCKER_CONFIG")
            file = (
                Path(directory) / "config.json"
                if directory
                else Path.home() / ".docker" / "config.json"
            )
        else:
            file = Path(path)
            if file.is_dir():
                file = file / "config.json"
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise SecretInvalid(
                f"cannot read the docker config {str(file)!r}: {exc.strerror or exc}"
            ) from None
        try:
            return cls.from_docker_config(data)
        except SecretInvalid as exc:
            raise SecretInvalid(f"{exc.message} (in {str(file)!r})") from None

    def get(self, registry: Registry | str) -> Credential:
        """The credential for ``registry`` (a ``Registry`` or any spelling), or ``ANONYMOUS``."""
        return self._credentials.get(_key(registry), ANONYMOUS)

    def merged(self, fallback: CredentialStore) -> CredentialStore:
        """A store holding this store's entries and, for other registries, ``fallback``'s."""
        combined = dict(fallback._credentials)
        combined.update(self._credentials)
        return CredentialStore(combined)

    def registries(self) -> list[str]:
        return sorted(self._credentials)

    def __len__(self) -> int:
        return len(self._credentials)

    def __iter__(self) -> Iterator[str]:
        return iter(self.registries())

    def __contains__(self, registry: object) -> bool:
        if not isinstance(registry, Registry | str):
            return False
        return _key(registry) in self._credentials

    def __repr__(self) -> str:
        return f"CredentialStore(registries={self.registries()!r})"
