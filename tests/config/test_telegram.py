"""The `telegram` channel in the config: its settings, and every mistake a user makes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.models import BotCommands, TelegramSettings
from tests.config.test_load import only_problem, write

TOKEN = "123456789:AAFakeToken_for-tests_0123456789abcdef"


def test_full_telegram_channel(tmp_path: Path) -> None:
    (tmp_path / "alert.html").write_text("<b>{{ title }}</b>\n{{ snippet }}", encoding="utf-8")
    path = write(
        tmp_path,
        """\
        channels:
          desk:
            type: telegram
            token: ${BOT_TOKEN}
            chat_id: [-1001234567890, 42, "@newsdesk", 42]
            message_thread_id: 7
            api_url: http://127.0.0.1:8081/
            disable_web_page_preview: false
            silent: true
            template: alert.html
            group_threshold: 3
            timeout: 30s
            commands: {allow: [42, -1001234567890]}
        """,
    )
    config = load_config(path, env={"BOT_TOKEN": TOKEN})
    [spec] = config.channels
    assert (spec.name, spec.type) == ("desk", "telegram")
    assert spec.targets == ("-1001234567890", "42", "@newsdesk")
    assert spec.options["telegram"] == TelegramSettings(
        token=TOKEN,
        chats=("-1001234567890", "42", "@newsdesk"),
        api_url="http://127.0.0.1:8081",
        message_thread_id=7,
        disable_web_page_preview=False,
        silent=True,
        template="<b>{{ title }}</b>\n{{ snippet }}",
        group_threshold=3,
        timeout=timedelta(seconds=30),
        commands=BotCommands(("42", "-1001234567890")),
    )
    assert TOKEN in config.secrets
    assert TOKEN not in repr(spec.options["telegram"])


def test_defaults_and_a_token_written_in_the_file_is_still_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, f"channels: {{d: {{type: telegram, token: '{TOKEN}', chat_id: 5}}}}\n")
    config = load_config(path, env={})
    settings = config.channels[0].options["telegram"]
    assert isinstance(settings, TelegramSettings)
    assert settings.api_url == "https://api.telegram.org"
    assert settings.disable_web_page_preview is True
    assert (settings.silent, settings.group_threshold, settings.commands) == (False, 5, None)
    assert TOKEN in config.secrets


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{type: telegram, chat_id: 5}", "channels.d.token: missing"),
        ("{type: telegram, token: nope, chat_id: 5}", "does not look like a bot token"),
        (f"{{type: telegram, token: '{TOKEN}'}}", "channels.d.chat_id: missing"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: []}}", "chat_id"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: [general]}}", "not a chat id: 'general'"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: true}}", "chat id"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: 5, api_url: ftp://x}}", "scheme"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: 5, group_threshold: -1}}", "0"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: 5, commands: {{allow: []}}}}", "allow"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: 5, chat: 6}}", "chat"),
        (f"{{type: telegram, token: '{TOKEN}', chat_id: 5, template: none.html}}", "none.html"),
    ],
)
def test_mistakes_are_named_at_their_line(tmp_path: Path, entry: str, expected: str) -> None:
    path = write(tmp_path, f"channels:\n  d: {entry}\n")
    problem = only_problem(path)
    assert expected in problem
    assert "monitor.yaml:2" in problem
    assert TOKEN.partition(":")[2] not in problem


def test_a_broken_template_is_rejected_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.html").write_text("<b>{{ title }}</b>\n{% if %}\n", encoding="utf-8")
    path = write(
        tmp_path,
        f"channels: {{d: {{type: telegram, token: '{TOKEN}', chat_id: 5, template: bad.html}}}}\n",
    )
    problem = only_problem(path)
    assert "bad.html" in problem
    assert "line 2" in problem


def test_a_template_naming_an_unknown_variable_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "typo.html").write_text("{{ titel }}", encoding="utf-8")
    path = write(
        tmp_path,
        f"channels: {{d: {{type: telegram, token: '{TOKEN}', chat_id: 5, template: typo.html}}}}\n",
    )
    assert "titel" in only_problem(path)
