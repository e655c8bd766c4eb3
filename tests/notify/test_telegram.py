"""The telegram channel against a fake Bot API server on loopback, driven by the real
python-telegram-bot: escaping, splitting, flood limits, refusals, migrations, fallbacks,
grouping through the dispatcher, and the token kept out of every error and log line."""

from __future__ import annotations

import io
import logging
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor import logs
from monitor.dispatch import Dispatcher
from monitor.errors import ChannelError, DeliveryError, TargetError
from monitor.models import (
    Alert,
    CacheInfo,
    ChannelSpec,
    Delivery,
    DeliveryPolicy,
    FeedSpec,
    Item,
    Match,
    TelegramSettings,
)
from monitor.notify.pace import Pacer
from monitor.notify.telegram import TelegramNotifier
from monitor.store import SQLiteStore, Store
from tests.fakebot import FakeBot, telegram_html_text

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
UTC_TZ = ZoneInfo("UTC")


def fast_pacer() -> Pacer:
    """Pacing is tested on its own (test_pace.py); here it must not slow the suite."""
    return Pacer(per_chat=0.0, group_rate=(10_000, 1.0), overall_rate=(10_000, 1.0))


def spec(bot: FakeBot, chats: tuple[str, ...] = ("42",), **options: object) -> ChannelSpec:
    settings = TelegramSettings(
        token=bot.token, chats=chats, api_url=bot.api_url, timeout=timedelta(seconds=2)
    )
    settings = replace(settings, **options)  # type: ignore[arg-type]
    return ChannelSpec("desk", "telegram", {"telegram": settings}, targets=chats)


def alert(title: str, summary: str = "", key: str | None = None) -> Alert:
    match = Match("talks", ("talks",), ("title",), ("desk",), snippet=title)
    return Alert(
        feed="wire",
        item_key=key or title,
        title=title,
        link="https://news.example/1",
        summary=summary,
        published=T0,
        seen_at=T0,
        matches=(match,),
    )


def delivery(title: str, target: str = "42", **kw: str) -> Delivery:
    return Delivery(id=1, channel="desk", alert=alert(title, **kw), target=target)


@pytest.fixture
def bot() -> Iterator[FakeBot]:
    with FakeBot() as fake:
        yield fake


@pytest.fixture
async def notifier(bot: FakeBot) -> AsyncIterator[TelegramNotifier]:
    async with TelegramNotifier(spec(bot), UTC_TZ, pacer=fast_pacer()) as opened:
        yield opened


@pytest.mark.parametrize(
    "title",
    [
        "<script>alert(1)</script> talks",
        "AT&T and Verizon in talks",
        "<b>unclosed bold talks",
        "Talks &amp; more",
        "Talks resume 🕊️ in Geneva 👍🏽",
        "محادثات السلام تبدأ في جنيف talks",
        'Talks "quoted" \u200d joined',
    ],
)
async def test_hostile_titles_are_sent_escaped_and_read_literally(
    bot: FakeBot, notifier: TelegramNotifier, title: str
) -> None:
    await notifier.send(delivery(title))
    [sent] = bot.sent
    assert sent.parse_mode == "HTML"
    assert title in telegram_html_text(sent.text)  # shown exactly as the feed wrote it
    assert sent.chat_id == "42"
    assert sent.link_preview_disabled is True


async def test_options_reach_the_api(bot: FakeBot) -> None:
    options = spec(bot, ("-1001",), silent=True, message_thread_id=9)
    async with TelegramNotifier(options, UTC_TZ, pacer=fast_pacer()) as notifier:
        await notifier.send(delivery("Talks", target="-1001"))
    [sent] = bot.sent
    assert (sent.chat_id, sent.disable_notification, sent.message_thread_id) == ("-1001", True, 9)


async def test_a_huge_template_is_split_into_valid_parts(bot: FakeBot) -> None:
    template = "{{ title }}\n{% for i in range(2500) %}<b>word</b> {% endfor %}"
    async with TelegramNotifier(
        spec(bot, template=template), UTC_TZ, pacer=fast_pacer()
    ) as notifier:
        await notifier.send(delivery("Talks"))
    assert len(bot.sent) >= 3  # 12,500 visible characters
    texts = [telegram_html_text(s.text) for s in bot.sent]  # each part valid on its own
    assert all(len(t.encode("utf-16-le")) // 2 <= 4096 for t in texts)
    assert "".join(texts).count("word") == 2500


async def test_markup_telegram_refuses_falls_back_to_plain_text_once(bot: FakeBot) -> None:
    template = "<blink>{{ title }}</blink>"
    async with TelegramNotifier(
        spec(bot, template=template), UTC_TZ, pacer=fast_pacer()
    ) as notifier:
        await notifier.send(delivery("Talks <resume>"))
    [sent] = bot.sent
    assert sent.parse_mode is None
    assert "Talks <resume>" in sent.text


async def test_flood_limit_is_a_retry_after_not_a_failure(
    bot: FakeBot, notifier: TelegramNotifier
) -> None:
    bot.fail(status=429, description="Too Many Requests: retry after 7", retry_after=7)
    with pytest.raises(DeliveryError) as info:
        await notifier.send(delivery("Talks"))
    assert info.value.retry_after == 7
    assert not info.value.permanent


@pytest.mark.parametrize(
    ("status", "description"),
    [(403, "Forbidden: bot was blocked by the user"), (400, "Bad Request: chat not found")],
)
async def test_a_chat_that_refuses_us_is_a_target_error(
    bot: FakeBot, notifier: TelegramNotifier, status: int, description: str
) -> None:
    bot.fail(status=status, description=description, retry_after=None)
    with pytest.raises(TargetError, match="42"):
        await notifier.send(delivery("Talks"))


async def test_other_bad_requests_fail_the_delivery_for_good(
    bot: FakeBot, notifier: TelegramNotifier
) -> None:
    bot.fail(status=400, description="Bad Request: message is too long", retry_after=None)
    with pytest.raises(DeliveryError) as info:
        await notifier.send(delivery("Talks"))
    assert info.value.permanent
    assert not isinstance(info.value, TargetError)


async def test_server_errors_and_timeouts_are_retried(
    bot: FakeBot, notifier: TelegramNotifier
) -> None:
    bot.fail(status=500, description="Internal Server Error", retry_after=None)
    with pytest.raises(DeliveryError) as info:
        await notifier.send(delivery("Talks"))
    assert not info.value.permanent
    bot.hang("sendMessage", 5)
    with pytest.raises(DeliveryError, match="in time") as timed_out:
        await notifier.send(delivery("Talks"))
    assert not timed_out.value.permanent


async def test_a_migrated_group_is_followed(bot: FakeBot, notifier: TelegramNotifier) -> None:
    bot.fail(
        status=400,
        description="Bad Request: group chat was upgraded to a supergroup chat",
        retry_after=None,
        migrate_to_chat_id=-100777,
    )
    await notifier.send(delivery("Talks one"))
    await notifier.send(delivery("Talks two"))
    assert [s.chat_id for s in bot.sent] == ["-100777", "-100777"]
    assert notifier.migrated == {"42": "-100777"}


async def test_a_rejected_token_pauses_the_channel(bot: FakeBot) -> None:
    settings = spec(bot)
    options = replace(
        settings.options["telegram"],  # type: ignore[type-var]
        token="999999:AAWrongToken_for-tests_0123456789abcdef",
    )
    wrong = ChannelSpec("desk", "telegram", {"telegram": options}, targets=("42",))
    with pytest.raises(ChannelError, match="rejected the bot token"):
        async with TelegramNotifier(wrong, UTC_TZ, pacer=fast_pacer()):
            pass


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The daemon's own log setup (levels, redaction) writing to a buffer."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.setup("debug", "text", out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


async def test_the_token_never_reaches_errors_or_logs(
    bot: FakeBot, notifier: TelegramNotifier, log_stream: io.StringIO
) -> None:
    bot.fail(status=500, description=f"Internal error near /bot{bot.token}/x", retry_after=None)
    with pytest.raises(DeliveryError) as info:
        await notifier.send(delivery("Talks"))
    bot.fail(status=400, description="Bad Request: can't parse entities", retry_after=None)
    await notifier.send(delivery("Talks"))  # logs the fallback to plain text
    secret = bot.token.partition(":")[2]
    assert secret not in str(info.value)
    assert "plain text" in log_stream.getvalue()
    assert secret not in log_stream.getvalue()


# --- through the dispatcher, with a real store --------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(tmp_path / "state.db") as opened:
        yield opened


async def seed(store: Store, titles: list[str], chats: tuple[str, ...]) -> None:
    feed = FeedSpec(name="wire", url="https://news.example/", interval=timedelta(minutes=5))
    await store.sync_feeds([feed], T0)
    items = [Item(feed="wire", key=t, title=t, link="", seen_at=T0) for t in titles]
    await store.record_items(
        "wire",
        items,
        [alert(t) for t in titles],
        cache=CacheInfo(),
        now=T0,
        next_poll_at=T0 + timedelta(minutes=5),
        targets={"desk": chats},
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


POLICY = DeliveryPolicy(retry_base=timedelta(seconds=10), retry_cap=timedelta(minutes=5))


async def test_429_then_success_loses_nothing_and_sends_nothing_twice(
    bot: FakeBot, store: Store
) -> None:
    await seed(store, ["Talks one", "Talks two"], ("42", "43"))
    clock = Clock()
    async with TelegramNotifier(spec(bot, ("42", "43")), UTC_TZ, pacer=fast_pacer()) as tg:
        dispatcher = Dispatcher(store, {"desk": tg}, POLICY, clock, random.Random(1))
        bot.fail(
            status=429, description="Too Many Requests: retry after 1", retry_after=1, chat_id="42"
        )
        await dispatcher.run_once()
        assert [(s.chat_id, telegram_html_text(s.text).splitlines()[0]) for s in bot.sent] == [
            ("43", "Talks one"),
            ("43", "Talks two"),
        ]
        clock.now += timedelta(seconds=1)
        await dispatcher.run_once()
    firsts = [(s.chat_id, telegram_html_text(s.text).splitlines()[0]) for s in bot.sent]
    assert sorted(firsts) == [
        ("42", "Talks one"),
        ("42", "Talks two"),
        ("43", "Talks one"),
        ("43", "Talks two"),
    ]
    assert await store.pending_count() == 0


async def test_403_stops_that_chat_only(bot: FakeBot, store: Store) -> None:
    await seed(store, ["Talks one", "Talks two"], ("42", "43"))
    bot.blocked("42")
    async with TelegramNotifier(spec(bot, ("42", "43")), UTC_TZ, pacer=fast_pacer()) as tg:
        dispatcher = Dispatcher(store, {"desk": tg}, POLICY, Clock(), random.Random(1))
        await dispatcher.run_once()
        await dispatcher.run_once()
    assert [s.chat_id for s in bot.sent] == ["43", "43"]
    assert list(dispatcher.blocked) == [("desk", "42")]
    [failed] = await store.deliveries("desk", "failed")
    assert failed.target == "42"
    assert "blocked" in failed.last_error
    assert await store.pending_count() == 1  # kept for when the chat is fixed
    assert sum(1 for c in bot.requests if c.method == "sendMessage") == 3  # no retry storm


async def test_a_burst_goes_as_one_grouped_message(bot: FakeBot, store: Store) -> None:
    titles = [f"Talks round {n}" for n in range(8)]
    await seed(store, titles, ("42",))
    async with TelegramNotifier(spec(bot, group_threshold=5), UTC_TZ, pacer=fast_pacer()) as tg:
        dispatcher = Dispatcher(store, {"desk": tg}, POLICY, Clock(), random.Random(1))
        stats = await dispatcher.run_once()
    [sent] = bot.sent
    text = telegram_html_text(sent.text)
    assert all(t in text for t in titles)
    assert "8" in text.splitlines()[0]
    assert stats.sent == 8
    assert await store.pending_count() == 0
