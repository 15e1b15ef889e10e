"""Typed parsing of an ImageCopy ``spec``, and its translation to engine options.

The CRD schema already rejects malformed objects; this is defence in depth for objects that
predate a schema change or were written with validation off. Every problem is an
``InvalidSpec`` with one sentence naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..copy.options import CopyOptions, TagPolicy
from ..oci.errors import ImageCopyError, InvalidSpec
from ..oci.reference import Platform, Reference, parse_platform
from .settings import parse_duration

__all__ = ["ImageCopySpec", "VerifySpec", "parse_spec"]

_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class VerifySpec:
    """``spec.verify``: the Secret (same namespace) whose ``*.pub`` entries are trusted."""

    provider: str
    secret: str


#: Keyless verification (Fulcio certificates, Rekor) is not supported: these fields of
#: Flux's ``verify`` are refused rather than ignored.
_KEYLESS_FIELDS = ("matchOIDCIdentity", "certificateIdentity", "certificateOidcIssuer")


@dataclass(frozen=True)
class ImageCopySpec:
    source: Reference
    destination: Reference
    source_secret: str | None = None
    destination_secret: str | None = None
    additional_tags: tuple[str, ...] = ()
    mount: bool = True
    mount_from: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] = ()
    referrers: bool = False
    tag_policy: TagPolicy = TagPolicy.OVERWRITE
    #: Seconds between re-checks of the source; None: only on spec changes.
    interval: float | None = None
    suspend: bool = False
    verify: VerifySpec | None = None

    def copy_options(self, blob_concurrency: int) -> CopyOptions:
        return CopyOptions(
            platforms=self.platforms,
            referrers=self.referrers,
            additional_tags=self.additional_tags,
            tag_policy=self.tag_policy,
            mount=self.mount,
            mount_from=self.mount_from,
            concurrency=blob_concurrency,
        )


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"spec.{field} must be an object")
    return value


def _string(value: Any, field: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidSpec(f"spec.{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidSpec(f"spec.{field} must be a string")
    return value


def _boolean(value: Any, field: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidSpec(f"spec.{field} must be true or false")
    return value


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidSpec(f"spec.{field} must be a list of strings")
    return tuple(dict.fromkeys(value))  # a set in the schema; keep order, drop repeats


def _secret_name(value: Any, field: str) -> str | None:
    ref = _mapping(value, field)
    name = _string(ref.get("name"), f"{field}.name")
    if name is None:
        if ref:
            raise InvalidSpec(f"spec.{field}.name is required")
        return None
    if len(name) > 253 or not _SECRET_NAME.fullmatch(name):
        raise InvalidSpec(f"spec.{field}.name {name!r} is not a valid Secret name")
    return name


def _verify(value: Any) -> VerifySpec | None:
    block = _mapping(value, "verify")
    if not block:
        return None
    for name in _KEYLESS_FIELDS:
        if name in block:
            raise InvalidSpec(
                f"spec.verify.{name}: keyless verification is not supported; "
                "trust public keys with spec.verify.secretRef"
            )
    unknown = sorted(set(block) - {"provider", "secretRef"})
    if unknown:
        raise InvalidSpec(f"spec.verify.{unknown[0]} is not a known field")
    provider = _string(block.get("provider"), "verify.provider") or "cosign"
    if provider != "cosign":
        raise InvalidSpec(f"spec.verify.provider {provider!r} is not supported; use cosign")
    secret = _secret_name(block.get("secretRef"), "verify.secretRef")
    if secret is None:
        raise InvalidSpec("spec.verify.secretRef.name is required")
    return VerifySpec(provider, secret)


def parse_spec(
    spec: Mapping[str, Any] | None, default_interval: float | None = None
) -> ImageCopySpec:
    """The typed spec; raises ``InvalidSpec`` (or ``InvalidReference``, same reason)."""
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec is missing")
    source_block = _mapping(spec.get("source"), "source")
    destination_block = _mapping(spec.get("destination"), "destination")
    source_text = _string(source_block.get("image"), "source.image", required=True)
    destination_text = _string(destination_block.get("image"), "destination.image", required=True)
    assert source_text is not None and destination_text is not None
    try:
        source = Reference.parse(source_text)
    except ImageCopyError as exc:
        raise InvalidSpec(f"spec.source.image: {exc}") from None
    try:
        destination = Reference.parse(destination_text, default_tag=None)
    except ImageCopyError as exc:
        raise InvalidSpec(f"spec.destination.image: {exc}") from None
    if destination.tag is None and destination.digest is None:
        raise InvalidSpec("spec.destination.image needs a tag or a digest")
    if destination.tag is not None and destination.digest is not None:
        raise InvalidSpec("spec.destination.image must not carry both a tag and a digest")

    additional_tags = _strings(
        destination_block.get("additionalTags"), "destination.additionalTags"
    )
    for tag in additional_tags:
        try:
            destination.with_tag(tag)
        except ImageCopyError:
            raise InvalidSpec(
                f"spec.destination.additionalTags: {tag!r} is not a valid tag"
            ) from None

    mount_block = _mapping(spec.get("mount"), "mount")
    mount_from = _strings(mount_block.get("fromRepositories"), "mount.fromRepositories")
    for repo in mount_from:
        try:
            destination.registry.repository(repo)
        except ImageCopyError:
            raise InvalidSpec(
                f"spec.mount.fromRepositories: {repo!r} is not a repository name"
            ) from None

    platforms: list[Platform] = []
    for text in _strings(spec.get("platforms"), "platforms"):
        try:
            platforms.append(parse_platform(text))
        except (ImageCopyError, ValueError):
            raise InvalidSpec(f"spec.platforms: {text!r} is not os/arch[/variant]") from None

    policy_text = _string(spec.get("tagPolicy"), "tagPolicy") or TagPolicy.OVERWRITE.value
    try:
        tag_policy = TagPolicy(policy_text)
    except ValueError:
        raise InvalidSpec(
            f"spec.tagPolicy {policy_text!r} must be Overwrite, IfNotPresent or Immutable"
        ) from None

    interval = default_interval
    interval_text = _string(spec.get("interval"), "interval")
    if interval_text is not None:
        try:
            interval = parse_duration(interval_text)
        except ValueError as exc:
            raise InvalidSpec(f"spec.interval: {exc}") from None
        if interval < 1:
            raise InvalidSpec("spec.interval must be at least 1s")

    if source == destination and not additional_tags and not platforms:
        raise InvalidSpec("spec.destination.image must differ from spec.source.image")

    return ImageCopySpec(
        source=source,
        destination=destination,
        source_secret=_secret_name(source_block.get("secretRef"), "source.secretRef"),
        destination_secret=_secret_name(
            destination_block.get("secretRef"), "destination.secretRef"
        ),
        additional_tags=additional_tags,
        mount=_boolean(mount_block.get("enabled"), "mount.enabled", True),
        mount_from=mount_from,
        platforms=tuple(platforms),
        referrers=_boolean(spec.get("referrers"), "referrers", False),
        tag_policy=tag_policy,
        interval=interval,
        suspend=_boolean(spec.get("suspend"), "suspend", False),
        verify=_verify(spec.get("verify")),
    )
