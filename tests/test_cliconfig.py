"""Loading the config for a command: found, secrets registered, errors reported."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from monitor.cliconfig import load_for_command
from monitor.logs import redact
from tests.builders import write_config


def test_a_valid_config_is_returned_with_its_secrets_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEED_KEY", "k3y-never-shown")
    path = write_config(
        tmp_path / "monitor.yaml",
        "feeds:\n  - name: wire\n    url: https://news.example/rss?key=${FEED_KEY}\n",
    )
    config = load_for_command(str(path))
    assert config is not None
    assert [f.name for f in config.feeds] == ["wire"]
    assert "k3y-never-shown" not in redact("the key was k3y-never-shown")


def test_an_invalid_config_is_reported_with_its_line_and_gives_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "monitor.yaml", "feeds:\n  - name: wire\n")
    assert load_for_command(str(path)) is None
    err = capsys.readouterr().err
    assert err.startswith("invalid config:\n")
    assert "monitor.yaml:2" in err


def test_with_json_logs_an_invalid_config_is_a_log_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path / "monitor.yaml", "feeds:\n  - name: wire\n")
    with caplog.at_level(logging.ERROR, logger="monitor.cli"):
        assert load_for_command(str(path), json_logs=True) is None
    assert capsys.readouterr().err == ""
    assert caplog.records[0].getMessage().startswith("invalid config:\n")
