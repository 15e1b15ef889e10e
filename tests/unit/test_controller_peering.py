"""``IMAGECOPY_PEERING_LIFETIME``: parsed strictly, and handed to Kopf's peering settings."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from imagecopy.controller import handlers
from imagecopy.controller.settings import Settings, SettingsError


def test_peering_lifetime_defaults_to_15_seconds() -> None:
    assert Settings.from_env({}).peering_lifetime == 15


@pytest.mark.parametrize(("raw", "seconds"), [("10", 10), ("30s", 30), ("1m", 60), ("90.7s", 90)])
def test_peering_lifetime_is_whole_seconds(raw: str, seconds: int) -> None:
    assert Settings.from_env({"IMAGECOPY_PEERING_LIFETIME": raw}).peering_lifetime == seconds


@pytest.mark.parametrize("raw", ["9s", "0", "off", "soon", "-20s"])
def test_peering_lifetime_rejects_with_the_variable_named(raw: str) -> None:
    with pytest.raises(SettingsError, match="IMAGECOPY_PEERING_LIFETIME"):
        Settings.from_env({"IMAGECOPY_PEERING_LIFETIME": raw})


def test_startup_hands_the_lifetime_to_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGECOPY_PEERING_LIFETIME", "45s")
    monkeypatch.setenv("IMAGECOPY_METRICS_PORT", "0")
    settings = kopf.OperatorSettings()
    memo: Any = kopf.Memo()

    class Log:
        def info(self, *_: Any) -> None:
            pass

    async def run() -> None:
        await handlers.startup(settings=settings, memo=memo, logger=Log())
        await memo.pool.aclose()

    asyncio.run(run())
    memo.kube.close()
    assert settings.peering.lifetime == 45
