"""The SQLite state file when the disk or the file fails (BAD-INPUTS S05, S06).

Disk full, a read-only file, a corrupted file, a file locked by another program: each is a
StoreError naming the file, the cause and what to do, never a bare sqlite3 traceback; and the
call that met it has stored nothing, so no poll counts as done and no alert as sent when the
write did not happen. Disk full is simulated with `PRAGMA max_page_count` on the store's own
connection (it is per connection), which fails the write with SQLITE_FULL as a full disk does.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from monitor.errors import StoreError
from monitor.models import DeliveryStatus
from monitor.store import SQLiteStore
from monitor.store.sqlite_schema import transaction
from tests.store.factories import DAY, HOUR, MINUTE, T0, alert, item, record, spec

ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")

FIX_CORRUPT = (
    "restore it from a backup, or move it aside (with any -wal and -shm file beside it) "
    "to start with an empty state"
)
READ_ONLY_FIX = (
    "nothing was stored: let the user running monitor write the file, its directory and any "
    "-wal and -shm file beside it"
)


def _permissions_bind() -> bool:
    """Whether this process is refused writing a read-only file (root is not, unless it has
    dropped CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return True
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        probe.write_bytes(b"")
        probe.chmod(0o444)
        try:
            with probe.open("ab"):
                return False
        except PermissionError:
            return True


needs_permissions = pytest.mark.skipif(
    not _permissions_bind(),
    reason="running as root, which writes read-only files and directories regardless",
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "monitor.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(db) as opened:
        await opened.sync_feeds([spec("a")], T0)
        yield opened


async def _on_worker(store: SQLiteStore, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run `work` on the store's own connection, on its worker thread."""
    return await store._run(work)


async def _query(store: SQLiteStore, sql: str) -> list[tuple[object, ...]]:
    return await _on_worker(store, lambda c: c.execute(sql).fetchall())


async def _disk_full(store: SQLiteStore) -> int:
    """No page more for the store's connection; returns the limit to restore."""

    def limit(conn: sqlite3.Connection) -> int:
        unlimited = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return unlimited

    return await _on_worker(store, limit)


async def _space_freed(store: SQLiteStore, unlimited: int) -> None:
    await _query(store, f"PRAGMA max_page_count = {unlimited}")


async def _filled(path: Path) -> None:
    """A real state file of a few dozen pages, closed (its WAL folded into it)."""
    async with SQLiteStore(path) as store:
        await store.sync_feeds([spec("a")], T0)
        await record(
            store,
            "a",
            [item(f"k{n}", summary=f"summary {n} " * 50) for n in range(200)],
            [alert(f"k{n}") for n in range(0, 200, 10)],
        )
    assert not path.with_name(path.name + "-wal").exists()


def _overwrite(path: Path, where: str) -> None:
    """Garbage over the header, or over four pages in the middle of the file."""
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    assert pages > 20
    at, size = (0, 100) if where == "header" else (page_size * (pages // 2), page_size * 4)
    with path.open("r+b") as f:
        f.seek(at)
        f.write(bytes(range(256)) * (size // 256) + b"\xa5" * (size % 256))


def _holder(path: Path) -> sqlite3.Connection:
    """Another program's connection to the state file (an sqlite3 shell, a backup tool)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


# --- disk full ---------------------------------------------------------------------------------


async def test_disk_full_during_record_items_stores_nothing_and_the_feed_is_polled_again(
    store: SQLiteStore, db: Path
) -> None:
    [claimed] = await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)
    assert claimed.name == "a"
    before = await store.feed_state("a")
    keys = [f"k{n}" for n in range(50)]
    batch = [item(key, summary=f"{key} " * 1000) for key in keys]
    alerts = [alert(key) for key in keys[::5]]
    unlimited = await _disk_full(store)

    with pytest.raises(StoreError) as caught:
        await record(store, "a", batch, alerts, now=T0 + MINUTE)
    message = str(caught.value)
    assert message.startswith(f"state file {db}: disk full (database or disk is full)")
    assert message.endswith("nothing was stored: free space on the disk that holds it")
    cause = caught.value.__cause__
    assert isinstance(cause, sqlite3.OperationalError)
    assert cause.sqlite_errorname == "SQLITE_FULL"

    # None of it: no item, no alert, no delivery, and the poll did not count as done.
    assert await store.unseen("a", keys) == set(keys)
    assert await store.feed_state("a") == before
    assert await store.alert_count(T0 - DAY) == 0
    assert await store.pending_count() == 0
    assert not await _on_worker(store, lambda c: c.in_transaction)
    # Still claimed until the lease ends, then due again: the same items are fetched again.
    assert await store.claim_due_feeds(T0 + MINUTE, 10, HOUR) == []
    [again] = await store.claim_due_feeds(T0 + MINUTE + HOUR, 10, HOUR)
    assert again.name == "a"

    # Space comes back: the same store, not reopened, takes the whole batch.
    await _space_freed(store, unlimited)
    recorded = await record(store, "a", batch, alerts, now=T0 + 2 * HOUR)
    assert (len(recorded.new_items), recorded.alerts, recorded.deliveries) == (50, 10, 10)
    assert await store.unseen("a", keys) == set()
    assert await store.pending_count() == 10
    assert await _query(store, "PRAGMA integrity_check") == [("ok",)]


async def test_disk_full_during_mark_sent_leaves_the_delivery_pending(
    store: SQLiteStore, db: Path
) -> None:
    await record(store, "a", [item("k1")], [alert("k1")])
    [delivery] = await store.claim_deliveries("tg", T0, 10, MINUTE)
    # Marking a row sent rewrites it in place, which needs no new page; a trigger writing a
    # large row in the same transaction makes it need disk space, as a full WAL would.
    await _query(store, "CREATE TABLE ballast (b BLOB)")
    await _query(
        store,
        "CREATE TRIGGER ballast AFTER UPDATE OF status ON deliveries"
        " BEGIN INSERT INTO ballast VALUES (zeroblob(1048576)); END",
    )
    unlimited = await _disk_full(store)

    with pytest.raises(StoreError, match=r"disk full .*nothing was stored") as caught:
        await store.mark_sent(delivery.id, T0 + MINUTE / 2)
    assert str(caught.value).startswith(f"state file {db}: disk full")

    # Not recorded as sent: still pending, and sent again once its claim ends (the bounded
    # duplicate of BAD-INPUTS S03), never lost.
    [pending] = await store.deliveries(status="pending")
    assert pending.id == delivery.id
    assert (pending.status, pending.attempts) == (DeliveryStatus.PENDING, 0)
    assert await store.deliveries(status="sent") == []
    assert await _query(store, "SELECT sent_at FROM deliveries") == [(None,)]
    assert await store.claim_deliveries("tg", T0 + MINUTE / 2, 10, MINUTE) == []
    [again] = await store.claim_deliveries("tg", T0 + MINUTE, 10, MINUTE)
    assert again.id == delivery.id

    await _space_freed(store, unlimited)
    await store.mark_sent(again.id, T0 + 2 * MINUTE)
    assert await store.pending_count() == 0
    [sent] = await store.deliveries(status="sent")
    assert sent.id == delivery.id


# --- read-only ---------------------------------------------------------------------------------


async def test_a_read_only_state_refuses_mark_sent_and_the_delivery_stays_pending(
    store: SQLiteStore, db: Path
) -> None:
    # query_only fails every write with SQLITE_READONLY, as a file turned read-only does;
    # unlike chmod it works when the tests run as root.
    await record(store, "a", [item("k1")], [alert("k1")])
    [delivery] = await store.claim_deliveries("tg", T0, 10, MINUTE)
    await _query(store, "PRAGMA query_only = ON")
    with pytest.raises(StoreError) as caught:
        await store.mark_sent(delivery.id, T0 + MINUTE)
    assert str(caught.value) == (
        f"state file {db} is read-only (attempt to write a readonly database); {READ_ONLY_FIX}"
    )
    with pytest.raises(StoreError, match="is read-only"):
        await record(store, "a", [item("k2")], [alert("k2")], now=T0 + MINUTE)
    await _query(store, "PRAGMA query_only = OFF")
    assert [d.status for d in await store.deliveries()] == [DeliveryStatus.PENDING]
    assert await store.unseen("a", ["k2"]) == {"k2"}


async def test_a_store_opened_read_only_says_so_when_asked_to_write(db: Path) -> None:
    async with SQLiteStore(db) as owner:
        await owner.sync_feeds([spec("a")], T0)
    async with SQLiteStore(db, read_only=True) as reader:
        with pytest.raises(StoreError) as caught:
            await reader.mute("r", T0 + DAY, now=T0)
    assert str(caught.value) == (
        f"state file {db} is opened read-only by this command: it cannot change it"
    )


@needs_permissions
async def test_a_read_only_file_is_refused_at_open(db: Path) -> None:
    await _filled(db)
    await asyncio.to_thread(db.chmod, 0o444)
    try:
        with pytest.raises(StoreError) as caught:
            await SQLiteStore(db).open()
    finally:
        await asyncio.to_thread(db.chmod, 0o644)
    assert str(caught.value) == (
        f"state file {db} is read-only (no write permission on {db}); {READ_ONLY_FIX}"
    )
    # Refused before SQLite opened it: no read-only -wal or -shm file is left to fix too.
    assert sorted(await asyncio.to_thread(os.listdir, db.parent)) == [
        "monitor.db",
        "monitor.db.lock",
    ]
    async with SQLiteStore(db) as store:  # and the refused open left the lock free
        assert await store.pending_count() == 20


@needs_permissions
async def test_a_read_only_directory_is_refused_at_open(db: Path) -> None:
    await _filled(db)
    # The file and its lock file exist; no -wal or -shm file can be made beside them.
    await asyncio.to_thread(db.parent.chmod, 0o555)
    try:
        with pytest.raises(StoreError) as caught:
            await SQLiteStore(db).open()
    finally:
        await asyncio.to_thread(db.parent.chmod, 0o755)
    assert str(caught.value) == (
        f"state file {db} is read-only (no write permission on {db.parent}); {READ_ONLY_FIX}"
    )
    async with SQLiteStore(db) as store:
        assert await store.pending_count() == 20


@needs_permissions
async def test_a_directory_where_the_lock_cannot_be_created_is_refused(db: Path) -> None:
    await asyncio.to_thread(db.parent.mkdir, parents=True)
    await asyncio.to_thread(db.parent.chmod, 0o555)
    try:
        with pytest.raises(StoreError) as caught:
            await SQLiteStore(db).open()
    finally:
        await asyncio.to_thread(db.parent.chmod, 0o755)
    assert str(caught.value) == (
        f"state file {db}: permission denied on {db}.lock: let the user running monitor "
        f"create and write files in {db.parent}"
    )


# --- corrupted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("middle", "is corrupted ("),
        ("header", "is not a SQLite database, or is corrupted ("),
    ],
)
async def test_a_corrupted_file_is_refused_at_open_and_left_as_it_is(
    db: Path, where: str, said: str
) -> None:
    await _filled(db)
    _overwrite(db, where)
    damaged = await asyncio.to_thread(db.read_bytes)
    for _ in range(2):  # the second attempt fails the same way, not on the instance lock
        with pytest.raises(StoreError) as caught:
            await SQLiteStore(db).open()
        message = str(caught.value)
        assert message.startswith(f"state file {db} {said}")
        assert message.endswith(FIX_CORRUPT)
        assert "\n" not in message
    assert (
        await asyncio.to_thread(db.read_bytes) == damaged
    )  # nothing written into it: all there is to recover


async def test_corruption_found_while_running_stops_every_later_call(db: Path) -> None:
    await _filled(db)
    async with SQLiteStore(db) as store:
        _overwrite(db, "middle")
        # Forget the pages read at open, so the next reads come from the damaged file.
        await _query(store, "PRAGMA shrink_memory")
        with pytest.raises(StoreError) as caught:
            await store.recent_items(T0 - DAY)
        assert str(caught.value) == (
            f"state file {db} is corrupted (database disk image is malformed): {FIX_CORRUPT}"
        )
        # Nothing more is read from or written into a damaged file, even what would work.
        with pytest.raises(StoreError, match="is corrupted"):
            await store.pending_count()
        with pytest.raises(StoreError, match="is corrupted"):
            await store.mute("r", T0 + DAY, now=T0)


# --- locked by another program -----------------------------------------------------------------


async def test_a_file_locked_by_another_program_fails_the_call_whole(
    db: Path,
) -> None:
    store = SQLiteStore(db)
    store._busy_timeout_ms = 20
    async with store:
        await store.sync_feeds([spec("a")], T0)
        assert [s.name for s in await store.claim_due_feeds(T0 + MINUTE, 10, HOUR)] == ["a"]
        before = await store.feed_state("a")
        holder = _holder(db)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError) as caught:
                await record(store, "a", [item("k1"), item("k2")], [alert("k1")], now=T0 + MINUTE)
            # Reading still works beside a writer (WAL).
            assert await store.feed_state("a") == before
        finally:
            holder.close()
        assert str(caught.value) == (
            f"state file {db} is locked by another program (database is locked, waited "
            "3 × 0.02 s); nothing was stored: stop whatever holds it open (an sqlite3 shell, "
            "a backup or copy tool)"
        )
        # Never half-written, never dropped: nothing is stored, and the same batch goes in
        # whole once the file is free.
        assert await store.unseen("a", ["k1", "k2"]) == {"k1", "k2"}
        assert await store.alert_count(T0 - DAY) == 0
        recorded = await record(
            store, "a", [item("k1"), item("k2")], [alert("k1")], now=T0 + MINUTE
        )
        assert (len(recorded.new_items), recorded.alerts, recorded.deliveries) == (2, 1, 1)


async def test_a_call_that_met_a_lock_before_writing_is_tried_again(store: SQLiteStore) -> None:
    holder = _holder(store.path)
    await _query(store, "PRAGMA busy_timeout = 10")
    tries: list[int] = []

    def work(conn: sqlite3.Connection) -> int:
        tries.append(len(tries) + 1)
        if len(tries) == 1:
            holder.execute("BEGIN EXCLUSIVE")  # another program takes the file...
        else:
            holder.execute("ROLLBACK")  # ...and lets go before the next try
        with transaction(conn):
            conn.execute("UPDATE feeds SET last_warning = 'w'")
        return len(tries)

    try:
        assert await _on_worker(store, work) == 2
    finally:
        holder.close()
    assert await _query(store, "SELECT last_warning FROM feeds") == [("w",)]


async def test_a_call_that_wrote_before_meeting_a_lock_is_not_tried_again(
    store: SQLiteStore,
) -> None:
    holder = _holder(store.path)
    await _query(store, "PRAGMA busy_timeout = 10")
    tries: list[int] = []

    def work(conn: sqlite3.Connection) -> None:
        tries.append(1)
        conn.execute("UPDATE feeds SET last_warning = 'first'")  # committed on its own
        holder.execute("BEGIN EXCLUSIVE")
        conn.execute("UPDATE feeds SET last_warning = 'second'")

    try:
        with pytest.raises(StoreError, match=r"locked by another program \(.*waited 0\.01 s\)"):
            await _on_worker(store, work)
    finally:
        holder.close()
    assert tries == [1]
    assert await _query(store, "SELECT last_warning FROM feeds") == [("first",)]


async def test_a_file_locked_by_another_program_is_refused_at_open(db: Path) -> None:
    await _filled(db)
    holder = _holder(db)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        for _ in range(2):  # the second attempt fails the same way, not on the instance lock
            store = SQLiteStore(db)
            store._busy_timeout_ms = 20
            with pytest.raises(StoreError) as caught:
                await store.open()
            assert str(caught.value).startswith(
                f"state file {db} is locked by another program (database is locked, waited "
                "0.02 s); nothing was stored"
            )
    finally:
        holder.close()
    async with SQLiteStore(db) as store:
        assert await store.pending_count() == 20


# --- what an operator sees ---------------------------------------------------------------------


def test_once_on_a_corrupted_state_file_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    state = tmp_path / "monitor.db"  # the default: beside the config
    asyncio.run(_filled(state))
    _overwrite(state, "middle")
    config = tmp_path / "monitor.yaml"
    config.write_text(
        "feeds:\n"
        "  - {name: a, url: 'https://example.org/a.xml'}\n"
        "rules:\n"
        "  - {name: r, any: [talks]}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "once", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"state store: state file {state} is corrupted (" in line
    assert line.endswith(FIX_CORRUPT)
