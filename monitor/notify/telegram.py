"""The `telegram` channel: alerts to Telegram chats through python-telegram-bot.

One `TelegramNotifier` per configured channel, each chat id of the channel a delivery target
of its own, so a chat that blocks the bot or hits a flood limit never holds up another.
Every Bot API answer is mapped to what the dispatcher should do (BAD-INPUTS T01-T12):

- `RetryAfter` (429): the chat waits exactly as long as asked (`DeliveryError.retry_after`),
  and the bot's pacer holds that chat for every channel on the same bot;
- `BadRequest` "can't parse entities": sent again at once as plain text (a user template
  with markup Telegram refuses must not lose the alert); "chat not found", "not enough
  rights", "message thread not found" and the like: `TargetError` (the chat is paused);
  any other `BadRequest` (message too long, ...): this delivery fails for good;
- `Forbidden` (bot blocked, kicked from the group): `TargetError`, the chat is paused;
- `ChatMigrated` (group upgraded to a supergroup): sent to the new id at once, which is kept
  for later sends and logged so the operator can update the config;
- `InvalidToken` (401/404): `ChannelError`, the whole channel is paused (a revoked token);
- `TimedOut` and `NetworkError`: retried with backoff. A timeout after the request was
  written is ambiguous (Telegram may have accepted it): we retry, preferring a rare
  duplicate to a lost alert, and use a generous read timeout so it stays rare.

Sends are paced before Telegram would refuse them (`pace.Pacer`, one per bot token). The bot
token never appears in an error we raise or log: PTB puts it in some messages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import cast
from zoneinfo import ZoneInfo

from telegram import Bot, LinkPreviewOptions, Message
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest

from monitor.errors import ChannelError, DeliveryError, TargetError
from monitor.models import ChannelSpec, Delivery, Rule, TelegramSettings
from monitor.notify.pace import Pacer
from monitor.notify.telegram_render import (
    MAX_LENGTH,
    TemplateProblem,
    compile_template,
    plain_text,
    render_alert,
    render_group,
)

log = logging.getLogger("monitor.telegram")

# PTB 22 warns on every read of RetryAfter.retry_after (even inside its own constructor)
# unless timedelta values are opted into; we opt in (its documented switch, read at each
# call) and accept either form in `_seconds`.
os.environ.setdefault("PTB_TIMEDELTA", "1")

#: Long-poll wait of getUpdates (bot commands), seconds.
POLL_TIMEOUT = 25


def settings_of(spec: ChannelSpec) -> TelegramSettings:
    return cast(TelegramSettings, spec.options["telegram"])


def chat_arg(chat: str) -> int | str:
    """A chat id as the Bot API wants it: a number, or an @name."""
    return int(chat) if chat.lstrip("-").isdigit() else chat


def make_bot(settings: TelegramSettings, *, poll_timeout: float = POLL_TIMEOUT) -> Bot:
    """A Bot on the configured API root; getUpdates gets its own connection, waiting longer
    than its long poll."""
    seconds = settings.timeout.total_seconds()
    request = HTTPXRequest(
        connection_pool_size=8,
        connect_timeout=min(seconds, 10.0),
        read_timeout=seconds,
        write_timeout=seconds,
        pool_timeout=seconds,
    )
    updates = HTTPXRequest(
        connection_pool_size=2,
        connect_timeout=min(seconds, 10.0),
        read_timeout=poll_timeout + seconds,
        write_timeout=seconds,
        pool_timeout=seconds,
    )
    return Bot(
        settings.token,
        base_url=f"{settings.api_url}/bot",
        base_file_url=f"{settings.api_url}/file/bot",
        request=request,
        get_updates_request=updates,
    )


class TelegramNotifier:
    """Sends alerts of one channel to its chats (`Delivery.target`), grouped in bursts."""

    def __init__(
        self,
        spec: ChannelSpec,
        tz: ZoneInfo,
        rules: Mapping[str, Rule] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings_of(spec)
        self.group_threshold = self.settings.group_threshold
        self._tz = tz
        self._rules = dict(rules or {})
        self._template = compile_template(self.settings.template)
        self._pacer = pacer or Pacer()
        self.bot = make_bot(self.settings)
        #: Chats that moved (group -> supergroup): configured id -> current id.
        self.migrated: dict[str, str] = {}

    async def __aenter__(self) -> TelegramNotifier:
        try:
            await self.bot.initialize()  # getMe: checks the token
        except InvalidToken:
            await self.__aexit__(None, None, None)  # no `async with` exit follows a failed entry
            raise ChannelError(self._bad_token()) from None
        except TelegramError as exc:  # unreachable for now: sends retry later
            log.warning(
                "cannot reach the Telegram Bot API yet (%s); alerts wait in the outbox",
                self._clean(exc),
                extra={"channel": self.spec.name},
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.bot.shutdown()
        except TelegramError as exc:
            log.debug("closing the bot: %s", self._clean(exc), extra={"channel": self.spec.name})

    async def send(self, delivery: Delivery) -> None:
        alert, name = delivery.alert, self.spec.name
        try:
            parts = render_alert(alert, name, self._tz, self._template, self._rules)
        except TemplateProblem as exc:
            # The user's template passed the check at load but fails on this alert (a
            # missing value): the alert still goes out, in the built-in shape.
            log.error(
                "the channel's template failed on an alert (%s); sent with the built-in one",
                exc,
                extra={"channel": name, "delivery": delivery.id},
            )
            parts = render_alert(alert, name, self._tz, compile_template(None), self._rules)
        for html in parts:
            await self.post(delivery.target, html)

    async def send_group(self, deliveries: Sequence[Delivery]) -> int:
        html, count = render_group([d.alert for d in deliveries], self.spec.name, self._tz)
        await self.post(deliveries[0].target, html)
        return count

    async def post(self, target: str, html: str) -> Message:
        """Send one HTML message to a chat, mapping every failure to a DeliveryError."""
        try:
            return await self._send(target, html, "HTML")
        except BadRequest as exc:
            if "can't parse entities" not in exc.message.lower():
                raise self._error(exc, target) from None
            log.warning(
                "Telegram refused the HTML (%s); sending as plain text",
                self._clean(exc),
                extra={"channel": self.spec.name, "target": target},
            )
        except TelegramError as exc:
            raise self._error(exc, target) from None
        text = plain_text(html)
        while _units(text) > MAX_LENGTH:  # links spelled out may add some
            text = text[: len(text) - (_units(text) - MAX_LENGTH) - 1].rstrip() + "…"
        try:
            return await self._send(target, text, None)
        except TelegramError as exc:
            raise self._error(exc, target) from None

    async def _send(self, target: str, text: str, parse_mode: str | None) -> Message:
        try:
            return await self._send_once(target, text, parse_mode)
        except ChatMigrated as exc:
            new = str(exc.new_chat_id)
            self.migrated[target] = new
            log.warning(
                "chat %s became %s (a group upgraded to a supergroup): sending there; "
                "update chat_id in the config",
                target,
                new,
                extra={"channel": self.spec.name, "target": target},
            )
            return await self._send_once(target, text, parse_mode)

    async def _send_once(self, target: str, text: str, parse_mode: str | None) -> Message:
        chat = self.migrated.get(target, target)
        settings = self.settings
        held = self._pacer.delay(chat)
        if held > MAX_PACE_WAIT:  # Telegram told this bot to wait (maybe another channel)
            raise DeliveryError(f"chat {chat} is on hold for {held:.0f}s", retry_after=held)
        await self._pacer.wait(chat)
        return await self.bot.send_message(
            chat_id=chat_arg(chat),
            text=text,
            parse_mode=parse_mode,
            disable_notification=settings.silent,
            message_thread_id=settings.message_thread_id,
            link_preview_options=LinkPreviewOptions(is_disabled=settings.disable_web_page_preview),
        )

    def _error(self, exc: TelegramError, target: str) -> DeliveryError:
        chat = self.migrated.get(target, target)
        why = self._clean(exc)
        if isinstance(exc, RetryAfter):
            seconds = _seconds(exc.retry_after)
            self._pacer.hold(chat, seconds)
            return DeliveryError(
                f"Telegram flood limit: retry after {seconds:g}s", retry_after=seconds
            )
        if isinstance(exc, Forbidden):
            return TargetError(f"Telegram refuses chat {chat}: {why}")
        if isinstance(exc, BadRequest):
            if any(phrase in why.lower() for phrase in _DESTINATION_REFUSALS):
                return TargetError(f"Telegram refuses chat {chat}: {why}")
            return DeliveryError(f"Telegram rejected the message: {why}", permanent=True)
        if isinstance(exc, InvalidToken):
            return ChannelError(self._bad_token())
        if isinstance(exc, TimedOut):
            return DeliveryError(f"Telegram did not answer in time: {why}")
        if isinstance(exc, NetworkError):
            return DeliveryError(f"cannot reach Telegram: {why}")
        return DeliveryError(f"Telegram error: {why}")

    def _bad_token(self) -> str:
        return (
            f"Telegram rejected the bot token of channel {self.spec.name!r} "
            "(revoked or mistyped): get a valid one from @BotFather"
        )

    def _clean(self, exc: BaseException) -> str:
        """An error's text with the bot token masked (PTB and httpx may quote it)."""
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return redact(str(text), self.settings.token)


def redact(text: str, token: str) -> str:
    """`text` with the token, and its secret half, masked."""
    secret = token.partition(":")[2]
    text = text.replace(token, "<token>")
    return text.replace(secret, "<token>") if len(secret) >= 8 else text


#: Longest wait for a pacing slot inside a send; longer holds (a 429 on this chat, maybe
#: answered to another channel on the same bot) go back to the dispatcher as a retry_after,
#: so one held chat never stalls a dispatch pass.
MAX_PACE_WAIT = 5.0
#: BadRequest texts that mean "this chat will not take our messages" rather than "this
#: message is wrong": the chat is paused and its later alerts kept.
_DESTINATION_REFUSALS = (
    "chat not found",
    "not enough rights",
    "need administrator rights",
    "have no rights",
    "chat_write_forbidden",
    "thread not found",
    "topic_closed",
    "topic closed",
    "topic_deleted",
    "bot is not a member",
    "chat was deactivated",
)


def _units(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def _seconds(value: object) -> float:
    if isinstance(value, timedelta):
        return max(value.total_seconds(), 0.0)
    return max(float(cast(float, value)), 0.0)
