"""The Store contract for digest channels (last digest time, failed digests due again), run
against every backend like tests/store/test_contract.py, whose backends it reuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone

import pytest

from monitor.store import Store
from tests.store.factories import DAY, HOUR, MINUTE, T0, alert, item, record, spec


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """An open store with feed "a" synced at T0."""
    opened = new_store()
    await opened.open()
    try:
        await opened.sync_feeds([spec("a")], T0)
        yield opened
    finally:
        await opened.close()


# --- last digest -------------------------------------------------------------------------------


async def test_a_channel_without_a_digest_has_no_last_digest(store: Store) -> None:
    assert await store.last_digest("mail") is None


async def test_set_last_digest_replaces_per_channel(store: Store) -> None:
    await store.set_last_digest("mail", T0)
    await store.set_last_digest("news", T0 + HOUR)
    await store.set_last_digest("mail", T0 + DAY)
    assert await store.last_digest("mail") == T0 + DAY
    assert await store.last_digest("news") == T0 + HOUR
    # The caller decides: an earlier time replaces a later one too.
    await store.set_last_digest("news", T0)
    assert await store.last_digest("news") == T0


async def test_last_digest_comes_back_in_utc(store: Store) -> None:
    berlin_summer = timezone(timedelta(hours=2))
    await store.set_last_digest("mail", datetime(2024, 5, 1, 14, 0, tzinfo=berlin_summer))
    at = await store.last_digest("mail")
    assert (at, at.utcoffset() if at else None) == (T0, timedelta(0))
    with pytest.raises(ValueError, match="naive"):
        await store.set_last_digest("mail", datetime(2024, 5, 1, 12))


async def test_last_digest_survives_a_reopen(new_store: Callable[[], Store]) -> None:
    store = new_store()  # one object: a MemoryStore keeps its data across close and open
    async with store:
        await store.set_last_digest("mail", T0)
    async with store:
        assert await store.last_digest("mail") == T0


# --- retry_due_count ---------------------------------------------------------------------------


async def _two_mail_alerts(store: Store) -> list[int]:
    """k1 and k2 for channel "mail", written at T0; their delivery ids, oldest first."""
    await record(
        store, "a", [item("k1"), item("k2")], [alert(k, channels=["mail"]) for k in ("k1", "k2")]
    )
    return [d.id for d in reversed(await store.deliveries("mail"))]


async def test_retry_due_count_counts_failed_deliveries_whose_retry_time_came(
    store: Store,
) -> None:
    first, second = await _two_mail_alerts(store)
    # Never tried: not due for a retry, however late it is.
    assert await store.retry_due_count("mail", T0 + DAY) == 0
    await store.claim_deliveries("mail", T0, 10, MINUTE)
    retry_at = T0 + 10 * MINUTE
    await store.mark_retry(first, "SMTP 451", now=T0, retry_at=retry_at)
    await store.release_deliveries([second])
    assert await store.retry_due_count("mail", retry_at - timedelta(microseconds=1)) == 0
    assert await store.retry_due_count("mail", retry_at) == 1
    assert await store.retry_due_count("other", retry_at) == 0
    # Claimed again: not due while the claim holds; settled: never again.
    await store.claim_deliveries("mail", retry_at, 10, MINUTE)
    assert await store.retry_due_count("mail", retry_at) == 0
    assert await store.retry_due_count("mail", retry_at + MINUTE) == 1
    await store.mark_sent(first, retry_at)
    assert await store.retry_due_count("mail", retry_at + DAY) == 0


async def test_retry_due_count_leaves_out_uncounted_and_failed_deliveries(store: Store) -> None:
    first, second = await _two_mail_alerts(store)
    await store.claim_deliveries("mail", T0, 10, MINUTE)
    await store.mark_retry(first, "slow down", now=T0, retry_at=T0 + MINUTE, attempt=False)
    await store.mark_failed(second, "mailbox unavailable", now=T0)
    assert await store.retry_due_count("mail", T0 + DAY) == 0


# --- mark_sent_many ----------------------------------------------------------------------------


async def test_mark_sent_many_marks_every_delivery_sent(store: Store) -> None:
    first, second = await _two_mail_alerts(store)
    await store.claim_deliveries("mail", T0, 10, MINUTE)
    await store.mark_sent_many([first, second], T0 + MINUTE)
    assert {d.status.value for d in await store.deliveries("mail")} == {"sent"}
    # Nothing is claimed any more, and marking again changes nothing.
    assert await store.claimed_count("mail", T0) == 0
    await store.mark_sent_many([first, second], T0 + HOUR)
    await store.mark_sent_many([], T0 + HOUR)
    assert await store.pending_count("mail") == 0


async def test_mark_sent_many_with_an_unknown_id_marks_nothing(store: Store) -> None:
    from monitor.errors import StoreError

    first, second = await _two_mail_alerts(store)
    with pytest.raises(StoreError):
        await store.mark_sent_many([first, 999_999, second], T0)
    assert await store.pending_count("mail") == 2


# --- due_deliveries ----------------------------------------------------------------------------


async def test_due_deliveries_lists_what_a_claim_would_take_without_claiming(store: Store) -> None:
    await record(
        store,
        "a",
        [item("k1"), item("k2"), item("k3")],
        [alert(k, channels=["mail"]) for k in ("k1", "k2", "k3")],
        targets={"mail": ["ann", "bob"]},
    )
    ann1, bob1, ann2, bob2, ann3, bob3 = [d.id for d in reversed(await store.deliveries("mail"))]
    await store.claim_deliveries("mail", T0, 1, MINUTE)  # ann1 is claimed
    [tried] = await store.claim_deliveries("mail", T0, 1, MINUTE)
    assert tried.id == bob1
    await store.mark_retry(bob1, "451", now=T0, retry_at=T0 + HOUR)  # bob1 waits an hour
    listed = await store.due_deliveries("mail", T0, 10)
    assert [d.id for d in listed] == [ann2, bob2, ann3, bob3]
    assert [d.id for d in await store.due_deliveries("mail", T0, 10, ["bob"])] == [ann2, ann3]
    assert [d.id for d in await store.due_deliveries("mail", T0, 1)] == [ann2]
    assert await store.due_deliveries("other", T0, 10) == []
    # Listing claimed nothing: a claim takes the same rows.
    claimed = await store.claim_deliveries("mail", T0, 10, MINUTE)
    assert [d.id for d in claimed] == [ann2, bob2, ann3, bob3]
    # Once their time came, the claimed and the waiting ones are due again.
    assert [d.id for d in await store.due_deliveries("mail", T0 + HOUR, 2)] == [ann1, bob1]


# --- release_claims and claimed_count ----------------------------------------------------------


async def test_release_claims_frees_every_claim_of_one_channel(store: Store) -> None:
    await record(
        store,
        "a",
        [item("k1"), item("k2")],
        [alert("k1", channels=["mail", "news"]), alert("k2", channels=["mail"])],
    )
    assert await store.claimed_count("mail", T0) == 0
    assert len(await store.claim_deliveries("mail", T0, 10, HOUR)) == 2
    assert len(await store.claim_deliveries("news", T0, 10, HOUR)) == 1
    assert await store.claimed_count("mail", T0) == 2
    assert await store.claimed_count("mail", T0 + HOUR) == 0  # the lease ran out
    assert await store.release_claims("mail") == 2
    assert await store.release_claims("mail") == 0
    assert await store.claimed_count("mail", T0) == 0
    assert await store.claimed_count("news", T0) == 1  # another channel's claim stays
    # Released untried: due again at once, no attempt counted.
    again = await store.claim_deliveries("mail", T0, 10, HOUR)
    assert [d.attempts for d in again] == [0, 0]
    assert await store.claim_deliveries("news", T0, 10, HOUR) == []


# --- digest_lock -------------------------------------------------------------------------------


async def test_the_digest_lock_is_held_for_a_block_and_released_after(store: Store) -> None:
    async with store.digest_lock("mail"):
        await store.set_last_digest("mail", T0)
    async with store.digest_lock("mail"), store.digest_lock("news"):  # another channel's
        assert await store.last_digest("mail") == T0
    with pytest.raises(RuntimeError, match="boom"):  # released on an error too
        async with store.digest_lock("mail"):
            raise RuntimeError("boom")
    async with store.digest_lock("mail"):
        pass


async def test_the_digest_lock_needs_an_open_store(new_store: Callable[[], Store]) -> None:
    from monitor.errors import StoreError

    with pytest.raises(StoreError, match="not open"):
        async with new_store().digest_lock("mail"):
            pass


# --- lead (one worker does a role) -------------------------------------------------------------


async def test_a_lone_process_leads_at_once_and_keeps_it(store: Store) -> None:
    async with store.lead("bot commands") as lost:
        assert not lost.is_set()
        async with store.lead("another role") as other:
            assert not other.is_set()
    async with store.lead("bot commands") as again:  # released when the block ended
        assert not again.is_set()


async def test_leading_needs_an_open_store(new_store: Callable[[], Store]) -> None:
    from monitor.errors import StoreError

    with pytest.raises(StoreError, match="not open"):
        async with new_store().lead("bot commands"):
            pass
