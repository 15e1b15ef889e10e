"""Hostile registries and hostile specs drive the real operator (issue 10, "Acceptance").

A real API server, the operator as a process, one namespace of hostile ``ImageCopy`` objects
and, in another namespace, one ordinary copy between real registries. The hostile side is
``testkit/hostile.py`` (real HTTP servers in this process that misbehave on purpose) and specs
naming blocked addresses in the IPv6 spellings a naive guard lets through:

- a source registry at the metadata address as IPv4-mapped (``[::ffff:169.254.169.254]``,
  ``[::ffff:a9fe:a9fe]``) and NAT64 (``[64:ff9b::a9fe:a9fe]``) IPv6 → ``RegistryNotAllowed``;
- blob GETs redirected there (``redirect-metadata``/``-mapped``/``-nat64``) and upload
  ``Location``s there (``upload-location-metadata``/``-mapped``) → ``RegistryNotAllowed``;
- a 64 MiB token body (``huge-token``) → ``Unauthorized``;
- an endless chain of indexes (``endless-index``) → ``LimitExceeded``;
- a layer digest that walks into another repository (``traversal-digest``) →
  ``UnsupportedMediaType``, with no request to the other repository;
- every upload answered 502 (``upload-502``) → ``RegistryUnreachable``, transient, retried;
- a manifest nested 100,000 levels (``deep-manifest``) → ``UnsupportedMediaType``.

Each must reach its reason within a minute of its creation, with a message that is one
readable sentence and carries no credential (the hostile objects use a Secret whose password is
a canary, and the ``huge-token`` registry really gets it). While they are being retried (Stalled
ones every 3 s), the ordinary copy in the other namespace must be Ready within a minute
(measured and printed), and the operator's peak RSS (``VmHWM``) stays under 300 MiB.

Two settings make the network guard, and nothing else, the thing that refuses:
- ``IMAGECOPY_ALLOWED_REGISTRIES=*,*:*`` (every registry, as the default ``*`` plus ports), so
  a spec's blocked registry is not stopped by the allow-list first;
- the blocked hosts are configured for plain HTTP, so a plain-HTTP redirect or ``Location``
  to them is not stopped by the plain-HTTP rule first: the message must name the blocked
  network.
And a *tripwire*: a TCP listener on ``127.0.0.3`` with ``127.0.0.3/32`` added to the blocked
networks. The test first connects to it itself as ``[::ffff:127.0.0.3]`` (so that spelling
really reaches it), then a spec source and a blob redirect name it in that spelling: the
listener must accept no connection from the operator. Nothing here connects outside
127.0.0.0/8.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane, KubectlError
from e2e.operator_harness import ImageCopies, OperatorProcess
from testkit.hostile import (
    BEHAVIOURS,
    MIB,
    PRIVATE_REPOSITORY,
    SOURCE_REPOSITORY,
    Behaviour,
    HostileRegistry,
    RequestRecord,
    fingerprint,
)
from testkit.images import MANIFEST_ACCEPT, push_image
from testkit.registry import RegistryServer
from tests.support.fixtures import *  # noqa: F403  (registry fixtures)

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "imagecopy.dev", "v1alpha1", "imagecopies"
#: Every hostile object ends in its reason, and the ordinary copy is Ready, within this.
WITHIN = 60.0
RSS_LIMIT = 300 * MIB
STALLED_RETRY = 3.0  # e2e.operator_harness.TEST_ENV
TRIPWIRE_HOST = "127.0.0.3"
#: The cloud metadata address in the IPv6 spellings that carry it, as a spec may write them
#: (the CRD's registry grammar takes ``[hex:colons]`` only: the dotted form
#: ``[::ffff:169.254.169.254]`` is refused by the API server, see the test below).
METADATA_FORMS = {
    "mapped": "[::ffff:a9fe:a9fe]",
    "compatible": "[::a9fe:a9fe]",
    "nat64": "[64:ff9b::a9fe:a9fe]",
}
#: The tripwire's address, IPv4-mapped in the spelling the CRD accepts (127.0.0.3).
TRIPWIRE_MAPPED = "[::ffff:7f00:3]"
USER = "tenant"
SECRET = "hostile-creds"
#: What a huge body is made of (testkit.hostile._filler): never echoed into a message.
FILLER = "A" * 32


# --------------------------------------------------------------------------- instruments


class Tripwire:
    """A TCP listener on 127.0.0.3 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server((TRIPWIRE_HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="tripwire", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def prove_reachable_as_mapped(self) -> None:
        """Connect as ``[::ffff:127.0.0.3]`` ourselves: the spelling reaches this listener,
        so an operator that connected would be counted. Then reset the count."""
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(("::ffff:127.0.0.3", self.port))
        deadline = time.monotonic() + 5
        while self.accepted == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.accepted == 1, "the IPv4-mapped spelling did not reach the tripwire"
        self.accepted = 0

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class RssSampler:
    """Samples ``VmRSS`` of a process every 0.25 s; ``VmHWM`` is its peak as the kernel saw."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _field(self, name: str) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(rf"^{name}:\s+(\d+) kB$", text, re.M)
        assert m is not None, f"no {name} in /proc/{self.pid}/status"
        return int(m[1]) * 1024

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.peak_rss = max(self.peak_rss, self._field("VmRSS"))
            except (OSError, AssertionError):
                return

    def high_water_mark(self) -> int:
        return self._field("VmHWM")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One hostile object: its spec, the reasons it must end in, and its own checks."""

    name: str
    spec: dict[str, Any]
    reasons: frozenset[str]
    stalled: bool = True
    #: A sentence the Ready message must contain (a regex), e.g. the blocked network.
    message: str | None = None
    server: HostileRegistry | None = None
    created: float = 0.0
    reached: float | None = None  # monotonic time the expected reason was first seen
    obj: dict[str, Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # reasons seen, in order, deduplicated

    def observe(self, obj: dict[str, Any], now: float) -> None:
        ready = ImageCopies.condition(obj, "Ready")
        reason = ready.get("reason")
        if reason and (not self.seen or self.seen[-1] != reason):
            self.seen.append(reason)
        if self.reached is None and ready.get("status") == "False" and reason in self.reasons:
            self.reached, self.obj = now, obj


@dataclass
class Scenario:
    operator: OperatorProcess
    hostile_ns: str
    normal_ns: str
    cases: dict[str, Case]
    tripwire: Tripwire
    password: str
    normal_ready_after: float | None
    normal_obj: dict[str, Any]
    normal_expected_digest: str
    normal_destination_digest: str | None
    retried: dict[str, tuple[float, float]]  # reason -> copies_total before/after a pause
    server_requests: dict[str, tuple[int, int]]  # case -> requests before/after that pause
    peak_rss: int
    high_water_mark: int
    logs: str
    events: list[dict[str, Any]]
    objects: list[dict[str, Any]]
    metrics: str

    def needles(self) -> dict[str, str]:
        pair = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        return {
            "the password": self.password,
            "a slice of the password": self.password[-20:-8],
            f"base64 of {USER}:password": pair,
        }


def _src(server: HostileRegistry) -> dict[str, Any]:
    return {"image": server.ref(SOURCE_REPOSITORY, "1"), "secretRef": {"name": SECRET}}


def _dst(server: HostileRegistry, repo: str) -> dict[str, Any]:
    return {"image": server.ref(repo, "1"), "secretRef": {"name": SECRET}}


def _blocked(network: str) -> str:
    return rf"blocked network {re.escape(network)}"


def build_cases(
    registry: RegistryServer, small_image: str, tripwire: Tripwire, run: str
) -> dict[str, Case]:
    """Every hostile object, its hostile server started (stopped by the caller)."""
    cases: list[Case] = []

    def dst(name: str) -> dict[str, Any]:
        return {"image": registry.ref(f"{run}/{name}", "1")}

    # A spec naming a blocked address: no request at all.
    for form, host in METADATA_FORMS.items():
        cases.append(
            Case(
                f"spec-{form}",
                {"source": {"image": f"{host}/tenant/app:1"}, "destination": dst(f"spec-{form}")},
                frozenset({"RegistryNotAllowed"}),
                message=_blocked("169.254.0.0/16"),
            )
        )
    cases.append(
        Case(
            "spec-tripwire",
            {
                "source": {"image": f"{TRIPWIRE_MAPPED}:{tripwire.port}/tenant/app:1"},
                "destination": dst("spec-tripwire"),
            },
            frozenset({"RegistryNotAllowed"}),
            message=_blocked(f"{TRIPWIRE_HOST}/32"),
        )
    )

    def hostile(behaviour: Behaviour) -> HostileRegistry:
        return HostileRegistry(behaviour).start()

    # Blob GETs redirected into the blocked network; the registry asks for Basic credentials
    # first, so a leak of them would show.
    basic = {"auth": "basic"}
    for name in ("redirect-metadata", "redirect-mapped", "redirect-nat64"):
        server = hostile(BEHAVIOURS[name].with_(**basic))
        cases.append(
            Case(
                name,
                {"source": _src(server), "destination": dst(name)},
                frozenset({"RegistryNotAllowed"}),
                message=_blocked("169.254.0.0/16"),
                server=server,
            )
        )
    tripwire_url = f"http://[::ffff:{TRIPWIRE_HOST}]:{tripwire.port}/latest/meta-data/"
    server = hostile(BEHAVIOURS["redirect-mapped"].with_(redirect_to=tripwire_url, **basic))
    cases.append(
        Case(
            "redirect-tripwire",
            {"source": _src(server), "destination": dst("redirect-tripwire")},
            frozenset({"RegistryNotAllowed"}),
            message=_blocked(f"{TRIPWIRE_HOST}/32"),
            server=server,
        )
    )
    # Upload sessions whose Location is in the blocked network (the hostile registry is the
    # destination; the source is an ordinary image on the real registry).
    for name in ("upload-location-metadata", "upload-location-mapped"):
        server = hostile(BEHAVIOURS[name].with_(**basic))
        cases.append(
            Case(
                name,
                {"source": {"image": small_image}, "destination": _dst(server, "tenant/dst")},
                frozenset({"RegistryNotAllowed"}),
                message=_blocked("169.254.0.0/16"),
                server=server,
            )
        )
    # Bounds: a huge token body, an endless index, a traversal digest, deep JSON.
    for name, reasons in (
        ("huge-token", {"Unauthorized"}),
        ("endless-index", {"LimitExceeded"}),
        ("traversal-digest", {"UnsupportedMediaType"}),
        # A manifest nested past the JSON-depth bound (64 levels) is not a manifest.
        ("deep-manifest", {"UnsupportedMediaType"}),
    ):
        server = hostile(BEHAVIOURS[name])
        cases.append(
            Case(
                name,
                {"source": _src(server), "destination": dst(name)},
                frozenset(reasons),
                server=server,
            )
        )
    # Every upload answered 502: transient, retried with backoff (never Stalled).
    server = hostile(BEHAVIOURS["upload-502"])
    cases.append(
        Case(
            "upload-502",
            {"source": {"image": small_image}, "destination": _dst(server, "tenant/dst")},
            frozenset({"RegistryUnreachable"}),
            stalled=False,
            server=server,
        )
    )
    return {c.name: c for c in cases}


def operator_env(tripwire: Tripwire) -> dict[str, str]:
    plain = [
        "127.0.0.1",
        "127.0.0.2",
        "169.254.169.254",
        "[::ffff:169.254.169.254]",
        *METADATA_FORMS.values(),
        TRIPWIRE_MAPPED,
    ]
    return {
        # Every registry may be named (the default "*", with ports): the guard must hold.
        "IMAGECOPY_ALLOWED_REGISTRIES": "*,*:*",
        # The blocked hosts are plain-HTTP hosts, so the guard is what refuses them.
        "IMAGECOPY_PLAIN_HTTP_REGISTRIES": ",".join(plain),
        "IMAGECOPY_BLOCKED_NETWORKS": f"default,{TRIPWIRE_HOST}/32",
        # The defaults: 4 slots, 3 of them at most for the hostile namespace.
        "IMAGECOPY_MAX_CONCURRENT_COPIES": "4",
        "IMAGECOPY_STALL_TIMEOUT": "5s",
        "IMAGECOPY_COPY_TIMEOUT": "45s",
    }


def docker_config_secret(namespace: str, hosts: list[str], password: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = {"auths": {host: {"auth": auth} for host in hosts}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": SECRET, "namespace": namespace},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


# --------------------------------------------------------------------------- the scenario


def _list(kube: Any, namespace: str) -> list[dict[str, Any]]:
    from kubernetes import client

    api = client.CustomObjectsApi(kube)
    result: Any = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    items: list[dict[str, Any]] = result["items"]
    return items


def _copies_by_result(metrics: str) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^imagecopy_copies_total\{result="([^"]+)"\} (\S+)$', metrics, re.M)
    }


@pytest.fixture(scope="module")
def scenario(
    control_plane: ControlPlane, kube: Any, registry_v2: RegistryServer
) -> Iterator[Scenario]:
    run = f"hostile-{secrets.token_hex(4)}"
    push_image(registry_v2, f"{run}/small", "1", layers=2, layer_size=8 * 1024)
    normal_src = push_image(registry_v2, f"{run}/normal", "1.0", layers=2, layer_size=16 * 1024)
    tripwire = Tripwire()
    tripwire.prove_reachable_as_mapped()
    cases = build_cases(registry_v2, registry_v2.ref(f"{run}/small", "1"), tripwire, run)
    servers = [c.server for c in cases.values() if c.server is not None]
    password = f"canary-hostile-{secrets.token_hex(12)}"
    hostile_ns = control_plane.create_namespace()
    normal_ns = control_plane.create_namespace()
    operator = OperatorProcess(control_plane, env=operator_env(tripwire))
    sampler: RssSampler | None = None
    try:
        operator.start()
        assert operator.pid is not None
        sampler = RssSampler(operator.pid)
        secret = docker_config_secret(hostile_ns, sorted({s.host for s in servers}), password)
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
        hostile = ImageCopies(control_plane, hostile_ns)
        normal = ImageCopies(control_plane, normal_ns)

        for case in cases.values():
            case.created = time.monotonic()
            hostile.apply(case.name, case.spec)

        # The hostile objects are failing and being retried before the ordinary one asks.
        def failing() -> int:
            return sum(
                ImageCopies.condition(o, "Ready").get("status") == "False"
                for o in _list(kube, hostile_ns)
            )

        deadline = time.monotonic() + WITHIN
        while failing() < len(cases) // 2 and time.monotonic() < deadline:
            time.sleep(0.3)

        asked = time.monotonic()
        normal_dst = registry_v2.ref(f"{run}/normal-copy", "1.0")
        normal.apply(
            "normal", {"source": {"image": normal_src.ref}, "destination": {"image": normal_dst}}
        )
        normal_ready_after: float | None = None
        normal_obj: dict[str, Any] = {}
        while time.monotonic() - asked < WITHIN or any(
            c.reached is None and time.monotonic() - c.created < WITHIN for c in cases.values()
        ):
            now = time.monotonic()
            for obj in _list(kube, hostile_ns):
                found = cases.get(obj["metadata"]["name"])
                if found is not None:
                    found.observe(obj, now)
            if normal_ready_after is None:
                normal_obj = normal.get("normal")
                if ImageCopies.condition(normal_obj, "Ready").get("status") == "True":
                    normal_ready_after = now - asked
            if normal_ready_after is not None and all(c.reached for c in cases.values()):
                break
            time.sleep(0.5)

        # Still being retried: every reason keeps being counted, the servers keep being asked.
        before_metrics = _copies_by_result(operator.metrics())
        before_requests = {
            c.name: len(c.server.requests()) for c in cases.values() if c.server is not None
        }
        time.sleep(3 * STALLED_RETRY)
        after_metrics = _copies_by_result(operator.metrics())
        retried = {
            reason: (before_metrics.get(reason, 0.0), after_metrics.get(reason, 0.0))
            for reason in after_metrics
        }
        server_requests = {
            name: (count, len(cases[name].server.requests()))  # type: ignore[union-attr]
            for name, count in before_requests.items()
        }

        with registry_v2.client() as c:
            r = c.head(f"/v2/{run}/normal-copy/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT})
        normal_digest = r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

        high_water_mark = sampler.high_water_mark()
        sampler.stop()
        out = control_plane.kubectl("get", "events", "-n", hostile_ns, "-o", "json")
        scenario = Scenario(
            operator=operator,
            hostile_ns=hostile_ns,
            normal_ns=normal_ns,
            cases=cases,
            tripwire=tripwire,
            password=password,
            normal_ready_after=normal_ready_after,
            normal_obj=normal_obj,
            normal_expected_digest=normal_src.digest,
            normal_destination_digest=normal_digest,
            retried=retried,
            server_requests=server_requests,
            peak_rss=max(sampler.peak_rss, 0),
            high_water_mark=high_water_mark,
            logs=operator.logs(),
            events=json.loads(out.stdout).get("items", []),
            objects=_list(kube, hostile_ns) + _list(kube, normal_ns),
            metrics=operator.metrics(),
        )
        print(
            f"\nhostile e2e: normal copy Ready after {normal_ready_after}s; operator peak RSS "
            f"{high_water_mark / MIB:.1f} MiB (VmHWM), sampled VmRSS max "
            f"{sampler.peak_rss / MIB:.1f} MiB; reasons: "
            + ", ".join(
                f"{c.name}={'/'.join(c.seen) or '-'}"
                + (f" in {c.reached - c.created:.1f}s" if c.reached else " (not reached)")
                for c in cases.values()
            )
        )
        yield scenario
    finally:
        if sampler is not None:
            sampler.stop()
        for ns in (hostile_ns, normal_ns):
            control_plane.delete_namespace(ns)
        operator.stop()
        print(f"\noperator log: {operator.log_path}")
        for server in servers:
            server.stop()
        tripwire.close()


# --------------------------------------------------------------------------- assertions


def assert_one_readable_sentence(message: str, needles: dict[str, str]) -> None:
    assert message, "empty message"
    assert len(message) <= 1024, len(message)
    assert "\n" not in message and message.isprintable(), repr(message)
    assert "Traceback" not in message and not message.startswith("Internal error"), message
    assert re.search(r"[A-Za-z]{2,} [A-Za-z]{2,}", message), f"not a sentence: {message!r}"
    assert FILLER not in message, "a hostile body is echoed into the message"
    leaked = [what for what, needle in needles.items() if needle in message]
    assert not leaked, f"the message reveals {', '.join(leaked)}"


def _blob_redirects(server: HostileRegistry) -> list[RequestRecord]:
    return server.requests(method="GET", path=r"/blobs/sha256:[0-9a-f]{64}$", listener="main")


CASE_NAMES = [
    "spec-mapped",
    "spec-compatible",
    "spec-nat64",
    "spec-tripwire",
    "redirect-metadata",
    "redirect-mapped",
    "redirect-nat64",
    "redirect-tripwire",
    "upload-location-metadata",
    "upload-location-mapped",
    "huge-token",
    "endless-index",
    "traversal-digest",
    "deep-manifest",
    "upload-502",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_hostile_object_ends_in_its_specific_reason_within_a_minute(
    scenario: Scenario, name: str
) -> None:
    case = scenario.cases[name]
    expected = "/".join(sorted(case.reasons))
    assert case.reached is not None, (
        f"{name} did not reach {expected} within {WITHIN:.0f}s; reasons seen: {case.seen}"
    )
    assert case.reached - case.created <= WITHIN
    ready = ImageCopies.condition(case.obj, "Ready")
    reconciling = ImageCopies.condition(case.obj, "Reconciling")
    stalled = ImageCopies.condition(case.obj, "Stalled")
    message = ready["message"]
    assert reconciling["reason"] == stalled["reason"] == ready["reason"]
    if case.stalled:
        assert (reconciling["status"], stalled["status"]) == ("False", "True"), case.obj["status"]
        assert stalled["message"] == message
    else:
        assert (reconciling["status"], stalled["status"]) == ("True", "False"), case.obj["status"]
        assert reconciling["message"] == f"Retrying: {message}"
    assert_one_readable_sentence(message, scenario.needles())
    if case.message is not None:
        assert re.search(case.message, message), message


def test_the_api_server_refuses_a_dotted_ipv4_mapped_registry(
    scenario: Scenario, control_plane: ControlPlane
) -> None:
    """``[::ffff:169.254.169.254]`` never reaches the operator: the CRD's registry grammar
    is ``[hex and colons]``. (The operator and the CLI refuse it too, by the guard.)"""
    spec = {
        "source": {"image": "[::ffff:169.254.169.254]/tenant/app:1"},
        "destination": {"image": "127.0.0.1:5000/tenant/app:1"},
    }
    with pytest.raises(KubectlError, match=r"spec\.source\.image: Invalid value"):
        ImageCopies(control_plane, scenario.hostile_ns).apply("spec-mapped-dotted", spec)


@pytest.mark.parametrize("form", ["spec-tripwire", "redirect-tripwire"])
def test_a_blocked_address_in_ipv4_mapped_form_is_never_connected_to(
    scenario: Scenario, form: str
) -> None:
    assert scenario.cases[form].reached is not None, scenario.cases[form].seen
    assert scenario.tripwire.accepted == 0, (
        f"the operator connected to the blocked tripwire {scenario.tripwire.accepted} times"
    )


@pytest.mark.parametrize(
    "name", ["redirect-metadata", "redirect-mapped", "redirect-nat64", "redirect-tripwire"]
)
def test_a_blob_redirect_into_the_blocked_network_reached_the_hop_and_was_refused(
    scenario: Scenario, name: str
) -> None:
    case = scenario.cases[name]
    assert case.server is not None
    redirects = [r for r in _blob_redirects(case.server) if r.status == 307]
    assert redirects, "the hostile registry never redirected a blob GET"
    # Credentials went to the registry (it asked for Basic) and nowhere else: the redirect was
    # answered to an authorised request, and the "other" listener was never contacted.
    assert all(r.authorization and r.authorization.startswith("Basic ") for r in redirects)
    assert not case.server.requests(listener="other")
    assert re.search(r"blocked network", ImageCopies.condition(case.obj, "Ready")["message"])


@pytest.mark.parametrize("name", ["upload-location-metadata", "upload-location-mapped"])
def test_an_upload_location_into_the_blocked_network_reached_the_hop_and_was_refused(
    scenario: Scenario, name: str
) -> None:
    case = scenario.cases[name]
    assert case.server is not None
    opened = [
        r for r in case.server.requests(method="POST", path=r"/blobs/uploads/$") if r.status == 202
    ]
    assert opened, "no upload session was opened at the hostile registry"
    # The session lives at the blocked Location: nothing came back to the registry for it.
    assert not case.server.requests(method="PUT", path=r"/blobs/uploads/.+")
    assert not case.server.requests(method="PATCH")
    assert not case.server.stored_manifests("tenant/dst")


def test_a_huge_token_body_is_read_bounded_and_the_credentials_were_really_sent(
    scenario: Scenario,
) -> None:
    case = scenario.cases["huge-token"]
    assert case.server is not None
    tokens = case.server.requests(path=r"^/token$")
    assert tokens, "no token request"
    basic = "Basic " + base64.b64encode(f"{USER}:{scenario.password}".encode()).decode()
    assert any(r.authorization == f"Basic <redacted {fingerprint(basic)}>" for r in tokens), (
        "the canary credentials never reached the token service"
    )
    case.server.wait_finished()
    sent = max(r.bytes_sent for r in case.server.requests(path=r"^/token$"))
    # The operator hung up after its bound; the kernel's socket buffers take a few MiB more.
    assert sent < 16 * MIB, f"{sent / MIB:.1f} MiB of the 64 MiB token body was read"


def test_a_traversal_digest_never_reaches_another_repository(scenario: Scenario) -> None:
    case = scenario.cases["traversal-digest"]
    assert case.server is not None
    assert case.server.requests(path=rf"^/v2/{SOURCE_REPOSITORY}/manifests/"), "never asked"
    walked = [
        str(r) for r in case.server.requests() if PRIVATE_REPOSITORY in r.path or ".." in r.path
    ]
    assert not walked, walked


def test_an_endless_index_is_not_followed_to_its_end(scenario: Scenario) -> None:
    case = scenario.cases["endless-index"]
    assert case.server is not None
    gets = case.server.requests(method="GET", path=r"/manifests/")
    assert gets, "never asked"
    # Every attempt stops at the index-depth bound: nowhere near the 10,000 levels.
    attempts = max(1, len(case.server.requests(method="GET", path=r"/manifests/1$")))
    assert len(gets) / attempts < 100, (len(gets), attempts)


def test_the_hostile_objects_are_still_being_retried(scenario: Scenario) -> None:
    before, after = scenario.retried.get("RegistryNotAllowed", (0.0, 0.0))
    assert after > before > 0, ("RegistryNotAllowed", before, after)
    # Stalled objects are tried again every 3 s: their registries keep being asked.
    for name, (before, after) in scenario.server_requests.items():
        case = scenario.cases[name]
        if case.stalled and case.reached is not None:
            assert after > before, f"{name}: no request in {3 * STALLED_RETRY:.0f}s"
    # The transient one backs off (1-2 s, 2-4 s, ...) but keeps trying and stays Reconciling.
    assert scenario.retried.get("RegistryUnreachable", (0.0, 0.0))[1] >= 2
    final = next(o for o in scenario.objects if o["metadata"]["name"] == "upload-502")
    assert ImageCopies.condition(final, "Reconciling")["status"] == "True", final["status"]


def test_an_ordinary_copy_in_another_namespace_is_ready_promptly(scenario: Scenario) -> None:
    waited = scenario.normal_ready_after
    assert waited is not None, json.dumps(scenario.normal_obj.get("status"), indent=2)
    print(f"\nthe ordinary copy was Ready {waited:.1f}s after it was created")
    assert waited <= WITHIN
    assert ImageCopies.condition(scenario.normal_obj, "Ready")["reason"] == "Copied"
    assert scenario.normal_destination_digest == scenario.normal_expected_digest


def test_the_operator_peak_rss_stays_bounded(scenario: Scenario) -> None:
    print(
        f"\noperator peak RSS {scenario.high_water_mark / MIB:.1f} MiB (VmHWM); "
        f"VmRSS sampled every 0.25 s peaked at {scenario.peak_rss / MIB:.1f} MiB"
    )
    assert scenario.peak_rss > 0
    assert scenario.high_water_mark < RSS_LIMIT, f"{scenario.high_water_mark / MIB:.1f} MiB"


def test_no_credential_in_logs_events_or_status(scenario: Scenario) -> None:
    places: dict[str, str] = {
        "the operator log": scenario.logs,
        "the Events": json.dumps(scenario.events),
        "the ImageCopies": json.dumps(scenario.objects),
        "the metrics": scenario.metrics,
    }
    for where, text in places.items():
        found = [what for what, needle in scenario.needles().items() if needle in text]
        assert not found, f"{where} reveal {', '.join(found)}"
    warnings = [e for e in scenario.events if e.get("reason") == "CopyFailed"]
    assert warnings, "no CopyFailed event"
    for event in warnings:
        assert_one_readable_sentence(event["message"], scenario.needles())


def test_request_labels_name_only_spec_registries(scenario: Scenario) -> None:
    """Redirect targets and upload Locations never become label values (bounded series)."""
    from imagecopy.oci.reference import Reference

    named = {
        str(Reference.parse(side["image"]).registry)
        for obj in scenario.objects
        for side in (obj["spec"]["source"], obj["spec"]["destination"])
    }
    labels = set(
        re.findall(r'imagecopy_registry_requests_total\{[^}]*registry="([^"]*)"', scenario.metrics)
    )
    assert labels, "no request was counted"
    assert labels <= named | {"other"}, labels - named


def test_no_hostile_object_ever_failed_with_an_internal_error(scenario: Scenario) -> None:
    internal = [c.name for c in scenario.cases.values() if "InternalError" in c.seen]
    assert not internal, internal
