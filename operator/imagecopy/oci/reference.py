"""Names: registries, repositories, image references, digests, platforms and token scopes.

This module owns the grammar of ``[registry/]repository[:tag][@digest]`` (the distribution
reference grammar, with Docker Hub normalisation), digest syntax (OCI image-spec) and the
``os/arch[/variant]`` platform form. A ``Registry`` (host and port) is parsed once here; a
``Repository`` builds every token scope string. Nobody else splits ``host[:port]`` or
formats ``repository:<name>:<actions>``. It is pure: no I/O, no clock, no network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import idna

from imagecopy.oci.errors import InvalidReference, InvalidSpec

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ALIASES",
    "Platform",
    "Reference",
    "Registry",
    "Repository",
    "is_tag",
    "normalize_registry",
    "parse_digest",
    "parse_platform",
]

#: The host Docker Hub's registry API answers on; every alias is normalised to it.
DOCKER_HUB = "registry-1.docker.io"
#: Names people and tools use for Docker Hub.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_NAME_MAX = 255
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DOMAIN_COMPONENT = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
_IPV6 = re.compile(r"\[[0-9a-fA-F:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
# OCI image-spec descriptor grammar.
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED = re.compile(r"[a-zA-Z0-9=_-]+")
_KNOWN_DIGESTS = {"sha256": 64, "sha512": 128}
_HEX_LOWER = re.compile(r"[a-f0-9]+")
_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _quote(text: str) -> str:
    """Render user input inside an error message, bounded so a huge input stays readable."""
    return repr(text if len(text) <= 300 else text[:300] + "...")


def parse_digest(text: str) -> str:
    """Validate a digest ``algorithm:encoded`` and return it unchanged.

    sha256 and sha512 must carry 64 and 128 lower-case hex characters; other algorithms
    are accepted when they match the OCI descriptor grammar.
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference("the digest is empty")
    algorithm, sep, encoded = text.partition(":")
    if not sep:
        raise InvalidReference(
            f"the digest {_quote(text)} has no algorithm; expected a form like sha256:<64 hex>"
        )
    if not _ALGORITHM.fullmatch(algorithm):
        raise InvalidReference(f"the digest {_quote(text)} has an invalid algorithm")
    if not encoded:
        raise InvalidReference(f"the digest {_quote(text)} has nothing after the colon")
    expected = _KNOWN_DIGESTS.get(algorithm)
    if expected is not None:
        if not _HEX_LOWER.fullmatch(encoded):
            raise InvalidReference(
                f"the digest {_quote(text)} must be lower-case hexadecimal after {algorithm}:"
            )
        if len(encoded) != expected:
            raise InvalidReference(
                f"the digest {_quote(text)} has {len(encoded)} hex characters; "
                f"{algorithm} needs {expected}"
            )
    elif not _ENCODED.fullmatch(encoded):
        raise InvalidReference(f"the digest {_quote(text)} has invalid characters")
    return text


def is_tag(text: str) -> bool:
    """Whether ``text`` is a tag per the OCI grammar ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``."""
    return isinstance(text, str) and _TAG.fullmatch(text) is not None


def _validate_tag(tag: str, text: str) -> str:
    if not tag:
        raise InvalidReference(f"the reference {_quote(text)} ends with a colon but has no tag")
    if not _TAG.fullmatch(tag):
        raise InvalidReference(
            f"the tag {_quote(tag)} in {_quote(text)} is invalid; a tag is at most 128 "
            "letters, digits, '_', '.' or '-' and does not start with '.' or '-'"
        )
    return tag


def normalize_registry(host: str) -> str:
    """Normalise a ``host[:port]`` registry name: lower-case host, Docker Hub aliases folded.

    Raises ``InvalidReference`` when the text is not a host name, IPv4/IPv6 address with an
    optional port.
    """
    return str(Registry.parse(host))


def _split_registry(host: str) -> tuple[str, int | None]:
    if not host:
        raise InvalidReference("the registry name is empty")
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not _IPV6.fullmatch(host[: end + 1]) or not _is_ipv6(host[1:end]):
            raise InvalidReference(f"the registry {_quote(host)} is not a valid IPv6 address")
        name, rest = host[: end + 1], host[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidReference(f"the registry {_quote(host)} has text after the IPv6 address")
        port = rest[1:] if rest else None
    else:
        name, sep, port_text = host.partition(":")
        port = port_text if sep else None
        components = name.split(".")
        if not all(_DOMAIN_COMPONENT.fullmatch(c) for c in components):
            raise InvalidReference(f"the registry {_quote(host)} is not a valid host name")
        if len(components) == 4 and all(c.isdigit() for c in components):
            # What a URL parser takes for an IPv4 address must be one (999.1.1.1 is not).
            try:
                ipaddress.IPv4Address(name)
            except ValueError:
                raise InvalidReference(
                    f"the registry {_quote(host)} is not a valid IPv4 address"
                ) from None
        if any(c[:4].lower() == "xn--" for c in components) and not _is_idna(name):
            raise InvalidReference(
                f"the registry {_quote(host)} is not a valid internationalised host name"
            )
    if port is not None and (not _PORT.fullmatch(port) or not 0 < int(port) < 65536):
        raise InvalidReference(f"the registry {_quote(host)} has an invalid port")
    name = name.lower()
    if port is None and name in DOCKER_HUB_ALIASES:
        return DOCKER_HUB, None
    return name, int(port) if port is not None else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_idna(name: str) -> bool:
    """Whether the punycode (``xn--``) labels of ``name`` decode, as a URL parser needs."""
    try:
        idna.decode(name.lower())
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return True


_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, order=True)
class Registry:
    """A registry host: ``host`` lower-case (an IPv6 literal keeps its brackets), ``port``
    only when one was written. Docker Hub aliases fold to ``registry-1.docker.io``."""

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Registry:
        """Parse ``host[:port]``; raises ``InvalidReference`` with one sentence."""
        host, port = _split_registry(text)
        return cls(host, port)

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def hostname(self) -> str:
        """The host without brackets, as a socket or URL parser reports it."""
        return self.host.strip("[]")

    def port_for(self, scheme: str) -> int:
        """The TCP port spoken to under ``scheme`` (``http``/``https`` defaults)."""
        return self.port if self.port is not None else _DEFAULT_PORTS[scheme]

    def listed_in(self, hosts: Iterable[str]) -> bool:
        """Whether a settings list of ``host`` or ``host:port`` entries names this registry:
        an entry without a port covers every port of that host."""
        names = {str(self), self.host}
        for entry in hosts:
            try:
                listed = Registry.parse(entry.strip())
            except InvalidReference:
                continue
            if str(listed) in names and (listed.port is None or listed.port == self.port):
                return True
        return False

    def origin(self, scheme: str) -> str:
        """``scheme://host[:port]``: the base every registry URL starts with."""
        return f"{scheme}://{self}"

    def address(self, scheme: str) -> tuple[str, int]:
        """``(hostname, port)`` the registry is reached at under ``scheme``: what a URL to
        it carries, so a request can be told to be for this registry or another host."""
        return self.hostname, self.port_for(scheme)

    def repository(self, path: str) -> Repository:
        """The repository ``path`` on this registry, validated."""
        return Repository(self, _validate_repository(path, path))


@dataclass(frozen=True, order=True)
class Repository:
    """A repository on a registry; builds the token scopes that name it."""

    registry: Registry
    path: str

    @classmethod
    def parse(cls, registry: Registry | str, path: str) -> Repository:
        """``path`` on ``registry``, validated like the repository of a reference."""
        reg = registry if isinstance(registry, Registry) else Registry.parse(registry)
        return reg.repository(path)

    def scope(self, *actions: str) -> str:
        """The token scope ``repository:<path>:<actions>``; actions default to ``pull``."""
        return f"repository:{self.path}:{','.join(actions or ('pull',))}"

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}"


def _validate_repository(repository: str, text: str) -> str:
    if not repository:
        raise InvalidReference(f"the image reference {_quote(text)} has no repository name")
    if len(repository) > _NAME_MAX:
        raise InvalidReference(
            f"the repository name {_quote(repository)} is {len(repository)} characters long; "
            f"the limit is {_NAME_MAX}"
        )
    for component in repository.split("/"):
        if not component:
            raise InvalidReference(
                f"the repository {_quote(repository)} has an empty path component"
            )
        if not _PATH_COMPONENT.fullmatch(component):
            if component.lower() != component and _PATH_COMPONENT.fullmatch(component.lower()):
                raise InvalidReference(f"the repository {_quote(repository)} must be lower-case")
            raise InvalidReference(
                f"the repository path component {_quote(component)} in {_quote(text)} is "
                "invalid; use lower-case letters and digits separated by '.', '_', '__' or '-'"
            )
    return repository


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``registry`` is normalised (see ``Registry.parse``)."""

    registry: Registry
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = "latest") -> Reference:
        """Parse ``[registry/]repository[:tag][@digest]``.

        Without a tag or digest, ``default_tag`` is used; pass ``None`` to learn that the
        text named neither. Raises ``InvalidReference`` with one sentence naming the problem.
        """
        if not isinstance(text, str) or not text:
            raise InvalidReference("the image reference is empty")
        if any(c.isspace() for c in text):
            raise InvalidReference(f"the image reference {_quote(text)} contains whitespace")
        if not text.isascii():
            raise InvalidReference(
                f"the image reference {_quote(text)} contains non-ASCII characters"
            )

        remainder, at, digest_text = text.partition("@")
        digest: str | None = None
        if at:
            if "@" in digest_text:
                raise InvalidReference(f"the image reference {_quote(text)} has more than one '@'")
            digest = parse_digest(digest_text)

        tag: str | None = None
        colon = remainder.rfind(":")
        if colon > remainder.rfind("/"):
            # A colon after the last slash separates the tag; one before it is a port.
            remainder, tag = remainder[:colon], _validate_tag(remainder[colon + 1 :], text)

        if not remainder:
            raise InvalidReference(f"the image reference {_quote(text)} has no repository name")
        if len(remainder) > _NAME_MAX:
            raise InvalidReference(
                f"the image name in {_quote(text)} is {len(remainder)} characters long; "
                f"the limit is {_NAME_MAX}"
            )

        first, slash, rest = remainder.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry = Registry.parse(first)
            repository = rest
        else:
            registry = Registry(DOCKER_HUB)
            repository = remainder

        _validate_repository(repository, text)
        if registry.host == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"

        if tag is None and digest is None:
            tag = default_tag
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def reference(self) -> str:
        """The manifest path component: the digest when set, else the tag."""
        if self.digest is not None:
            return self.digest
        if self.tag is not None:
            return self.tag
        raise InvalidReference(f"the image reference {_quote(str(self))} has no tag or digest")

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> str:
        """``registry/repository@digest``; raises ``InvalidReference`` without a digest."""
        if self.digest is None:
            raise InvalidReference(f"the image reference {_quote(str(self))} has no digest")
        return f"{self.name}@{self.digest}"

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag`` (no digest)."""
        return replace(self, tag=_validate_tag(tag, tag), digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository at ``digest`` (no tag)."""
        return replace(self, tag=None, digest=parse_digest(digest))

    @property
    def repo(self) -> Repository:
        """The repository this reference names."""
        return Repository(self.registry, self.repository)

    def scope(self, *actions: str) -> str:
        """The token scope ``repository:<repo>:<actions>``; actions default to ``pull``."""
        return self.repo.scope(*actions)

    def same_repository(self, other: Reference) -> bool:
        return self.registry == other.registry and self.repository == other.repository

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


# Architecture spellings that mean the same thing (containerd's normalisation).
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
}
# A missing variant equals this one when matching.
_DEFAULT_VARIANT = {"arm64": "v8", "amd64": "v1"}


@dataclass(frozen=True)
class Platform:
    """A platform filter: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    def matches(self, platform: Mapping[str, Any] | None) -> bool:
        """Whether an OCI ``platform`` object (as found in an image index) matches this filter.

        Architecture aliases are folded; a filter without a variant matches every variant,
        and a missing variant equals the architecture's default (``arm64`` → ``v8``).
        """
        if not platform:
            return False
        os_name = str(platform.get("os") or "").lower()
        arch = str(platform.get("architecture") or "").lower()
        raw_variant = platform.get("variant")
        variant = str(raw_variant).lower() if raw_variant else None
        arch, variant = _normalize_arch(arch, variant)
        if os_name != self.os or arch != self.architecture:
            return False
        if self.variant is None:
            return True
        return _variant_or_default(arch, variant) == _variant_or_default(arch, self.variant)


def _normalize_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    alias = _ARCH_ALIASES.get(arch)
    if alias is None:
        return arch, variant
    return alias[0], variant or alias[1]


def _variant_or_default(arch: str, variant: str | None) -> str | None:
    return variant or _DEFAULT_VARIANT.get(arch)


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (case-insensitive); raises ``InvalidSpec``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSpec("the platform is empty; expected os/arch[/variant], e.g. linux/amd64")
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
        raise InvalidSpec(
            f"the platform {_quote(text)} is invalid; expected os/arch[/variant], e.g. linux/arm64"
        )
    arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else None)
    return Platform(os=parts[0], architecture=arch, variant=variant)
