"""The Kopf wiring: one login handler, whose ConnectionInfo also connects our client."""

from __future__ import annotations

import logging
from pathlib import Path

import kopf
import pytest
import yaml

from imagecopy.controller import handlers
from imagecopy.controller.kube import KubeClient

LOG = logging.getLogger("test")


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "test",
                "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


def test_ours_is_the_only_login_handler_so_kopf_logs_in_once() -> None:
    # Kopf's own fallbacks (login_via_client...) run only when no login handler is
    # registered; the registry has no public view of its activities.
    from kopf._core.intents.causes import Activity

    registry = kopf.get_default_registry()
    logins = registry._activities.get_handlers(activity=Activity.AUTHENTICATION)
    assert [h.fn for h in logins] == [handlers.login]


@pytest.mark.parametrize("startup_first", [True, False])
async def test_login_connects_the_one_client_whichever_runs_first(
    kubeconfig: Path, startup_first: bool
) -> None:
    memo = kopf.Memo()
    from_startup = handlers._kube_client(memo) if startup_first else None
    info = await handlers.login(settings=kopf.OperatorSettings(), memo=memo, logger=LOG)
    kube = memo["kube"]
    assert isinstance(kube, KubeClient) and kube.connected
    if from_startup is not None:
        assert kube is from_startup
    assert handlers._kube_client(memo) is kube  # start-up, running second, finds it
    assert (info.server, info.token) == ("https://127.0.0.1:6443", "t0ken")
    kube.close()
