"""Pacer: sends spaced under Telegram's per-chat, per-group and per-bot limits, in virtual time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.notify.pace import Pacer, earliest_in_window, is_group

START = 1000.0


class VirtualTime:
    """A clock and a sleep for the Pacer; no real time passes.

    Alone, `sleep` just moves the clock. Under `run`, sleepers park until every task is asleep,
    then the earliest wakes with the clock set to its wake-up time, as a real loop would.
    """

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._running = False

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the pacer sleeps only when it has to"
        if not self._running:
            self.now += seconds
            return
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    async def run(self, *coros: Coroutine[Any, Any, None]) -> None:
        self._running = True
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            for _ in range(100_000):
                await asyncio.sleep(0)
                self._sleepers = [s for s in self._sleepers if not s[2].cancelled()]
                heapq.heapify(self._sleepers)
                awake = sum(not t.done() for t in tasks) - len(self._sleepers)
                if not any(not t.done() for t in tasks):
                    break
                if awake == 0:
                    wake_at, _, wake = heapq.heappop(self._sleepers)
                    self.now = max(self.now, wake_at)
                    wake.set_result(None)
            else:
                pytest.fail("tasks never finished")
        finally:
            self._running = False
        for task in tasks:
            task.result()


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


def make_pacer(vt: VirtualTime, **limits: Any) -> Pacer:
    return Pacer(clock=vt.clock, sleep=vt.sleep, **limits)


async def send_all(pacer: Pacer, vt: VirtualTime, chats: Sequence[str]) -> list[float]:
    """Send to `chats` one after the other; the relative times each send went out."""
    times = []
    for chat in chats:
        await pacer.wait(chat)
        times.append(vt.now - START)
    return times


def most_in_window(times: Sequence[float], period: float) -> int:
    """The largest number of `times` inside any window of `period` seconds."""
    ordered = sorted(times)
    return max(
        (
            sum(1 for t in ordered[i:] if t < start + period - 1e-9)
            for i, start in enumerate(ordered)
        ),
        default=0,
    )


def test_is_group() -> None:
    assert [is_group(c) for c in ("-100123", "@news", "42")] == [True, True, False]


async def test_sends_to_one_chat_are_a_second_apart(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)

    assert await send_all(pacer, vt, ["42", "42", "7", "42"]) == [0, 1, 1, 2]


async def test_other_chats_do_not_wait_for_a_busy_one(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)
    await pacer.wait("42")

    assert pacer.delay("42") == 1
    assert pacer.delay("7") == 0


async def test_delay_reserves_nothing(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)
    await pacer.wait("42")
    vt.now += 0.25

    assert pacer.delay("42") == pacer.delay("42") == 0.75
    assert await send_all(pacer, vt, ["42"]) == [1.0]


async def test_a_group_gets_at_most_twenty_a_minute(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)

    times = await send_all(pacer, vt, ["-100123"] * 45)

    assert times[:20] == list(range(20))
    assert times[20:23] == [60, 61, 62]  # the 21st waits until the first leaves the window
    assert times[40] == 120
    assert most_in_window(times, 60) == 20


async def test_channel_usernames_count_as_groups(vt: VirtualTime) -> None:
    pacer = make_pacer(vt, group_rate=(2, 10.0))

    assert await send_all(pacer, vt, ["@news"] * 3) == [0, 1, 10]


async def test_private_chats_are_not_held_to_the_group_limit(vt: VirtualTime) -> None:
    pacer = make_pacer(vt, group_rate=(2, 10.0))

    assert await send_all(pacer, vt, ["42"] * 3) == [0, 1, 2]


async def test_the_bot_sends_at_most_thirty_a_second(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)

    times = await send_all(pacer, vt, [str(n) for n in range(100)])

    assert times == [n // 30 for n in range(100)]


async def test_hold_one_chat(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)

    pacer.hold("42", 5)

    assert (pacer.delay("42"), pacer.delay("7")) == (5, 0)
    assert await send_all(pacer, vt, ["42", "7"]) == [5, 5]


async def test_hold_every_chat(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)

    pacer.hold(None, 3)

    assert (pacer.delay("42"), pacer.delay("-1")) == (3, 3)
    assert await send_all(pacer, vt, ["42", "-1"]) == [3, 3]


async def test_holds_only_lengthen(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)

    pacer.hold("42", 5)
    pacer.hold("42", 2)

    assert pacer.delay("42") == 5


async def test_a_hold_during_a_wait_pushes_the_waiter_back(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)
    sent: list[float] = []

    async def two_sends() -> None:
        sent.extend(await send_all(pacer, vt, ["42", "42"]))  # the second is due at 1

    async def retry_after_elsewhere() -> None:
        await vt.sleep(0.5)
        pacer.hold(None, 10)

    await vt.run(two_sends(), retry_after_elsewhere())

    assert sent == [0, 10.5]


async def test_concurrent_waiters_share_the_limits(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)
    sent: list[tuple[str, int, float]] = []

    async def send(chat: str, n: int) -> None:
        await pacer.wait(chat)
        sent.append((chat, n, vt.now - START))

    chats = ["-5"] * 4 + [str(n % 80) for n in range(100)]
    await vt.run(*(send(chat, n) for n, chat in enumerate(chats)))

    times = [t for _, _, t in sent]
    assert most_in_window(times, 1.0) == 30
    assert max(times) == 3  # 104 sends: as fast as 30 a second allows, no slower
    for chat in set(chats):
        mine = [(n, t) for c, n, t in sent if c == chat]
        assert mine == sorted(mine), "one chat's sends go out in the order they waited"
        assert all(b - a >= 1 for (_, a), (_, b) in itertools.pairwise(mine))


async def test_a_cancelled_waiter_gives_its_slot_back(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)
    await pacer.wait("42")
    sent: list[float] = []

    async def cancelled_and_next() -> None:
        waiter = asyncio.ensure_future(pacer.wait("42"))  # reserves the slot at 1
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        sent.extend(await send_all(pacer, vt, ["42"]))

    await vt.run(cancelled_and_next())

    assert sent == [1]


async def test_idle_chats_are_forgotten(vt: VirtualTime) -> None:
    pacer = make_pacer(vt)
    await send_all(pacer, vt, [str(n) for n in range(50)] + ["-100"])
    pacer.hold("7", 30)
    assert pacer.tracked_chats == 51

    vt.now += 61  # past every window and the hold
    await pacer.wait("1")

    assert pacer.tracked_chats == 1


def test_earliest_in_window_fits_between_reservations() -> None:
    # Two a second; sends at 0 and 0, one reserved at 5: the next fits at 1, before 5.
    assert earliest_in_window([0.0, 0.0, 5.0], 2, 1.0, 0.0) == 1.0
    # ... but not at 4.5, where the window (4, 5] would hold 4.5, 5 and 5.
    assert earliest_in_window([0.0, 5.0, 5.0], 2, 1.0, 4.5) == 6.0


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"per_chat": -1}, "per_chat"),
        ({"group_rate": (0, 60.0)}, "group_rate"),
        ({"overall_rate": (30, 0.0)}, "overall_rate"),
    ],
)
def test_nonsense_limits_are_refused(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pacer(**limits)


@settings(max_examples=60, deadline=None)
@given(
    chats=st.lists(st.sampled_from(["1", "2", "3", "-4", "-5", "@six"]), max_size=60),
    holds=st.lists(st.tuples(st.floats(0, 5), st.sampled_from([None, "1", "-4"]), st.floats(0, 5))),
)
def test_no_workload_breaks_a_limit(
    chats: list[str], holds: list[tuple[float, str | None, float]]
) -> None:
    vt = VirtualTime()
    pacer = make_pacer(vt, group_rate=(4, 10.0), overall_rate=(5, 1.0))
    sent: list[tuple[str, float]] = []
    held: list[tuple[str | None, float, float]] = []

    async def send(chat: str) -> None:
        await pacer.wait(chat)
        sent.append((chat, vt.now))

    async def hold(after: float, chat: str | None, seconds: float) -> None:
        if after:
            await vt.sleep(after)
        pacer.hold(chat, seconds)
        held.append((chat, vt.now, vt.now + seconds))

    async def scenario() -> None:
        await vt.run(*(send(c) for c in chats), *(hold(*h) for h in holds))

    asyncio.run(scenario())

    assert len(sent) == len(chats)
    assert most_in_window([t for _, t in sent], 1.0) <= 5
    for chat in set(chats):
        mine = [t for c, t in sent if c == chat]
        assert all(b - a >= 1 - 1e-9 for a, b in itertools.pairwise(mine))
        if is_group(chat):
            assert most_in_window(mine, 10.0) <= 4
    for held_chat, start, end in held:
        assert not [t for c, t in sent if held_chat in (None, c) and start < t < end]
