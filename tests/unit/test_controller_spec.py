"""Typed parsing of ImageCopy specs and the operator settings."""

from __future__ import annotations

import pytest

from imagecopy.controller.settings import Settings, SettingsError, format_duration, parse_duration
from imagecopy.controller.spec import parse_spec
from imagecopy.copy.options import TagPolicy
from imagecopy.oci.errors import InvalidSpec
from imagecopy.oci.netguard import DEFAULT_BLOCKED_NETWORKS
from imagecopy.oci.reference import Reference, Registry


def spec(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "source": {"image": "reg.example.com/dev/web:1.4.2"},
        "destination": {"image": "reg.example.com/prod/web:1.4.2"},
    }
    base.update(kw)
    return base


def test_full_spec_parses_to_engine_options() -> None:
    parsed = parse_spec(
        spec(
            source={"image": "reg.example.com/dev/web:1.4.2", "secretRef": {"name": "dev-pull"}},
            destination={
                "image": "reg.example.com/prod/web:1.4.2",
                "additionalTags": ["stable", "stable"],
                "secretRef": {"name": "prod-push"},
            },
            mount={"enabled": False, "fromRepositories": ["prod/base"]},
            platforms=["linux/amd64", "linux/arm64"],
            referrers=True,
            tagPolicy="Immutable",
            interval="1h30m",
            suspend=False,
        )
    )
    assert parsed.source.repository == "dev/web"
    assert parsed.destination.tag == "1.4.2"
    assert parsed.source_secret == "dev-pull"
    assert parsed.destination_secret == "prod-push"
    assert parsed.additional_tags == ("stable",)
    assert parsed.interval == 5400
    options = parsed.copy_options(blob_concurrency=3)
    assert options.mount is False
    assert options.mount_from == ("prod/base",)
    assert options.tag_policy is TagPolicy.IMMUTABLE
    assert options.referrers is True
    assert options.concurrency == 3
    assert len(options.platforms) == 2


def test_defaults() -> None:
    parsed = parse_spec(spec(), default_interval=600)
    assert parsed.mount is True
    assert parsed.tag_policy is TagPolicy.OVERWRITE
    assert parsed.interval == 600
    assert parsed.source_secret is None
    assert not parsed.suspend


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"source": {}}, "spec.source.image is required"),
        ({"source": {"image": "Reg/UPPER:1"}}, "spec.source.image"),
        ({"destination": {"image": "reg.example.com/prod/web"}}, "needs a tag or a digest"),
        ({"tagPolicy": "Sometimes"}, "spec.tagPolicy"),
        ({"interval": "soon"}, "spec.interval"),
        ({"interval": "10ms"}, "at least 1s"),
        ({"platforms": ["linux"]}, "spec.platforms"),
        ({"suspend": "yes"}, "spec.suspend"),
        ({"destination": {"image": "reg.example.com/dev/web:1.4.2"}}, "must differ"),
        (
            {"source": {"image": "reg.example.com/a:1", "secretRef": {"name": "Bad_Name"}}},
            "Secret name",
        ),
        ({"mount": {"fromRepositories": ["Prod/Base"]}}, "'Prod/Base' is not a repository"),
        ({"mount": {"fromRepositories": ["prod//base"]}}, "spec.mount.fromRepositories"),
        ({"mount": {"fromRepositories": ["prod/base:1"]}}, "spec.mount.fromRepositories"),
    ],
)
def test_invalid_specs_name_the_field(override: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec(**override))
    assert needle in str(info.value)


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration("42") == 42
    for bad in ("", "m", "10 m", "1x", "-5s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(300) == "5m"
    assert format_duration(5400) == "1h30m"
    assert format_duration(2.5) == "2.5s"


def test_settings_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert s.allowed_registries == ("*",)
    assert s.insecure_registries == frozenset()
    assert s.blocked_networks == DEFAULT_BLOCKED_NETWORKS
    assert (s.max_concurrent_copies, s.blob_concurrency) == (4, 8)
    assert s.default_interval is None
    assert s.stalled_retry == 300
    assert s.metrics_port == 8080


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "IMAGECOPY_ALLOWED_REGISTRIES": "*.example.com, 127.0.0.1:*",
            "IMAGECOPY_PLAIN_HTTP_REGISTRIES": "127.0.0.1,Registry.local:5000",
            "IMAGECOPY_INSECURE_REGISTRIES": "tls.local:8443",
            "IMAGECOPY_BLOCKED_NETWORKS": "10.0.0.0/8",
            "IMAGECOPY_MAX_CONCURRENT_COPIES": "2",
            "IMAGECOPY_BLOB_CONCURRENCY": "16",
            "IMAGECOPY_DEFAULT_INTERVAL": "10m",
            "IMAGECOPY_STALLED_RETRY": "3s",
            "IMAGECOPY_METRICS_PORT": "0",
        }
    )
    assert s.registry_allowed("registry.example.com")
    assert not s.registry_allowed("registry.example.com:5000")  # a host-only entry: no port
    assert s.registry_allowed("127.0.0.1:5000")
    assert not s.registry_allowed("registry-1.docker.io")
    hub = Settings.from_env({"IMAGECOPY_ALLOWED_REGISTRIES": "docker.io"})
    assert hub.registry_allowed("registry-1.docker.io")  # how references normalise Docker Hub
    assert s.plain_http_registries == frozenset({"127.0.0.1", "registry.local:5000"})
    assert s.insecure_registries == frozenset({"tls.local:8443"})
    assert s.blocked_networks == ("10.0.0.0/8",)
    assert s.default_interval == 600
    assert s.stalled_retry == 3
    assert s.metrics_port == 0
    assert Settings.from_env({"IMAGECOPY_BLOCKED_NETWORKS": "none"}).blocked_networks == ()


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGECOPY_MAX_CONCURRENT_COPIES": "many"},
        {"IMAGECOPY_BLOB_CONCURRENCY": "0"},
        {"IMAGECOPY_STALLED_RETRY": "often"},
        {"IMAGECOPY_BLOCKED_NETWORKS": "not-a-cidr"},
        {"IMAGECOPY_BLOCKED_NETWORKS": ""},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert next(iter(env)) in str(info.value)


def test_registry_allowed_matches_host_port_and_host_of_a_registry_value() -> None:
    s = Settings(allowed_registries=("*.example.com", "127.0.0.1:*"))
    assert s.registry_allowed(Registry.parse("registry.example.com"))
    assert not s.registry_allowed(Registry.parse("Registry.Example.com:5000"))  # no port
    assert s.registry_allowed(Registry.parse("127.0.0.1:5000"))  # by host:port
    assert not s.registry_allowed(Registry.parse("127.0.0.1"))
    assert not s.registry_allowed(Reference.parse("web:1").registry)


def test_any_docker_hub_alias_in_the_list_allows_docker_hub() -> None:
    for alias in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        s = Settings(allowed_registries=(alias,))
        assert s.registry_allowed(Reference.parse("library/web:1").registry)
        assert s.registry_allowed("docker.io")
