"""What only the PostgreSQL store does: several workers (stores) on one database, migrations
under a lock, errors an operator can act on. Runs when MONITOR_TEST_POSTGRES holds a DSN."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from monitor.errors import StoreError
from tests.store.factories import HOUR, MINUTE, T0, alert, item, record, spec

DSN = os.environ.get("MONITOR_TEST_POSTGRES", "")
# Skipped without it by tests/store/conftest.py, with the contract suite's postgres params.

if DSN:  # psycopg is installed everywhere, but only needed here when the tests run
    import psycopg
    from psycopg import sql

    from monitor.store.postgres import PostgresStore
    from monitor.store.postgres_schema import Location, Migration, load_migrations, migrate


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped after the test."""
    name = f"test_pg_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def worker(schema: str) -> Callable[..., PostgresStore]:
    """A factory of stores on one schema: each is a worker of its own (its own pool)."""
    return lambda **kw: PostgresStore(DSN, schema=schema, **kw)


@pytest.fixture
async def pair(worker: Callable[..., PostgresStore]) -> AsyncIterator[list[PostgresStore]]:
    """Two open workers, opened at once (their migrations race)."""
    stores = [worker(), worker()]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


def admin(query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(query, params or None)
        return cursor.fetchall() if cursor.description is not None else []


# --- several workers ---------------------------------------------------------------------------


async def test_workers_starting_together_migrate_once(pair: list[PostgresStore]) -> None:
    versions = admin(f"SELECT version FROM {pair[0].schema}.monitor_schema")
    assert versions == [(m.version,) for m in load_migrations()]


async def test_workers_claiming_at_once_each_get_other_feeds(pair: list[PostgresStore]) -> None:
    first, second = pair
    names = [f"f{i:03}" for i in range(300)]
    await asyncio.gather(
        first.sync_feeds([spec(n) for n in names], T0),
        second.sync_feeds([spec(n) for n in names], T0),
    )

    async def drain(store: PostgresStore) -> list[str]:
        got: list[str] = []
        while batch := await store.claim_due_feeds(T0 + HOUR, 7, HOUR):
            got += [s.name for s in batch]
        return got

    claimed = await asyncio.gather(*(drain(s) for s in (first, second, first, second)))
    together = [name for batch in claimed for name in batch]
    assert sorted(together) == names  # every feed once, none twice
    assert all(claimed)  # and the work was shared


async def test_a_dead_workers_feeds_are_claimed_after_its_lease(
    pair: list[PostgresStore],
) -> None:
    first, second = pair
    await first.sync_feeds([spec("a"), spec("b")], T0)
    assert len(await first.claim_due_feeds(T0 + MINUTE, 10, 5 * MINUTE)) == 2
    await first.close()  # it never finishes its polls
    assert await second.claim_due_feeds(T0 + 5 * MINUTE, 10, HOUR) == []
    taken = await second.claim_due_feeds(T0 + 6 * MINUTE, 10, HOUR)
    assert sorted(s.name for s in taken) == ["a", "b"]


async def test_workers_dispatching_at_once_each_send_other_deliveries(
    pair: list[PostgresStore],
) -> None:
    first, second = pair
    await first.sync_feeds([spec("a")], T0)
    keys = [f"k{i}" for i in range(200)]
    await record(first, "a", [item(k) for k in keys], [alert(k) for k in keys])

    async def send_all(store: PostgresStore) -> list[int]:
        sent: list[int] = []
        while batch := await store.claim_deliveries("tg", T0, 9, MINUTE):
            for delivery in batch:
                await store.mark_sent(delivery.id, T0)
                sent.append(delivery.id)
        return sent

    done = await asyncio.gather(*(send_all(s) for s in (first, second, first, second)))
    ids = [i for batch in done for i in batch]
    assert len(ids) == len(set(ids)) == 200
    assert await second.pending_count() == 0


async def test_mutes_and_digest_times_are_shared(pair: list[PostgresStore]) -> None:
    first, second = pair
    await first.mute("sanctions", T0 + HOUR, now=T0)
    await first.set_last_digest("mail", T0)
    assert await second.mutes(T0) == {"sanctions": T0 + HOUR}
    assert await second.last_digest("mail") == T0


async def test_one_worker_at_a_time_holds_a_channels_digest_lock(
    pair: list[PostgresStore],
) -> None:
    first, second = pair
    entered = asyncio.Event()

    async def second_digest() -> None:
        async with second.digest_lock("mail"):
            entered.set()

    second.digest_retry = 0.05
    async with first.digest_lock("mail"):
        waiting = asyncio.create_task(second_digest())
        for _ in range(10):  # several tries of the second worker, all refused
            await asyncio.sleep(0.05)
        assert not entered.is_set()
        async with second.digest_lock("news"):  # another channel is not held up
            pass
    await asyncio.wait_for(waiting, timeout=30)
    assert entered.is_set()


async def test_one_worker_leads_a_role_and_another_takes_over_when_it_leaves(
    pair: list[PostgresStore],
) -> None:
    first, second = pair
    second.lead_retry = 0.05
    led = asyncio.Event()

    async def second_leads() -> None:
        async with second.lead("bot commands"):
            led.set()

    async with first.lead("bot commands") as lost:
        waiting = asyncio.create_task(second_leads())
        for _ in range(10):  # several tries of the second worker, all refused
            await asyncio.sleep(0.05)
        assert not led.is_set()
        assert not lost.is_set()
    await asyncio.wait_for(waiting, timeout=30)
    assert led.is_set()


async def test_a_lead_whose_connection_dies_is_lost_and_free_for_another(
    worker: Callable[..., PostgresStore], schema: str
) -> None:
    async with worker(application_name=schema) as first, worker() as second:
        first.lead_check = 0.05
        second.lead_retry = 0.05
        async with first.lead("bot commands") as lost:
            admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                schema,
            )
            await asyncio.wait_for(lost.wait(), timeout=30)
            # PostgreSQL dropped the lock with the connection: another worker gets it.
            async with asyncio.timeout(30), second.lead("bot commands") as other:
                assert not other.is_set()


# --- opening, migrations, access modes ---------------------------------------------------------


async def test_a_failed_migration_leaves_the_schema_as_it_was(schema: str) -> None:
    where = Location.of(DSN)
    good = load_migrations()
    bad = Migration(len(good) + 1, "9999_broken.sql", "CREATE TABLE half (x int); SELECT nope();")
    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.commit()
        await migrate(conn, good, where, schema)
        with pytest.raises(StoreError, match=r"9999_broken.sql failed and was rolled back"):
            await migrate(conn, [*good, bad], where, schema)
    assert admin(f"SELECT max(version) FROM {schema}.monitor_schema") == [(len(good),)]
    assert admin("SELECT to_regclass(%s)", f"{schema}.half") == [(None,)]


async def test_a_schema_from_a_newer_version_is_refused(
    worker: Callable[..., PostgresStore], schema: str
) -> None:
    async with worker():
        pass
    admin(f"INSERT INTO {schema}.monitor_schema (version) VALUES (99)")
    with pytest.raises(StoreError, match="newer version"):
        await worker().open()


async def test_read_only_reads_beside_a_worker_and_refuses_writes(
    worker: Callable[..., PostgresStore],
) -> None:
    async with worker() as running:
        await running.sync_feeds([spec("a")], T0)
        async with worker(read_only=True) as reader:
            assert [s.name for s in await reader.feed_states()] == ["a"]
            with pytest.raises(StoreError, match="read-only"):
                await reader.revive_feeds(["a"], T0)


async def test_shared_and_read_only_need_the_tables(worker: Callable[..., PostgresStore]) -> None:
    for mode in ("read_only", "shared"):
        with pytest.raises(StoreError, match="no schema"):
            await worker(**{mode: True}).open()
    async with worker() as running:
        await running.sync_feeds([spec("a")], T0)
        # `monitor feeds --retry` beside running workers: a short write.
        async with worker(shared=True) as operator:
            assert await operator.revive_feeds(["a"], T0 + HOUR) == ["a"]


async def test_unreachable_postgresql_is_a_clear_error_without_the_password() -> None:
    store = PostgresStore("postgresql://ann:s3cret-pw@127.0.0.1:1/monitor")
    with pytest.raises(StoreError) as refused:
        await store.open()
    message = str(refused.value)
    assert message.startswith("cannot connect to the PostgreSQL state postgresql://ann@127.0.0.1:1")
    assert "s3cret" not in message
    assert refused.value.__cause__ is None


async def test_an_unknown_database_is_named(schema: str) -> None:
    store = PostgresStore(DSN.rsplit("/", 1)[0] + "/no_such_db_here", schema=schema)
    with pytest.raises(StoreError, match="no_such_db_here"):
        await store.open()


async def test_a_connection_lost_while_idle_is_replaced_before_use(
    worker: Callable[..., PostgresStore], schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.store import postgres_locks

    monkeypatch.setattr(postgres_locks, "IDLE_CHECK", 0.0)  # as if idle for long
    async with worker(application_name=schema) as store:
        await store.sync_feeds([spec("a")], T0)
        admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            schema,
        )
        # The pool checks a connection before lending it: the call never sees the cut one.
        assert [s.name for s in await store.feed_states()] == ["a"]


async def test_a_connection_lost_mid_run_is_a_store_error_then_recovers(
    worker: Callable[..., PostgresStore], schema: str
) -> None:
    async with worker(application_name=schema) as store:
        await store.sync_feeds([spec("a")], T0)

        async def slow(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
            await conn.execute("SELECT pg_sleep(30)")

        running = asyncio.create_task(store._run(slow))
        for _ in range(200):  # bounded: until PostgreSQL shows the statement running
            if admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND query LIKE %s",
                schema,
                "%pg_sleep(30)%",
            ):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(StoreError, match="connection failed or lost"):
            await asyncio.wait_for(running, timeout=30)
        for _ in range(20):  # the pool replaces the broken connections
            try:
                assert [s.name for s in await store.feed_states()] == ["a"]
                break
            except StoreError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the store did not recover from a lost connection")


# --- claim owners ------------------------------------------------------------------------------


async def test_a_late_worker_cannot_clear_the_claim_another_took(
    worker: Callable[..., PostgresStore],
) -> None:
    async with worker() as late, worker() as other, worker() as third:
        await late.sync_feeds([spec("a")], T0)
        assert len(await late.claim_due_feeds(T0 + MINUTE, 10, MINUTE)) == 1
        # Its lease runs out mid-poll; another worker claims the feed.
        assert len(await other.claim_due_feeds(T0 + 3 * MINUTE, 10, HOUR)) == 1
        await late.release_feeds(["a"])
        assert await third.claim_due_feeds(T0 + 4 * MINUTE, 10, HOUR) == []
        stale = await record(late, "a", [item("k1")], [alert("k1")], now=T0 + 4 * MINUTE)
        assert stale.new_items == ()
        assert await other.pending_count() == 0
        await late.record_failure("a", "x", now=T0 + 4 * MINUTE, next_poll_at=T0)
        assert await third.claim_due_feeds(T0 + 4 * MINUTE, 10, HOUR) == []
        # The worker holding the claim finishes the poll.
        done = await record(other, "a", [item("k1")], [alert("k1")], now=T0 + 5 * MINUTE)
        assert [i.key for i in done.new_items] == ["k1"]


async def test_a_late_sender_cannot_clear_the_delivery_claim_another_took(
    worker: Callable[..., PostgresStore],
) -> None:
    async with worker() as late, worker() as other, worker() as third:
        await late.sync_feeds([spec("a")], T0)
        await record(late, "a", [item("k1")], [alert("k1")])
        (mine,) = await late.claim_deliveries("tg", T0, 10, MINUTE)
        (theirs,) = await other.claim_deliveries("tg", T0 + 2 * MINUTE, 10, HOUR)
        assert mine.id == theirs.id
        await late.release_deliveries([mine.id])
        assert await late.extend_claims([mine.id], T0 + 2 * MINUTE, HOUR) == []
        await late.mark_retry(mine.id, "timeout", now=T0, retry_at=T0 + 2 * MINUTE)
        assert await third.claim_deliveries("tg", T0 + 3 * MINUTE, 10, HOUR) == []
        assert await other.extend_claims([theirs.id], T0 + 3 * MINUTE, HOUR) == [theirs.id]


# --- session locks never stay with a pooled connection -----------------------------------------


def advisory_locks(schema: str) -> list[tuple[object, ...]]:
    return admin(
        "SELECT l.objid FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
        schema,
    )


async def test_a_pooled_connection_given_back_holds_no_session_lock(
    worker: Callable[..., PostgresStore], schema: str
) -> None:
    async with worker(application_name=schema) as store:
        pool = store._require()
        conn = await pool.getconn()
        await conn.execute("SELECT pg_advisory_lock(1, 2)")
        await conn.commit()
        store._lending.locking.add(conn)  # lent for a session lock, as digest_lock and lead do
        assert advisory_locks(schema)
        await pool.putconn(conn)  # a path that forgot to unlock
        for _ in range(200):  # the pool resets returned connections in the background
            if not advisory_locks(schema):
                break
            await asyncio.sleep(0.05)
        assert advisory_locks(schema) == []


async def test_a_digest_lock_waiter_cancelled_leaves_no_lock_behind(
    pair: list[PostgresStore], schema: str
) -> None:
    from monitor.store.postgres_schema import lock_key

    first, second = pair
    second.digest_retry = 0.01

    async def waits() -> None:
        async with second.digest_lock("mail"):
            await asyncio.sleep(3600)

    async with first.digest_lock("mail"):
        waiter = asyncio.create_task(waits())
        for _ in range(20):  # cancelled at some point of its tries
            await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    # Neither worker holds it now: a third try gets it at once.
    async with asyncio.timeout(30), second.digest_lock("mail"), first.digest_lock("news"):
        pass
    mail = lock_key("digest", schema, "mail") % (1 << 32)  # objid is unsigned
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
    for _ in range(200):  # bounded: connections given back are reset in the background
        if admin(query, mail) == [(0,)]:
            break
        await asyncio.sleep(0.05)
    assert admin(query, mail) == [(0,)]


async def test_a_lead_whose_check_fails_is_lost_and_its_lock_dropped(
    worker: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.store import postgres_locks as postgres_module

    async def refused(conn: object) -> None:  # a non-fatal error: the connection lives on
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    async with worker() as first, worker() as second:
        first.lead_check = 0.05
        second.lead_retry = 0.05
        async with first.lead("bot commands") as lost:
            monkeypatch.setattr(postgres_module, "_ping", refused)
            await asyncio.wait_for(lost.wait(), timeout=30)
            async with asyncio.timeout(30), second.lead("bot commands") as other:
                assert not other.is_set()


async def test_a_hanging_lead_check_counts_as_lost(
    worker: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.store import postgres_locks as postgres_module

    async def hangs(conn: object) -> None:
        await asyncio.sleep(3600)

    async with worker() as first:
        first.lead_check, first.lead_check_timeout = 0.05, 0.05
        async with first.lead("bot commands") as lost:
            monkeypatch.setattr(postgres_module, "_ping", hangs)
            await asyncio.wait_for(lost.wait(), timeout=30)


# --- deadlocks, prune --------------------------------------------------------------------------


async def test_a_304_batch_failing_twice_releases_its_claims(
    worker: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.store import postgres_feeds

    tries: list[int] = []

    async def deadlocked(*args: object) -> None:
        tries.append(1)
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    async with worker() as store:
        await store.sync_feeds([spec("a"), spec("b")], T0)
        assert len(await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)) == 2
        monkeypatch.setattr(postgres_feeds, "record_not_modified", deadlocked)
        with pytest.raises(StoreError, match="deadlock"):
            await store.record_not_modified("a", now=T0 + MINUTE, next_poll_at=T0 + HOUR)
        assert len(tries) == 2  # the victim is run once more, then reported
        # Not kept for the lease: due again at once.
        again = await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)
        assert [s.name for s in again] == ["a"]


async def test_304_batches_lock_their_feeds_in_one_order(
    pair: list[PostgresStore],
) -> None:
    first, second = pair
    names = [f"f{i:03}" for i in range(200)]
    await first.sync_feeds([spec(n) for n in names], T0)

    async def batch(store: PostgresStore, order: list[str]) -> None:
        await asyncio.gather(
            *(store.record_not_modified(n, now=T0, next_poll_at=T0 + HOUR) for n in order)
        )

    for _ in range(5):
        await asyncio.gather(batch(first, names), batch(second, names[::-1]))
    states = await second.feed_states()
    assert {s.next_poll_at for s in states} == {T0 + HOUR}


async def test_a_prune_running_elsewhere_is_skipped(pair: list[PostgresStore], schema: str) -> None:
    from monitor.models import Retention
    from monitor.store.postgres_schema import LOCK_CLASS, lock_key

    first, _ = pair
    await first.mute("r", T0, now=T0 - HOUR)
    with psycopg.connect(DSN) as conn:  # another worker's prune, mid-transaction
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, lock_key("prune", schema))
        )
        skipped = await first.prune(T0 + HOUR, Retention())
        assert (skipped.items, skipped.texts, skipped.deliveries, skipped.mutes) == (0, 0, 0, 0)
    assert (await first.prune(T0 + HOUR, Retention())).mutes == 1


async def test_the_schema_version_is_read_from_the_store_schema_only(schema: str) -> None:
    from monitor.store.postgres_schema import schema_version

    other = f"{schema}_other"
    admin(f"CREATE SCHEMA {other}")
    try:
        admin(f"CREATE TABLE {other}.monitor_schema (version integer)")
        admin(f"INSERT INTO {other}.monitor_schema VALUES (99)")
        admin(f"CREATE SCHEMA {schema}")
        async with await psycopg.AsyncConnection.connect(DSN) as conn:
            await conn.execute(f"SET search_path TO {schema}, {other}")
            assert await schema_version(conn, schema) == 0
    finally:
        admin(f"DROP SCHEMA IF EXISTS {other} CASCADE")
