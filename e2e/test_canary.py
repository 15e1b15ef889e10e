"""The credential canary: no password or token ever shows in anything the operator or the CLI
writes.

Every credential here is a *canary*, a random string used once and then searched for: Basic
passwords (in ``auth`` and in ``username``/``password`` form), an OAuth2 identity token that
the token service really accepts, a registry token that the registry really accepts, and the
wrong ones of each. They travel in real Secrets (``kubernetes.io/dockerconfigjson`` and the
legacy ``kubernetes.io/dockercfg``, by ``secretRef`` and through the ``default``
ServiceAccount's ``imagePullSecrets``) to a real operator process, and in docker config files
to the CLI, through copies that succeed and copies that fail (wrong password, unknown tokens,
an ``auth`` field that is not base64, a missing source).

Then everything they could leak into is read back and searched, for each canary, its first
half, and the base64 of ``user:password``: the operator's log (stdout and stderr, at
``--verbose``), every Event in every namespace, every ImageCopy (status and all), the
metrics page, and the CLI's stdout and stderr (plain, ``--json``, ``--dry-run``, errors, and
``--debug`` where the CLI has it). Bearer tokens the token service issued during the run are
JWTs: the same places must hold nothing that looks like one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.images import push_image
from testkit.registry import RegistryServer, find_registry_binary
from testkit.token_issuer import Scope, TokenIssuer
from testkit.tools import REPO_ROOT
from tests.support.fixtures import *  # noqa: F403  (unique_repo, tools_on_path)
from tests.support.fixtures import UniqueRepo, require_tool

pytestmark = pytest.mark.e2e

USER = "alice"
#: What a Bearer token from the token service looks like (a JWS: header.payload.signature).
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
SETTLE = 4.0  # seconds: a slow retry (3 s) of every failed object lands in the logs too


def _canary(kind: str) -> str:
    return f"canary-{kind}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Canaries:
    basic_password: str
    token_password: str
    wrong_password: str
    identity_token: str
    wrong_identity_token: str
    registry_token: str
    wrong_registry_token: str
    bad_auth: str

    def needles(self) -> dict[str, str]:
        """Every string that must not appear, named for the failure message: each canary, a
        12-character random slice of it (a truncated or partly masked leak), and the base64
        of each ``user:password``."""
        out: dict[str, str] = {}
        for name, value in vars(self).items():
            out[name] = value
            out[f"a slice of {name}"] = value[-24:-12]
        for name in ("basic_password", "token_password", "wrong_password"):
            pair = f"{USER}:{getattr(self, name)}".encode()
            out[f"base64 of {USER}:{name}"] = base64.b64encode(pair).decode()
        return out


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def assert_no_canary(where: str, text: str, canaries: Canaries) -> None:
    found = [name for name, needle in canaries.needles().items() if needle in text]
    assert not found, f"{where} reveals {', '.join(found)}"
    jwt = JWT.search(text)
    assert jwt is None, f"{where} holds a bearer token ({jwt.group(0)[:12]}…)" if jwt else ""


# --------------------------------------------------------------------------- registries


@dataclass
class Registries:
    issuer: TokenIssuer
    basic: RegistryServer
    token: RegistryServer
    canaries: Canaries
    #: The repositories the registry token grants: its source, then one destination each for
    #: the operator and the CLI.
    rt_repos: tuple[str, str, str]

    def plain_http_args(self) -> list[str]:
        hosts = (self.basic.host, self.token.host, f"127.0.0.1:{self.issuer.port}")
        return [arg for host in hosts for arg in ("--plain-http", host)]


@pytest.fixture(scope="module")
def registries() -> Iterator[Registries]:
    """A Basic-auth distribution 2.8.2 and a token-auth distribution v3, their passwords and
    tokens all canaries. The token service's realm is on 127.0.0.1 (the registries' host) so
    it is the plain-HTTP host the operator and the CLI are told about."""
    for impl, name in (("v2", "docker-registry"), ("v3", "registry (distribution v3)")):
        require_tool(name, find_registry_binary(impl))  # type: ignore[arg-type]
    wrong_password = _canary("wrongpw")
    issuer = TokenIssuer(
        users={USER: _canary("tokenpw")}, acl={USER: {"*": ["*"]}}, realm_host="127.0.0.1"
    ).start()
    basic = RegistryServer(impl="v2", auth="basic", username=USER, password=_canary("basicpw"))
    token = RegistryServer(
        impl="v3", auth="token", token_issuer=issuer, username=USER, password=issuer.users[USER]
    )
    base = f"canary-{secrets.token_hex(4)}"
    rt_repos = (f"{base}/rt/src", f"{base}/rt/operator", f"{base}/rt/cli")
    try:
        basic.start()
        token.start()
        push_image(token, rt_repos[0], "1", layers=2)
        canaries = Canaries(
            basic_password=basic.password,
            token_password=issuer.users[USER],
            wrong_password=wrong_password,
            identity_token=issuer.new_refresh_token(USER),
            wrong_identity_token=_canary("identity"),
            # distribution matches a token's access by exact repository name
            registry_token=issuer.mint(
                [Scope("repository", r, ("pull", "push")) for r in rt_repos],
                subject=USER,
                ttl=3600,
            ),
            wrong_registry_token=_canary("regtoken"),
            bad_auth=_canary("badauth") + "!!",
        )
        yield Registries(issuer, basic, token, canaries, rt_repos)
    finally:
        token.stop()
        basic.stop()
        issuer.stop()


def _entry(kind: str, c: Canaries) -> dict[str, str]:
    """One ``auths`` entry of a docker config, by the kind of credential it carries."""
    return {
        "auth": {"auth": _b64(f"{USER}:{c.basic_password}")},
        "basic-fields": {"username": USER, "password": c.basic_password},
        "token-password": {"username": USER, "password": c.token_password},
        "wrong-password": {"username": USER, "password": c.wrong_password},
        "identity": {"username": "<token>", "identitytoken": c.identity_token},
        "wrong-identity": {"username": "<token>", "identitytoken": c.wrong_identity_token},
        "registry-token": {"registrytoken": c.registry_token},
        "wrong-registry-token": {"registrytoken": c.wrong_registry_token},
        "bad-auth": {"auth": c.bad_auth},
    }[kind]


# --------------------------------------------------------------------------- the operator


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane).start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\noperator log: {proc.log_path}")


def _secret(
    cp: ControlPlane, ns: str, name: str, auths: dict[str, Any], legacy: bool = False
) -> None:
    if legacy:
        type_, key, doc = "kubernetes.io/dockercfg", ".dockercfg", auths
    else:
        type_, key, doc = "kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": auths}
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": {key: _b64(json.dumps(doc))},
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def _copy_spec(
    src: str, dst: str, src_secret: str | None, dst_secret: str | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"image": src}, "destination": {"image": dst}}
    if src_secret:
        spec["source"]["secretRef"] = {"name": src_secret}
    if dst_secret:
        spec["destination"]["secretRef"] = {"name": dst_secret}
    return spec


def _ready(icp: ImageCopies, name: str) -> dict[str, str]:
    return icp.condition(icp.get(name), "Ready")


def test_the_operator_never_reveals_a_credential(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registries: Registries,
    unique_repo: UniqueRepo,
) -> None:
    cp, c = control_plane, registries.canaries
    basic, token = registries.basic, registries.token
    icp = ImageCopies(cp, namespace)
    b_src, t_src = unique_repo("basic/src"), unique_repo("token/src")
    push_image(basic, b_src, "1", layers=2)
    push_image(token, t_src, "1", layers=2)

    secrets_by_kind = {
        "basic-auth": {basic.host: _entry("auth", c)},
        "basic-fields": {basic.host: _entry("basic-fields", c)},
        "token-password": {token.host: _entry("token-password", c)},
        "token-identity": {token.host: _entry("identity", c)},
        "token-registrytoken": {token.host: _entry("registry-token", c)},
        "wrong-password": {basic.host: _entry("wrong-password", c)},
        "wrong-identity": {token.host: _entry("wrong-identity", c)},
        "wrong-registrytoken": {token.host: _entry("wrong-registry-token", c)},
        "bad-auth": {basic.host: _entry("bad-auth", c)},
    }
    for name, auths in secrets_by_kind.items():
        _secret(cp, namespace, name, auths)
    _secret(cp, namespace, "legacy", {basic.host: _entry("auth", c)}, legacy=True)
    # The default ServiceAccount's pull secrets: an invalid one (skipped, with a warning in
    # the log), then a good one.
    cp.kubectl("create", "serviceaccount", "default", "-n", namespace, check=False)
    cp.kubectl(
        "patch",
        "serviceaccount",
        "default",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"imagePullSecrets": [{"name": "bad-auth"}, {"name": "basic-fields"}]}),
    )

    b = lambda repo, tag="1": basic.ref(repo, tag)  # noqa: E731
    t = lambda repo, tag="1": token.ref(repo, tag)  # noqa: E731
    succeed = {
        "basic-auth": _copy_spec(b(b_src), b(unique_repo("a")), "basic-auth", "basic-auth"),
        "basic-fields": _copy_spec(b(b_src), b(unique_repo("b")), "basic-fields", "basic-fields"),
        "legacy": _copy_spec(b(b_src), b(unique_repo("c")), "legacy", "legacy"),
        "pull-secrets": _copy_spec(b(b_src), b(unique_repo("d")), None, None),
        "token-password": _copy_spec(
            t(t_src), t(unique_repo("e")), "token-password", "token-password"
        ),
        "token-identity": _copy_spec(
            t(t_src), t(unique_repo("f")), "token-identity", "token-identity"
        ),
        "token-registrytoken": _copy_spec(
            t(registries.rt_repos[0]),
            t(registries.rt_repos[1]),
            "token-registrytoken",
            "token-registrytoken",
        ),
        "cross": _copy_spec(b(b_src), t(unique_repo("h")), "basic-auth", "token-password"),
    }
    # Both sides name a Secret: on one registry a missing side would fall back to the
    # default ServiceAccount's pull secrets, whose good password would make the copy work.
    fail = {
        "wrong-password": _copy_spec(
            b(b_src), b(unique_repo("i")), "wrong-password", "wrong-password"
        ),
        "wrong-identity": _copy_spec(
            t(t_src), t(unique_repo("j")), "wrong-identity", "wrong-identity"
        ),
        "wrong-registrytoken": _copy_spec(
            t(t_src), t(unique_repo("k")), "wrong-registrytoken", "wrong-registrytoken"
        ),
        "bad-auth": _copy_spec(b(b_src), b(unique_repo("l")), "bad-auth", "bad-auth"),
        "missing-source": _copy_spec(
            b(unique_repo("nothing")), b(unique_repo("m")), "basic-auth", "basic-auth"
        ),
        "push-refused": _copy_spec(b(b_src), t(unique_repo("n")), "basic-auth", "wrong-identity"),
    }
    for name, spec in {**succeed, **fail}.items():
        icp.apply(name, spec)

    for name in succeed:
        icp.wait_condition(name, reason=None, timeout=90, operator=operator)
    for name in fail:
        icp.wait_for(
            name,
            lambda o: (
                icp.condition(o, "Ready").get("status") == "False"
                and icp.condition(o, "Ready").get("reason") not in (None, "Reconciling", "Copying")
            ),
            timeout=90,
            what="a failure condition",
            operator=operator,
        )
    reasons = {name: _ready(icp, name).get("reason") for name in fail}
    assert reasons["wrong-password"] == "Unauthorized", reasons
    assert reasons["bad-auth"] == "SecretInvalid", reasons
    assert reasons["missing-source"] == "SourceNotFound", reasons
    time.sleep(SETTLE)

    assert_no_canary("the operator log", operator.logs(), c)
    events = cp.kubectl("get", "events", "--all-namespaces", "-o", "json").stdout
    assert json.loads(events)["items"], "no Events were recorded at all"
    assert_no_canary("the Events", events, c)
    objects = cp.kubectl("get", "imagecopies", "--all-namespaces", "-o", "json").stdout
    assert len(json.loads(objects)["items"]) >= len(succeed) + len(fail)
    assert_no_canary("the ImageCopy objects", objects, c)
    assert_no_canary("the metrics", operator.metrics(), c)


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGECOPY_", "DOCKER_"))}
    env["PYTHONPATH"] = str(REPO_ROOT / "operator")
    return subprocess.run(
        [sys.executable, "-m", "imagecopy", "copy", *args, "--docker-config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _cli_cases(
    reg: Registries, unique_repo: UniqueRepo, tmp_path: Path
) -> list[tuple[str, list[str], Path, int]]:
    """(name, arguments, docker config, expected exit code) of every CLI run."""
    c, basic, token = reg.canaries, reg.basic, reg.token
    b_src, t_src = unique_repo("cli/basic"), unique_repo("cli/token")
    push_image(basic, b_src, "1", layers=2)
    push_image(token, t_src, "1", layers=2)

    def config(name: str, **auths: dict[str, str]) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"auths": {host: e for host, e in auths.items()}}))
        return path

    good = config(
        "good",
        **{basic.host: _entry("auth", c), token.host: _entry("token-password", c)},
    )
    identity = config("identity", **{token.host: _entry("identity", c)})
    registry_token = config("registry-token", **{token.host: _entry("registry-token", c)})
    wrong = config(
        "wrong",
        **{basic.host: _entry("wrong-password", c), token.host: _entry("wrong-identity", c)},
    )
    wrong_token = config("wrong-token", **{token.host: _entry("wrong-registry-token", c)})
    bad = config("bad", **{basic.host: _entry("bad-auth", c)})
    b_ref, t_ref = basic.ref(b_src, "1"), token.ref(t_src, "1")
    rt_src = token.ref(reg.rt_repos[0], "1")
    return [
        ("cross --json", [b_ref, token.ref(unique_repo("c1"), "1"), "--json"], good, 0),
        ("same registry, plain", [b_ref, basic.ref(unique_repo("c2"), "1")], good, 0),
        (
            "dry run --json",
            [b_ref, token.ref(unique_repo("c3"), "1"), "--dry-run", "--json"],
            good,
            0,
        ),
        (
            "identity token --json",
            [t_ref, token.ref(unique_repo("c4"), "1"), "--json"],
            identity,
            0,
        ),
        ("registry token", [rt_src, token.ref(reg.rt_repos[2], "1")], registry_token, 0),
        ("wrong password", [b_ref, basic.ref(unique_repo("c6"), "1")], wrong, 1),
        ("wrong password --json", [b_ref, basic.ref(unique_repo("c7"), "1"), "--json"], wrong, 1),
        ("wrong identity token", [t_ref, token.ref(unique_repo("c8"), "1")], wrong, 1),
        ("wrong registry token", [t_ref, token.ref(unique_repo("c9"), "1")], wrong_token, 1),
        ("auth not base64", [b_ref, basic.ref(unique_repo("c10"), "1")], bad, -1),
        (
            "missing source",
            [basic.ref(unique_repo("none"), "1"), basic.ref(unique_repo("c11"))],
            good,
            1,
        ),
    ]


def _run_cases(reg: Registries, unique_repo: UniqueRepo, tmp_path: Path, *extra: str) -> None:
    for name, args, config, code in _cli_cases(reg, unique_repo, tmp_path):
        proc = _cli(*args, *reg.plain_http_args(), *extra, config=config)
        label = f"`imagecopy copy` ({name}{' ' + ' '.join(extra) if extra else ''})"
        if code >= 0:
            assert proc.returncode == code, f"{label}: exit {proc.returncode}\n{proc.stderr}"
        else:
            assert proc.returncode in (1, 2), f"{label}: exit {proc.returncode}\n{proc.stderr}"
        if proc.returncode and "--debug" not in extra:
            # a failure is one line naming the reason, whatever the credential
            assert len(proc.stderr.strip().splitlines()) == 1, f"{label}:\n{proc.stderr}"
        assert_no_canary(f"{label} stdout", proc.stdout, reg.canaries)
        assert_no_canary(f"{label} stderr", proc.stderr, reg.canaries)


def test_the_cli_never_reveals_a_credential(
    registries: Registries, unique_repo: UniqueRepo, tmp_path: Path
) -> None:
    _run_cases(registries, unique_repo, tmp_path)


def test_the_cli_never_reveals_a_credential_with_debug(
    registries: Registries, unique_repo: UniqueRepo, tmp_path: Path
) -> None:
    _run_cases(registries, unique_repo, tmp_path, "--debug")
