"""Bot commands over Telegram: long-polls getUpdates and answers allowed chats and users.

One listener per bot token (two long polls on one token make Telegram answer 409 Conflict),
with the allow lists of every channel using that bot. A message from a chat or user not on
the allow list is ignored and logged, never answered: a public bot must not tell strangers
what a desk monitors. Replies go straight to the chat (they are not alerts: no outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta

from telegram import Bot, Update
from telegram.error import Conflict, InvalidToken, TelegramError

from monitor.commands import CommandContext, answer, command_of
from monitor.notify.pace import Pacer
from monitor.notify.telegram import MAX_PACE_WAIT, POLL_TIMEOUT, chat_arg, redact

log = logging.getLogger("monitor.telegram")

#: Longest wait between getUpdates attempts after failures, seconds.
BACKOFF_CAP = 60.0


class CommandListener:
    """Answers commands sent to one bot until cancelled."""

    def __init__(
        self,
        bot: Bot,
        token: str,
        allow: Collection[str],
        ctx: CommandContext,
        pacer: Pacer,
        *,
        poll_timeout: float = POLL_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._token = token
        self._allow = frozenset(allow)
        self._ctx = ctx
        self._pacer = pacer
        self._poll_timeout = poll_timeout
        self._sleep = sleep
        self._offset: int | None = None
        self._username: str | None = None

    async def run(self) -> None:
        """Poll and answer forever (cancel to stop); failures back off, never end the loop
        except a rejected token, which no retry can fix."""
        failures = 0
        while True:
            try:
                updates = await self._bot.get_updates(
                    offset=self._offset,
                    timeout=timedelta(seconds=self._poll_timeout),
                    allowed_updates=["message"],
                )
            except InvalidToken:
                log.error("bot commands stopped: Telegram rejected the bot token")
                return
            except TelegramError as exc:
                failures += 1
                delay = min(BACKOFF_CAP, 2.0**failures)
                why = redact(str(getattr(exc, "message", exc)), self._token)
                if isinstance(exc, Conflict):
                    why += " (another process polls this bot, or it has a webhook set)"
                log.warning("reading bot commands failed, again in %gs: %s", delay, why)
                await self._sleep(delay)
                continue
            failures = 0
            for update in updates:
                self._offset = update.update_id + 1
                try:
                    await self.handle(update)
                except Exception:  # one bad update must not end the listener
                    log.exception("bot command handling failed")

    async def handle(self, update: Update) -> None:
        """Answer one update if it is a command from an allowed chat or user."""
        message = update.message
        if message is None or not message.text:
            return
        if self._username is None:
            with contextlib.suppress(TelegramError):  # unknown for now: taken from any bot
                self._username = (await self._bot.get_me()).username
        parsed = command_of(message.text, self._username)
        if parsed is None:
            return
        chat = str(message.chat.id)
        user = str(message.from_user.id) if message.from_user else ""
        if chat not in self._allow and user not in self._allow:
            log.warning(
                "ignored /%s from a chat and user not on the allow list",
                parsed[0],
                extra={"target": chat, "user": user or None},
            )
            return
        try:
            reply = await answer(*parsed, self._ctx)
        except Exception:  # a store hiccup: say so rather than stay silent
            log.exception("bot command failed", extra={"target": chat})
            reply = "Sorry, that failed; see the daemon's log."
        log.info("answered /%s", parsed[0], extra={"target": chat, "user": user or None})
        if self._pacer.delay(chat) > MAX_PACE_WAIT:
            log.warning("not answering: Telegram has this chat on hold", extra={"target": chat})
            return
        try:
            await self._pacer.wait(chat)
            await self._bot.send_message(
                chat_id=chat_arg(chat),
                text=reply,
                parse_mode="HTML",
                # A reply in a plain group carries its reply chain's id here: only a forum
                # topic's id may be sent back.
                message_thread_id=message.message_thread_id if message.is_topic_message else None,
            )
        except TelegramError as exc:
            why = redact(str(getattr(exc, "message", exc)), self._token)
            log.warning("could not answer a bot command: %s", why, extra={"target": chat})
