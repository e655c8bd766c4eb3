"""What only the SQLite store has: a file, a lock, migrations, pragmas, one worker thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.errors import StoreError
from monitor.models import CacheInfo, Delivery, DeliveryStatus, Retention
from monitor.store import MemoryStore, SQLiteStore, Store
from monitor.store.codec import dt_to_text, matches_to_json, text_to_dt
from monitor.store.sqlite_schema import (
    Migration,
    connect,
    load_migrations,
    migrate,
    schema_version,
    transaction,
)
from tests.store.factories import DAY, HOUR, MINUTE, T0, alert, item, record, spec


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "monitor.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(db) as opened:
        await opened.sync_feeds([spec("a")], T0)
        yield opened


def _query(store: SQLiteStore, sql: str) -> object:
    """Run one statement on the store's own connection (its worker thread)."""
    return store._run(lambda c: c.execute(sql).fetchall())


# --- the file ----------------------------------------------------------------------------------


async def test_state_survives_close_and_a_new_process(db: Path) -> None:
    async with SQLiteStore(db) as first:
        await first.sync_feeds([spec("a")], T0)
        await record(first, "a", [item("k1")], [alert("k1")], next_poll_at=T0 + HOUR)
        state = await first.feed_state("a")
    async with SQLiteStore(db) as second:
        assert await second.feed_state("a") == state
        assert await second.unseen("a", ["k1", "k2"]) == {"k2"}
        [pending] = await second.claim_deliveries("tg", T0, 10, MINUTE)
        assert pending.alert.item_key == "k1"
        assert [i.key for i in await second.recent_items(T0)] == ["k1"]


async def test_parent_directory_is_created(db: Path) -> None:
    assert not await asyncio.to_thread(db.parent.exists)
    async with SQLiteStore(db):
        assert await asyncio.to_thread(db.exists)


async def test_pragmas_protect_the_outbox(store: SQLiteStore) -> None:
    assert await _query(store, "PRAGMA journal_mode") == [("wal",)]
    assert await _query(store, "PRAGMA synchronous") == [(2,)]  # FULL
    assert await _query(store, "PRAGMA foreign_keys") == [(1,)]
    assert await _query(store, "PRAGMA busy_timeout") == [(5000,)]


async def test_every_call_runs_on_one_worker_thread(store: SQLiteStore) -> None:
    idents = await asyncio.gather(*(store._run(lambda c: threading.get_ident()) for _ in range(5)))
    assert len(set(idents)) == 1
    assert idents[0] != threading.get_ident()


async def test_close_waits_for_queued_calls_and_stops_the_thread(db: Path) -> None:
    store = SQLiteStore(db)
    await store.open()
    await store.sync_feeds([spec("a")], T0)
    worker = await store._run(lambda c: threading.get_ident())
    calls = [asyncio.ensure_future(record(store, "a", [item(f"k{n}")])) for n in range(5)]
    await asyncio.sleep(0)  # let the calls reach the worker before close
    await store.close()
    results = [await c for c in calls]
    assert sum(len(r.new_items) for r in results) == 5
    assert worker not in {t.ident for t in threading.enumerate()}


# --- one process per file ----------------------------------------------------------------------


async def test_a_second_store_on_the_same_file_is_refused(store: SQLiteStore, db: Path) -> None:
    lock = db.with_name(db.name + ".lock")
    assert lock.read_text().strip() == str(os.getpid())
    with pytest.raises(
        StoreError, match=rf"in use by another monitor process \(pid {os.getpid()}\)"
    ):
        await SQLiteStore(db).open()
    await store.close()
    async with SQLiteStore(db) as next_one:
        assert await next_one.unseen("a", ["k"]) == {"k"}


@pytest.fixture
def garbage(db: Path) -> Path:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database, just some text " * 100)
    return db


async def test_a_file_that_is_no_database_is_refused_and_unlocked(garbage: Path) -> None:
    for _ in range(2):  # the second attempt fails the same way, not on the lock
        with pytest.raises(StoreError, match="is not a SQLite database"):
            await SQLiteStore(garbage).open()


async def test_use_after_close_is_refused(db: Path) -> None:
    store = SQLiteStore(db)
    async with store:
        pass
    with pytest.raises(StoreError, match="not open"):
        await store.pending_count()


# --- migrations --------------------------------------------------------------------------------


def test_shipped_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_initial.sql"


async def test_a_new_file_gets_the_latest_schema(store: SQLiteStore) -> None:
    assert await _query(store, "PRAGMA user_version") == [(len(load_migrations()),)]


async def test_a_newer_schema_is_refused(db: Path) -> None:
    async with SQLiteStore(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    known = len(load_migrations())
    with pytest.raises(
        StoreError, match=rf"newer version \(schema 99; this version knows {known}\)"
    ):
        await SQLiteStore(db).open()


async def test_a_failing_migration_changes_nothing(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStore(db) as store:
        await store.sync_feeds([spec("a")], T0)
        await record(store, "a", [item("k1")], [alert("k1")])
    broken = Migration(
        len(load_migrations()) + 1,
        "0099_broken.sql",
        "CREATE TABLE half_done (x);\nALTER TABLE items ADD COLUMN extra TEXT;\n"
        "INSERT INTO no_such_table VALUES (1);",
    )
    monkeypatch.setattr(
        "monitor.store.sqlite.load_migrations", lambda: [*load_migrations(), broken]
    )
    with pytest.raises(StoreError, match=r"0099_broken\.sql failed and was rolled back"):
        await SQLiteStore(db).open()
    monkeypatch.undo()
    async with SQLiteStore(db) as store:
        assert await _query(store, "PRAGMA user_version") == [(len(load_migrations()),)]
        tables = await _query(store, "SELECT name FROM sqlite_master WHERE name = 'half_done'")
        assert tables == []
        assert await store.unseen("a", ["k1"]) == set()
        assert await store.pending_count() == 1


async def test_migration_2_dates_each_feeds_last_fetch_from_its_items(db: Path) -> None:
    # A schema-1 file: "a" last returned a document at T0+2d (listing k2, not k1 any more)
    # and has answered 304 since; "b" has no items.
    db.parent.mkdir(parents=True)
    conn = connect(db)
    try:
        migrate(conn, load_migrations()[:1], str(db))
        conn.executemany(
            "INSERT INTO feeds (name, url, last_success_at) VALUES (?, ?, ?)",
            [
                ("a", "https://example.com/a.xml", dt_to_text(T0 + 400 * DAY)),
                ("b", "https://example.com/b.xml", dt_to_text(T0 + 10 * DAY)),
            ],
        )
        conn.executemany(
            "INSERT INTO items (feed, key, seen_at, last_seen_at) VALUES ('a', ?, ?, ?)",
            [
                ("k1", dt_to_text(T0), dt_to_text(T0)),
                ("k2", dt_to_text(T0), dt_to_text(T0 + 2 * DAY)),
            ],
        )
    finally:
        conn.close()
    async with SQLiteStore(db) as store:
        assert await _query(store, "PRAGMA user_version") == [(len(load_migrations()),)]
        fetched = await _query(store, "SELECT name, last_fetched_at FROM feeds ORDER BY name")
        assert fetched == [("a", dt_to_text(T0 + 2 * DAY)), ("b", None)]
        # Not last_success_at (a 304): that would forget k2, which the feed still lists.
        pruned = await store.prune(T0 + 400 * DAY, Retention(seen=180 * DAY))
        assert pruned.items == 1
        assert await store.unseen("a", ["k1", "k2"]) == {"k1"}


def _schema_2_file(db: Path) -> None:
    """A file as version 2 left it: feed "a", alert 1 (k1) with a pending tg delivery (id 1,
    tried once) and a sent mail one (id 2), and alert 2 whose delivery (id 3, the newest ever
    handed out) was deleted with it, so the id sequence is above the highest id left."""
    db.parent.mkdir(parents=True)
    conn = connect(db)
    try:
        migrate(conn, load_migrations()[:2], str(db))
        conn.execute("INSERT INTO feeds (name, url) VALUES ('a', 'https://example.com/a.xml')")
        for key in ("k1", "k2"):
            conn.execute(
                "INSERT INTO alerts (feed, item_key, created_at, title, link, summary,"
                " seen_at, matches_json) VALUES ('a', ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    dt_to_text(T0),
                    f"title {key}",
                    f"https://example.com/{key}",
                    f"summary {key}",
                    dt_to_text(T0),
                    matches_to_json(alert(key, channels=["tg", "mail"]).matches),
                ),
            )
        conn.executemany(
            "INSERT INTO deliveries (alert_id, channel, status, attempts, next_attempt_at,"
            " lease_until, last_error, created_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (1, "tg", "pending", 1, dt_to_text(T0 + MINUTE), dt_to_text(T0 + DAY),
                 "HTTP 502", dt_to_text(T0), None),
                (1, "mail", "sent", 0, None, None, "", dt_to_text(T0), dt_to_text(T0)),
                (2, "tg", "pending", 0, None, None, "", dt_to_text(T0), None),
            ],
        )  # fmt: skip
        conn.execute("DELETE FROM alerts WHERE id = 2")  # cascades to delivery 3
        assert conn.execute("SELECT max(id) FROM deliveries").fetchone() == (2,)
    finally:
        conn.close()


async def test_migration_3_keeps_every_delivery_and_never_reuses_an_id(db: Path) -> None:
    _schema_2_file(db)
    async with SQLiteStore(db) as store:
        assert await _query(store, "PRAGMA user_version") == [(len(load_migrations()),)]
        pending, sent = await store.deliveries("tg"), await store.deliveries("mail")
        assert pending == [
            Delivery(
                id=1,
                channel="tg",
                alert=alert("k1", channels=["tg", "mail"]),
                status=DeliveryStatus.PENDING,
                attempts=1,
                last_error="HTTP 502",
                created_at=T0,
                target="",
            )
        ]
        assert [(d.id, d.status, d.target) for d in sent] == [(2, DeliveryStatus.SENT, "")]
        # Still due at its retry time (the dead process's lease was released on open).
        assert await store.claim_deliveries("tg", T0 + MINUTE / 2, 10, HOUR) == []
        [due] = await store.claim_deliveries("tg", T0 + MINUTE, 10, HOUR)
        assert due.id == 1
        # New rows continue above 3, the highest id ever used, though 2 is the highest left;
        # and one alert may now have several rows per channel.
        await store.sync_feeds([spec("a")], T0)
        await record(
            store,
            "a",
            [item("k9")],
            [alert("k9", channels=["tg", "mail"])],
            now=T0 + HOUR,
            targets={"tg": ["c1", "c2"]},
        )
        new = await store.deliveries(limit=3)
        assert sorted((d.id, d.channel, d.target) for d in new) == [
            (4, "tg", "c1"),
            (5, "tg", "c2"),
            (6, "mail", ""),
        ]
        assert await _query(store, "PRAGMA foreign_key_check") == []
        assert await _query(store, "PRAGMA integrity_check") == [("ok",)]
        assert await _query(store, "SELECT name FROM sqlite_sequence ORDER BY name") == [
            ("alerts",),
            ("deliveries",),
        ]
        indexes = await _query(
            store,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'"
            " AND sql IS NOT NULL ORDER BY name",  # the UNIQUE's own index has no sql
        )
        assert indexes == [("deliveries_age",), ("deliveries_due",)]
        # Deleting an alert still takes its deliveries along.
        await _query(store, "DELETE FROM alerts WHERE item_key = 'k9'")
        assert await store.pending_by_target("tg") == {"": 1}


async def test_migration_3_drops_deliveries_whose_alert_is_gone(db: Path) -> None:
    # Only possible if foreign keys were ever off; such a row is unreadable (every read joins
    # its alert) and must not make the migration fail.
    _schema_2_file(db)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO deliveries (alert_id, channel, created_at) VALUES (99, 'tg', ?)",
            (dt_to_text(T0),),
        )
    conn.close()
    async with SQLiteStore(db) as store:
        assert await store.pending_count() == 1
        assert [d.id for d in await store.deliveries()] == [2, 1]


async def test_read_only_open_of_an_older_schema_says_how_to_migrate_it(db: Path) -> None:
    # `test-rule --since` on a file the daemon has not migrated yet: refused, file untouched.
    _schema_2_file(db)
    known = len(load_migrations())
    with pytest.raises(
        StoreError,
        match=rf"has schema 2; this version reads {known} \(run the daemon once to migrate it\)",
    ):
        await SQLiteStore(db, read_only=True).open()
    conn = sqlite3.connect(db)
    try:
        assert schema_version(conn) == 2
    finally:
        conn.close()
    async with SQLiteStore(db):
        pass
    async with SQLiteStore(db, read_only=True) as reader:
        assert await reader.pending_by_target("tg") == {"": 1}


async def test_only_a_parsed_document_is_a_fetch(store: SQLiteStore) -> None:
    async def last_fetched() -> object:
        return await _query(store, "SELECT last_fetched_at FROM feeds WHERE name = 'a'")

    assert await last_fetched() == [(None,)]
    await record(store, "a", [], now=T0 + MINUTE)
    assert await last_fetched() == [(dt_to_text(T0 + MINUTE),)]
    await store.record_not_modified("a", now=T0 + HOUR, next_poll_at=T0 + DAY, cache=CacheInfo())
    await store.record_failure("a", "boom", now=T0 + DAY, next_poll_at=T0 + 2 * DAY)
    assert await last_fetched() == [(dt_to_text(T0 + MINUTE),)]


def test_migrate_applies_only_what_is_missing(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.db")
    try:
        one = Migration(1, "0001_a.sql", "CREATE TABLE a (x);")
        two = Migration(2, "0002_b.sql", "CREATE TABLE b (x)")  # no trailing semicolon
        migrate(conn, [one], "m.db")
        migrate(conn, [one, two], "m.db")
        migrate(conn, [one, two], "m.db")
        assert schema_version(conn) == 2
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert names == {"a", "b"}
    finally:
        conn.close()


# --- errors and atomicity ----------------------------------------------------------------------


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.db")
    try:
        conn.execute("CREATE TABLE t (x)")

        def write_then_crash() -> None:
            with transaction(conn):
                conn.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("crash between the writes")

        with pytest.raises(RuntimeError):
            write_then_crash()
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        conn.close()


async def test_a_failing_record_items_leaves_nothing_behind(store: SQLiteStore) -> None:
    await _query(
        store,
        "CREATE TRIGGER no_outbox BEFORE INSERT ON deliveries"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
    )
    before = await store.feed_state("a")
    await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)
    with pytest.raises(StoreError, match="disk on fire") as caught:
        await record(store, "a", [item("k1"), item("k2")], [alert("k1")], now=T0 + MINUTE)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    # Neither the items nor the alert nor the feed's success: the poll simply happens again.
    assert await store.unseen("a", ["k1", "k2"]) == {"k1", "k2"}
    assert await store.feed_state("a") == before
    assert await _query(store, "SELECT count(*) FROM alerts") == [(0,)]
    assert await store.claim_due_feeds(T0 + MINUTE, 10, HOUR) == []  # still claimed
    await _query(store, "DROP TRIGGER no_outbox")
    recorded = await record(store, "a", [item("k1"), item("k2")], [alert("k1")], now=T0 + HOUR)
    assert (len(recorded.new_items), recorded.alerts, recorded.deliveries) == (2, 1, 1)


async def test_a_failed_write_is_a_store_error(store: SQLiteStore) -> None:
    await _query(store, "PRAGMA query_only = ON")  # stands in for a read-only or full disk
    with pytest.raises(StoreError, match="readonly database"):
        await record(store, "a", [item("k1")], [alert("k1")])
    await _query(store, "PRAGMA query_only = OFF")
    assert await store.unseen("a", ["k1"]) == {"k1"}
    assert await store.pending_count() == 0


async def test_text_that_is_not_unicode_is_a_store_error(store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match="not valid Unicode"):
        await record(store, "a", [item("k1", title="broken \ud800 surrogate")])
    assert await store.unseen("a", ["k1"]) == {"k1"}


async def test_a_cancelled_open_leaves_the_file_unlocked(db: Path) -> None:
    opening = asyncio.ensure_future(SQLiteStore(db).open())
    await asyncio.sleep(0)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    for _ in range(100):  # the worker finishes opening, then closes, on its own time
        try:
            async with SQLiteStore(db) as store:
                assert await store.pending_count() == 0
                return
        except StoreError:
            await asyncio.sleep(0.01)
    pytest.fail("the lock of a cancelled open was never released")


async def test_deleting_an_alert_cascades_to_its_deliveries(store: SQLiteStore) -> None:
    await record(store, "a", [item("k1")], [alert("k1", channels=["tg", "mail"])])
    await _query(store, "DELETE FROM alerts")
    assert await store.pending_count() == 0


# --- codec -------------------------------------------------------------------------------------


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    ),
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30)),
)
def test_stored_times_round_trip_and_sort_as_text(a: datetime, naive_b: datetime) -> None:
    b = naive_b.replace(tzinfo=UTC)
    assert text_to_dt(dt_to_text(a)) == a
    assert text_to_dt(dt_to_text(a)).tzinfo is UTC
    assert (dt_to_text(a) < dt_to_text(b)) == (a < b)


# --- SQLite agrees with the reference store ----------------------------------------------------

_polls = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.lists(
            st.tuples(
                st.sampled_from([f"k{n}" for n in range(8)]),
                st.sampled_from([None, (), ("tg",), ("tg", "mail")]),  # None: no alert
            ),
            max_size=8,
        ),
    ),
    max_size=10,
)

#: Targets of the n-th poll: by turns none, two chats of tg (one repeated), mail's one chat.
_TARGETS: list[dict[str, list[str]] | None] = [None, {"tg": ["c1", "c2", "c1"]}, {"mail": ["m"]}]


async def _replay(store: Store, polls: list[tuple[str, list[tuple[str, object]]]]) -> list[object]:
    outcomes: list[object] = []
    async with store:  # type: ignore[attr-defined]
        await store.sync_feeds([spec("a"), spec("b")], T0)
        for n, (feed, entries) in enumerate(polls):
            now = T0 + n * DAY  # a day apart, so last-seen refreshes happen too
            items = [item(key, feed) for key, _ in entries]
            alerts = [alert(key, feed, ch) for key, ch in entries if isinstance(ch, tuple)]
            targets = _TARGETS[n % len(_TARGETS)]
            got = await record(store, feed, items, alerts, now=now, targets=targets)
            outcomes.append(([i.key for i in got.new_items], got.alerts, got.deliveries))
        outcomes.append((await store.pending_count("tg"), await store.pending_count("mail")))
        by_target = (await store.pending_by_target("tg"), await store.pending_by_target("mail"))
        outcomes.append((by_target, await store.alert_count(T0 + DAY)))
        # Retention, counted from each feed's last fetch: the same items go in both stores.
        pruned = await store.prune(T0 + (len(polls) + 1) * DAY, Retention(seen=2 * DAY))
        keys = [f"k{n}" for n in range(8)]
        outcomes.append((pruned, await store.unseen("a", keys), await store.unseen("b", keys)))
    return outcomes


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_polls)
def test_sqlite_agrees_with_memory_on_any_poll_sequence(
    polls: list[tuple[str, list[tuple[str, object]]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = asyncio.run(_replay(MemoryStore(), polls))
        sqlite = asyncio.run(_replay(SQLiteStore(Path(tmp) / "state.db"), polls))
    assert sqlite == memory
    # The model: an item alerts once, in the poll that first sees it, if that poll alerts.
    seen: set[tuple[str, str]] = set()
    expected = 0
    for feed, entries in polls:
        first_alert: dict[str, object] = {}
        for key, channels in entries:
            if isinstance(channels, tuple):
                first_alert.setdefault(key, channels)
        for key in dict.fromkeys(k for k, _ in entries):
            if (feed, key) not in seen:
                seen.add((feed, key))
                expected += key in first_alert
    assert sum(int(o[1]) for o in memory[:-3]) == expected  # type: ignore[index]


async def test_reopening_releases_leases_left_by_a_dead_process(tmp_path: Path) -> None:
    from monitor.models import FeedSpec

    path = tmp_path / "state.db"
    feed = FeedSpec(name="a", url="https://example.org/a", interval=timedelta(minutes=5))
    now = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    async with SQLiteStore(path) as first:
        await first.sync_feeds([feed], now)
        [claimed] = await first.claim_due_feeds(now + timedelta(minutes=1), 10, timedelta(hours=1))
        assert claimed.name == "a"
        assert await first.claim_due_feeds(now + timedelta(minutes=2), 10, timedelta(hours=1)) == []
    async with SQLiteStore(path) as second:  # the first "died" holding its claim
        again = await second.claim_due_feeds(now + timedelta(minutes=2), 10, timedelta(hours=1))
        assert [s.name for s in again] == ["a"]


async def test_read_only_open_works_beside_a_running_daemon_and_refuses_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as owner:
        await owner.sync_feeds([spec("a")], T0)
        await record(owner, "a", [item("k1")])
        async with SQLiteStore(path, read_only=True) as reader:
            [stored] = await reader.recent_items(T0 - DAY)
            assert stored.key == "k1"
            with pytest.raises(StoreError):
                await reader.sync_feeds([spec("b")], T0)


async def test_read_only_open_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await SQLiteStore(tmp_path / "nope.db", read_only=True).open()


async def test_migration_5_dates_a_failing_feed_and_keeps_old_items_without_fingerprint(
    db: Path,
) -> None:
    db.parent.mkdir(parents=True)
    conn = connect(db)
    try:
        migrate(conn, load_migrations()[:4], str(db))
        conn.executemany(
            "INSERT INTO feeds (name, url, last_polled_at, consecutive_failures, seeded)"
            " VALUES (?, ?, ?, ?, 1)",
            [
                ("failing", "https://example.com/f.xml", dt_to_text(T0), 4),
                ("fine", "https://example.com/ok.xml", dt_to_text(T0), 0),
            ],
        )
        conn.execute(
            "INSERT INTO items (feed, key, seen_at, last_seen_at, title, link)"
            " VALUES ('fine', 'k1', ?, ?, 'Talks', 'https://example.com/k1')",
            (dt_to_text(T0), dt_to_text(T0)),
        )
    finally:
        conn.close()
    async with SQLiteStore(db) as store:
        failing = await store.feed_state("failing")
        fine = await store.feed_state("fine")
        assert failing is not None
        assert fine is not None
        assert (failing.failing_since, fine.failing_since) == (T0, None)
        assert (failing.dead_since, failing.notice, failing.cadence) == (None, "", None)
        # Stored before fingerprints existed: not recognised under another id (no crash).
        moved = item("k2", feed="fine", title="Talks", link="https://example.com/k1")
        assert await store.seen_alike("fine", [moved]) == set()


async def test_a_shared_open_writes_beside_a_running_daemon(store: SQLiteStore, db: Path) -> None:
    await store.sync_feeds([spec("a")], T0)
    await store.record_failure("a", "HTTP 410", now=T0, next_poll_at=T0 + DAY, dead=True)
    async with SQLiteStore(db, shared=True) as beside:
        assert await beside.revive_feeds(["a"], T0 + HOUR) == ["a"]
    revived = await store.feed_state("a")
    assert revived is not None
    assert (revived.dead_since, revived.next_poll_at) == (None, T0 + HOUR)
    # The daemon still holds the file: the shared open took no lock and left it held.
    with pytest.raises(StoreError, match="in use by another monitor process"):
        await SQLiteStore(db).open()


async def test_a_shared_open_of_an_older_schema_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = connect(db)
    try:
        migrate(conn, load_migrations()[:4], str(db))
    finally:
        conn.close()
    with pytest.raises(StoreError, match="run the daemon once to migrate it"):
        await SQLiteStore(db, shared=True).open()
