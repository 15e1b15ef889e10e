"""The Argo CD health check (deploy/argocd/health.lua) run by a real Lua 5.1 interpreter.

Argo CD evaluates health scripts with gopher-lua (Lua 5.1) and a global ``obj`` holding the
resource; lupa's ``lua51`` runtime gives the same language. The inputs are the objects under
``deploy/argocd/testdata/``, as the operator writes them (docs/reference.md §3 conditions, kstatus).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lua51 = pytest.importorskip("lupa.lua51")

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "deploy" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
TESTDATA = ARGOCD / "testdata"

# input file -> (Argo CD health status, a fragment the message must contain)
EXPECTED: dict[str, tuple[str, str]] = {
    "ready.yaml": ("Healthy", "12 blobs: 10 mounted"),
    "reconciling.yaml": ("Progressing", "Copying"),
    "stalled.yaml": ("Degraded", "SecretNotFound: Secret team-a/dev-pull not found"),
    "fresh.yaml": ("Progressing", "Waiting for the operator"),
    "fresh-observed-generation-minus-one.yaml": ("Progressing", "Waiting for the operator"),
    "stale-generation.yaml": ("Progressing", "generation 5"),
    "suspended.yaml": ("Suspended", "spec.suspend"),
    "retrying.yaml": ("Progressing", "RegistryUnreachable"),
}


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Run health.lua on ``obj`` the way Argo CD does and return its ``hs`` table."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    assert result is not None, "health.lua returned nothing"
    return {str(k): str(v) for k, v in result.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_of_testdata(name: str) -> None:
    obj = yaml.safe_load((TESTDATA / name).read_text())
    status, fragment = EXPECTED[name]
    hs = health(obj)
    assert hs["status"] == status, hs
    assert fragment in hs["message"], hs


def test_every_input_has_an_expectation() -> None:
    assert {p.name for p in TESTDATA.glob("*.yaml")} == set(EXPECTED)


def test_stalled_wins_over_reconciling_and_ready() -> None:
    obj = yaml.safe_load((TESTDATA / "ready.yaml").read_text())
    for c in obj["status"]["conditions"]:
        if c["type"] == "Stalled":
            c.update(status="True", reason="TagConflict", message="tag points elsewhere")
    assert health(obj)["status"] == "Degraded"


def test_reconciling_wins_over_ready() -> None:
    obj = yaml.safe_load((TESTDATA / "ready.yaml").read_text())
    for c in obj["status"]["conditions"]:
        if c["type"] == "Reconciling":
            c["status"] = "True"
    assert health(obj)["status"] == "Progressing"


def test_suspend_false_is_not_suspended() -> None:
    obj = yaml.safe_load((TESTDATA / "suspended.yaml").read_text())
    obj["spec"]["suspend"] = False
    assert health(obj)["status"] == "Healthy"


def test_status_without_conditions_is_progressing() -> None:
    obj = yaml.safe_load((TESTDATA / "ready.yaml").read_text())
    del obj["status"]["conditions"]
    assert health(obj) == {"status": "Progressing", "message": "Waiting for the Ready condition"}


def test_docs_embed_the_same_script() -> None:
    """docs/install.md shows the snippet for argocd-cm; it must not drift from the tested file."""
    docs = (REPO / "docs" / "install.md").read_text()
    body = "\n".join("    " + line if line else "" for line in SCRIPT.rstrip("\n").splitlines())
    assert body in docs, (
        "docs/install.md: paste deploy/argocd/health.lua (indented 4) into argocd-cm"
    )
