"""The dispatcher against a real store: sends, retries with backoff, permanent failures,
paused channels, retry_after, poison rows, and channels independent of each other."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.dispatch import Dispatcher, retry_delay
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
)
from monitor.store import SQLiteStore, Store

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
POLICY = DeliveryPolicy(
    retry_base=timedelta(seconds=10), retry_cap=timedelta(minutes=5), max_attempts=4
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class ScriptedChannel:
    """A channel that fails as scripted, then accepts; records what it accepted."""

    def __init__(self, name: str, script: list[Exception] | None = None) -> None:
        self.spec = ChannelSpec(name=name, type="test")
        self.script = list(script or [])
        self.sent: list[str] = []
        self.attempts = 0

    async def __aenter__(self) -> ScriptedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, delivery: Delivery) -> None:
        self.attempts += 1
        if self.script:
            raise self.script.pop(0)
        self.sent.append(delivery.alert.title)


class ChatChannel(ScriptedChannel):
    """Records (target, title); fails as scripted per target; groups like Telegram."""

    def __init__(
        self, name: str, scripts: dict[str, list[Exception]], group_threshold: int = 0
    ) -> None:
        super().__init__(name)
        self.scripts = scripts
        self.group_threshold = group_threshold
        self.by_target: list[tuple[str, str]] = []
        self.groups: list[list[str]] = []

    async def send(self, delivery: Delivery) -> None:
        self.attempts += 1
        script = self.scripts.get(delivery.target, [])
        if script:
            raise script.pop(0)
        self.by_target.append((delivery.target, delivery.alert.title))

    async def send_group(self, deliveries: Sequence[Delivery]) -> int:
        script = self.scripts.get(deliveries[0].target, [])
        if script:
            raise script.pop(0)
        taken = [d.alert.title for d in deliveries[:3]]  # "three fit in one message"
        self.groups.append(taken)
        return len(taken)


async def seed(
    store: Store,
    titles: list[str],
    channels: tuple[str, ...],
    targets: dict[str, tuple[str, ...]] | None = None,
) -> None:
    feed = FeedSpec(name="wire", url="https://example.org/", interval=timedelta(minutes=5))
    await store.sync_feeds([feed], T0)
    items = [Item(feed="wire", key=f"id:{t}", title=t, link="", seen_at=T0) for t in titles]
    alerts = [
        Alert(
            feed="wire",
            item_key=i.key,
            title=i.title,
            link="",
            summary="",
            published=None,
            seen_at=T0,
            matches=(Match("r", ("x",), ("title",), channels),),
        )
        for i in items
    ]
    await store.record_items(
        "wire",
        items,
        alerts,
        cache=CacheInfo(),
        now=T0,
        next_poll_at=T0 + timedelta(minutes=5),
        targets=targets,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(tmp_path / "state.db") as opened:
        yield opened


def dispatcher(store: Store, clock: Clock, *channels: ScriptedChannel) -> Dispatcher:
    return Dispatcher(store, {c.spec.name: c for c in channels}, POLICY, clock, random.Random(7))


async def test_sends_in_order_and_marks_each_sent(store: Store) -> None:
    await seed(store, ["one", "two", "three"], ("desk",))
    desk = ScriptedChannel("desk")
    stats = await dispatcher(store, Clock(), desk).run_once()
    assert desk.sent == ["one", "two", "three"]
    assert stats.sent == 3
    assert await store.pending_count() == 0
    assert await dispatcher(store, Clock(), desk).run_once() == type(stats)()  # nothing twice


async def test_transient_failure_is_retried_after_backoff(store: Store) -> None:
    await seed(store, ["one"], ("desk",))
    clock = Clock()
    desk = ScriptedChannel("desk", [DeliveryError("timeout")])
    d = dispatcher(store, clock, desk)
    first = await d.run_once()
    assert (first.sent, first.retried) == (0, 1)
    [pending] = await store.deliveries("desk", "pending")
    assert pending.attempts == 1
    assert pending.last_error == "timeout"
    assert (await d.run_once()).sent == 0  # not due yet
    clock.now += timedelta(seconds=13)
    assert (await d.run_once()).sent == 1
    assert desk.sent == ["one"]


async def test_permanent_failure_does_not_block_the_others(store: Store) -> None:
    await seed(store, ["bad", "good"], ("desk",))
    desk = ScriptedChannel("desk", [DeliveryError("message rejected", permanent=True)])
    stats = await dispatcher(store, Clock(), desk).run_once()
    assert (stats.sent, stats.failed) == (1, 1)
    assert desk.sent == ["good"]
    [failed] = await store.deliveries("desk", "failed")
    assert failed.last_error == "message rejected"


async def test_poison_delivery_gives_up_after_max_attempts(store: Store) -> None:
    await seed(store, ["poison"], ("desk",))
    clock = Clock()
    desk = ScriptedChannel("desk", [DeliveryError("boom")] * 10)
    d = dispatcher(store, clock, desk)
    for _ in range(POLICY.max_attempts):
        await d.run_once()
        clock.now += timedelta(hours=1)
    assert desk.attempts == POLICY.max_attempts
    [failed] = await store.deliveries("desk", "failed")
    assert failed.last_error == "gave up after 4 attempts: boom"
    assert await store.pending_count() == 0


async def test_channel_error_pauses_only_that_channel_and_loses_nothing(
    store: Store, tmp_path: Path
) -> None:
    await seed(store, ["one", "two"], ("desk", "mail"))
    desk = ScriptedChannel("desk", [ChannelError("bot was removed from the chat")])
    mail = ScriptedChannel("mail")
    d = dispatcher(store, Clock(), desk, mail)
    await d.run_once()
    assert d.paused == {"desk": "bot was removed from the chat"}
    assert mail.sent == ["one", "two"]
    assert desk.sent == []
    assert await store.pending_count("desk") == 2  # both kept for when the channel is fixed
    await d.run_once()
    assert desk.attempts == 1
    # The channel fixed (a restart with a corrected config): everything goes out.
    fixed = ScriptedChannel("desk")
    await dispatcher(store, Clock(), fixed).run_once()
    assert fixed.sent == ["one", "two"]


async def test_a_store_failure_on_one_channel_does_not_stop_the_others(
    store: Store, tmp_path: Path
) -> None:
    await seed(store, ["one", "two"], ("broken", "mail"))
    with sqlite3.connect(tmp_path / "state.db") as raw:
        raw.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF status ON deliveries"
            " WHEN NEW.channel = 'broken' BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    broken, mail = ScriptedChannel("broken"), ScriptedChannel("mail")
    stats = await dispatcher(store, Clock(), broken, mail).run_once()
    assert mail.sent == ["one", "two"]
    assert broken.sent == ["one"]  # sent, but could not be marked: the pass stopped there
    assert stats.sent == 2


async def test_retry_after_pauses_the_channel_for_exactly_that_long(store: Store) -> None:
    await seed(store, ["one", "two"], ("desk",))
    clock = Clock()
    desk = ScriptedChannel("desk", [DeliveryError("flood control", retry_after=30)])
    d = dispatcher(store, clock, desk)
    await d.run_once()
    assert desk.attempts == 1  # "two" was not tried while the channel is told to wait
    pending = {d.alert.title: d.attempts for d in await store.deliveries("desk", "pending")}
    assert pending == {"one": 0, "two": 0}  # being told to wait is not a failed attempt
    clock.now += timedelta(seconds=29)
    await d.run_once()
    assert desk.sent == []
    clock.now += timedelta(seconds=1)
    await d.run_once()
    assert desk.sent == ["one", "two"]


async def test_a_crashing_notifier_loses_nothing(store: Store) -> None:
    await seed(store, ["one"], ("desk",))
    clock = Clock()
    desk = ScriptedChannel("desk", [RuntimeError("bug")])
    d = dispatcher(store, clock, desk)
    assert (await d.run_once()).retried == 1
    clock.now += timedelta(minutes=1)
    await d.run_once()
    assert desk.sent == ["one"]


async def test_stop_releases_claimed_deliveries(store: Store) -> None:
    await seed(store, ["one", "two"], ("desk",))
    clock = Clock()
    desk = ScriptedChannel("desk")
    d = dispatcher(store, clock, desk)
    original: Callable[[Delivery], object] = desk.send

    async def send_then_stop(delivery: Delivery) -> None:
        await original(delivery)  # type: ignore[misc]
        d.stop()

    desk.send = send_then_stop  # type: ignore[method-assign]
    await d.run_once()
    assert desk.sent == ["one"]
    [left] = await store.claim_deliveries("desk", clock.now, 10, timedelta(minutes=1))
    assert left.alert.title == "two"
    assert left.attempts == 0


def test_retry_delay_doubles_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, POLICY, rng).total_seconds() for n in (1, 2, 3, 10)]
    assert 8 <= delays[0] <= 12
    assert 16 <= delays[1] <= 24
    assert 32 <= delays[2] <= 48
    assert delays[3] <= 360


async def test_each_chat_is_its_own_delivery_and_pauses_alone(store: Store) -> None:
    await seed(store, ["one", "two"], ("desk",), {"desk": ("-100", "42")})
    clock = Clock()
    desk = ChatChannel("desk", {"-100": [DeliveryError("flood control", retry_after=30)]})
    d = dispatcher(store, clock, desk)
    await d.run_once()
    # The flooded chat waits; the other chat got both alerts at once.
    assert desk.by_target == [("42", "one"), ("42", "two")]
    assert d.waiting("desk") == {"-100": T0 + timedelta(seconds=30)}
    pending = await store.deliveries("desk", "pending")
    assert sorted((x.target, x.alert.title, x.attempts) for x in pending) == [
        ("-100", "one", 0),
        ("-100", "two", 0),
    ]
    clock.now += timedelta(seconds=30)
    await d.run_once()
    assert desk.by_target[2:] == [("-100", "one"), ("-100", "two")]  # same order, no loss
    assert await store.pending_count() == 0


async def test_a_chat_that_refuses_us_fails_once_then_is_paused(store: Store) -> None:
    await seed(store, ["one", "two"], ("desk",), {"desk": ("-100", "42")})
    desk = ChatChannel("desk", {"-100": [TargetError("Forbidden: bot was kicked")]})
    d = dispatcher(store, Clock(), desk)
    stats = await d.run_once()
    assert d.blocked == {("desk", "-100"): "Forbidden: bot was kicked"}
    assert desk.by_target == [("42", "one"), ("42", "two")]
    [failed] = await store.deliveries("desk", "failed")
    assert (failed.target, failed.alert.title) == ("-100", "one")
    assert "kicked" in failed.last_error
    # The chat's later alert is kept, not tried again while the chat is paused.
    [kept] = await store.deliveries("desk", "pending")
    assert (kept.target, kept.alert.title, kept.attempts) == ("-100", "two", 0)
    assert stats.failed == 1
    assert (await d.run_once()).sent == 0
    assert desk.attempts == 3  # two sends to "42", one refused to "-100", nothing since


async def test_a_burst_for_one_chat_goes_as_grouped_messages(store: Store) -> None:
    titles = [f"story {n}" for n in range(7)]
    await seed(store, titles, ("desk",), {"desk": ("-100",)})
    desk = ChatChannel("desk", {}, group_threshold=5)
    stats = await dispatcher(store, Clock(), desk).run_once()
    assert desk.groups == [titles[0:3], titles[3:6]]
    assert desk.by_target == [("-100", "story 6")]  # one left over reads best on its own
    assert stats.sent == 7
    assert await store.pending_count() == 0


async def test_a_few_alerts_are_not_grouped(store: Store) -> None:
    await seed(store, ["one", "two"], ("desk",), {"desk": ("-100",)})
    desk = ChatChannel("desk", {}, group_threshold=5)
    await dispatcher(store, Clock(), desk).run_once()
    assert desk.groups == []
    assert desk.by_target == [("-100", "one"), ("-100", "two")]


async def test_a_failed_group_retries_every_alert_in_it(store: Store) -> None:
    titles = [f"story {n}" for n in range(6)]
    await seed(store, titles, ("desk",), {"desk": ("-100",)})
    clock = Clock()
    desk = ChatChannel("desk", {"-100": [DeliveryError("timeout")]}, group_threshold=5)
    d = dispatcher(store, clock, desk)
    stats = await d.run_once()
    assert stats.retried == 6
    clock.now += timedelta(minutes=1)
    await d.run_once()
    assert [t for group in desk.groups for t in group] == titles  # all of them, once


async def test_a_burst_to_several_chats_is_grouped_for_each(store: Store) -> None:
    titles = [f"story {n}" for n in range(10)]
    chats = ("-1", "-2", "-3", "-4", "-5")
    await seed(store, titles, ("desk",), {"desk": chats})
    desk = ChatChannel("desk", {}, group_threshold=5)
    desk.spec = ChannelSpec("desk", "test", targets=chats)
    await dispatcher(store, Clock(), desk).run_once()
    assert desk.by_target == [(c, "story 9") for c in chats]  # 3 + 3 + 3 grouped, 1 left
    assert len(desk.groups) == 15
    assert await store.pending_count() == 0


async def test_a_chat_refusing_a_group_fails_one_alert_and_keeps_the_rest(store: Store) -> None:
    titles = [f"story {n}" for n in range(7)]
    await seed(store, titles, ("desk",), {"desk": ("-100",)})
    desk = ChatChannel("desk", {"-100": [TargetError("Forbidden: bot was kicked")]}, 5)
    d = dispatcher(store, Clock(), desk)
    stats = await d.run_once()
    assert stats.failed == 1
    assert len(await store.deliveries("desk", "pending")) == 6
    assert d.blocked == {("desk", "-100"): "Forbidden: bot was kicked"}


async def test_a_refused_grouped_message_falls_back_to_single_sends(store: Store) -> None:
    titles = [f"story {n}" for n in range(6)]
    await seed(store, titles, ("desk",), {"desk": ("-100",)})
    refused = DeliveryError("message is too long", permanent=True)
    desk = ChatChannel("desk", {"-100": [refused]}, group_threshold=5)
    await dispatcher(store, Clock(), desk).run_once()
    assert [t for _, t in desk.by_target] == titles
    assert desk.groups == []


class SlowChannel(ScriptedChannel):
    """Each send takes `delay` of the clock (pacing, a slow server)."""

    def __init__(self, name: str, clock: Clock, delay: timedelta) -> None:
        super().__init__(name)
        self.clock, self.delay = clock, delay

    async def send(self, delivery: Delivery) -> None:
        self.clock.now += self.delay
        await super().send(delivery)


async def test_a_batch_outlasting_its_lease_renews_its_claim(store: Store) -> None:
    """Sends taking longer in all than the lease: what is left of the batch is claimed
    again before the next send, so no other worker could take it meanwhile."""
    await seed(store, ["one", "two", "three", "four"], ("desk",))
    clock = Clock()
    held: list[int] = []

    class Watching(SlowChannel):
        async def send(self, delivery: Delivery) -> None:
            # Claimed (under a running lease) at the moment of each send: this one and the
            # ones after it, though the first claim's lease ran out after 2 minutes.
            held.append(await store.claimed_count("desk", clock.now + self.delay))
            await super().send(delivery)

    desk = Watching("desk", clock, timedelta(seconds=90))
    stats = await dispatcher(store, clock, desk).run_once()
    assert desk.sent == ["one", "two", "three", "four"]
    assert stats.sent == 4
    assert held == [4, 3, 2, 1]
    assert await store.claimed_count("desk", clock.now) == 0
