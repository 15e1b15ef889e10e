"""``oci.bounds``: JSON depth, bounded reads, redirect bodies, sizes; and the graph limits the
plan enforces (``Bounds``), the settings and CLI flags that change them, and the digest,
tag and host checks that keep registry text out of URLs.

Reads are driven by responses built on hand-made async streams that count what was pulled
from them: how much of a body was read is what these tests pin. The same bounds against a
real misbehaving server are ``tests/integration/test_hostile_bounds.py``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from imagecopy import cli
from imagecopy.controller.settings import Settings, SettingsError
from imagecopy.copy.options import CopyOptions
from imagecopy.copy.plan import Plan
from imagecopy.copy.referrers import add_referrers
from imagecopy.oci import mediatypes as mt
from imagecopy.oci.auth.challenge import Challenge, checked_realm
from imagecopy.oci.bounds import (
    MAX_ERROR_BODY_BYTES,
    BodyTooLarge,
    Bounds,
    RedirectBodyLimit,
    load_json,
    parse_size,
    read_bounded,
)
from imagecopy.oci.credentials import CredentialStore
from imagecopy.oci.descriptor import Descriptor, Manifest, parse_manifest
from imagecopy.oci.errors import (
    InvalidReference,
    LimitExceeded,
    SecretInvalid,
    Side,
    Unauthorized,
    UnsupportedMediaType,
)
from imagecopy.oci.reference import Registry, is_tag
from imagecopy.oci.referrers import Referrers, referrers_tag
from tests.unit.test_plan import FakeRepository, image, index, plan_for

MIB = 1024 * 1024


class Bad(Exception):
    pass


# --------------------------------------------------------------------------- load_json


def test_json_at_the_depth_limit_parses_and_one_level_more_is_refused() -> None:
    assert load_json("[" * 64 + "]" * 64, "doc", error=Bad) == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(Bad, match=r"^doc nests JSON more than 64 levels deep$"):
        load_json("[" * 65 + "]" * 65, "doc", error=Bad)
    with pytest.raises(Bad, match="more than 3 levels"):
        load_json('{"a":{"b":{"c":{}}}}', "doc", max_depth=3, error=Bad)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 5000 + '\\"{' * 100, "t": ["]]]}}"]})
    assert load_json(text, "doc", error=Bad)["t"] == ["]]]}}"]


def test_a_hundred_thousand_levels_are_refused_without_recursion() -> None:
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(Bad, match="levels deep"):
            load_json(deep, "doc", error=Bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1,,}', r"^doc is not valid JSON \(line 1, column 9\)$"),
        (b"\xff\xfe\xfd", "^doc is not UTF-8 text$"),
        (b"1" * 5000, "^doc is not valid JSON$"),  # past Python's integer digits
    ],
)
def test_every_json_failure_is_the_callers_error(data: bytes, message: str) -> None:
    with pytest.raises(Bad, match=message):
        load_json(data, "doc", error=Bad)


def test_json_in_the_encodings_json_loads_detects() -> None:
    assert load_json('{"a": ["b"]}'.encode("utf-16"), "doc", error=Bad) == {"a": ["b"]}


# --------------------------------------------------------------------------- read_bounded


@dataclass
class Counted(httpx.AsyncByteStream):
    """``chunks`` pieces of ``piece``; counts what a reader pulled."""

    piece: bytes
    chunks: int
    pulled: int = 0
    closed: bool = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += len(self.piece)
            yield self.piece

    async def aclose(self) -> None:
        self.closed = True


def streamed(stream: Counted, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=stream)


async def test_a_body_within_the_limit_is_read_whole() -> None:
    stream = Counted(b"x" * 1000, 64)
    assert await read_bounded(streamed(stream), 64_000) == b"x" * 64_000


async def test_an_endless_body_is_stopped_just_past_the_limit() -> None:
    stream = Counted(b"x" * 1000, 1_000_000)  # a gigabyte, were it read
    with pytest.raises(BodyTooLarge) as caught:
        await read_bounded(streamed(stream), 64_000)
    assert not caught.value.announced
    assert stream.pulled == 65_000


async def test_an_announced_length_over_the_limit_is_refused_before_reading() -> None:
    stream = Counted(b"x", 10)
    with pytest.raises(BodyTooLarge) as caught:
        await read_bounded(streamed(stream, **{"Content-Length": str(64 * MIB)}), 64_000)
    assert caught.value.announced and caught.value.seen == 64 * MIB
    assert stream.pulled == 0


async def test_a_gzip_bomb_inflates_no_further_than_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * MIB))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 128 * 1024
    stream = Counted(bomb, 1)
    with pytest.raises(BodyTooLarge) as caught:
        await read_bounded(streamed(stream, **{"Content-Encoding": "gzip"}), 64_000)
    assert caught.value.seen == 64_001


async def test_a_small_gzip_body_is_inflated() -> None:
    stream = Counted(gzip.compress(b'{"ok": true}'), 1)
    body = await read_bounded(streamed(stream, **{"Content-Encoding": "gzip"}), 1000)
    assert body == b'{"ok": true}'


async def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported Content-Encoding 'br'"):
        await read_bounded(streamed(Counted(b"x", 1), **{"Content-Encoding": "br"}), 1000)


class Redirecting(httpx.AsyncBaseTransport):
    """The network under ``RedirectBodyLimit``: a 307 with an endless body, or a 200."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.stream = Counted(b"r" * 1000, 1_000_000)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.status, headers={"Location": "/b"}, stream=self.stream)


async def test_a_redirect_body_is_read_up_to_64_kib_and_handed_on_empty() -> None:
    inner = Redirecting(307)
    response = await RedirectBodyLimit(inner).handle_async_request(
        httpx.Request("GET", "https://r.example/a")
    )
    assert await response.aread() == b""
    assert MAX_ERROR_BODY_BYTES < inner.stream.pulled <= MAX_ERROR_BODY_BYTES + 1000
    await response.aclose()
    assert inner.stream.closed


async def test_other_answers_pass_the_redirect_limit_untouched() -> None:
    inner = Redirecting(200)
    inner.stream.chunks = 100
    response = await RedirectBodyLimit(inner).handle_async_request(
        httpx.Request("GET", "https://r.example/a")
    )
    assert len(await response.aread()) == 100_000


# --------------------------------------------------------------------------- sizes, Bounds


@pytest.mark.parametrize(
    ("text", "size"),
    [("16777216", 16 * MIB), ("64KiB", 65536), ("16MiB", 16 * MIB), ("1GiB", 1 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "16MB", "1.5MiB", "-1", "16 MiB", "0x10", "1e6"])
def test_sizes_are_strict(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_the_documented_defaults() -> None:
    assert Bounds() == Bounds(
        max_index_children=256,
        max_index_depth=8,
        max_manifests=1024,
        max_manifest_bytes=16 * MIB,
        max_blobs=10_000,
        max_referrers=256,
    )
    with pytest.raises(ValueError, match="max_blobs must be a whole number of at least 1"):
        Bounds(max_blobs=0)


# --------------------------------------------------------------------------- settings, flags


def test_settings_set_every_bound() -> None:
    env = {
        "IMAGECOPY_MAX_INDEX_CHILDREN": "1000",
        "IMAGECOPY_MAX_INDEX_DEPTH": "3",
        "IMAGECOPY_MAX_MANIFESTS": "50",
        "IMAGECOPY_MAX_MANIFEST_BYTES": "2MiB",
        "IMAGECOPY_MAX_BLOBS": "99",
        "IMAGECOPY_MAX_REFERRERS": "7",
    }
    assert Settings.from_env(env).bounds == Bounds(1000, 3, 50, 2 * MIB, 99, 7)
    assert Settings.from_env({}).bounds == Bounds()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IMAGECOPY_MAX_INDEX_CHILDREN", "0", "must be at least 1"),
        ("IMAGECOPY_MAX_INDEX_DEPTH", "eight", "is not a whole number"),
        ("IMAGECOPY_MAX_MANIFEST_BYTES", "16MB", "is not a size"),
        ("IMAGECOPY_MAX_MANIFEST_BYTES", "0", "must be at least 1 byte"),
    ],
)
def test_bad_bound_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}.*{message}"):
        Settings.from_env({name: value})


def test_cli_flags_set_the_bounds() -> None:
    args = cli._parser().parse_args(
        ["copy", "a:1", "b:1", "--max-index-children", "1000", "--max-manifest-bytes", "1MiB"]
    )
    assert cli._bounds(args) == Bounds(max_index_children=1000, max_manifest_bytes=MIB)
    assert cli._bounds(cli._parser().parse_args(["copy", "a:1", "b:1"])) == Bounds()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-index-depth", "0"], "--max-index-depth must be at least 1"),
        (["--max-blobs", "many"], "--max-blobs 'many' is not a whole number"),
        (["--max-manifest-bytes", "1MB"], "--max-manifest-bytes '1MB' is not a size like 16MiB"),
    ],
)
def test_bad_cli_flags_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["copy", "localhost:1/a:1", "localhost:1/b:1", *flags]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"imagecopy: invalid input: {message}"


# --------------------------------------------------------------------------- the plan's limits


def fan_out(children: int, layers_each: int = 1) -> tuple[FakeRepository, Manifest]:
    """A source holding an index of ``children`` distinct images at tag 1.4."""
    src = FakeRepository()
    kids = [image(*(b"%d-%d" % (i, j) for j in range(layers_each))) for i in range(children)]
    for kid in kids:
        src.put(kid)
    root = index(*((kid, "linux/amd64") for kid in kids))
    src.put(root, "1.4")
    return src, root


async def test_children_over_the_limit_are_refused_before_any_is_fetched() -> None:
    src, root = fan_out(5)
    with pytest.raises(LimitExceeded) as caught:
        await plan_for(src, FakeRepository(), bounds=Bounds(max_index_children=4))
    assert str(caught.value) == f"the index {root.digest} has 5 children, more than the limit of 4"
    assert caught.value.side is Side.SOURCE and caught.value.registry == "r.example"
    assert src.reads == ["GET 1.4"]


async def test_manifests_over_the_limit_are_refused_before_they_are_fetched() -> None:
    src, _root = fan_out(5)
    with pytest.raises(LimitExceeded, match=r"has 6 manifests or more .* more than the limit of 5"):
        await plan_for(src, FakeRepository(), bounds=Bounds(max_manifests=5))
    assert src.reads == ["GET 1.4"]
    assert isinstance(await plan_for(src, FakeRepository(), bounds=Bounds(max_manifests=6)), Plan)


async def test_manifest_bytes_over_the_limit() -> None:
    src, root = fan_out(3)
    with pytest.raises(LimitExceeded, match="come to more than 1000 bytes"):
        await plan_for(src, FakeRepository(), bounds=Bounds(max_manifest_bytes=1000))
    assert root.size < 1000  # the root fits; its children push the total over


async def test_blobs_over_the_limit() -> None:
    src, _root = fan_out(3, layers_each=2)  # a shared config and 6 layers
    with pytest.raises(LimitExceeded, match="names more than 6 blobs, more than the limit of 6"):
        await plan_for(src, FakeRepository(), bounds=Bounds(max_blobs=6))
    plan = await plan_for(src, FakeRepository(), bounds=Bounds(max_blobs=7))
    assert isinstance(plan, Plan) and len(plan.blobs) == 7


async def test_nesting_over_the_depth_limit() -> None:
    src = FakeRepository()
    manifest = image(b"leaf")
    src.put(manifest)
    for _ in range(3):  # index → index → index → image
        manifest = index((manifest, "linux/amd64"))
        src.put(manifest)
    src.put(manifest, "1.4")
    with pytest.raises(
        LimitExceeded, match="nests indexes 3 levels deep, more than the limit of 2"
    ):
        await plan_for(src, FakeRepository(), bounds=Bounds(max_index_depth=2))
    assert isinstance(await plan_for(src, FakeRepository(), bounds=Bounds(max_index_depth=3)), Plan)


class WithReferrers(FakeRepository):
    """Every manifest has ``count`` referrers (signatures of it) by the referrers API."""

    count: int = 0

    async def referrers_of(self, digest: str) -> Referrers:
        sigs = [image(b"sig-%d-" % i + digest.encode()) for i in range(self.count)]
        for sig in sigs:
            self.put(sig)
        return Referrers(tuple(s.descriptor() for s in sigs), True)


async def test_referrers_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    src = WithReferrers()
    root = image(b"a")
    src.put(root, "1.4")
    src.count = 3
    monkeypatch.setattr(
        "imagecopy.copy.referrers.find_referrers", lambda repo, digest: repo.referrers_of(digest)
    )
    plan = await plan_for(src, FakeRepository(), bounds=Bounds(max_referrers=2))
    assert isinstance(plan, Plan)
    with pytest.raises(LimitExceeded) as caught:
        await add_referrers(src, plan, skip=set())  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"the manifest {root.digest} has 3 referrers, more than the limit of 2"
    )


# --------------------------------------------------------------------------- text kept out of URLs


HEX = "ab" * 32


@pytest.mark.parametrize(
    "digest",
    [
        f"sha256:{HEX}/../../other/private/blobs/sha256:{HEX}",
        f"sha256:{HEX.upper()}",
        f"sha256:{HEX}0",
        "sha512:" + "a" * 64,
        "blake3:" + "a" * 64,
        f"sha256:{HEX}?x=1",
    ],
)
def test_a_descriptor_digest_must_be_sha256_or_sha512_hex(digest: str) -> None:
    with pytest.raises(
        UnsupportedMediaType, match=r"malformed descriptor: .* is not a valid digest"
    ):
        Descriptor.from_json({"mediaType": "x", "digest": digest, "size": 1}, "manifest m")


def test_sha512_descriptors_are_accepted() -> None:
    desc = Descriptor.from_json({"digest": "sha512:" + "c" * 128, "size": 1}, "m")
    assert desc.digest == "sha512:" + "c" * 128


def test_a_manifest_naming_a_traversal_digest_is_refused_whole() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{HEX}/../x", "size": 2}],
    }
    with pytest.raises(UnsupportedMediaType, match="malformed descriptor"):
        parse_manifest(json.dumps(doc).encode(), None, "manifest m")


@pytest.mark.parametrize(
    "host", ["[::::]", "[1::2::3]", "999.1.1.1", "xn--a.example", "XN--.example", "[::1"]
)
def test_hosts_no_url_can_carry_are_invalid_references(host: str) -> None:
    with pytest.raises(InvalidReference):
        Registry.parse(host)


@pytest.mark.parametrize("realm", ["https://xn--a.example/token", "//XN--/token"])
def test_a_realm_on_an_invalid_idna_host_is_refused_with_unauthorized(realm: str) -> None:
    challenge = Challenge("bearer", {"realm": realm})
    with pytest.raises(Unauthorized, match="not a valid URL"):
        checked_realm(challenge, Registry.parse("reg.example"), scheme="https")


def test_a_docker_config_nested_too_deep_is_secret_invalid() -> None:
    deep = '{"auths":' + "[" * 1000 + "]" * 1000 + "}"
    with pytest.raises(SecretInvalid, match=r"^the docker config nests JSON more than 64"):
        CredentialStore.from_docker_config(deep)


def test_copy_options_carry_the_bounds_and_the_manifest_concurrency() -> None:
    options = CopyOptions()
    assert options.bounds == Bounds() and options.manifest_concurrency == 16


def test_the_referrers_tag_of_any_digest_is_a_valid_tag() -> None:
    assert referrers_tag(f"sha256:{HEX}") == f"sha256-{HEX}"
    tag = referrers_tag("sha512:" + "d" * 128)
    assert tag == "sha512-" + "d" * 64 and is_tag(tag)
