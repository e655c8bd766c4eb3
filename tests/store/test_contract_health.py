"""The Store contract for feed health (runs of failures, dead feeds, cadence, admin notices)
and for guid churn (`seen_alike`), run against every backend like tests/store/test_contract.py."""

from __future__ import annotations

from monitor.store import Store
from tests.store.factories import DAY, HOUR, MINUTE, T0, alert, item, record, spec, state

# --- runs of failures --------------------------------------------------------------------------


async def test_a_run_of_failures_starts_at_the_first_and_ends_at_a_success(store: Store) -> None:
    await store.record_failure("a", "HTTP 500", now=T0, next_poll_at=T0 + MINUTE)
    await store.record_failure("a", "HTTP 502", now=T0 + MINUTE, next_poll_at=T0 + HOUR)
    assert (await state(store)).failing_since == T0
    await store.record_not_modified("a", now=T0 + HOUR, next_poll_at=T0 + 2 * HOUR)
    assert (await state(store)).failing_since is None
    await store.record_failure("a", "HTTP 500", now=T0 + 3 * HOUR, next_poll_at=T0 + 4 * HOUR)
    assert (await state(store)).failing_since == T0 + 3 * HOUR
    await record(store, "a", [], now=T0 + 4 * HOUR)
    assert (await state(store)).failing_since is None


# --- dead feeds --------------------------------------------------------------------------------


async def test_a_dead_feed_is_never_claimed(store: Store) -> None:
    await store.record_failure("a", "HTTP 410: gone", now=T0, next_poll_at=T0, dead=True)
    dead = await state(store)
    assert (dead.dead_since, dead.dead_reason) == (T0, "HTTP 410: gone")
    claimed = await store.claim_due_feeds(T0 + DAY, 10, HOUR)
    assert [s.name for s in claimed] == ["b"]
    assert [s.name for s in await store.feed_states()] == ["a", "b"]


async def test_a_later_failure_keeps_the_dead_mark(store: Store) -> None:
    await store.record_failure("a", "HTTP 410", now=T0, next_poll_at=T0, dead=True)
    await store.record_failure("a", "other", now=T0 + HOUR, next_poll_at=T0 + 2 * HOUR)
    found = await state(store)
    assert (found.dead_since, found.dead_reason) == (T0, "HTTP 410")


async def test_revive_makes_a_dead_feed_due_now(store: Store) -> None:
    await store.record_failure("a", "x", now=T0, next_poll_at=T0 + DAY)
    await store.record_failure("a", "HTTP 410", now=T0 + MINUTE, next_poll_at=T0 + DAY, dead=True)
    assert await store.revive_feeds(["nope", "a", "a"], T0 + HOUR) == ["a"]
    revived = await state(store)
    assert revived.dead_since is None
    assert revived.dead_reason == ""
    assert revived.failing_since is None
    assert revived.consecutive_failures == 0
    assert revived.next_poll_at == T0 + HOUR
    claimed = await store.claim_due_feeds(T0 + HOUR, 10, HOUR)
    assert "a" in [s.name for s in claimed]


async def test_a_new_url_revives_a_dead_feed(store: Store) -> None:
    await store.record_failure("a", "HTTP 410", now=T0, next_poll_at=T0, dead=True)
    await store.sync_feeds([spec("a", url="https://example.org/moved.xml"), spec("b")], T0)
    found = await state(store)
    assert found.dead_since is None
    assert found.consecutive_failures == 0
    await store.sync_feeds([spec("a", url="https://example.org/moved.xml"), spec("b")], T0)
    assert (await state(store)).dead_since is None


async def test_the_same_url_keeps_a_feed_dead(store: Store) -> None:
    await store.record_failure("a", "HTTP 410", now=T0, next_poll_at=T0, dead=True)
    await store.sync_feeds([spec("a"), spec("b")], T0 + HOUR)
    assert (await state(store)).dead_since == T0


# --- cadence -----------------------------------------------------------------------------------


async def test_cadence_is_a_moving_average_of_the_gaps_between_new_items(store: Store) -> None:
    await record(store, "a", [item("k1")], now=T0)
    first = await state(store)
    assert (first.last_new_at, first.cadence) == (T0, None)
    await record(store, "a", [item("k1")], now=T0 + HOUR)  # nothing new
    assert (await state(store)).last_new_at == T0
    await record(store, "a", [item("k2")], now=T0 + 2 * HOUR)
    second = await state(store)
    assert (second.last_new_at, second.cadence) == (T0 + 2 * HOUR, 2 * HOUR)
    await record(store, "a", [item("k3")], now=T0 + 3 * HOUR)
    third = await state(store)
    assert third.cadence is not None
    assert 2 * HOUR > third.cadence > HOUR


async def test_the_documents_ttl_is_kept_until_the_next_document(store: Store) -> None:
    await record(store, "a", [item("k1")], now=T0, ttl=90)
    assert (await state(store)).ttl == 90
    await store.record_not_modified("a", now=T0 + HOUR, next_poll_at=T0 + 2 * HOUR, cache=None)
    assert (await state(store)).ttl == 90  # a 304 has no document: the last ttl holds
    await record(store, "a", [item("k1")], now=T0 + 2 * HOUR)
    assert (await state(store)).ttl is None


# --- notices -----------------------------------------------------------------------------------


async def test_record_notice_keeps_the_kind_and_queues_the_alert(store: Store) -> None:
    notice = alert("notice:failing:a:1", channels=("ops",))
    written = await store.record_notice("a", "failing", notice, now=T0, targets={"ops": ["1", "2"]})
    assert written == 2
    assert (await state(store)).notice == "failing"
    pending = await store.claim_deliveries("ops", T0, 10, HOUR)
    assert sorted(d.target for d in pending) == ["1", "2"]
    assert pending[0].alert.title == notice.title


async def test_record_notice_without_an_alert_only_sets_the_kind(store: Store) -> None:
    await store.record_notice("a", "failing", None, now=T0)
    assert await store.record_notice("a", "", None, now=T0) == 0
    assert (await state(store)).notice == ""
    assert await store.pending_count() == 0


# --- guid churn --------------------------------------------------------------------------------


async def test_seen_alike_finds_the_same_story_under_a_new_id(store: Store) -> None:
    old = item("id:1", title="Talks resume", link="http://example.com/story?utm_source=x")
    await record(store, "a", [old], now=T0)
    moved = item("id:https-1", title="Talks  RESUME", link="https://example.com/story")
    other = item("id:2", title="Something else", link="https://example.com/story")
    bare = item("id:3", title="", link="https://example.com/story")
    assert await store.seen_alike("a", [moved, other, bare, old]) == {"id:https-1"}
    assert await store.seen_alike("b", [moved]) == set()


# --- workers -----------------------------------------------------------------------------------


async def test_workers_see_each_other_and_their_configs(store: Store) -> None:
    assert await store.check_in("h:1", "abc", started_at=T0, now=T0) == []
    others = await store.check_in("h:2", "def", started_at=T0, now=T0 + MINUTE)
    assert [(w.name, w.config, w.started_at, w.seen_at) for w in others] == [("h:1", "abc", T0, T0)]
    again = await store.check_in("h:1", "abc", started_at=T0, now=T0 + 2 * MINUTE)
    assert [(w.name, w.config) for w in again] == [("h:2", "def")]


async def test_a_worker_not_seen_for_a_while_is_forgotten(store: Store) -> None:
    await store.check_in("h:1", "abc", started_at=T0, now=T0)
    assert await store.check_in("h:2", "abc", started_at=T0, now=T0 + HOUR) == []


async def test_a_worker_checking_out_is_forgotten_at_once(store: Store) -> None:
    await store.check_in("h:1", "abc", started_at=T0, now=T0)
    await store.check_out("h:1")
    await store.check_out("never-seen")
    assert await store.check_in("h:2", "abc", started_at=T0, now=T0 + MINUTE) == []
