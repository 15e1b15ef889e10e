"""Reference, digest and platform parsing (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from imagecopy.oci.errors import InvalidReference, InvalidSpec
from imagecopy.oci.reference import (
    DOCKER_HUB,
    Platform,
    Reference,
    Registry,
    normalize_registry,
    parse_digest,
    parse_platform,
)

SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "b" * 128


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", DOCKER_HUB, "library/nginx", "latest", None),
        ("nginx:1.25", DOCKER_HUB, "library/nginx", "1.25", None),
        ("docker.io/nginx", DOCKER_HUB, "library/nginx", "latest", None),
        ("index.docker.io/nginx", DOCKER_HUB, "library/nginx", "latest", None),
        ("registry-1.docker.io/nginx", DOCKER_HUB, "library/nginx", "latest", None),
        ("docker.io/library/nginx", DOCKER_HUB, "library/nginx", "latest", None),
        ("bitnami/redis:7", DOCKER_HUB, "bitnami/redis", "7", None),
        ("DOCKER.IO/bitnami/redis", DOCKER_HUB, "bitnami/redis", "latest", None),
        ("registry.example.com/dev/web:1.4.2", "registry.example.com", "dev/web", "1.4.2", None),
        ("Registry.Example.COM/dev/web", "registry.example.com", "dev/web", "latest", None),
        ("registry.example.com:5000/a/b/c", "registry.example.com:5000", "a/b/c", "latest", None),
        ("localhost/web", "localhost", "web", "latest", None),
        ("localhost:5000/web:v1", "localhost:5000", "web", "v1", None),
        ("127.0.0.1:5000/web", "127.0.0.1:5000", "web", "latest", None),
        ("[::1]:5000/web:v1", "[::1]:5000", "web", "v1", None),
        ("[fe80::1]/web", "[fe80::1]", "web", "latest", None),
        ("docker.io:443/nginx", "docker.io:443", "nginx", "latest", None),
        (f"web@{SHA256}", DOCKER_HUB, "library/web", None, SHA256),
        (f"r.io/web:v1@{SHA256}", "r.io", "web", "v1", SHA256),
        (f"r.io/web@{SHA512}", "r.io", "web", None, SHA512),
        ("r.io/a.b_c__d-e---f/g", "r.io", "a.b_c__d-e---f/g", "latest", None),
        ("r.io/web:_under", "r.io", "web", "_under", None),
        ("r.io/web:" + "t" * 128, "r.io", "web", "t" * 128, None),
        ("localhost:5000", DOCKER_HUB, "library/localhost", "5000", None),
        ("host.with-dash.io/web", "host.with-dash.io", "web", "latest", None),
    ],
)
def test_parse_accepts_and_normalises(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (str(ref.registry), ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("   ", "whitespace"),
        ("nginx latest", "whitespace"),
        ("nginx\n", "whitespace"),
        ("Nginx", "lower-case"),
        ("r.io/Dev/web", "lower-case"),
        ("nginx:", "ends with a colon"),
        ("r.io/web:", "ends with a colon"),
        ("r.io/web:-bad", "tag"),
        ("r.io/web:.bad", "tag"),
        ("r.io/web:bad!tag", "tag"),
        ("r.io/web:" + "t" * 129, "tag"),
        ("r.io/web@", "digest is empty"),
        ("r.io/web@sha256:abc", "sha256 needs 64"),
        ("r.io/web@sha256:" + "A" * 64, "lower-case hexadecimal"),
        ("r.io/web@sha512:" + "a" * 64, "sha512 needs 128"),
        ("r.io/web@nocolon", "no algorithm"),
        ("r.io/web@" + SHA256 + "@" + SHA256, "more than one"),
        ("r.io/", "no repository"),
        ("r.io//web", "empty path component"),
        ("r.io/web/", "empty path component"),
        ("r.io/-web", "invalid"),
        ("r.io/web-", "invalid"),
        ("r.io/we..b", "invalid"),
        ("r.io/we___b", "invalid"),
        (":tag", "no repository"),
        ("@" + SHA256, "no repository"),
        ("r.io:99999/web", "invalid port"),
        ("r.io:port/web", "invalid port"),
        ("-bad.io/web", "not a valid host"),
        ("[::1/web", "IPv6"),
        ("r.io/" + "a" * 260, "limit is 255"),
        ("r.io/wéb", "non-ASCII"),
    ],
)
def test_parse_rejects_with_a_readable_sentence(text: str, problem: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    message = str(info.value)
    assert problem in message
    assert "\n" not in message
    assert isinstance(info.value, InvalidReference | InvalidSpec)


def test_default_tag_none_reports_neither_tag_nor_digest() -> None:
    ref = Reference.parse("r.io/web", default_tag=None)
    assert ref.tag is None and ref.digest is None
    assert Reference.parse("r.io/web:v1", default_tag=None).tag == "v1"
    assert Reference.parse("r.io/web", default_tag="stable").tag == "stable"


def test_digest_only_reference_gets_no_default_tag() -> None:
    assert Reference.parse(f"r.io/web@{SHA256}").tag is None


def test_reference_component_prefers_digest_over_tag() -> None:
    assert Reference.parse(f"r.io/web:v1@{SHA256}").reference == SHA256
    assert Reference.parse("r.io/web:v1").reference == "v1"
    with pytest.raises(InvalidReference, match="no tag or digest"):
        _ = Reference.parse("r.io/web", default_tag=None).reference


def test_str_is_canonical_and_round_trips() -> None:
    for text in ["r.io/web:v1", f"r.io/web:v1@{SHA256}", f"r.io/web@{SHA256}", "[::1]:5000/a/b:c"]:
        assert str(Reference.parse(text)) == text
        assert Reference.parse(str(Reference.parse(text))) == Reference.parse(text)
    assert str(Reference.parse("nginx")) == "registry-1.docker.io/library/nginx:latest"
    assert str(Reference.parse("r.io/web", default_tag=None)) == "r.io/web"


def test_pinned_needs_a_digest() -> None:
    assert Reference.parse(f"r.io/web:v1@{SHA256}").pinned == f"r.io/web@{SHA256}"
    with pytest.raises(InvalidReference, match="no digest"):
        _ = Reference.parse("r.io/web:v1").pinned


def test_with_tag_drops_digest_and_with_digest_drops_tag() -> None:
    ref = Reference.parse(f"r.io/web:v1@{SHA256}")
    assert ref.with_tag("stable") == Reference(Registry("r.io"), "web", tag="stable")
    assert ref.with_digest(SHA512) == Reference(Registry("r.io"), "web", digest=SHA512)
    with pytest.raises(InvalidReference):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:short")


def test_scope_joins_actions_in_the_given_order() -> None:
    ref = Reference.parse("r.io/prod/web:v1")
    assert ref.scope("push", "pull") == "repository:prod/web:push,pull"
    assert ref.scope("pull") == "repository:prod/web:pull"
    assert ref.scope() == "repository:prod/web:pull"
    assert Reference.parse("nginx").scope("pull") == "repository:library/nginx:pull"


def test_same_repository_ignores_tag_and_digest_but_not_registry() -> None:
    a = Reference.parse("r.io/web:v1")
    assert a.same_repository(Reference.parse(f"r.io/web@{SHA256}"))
    assert a.same_repository(Reference.parse("R.IO/web:v2"))
    assert not a.same_repository(Reference.parse("r.io:5000/web:v1"))
    assert not a.same_repository(Reference.parse("r.io/web2:v1"))
    assert Reference.parse("nginx").same_repository(Reference.parse("docker.io/library/nginx"))


def test_reference_is_a_hashable_value() -> None:
    assert len({Reference.parse("nginx"), Reference.parse("docker.io/library/nginx:latest")}) == 1


@pytest.mark.parametrize(
    "digest",
    [SHA256, SHA512, "sha384:" + "c" * 96, "blake3:abcDEF012=", "multi+part.algo_x-y:abc"],
)
def test_parse_digest_accepts_oci_grammar(digest: str) -> None:
    assert parse_digest(digest) == digest


@pytest.mark.parametrize(
    ("digest", "problem"),
    [
        ("", "empty"),
        ("sha256", "no algorithm"),
        ("sha256:", "nothing after the colon"),
        ("SHA256:" + "a" * 64, "invalid algorithm"),
        (":abc", "invalid algorithm"),
        ("sha256:" + "g" * 64, "hexadecimal"),
        ("sha256:" + "a" * 63, "needs 64"),
        ("sha256:" + "a" * 65, "needs 64"),
        ("sha512:" + "a" * 64, "needs 128"),
        ("other:has space", "invalid characters"),
        ("other:a/b", "invalid characters"),
    ],
)
def test_parse_digest_rejects(digest: str, problem: str) -> None:
    with pytest.raises(InvalidReference, match=problem):
        parse_digest(digest)


def test_normalize_registry_folds_docker_hub_aliases_only_without_port() -> None:
    assert normalize_registry("docker.io") == DOCKER_HUB
    assert normalize_registry("Index.Docker.IO") == DOCKER_HUB
    assert normalize_registry("docker.io:5000") == "docker.io:5000"
    assert normalize_registry("[::1]") == "[::1]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("Linux/ARM/v7", Platform("linux", "arm", "v7")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("windows/amd64", Platform("windows", "amd64")),
        (" linux/s390x ", Platform("linux", "s390x")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/a d"])
def test_parse_platform_rejects(text: str) -> None:
    with pytest.raises(InvalidSpec, match="platform"):
        parse_platform(text)


def test_platform_str() -> None:
    assert str(parse_platform("linux/arm/v7")) == "linux/arm/v7"
    assert str(parse_platform("linux/amd64")) == "linux/amd64"


def test_platform_matches_index_entries() -> None:
    arm64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    arm64_bare = {"os": "linux", "architecture": "arm64"}
    armv7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
    armv6 = {"os": "linux", "architecture": "arm", "variant": "v6"}
    amd64 = {"os": "linux", "architecture": "amd64"}
    assert parse_platform("linux/arm64").matches(arm64)
    assert parse_platform("linux/arm64").matches(arm64_bare)
    assert parse_platform("linux/arm64/v8").matches(arm64_bare)  # v8 is arm64's default
    assert parse_platform("linux/arm").matches(armv6)  # no variant: every variant
    assert parse_platform("linux/arm/v7").matches(armv7)
    assert not parse_platform("linux/arm/v7").matches(armv6)
    assert not parse_platform("linux/amd64").matches(arm64)
    assert not parse_platform("windows/amd64").matches(amd64)
    assert parse_platform("linux/amd64").matches({"os": "linux", "architecture": "x86_64"})
    assert not parse_platform("linux/amd64").matches(None)
    assert not parse_platform("linux/amd64").matches({})
    unknown = {"os": "unknown", "architecture": "unknown"}  # attestation manifests
    assert not parse_platform("linux/amd64").matches(unknown)
