"""The invariants every fault test checks, and the row each one adds to the fault table.

After a fault (and after it healed):

- the destination tag is the complete, correct image (its digest is the source's, read back by
  ``crane``, ``crane validate --remote`` fetching every blob) or unchanged from before the copy;
- no upload session is left open in the destination registry's storage;
- what was uploaded twice is at most the blob that was interrupted (counted by the
  ``testkit/netproxy.py`` in front of the destination: request body bytes of blob PUT/PATCH).

``fault_row`` is a fixture: a test fills its :class:`FaultRow` and calls ``row.survived()`` once
every invariant held. With ``IMAGECOPY_FAULT_TABLE=<path>`` set (``make faults``), each row
is appended to that JSON-lines file when the test ends; ``tests/support/reliability.py``
renders the table from it. Without the variable, nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from testkit.images import MANIFEST_ACCEPT
from testkit.netproxy import NetProxy
from testkit.peers import PeerError, crane_digest, crane_validate
from testkit.registry import RegistryServer

__all__ = [
    "Destination",
    "FaultRow",
    "assert_no_open_sessions",
    "fault_row",
    "uploaded_bytes",
]

TABLE_ENV = "IMAGECOPY_FAULT_TABLE"

#: What the checks below saw go wrong, so the row of a failed test says it: destinations
#: found neither complete nor unchanged, and upload sessions found open.
_SEEN = {"corrupt": 0, "leaked": 0}


def tag_digest(registry: RegistryServer, repository: str, tag: str) -> str | None:
    """The digest ``repository:tag`` points at, or None when the tag does not exist."""
    with registry.client() as c:
        r = c.head(
            f"/v2/{repository}/manifests/{tag}",
            headers={"Accept": MANIFEST_ACCEPT, **registry.admin_headers(repository)},
        )
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


@dataclass
class Destination:
    """A destination tag, with what it pointed at before the copy (``before``)."""

    registry: RegistryServer
    repository: str
    tag: str
    before: str | None = None

    @classmethod
    def snapshot(cls, registry: RegistryServer, repository: str, tag: str) -> Destination:
        return cls(registry, repository, tag, tag_digest(registry, repository, tag))

    @property
    def ref(self) -> str:
        return f"{self.registry.host}/{self.repository}:{self.tag}"

    def state(self, source_digest: str) -> str:
        """``"complete"`` (the source image, every blob read back by a peer) or
        ``"unchanged"``; anything else fails the test."""
        now = tag_digest(self.registry, self.repository, self.tag)
        if now == source_digest:
            assert crane_digest(self.registry, self.ref) == source_digest
            try:
                crane_validate(self.registry, self.ref)  # every blob fetched, digests checked
            except PeerError:
                _SEEN["corrupt"] += 1  # a manifest whose blobs are missing or wrong
                raise
            return "complete"
        if now != self.before:
            _SEEN["corrupt"] += 1
        assert now == self.before, (
            f"{self.ref} is at {now}: neither the source ({source_digest}) nor what it was "
            f"before the copy ({self.before})"
        )
        return "unchanged"

    def assert_complete(self, source_digest: str) -> None:
        assert self.state(source_digest) == "complete", f"{self.ref} was not copied"


def assert_no_open_sessions(registry: RegistryServer, repository: str) -> None:
    sessions = registry.open_upload_sessions(repository)
    _SEEN["leaked"] += len(sessions)
    assert sessions == [], f"upload sessions left open in {repository}: {sessions}"


def uploaded_bytes(proxy: NetProxy, repository: str) -> int:
    """Blob bytes sent to ``repository`` through ``proxy`` (PUT and PATCH bodies)."""
    prefix = f"/v2/{repository}/blobs/uploads/"
    return sum(
        r.req_body_bytes
        for r in proxy.snapshot().log
        if r.method in ("PUT", "PATCH") and r.path.startswith(prefix)
    )


@dataclass
class FaultRow:
    """One row of docs/reliability.md."""

    fault: str
    number: int = 0
    path: str = "engine"
    final_state: str = ""
    recover_seconds: float | None = None
    bytes_resent: int = 0
    resend_bound: int = 0
    requests: int = 0
    leaked_sessions: int = 0
    #: Sessions a SIGKILLed process had open: nobody alive knows them; the registry's upload
    #: purging removes them (counted apart from leaks).
    orphaned_sessions: int = 0
    corrupt: bool = False
    ok: bool = False
    test: str = ""
    started: float = field(default_factory=time.monotonic)
    _healed: float | None = None

    def healed(self) -> None:
        """The fault is gone from now on: the time to recover counts from here."""
        self._healed = time.monotonic()

    def recovered(self) -> None:
        """The copy is complete (or settled) now."""
        start = self._healed if self._healed is not None else self.started
        self.recover_seconds = round(time.monotonic() - start, 2)

    def survived(self, final_state: str, *, requests: int = 0) -> None:
        self.final_state = final_state
        self.requests = requests
        self.ok = True


@pytest.fixture
def fault_row(request: pytest.FixtureRequest) -> Iterator[FaultRow]:
    """The fault-table row of this test (see the module docstring)."""
    row = FaultRow(fault=request.node.name, test=request.node.nodeid)
    seen = dict(_SEEN)
    yield row
    row.corrupt = _SEEN["corrupt"] > seen["corrupt"]
    row.leaked_sessions = _SEEN["leaked"] - seen["leaked"]
    target = os.environ.get(TABLE_ENV)
    if target:
        data = {k: v for k, v in asdict(row).items() if not k.startswith("_")}
        data.pop("started", None)
        with Path(target).open("a", encoding="utf-8") as f:
            f.write(json.dumps(data) + "\n")
