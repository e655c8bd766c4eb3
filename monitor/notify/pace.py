"""Pacing of Telegram sends, so the bot stays under Telegram's flood limits before it enforces them.

Telegram allows about one message per second per chat, 20 per minute per group chat and 30 per
second per bot; going over earns a `RetryAfter` that stalls every channel sharing the bot.
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_right, insort
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: Float slack when comparing spans of send times; far below any limit worth expressing.
_EPSILON = 1e-9


def is_group(chat: str) -> bool:
    """Whether `chat` is a group or channel (a negative id or an @username), as Telegram counts."""
    return chat.startswith(("-", "@"))


def earliest_in_window(times: list[float], limit: int, period: float, start: float) -> float:
    """The earliest time >= `start` at which one more send keeps every `period`-long window of
    `times` (sorted send times, past and reserved) at `limit` sends or fewer.

    Reserved times may lie in the future and a new send may fit before them, so this searches
    the gaps between sorted times rather than only looking past the last one. A set of times
    obeys the limit exactly when any `limit + 1` consecutive ones span at least `period`.
    """
    p = bisect_right(times, start)
    while True:
        t = max(start, times[p - 1]) if p > 0 else start
        if p >= limit:
            t = max(t, times[p - limit] + period)
        if _fits(times, limit, period, t, p):
            return t
        p += 1


def _fits(times: list[float], limit: int, period: float, t: float, p: int) -> bool:
    # `t` inserted at index `p`: each run of limit + 1 consecutive times through it (j of them
    # before it) must span at least `period`.
    if p < len(times) and t > times[p]:
        return False
    for j in range(max(0, p + limit - len(times)), min(limit, p) + 1):
        first = times[p - j] if j else t
        last = times[p + limit - j - 1] if j < limit else t
        if last - first < period - _EPSILON:
            return False
    return True


def _forget(times: list[float], before: float) -> None:
    # Sends at or before `before` are out of every window still to come.
    del times[: bisect_right(times, before)]


@dataclass
class _Chat:
    #: Past and reserved send times within the windows, sorted.
    times: list[float] = field(default_factory=list)
    #: Until when a `hold` forbids sends to this chat.
    held_until: float = -math.inf


class Pacer:
    """One per bot token, shared by every channel using that bot.

    `wait(chat)` returns when a send to `chat` is allowed and counts that send; sends to one
    chat keep the order of their `wait` calls. For one event loop: it keeps no locks, as each
    slot is computed and reserved without awaiting in between. A waiter cancelled before its
    slot gives the slot back.
    """

    def __init__(
        self,
        *,
        per_chat: float = 1.0,
        group_rate: tuple[int, float] = (20, 60.0),
        overall_rate: tuple[int, float] = (30, 1.0),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_chat < 0:
            raise ValueError(f"per_chat must be >= 0, not {per_chat}")
        for name, (limit, period) in (("group_rate", group_rate), ("overall_rate", overall_rate)):
            if limit < 1 or period <= 0:
                raise ValueError(f"{name} must be (sends >= 1, seconds > 0), not {limit, period}")
        self._per_chat = per_chat
        self._group_rate = group_rate
        self._overall_rate = overall_rate
        self._clock = clock
        self._sleep = sleep
        self._chats: dict[str, _Chat] = {}
        self._overall: list[float] = []
        self._held_until = -math.inf
        # Chats idle for longer than every window are forgotten, checked this often.
        self._memory = max(per_chat, group_rate[1], overall_rate[1])
        self._next_forget = -math.inf

    @property
    def tracked_chats(self) -> int:
        """How many chats have recent sends or holds remembered (bounded by the windows)."""
        return len(self._chats)

    async def wait(self, chat: str) -> None:
        """Wait until a send to `chat` is allowed under every limit and hold, and count it."""
        while True:
            now = self._clock()
            self._forget_idle(now)
            at = self._earliest(chat, now)
            self._reserve(chat, at)
            try:
                if at > now:
                    await self._sleep(at - now)
            except BaseException:
                self._release(chat, at)
                raise
            # A hold placed while we slept (a RetryAfter elsewhere) outranks our slot.
            if self._hold_end(chat) <= max(at, self._clock()):
                return
            self._release(chat, at)

    def hold(self, chat: str | None, seconds: float) -> None:
        """No sends to `chat` (None: to any chat of this bot) for `seconds` from now."""
        until = self._clock() + seconds
        if chat is None:
            self._held_until = max(self._held_until, until)
        else:
            state = self._chats.setdefault(chat, _Chat())
            state.held_until = max(state.held_until, until)

    def delay(self, chat: str) -> float:
        """Seconds until a send to `chat` would be allowed (0 when at once); reserves nothing."""
        now = self._clock()
        return max(0.0, self._earliest(chat, now) - now)

    def _hold_end(self, chat: str) -> float:
        state = self._chats.get(chat)
        return max(self._held_until, state.held_until if state else -math.inf)

    def _earliest(self, chat: str, now: float) -> float:
        state = self._chats.get(chat, _Chat())
        t = max(now, self._hold_end(chat))
        if state.times:
            t = max(t, state.times[-1] + self._per_chat)  # after every earlier send: FIFO
        group = is_group(chat)
        while True:
            # Each step only moves `t` later; two agreeing steps end it (the group window is
            # satisfied for good once past, as this chat has no sends after `t`).
            moved = t
            if group:
                moved = earliest_in_window(state.times, *self._group_rate, moved)
            moved = earliest_in_window(self._overall, *self._overall_rate, moved)
            if moved == t:
                return t
            t = moved

    def _reserve(self, chat: str, at: float) -> None:
        insort(self._chats.setdefault(chat, _Chat()).times, at)
        insort(self._overall, at)

    def _release(self, chat: str, at: float) -> None:
        # Removing a send never breaks a window, so other reservations stay valid.
        state = self._chats.get(chat)
        for times in (state.times if state else [], self._overall):
            i = bisect_right(times, at) - 1
            if i >= 0 and times[i] == at:
                del times[i]

    def _forget_idle(self, now: float) -> None:
        _forget(self._overall, now - self._overall_rate[1])
        if now < self._next_forget:
            return
        self._next_forget = now + self._memory
        group_period = self._group_rate[1]
        for chat, state in list(self._chats.items()):
            _forget(state.times, now - (group_period if is_group(chat) else self._per_chat))
            if not state.times and state.held_until <= now:
                del self._chats[chat]
