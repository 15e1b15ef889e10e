"""``imagecopy operator``: settings are checked before Kopf starts."""

from __future__ import annotations

import pytest

from imagecopy.cli import main
from imagecopy.controller.main import run_operator


def test_bad_settings_stop_the_operator_with_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGECOPY_MAX_CONCURRENT_COPIES", "lots")
    assert run_operator(["--standalone"]) == 2
    assert "IMAGECOPY_MAX_CONCURRENT_COPIES" in capsys.readouterr().err


def test_operator_help_lists_kopf_run_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--standalone", "--all-namespaces", "--namespace", "--liveness", "--verbose"):
        assert option in out
