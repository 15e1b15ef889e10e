"""Fuzzing the cosign wire parsers (``oci.cosign``): a registry controls every byte of a
``.sig`` payload, its annotation and a sigstore bundle. Arbitrary input parses into a
``Signature`` (possibly with a ``problem``), never raises, and a signature whose bytes were
not made by a key never verifies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st

from imagecopy.copy.verify import check_signature, evaluate, load_key
from imagecopy.oci.cosign import parse_bundle, parse_simple_signing

pytestmark = pytest.mark.fuzz

DIGEST = "sha256:" + "ab" * 32
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


KEYS = (
    load_key("k/ec.pub", _pem(ec.generate_private_key(ec.SECP256R1()))),
    load_key("k/ed.pub", _pem(ed25519.Ed25519PrivateKey.generate())),
)


@given(payload=st.binary(max_size=300), note=st.none() | st.text(max_size=120))
def test_simple_signing_of_arbitrary_bytes(payload: bytes, note: str | None) -> None:
    sig = parse_simple_signing(payload, note, "x")
    assert sig.problem is not None or sig.signature
    assert not any(check_signature(k, sig) for k in KEYS)


@given(doc=json_values)
def test_bundles_of_arbitrary_json(doc: Any) -> None:
    for wrapper in (doc, {"dsseEnvelope": doc}, {"messageSignature": doc}):
        sigs = parse_bundle(json.dumps(wrapper).encode(), DIGEST, "b")
        assert not evaluate(DIGEST, sigs, KEYS).verified


@given(data=st.binary(max_size=300))
def test_bundles_of_arbitrary_bytes(data: bytes) -> None:
    assert not evaluate(DIGEST, parse_bundle(data, DIGEST, "b"), KEYS).verified


@given(depth=st.integers(min_value=65, max_value=200_000), opener=st.sampled_from("[{"))
def test_deeply_nested_payloads_and_bundles_never_raise(depth: int, opener: str) -> None:
    """JSON nested past the parser's depth bound is refused as unusable, not a RecursionError
    (``json.loads`` alone overflows the stack near 100,000 levels)."""
    layer = '{"a":' if opener == "{" else "["
    closer = "}" if opener == "{" else "]"
    deep = (layer * depth + "1" + closer * depth).encode()
    assert parse_simple_signing(deep, None, "x").problem is not None
    assert not evaluate(DIGEST, parse_bundle(deep, DIGEST, "b"), KEYS).verified
