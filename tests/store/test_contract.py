"""The Store contract, run against every backend through the parametrized `store` fixture.

The backends, `new_store` and `store` are in tests/store/conftest.py; PostgreSQL skips unless
MONITOR_TEST_POSTGRES holds a DSN, decided in ONE place there, so pytest's `-ra` summary shows
one line for all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from monitor.errors import StoreError
from monitor.models import CacheInfo, DeliveryStatus, FeedState, Match, Retention
from monitor.store import MemoryStore, Pruned, SQLiteStore, Store, open_store
from tests.store.factories import (
    DAY,
    HOUR,
    MINUTE,
    T0,
    alert,
    item,
    poll_at,
    record,
    spec,
)


async def keys_of(store: Store, feed: str | None = None) -> list[str]:
    return [i.key for i in await store.recent_items(T0 - 365 * DAY, feed)]


# --- lifecycle ---------------------------------------------------------------------------------


async def test_open_and_close_are_idempotent_and_data_survives_reopen(
    new_store: Callable[[], Store],
) -> None:
    store = new_store()
    await store.open()
    await store.open()
    await store.sync_feeds([spec("a")], T0)
    await record(store, "a", [item("k1")], [alert("k1")])
    await store.close()
    await store.close()
    await store.open()
    try:
        assert await store.unseen("a", ["k1", "k2"]) == {"k2"}
        assert await store.pending_count() == 1
    finally:
        await store.close()


async def test_async_with_opens_and_closes(new_store: Callable[[], Store]) -> None:
    store = new_store()
    async with store as entered:  # type: ignore[attr-defined]
        assert entered is store
        await store.sync_feeds([spec("a")], T0)
    with pytest.raises(StoreError):
        await store.feed_states()


async def test_use_before_open_is_refused(new_store: Callable[[], Store]) -> None:
    with pytest.raises(StoreError, match="not open"):
        await new_store().feed_states()


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.claim_due_feeds(datetime(2024, 5, 1, 12), 10, MINUTE)


# --- sync_feeds --------------------------------------------------------------------------------


async def test_new_feeds_first_polls_spread_over_the_first_minute(store: Store) -> None:
    await store.sync_feeds([spec(f"f{i}") for i in range(50)], T0)
    times = [s.next_poll_at for s in await store.feed_states()]
    assert len(times) == 50
    assert all(t is not None and T0 <= t < T0 + MINUTE for t in times)
    assert len(set(times)) > 40  # spread, not a burst


async def test_a_few_new_feeds_are_polled_almost_at_once(store: Store) -> None:
    # The fixture synced two feeds: 50 ms each.
    for state in await store.feed_states():
        assert state.next_poll_at is not None
        assert T0 <= state.next_poll_at < T0 + timedelta(milliseconds=100)


async def test_first_poll_spread_is_capped_by_a_short_interval(store: Store) -> None:
    feeds = [spec(f"f{i}", interval=timedelta(seconds=10)) for i in range(500)]
    await store.sync_feeds(feeds, T0)
    for state in await store.feed_states():
        assert state.next_poll_at is not None
        assert T0 <= state.next_poll_at < T0 + timedelta(seconds=10)


async def test_first_poll_time_is_deterministic_per_feed_name(store: Store) -> None:
    other = MemoryStore()
    async with other:
        await other.sync_feeds([spec("a"), spec("b")], T0)
        assert await other.feed_states() == await store.feed_states()


async def test_resync_keeps_the_schedule_and_the_state(store: Store) -> None:
    await store.record_failure("a", "boom", now=T0, next_poll_at=T0 + HOUR)
    before = await store.feed_state("a")
    await store.sync_feeds([spec("a"), spec("b")], T0 + 10 * MINUTE)
    assert await store.feed_state("a") == before


async def test_url_change_resets_validators_but_keeps_items_and_schedule(store: Store) -> None:
    await record(store, "a", [item("k1")], cache=CacheInfo("etag-1", "Wed, 01 May 2024"))
    before = await store.feed_state("a")
    assert before is not None
    assert before.cache == CacheInfo("etag-1", "Wed, 01 May 2024")
    await store.sync_feeds([spec("a", url="https://new.example/a"), spec("b")], T0 + MINUTE)
    after = await store.feed_state("a")
    assert after == dataclasses.replace(
        before, url="https://new.example/a", cache=CacheInfo(), seeded=False
    )
    assert await store.unseen("a", ["k1"]) == set()


async def test_removed_feed_is_kept_but_never_claimed(store: Store) -> None:
    await record(store, "a", [item("k1")], [alert("k1")])
    await store.sync_feeds([spec("b")], T0)
    assert [s.name for s in await store.feed_states()] == ["b"]
    assert [s.name for s in await store.claim_due_feeds(T0 + DAY, 10, MINUTE)] == ["b"]
    assert (await store.feed_state("a")) is not None
    assert await store.unseen("a", ["k1"]) == set()
    # Re-adding the feed finds its items: no second alert for what it had already seen.
    await store.sync_feeds([spec("a"), spec("b")], T0 + DAY)
    recorded = await record(store, "a", [item("k1")], [alert("k1")], now=T0 + DAY)
    assert (recorded.new_items, recorded.alerts) == ((), 0)


async def test_unknown_feed_state_is_none(store: Store) -> None:
    assert await store.feed_state("nope") is None


# --- claim_due_feeds ---------------------------------------------------------------------------


async def test_claims_only_due_feeds_oldest_first_up_to_limit(store: Store) -> None:
    await store.sync_feeds([spec("a"), spec("b"), spec("c")], T0)
    await poll_at(store, "a", T0 + 3 * MINUTE)
    await poll_at(store, "b", T0 + 1 * MINUTE)
    await poll_at(store, "c", T0 + 2 * MINUTE)
    assert await store.claim_due_feeds(T0 + MINUTE - timedelta(microseconds=1), 10, HOUR) == []
    assert [s.name for s in await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)] == ["b"]
    claimed = await store.claim_due_feeds(T0 + 5 * MINUTE, 1, HOUR)
    assert [s.name for s in claimed] == ["c"]
    assert await store.claim_due_feeds(T0 + 5 * MINUTE, 0, HOUR) == []
    assert [s.name for s in await store.claim_due_feeds(T0 + 5 * MINUTE, 10, HOUR)] == ["a"]


async def test_claimed_feed_is_not_claimed_again_until_lease_expires(store: Store) -> None:
    await store.sync_feeds([spec("a")], T0)
    now = T0 + MINUTE
    assert [s.name for s in await store.claim_due_feeds(now, 10, 5 * MINUTE)] == ["a"]
    assert await store.claim_due_feeds(now, 10, 5 * MINUTE) == []
    assert await store.claim_due_feeds(now + 5 * MINUTE - timedelta(seconds=1), 10, MINUTE) == []
    # The lease ends at now + lease: from that instant the feed can be claimed again.
    assert [s.name for s in await store.claim_due_feeds(now + 5 * MINUTE, 10, MINUTE)] == ["a"]


@pytest.mark.parametrize("finish", ["items", "not_modified", "failure"])
async def test_every_record_releases_the_claim(store: Store, finish: str) -> None:
    await store.sync_feeds([spec("a")], T0)
    now = T0 + MINUTE
    assert len(await store.claim_due_feeds(now, 10, HOUR)) == 1
    if finish == "items":
        await record(store, "a", [], now=now, next_poll_at=now)
    elif finish == "not_modified":
        await store.record_not_modified("a", now=now, next_poll_at=now)
    else:
        await store.record_failure("a", "boom", now=now, next_poll_at=now)
    assert [s.name for s in await store.claim_due_feeds(now, 10, HOUR)] == ["a"]


async def test_concurrent_claims_never_hand_out_a_feed_twice(store: Store) -> None:
    await store.sync_feeds([spec(f"f{i}") for i in range(10)], T0)
    batches = await asyncio.gather(
        *(store.claim_due_feeds(T0 + MINUTE, 1, HOUR) for _ in range(20))
    )
    names = [s.name for batch in batches for s in batch]
    assert sorted(names) == sorted(f"f{i}" for i in range(10))


async def test_returned_states_do_not_change_with_the_store(store: Store) -> None:
    before = await store.feed_state("a")
    assert before is not None
    await store.record_failure("a", "boom", now=T0, next_poll_at=T0 + HOUR)
    assert before == FeedState("a", "https://example.com/a.xml", next_poll_at=before.next_poll_at)
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.last_error = "x"  # type: ignore[misc]


# --- record_items ------------------------------------------------------------------------------


async def test_record_items_stores_new_items_and_skips_stored_ones(store: Store) -> None:
    first = await record(store, "a", [item("k1"), item("k2", content="body")])
    assert [(i.key, i.seen_at, i.feed) for i in first.new_items] == [
        ("k1", T0, "a"),
        ("k2", T0, "a"),
    ]
    assert first.new_items[1].content == "body"
    second = await record(store, "a", [item("k3"), item("k2"), item("k1")], now=T0 + HOUR)
    assert [i.key for i in second.new_items] == ["k3"]
    stored = {i.key: i.seen_at for i in await store.recent_items(T0)}
    assert stored == {"k1": T0, "k2": T0, "k3": T0 + HOUR}


async def test_items_are_per_feed(store: Store) -> None:
    await record(store, "a", [item("k1")])
    recorded = await record(store, "b", [item("k1", feed="b")])
    assert [i.key for i in recorded.new_items] == ["k1"]
    assert await keys_of(store, "b") == ["k1"]


async def test_duplicate_keys_in_one_call_first_wins(store: Store) -> None:
    recorded = await record(
        store, "a", [item("k1", title="first"), item("k2"), item("k1", title="second")]
    )
    assert [(i.key, i.title) for i in recorded.new_items] == [("k1", "first"), ("k2", "title k2")]
    assert {i.key: i.title for i in await store.recent_items(T0)}["k1"] == "first"


async def test_alerts_only_for_items_new_in_this_call(store: Store) -> None:
    await record(store, "a", [item("k1")])
    recorded = await record(
        store,
        "a",
        [item("k1"), item("k2")],
        [alert("k1"), alert("k2"), alert("k9"), alert("k2", feed="b")],
        now=T0 + MINUTE,
    )
    assert (recorded.alerts, recorded.deliveries) == (1, 1)
    assert [d.alert.item_key for d in await store.deliveries()] == ["k2"]


async def test_an_item_alerts_at_most_once_ever(store: Store) -> None:
    first = await record(store, "a", [item("k1")], [alert("k1"), alert("k1", channels=["x"])])
    assert (first.alerts, first.deliveries) == (1, 1)
    for n in range(1, 4):
        again = await record(store, "a", [item("k1")], [alert("k1")], now=T0 + n * HOUR)
        assert (again.new_items, again.alerts, again.deliveries) == ((), 0, 0)
    assert await store.pending_count() == 1


async def test_one_pending_delivery_per_channel(store: Store) -> None:
    two_rules = alert(
        "k1",
        matches=(
            Match("r1", ("a",), ("title",), ("tg", "mail")),
            Match("r2", ("b",), ("summary",), ("tg",)),
        ),
    )
    no_channel = alert("k2", channels=())
    recorded = await record(store, "a", [item("k1"), item("k2")], [two_rules, no_channel])
    assert (recorded.alerts, recorded.deliveries) == (2, 2)
    assert await store.pending_count("tg") == 1
    assert await store.pending_count("mail") == 1
    assert await store.pending_count() == 2


async def test_record_items_updates_the_feed_state(store: Store) -> None:
    await store.record_failure("a", "boom", now=T0, next_poll_at=T0 + MINUTE)
    await record(store, "a", [item("k1")], now=T0 + MINUTE)
    await record(
        store,
        "a",
        [item("k1"), item("k2"), item("k3")],
        now=T0 + 2 * MINUTE,
        next_poll_at=T0 + HOUR,
        cache=CacheInfo('"v2"', None),
        warning="recovered from malformed XML",
    )
    assert await store.feed_state("a") == FeedState(
        name="a",
        url="https://example.com/a.xml",
        cache=CacheInfo('"v2"', None),
        next_poll_at=T0 + HOUR,
        last_polled_at=T0 + 2 * MINUTE,
        last_success_at=T0 + 2 * MINUTE,
        last_error="",
        consecutive_failures=0,
        seeded=True,
        items_seen=3,
        last_warning="recovered from malformed XML",
        last_new_at=T0 + 2 * MINUTE,
        cadence=MINUTE,
    )


async def test_empty_poll_marks_the_feed_seeded(store: Store) -> None:
    recorded = await record(store, "a", [])
    assert (recorded.new_items, recorded.alerts, recorded.deliveries) == ((), 0, 0)
    state = await store.feed_state("a")
    assert state is not None
    assert state.seeded


async def test_recording_for_an_unknown_feed_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown feed"):
        await record(store, "nope", [item("k1", feed="nope")], [alert("k1", feed="nope")])
    with pytest.raises(StoreError, match="unknown feed"):
        await store.record_not_modified("nope", now=T0, next_poll_at=T0)
    with pytest.raises(StoreError, match="unknown feed"):
        await store.record_failure("nope", "x", now=T0, next_poll_at=T0)
    assert await store.pending_count() == 0


@pytest.mark.parametrize("bad", ["item", "alert"])
async def test_bad_input_fails_before_anything_is_written(store: Store, bad: str) -> None:
    naive = datetime(2024, 1, 1)
    items = [item("k1"), item("k2", published=naive if bad == "item" else None)]
    alerts = [alert("k1"), alert("k2", published=naive if bad == "alert" else None)]
    with pytest.raises(ValueError, match="naive"):
        await record(store, "a", items, alerts)
    assert await store.unseen("a", ["k1", "k2"]) == {"k1", "k2"}
    assert await store.pending_count() == 0


async def test_unseen_is_a_read(store: Store) -> None:
    await record(store, "a", [item("k1"), item("k2")])
    assert await store.unseen("a", ["k1", "k3", "k4", "k3"]) == {"k3", "k4"}
    assert await store.unseen("a", []) == set()
    assert await store.unseen("b", ["k1"]) == {"k1"}
    assert await store.unseen("a", ["k3"]) == {"k3"}


async def test_large_poll_is_recorded_whole(store: Store) -> None:
    items = [item(f"k{n}") for n in range(1200)]
    alerts = [alert(f"k{n}") for n in range(0, 1200, 100)]
    recorded = await record(store, "a", items, alerts)
    assert (len(recorded.new_items), recorded.alerts) == (1200, 12)
    assert await store.unseen("a", [f"k{n}" for n in range(1300)]) == {
        f"k{n}" for n in range(1200, 1300)
    }
    again = await record(store, "a", items, alerts, now=T0 + 2 * DAY)
    assert (again.new_items, again.alerts) == ((), 0)


async def test_the_store_keeps_copies_of_what_it_is_given(store: Store) -> None:
    tags, channels = ["x"], ["tg"]
    sloppy_item = item("k1", tags=tags)  # lists where tuples belong: a careless caller
    sloppy_alert = alert("k1", matches=(Match("r", ("t",), ("title",), channels),))  # type: ignore[arg-type]
    await record(store, "a", [sloppy_item], [sloppy_alert])
    tags.append("y")
    channels.append("mail")
    [stored] = await store.recent_items(T0)
    assert stored.tags == ("x",)
    [delivery] = await store.claim_deliveries("tg", T0, 10, MINUTE)
    assert delivery.alert.matches[0].channels == ("tg",)
    assert await store.pending_count("mail") == 0


# --- not modified and failures -----------------------------------------------------------------


async def test_failures_count_up_and_a_304_resets_them(store: Store) -> None:
    await record(store, "a", [], cache=CacheInfo("e", "m"), warning="w")
    await store.record_failure("a", "HTTP 503", now=T0 + MINUTE, next_poll_at=T0 + 2 * MINUTE)
    await store.record_failure("a", "timed out", now=T0 + 2 * MINUTE, next_poll_at=T0 + HOUR)
    failed = await store.feed_state("a")
    assert failed is not None
    assert (failed.consecutive_failures, failed.last_error) == (2, "timed out")
    assert (failed.last_polled_at, failed.last_success_at) == (T0 + 2 * MINUTE, T0)
    assert failed.next_poll_at == T0 + HOUR
    assert failed.failing_since == T0 + MINUTE
    await store.record_not_modified("a", now=T0 + HOUR, next_poll_at=T0 + 2 * HOUR)
    assert await store.feed_state("a") == dataclasses.replace(
        failed,
        consecutive_failures=0,
        last_error="",
        last_polled_at=T0 + HOUR,
        last_success_at=T0 + HOUR,
        next_poll_at=T0 + 2 * HOUR,
        failing_since=None,
    )


async def test_a_304_with_validators_stores_them(store: Store) -> None:
    await record(store, "a", [], cache=CacheInfo('"v1"', "Wed, 01 May 2024 12:00:00 GMT"))
    await store.record_not_modified(
        "a", now=T0 + HOUR, next_poll_at=T0 + 2 * HOUR, cache=CacheInfo('"v2"', None)
    )
    state = await store.feed_state("a")
    assert state is not None
    # Both fields as given, like record_items: the caller merges what it wants to keep.
    assert state.cache == CacheInfo('"v2"', None)
    assert (state.last_success_at, state.next_poll_at) == (T0 + HOUR, T0 + 2 * HOUR)
    # Without validators the stored ones stay.
    await store.record_not_modified("a", now=T0 + 2 * HOUR, next_poll_at=T0 + 3 * HOUR)
    after = await store.feed_state("a")
    assert after == dataclasses.replace(
        state,
        last_polled_at=T0 + 2 * HOUR,
        last_success_at=T0 + 2 * HOUR,
        next_poll_at=T0 + 3 * HOUR,
    )


async def test_released_feeds_can_be_claimed_at_once_and_nothing_else_changes(
    store: Store,
) -> None:
    await store.sync_feeds([spec("a"), spec("b"), spec("c")], T0)
    now = T0 + MINUTE
    assert len(await store.claim_due_feeds(now, 10, DAY)) == 3
    before = await store.feed_states()
    await store.release_feeds(["a", "c", "nope"])
    await store.release_feeds([])
    assert await store.feed_states() == before
    assert sorted(s.name for s in await store.claim_due_feeds(now, 10, DAY)) == ["a", "c"]
    # Releasing a feed nobody claimed, or one claimed again, changes nothing else either.
    await store.release_feeds(["a", "b"])
    assert sorted(s.name for s in await store.claim_due_feeds(now, 10, DAY)) == ["a", "b"]
    assert await store.feed_states() == before


# --- deliveries --------------------------------------------------------------------------------


async def _three_alerts(store: Store) -> None:
    """k1 at T0, then k2 and k3 together at T0+1min: tg gets all three, mail only k2."""
    await record(store, "a", [item("k1")], [alert("k1")])
    await record(
        store,
        "a",
        [item("k2"), item("k3")],
        [alert("k2", channels=["tg", "mail"]), alert("k3")],
        now=T0 + MINUTE,
    )


async def test_claim_deliveries_oldest_first_per_channel(store: Store) -> None:
    await _three_alerts(store)
    now = T0 + HOUR
    claimed = await store.claim_deliveries("tg", now, 2, MINUTE)
    assert [d.alert.item_key for d in claimed] == ["k1", "k2"]
    assert all(d.channel == "tg" and d.status is DeliveryStatus.PENDING for d in claimed)
    assert [d.alert.item_key for d in await store.claim_deliveries("tg", now, 10, MINUTE)] == ["k3"]
    mail = await store.claim_deliveries("mail", now, 10, MINUTE)
    assert [(d.channel, d.alert.item_key) for d in mail] == [("mail", "k2")]
    assert await store.claim_deliveries("nobody", now, 10, MINUTE) == []
    assert len({d.id for d in [*claimed, *mail]}) == 3


async def test_claimed_delivery_returns_after_its_lease(store: Store) -> None:
    await _three_alerts(store)
    first = await store.claim_deliveries("mail", T0 + HOUR, 10, 5 * MINUTE)
    assert len(first) == 1
    assert await store.claim_deliveries("mail", T0 + HOUR + 4 * MINUTE, 10, MINUTE) == []
    again = await store.claim_deliveries("mail", T0 + HOUR + 5 * MINUTE, 10, MINUTE)
    assert [d.id for d in again] == [first[0].id]


async def test_delivery_carries_the_whole_alert(store: Store) -> None:
    published = datetime(2024, 4, 30, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=2)))
    original = alert(
        "k1",
        seen_at=T0,
        title="Grüße aus Köln – 東京 🚀 \"quotes\" 'single' <b>&amp;",
        link="https://example.com/ü?q=1&r=2",
        summary="x" * 100_000,
        published=published,
        matches=(
            Match("rule one", ("köln", '"exact phrase"'), ("title", "summary"), ("tg",)),
            Match("rule two", (), (), ("tg", "mail")),
        ),
    )
    await record(store, "a", [item("k1")], [original])
    [delivery] = await store.claim_deliveries("tg", T0, 10, HOUR)
    assert delivery.alert == original
    assert delivery.alert.published == published.astimezone(UTC)
    assert delivery.alert.published.utcoffset() == timedelta(0)  # type: ignore[union-attr]
    assert (delivery.attempts, delivery.last_error, delivery.created_at) == (0, "", T0)
    await record(store, "a", [item("k2")], [alert("k2", published=None)], now=T0 + MINUTE)
    [later] = await store.claim_deliveries("tg", T0 + MINUTE, 10, MINUTE)
    assert later.alert.published is None


async def test_released_deliveries_can_be_claimed_at_once(store: Store) -> None:
    # The dispatcher calls it when it stops mid-batch.
    await _three_alerts(store)
    claimed = await store.claim_deliveries("tg", T0 + HOUR, 10, DAY)
    await store.mark_sent(claimed[0].id, T0 + HOUR)
    await store.release_deliveries([d.id for d in claimed] + [12345])
    again = await store.claim_deliveries("tg", T0 + HOUR, 10, DAY)
    assert [d.id for d in again] == [d.id for d in claimed[1:]]
    [sent] = await store.deliveries("tg", "sent")
    assert sent.id == claimed[0].id


async def test_mark_sent_finishes_a_delivery(store: Store) -> None:
    await _three_alerts(store)
    [delivery] = await store.claim_deliveries("mail", T0 + HOUR, 10, MINUTE)
    await store.mark_sent(delivery.id, T0 + HOUR)
    await store.mark_sent(delivery.id, T0 + 2 * HOUR)  # idempotent
    assert await store.pending_count("mail") == 0
    assert await store.claim_deliveries("mail", T0 + DAY, 10, MINUTE) == []
    [sent] = await store.deliveries("mail", "sent")
    assert (sent.id, sent.status, sent.attempts) == (delivery.id, DeliveryStatus.SENT, 0)


async def test_mark_retry_counts_and_delays(store: Store) -> None:
    await _three_alerts(store)
    [delivery] = await store.claim_deliveries("mail", T0 + HOUR, 10, DAY)
    retry_at = T0 + HOUR + 10 * MINUTE
    await store.mark_retry(delivery.id, "HTTP 502", now=T0 + HOUR, retry_at=retry_at)
    assert await store.pending_count("mail") == 1
    before = retry_at - timedelta(microseconds=1)
    assert await store.claim_deliveries("mail", before, 10, MINUTE) == []
    # Due at retry_at although the first claim's lease (a day) has not run out: it is released.
    [again] = await store.claim_deliveries("mail", retry_at, 10, MINUTE)
    assert (again.id, again.attempts, again.last_error) == (delivery.id, 1, "HTTP 502")
    await store.mark_retry(delivery.id, "HTTP 503", now=retry_at, retry_at=retry_at)
    [third] = await store.claim_deliveries("mail", retry_at, 10, MINUTE)
    assert (third.attempts, third.last_error, third.status) == (2, "HTTP 503", "pending")


async def test_mark_retry_without_an_attempt_delays_but_does_not_count(store: Store) -> None:
    # A channel answering "retry after N seconds" did not fail: max_attempts must not run out.
    await _three_alerts(store)
    [delivery] = await store.claim_deliveries("mail", T0 + HOUR, 10, DAY)
    retry_at = T0 + HOUR + 30 * MINUTE
    await store.mark_retry(
        delivery.id, "rate limited", now=T0 + HOUR, retry_at=retry_at, attempt=False
    )
    assert await store.claim_deliveries("mail", retry_at - timedelta(microseconds=1), 10, DAY) == []
    [again] = await store.claim_deliveries("mail", retry_at, 10, DAY)
    assert (again.id, again.attempts, again.last_error) == (delivery.id, 0, "rate limited")
    await store.mark_retry(delivery.id, "HTTP 502", now=retry_at, retry_at=retry_at)
    [third] = await store.claim_deliveries("mail", retry_at, 10, DAY)
    assert (third.attempts, third.last_error) == (1, "HTTP 502")
    # A late uncounted report does not reopen a settled delivery either.
    await store.mark_sent(delivery.id, retry_at)
    await store.mark_retry(delivery.id, "late", now=retry_at, retry_at=retry_at, attempt=False)
    [sent] = await store.deliveries("mail")
    assert (sent.status, sent.attempts, sent.last_error) == (DeliveryStatus.SENT, 1, "HTTP 502")


async def test_mark_failed_is_final(store: Store) -> None:
    await _three_alerts(store)
    [delivery] = await store.claim_deliveries("mail", T0 + HOUR, 10, MINUTE)
    await store.mark_failed(delivery.id, "chat not found", now=T0 + HOUR)
    assert await store.pending_count("mail") == 0
    assert await store.claim_deliveries("mail", T0 + DAY, 10, MINUTE) == []
    [failed] = await store.deliveries("mail")
    assert (failed.status, failed.attempts, failed.last_error) == (
        DeliveryStatus.FAILED,
        1,
        "chat not found",
    )


async def test_a_late_report_does_not_reopen_a_settled_delivery(store: Store) -> None:
    # Two attempts overlap after a lease expired; the one that got through wins.
    await _three_alerts(store)
    [delivery] = await store.claim_deliveries("mail", T0 + HOUR, 10, MINUTE)
    await store.mark_sent(delivery.id, T0 + HOUR)
    await store.mark_retry(delivery.id, "late", now=T0 + HOUR, retry_at=T0 + HOUR)
    await store.mark_failed(delivery.id, "late", now=T0 + HOUR)
    [sent] = await store.deliveries("mail")
    assert (sent.status, sent.attempts, sent.last_error) == (DeliveryStatus.SENT, 0, "")
    assert await store.claim_deliveries("mail", T0 + DAY, 10, MINUTE) == []


async def test_marking_an_unknown_delivery_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown delivery"):
        await store.mark_sent(12345, T0)
    with pytest.raises(StoreError, match="unknown delivery"):
        await store.mark_retry(12345, "x", now=T0, retry_at=T0)
    with pytest.raises(StoreError, match="unknown delivery"):
        await store.mark_failed(12345, "x", now=T0)


async def test_deliveries_listing_newest_first_and_filtered(store: Store) -> None:
    await _three_alerts(store)
    listed = [(d.channel, d.alert.item_key) for d in await store.deliveries()]
    assert listed == [("tg", "k3"), ("mail", "k2"), ("tg", "k2"), ("tg", "k1")]
    assert [d.alert.item_key for d in await store.deliveries("tg", limit=2)] == ["k3", "k2"]
    [k1] = await store.claim_deliveries("tg", T0 + HOUR, 1, MINUTE)
    await store.mark_sent(k1.id, T0 + HOUR)
    assert [d.alert.item_key for d in await store.deliveries(status="sent")] == ["k1"]
    assert [d.alert.item_key for d in await store.deliveries("tg", "pending")] == ["k3", "k2"]
    assert await store.deliveries("mail", "sent") == []


# --- targets -----------------------------------------------------------------------------------


async def test_each_target_of_a_channel_gets_its_own_delivery(store: Store) -> None:
    recorded = await record(
        store,
        "a",
        [item("k1")],
        [alert("k1", channels=["tg", "mail", "log"])],
        targets={"tg": ["-100", "42", "-100"], "mail": [], "nobody": ["x"]},
    )
    # tg: two chats (the repeat collapses); mail (empty) and log (absent): one row each.
    assert recorded.deliveries == 4
    listed = {(d.channel, d.target) for d in await store.deliveries()}
    assert listed == {("tg", "-100"), ("tg", "42"), ("mail", ""), ("log", "")}
    claimed = await store.claim_deliveries("tg", T0, 10, MINUTE)
    assert [d.target for d in claimed] == ["-100", "42"]  # in the order given
    assert [d.alert.item_key for d in claimed] == ["k1", "k1"]
    assert [d.target for d in await store.claim_deliveries("mail", T0, 10, MINUTE)] == [""]


async def test_without_targets_a_channel_gets_one_delivery_with_no_target(store: Store) -> None:
    await _three_alerts(store)
    assert {d.target for d in await store.deliveries()} == {""}
    assert [d.target for d in await store.claim_deliveries("tg", T0 + HOUR, 10, MINUTE)] == [""] * 3


async def test_one_targets_failure_leaves_the_others_alone(store: Store) -> None:
    await record(store, "a", [item("k1")], [alert("k1")], targets={"tg": ["c1", "c2"]})
    c1, c2 = await store.claim_deliveries("tg", T0, 10, MINUTE)
    await store.mark_failed(c1.id, "chat not found", now=T0)
    await store.mark_sent(c2.id, T0)
    assert {(d.target, d.status) for d in await store.deliveries("tg")} == {
        ("c1", DeliveryStatus.FAILED),
        ("c2", DeliveryStatus.SENT),
    }


async def test_targets_that_are_not_strs_are_refused_and_nothing_is_written(store: Store) -> None:
    # A str is a sequence of str: "-100123" would become seven one-character chats.
    before = await store.feed_state("a")
    with pytest.raises(TypeError, match="'tg'"):
        await record(store, "a", [item("k1")], [alert("k1")], targets={"tg": "-100123"})
    with pytest.raises(TypeError, match="must be str"):  # an int chat id straight from YAML
        await record(store, "a", [item("k1")], [alert("k1")], targets={"tg": [-100123]})  # type: ignore[list-item]
    assert await store.unseen("a", ["k1"]) == {"k1"}
    assert await store.feed_state("a") == before
    assert await store.pending_count() == 0


async def test_the_store_keeps_its_own_copy_of_the_targets(store: Store) -> None:
    chats = ["c1"]
    await record(store, "a", [item("k1")], [alert("k1")], targets={"tg": chats})
    chats.append("c2")
    assert await store.pending_by_target("tg") == {"c1": 1}


async def _two_chats_and_a_channel_without(store: Store) -> None:
    """k1 at T0 and k2 at T0+1min, each to tg chats c1 and c2 and to mail (no target)."""
    chats = {"tg": ["c1", "c2"]}
    await record(store, "a", [item("k1")], [alert("k1", channels=["tg", "mail"])], targets=chats)
    await record(
        store,
        "a",
        [item("k2")],
        [alert("k2", channels=["tg", "mail"])],
        now=T0 + MINUTE,
        targets=chats,
    )


async def test_claim_skips_paused_targets_and_leaves_them_unclaimed(store: Store) -> None:
    await _two_chats_and_a_channel_without(store)
    now = T0 + HOUR
    # c1 is paused (a flood wait): the limit counts c2's deliveries only, oldest first.
    first = await store.claim_deliveries("tg", now, 1, DAY, skip_targets={"c1"})
    assert [(d.target, d.alert.item_key) for d in first] == [("c2", "k1")]
    rest = await store.claim_deliveries("tg", now, 10, DAY, skip_targets=["c1", "elsewhere"])
    assert [(d.target, d.alert.item_key) for d in rest] == [("c2", "k2")]
    # c1's deliveries were never claimed: they are due the moment its pause ends.
    resumed = await store.claim_deliveries("tg", now, 10, DAY)
    assert [(d.target, d.alert.item_key) for d in resumed] == [("c1", "k1"), ("c1", "k2")]
    # "" is a target like any other: pausing it pauses a channel's only destination.
    assert await store.claim_deliveries("mail", now, 10, DAY, skip_targets=[""]) == []
    assert len(await store.claim_deliveries("mail", now, 10, DAY, skip_targets=["c1"])) == 2


async def test_pending_by_target_counts_what_is_left_per_destination(store: Store) -> None:
    await _two_chats_and_a_channel_without(store)
    assert await store.pending_by_target("tg") == {"c1": 2, "c2": 2}
    assert await store.pending_by_target("mail") == {"": 2}
    assert await store.pending_by_target("nobody") == {}
    c1_k1, c2_k1, c1_k2, _ = await store.claim_deliveries("tg", T0 + HOUR, 10, MINUTE)
    await store.mark_sent(c1_k1.id, T0 + HOUR)
    await store.mark_failed(c2_k1.id, "blocked", now=T0 + HOUR)
    await store.mark_sent(c1_k2.id, T0 + HOUR)
    # The fourth is claimed but still pending, so it counts; c1 has nothing left: left out.
    assert await store.pending_by_target("tg") == {"c2": 1}
    assert await store.pending_by_target("mail") == {"": 2}


async def test_pending_by_target_is_ordered_by_target(store: Store) -> None:
    chats = {"tg": ["z", "b", "a", "é"]}
    await record(store, "a", [item("k1")], [alert("k1")], targets=chats)
    assert list(await store.pending_by_target("tg")) == ["a", "b", "z", "é"]


# --- alert_count -------------------------------------------------------------------------------


async def test_alert_count_counts_alerts_written_since(store: Store) -> None:
    await _three_alerts(store)  # k1 at T0, k2 and k3 at T0+1min
    await record(store, "a", [item("k1"), item("k4")], [alert("k1")], now=T0 + HOUR)  # dropped
    assert await store.alert_count(T0 - DAY) == 3
    assert await store.alert_count(T0 + MINUTE) == 2  # at `since` counts
    assert await store.alert_count(T0 + MINUTE + timedelta(microseconds=1)) == 0
    # One alert, whatever its channels and targets.
    await record(
        store,
        "a",
        [item("k5")],
        [alert("k5", channels=["tg", "mail"])],
        now=T0 + DAY,
        targets={"tg": ["c1", "c2"]},
    )
    assert await store.alert_count(T0 + DAY) == 1


async def test_alert_count_takes_any_timezone(store: Store) -> None:
    await _three_alerts(store)
    kyiv = timezone(timedelta(hours=3))
    assert await store.alert_count(datetime(2024, 5, 1, 15, 1, tzinfo=kyiv)) == 2  # T0+1min


# --- mutes -------------------------------------------------------------------------------------


async def test_mutes_lists_the_rules_muted_now(store: Store) -> None:
    assert await store.mutes(T0) == {}
    await store.mute("sanctions", T0 + 2 * HOUR, now=T0)
    await store.mute("elections", T0 + HOUR, now=T0)
    assert await store.mutes(T0) == {"elections": T0 + HOUR, "sanctions": T0 + 2 * HOUR}
    assert list(await store.mutes(T0)) == ["elections", "sanctions"]
    # A mute ends at `until` exactly.
    assert await store.mutes(T0 + HOUR - timedelta(microseconds=1)) == {
        "elections": T0 + HOUR,
        "sanctions": T0 + 2 * HOUR,
    }
    assert await store.mutes(T0 + HOUR) == {"sanctions": T0 + 2 * HOUR}
    assert await store.mutes(T0 + 2 * HOUR) == {}


async def test_a_second_mute_replaces_the_first(store: Store) -> None:
    await store.mute("sanctions", T0 + DAY, now=T0)
    await store.mute("sanctions", T0 + HOUR, now=T0 + MINUTE)  # shorter: it still wins
    assert await store.mutes(T0 + MINUTE) == {"sanctions": T0 + HOUR}
    await store.mute("sanctions", T0, now=T0 + 2 * MINUTE)  # already over: unmuted
    assert await store.mutes(T0 + 2 * MINUTE) == {}


async def test_mute_times_come_back_in_utc(store: Store) -> None:
    kyiv = timezone(timedelta(hours=3))
    await store.mute("sanctions", datetime(2024, 5, 1, 17, 0, tzinfo=kyiv), now=T0)
    [(rule, until)] = (await store.mutes(T0)).items()
    assert (rule, until, until.utcoffset()) == ("sanctions", T0 + 2 * HOUR, timedelta(0))
    with pytest.raises(ValueError, match="naive"):
        await store.mute("sanctions", datetime(2024, 5, 1, 14), now=T0)


async def test_unmute_says_whether_there_was_a_mute(store: Store) -> None:
    await store.mute("sanctions", T0 + HOUR, now=T0)
    await store.mute("elections", T0 + HOUR, now=T0)
    assert await store.unmute("sanctions") is True
    assert await store.unmute("sanctions") is False
    assert await store.unmute("never muted") is False
    assert await store.mutes(T0) == {"elections": T0 + HOUR}


async def test_prune_drops_the_mutes_that_have_ended(store: Store) -> None:
    await store.mute("ended", T0 + HOUR, now=T0)
    await store.mute("running", T0 + DAY, now=T0)
    pruned = await store.prune(T0 + HOUR, Retention())
    assert pruned == Pruned(items=0, texts=0, deliveries=0, mutes=1)
    # Gone, not only inactive: unmuting it finds nothing.
    assert await store.unmute("ended") is False
    assert await store.mutes(T0) == {"running": T0 + DAY}
    assert (await store.prune(T0 + HOUR, Retention())).mutes == 0


async def test_mutes_survive_a_reopen(new_store: Callable[[], Store]) -> None:
    store = new_store()  # one object: a MemoryStore keeps its data across close and open
    async with store:
        await store.mute("sanctions", T0 + HOUR, now=T0)
    async with store:
        assert await store.mutes(T0) == {"sanctions": T0 + HOUR}


# --- recent_items ------------------------------------------------------------------------------


async def test_recent_items_newest_first_without_content(store: Store) -> None:
    await record(store, "a", [item("k1", content="long body", tags=("x", "y"), author="Ann")])
    await record(store, "b", [item("k2", feed="b")], now=T0 + MINUTE)
    await record(store, "a", [item("k3"), item("k4")], now=T0 + 2 * MINUTE)
    assert await keys_of(store) == ["k4", "k3", "k2", "k1"]
    assert [i.key for i in await store.recent_items(T0 + MINUTE)] == ["k4", "k3", "k2"]
    assert await keys_of(store, "a") == ["k4", "k3", "k1"]
    k1 = (await store.recent_items(T0, "a"))[-1]
    assert k1 == dataclasses.replace(item("k1", tags=("x", "y"), author="Ann"), seen_at=T0)
    assert await store.recent_items(T0 + HOUR) == []


async def test_returned_lists_are_copies(store: Store) -> None:
    await record(store, "a", [item("k1")])
    items = await store.recent_items(T0)
    items.clear()
    assert await keys_of(store) == ["k1"]


# --- prune -------------------------------------------------------------------------------------

RETENTION = Retention(seen=10 * DAY, text=3 * DAY, deliveries=5 * DAY)


async def test_prune_forgets_items_not_seen_for_the_seen_retention(store: Store) -> None:
    await record(store, "a", [item("gone"), item("kept")], [alert("gone")])
    # Seen again two days later: its last-seen time moves (same-day sightings do not write).
    await record(store, "a", [item("kept")], now=T0 + HOUR)
    await record(store, "a", [item("kept")], now=T0 + 2 * DAY)
    pruned = await store.prune(T0 + 11 * DAY, RETENTION)
    assert pruned.items == 1
    assert await store.unseen("a", ["gone", "kept"]) == {"gone"}
    # Forgotten means new again: retention.seen must outlast the time a feed keeps listing an
    # item, or it alerts twice. It is also what bounds the store's size.
    again = await record(store, "a", [item("gone")], [alert("gone")], now=T0 + 12 * DAY)
    assert ([i.key for i in again.new_items], again.alerts) == (["gone"], 1)
    assert await store.pending_count() == 2


HALF_YEAR = Retention(seen=180 * DAY)


async def test_prune_keeps_what_a_quiet_feed_still_lists(store: Store) -> None:
    # "a" answers 304 and "b" fails for 400 days: their documents never changed, so every
    # item they listed is still listed; forgetting one would make it alert again.
    await record(store, "a", [item("k1"), item("k2")], [alert("k1")])
    await record(store, "b", [item("k1", feed="b")])
    for day in range(1, 401):
        now = T0 + day * DAY
        await store.record_not_modified("a", now=now, next_poll_at=now + DAY)
        await store.record_failure("b", "HTTP 503", now=now, next_poll_at=now + DAY)
    pruned = await store.prune(T0 + 400 * DAY, HALF_YEAR)
    assert pruned.items == 0
    assert await store.unseen("a", ["k1", "k2"]) == set()
    assert await store.unseen("b", ["k1"]) == set()
    # When "a" finally changes, only the really new item is new.
    changed = await record(
        store,
        "a",
        [item("k3"), item("k1"), item("k2")],
        [alert("k3"), alert("k1")],
        now=T0 + 401 * DAY,
    )
    assert ([i.key for i in changed.new_items], changed.alerts) == (["k3"], 1)


async def test_prune_forgets_an_item_that_left_a_feed_that_kept_changing(store: Store) -> None:
    await record(store, "a", [item("gone"), item("kept")], [alert("gone")])
    for day in range(10, 201, 10):
        await record(store, "a", [item("kept"), item(f"n{day}")], now=T0 + day * DAY)
    # gone was last listed 200 days ago and n10 190 days ago; kept is in the latest fetch, and
    # n20 left it exactly half a year ago (the cutoff itself is kept).
    pruned = await store.prune(T0 + 200 * DAY, HALF_YEAR)
    assert pruned.items == 2
    keys = ["gone", "kept", "n10", "n20", "n30", "n200"]
    assert await store.unseen("a", keys) == {"gone", "n10"}


async def test_prune_keeps_items_seen_within_a_refresh_of_the_last_fetch(store: Store) -> None:
    # Last-seen times are written at most once a day, so an item still listed may carry a
    # last-seen time up to a day older than the fetch that listed it: it must be kept.
    await record(store, "a", [item("left"), item("listed")])
    await record(store, "a", [item("listed")], now=T0 + DAY)  # not rewritten: exactly a day old
    assert (await store.prune(T0 + 400 * DAY, HALF_YEAR)).items == 0
    # Telling "left" apart takes a fetch more than a day later (which refreshes "listed").
    later = T0 + DAY + timedelta(microseconds=1)
    await record(store, "a", [item("listed")], now=later)
    assert (await store.prune(T0 + 400 * DAY, HALF_YEAR)).items == 1
    assert await store.unseen("a", ["left", "listed"]) == {"left"}
    # Still both rules: a fresh item gone from the feed is kept for `seen`.
    await record(store, "a", [item("brief")], now=T0 + 400 * DAY)
    await record(store, "a", [item("listed")], now=T0 + 402 * DAY)
    assert (await store.prune(T0 + 402 * DAY, HALF_YEAR)).items == 0
    assert (await store.prune(T0 + 580 * DAY + MINUTE, HALF_YEAR)).items == 1
    assert await store.unseen("a", ["brief", "listed"]) == {"brief"}


async def test_prune_drops_old_text_but_keeps_identity_and_alert_text(store: Store) -> None:
    await record(store, "a", [item("old")], [alert("old")])
    await record(store, "a", [item("new")], now=T0 + 2 * DAY)
    pruned = await store.prune(T0 + 4 * DAY, RETENTION)
    assert (pruned.items, pruned.texts, pruned.deliveries) == (0, 1, 0)
    assert await keys_of(store) == ["new"]
    assert await store.unseen("a", ["old", "new"]) == set()
    [pending] = await store.claim_deliveries("tg", T0 + 4 * DAY, 10, MINUTE)
    assert pending.alert.title == "title old"
    assert (await store.prune(T0 + 4 * DAY, RETENTION)).texts == 0


async def test_prune_removes_old_finished_deliveries_never_pending_ones(store: Store) -> None:
    await _three_alerts(store)
    claimed = {d.alert.item_key: d for d in await store.claim_deliveries("tg", T0, 10, MINUTE)}
    await store.mark_sent(claimed["k1"].id, T0)
    await store.mark_failed(claimed["k2"].id, "blocked", now=T0)
    later = await record(store, "a", [item("k5")], [alert("k5")], now=T0 + 3 * DAY)
    assert later.deliveries == 1
    due = await store.claim_deliveries("tg", T0 + 3 * DAY, 10, MINUTE)
    assert [d.alert.item_key for d in due] == ["k3", "k5"]  # k3's lease ran out
    await store.mark_sent(due[1].id, T0 + 3 * DAY)
    pruned = await store.prune(T0 + 100 * DAY, Retention(seen=1000 * DAY, deliveries=5 * DAY))
    assert pruned.deliveries == 3
    left = {(d.channel, d.alert.item_key, d.status) for d in await store.deliveries()}
    assert left == {("tg", "k3", "pending"), ("mail", "k2", "pending")}
    # The alert k2 lost its tg row but still backs the mail row.
    [mail] = await store.claim_deliveries("mail", T0 + 100 * DAY, 10, MINUTE)
    assert mail.alert.title == "title k2"
    assert await store.prune(T0 + 100 * DAY, Retention(seen=1000 * DAY)) == Pruned(0, 0, 0)


async def test_prune_with_everlasting_retention_removes_nothing(store: Store) -> None:
    await _three_alerts(store)
    forever = timedelta.max
    pruned = await store.prune(T0 + DAY, Retention(seen=forever, text=forever, deliveries=forever))
    assert (pruned.items, pruned.texts, pruned.deliveries) == (0, 0, 0)


# --- open_store --------------------------------------------------------------------------------


def test_open_store_picks_the_backend_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "state.db"


@pytest.mark.parametrize(
    "state", ["", "memory", "sqlite://relative.db", "sqlite:///", "mysql://u:pw@x/y", "x.db"]
)
def test_open_store_refuses_other_urls(state: str) -> None:
    with pytest.raises(StoreError) as refused:
        open_store(state)
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_picks_postgresql_for_several_workers(scheme: str) -> None:
    postgres = importlib.import_module("monitor.store.postgres")
    store = open_store(f"{scheme}://ann:s3cret@db.example:5433/monitor?schema=news&sslmode=require")
    assert isinstance(store, postgres.PostgresStore)
    assert store.schema == "news"
    assert "s3cret" not in repr(store)
    assert store.where.label == "postgresql://ann@db.example:5433/monitor"


# --- outbox_stats ------------------------------------------------------------------------------


async def test_outbox_stats_counts_each_channels_deliveries_by_status(store: Store) -> None:
    from monitor.store.protocol import OutboxStat

    assert await store.outbox_stats(T0) == []
    await _two_chats_and_a_channel_without(store)  # k1 at T0, k2 at T0+1min; tg c1, c2; mail
    c1_k1, c2_k1, c1_k2, _ = await store.claim_deliveries("tg", T0 + HOUR, 10, MINUTE)
    await store.mark_sent(c1_k1.id, T0 + HOUR)
    await store.mark_failed(c2_k1.id, "blocked", now=T0 + HOUR)
    # Claimed, or waiting for a retry: still pending.
    await store.mark_retry(c1_k2.id, "timeout", now=T0 + HOUR, retry_at=T0 + DAY)
    assert await store.outbox_stats(T0 + HOUR) == [
        OutboxStat("mail", pending=2, sent=0, failed=0, oldest_pending=T0),
        OutboxStat("tg", pending=2, sent=1, failed=1, oldest_pending=T0 + MINUTE),
    ]


async def test_outbox_stats_has_no_oldest_pending_once_all_is_done(store: Store) -> None:
    await _three_alerts(store)  # tg: k1, k2, k3; mail: k2
    for channel in ("tg", "mail"):
        for delivery in await store.claim_deliveries(channel, T0 + HOUR, 10, MINUTE):
            await store.mark_sent(delivery.id, T0 + HOUR)
    stats = {s.channel: s for s in await store.outbox_stats(T0 + HOUR)}
    assert {c: (s.pending, s.sent, s.failed) for c, s in stats.items()} == {
        "mail": (0, 1, 0),
        "tg": (0, 3, 0),
    }
    assert stats["tg"].oldest_pending is None
    # Pruned deliveries no longer count; a channel with none left is left out.
    await store.prune(T0 + 100 * DAY, Retention(seen=1000 * DAY))
    assert await store.outbox_stats(T0 + 100 * DAY) == []


async def test_outbox_stats_times_come_back_in_utc(store: Store) -> None:
    kyiv = timezone(timedelta(hours=3))
    await record(store, "a", [item("k1")], [alert("k1")], now=T0.astimezone(kyiv))
    [stat] = await store.outbox_stats(T0)
    assert stat.oldest_pending == T0
    assert stat.oldest_pending is not None
    assert stat.oldest_pending.utcoffset() == timedelta(0)
