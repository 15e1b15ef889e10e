"""Connect, read and progress timeouts: settings, CLI flags, and what they become."""

from __future__ import annotations

import asyncio

import pytest

from imagecopy import cli
from imagecopy.controller.deadline import CopyTimeout, CopyWatchdog
from imagecopy.controller.service import transport_settings
from imagecopy.controller.settings import Settings, SettingsError
from imagecopy.oci.pool import RegistryPool, TransportSettings


def test_defaults_a_user_would_expect() -> None:
    settings = Settings.from_env({})
    assert (settings.connect_timeout, settings.read_timeout, settings.stall_timeout) == (
        10.0,
        60.0,
        120.0,
    )
    transport = transport_settings(settings)
    assert (transport.connect_timeout, transport.timeout) == (10.0, 60.0)


def test_settings_reach_the_http_client() -> None:
    settings = Settings.from_env(
        {"IMAGECOPY_CONNECT_TIMEOUT": "3s", "IMAGECOPY_READ_TIMEOUT": "2m"}
    )
    assert (settings.connect_timeout, settings.read_timeout) == (3.0, 120.0)
    pool = RegistryPool(transport_settings(settings))
    timeout = pool.http.timeout
    assert (timeout.connect, timeout.read, timeout.write) == (3.0, 120.0, 120.0)
    asyncio.run(pool.aclose())


@pytest.mark.parametrize("name", ["IMAGECOPY_CONNECT_TIMEOUT", "IMAGECOPY_READ_TIMEOUT"])
@pytest.mark.parametrize("value", ["0", "0.5s", "soon", "-3"])
def test_bad_timeouts_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_transport_settings_refuse_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        TransportSettings(connect_timeout=0)


@pytest.mark.parametrize("flag", ["--connect-timeout", "--read-timeout", "--stall-timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_cli_refuses_bad_timeouts_with_a_usage_error(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["copy", "127.0.0.1:1/a:1", "127.0.0.1:1/b:1", flag, value])
    assert code == cli.EXIT_USAGE
    assert flag in capsys.readouterr().err


def test_the_cli_stall_timeout_names_its_flag() -> None:
    async def never() -> None:
        await asyncio.sleep(3600)

    async def run() -> None:
        watchdog = CopyWatchdog(
            float("inf"), 0.05, grace=0.5, names=("no deadline", "--stall-timeout")
        )
        await watchdog.run(never())

    with pytest.raises(CopyTimeout, match="--stall-timeout"):
        asyncio.run(run())
