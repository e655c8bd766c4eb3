"""The default store: one SQLite file, used by one process, through one worker thread.

Every call runs on a dedicated single-thread executor, so the event loop never waits on the
disk, calls are serialised without further locking, and the connection only ever sees the
thread that made it. The queries live in `sqlite_feeds`, `sqlite_outbox`, `sqlite_mutes` and
`sqlite_digests`; opening (lock, pragmas, migrations) in `sqlite_schema`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
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
from monitor.store.common import clean_targets
from monitor.store.protocol import Pruned, Recorded
from monitor.store.sqlite_schema import (
    InstanceLock,
    connect,
    load_migrations,
    migrate,
    schema_version,
)

T = TypeVar("T")


class SQLiteStore:
    """A state file at `path`; see `monitor.store.protocol.Store` for the contract.

    `open` takes `<path>.lock` (StoreError naming the holder's pid when another process has
    it), enables WAL with synchronous=FULL and foreign keys, and applies pending migrations.
    Any sqlite3 error (disk full, read-only file, corruption) surfaces as StoreError.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        #: Open for reading beside a running daemon (backtests, status): no instance lock, no
        #: migrations, and every write fails with StoreError.
        self.read_only = read_only
        self._lock = InstanceLock(self.path)
        self._executor: ThreadPoolExecutor | None = None
        # Only ever touched on the worker thread.
        self._conn: sqlite3.Connection | None = None
        self._lifecycle = asyncio.Lock()

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
            executor, self._executor = self._executor, None
            if executor is None:
                return
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

    def _open_sync(self) -> None:
        if self.read_only:
            self._conn = self._open_read_only()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except OSError as exc:
            raise StoreError(f"state file {self.path}: {exc}") from exc
        try:
            conn = connect(self.path)
            try:
                migrate(conn, load_migrations(), str(self.path))
                # We hold the instance lock, so any lease left in the file belongs to a process
                # that died: release them now instead of waiting for them to expire.
                conn.execute("UPDATE feeds SET lease_until = NULL WHERE lease_until IS NOT NULL")
                conn.execute(
                    "UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL"
                )
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            self._lock.release()
            raise StoreError(f"state file {self.path}: {exc}") from exc
        except BaseException:
            self._lock.release()
            raise
        self._conn = conn

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"state file {self.path} does not exist")
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            conn.execute("PRAGMA busy_timeout = 5000")
            version = schema_version(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"state file {self.path}: {exc}") from exc
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
            if not self.read_only:
                self._lock.release()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StoreError(f"state file {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"state file {self.path} is not open")
        try:
            return work(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"state file {self.path}: {exc}") from exc
        except UnicodeEncodeError as exc:
            # Lone surrogates (e.g. from a JSON "\ud800") cannot be stored as UTF-8; the
            # parser is meant to remove them (BAD-INPUTS P09). Fail the unit, not the daemon.
            raise StoreError(f"state file {self.path}: text is not valid Unicode: {exc}") from exc

    # --- feeds -----------------------------------------------------------------------------
    # Arguments are copied before they cross to the worker thread: a caller mutating its
    # list meanwhile cannot change what is written.

    async def sync_feeds(self, feeds: Sequence[FeedSpec], now: datetime) -> None:
        specs = tuple(feeds)
        await self._run(lambda c: feeds_sql.sync_feeds(c, specs, now))

    async def claim_due_feeds(self, now: datetime, limit: int, lease: timedelta) -> list[FeedState]:
        return await self._run(lambda c: feeds_sql.claim_due_feeds(c, now, limit, lease))

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
        await self._run(lambda c: feeds_sql.record_not_modified(c, feed, now, next_poll_at, cache))

    async def record_failure(
        self, feed: str, error: str, *, now: datetime, next_poll_at: datetime, dead: bool = False
    ) -> None:
        await self._run(lambda c: feeds_sql.record_failure(c, feed, error, now, next_poll_at, dead))

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
        await self._run(lambda c: feeds_sql.release_feeds(c, wanted))

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
            lambda c: outbox_sql.claim_deliveries(c, channel, now, limit, lease, skip)
        )

    async def release_deliveries(self, delivery_ids: Sequence[int]) -> None:
        """Drop the claim on deliveries claimed but not tried; unknown ids are ignored."""
        ids = tuple(delivery_ids)
        await self._run(lambda c: outbox_sql.release_deliveries(c, ids))

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
        await self._run(lambda c: outbox_sql.mark_retry(c, delivery_id, error, retry_at, attempt))

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
