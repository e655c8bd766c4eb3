"""The Store contract for claim owners (a poll whose claim was taken writes nothing), claim
extension (`extend_claims`), once-per-change notices and NUL in stored text, run against every
backend like tests/store/test_contract.py."""

from __future__ import annotations

from monitor.models import CacheInfo, DeliveryStatus
from monitor.store import Recorded, Store
from tests.store.factories import HOUR, MINUTE, T0, alert, item, record, spec, state


async def claim_a_then_move_it(store: Store) -> None:
    """Claim "a", then change its URL (a reload while its poll is in flight)."""
    claimed = await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)
    assert "a" in [s.name for s in claimed]
    await store.sync_feeds([spec("a", url="https://elsewhere.example/a.xml"), spec("b")], T0)


# --- a claim taken by a URL change -------------------------------------------------------------


async def test_the_poll_of_a_moved_feed_in_flight_writes_nothing(store: Store) -> None:
    await claim_a_then_move_it(store)
    stale = await record(
        store, "a", [item("k1")], [alert("k1")], now=T0 + 2 * MINUTE, cache=CacheInfo("old", None)
    )
    assert stale == Recorded((), 0, 0)
    after = await state(store)
    assert (after.seeded, after.cache, after.last_polled_at) == (False, CacheInfo(), None)
    assert await store.unseen("a", ["k1"]) == {"k1"}
    assert await store.pending_count() == 0
    # Claimable again at once, and the new URL's first fetch seeds it: no backlog alert.
    again = await store.claim_due_feeds(T0 + 2 * MINUTE, 10, HOUR)
    assert [s.name for s in again] == ["a"]
    first = await record(store, "a", [item("k1")], [alert("k1")], now=T0 + 3 * MINUTE)
    assert [i.key for i in first.new_items] == ["k1"]
    assert (await state(store)).seeded


async def test_a_304_or_failure_of_a_moved_feed_in_flight_writes_nothing(store: Store) -> None:
    await claim_a_then_move_it(store)
    await store.record_not_modified(
        "a", now=T0 + 2 * MINUTE, next_poll_at=T0 + HOUR, cache=CacheInfo("old", "x")
    )
    await store.record_failure("a", "gone", now=T0 + 2 * MINUTE, next_poll_at=T0 + HOUR, dead=True)
    after = await state(store)
    assert after.cache == CacheInfo()
    assert after.last_polled_at is None
    assert (after.dead_since, after.consecutive_failures, after.last_error) == (None, 0, "")
    assert [s.name for s in await store.claim_due_feeds(T0 + 2 * MINUTE, 10, HOUR)] == ["a"]


async def test_a_feed_nobody_claimed_is_recorded_after_a_url_change(store: Store) -> None:
    await store.sync_feeds([spec("a", url="https://elsewhere.example/a.xml"), spec("b")], T0)
    recorded = await record(store, "a", [item("k1")])
    assert [i.key for i in recorded.new_items] == ["k1"]
    assert (await state(store)).seeded


async def test_a_released_claim_lets_the_feed_be_claimed_again(store: Store) -> None:
    await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)
    await store.release_feeds(["a", "unknown"])
    assert [s.name for s in await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)] == ["a"]
    recorded = await record(store, "a", [item("k1")], now=T0 + MINUTE)  # its own claim
    assert [i.key for i in recorded.new_items] == ["k1"]


# --- extend_claims -----------------------------------------------------------------------------


async def queue(store: Store, *keys: str) -> list[int]:
    await record(store, "a", [item(k) for k in keys], [alert(k) for k in keys])
    return [d.id for d in await store.claim_deliveries("tg", T0, 10, MINUTE)]


async def test_extend_claims_keeps_this_stores_pending_claims(store: Store) -> None:
    first, second, third = await queue(store, "k1", "k2", "k3")
    await store.mark_sent(second, T0)
    await store.release_deliveries([third])
    kept = await store.extend_claims([third, first, 999_999, second, first], T0, HOUR)
    assert kept == [first]
    # The extended lease holds past the first one; the released delivery is due again.
    due = await store.claim_deliveries("tg", T0 + 30 * MINUTE, 10, MINUTE)
    assert [d.id for d in due] == [third]


async def test_extend_claims_after_the_lease_ran_out_while_nobody_claimed(store: Store) -> None:
    (only,) = await queue(store, "k1")
    assert await store.extend_claims([only], T0 + 5 * MINUTE, HOUR) == [only]
    assert await store.claim_deliveries("tg", T0 + 30 * MINUTE, 10, MINUTE) == []
    assert await store.extend_claims([], T0, HOUR) == []


async def test_extend_claims_skips_unclaimed_and_finished_deliveries(store: Store) -> None:
    first, second = await queue(store, "k1", "k2")
    await store.mark_failed(first, "no", now=T0)
    await store.mark_retry(second, "later", now=T0, retry_at=T0 + MINUTE)
    assert await store.extend_claims([first, second], T0, HOUR) == []
    assert await store.release_claims("tg") == 0


# --- notices once per change -------------------------------------------------------------------


async def test_the_same_notice_twice_is_queued_once(store: Store) -> None:
    notice = alert("notice:failing:a:1", channels=("ops",))
    assert await store.record_notice("a", "failing", notice, now=T0) == 1
    again = alert("notice:failing:a:2", channels=("ops",))
    assert await store.record_notice("a", "failing", again, now=T0 + MINUTE) == 0
    assert await store.pending_count("ops") == 1
    assert await store.record_notice("a", "", None, now=T0 + HOUR) == 0
    assert (await state(store)).notice == ""


# --- NUL in text -------------------------------------------------------------------------------


async def test_nul_is_removed_from_every_text_stored(store: Store) -> None:
    nul = item("k\x001", title="a\x00title", summary="s\x00", author="x\x00y", tags=("t\x00",))
    recorded = await record(
        store, "a", [nul], [alert("k\x001", title="a\x00title")], warning="w\x00arn"
    )
    assert [i.key for i in recorded.new_items] == ["k1"]
    kept = recorded.new_items[0]
    assert (kept.title, kept.summary, kept.author, kept.tags) == ("atitle", "s", "xy", ("t",))
    assert (await state(store)).last_warning == "warn"
    assert await store.unseen("a", ["k\x001", "k1", "k2"]) == {"k2"}
    (delivery,) = await store.claim_deliveries("tg", T0, 10, MINUTE)
    assert (delivery.alert.item_key, delivery.alert.title) == ("k1", "atitle")
    await store.mark_retry(delivery.id, "bad\x00reply", now=T0, retry_at=T0)
    await store.mark_failed(delivery.id, "worse\x00", now=T0)
    (failed,) = await store.deliveries(status=DeliveryStatus.FAILED.value)
    assert failed.last_error == "worse"
    await store.record_failure("b", "boom\x00", now=T0, next_poll_at=T0 + HOUR, dead=True)
    b = await state(store, "b")
    assert (b.last_error, b.dead_reason) == ("boom", "boom")
