"""The fake Bot API driven by the real python-telegram-bot: answers, faults, checks, polling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from telegram import Bot, BotCommand, LinkPreviewOptions, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import ApplicationBuilder, CommandHandler
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from tests.fakebot import MAX_POLL, FakeBot, Sent, telegram_html_text


@pytest.fixture
def fake() -> Iterator[FakeBot]:
    with FakeBot() as fake:
        yield fake


def ptb(fake: FakeBot, **kwargs: object) -> Bot:
    return Bot(fake.token, base_url=f"{fake.api_url}/bot", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def bot(fake: FakeBot) -> AsyncIterator[Bot]:
    async with ptb(fake) as bot:
        yield bot


@pytest.fixture
def timedelta_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB 22 warns when a RetryAfter is even made, unless told to use timedeltas.
    monkeypatch.setenv("PTB_TIMEDELTA", "1")


# --- answers -----------------------------------------------------------------------------------


async def test_initialize_gets_the_bot_user(fake: FakeBot, bot: Bot) -> None:
    assert (bot.id, bot.username, bot.bot.is_bot) == (123456789, "fake_test_bot", True)
    assert [(c.method, c.status) for c in fake.requests] == [("getMe", 200)]


async def test_send_message_is_recorded_with_its_options(fake: FakeBot, bot: Bot) -> None:
    message = await bot.send_message(
        -100123,
        "<b>Hi</b> &amp; <i>😀x</i>",
        parse_mode="HTML",
        disable_notification=True,
        message_thread_id=7,
        link_preview_options=LinkPreviewOptions(is_disabled=True),
    )

    assert fake.sent == [Sent("-100123", "<b>Hi</b> &amp; <i>😀x</i>", "HTML", True, 7, True, 1)]
    assert (message.message_id, message.chat.type, message.text) == (1, "supergroup", "Hi & 😀x")
    assert [(e.type, e.offset, e.length) for e in message.entities] == [
        ("bold", 0, 2),
        ("italic", 5, 3),  # offsets and lengths in UTF-16 code units, as Telegram counts
    ]
    assert message.message_thread_id == 7


async def test_send_message_defaults_and_the_older_preview_flag(fake: FakeBot, bot: Bot) -> None:
    await bot.send_message(42, "plain")
    message = await bot.send_message("@news", "no preview", disable_web_page_preview=True)

    first, second = fake.sent
    assert first == Sent("42", "plain", None, False, None, False, 1)
    assert (second.chat_id, second.link_preview_disabled, second.message_id) == ("@news", True, 2)
    assert (message.chat.type, message.chat.username) == ("channel", "news")


async def test_concurrent_sends_get_distinct_ids(fake: FakeBot, bot: Bot) -> None:
    messages = await asyncio.gather(*(bot.send_message(n, f"m{n}") for n in range(1, 21)))

    assert sorted(m.message_id for m in messages) == list(range(1, 21))
    assert len(fake.sent) == 20


async def test_commands_chat_and_webhook(fake: FakeBot, bot: Bot) -> None:
    assert await bot.set_my_commands([BotCommand("start", "Say hello")])
    commands = await bot.get_my_commands()
    chat = await bot.get_chat(-100123)

    assert [(c.command, c.description) for c in commands] == [("start", "Say hello")]
    assert (chat.id, chat.type) == (-100123, "supergroup")
    assert await bot.delete_webhook()
    assert await bot.send_chat_action(42, "typing")


# --- scripted faults ---------------------------------------------------------------------------


@pytest.mark.usefixtures("timedelta_periods")
async def test_429_raises_retry_after_once(fake: FakeBot, bot: Bot) -> None:
    fake.fail("sendMessage", retry_after=7)

    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(42, "hi")
    await bot.send_message(42, "hi")

    assert caught.value.retry_after == dt.timedelta(seconds=7)
    assert [c.status for c in fake.calls("sendMessage")] == [429, 200]
    assert len(fake.sent) == 1


async def test_without_ptb_timedelta_a_429_surfaces_as_a_warning(
    fake: FakeBot, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worth knowing: PTB warns while constructing RetryAfter, so with warnings as errors the
    # caller sees PTBDeprecationWarning instead of RetryAfter.
    monkeypatch.delenv("PTB_TIMEDELTA", raising=False)
    fake.fail()

    with pytest.raises(PTBDeprecationWarning):
        await bot.send_message(42, "hi")


async def test_403_raises_forbidden(fake: FakeBot, bot: Bot) -> None:
    fake.fail(status=403)

    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(42, "hi")


async def test_chat_not_found_raises_bad_request(fake: FakeBot, bot: Bot) -> None:
    fake.fail(status=400)

    with pytest.raises(BadRequest, match="Chat not found"):  # PTB drops "Bad Request: "
        await bot.send_message(42, "hi")


async def test_migrated_group_raises_chat_migrated(fake: FakeBot, bot: Bot) -> None:
    fake.fail(migrate_to_chat_id=-1001234567890)

    with pytest.raises(ChatMigrated) as caught:
        await bot.send_message(-123, "hi")

    assert caught.value.new_chat_id == -1001234567890
    assert fake.requests[-1].status == 400


async def test_500_raises_network_error(fake: FakeBot, bot: Bot) -> None:
    fake.fail(status=500)

    with pytest.raises(NetworkError, match="Internal Server Error"):
        await bot.send_message(42, "hi")


@pytest.mark.usefixtures("timedelta_periods")
async def test_faults_are_consumed_in_order_and_per_chat(fake: FakeBot, bot: Bot) -> None:
    fake.fail(status=403, chat_id=-5)
    fake.fail(status=500, times=2)
    fake.fail(retry_after=1)

    outcomes = []
    for chat in (42, -5, 42, 42, 42):
        try:
            await bot.send_message(chat, "hi")
            outcomes.append("sent")
        except (Forbidden, RetryAfter, NetworkError) as exc:
            outcomes.append(type(exc).__name__)

    assert outcomes == ["NetworkError", "Forbidden", "NetworkError", "RetryAfter", "sent"]


async def test_blocked_and_missing_chats_stay_so(fake: FakeBot, bot: Bot) -> None:
    fake.blocked(42)
    fake.missing("-100999")

    for _ in range(2):
        with pytest.raises(Forbidden):
            await bot.send_message(42, "hi")
        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.send_message(-100999, "hi")
    await bot.send_message(43, "hi")

    assert [s.chat_id for s in fake.sent] == ["43"]


async def test_a_held_answer_times_out_though_the_message_went(fake: FakeBot) -> None:
    fake.hang("sendMessage", 30)

    async with ptb(fake, request=HTTPXRequest(read_timeout=0.2)) as bot:
        with pytest.raises(TimedOut):
            await bot.send_message(42, "hi")
        await bot.send_message(42, "again")  # only the next call was held

    assert [s.text for s in fake.sent] == ["hi", "again"]


async def test_wrong_token_raises_invalid_token(fake: FakeBot) -> None:
    bot = Bot("987654321:AAWrongToken_for-tests_0123456789abcdef", base_url=f"{fake.api_url}/bot")

    with pytest.raises(InvalidToken):
        await bot.initialize()
    await bot.shutdown()

    assert [(c.method, c.status) for c in fake.requests] == [("getMe", 401)]


# --- what Telegram checks ----------------------------------------------------------------------


async def test_invalid_html_is_refused(fake: FakeBot, bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities: unsupported start tag"):
        await bot.send_message(42, "line<br>break", parse_mode="HTML")

    assert fake.sent == []


async def test_markup_is_not_checked_without_parse_mode(fake: FakeBot, bot: Bot) -> None:
    message = await bot.send_message(42, "a <br> & b")

    assert message.text == "a <br> & b"


@pytest.mark.parametrize("text", [" ", "<b></b>", "<b> \n</b>"])
async def test_empty_text_is_refused(bot: Bot, text: str) -> None:
    with pytest.raises(BadRequest, match="Message text is empty"):
        await bot.send_message(42, text, parse_mode="HTML")


async def test_length_is_counted_in_utf16_units_of_the_shown_text(bot: Bot) -> None:
    await bot.send_message(42, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")

    with pytest.raises(BadRequest, match="Message is too long"):
        await bot.send_message(42, "😀" * 2049)  # 2049 characters, 4098 code units


# --- updates -----------------------------------------------------------------------------------


async def test_get_updates_returns_pushed_messages_and_respects_offset(
    fake: FakeBot, bot: Bot
) -> None:
    fake.push_message("/start now", chat_id=42)
    fake.push_message("hello", chat_id=-100123, user_id=42)

    first = await bot.get_updates()
    again = await bot.get_updates(offset=first[0].update_id + 1)
    fake.push_message("later", chat_id=42)
    rest = await bot.get_updates(offset=again[-1].update_id + 1)

    assert [u.message.text for u in first if u.message] == ["/start now", "hello"]
    command, group = (u.message for u in first if u.message)
    assert [(e.type, e.offset, e.length) for e in command.entities] == [("bot_command", 0, 6)]
    assert (command.chat.type, group.chat.type, group.from_user and group.from_user.id) == (
        "private",
        "supergroup",
        42,
    )
    assert [u.message.text for u in again if u.message] == ["hello"]
    assert [u.message.text for u in rest if u.message] == ["later"]


async def test_get_updates_long_polls_until_a_message_arrives(fake: FakeBot, bot: Bot) -> None:
    asyncio.get_running_loop().call_later(0.1, lambda: fake.push_message("hi", chat_id=42))

    updates = await bot.get_updates(timeout=MAX_POLL)

    assert [u.message.text for u in updates if u.message] == ["hi"]


async def test_channel_posts_and_dropped_updates(fake: FakeBot, bot: Bot) -> None:
    fake.push_message("dropped", chat_id=42)
    await bot.delete_webhook(drop_pending_updates=True)
    fake.push_message("news", chat_id=-1001, chat_type="channel")

    (update,) = await bot.get_updates()

    assert update.channel_post is not None
    assert (update.channel_post.text, update.channel_post.chat.type) == ("news", "channel")


async def test_an_application_polling_the_fake_answers_a_command(fake: FakeBot) -> None:
    async def pong(update: Update, context: object) -> None:
        assert update.effective_chat is not None
        await update.effective_chat.send_message("pong")

    app = ApplicationBuilder().token(fake.token).base_url(f"{fake.api_url}/bot").build()
    app.add_handler(CommandHandler("ping", pong))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=1)
        update = fake.push_message("/ping", chat_id=42)
        sent = await fake.wait_for_sent_async(1)
        await app.updater.stop()
        await app.stop()

    assert [(s.chat_id, s.text) for s in sent] == [("42", "pong")]
    assert fake.calls("getUpdates")[-1].params["offset"] == update["update_id"] + 1  # confirmed


# --- the fake itself ---------------------------------------------------------------------------


async def test_wait_for_sent_async(fake: FakeBot, bot: Bot) -> None:
    waiting = asyncio.create_task(fake.wait_for_sent_async(2))
    await bot.send_message(1, "a")
    await bot.send_message(2, "b")

    assert [s.text for s in await waiting] == ["a", "b"]


def test_wait_for_sent_times_out(fake: FakeBot) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 messages"):
        fake.wait_for_sent(1, timeout=0.05)


def test_parameters_in_every_encoding(fake: FakeBot) -> None:
    url = f"{fake.api_url}/bot{fake.token}/sendMessage"
    with httpx.Client(trust_env=False, timeout=5) as client:
        json_body = {"chat_id": "-100", "text": "json", "disable_notification": True}
        form = {"chat_id": "42", "text": "123", "message_thread_id": "3"}
        parts = {"chat_id": "42", "text": "multi", "link_preview_options": '{"is_disabled":true}'}
        query = {"chat_id": "@news", "text": "q", "disable_web_page_preview": "true"}
        answers = [
            client.post(url, json=json_body),
            client.post(url, data=form),
            client.post(url, data=parts, files={"document": ("a.txt", b"abc")}),
            client.get(url, params=query),
        ]

    assert [a.status_code for a in answers] == [200] * 4
    assert [
        (s.chat_id, s.text, s.disable_notification, s.message_thread_id) for s in fake.sent
    ] == [
        ("-100", "json", True, None),
        ("42", "123", False, 3),
        ("42", "multi", False, None),
        ("@news", "q", False, None),
    ]
    assert [s.link_preview_disabled for s in fake.sent] == [False, False, True, True]
    assert fake.requests[1].params == {"chat_id": 42, "text": "123", "message_thread_id": 3}
    assert fake.requests[2].params["document"] == b"abc"


def test_wrong_token_and_unknown_method_answers(fake: FakeBot) -> None:
    with httpx.Client(trust_env=False, timeout=5) as client:
        wrong = client.post(f"{fake.api_url}/bot1:nope/getMe")
        unknown = client.post(f"{fake.api_url}/bot{fake.token}/noSuchMethod")

    assert (wrong.status_code, wrong.json()) == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, 404)


def test_stop_is_prompt_with_held_answers_and_long_polls() -> None:
    before = set(threading.enumerate())
    fake = FakeBot().start()
    fake.hang("sendMessage", 60)
    base = f"{fake.api_url}/bot{fake.token}/"

    def post(method: str, data: dict[str, str]) -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(base + method, data=data, timeout=30, trust_env=False)

    clients = [
        threading.Thread(target=post, args=("sendMessage", {"chat_id": "1", "text": "x"})),
        threading.Thread(target=post, args=("getUpdates", {"timeout": "60"})),
    ]
    for client in clients:
        client.start()
    while len(fake.requests) < 2:
        time.sleep(0.01)

    started = time.monotonic()
    fake.stop()
    elapsed = time.monotonic() - started

    for client in clients:
        client.join(timeout=5)
    assert elapsed < 2
    assert [t for t in threading.enumerate() if t not in before] == []


# --- Telegram's HTML ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "shown"),
    [
        ("<b>bold</b> &lt;i&gt; &amp; &quot;q&quot; &#39;&#x27;", "bold <i> & \"q\" ''"),
        ('<a href="https://x.example/?a=1&amp;b=2">link</a>', "link"),
        ('<pre><code class="language-python">x = 1</code></pre>', "x = 1"),
        ('<span class="tg-spoiler">s</span><tg-spoiler>t</tg-spoiler>', "st"),
        ("<blockquote expandable>q</blockquote>", "q"),
        ('<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>', "👍"),
        ("<B>upper</B> <s><u>x</u></s> a > b", "upper x a > b"),
    ],
)
def test_telegram_html_text(html: str, shown: str) -> None:
    assert telegram_html_text(html) == shown


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("a <br> b", 'Unsupported start tag "br" at byte offset 2'),
        ("é <br>", 'Unsupported start tag "br" at byte offset 3'),  # bytes, not characters
        ("x < y", 'Unsupported start tag "" at byte offset 2'),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("<b>x", 'Can\'t find end tag corresponding to start tag "b" at byte offset 0'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<b", "Unclosed start tag at byte offset 0"),
        ("AT&T", 'Character "&" must be escaped as "&amp;" at byte offset 2'),
        ("&nbsp;", 'Unsupported HTML entity "&nbsp;" at byte offset 0'),
        ("&#0;", 'Invalid HTML entity "&#0;" at byte offset 0'),
        ('<span class="x">s</span>', 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("<a href=https://x>l</a>", "Unexpected end of name token at byte offset 13"),
    ],
)
def test_telegram_html_errors(html: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        telegram_html_text(html)
