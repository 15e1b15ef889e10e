"""Credentials and Docker config files (config.json, legacy .dockercfg)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from imagecopy.oci.credentials import (
    ANONYMOUS,
    Credential,
    CredentialStore,
    normalize_registry_key,
)
from imagecopy.oci.errors import SecretInvalid
from imagecopy.oci.reference import DOCKER_HUB, Reference, Registry
from testkit.registry import RegistryServer

SECRET = "hunter2-s3cr3t"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("https://index.docker.io/v1/", DOCKER_HUB),
        ("https://index.docker.io/v2/", DOCKER_HUB),
        ("index.docker.io", DOCKER_HUB),
        ("docker.io", DOCKER_HUB),
        ("registry-1.docker.io", DOCKER_HUB),
        ("HTTPS://Registry.Example.com/v2/", "registry.example.com"),
        ("http://localhost:5000", "localhost:5000"),
        ("registry.example.com:443", "registry.example.com:443"),
        ("127.0.0.1:5000/", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        (" quay.io ", "quay.io"),
        ("not a host!", "not a host!"),
    ],
)
def test_normalize_registry_key(key: str, expected: str) -> None:
    assert normalize_registry_key(key) == expected


def test_config_json_auth_field_decodes_user_and_password() -> None:
    store = CredentialStore.from_docker_config(
        {"auths": {"registry.example.com": {"auth": b64(f"alice:{SECRET}:with:colons")}}}
    )
    cred = store.get("registry.example.com")
    assert cred == Credential(username="alice", password=f"{SECRET}:with:colons")
    assert not cred.anonymous


def test_docker_hub_v1_key_is_found_under_every_hub_spelling() -> None:
    store = CredentialStore.from_docker_config(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": b64("bob:pw")}}})
    )
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB):
        assert store.get(name).username == "bob"
    assert store.registries() == [DOCKER_HUB]


def test_username_and_password_fields() -> None:
    store = CredentialStore.from_docker_config(
        b'{"auths": {"r.io": {"username": "u", "password": "p", "email": "x@y"}}}'
    )
    assert store.get("r.io") == Credential("u", "p")


def test_auth_field_wins_over_username_and_password() -> None:
    store = CredentialStore.from_docker_config(
        {"auths": {"r.io": {"auth": b64("a:b"), "username": "u", "password": "p"}}}
    )
    assert store.get("r.io") == Credential("a", "b")


def test_auth_field_without_padding_is_accepted() -> None:
    encoded = b64("ab:c").rstrip("=")
    assert CredentialStore.from_docker_config({"auths": {"r.io": {"auth": encoded}}}).get(
        "r.io"
    ) == Credential("ab", "c")


def test_identity_token_and_registry_token() -> None:
    store = CredentialStore.from_docker_config(
        {
            "auths": {
                "a.io": {"auth": b64("<token>:"), "identitytoken": "refresh-xyz"},
                "b.io": {"registrytoken": "bearer-abc"},
            }
        }
    )
    assert store.get("a.io").identity_token == "refresh-xyz"
    assert store.get("a.io").username == "<token>"
    assert store.get("b.io") == Credential(registry_token="bearer-abc")


def test_legacy_dockercfg_shape() -> None:
    store = CredentialStore.from_docker_config(
        {"https://index.docker.io/v1/": {"auth": b64("old:pw"), "email": "e@x"}, "q.io": {}}
    )
    assert store.get("docker.io") == Credential("old", "pw")
    assert len(store) == 1


def test_creds_store_and_cred_helpers_are_ignored() -> None:
    store = CredentialStore.from_docker_config(
        {
            "auths": {"https://index.docker.io/v1/": {}, "r.io": {"auth": b64("u:p")}},
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud"},
        }
    )
    assert store.registries() == ["r.io"]
    assert store.get("docker.io") is ANONYMOUS
    only_helpers = CredentialStore.from_docker_config({"credsStore": "osxkeychain"})
    assert len(only_helpers) == 0


def test_unknown_registry_is_anonymous() -> None:
    store = CredentialStore.from_docker_config({"auths": {"r.io": {"auth": b64("u:p")}}})
    assert store.get("other.io") is ANONYMOUS
    assert ANONYMOUS.anonymous
    assert "other.io" not in store and "R.IO" in store


def test_first_entry_wins_when_two_keys_name_one_registry() -> None:
    store = CredentialStore.from_docker_config(
        {"auths": {"docker.io": {"auth": b64("first:1")}, "index.docker.io": {"auth": b64("x:2")}}}
    )
    assert store.get("docker.io").username == "first"


def test_empty_documents_are_empty_stores() -> None:
    for data in ({}, "{}", b'{"auths": {}}', {"auths": None}):
        assert len(CredentialStore.from_docker_config(data)) == 0


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (f'{{"auths": {{"r.io": {{"auth": "{SECRET}"', "not valid JSON"),
        (b"\xff\xfe" + SECRET.encode(), "not"),
        (f'["{SECRET}"]', "not a JSON object"),
        (json.dumps({"auths": [SECRET]}), "'auths' field"),
        (json.dumps({"auths": {"r.io": SECRET}}), "entry for r.io is not a JSON object"),
        (json.dumps({"auths": {"r.io": {"auth": SECRET + "!!"}}}), "not valid base64"),
        (json.dumps({"auths": {"r.io": {"auth": b64(SECRET)}}}), "username:password"),
        (json.dumps({"auths": {"r.io": {"password": 12345}}}), "non-string 'password'"),
        (json.dumps({"auths": {"": {"auth": b64("u:" + SECRET)}}}), "empty registry key"),
        (json.dumps({"r.io": SECRET}), "entry for r.io is not a JSON object"),
    ],
)
def test_invalid_configs_name_the_problem_without_echoing_content(
    data: str | bytes, problem: str
) -> None:
    with pytest.raises(SecretInvalid) as info:
        CredentialStore.from_docker_config(data)
    message = str(info.value)
    assert problem in message
    assert SECRET not in message
    assert b64(SECRET) not in message
    # A chained JSONDecodeError would carry the whole document (``.doc``) into tracebacks.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_repr_and_str_never_show_secrets() -> None:
    cred = Credential("alice", SECRET, identity_token=SECRET + "i", registry_token=SECRET + "r")
    for text in (repr(cred), str(cred), f"{cred}", repr(CredentialStore({"r.io": cred}))):
        assert SECRET not in text
    assert "alice" in repr(cred)
    assert "password=<set>" in repr(cred)
    assert repr(ANONYMOUS) == "Credential(username='')"


def test_cache_key_names_a_credential_without_holding_it() -> None:
    cred = Credential("alice", SECRET, identity_token=SECRET + "i", registry_token=SECRET + "r")
    key = cred.cache_key
    twin = Credential("alice", SECRET, identity_token=SECRET + "i", registry_token=SECRET + "r")
    assert key == twin.cache_key and hash(key) == hash(twin.cache_key)
    for text in (repr(key), str(key), f"{key}", key.fingerprint):
        assert SECRET not in text
        assert b64(SECRET) not in text
    assert repr(key).startswith("CredentialKey(") and key.fingerprint not in repr(key)


def test_cache_keys_differ_whenever_any_field_differs() -> None:
    variants = [
        ANONYMOUS,
        Credential("alice"),
        Credential("alice", SECRET),
        Credential("alice", SECRET + "x"),
        Credential("bob", SECRET),
        Credential(password=SECRET),
        Credential(identity_token=SECRET),
        Credential(registry_token=SECRET),
        Credential("alice", SECRET, identity_token=SECRET),
        # Field boundaries count: neither joins to the same text as the other.
        Credential("a:b", "c"),
        Credential("a", "b:c"),
    ]
    assert len({c.cache_key for c in variants}) == len(variants)
    assert Credential().cache_key == ANONYMOUS.cache_key


def test_get_accepts_a_registry_value() -> None:
    store = CredentialStore.from_docker_config(
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("bob:pw")},
                "LocalHost:5000": {"auth": b64("loc:pw")},
            }
        }
    )
    assert store.get(Registry.parse("docker.io")).username == "bob"
    assert store.get(Reference.parse("nginx").registry).username == "bob"
    assert store.get(Registry.parse("localhost:5000")).username == "loc"
    assert store.get(Registry.parse("localhost")) is ANONYMOUS
    assert Registry.parse("localhost:5000") in store and Registry.parse("r.io") not in store
    assert 5000 not in store


def test_merged_prefers_self_per_registry() -> None:
    own = CredentialStore({"a.io": Credential("own", "1")})
    fallback = CredentialStore({"a.io": Credential("fb", "2"), "docker.io": Credential("fb", "3")})
    merged = own.merged(fallback)
    assert merged.get("a.io").username == "own"
    assert merged.get("index.docker.io").password == "3"
    assert merged.registries() == sorted(["a.io", DOCKER_HUB])
    assert len(own) == 1  # unchanged


def test_load_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    assert len(CredentialStore.load(tmp_path / "nope.json")) == 0


def test_load_reads_a_config_written_for_a_real_registry(tmp_path: Path) -> None:
    server = RegistryServer(auth="basic", port=5999, workdir=tmp_path / "reg")  # not started
    path = server.docker_config(tmp_path / "cfg")
    cred = CredentialStore.load(path).get(server.host)
    assert cred == Credential(server.username, server.password)
    assert CredentialStore.load(tmp_path / "cfg").get(server.host) == cred  # a directory


def test_load_defaults_to_docker_config_env_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "config.json").write_text(json.dumps({"auths": {"e.io": {"auth": b64("e:1")}}}))
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"h.io": {"auth": b64("h:1")}}})
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(env_dir))
    assert CredentialStore.load().registries() == ["e.io"]
    monkeypatch.delenv("DOCKER_CONFIG")
    assert CredentialStore.load().registries() == ["h.io"]


def test_load_reports_the_file_of_a_broken_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"r.io": {"auth": "' + SECRET + '"')
    with pytest.raises(SecretInvalid, match=r"config\.json") as info:
        CredentialStore.load(path)
    assert SECRET not in str(info.value)
