"""End to end through Telegram: feed server -> daemon -> fake Bot API server, with the real
fetcher, parser processes, SQLite file and python-telegram-bot."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.errors import ConfigError
from tests.builders import rss, write_config
from tests.fakebot import FakeBot, telegram_html_text
from tests.feedserver import FeedServer


def config(tmp_path: Path, server: FeedServer, bot: FakeBot, token: str | None = None) -> Path:
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
timezone: Europe/Berlin
feeds:
  - name: wire
    url: {server.url("/wire.xml")}
channels:
  desk:
    type: telegram
    token: {token or bot.token}
    chat_id: [42, -100200]
    api_url: {bot.api_url}
rules:
  - name: talks
    query: 'talks AND NOT sport'
    notify: [desk]
""",
    )


async def test_new_matching_stories_reach_every_chat_exactly_once(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    backlog = [("g1", "Talks open in Geneva"), ("g2", "Weather: rain")]
    feed_server.set("/wire.xml", rss(backlog), validators=False)
    with FakeBot() as bot:
        path = config(tmp_path, feed_server, bot)
        async with Daemon(load_config(path)) as daemon:
            await daemon.once()  # first fetch: the backlog is remembered, not sent
            assert bot.sent == []
            feed_server.set(
                "/wire.xml",
                rss(
                    [
                        ("g3", 'Talks stall: AT&T & "ports"', "Envoys leave Geneva"),
                        ("g4", "Sport: talks of a transfer"),
                        *backlog,
                    ]
                ),
                validators=False,
            )
            report = await daemon.once()
            assert report.dispatch.sent == 2
            again = await daemon.once()
            assert again.dispatch.sent == 0
        assert sorted(s.chat_id for s in bot.sent) == ["-100200", "42"]
        for sent in bot.sent:
            text = telegram_html_text(sent.text)
            assert text.splitlines()[0] == 'Talks stall: AT&T & "ports"'
            assert "wire" in text
            assert "talks" in text
            assert 'href="https://news.example/g3"' in sent.text
            assert "Envoys leave Geneva" in text


async def test_a_rejected_token_stops_the_start_with_a_clear_error(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss([]), validators=False)
    with FakeBot() as bot:
        wrong = "999999:AAWrongToken_for-tests_0123456789abcdef"
        path = config(tmp_path, feed_server, bot, token=wrong)
        with pytest.raises(ConfigError, match=r"channels\.desk: Telegram rejected the bot token"):
            async with Daemon(load_config(path)):
                pass
