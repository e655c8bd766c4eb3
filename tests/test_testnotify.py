"""`monitor test-notify` as a user runs it: a real process, a real config file, the fake
Telegram Bot API server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.builders import write_config
from tests.fakebot import FakeBot, telegram_html_text
from tests.test_cli import ROOT


def telegram_config(tmp_path: Path, bot: FakeBot) -> Path:
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
channels:
  desk:
    type: telegram
    token: ${{BOT_TOKEN}}
    chat_id: [42, -100200]
    api_url: {bot.api_url}
  screen: {{type: console}}
""",
    )


def test_sends_to_every_chat_and_reports_each(tmp_path: Path) -> None:
    with FakeBot() as bot:
        path = telegram_config(tmp_path, bot)
        result = run(path, bot, "desk")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["desk 42: sent", "desk -100200: sent"]
        assert [s.chat_id for s in bot.sent] == ["42", "-100200"]
        assert "Test alert from monitor <ok> & working" in telegram_html_text(bot.sent[0].text)


def test_a_chat_that_refuses_is_reported_and_fails_the_command(tmp_path: Path) -> None:
    with FakeBot() as bot:
        bot.blocked(-100200)
        result = run(telegram_config(tmp_path, bot), bot, "desk")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "desk 42: sent"
    assert "desk -100200: FAILED: Telegram refuses chat -100200" in result.stdout
    assert bot.token.partition(":")[2] not in result.stdout + result.stderr


def test_console_channel_and_unknown_channel(tmp_path: Path) -> None:
    with FakeBot() as bot:
        path = telegram_config(tmp_path, bot)
        console = run(path, bot, "screen")
        unknown = run(path, bot, "dsek")
    assert console.returncode == 0, console.stderr
    assert "Test alert from monitor <ok> & working" in console.stdout
    assert console.stdout.rstrip().endswith("screen: sent")
    assert unknown.returncode == 2
    assert "no channel 'dsek'" in unknown.stderr
    assert "did you mean 'desk'?" in unknown.stderr


def run(path: Path, bot: FakeBot, channel: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "test-notify", "-c", str(path), "--channel", channel],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**os.environ, "BOT_TOKEN": bot.token},
    )
