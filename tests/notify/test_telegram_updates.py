"""Bot commands end to end: the real python-telegram-bot long-polls the fake Bot API server;
allowed chats get answers, strangers get nothing (and a log line)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.commands import CommandContext
from monitor.match.query import structured
from monitor.models import Rule, TelegramSettings
from monitor.notify.pace import Pacer
from monitor.notify.telegram import make_bot
from monitor.notify.telegram_updates import CommandListener
from monitor.store import SQLiteStore, Store
from tests.fakebot import FakeBot, telegram_html_text

RULES = (Rule("talks", structured(any_=["talks"])),)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(tmp_path / "state.db") as opened:
        yield opened


async def test_allowed_chats_are_answered_and_strangers_ignored(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with FakeBot() as fake:
        settings = TelegramSettings(
            token=fake.token, chats=("42",), api_url=fake.api_url, timeout=timedelta(seconds=2)
        )
        bot = make_bot(settings, poll_timeout=0.2)
        ctx = CommandContext(store, RULES, lambda: datetime.now(UTC), ZoneInfo("UTC"))
        pacer = Pacer(per_chat=0.0, group_rate=(1000, 1.0), overall_rate=(1000, 1.0))
        listener = CommandListener(bot, fake.token, {"42", "7"}, ctx, pacer, poll_timeout=0.2)
        fake.push_message("/mute talks 2h", chat_id=42, user_id=42)
        fake.push_message("/status", chat_id=-100555, user_id=9)  # a stranger in a group
        fake.push_message("/rules", chat_id=-100555, user_id=7)  # an allowed user there
        fake.push_message("just chatting", chat_id=42, user_id=42)
        async with bot:
            task = asyncio.create_task(listener.run())
            try:
                sent = await asyncio.to_thread(fake.wait_for_sent, 2, 10.0)
                await asyncio.sleep(0.3)  # anything more would have arrived by now
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert [s.chat_id for s in fake.sent] == ["42", "-100555"]
        assert "Muted" in telegram_html_text(sent[0].text)
        assert "talks" in telegram_html_text(sent[1].text)
    assert list(await store.mutes(datetime.now(UTC))) == ["talks"]
    assert "ignored /status from a chat and user not on the allow list" in caplog.text
