"""The default store: one SQLite file, used by one process, through one worker thread.

Every call runs on a dedicated single-thread executor, so the event loop never waits on the
disk, calls are serialised without further locking, and the connection only ever sees the
thread that made it. The queries live in `sqlite_feeds`, `sqlite_outbox`, `sqlite_mutes` and
`sqlite_digests`; opening (lock, pragmas, migrations) in `sqlite_schema`.

Every sqlite3 error leaves as a StoreError naming the file and what to do (BAD-INPUTS S05,
S06): disk full, read-only, corrupted, locked by another program. A call that fails has
written nothing: its transaction is rolled back, so no alert is ever recorded as sent, and no
poll as done, when the write did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from monitor.errors import StoreError
from monitor.models import Alert, CacheInfo, Delivery, FeedSpec, FeedState, Item, Retention
from monitor.store import sqlite_digests as digests_sql
from monitor.store import sqlite_feeds as feeds_sql
from monitor.store import sqlite_health as health_sql
from monitor.store import sqlite_mutes as mutes_sql
from monitor.store import sqlite_outbox as outbox_sql
from monitor.store.batch import Batcher
from monitor.store.common import NotModified, clean_targets
from monitor.store.protocol import OutboxStat, Pruned, Recorded, Worker
from monitor.store.sqlite_schema import (
    InstanceLock,
    connect,
    load_migrations,
    migrate,
    schema_version,
)

T = TypeVar("T")

#: A call that meets SQLITE_BUSY having written nothing runs again, up to this many tries in
#: all, each waiting up to busy_timeout (BAD-INPUTS S05: busy_timeout plus retry). The retry
#: also covers what busy_timeout does not wait for (a stale WAL snapshot, WAL recovery).
_BUSY_TRIES = 3

_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FIX_CORRUPT = (
    "restore it from a backup, or move it aside (with any -wal and -shm file beside it) "
    "to start with an empty state"
)


def _codes(exc: sqlite3.Error) -> tuple[int, int]:
    """(extended, primary) SQLite result code; (0, 0) for errors of the sqlite3 module itself
    (a closed connection, a wrong parameter), which carry none."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return 0, 0
    return code, code & 0xFF


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _waited(busy_ms: int | None, tries: int) -> str:
    if busy_ms is None:
        return ""
    each = f"{busy_ms / 1000:g} s"
    return f", waited {tries} × {each}" if tries > 1 else f", waited {each}"


def describe_sqlite_error(
    path: Path,
    exc: sqlite3.Error,
    *,
    read_only: bool = False,
    busy_ms: int | None = None,
    tries: int = 1,
) -> str:
    """What went wrong with the state file at `path` and what to do, in one line.

    `read_only`: the store was opened read-only on purpose (status, backtests); `busy_ms`
    and `tries`: how long a locked file was waited for.
    """
    known = _describe_known(path, exc, read_only=read_only, busy_ms=busy_ms, tries=tries)
    return known or f"state file {path}: {_one_line(exc)}"


def _describe_known(
    path: Path, exc: sqlite3.Error, *, read_only: bool, busy_ms: int | None, tries: int
) -> str | None:
    """The message for the failures an operator can act on; None for the others (a bug, a
    constraint), which are shown as SQLite words them."""
    extended, primary = _codes(exc)
    detail = _one_line(exc)
    if primary == sqlite3.SQLITE_NOTADB:
        return (
            f"state file {path} is not a SQLite database, or is corrupted ({detail}): check "
            f"that `state:` in the config names the right file; otherwise {_FIX_CORRUPT}"
        )
    if primary == sqlite3.SQLITE_CORRUPT:
        return f"state file {path} is corrupted ({detail}): {_FIX_CORRUPT}"
    if primary == sqlite3.SQLITE_FULL:
        return (
            f"state file {path}: disk full ({detail}); nothing was stored: "
            "free space on the disk that holds it"
        )
    if extended == sqlite3.SQLITE_READONLY_DBMOVED:
        return (
            f"state file {path} was moved or deleted while in use ({detail}); nothing was "
            "stored: put it back, or restart monitor"
        )
    if primary == sqlite3.SQLITE_READONLY and read_only:
        return f"state file {path} is opened read-only by this command: it cannot change it"
    if primary == sqlite3.SQLITE_READONLY:
        return _read_only(path, detail)
    if primary in _BUSY_CODES:
        return (
            f"state file {path} is locked by another program ({detail}"
            f"{_waited(busy_ms, tries)}); nothing was stored: stop whatever holds it open "
            "(an sqlite3 shell, a backup or copy tool)"
        )
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return (
            f"state file {path} cannot be opened ({detail}): check that its directory exists "
            "and that the user running monitor may read and write it and the file"
        )
    if primary == sqlite3.SQLITE_IOERR:
        name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR")
        return (
            f"state file {path}: I/O error ({detail}, {name}); the last change may not have "
            "been stored: check the disk and its file system (dmesg)"
        )
    return None


def _read_only(path: Path, detail: str) -> str:
    return (
        f"state file {path} is read-only ({detail}); nothing was stored: let the user "
        "running monitor write the file, its directory and any -wal and -shm file beside it"
    )


def _describe_os_error(path: Path, exc: OSError) -> str:
    """Creating the state file's directory or lock file failed."""
    where = exc.filename or path.parent
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"state file {path}: permission denied on {where}: let the user running monitor "
            f"create and write files in {path.parent}"
        )
    if exc.errno == errno.EROFS:
        return f"state file {path}: {where} is on a read-only file system"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"state file {path}: disk full ({exc.strerror}): free space on the disk"
    return f"state file {path}: {exc}"


def _roll_back(conn: sqlite3.Connection) -> None:
    """End a transaction a failed call left open (SQLite may have ended it already)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SQLiteStore:
    """A state file at `path`; see `monitor.store.protocol.Store` for the contract.

    `open` takes `<path>.lock` (StoreError naming the holder's pid when another process has
    it), enables WAL with synchronous=FULL, busy_timeout and foreign keys, refuses a corrupted
    file (`PRAGMA quick_check`), and applies pending migrations. Any sqlite3 error (disk full,
    read-only file, corruption, a lock held by another program) surfaces as StoreError saying
    so; a call that fails has changed nothing. Once corruption is seen, every later call is
    refused with that error: nothing more is written into a damaged file.
    """

    #: Test hook: busy_timeout in ms for the connection, instead of `connect`'s.
    _busy_timeout_ms: int | None = None

    def __init__(self, path: str | Path, *, read_only: bool = False, shared: bool = False) -> None:
        self.path = Path(path)
        #: Open for reading beside a running daemon (backtests, status): no instance lock, no
        #: migrations, and every write fails with StoreError.
        self.read_only = read_only
        #: Open for a short operator write beside a running daemon (`monitor feeds --retry`):
        #: no instance lock, no migrations (the file must have this version's schema), no
        #: release of leases; SQLite's own locking serialises the writes.
        self.shared = shared and not read_only
        self._lock = InstanceLock(self.path)
        self._executor: ThreadPoolExecutor | None = None
        # Only ever touched on the worker thread.
        self._conn: sqlite3.Connection | None = None
        self._busy_ms: int | None = None
        #: Set when the file was found corrupted: every later call fails with this message.
        self._broken: str | None = None
        self._lifecycle = asyncio.Lock()
        self._not_modified: Batcher[NotModified] = Batcher(self._record_not_modified)
        #: This store's claims carry this id (see the Store docstring).
        self.owner = uuid.uuid4().hex

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lifecycle:
            if self._executor is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monitor-sqlite")
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
            except BaseException:
                # On cancellation _open_sync may still complete: undo it on the same thread,
                # after it, and let the thread end by itself instead of blocking the loop.
                executor.submit(self._close_sync)
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    async def close(self) -> None:
        async with self._lifecycle:
            if self._executor is None:
                return
            await self._not_modified.drain()  # writes submitted before close are kept
            executor, self._executor = self._executor, None
            assert executor is not None  # open and close both hold the lifecycle lock
            try:
                # Queued behind every call already submitted, so those finish first.
                await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
            finally:
                executor.shutdown(wait=True)

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _error(self, exc: sqlite3.Error, *, tries: int = 1) -> StoreError:
        """The StoreError for `exc` (raise it `from exc`); remembers a corrupted file."""
        message = describe_sqlite_error(
            self.path, exc, read_only=self.read_only, busy_ms=self._busy_ms, tries=tries
        )
        if _codes(exc)[1] in _CORRUPT_CODES:
            self._broken = message
        return StoreError(message)

    def _open_sync(self) -> None:
        self._broken = None
        if self.read_only:
            self._conn = self._open_read_only()
            return
        if self.shared:
            self._conn = self._open_shared()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except OSError as exc:
            raise StoreError(_describe_os_error(self.path, exc)) from exc
        try:
            self._check_writable()
            conn = connect(self.path)
            try:
                self._configure(conn)
                self._check_intact(conn)
                migrate(conn, load_migrations(), str(self.path))
                # We hold the instance lock, so any lease left in the file belongs to a process
                # that died: release them now instead of waiting for them to expire.
                conn.execute(
                    "UPDATE feeds SET lease_until = NULL, lease_owner = NULL"
                    " WHERE lease_until IS NOT NULL OR lease_owner IS NOT NULL"
                )
                conn.execute(
                    "UPDATE deliveries SET lease_until = NULL, lease_owner = NULL"
                    " WHERE lease_until IS NOT NULL OR lease_owner IS NOT NULL"
                )
            except BaseException:
                _roll_back(conn)
                conn.close()
                raise
        except sqlite3.Error as exc:
            self._lock.release()
            raise self._error(exc) from exc
        except StoreError as exc:
            self._lock.release()
            # `connect` and `migrate` word their own errors; the ones this module knows better
            # (corrupted, disk full, read-only, locked) are said the same way as everywhere.
            cause = exc.__cause__
            if isinstance(cause, sqlite3.Error):
                known = _describe_known(
                    self.path, cause, read_only=False, busy_ms=self._busy_ms, tries=1
                )
                if known is not None:
                    raise StoreError(known) from cause
            raise
        except BaseException:
            self._lock.release()
            raise
        self._conn = conn

    def _check_writable(self) -> None:
        """Refuse a file or directory this user may not write before SQLite opens it: it
        would open it read-only, fail the first write, and leave behind -wal and -shm files
        as read-only as the file, which then keep failing once the file is fixed."""
        for target in (self.path, self.path.parent):
            if target.exists() and not os.access(target, os.W_OK):
                raise StoreError(_read_only(self.path, f"no write permission on {target}"))

    def _configure(self, conn: sqlite3.Connection) -> None:
        if self._busy_timeout_ms is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        self._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])

    def _check_intact(self, conn: sqlite3.Connection) -> None:
        """Refuse a corrupted file before anything is written into it.

        Damage in pages that opening does not read would otherwise surface only when a poll
        or a send reaches them. quick_check reads every page once (about 0.1 s per 100 MB);
        an error it cannot even report comes as SQLITE_CORRUPT, handled by the caller.
        """
        [found] = conn.execute("PRAGMA quick_check(1)").fetchone()  # the first problem only
        if found != "ok":
            problem = _one_line(str(found).replace("*** in database main ***", ""))
            self._broken = (
                f"state file {self.path} is corrupted (quick_check: {problem}): {_FIX_CORRUPT}"
            )
            raise StoreError(self._broken)

    def _open_shared(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"state file {self.path} does not exist")
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return self._check_version(conn)

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"state file {self.path} does not exist")
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        return self._check_version(conn)

    def _check_version(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """`conn`, configured, if the file has this version's schema; else closed, and a
        StoreError saying how to migrate it."""
        try:
            self._configure(conn)
            version = schema_version(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        known = max((m.version for m in load_migrations()), default=0)
        if version != known:
            conn.close()
            raise StoreError(
                f"state file {self.path} has schema {version}; this version reads {known} "
                "(run the daemon once to migrate it)"
            )
        return conn

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            if not self.read_only and not self.shared:
                self._lock.release()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StoreError(f"state file {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the connection; on the worker thread.

        A failed call leaves no transaction open and raises StoreError. When the file is
        locked (SQLITE_BUSY after busy_timeout) and the call had changed no row, it is run
        again, up to `_BUSY_TRIES` in all: it was never half-done, so it is never half-redone.
        """
        conn = self._conn
        if conn is None:
            raise StoreError(f"state file {self.path} is not open")
        if self._broken is not None:
            raise StoreError(self._broken)
        tries = 1
        while True:
            changes = conn.total_changes
            try:
                return work(conn)
            except sqlite3.Error as exc:
                _roll_back(conn)
                busy = _codes(exc)[1] in _BUSY_CODES
                if busy and tries < _BUSY_TRIES and conn.total_changes == changes:
                    tries += 1
                    continue
                if busy:  # say how long it really waited
                    with contextlib.suppress(sqlite3.Error):
                        self._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
                raise self._error(exc, tries=tries) from exc
            except UnicodeEncodeError as exc:
                _roll_back(conn)
                # Lone surrogates (e.g. from a JSON "\ud800") cannot be stored as UTF-8; the
                # parser is meant to remove them (BAD-INPUTS P09). Fail the unit, not the daemon.
                raise StoreError(
                    f"state file {self.path}: text is not valid Unicode: {exc}"
                ) from exc
            except BaseException:
                _roll_back(conn)
                raise

    # --- feeds -----------------------------------------------------------------------------
    # Arguments are copied before they cross to the worker thread: a caller mutating its
    # list meanwhile cannot change what is written.

    async def sync_feeds(self, feeds: Sequence[FeedSpec], now: datetime) -> None:
        specs = tuple(feeds)
        await self._run(lambda c: feeds_sql.sync_feeds(c, specs, now))

    async def claim_due_feeds(self, now: datetime, limit: int, lease: timedelta) -> list[FeedState]:
        return await self._run(
            lambda c: feeds_sql.claim_due_feeds(c, now, limit, lease, self.owner)
        )

    async def feed_state(self, name: str) -> FeedState | None:
        return await self._run(lambda c: feeds_sql.feed_state(c, name))

    async def feed_states(self) -> list[FeedState]:
        return await self._run(feeds_sql.feed_states)

    async def unseen(self, feed: str, keys: Sequence[str]) -> set[str]:
        wanted = tuple(keys)
        return await self._run(lambda c: feeds_sql.unseen(c, feed, wanted))

    async def record_items(
        self,
        feed: str,
        items: Sequence[Item],
        alerts: Sequence[Alert],
        *,
        cache: CacheInfo,
        now: datetime,
        next_poll_at: datetime,
        warning: str = "",
        targets: Mapping[str, Sequence[str]] | None = None,
        ttl: int | None = None,
    ) -> Recorded:
        items, alerts = tuple(items), tuple(alerts)
        # Cleaned (copied) here, so a str mistaken for a list of targets fails on this side.
        chosen = clean_targets(targets)
        return await self._run(
            lambda c: feeds_sql.record_items(
                c,
                feed,
                items,
                alerts,
                cache=cache,
                now=now,
                next_poll_at=next_poll_at,
                warning=warning,
                targets=chosen,
                ttl=ttl,
                owner=self.owner,
            )
        )

    async def record_not_modified(
        self,
        feed: str,
        *,
        now: datetime,
        next_poll_at: datetime,
        cache: CacheInfo | None = None,
    ) -> None:
        # The 304s finishing at the same moment share one transaction (a warm cycle is
        # thousands of them, and each commit is an fsync): see `batch.Batcher`.
        await self._not_modified.submit((feed, now, next_poll_at, cache))

    async def _record_not_modified(
        self, polls: Sequence[NotModified]
    ) -> Sequence[StoreError | None]:
        polls = tuple(polls)
        return await self._run(lambda c: feeds_sql.record_not_modified(c, polls, self.owner))

    async def record_failure(
        self, feed: str, error: str, *, now: datetime, next_poll_at: datetime, dead: bool = False
    ) -> None:
        await self._run(
            lambda c: feeds_sql.record_failure(c, feed, error, now, next_poll_at, dead, self.owner)
        )

    async def revive_feeds(self, names: Sequence[str], now: datetime) -> list[str]:
        wanted = list(names)
        return await self._run(lambda c: health_sql.revive_feeds(c, wanted, now))

    async def record_notice(
        self,
        feed: str,
        kind: str,
        alert: Alert | None,
        *,
        now: datetime,
        targets: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        return await self._run(
            lambda c: health_sql.record_notice(c, feed, kind, alert, now, targets)
        )

    async def seen_alike(self, feed: str, items: Sequence[Item]) -> set[str]:
        wanted = list(items)
        return await self._run(lambda c: health_sql.seen_alike(c, feed, wanted))

    async def release_feeds(self, names: Sequence[str]) -> None:
        wanted = tuple(names)
        await self._run(lambda c: feeds_sql.release_feeds(c, wanted, self.owner))

    # --- items -----------------------------------------------------------------------------

    async def recent_items(self, since: datetime, feed: str | None = None) -> list[Item]:
        return await self._run(lambda c: feeds_sql.recent_items(c, since, feed))

    # --- deliveries ------------------------------------------------------------------------

    async def claim_deliveries(
        self,
        channel: str,
        now: datetime,
        limit: int,
        lease: timedelta,
        skip_targets: Collection[str] = (),
    ) -> list[Delivery]:
        skip = frozenset(skip_targets)
        return await self._run(
            lambda c: outbox_sql.claim_deliveries(c, channel, now, limit, lease, skip, self.owner)
        )

    async def release_deliveries(self, delivery_ids: Sequence[int]) -> None:
        """Drop the claim on deliveries claimed but not tried; unknown ids are ignored."""
        ids = tuple(delivery_ids)
        await self._run(lambda c: outbox_sql.release_deliveries(c, ids, self.owner))

    async def extend_claims(
        self, delivery_ids: Sequence[int], now: datetime, lease: timedelta
    ) -> list[int]:
        ids = tuple(delivery_ids)
        return await self._run(lambda c: outbox_sql.extend_claims(c, ids, now, lease, self.owner))

    async def mark_sent(self, delivery_id: int, now: datetime) -> None:
        await self._run(lambda c: outbox_sql.mark_sent(c, delivery_id, now))

    async def mark_retry(
        self,
        delivery_id: int,
        error: str,
        *,
        now: datetime,
        retry_at: datetime,
        attempt: bool = True,
    ) -> None:
        await self._run(
            lambda c: outbox_sql.mark_retry(c, delivery_id, error, retry_at, attempt, self.owner)
        )

    async def mark_failed(self, delivery_id: int, error: str, *, now: datetime) -> None:
        await self._run(lambda c: outbox_sql.mark_failed(c, delivery_id, error))

    async def pending_count(self, channel: str | None = None) -> int:
        return await self._run(lambda c: outbox_sql.pending_count(c, channel))

    async def pending_by_target(self, channel: str) -> dict[str, int]:
        return await self._run(lambda c: outbox_sql.pending_by_target(c, channel))

    async def deliveries(
        self, channel: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        return await self._run(lambda c: outbox_sql.deliveries(c, channel, status, limit))

    async def retry_due_count(self, channel: str, now: datetime) -> int:
        return await self._run(lambda c: digests_sql.retry_due_count(c, channel, now))

    async def outbox_stats(self, now: datetime) -> list[OutboxStat]:
        return await self._run(outbox_sql.outbox_stats)

    # --- workers ---------------------------------------------------------------------------

    async def check_in(
        self, worker: str, config: str, *, started_at: datetime, now: datetime
    ) -> list[Worker]:
        return await self._run(
            lambda c: health_sql.check_in(c, worker, config, started_at=started_at, now=now)
        )

    async def check_out(self, worker: str) -> None:
        await self._run(lambda c: health_sql.check_out(c, worker))

    # --- digests ---------------------------------------------------------------------------

    async def last_digest(self, channel: str) -> datetime | None:
        return await self._run(lambda c: digests_sql.last_digest(c, channel))

    async def set_last_digest(self, channel: str, at: datetime) -> None:
        await self._run(lambda c: digests_sql.set_last_digest(c, channel, at))

    # --- alerts ----------------------------------------------------------------------------

    async def alert_count(self, since: datetime) -> int:
        return await self._run(lambda c: outbox_sql.alert_count(c, since))

    # --- mutes -----------------------------------------------------------------------------

    async def mute(self, rule: str, until: datetime, *, now: datetime) -> None:
        await self._run(lambda c: mutes_sql.mute(c, rule, until, now))

    async def unmute(self, rule: str) -> bool:
        return await self._run(lambda c: mutes_sql.unmute(c, rule))

    async def mutes(self, now: datetime) -> dict[str, datetime]:
        return await self._run(lambda c: mutes_sql.mutes(c, now))

    # --- housekeeping ----------------------------------------------------------------------

    async def prune(self, now: datetime, retention: Retention) -> Pruned:
        return await self._run(lambda c: outbox_sql.prune(c, now, retention))

    # --- digests: outbox operations --------------------------------------------------------

    async def mark_sent_many(self, delivery_ids: Sequence[int], now: datetime) -> None:
        ids = tuple(delivery_ids)
        await self._run(lambda c: outbox_sql.mark_sent_many(c, ids, now))

    async def due_deliveries(
        self,
        channel: str,
        now: datetime,
        limit: int,
        skip_targets: Collection[str] = (),
    ) -> list[Delivery]:
        skip = frozenset(skip_targets)
        return await self._run(lambda c: outbox_sql.due_deliveries(c, channel, now, limit, skip))

    async def release_claims(self, channel: str) -> int:
        return await self._run(lambda c: digests_sql.release_claims(c, channel))

    async def claimed_count(self, channel: str, now: datetime) -> int:
        return await self._run(lambda c: digests_sql.claimed_count(c, channel, now))

    @contextlib.asynccontextmanager
    async def digest_lock(self, channel: str) -> AsyncIterator[None]:
        """Nothing to hold: the instance lock keeps every other daemon off the file (a
        read-only or shared open sends no digest)."""
        if self._executor is None:
            raise StoreError(f"state file {self.path} is not open")
        yield

    @contextlib.asynccontextmanager
    async def lead(self, role: str) -> AsyncIterator[asyncio.Event]:
        """Granted at once: the instance lock keeps every other daemon off the file."""
        if self._executor is None:
            raise StoreError(f"state file {self.path} is not open")
        yield asyncio.Event()
