"""Property-based fuzzing of every parser that reads text a tenant or a registry controls.

The property is the same everywhere: arbitrary input either parses or raises an
``ImageCopyError`` subclass — never ``RecursionError``, ``OverflowError``, ``KeyError``,
``TypeError`` or ``UnicodeError`` — and each example finishes within the profile's deadline
(``tests/fuzz/conftest.py``). Inputs are arbitrary text and bytes, near-valid texts built from
the grammar's own pieces (so the accepting paths are explored too), nested JSON from
``st.recursive`` and, separately, JSON nested far deeper than ``st.recursive`` reaches.

Where a parse succeeds, a second property checks that what it produced is safe to use: a
parsed digest, reference or descriptor can be pasted into a URL path without leaving its
repository, and a token's lifetime is a finite number of seconds.

Every property holds (the issue-10 defects they pinned are fixed).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagecopy.oci.auth.challenge import Challenge, checked_realm, parse_www_authenticate
from imagecopy.oci.auth.flow import RegistryAuth
from imagecopy.oci.auth.tokens import ChallengeCache, Token, TokenCache
from imagecopy.oci.credentials import Credential, CredentialStore
from imagecopy.oci.descriptor import Descriptor, parse_manifest
from imagecopy.oci.egress import HostList
from imagecopy.oci.errors import ImageCopyError
from imagecopy.oci.reference import Reference, Registry, parse_digest, parse_platform
from imagecopy.oci.repository import registry_error_codes
from imagecopy.oci.retry import Backoff

pytestmark = pytest.mark.fuzz

# --------------------------------------------------------------------------- strategies

HEX = "0123456789abcdef"
sha256 = st.text(HEX, min_size=64, max_size=64).map(lambda h: f"sha256:{h}")
sha512 = st.text(HEX, min_size=128, max_size=128).map(lambda h: f"sha512:{h}")
#: Digests that are nearly right, or wrong in the ways an attacker would try.
odd_digests = st.one_of(
    st.from_regex(r"[a-z0-9+._-]{0,12}:[a-zA-Z0-9=_:/.%-]{0,140}", fullmatch=True),
    st.builds(
        lambda d, tail: d + tail,
        sha256,
        st.sampled_from(
            [
                "/../../other/private/blobs/" + "sha256:" + "0" * 64,
                "%2f..%2f..%2fx",
                "?x=1",
                "#frag",
                "/",
                "\n",
                "\x00",
                "A",
            ]
        ),
    ),
    st.builds(lambda h: f"sha256:{h}", st.text(HEX + "ABCDEF", min_size=60, max_size=68)),
)
digests = st.one_of(sha256, sha512, odd_digests)

hosts = st.one_of(
    st.sampled_from(
        [
            "docker.io",
            "index.docker.io",
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[::ffff:169.254.169.254]",
            "[64:ff9b::a9fe:a9fe]:80",
            "[::::]",
            "reg.example.com",
            "reg.example.com:0",
            "reg.example.com:65536",
            "reg.example.com:99999999999999999999",
            "xn--bcher-kva.example",
            "bücher.example",
        ]
    ),
    st.from_regex(r"[a-zA-Z0-9.-]{1,24}(:[0-9]{0,7})?", fullmatch=True),
    st.from_regex(r"\[[0-9a-fA-F:.]{0,45}\](:[0-9]{1,6})?", fullmatch=True),
)
path_components = st.from_regex(r"[a-z0-9]{1,8}([._-]{1,2}[a-z0-9]{1,8}){0,2}", fullmatch=True)
paths = st.lists(
    st.one_of(path_components, st.sampled_from(["..", ".", "", "A", "a%2f", "a b"])),
    min_size=1,
    max_size=5,
).map("/".join)
tags = st.one_of(st.from_regex(r"[\w][\w.-]{0,127}", fullmatch=True), st.text(max_size=140))


@st.composite
def reference_texts(draw: st.DrawFn) -> str:
    """``[registry/]path[:tag][@digest]`` from parts that are mostly valid."""
    text = draw(paths)
    if draw(st.booleans()):
        text = f"{draw(hosts)}/{text}"
    if draw(st.booleans()):
        text += f":{draw(tags)}"
    if draw(st.booleans()):
        text += f"@{draw(digests)}"
    return text


any_text = st.one_of(
    st.text(max_size=400),
    st.text(alphabet="ab0:/@.[]-_%", max_size=2_000),
    reference_texts(),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    digests,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=12), children, max_size=6),
    ),
    max_leaves=40,
)


def _descriptor_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "mediaType": st.one_of(
                st.sampled_from(
                    [
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.oci.image.index.v1+json",
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    ]
                ),
                json_values,
            ),
            "digest": st.one_of(digests, json_values),
            "size": st.one_of(st.integers(min_value=-1, max_value=2**64), json_values),
            "urls": json_values,
            "platform": json_values,
            "annotations": json_values,
            "artifactType": json_values,
        },
    )


valid_descriptors = st.fixed_dictionaries(
    {
        "mediaType": st.just("application/vnd.oci.image.layer.v1.tar+gzip"),
        "digest": digests,
        "size": st.integers(min_value=0, max_value=2**40),
    },
    optional={"urls": st.lists(st.text(max_size=20), max_size=2), "annotations": json_values},
)
descriptors = st.one_of(valid_descriptors, _descriptor_like(), json_values)


@st.composite
def manifest_documents(draw: st.DrawFn) -> Any:
    """Index- and manifest-shaped JSON documents with hostile field values."""
    kind = draw(st.sampled_from(["index", "manifest", "other"]))
    # Mostly well-formed descriptor lists: one bad entry fails the whole document, and the
    # interesting documents are those that parse.
    entries = st.one_of(
        st.lists(valid_descriptors, max_size=5),
        st.lists(descriptors, max_size=5),
        json_values,
    )
    doc: dict[str, Any] = {"schemaVersion": draw(st.one_of(st.just(2), json_scalars))}
    if draw(st.booleans()):
        doc["mediaType"] = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "application/vnd.oci.image.index.v1+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v1+json",
                        "application/json",
                        "",
                    ]
                ),
                json_values,
            )
        )
    if kind == "index":
        doc["manifests"] = draw(entries)
    elif kind == "manifest":
        doc["config"] = draw(st.one_of(valid_descriptors, descriptors))
        doc["layers"] = draw(entries)
    if draw(st.booleans()):
        doc["subject"] = draw(descriptors)
    if draw(st.booleans()):
        doc["artifactType"] = draw(json_values)
    return doc if kind != "other" else draw(json_values)


@dataclass(frozen=True)
class Deep:
    """JSON nested far deeper than any real document: ``[[[…]]]`` or ``{"a":{"a":…}}``, bare or
    inside a field a parser reads. A value with a short repr, so a failing example prints as
    ``Deep(depth=…)`` and not as 200 kB of brackets."""

    depth: int
    arrays: bool
    field: str

    @property
    def text(self) -> str:
        if self.arrays:
            inner = "[" * self.depth + "]" * self.depth
        else:
            inner = '{"a":' * self.depth + "1" + "}" * self.depth
        return inner if not self.field else f'{{"schemaVersion":2,"{self.field}":{inner}}}'


deep_json = st.builds(
    Deep,
    depth=st.integers(min_value=1_000, max_value=120_000),
    arrays=st.booleans(),
    field=st.sampled_from(["", "manifests", "layers", "config", "auths", "errors", "x", "token"]),
)


def _typed_or_returns(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; an ``ImageCopyError`` is an answer (None), anything else propagates."""
    try:
        return fn(*args, **kwargs)
    except ImageCopyError as exc:
        assert str(exc), "an error without a sentence"
        return None


#: A repository path or digest that stays inside its URL segment.
_URL_SAFE_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_KNOWN_LENGTHS = {"sha256": 64, "sha512": 128}


def _assert_url_safe_digest(digest: str) -> None:
    assert _URL_SAFE_DIGEST.fullmatch(digest), digest
    algorithm, _, encoded = digest.partition(":")
    if algorithm in _KNOWN_LENGTHS:
        assert len(encoded) == _KNOWN_LENGTHS[algorithm] and set(encoded) <= set(HEX)


# --------------------------------------------------------------------------- names


@given(any_text)
def test_reference_parse_returns_or_raises_a_typed_error(text: str) -> None:
    ref = _typed_or_returns(Reference.parse, text)
    if ref is None:
        return
    # what parsed is safe to put in a URL and parses back to itself
    assert ".." not in ref.repository.split("/")
    assert re.fullmatch(r"[a-z0-9._/-]+", ref.repository)
    if ref.digest is not None:
        _assert_url_safe_digest(ref.digest)
    assert Reference.parse(str(ref)) == ref


@given(any_text)
def test_reference_parse_without_a_default_tag_is_typed_too(text: str) -> None:
    _typed_or_returns(Reference.parse, text, default_tag=None)


@given(st.one_of(digests, any_text))
def test_parse_digest_accepts_only_url_safe_digests(text: str) -> None:
    digest = _typed_or_returns(parse_digest, text)
    if digest is not None:
        _assert_url_safe_digest(digest)


@given(st.one_of(hosts, any_text))
def test_registry_parse_returns_or_raises_a_typed_error(text: str) -> None:
    registry = _typed_or_returns(Registry.parse, text)
    if registry is not None:
        assert Registry.parse(str(registry)) == registry
        assert registry.port is None or 0 < registry.port < 65536


@given(st.one_of(hosts, any_text))
def test_a_parsed_registry_makes_a_valid_url(text: str) -> None:
    registry = _typed_or_returns(Registry.parse, text)
    if registry is not None:
        url = httpx.URL(registry.origin("https") + "/v2/")
        # the host as sent (``url.host`` shows punycode decoded, and must not raise)
        assert url.raw_host.decode("ascii") == registry.hostname.lower()
        assert url.host


@given(st.one_of(st.from_regex(r"[a-zA-Z0-9._-]{0,12}(/[a-zA-Z0-9._-]{0,12}){0,3}"), any_text))
def test_parse_platform_returns_or_raises_a_typed_error(text: str) -> None:
    platform = _typed_or_returns(parse_platform, text)
    if platform is not None:
        assert parse_platform(str(platform)) == platform


# --------------------------------------------------------------------------- descriptors, manifests


@given(descriptors)
def test_descriptor_from_json_returns_or_raises_a_typed_error(obj: Any) -> None:
    _typed_or_returns(Descriptor.from_json, obj, "fuzz")


@given(descriptors)
def test_a_parsed_descriptor_digest_is_safe_in_a_url(obj: Any) -> None:
    descriptor = _typed_or_returns(Descriptor.from_json, obj, "fuzz")
    if descriptor is not None:
        _assert_url_safe_digest(descriptor.digest)


@given(manifest_documents(), st.sampled_from([None, "application/json", "text/plain"]))
def test_parse_manifest_of_hostile_documents_is_typed(doc: Any, media_type: str | None) -> None:
    data = json.dumps(doc).encode()
    _typed_or_returns(parse_manifest, data, media_type, "fuzz")


@given(st.binary(max_size=2_000), st.sampled_from([None, "application/json"]))
def test_parse_manifest_of_arbitrary_bytes_is_typed(data: bytes, media_type: str | None) -> None:
    _typed_or_returns(parse_manifest, data, media_type, "fuzz")


@given(manifest_documents())
def test_every_digest_a_parsed_manifest_names_is_safe_in_a_url(doc: Any) -> None:
    manifest = _typed_or_returns(parse_manifest, json.dumps(doc).encode(), None, "fuzz")
    if manifest is not None:
        named = [*manifest.manifests, *manifest.blobs]
        if manifest.subject is not None:
            named.append(manifest.subject)
        for descriptor in named:
            _assert_url_safe_digest(descriptor.digest)


@settings(max_examples=12)
@given(deep_json)
def test_parse_manifest_of_deeply_nested_json_is_typed(deep: Deep) -> None:
    _typed_or_returns(parse_manifest, deep.text.encode(), None, "fuzz")


# --------------------------------------------------------------------------- auth


header_texts = st.one_of(
    st.text(max_size=400),
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "Bearer",
                    "Basic",
                    "basic",
                    "Negotiate",
                    'realm="https://auth.example/token"',
                    'realm="http://169.254.169.254/"',
                    "realm=unquoted",
                    'service="x,y"',
                    'scope="repository:a:pull repository:b:push"',
                    '"unterminated',
                    '\\"',
                    "=",
                    "==",
                    ",",
                    " ",
                    "token68abc==",
                ]
            ),
            st.text(alphabet='abc=",\\ \t', max_size=12),
        ),
        max_size=20,
    ).map(lambda parts: "".join(parts)),
)


@given(st.one_of(header_texts, st.lists(header_texts, max_size=4)))
def test_parse_www_authenticate_never_raises(values: str | list[str]) -> None:
    challenges = parse_www_authenticate(values)
    for challenge in challenges:
        assert challenge.scheme == challenge.scheme.lower() and challenge.scheme
        assert all(key == key.lower() for key in challenge.params)


@given(
    st.tuples(st.text(alphabet='ab,= \t"\\', min_size=1, max_size=12), st.integers(500, 5_000)).map(
        lambda t: t[0] * t[1]
    )
)
def test_parse_www_authenticate_is_linear_on_long_garbage(text: str) -> None:
    parse_www_authenticate(text)


realms = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "/token",
            "token",
            "//other.example/token",
            "http://other.example/token",
            "http://reg.example:8080/token",
            "https://auth.example:99999/token",
            "http://[::ffff:169.254.169.254]/",
            "ftp://reg.example/token",
            "https://bücher.example/token",
            "https://xn--/token",
            "http://[::::]/",
            "",
        ]
    ),
)


@given(realms, st.sampled_from(["http", "https"]), st.booleans())
def test_checked_realm_returns_or_refuses_with_unauthorized(
    realm: str, scheme: str, allow_insecure: bool
) -> None:
    challenge = Challenge("bearer", {"realm": realm, "service": "s"})
    registry = Registry.parse("reg.example")
    # ``allow_insecure``: the registry's own host is configured for plain HTTP.
    plain_http = HostList.parse(["reg.example"]) if allow_insecure else None
    checked = _typed_or_returns(
        checked_realm, challenge, registry, scheme=scheme, plain_http=plain_http
    )
    if checked is not None:
        url = httpx.URL(checked.realm or "")
        assert url.scheme in ("http", "https")
        # a plain-HTTP realm only on a host configured for plain HTTP
        assert url.scheme == "https" or (allow_insecure and url.host == registry.hostname)


token_answers = st.fixed_dictionaries(
    {},
    optional={
        "token": json_values,
        "access_token": json_values,
        "expires_in": st.one_of(
            st.floats(), st.integers(), st.just(float("inf")), st.just(1e308), json_values
        ),
        "issued_at": st.one_of(
            st.sampled_from(["2026-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01", "x"]),
            json_values,
        ),
    },
)


@given(token_answers)
def test_a_token_answer_gives_a_finite_lifetime(answer: dict[str, Any]) -> None:
    token = _typed_or_returns(Token.from_answer, "t", frozenset(), answer, now=1_000.0)
    if token is not None:
        assert math.isfinite(token.refresh_at)
        assert token.refresh_at >= 1_000.0 - 10


def _token_body(data: bytes) -> Any:
    """How the auth flow reads a 200 answer of a token service. ``_token_answer`` is private,
    but pure (a response in, a dict or a typed error out): the whole flow would need a token
    service per example."""
    auth = RegistryAuth(
        Registry.parse("reg.example"),
        Credential(username="u", password="p"),
        token_client=_TOKEN_CLIENT,
        tokens=TokenCache(),
        challenges=ChallengeCache(),
    )
    return auth._token_answer(200, data, ("repository:a:pull",))


_TOKEN_CLIENT = httpx.AsyncClient()  # never sends: _token_answer only reads a body


@given(st.one_of(st.binary(max_size=500), json_values.map(lambda v: json.dumps(v).encode())))
def test_a_token_body_is_a_dict_or_a_typed_error(data: bytes) -> None:
    answer = _typed_or_returns(_token_body, data)
    assert answer is None or isinstance(answer, dict)


@settings(max_examples=12)
@given(deep_json)
def test_a_deeply_nested_token_body_is_typed(deep: Deep) -> None:
    _typed_or_returns(_token_body, deep.text.encode())


@given(
    st.integers(min_value=400, max_value=599),
    st.one_of(
        st.binary(max_size=500),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(json_values, max_size=5).map(lambda e: json.dumps({"errors": e}).encode()),
    ),
)
def test_registry_error_codes_of_any_error_body(status: int, data: bytes) -> None:
    pairs = registry_error_codes(httpx.Response(status, content=data))
    assert len(pairs) <= 3
    assert all(len(code) <= 64 and len(message) <= 200 for code, message in pairs)


@settings(max_examples=12)
@given(deep_json)
def test_registry_error_codes_of_a_deeply_nested_body(deep: Deep) -> None:
    registry_error_codes(httpx.Response(500, content=deep.text.encode()))


@given(st.integers(min_value=0, max_value=10**7))
def test_backoff_is_finite_for_any_retry_number(retry: int) -> None:
    backoff = Backoff()
    step = backoff.step(retry)
    assert 0 <= step <= backoff.cap
    assert 0 <= backoff.delay(retry) <= backoff.cap


# --------------------------------------------------------------------------- docker configs


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()


config_entries = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "auth": st.one_of(
                st.text(max_size=40).map(_b64),
                st.text(max_size=40),
                st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
                json_values,
            ),
            "username": json_values,
            "password": json_values,
            "identitytoken": json_values,
            "registrytoken": json_values,
        },
    ),
    json_values,
)
docker_configs = st.one_of(
    st.fixed_dictionaries(
        {
            "auths": st.one_of(
                st.dictionaries(st.one_of(hosts, st.text()), config_entries), json_values
            )
        },
        optional={"credsStore": json_values, "credHelpers": json_values},
    ),
    st.dictionaries(st.one_of(hosts, st.text(max_size=30)), config_entries, max_size=4),
    json_values,
)


@given(docker_configs, st.sampled_from(["mapping", "text", "bytes"]))
def test_from_docker_config_returns_or_raises_secret_invalid(doc: Any, form: str) -> None:
    data: Any = doc
    if form != "mapping":
        text = json.dumps(doc)
        data = text if form == "text" else text.encode()
    elif not isinstance(doc, dict):
        return  # the mapping form is for documents already parsed into a dict
    store = _typed_or_returns(CredentialStore.from_docker_config, data)
    if store is not None:
        for registry in store.registries():
            credential = store.get(registry)
            assert "password=" not in repr(credential) or "<set>" in repr(credential)


@given(st.binary(max_size=1_000))
def test_from_docker_config_of_arbitrary_bytes_is_typed(data: bytes) -> None:
    _typed_or_returns(CredentialStore.from_docker_config, data)


@settings(max_examples=12)
@given(deep_json)
def test_from_docker_config_of_deeply_nested_json_is_typed(deep: Deep) -> None:
    _typed_or_returns(CredentialStore.from_docker_config, deep.text)
