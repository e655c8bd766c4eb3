"""The scale-out store: one PostgreSQL database shared by several `monitor run` workers.

PostgreSQL is the coordination engine, with no protocol of our own: due feeds and pending
deliveries are claimed with `FOR UPDATE SKIP LOCKED` and a lease (a worker that dies loses its
claims when they expire), `sync_feeds` and migrations run under advisory locks (workers
starting together do not race), and a digest is sent under a session advisory lock per channel
(`digest_lock`). Mutes, digest times and feed health are rows like everything else, so every
worker sees them.

Every call runs in one transaction on a pooled connection (psycopg 3, `psycopg_pool`). Every
psycopg error leaves as a StoreError naming the database without its password; a call that
fails has written nothing (its transaction is rolled back), and a connection lost mid-run is
replaced by the pool on a later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from monitor.errors import StoreError
from monitor.logs import register_secret
from monitor.models import Alert, CacheInfo, Delivery, FeedSpec, FeedState, Item, Retention
from monitor.store import postgres_feeds as feeds_sql
from monitor.store import postgres_health as health_sql
from monitor.store import postgres_locks as locks
from monitor.store import postgres_outbox as outbox_sql
from monitor.store.batch import Batcher
from monitor.store.common import NotModified, clean_alert, clean_targets
from monitor.store.postgres_schema import (
    LOCK_CLASS,
    Conn,
    Location,
    check_version,
    describe_error,
    load_migrations,
    lock_key,
    migrate,
    prepare_schema,
)
from monitor.store.protocol import OutboxStat, Pruned, Recorded, Worker

T = TypeVar("T")

#: Connections per worker: polls, sends and digests run concurrently on one event loop.
POOL_SIZE = 8
#: Seconds to wait for PostgreSQL to accept a connection, or for a free pooled one.
CONNECT_TIMEOUT = 10
#: Seconds between tries for a role another worker leads (`lead`), and between checks that
#: the connection holding a lead is alive.
LEAD_RETRY = 15.0
LEAD_CHECK = 10.0
#: Seconds the liveness check of a lead's connection may take before the lead counts as lost.
LEAD_CHECK_TIMEOUT = 10.0
#: Seconds between tries for a channel's digest lock another worker holds (`digest_lock`).
DIGEST_RETRY = 2.0
#: Every statement's limit: a query stuck on a lock or a dying server fails (and the call
#: with it) instead of holding a pooled connection for good.
STATEMENT_TIMEOUT = "60s"
#: libpq settings noticing a silently dead server or network within about half a minute
#: (TCP keepalives, and a bound on unacknowledged writes).
KEEPALIVE: dict[str, str | int | None] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}
#: Tries of one call whose transaction PostgreSQL chose as a deadlock victim (or could not
#: serialise): rolled back, so run again whole.
_TRIES = 2


def split_state(state: str) -> tuple[str, str | None]:
    """A `state:` URL as (libpq DSN, schema): monitor's own `schema` query parameter names
    the schema the tables live in (created if missing); libpq would refuse it."""
    parts = urlsplit(state)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    rest = [(key, value) for key, value in query if key != "schema"]
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    if schemas and not schemas[-1]:
        raise StoreError("state names an empty schema: use ?schema=NAME or leave it out")
    return dsn, schemas[-1] if schemas else None


class PostgresStore:
    """The state in PostgreSQL at `dsn`; see `monitor.store.protocol.Store` for the contract.

    `schema`: the schema holding the tables (created if missing); None keeps the DSN's
    search_path (usually "public"). `open` connects (StoreError saying why when PostgreSQL is
    unreachable or refuses), applies pending migrations under an advisory lock, then opens a
    pool of `POOL_SIZE` connections. Unlike SQLite there is no instance lock: many workers
    share one database. `read_only` (status, previews beside running workers): no migration,
    every write fails; `shared` (a short operator write such as `monitor feeds --retry`): no
    migration; both need the schema of this version in place.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        read_only: bool = False,
        shared: bool = False,
        pool_size: int = POOL_SIZE,
        application_name: str = "monitor",
    ) -> None:
        self._dsn = dsn
        self.where = Location.of(dsn)
        if self.where.password:  # however the DSN is logged, its password is not
            register_secret(self.where.password)
        self.schema = schema
        self.read_only = read_only
        self.shared = shared and not read_only
        #: How the workers' connections show in pg_stat_activity.
        self.application_name = application_name
        # A lead holds one connection for good, and a digest lock one while it waits.
        self._pool_size = max(pool_size, 3)
        #: Seconds between tries for a role another worker leads; between liveness checks.
        self.lead_retry, self.lead_check = LEAD_RETRY, LEAD_CHECK
        self._pool: AsyncConnectionPool[Conn] | None = None
        #: The schema found at open: lock keys and the pool's search_path use it.
        self._schema = ""
        self._lifecycle = asyncio.Lock()
        self._lending = locks.Lending()
        self._not_modified: Batcher[NotModified] = Batcher(self._record_not_modified)
        #: Seconds between tries for a digest lock another worker holds.
        self.digest_retry = DIGEST_RETRY
        #: Seconds a lead's liveness check may take.
        self.lead_check_timeout = LEAD_CHECK_TIMEOUT
        #: This store's claims carry this id (`lease_owner`): see the Store docstring.
        self.owner = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"PostgresStore({self.where.label!r}, schema={self.schema!r})"

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lifecycle:
            if self._pool is not None:
                return
            self._schema = await self._prepare()
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                kwargs=self._connect_kwargs(),
                configure=self._configure,
                # A connection idle for a while is checked before it is lent (one lost while
                # idle is replaced, not handed to a call that would fail); one that held a
                # session lock is unlocked when given back. Both cost a round trip, so not
                # on every call.
                check=self._lending.check,
                reset=self._lending.reset,
                timeout=CONNECT_TIMEOUT,
                name="monitor-state",
                open=False,
            )
            try:
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            except BaseException as exc:
                await pool.close()
                if isinstance(exc, psycopg.Error):
                    raise StoreError(describe_error(self.where, exc, connecting=True)) from None
                raise
            self._pool = pool

    async def close(self) -> None:
        async with self._lifecycle:
            if self._pool is not None:
                await self._not_modified.drain()  # writes submitted before close are kept
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _connect_kwargs(self) -> dict[str, str | int | None]:
        return {
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": self.application_name,
            **KEEPALIVE,
        }

    async def _prepare(self) -> str:
        """Connect once (the error says exactly why when it fails), create the schema and
        migrate it, or check it for a read-only or shared open; returns the schema."""
        try:
            conninfo = make_conninfo(self._dsn, **self._connect_kwargs())
            conn = await psycopg.AsyncConnection.connect(conninfo)
        except psycopg.Error as exc:
            # `from None`: libpq's own message is in ours, scrubbed; the chained one is not.
            raise StoreError(describe_error(self.where, exc, connecting=True)) from None
        try:
            readonly = self.read_only or self.shared
            schema = await prepare_schema(conn, self.schema, create=not readonly)
            migrations = load_migrations()
            if readonly:
                await check_version(conn, len(migrations), self.where, schema)
            else:
                await migrate(conn, migrations, self.where, schema)
            return schema
        except psycopg.Error as exc:
            raise StoreError(describe_error(self.where, exc)) from exc
        finally:
            await conn.close()

    async def _configure(self, conn: Conn) -> None:
        """Every pooled connection: the schema, UTC, and read-only when asked."""
        settings = [
            sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)),
            sql.SQL("SET TIME ZONE 'UTC'"),
            sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)),
        ]
        if self.read_only:
            settings.append(sql.SQL("SET default_transaction_read_only = on"))
        await conn.execute(sql.SQL("; ").join(settings))
        await conn.commit()

    def _require(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work` in one transaction on a pooled connection: committed when it returns,
        rolled back when it raises; psycopg errors become StoreError. A transaction chosen as
        a deadlock victim (or failing to serialise) wrote nothing and is run once more."""
        pool = self._require()
        tries = 1
        try:
            while True:
                try:
                    async with pool.connection() as conn:
                        return await work(conn)
                except (
                    psycopg.errors.DeadlockDetected,
                    psycopg.errors.SerializationFailure,
                ):
                    if tries >= _TRIES:
                        raise
                    tries += 1
        except psycopg.Error as exc:
            raise StoreError(describe_error(self.where, exc)) from exc
        except UnicodeEncodeError as exc:
            # Lone surrogates cannot be sent as UTF-8; the parser is meant to remove them.
            raise StoreError(
                f"PostgreSQL state {self.where.label}: text is not valid Unicode: {exc}"
            ) from exc

    # --- feeds -----------------------------------------------------------------------------

    async def sync_feeds(self, feeds: Sequence[FeedSpec], now: datetime) -> None:
        specs = tuple(feeds)
        lock = (LOCK_CLASS, lock_key("sync", self._schema))
        await self._run(lambda c: feeds_sql.sync_feeds(c, specs, now, lock))

    async def claim_due_feeds(self, now: datetime, limit: int, lease: timedelta) -> list[FeedState]:
        return await self._run(
            lambda c: feeds_sql.claim_due_feeds(c, now, limit, lease, self.owner)
        )

    async def feed_state(self, name: str) -> FeedState | None:
        return await self._run(lambda c: feeds_sql.get_feed_state(c, name))

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
        # Converted before the transaction: a bad input fails before anything is written.
        kept, cleaned, chosen = (
            tuple(items),
            [clean_alert(a) for a in alerts],
            clean_targets(targets),
        )
        return await self._run(
            lambda c: feeds_sql.record_items(
                c,
                feed,
                kept,
                cleaned,
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
        # The 304s finishing at the same moment share one transaction and one statement (a
        # warm cycle is thousands of them): see `batch.Batcher`.
        await self._not_modified.submit((feed, now, next_poll_at, cache))

    async def _record_not_modified(
        self, polls: Sequence[NotModified]
    ) -> Sequence[StoreError | None]:
        polls = tuple(polls)
        try:
            return await self._run(lambda c: feeds_sql.record_not_modified(c, polls, self.owner))
        except StoreError:
            # Nothing of the batch was written: hand the claims back at once (the feeds are
            # polled again now) rather than keep them for a lease nobody will finish.
            names = tuple(dict.fromkeys(poll[0] for poll in polls))
            with contextlib.suppress(StoreError):
                await self._run(lambda c: feeds_sql.release_feeds(c, names, self.owner))
            raise

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
        clean = None if alert is None else clean_alert(alert)
        chosen = clean_targets(targets)
        return await self._run(
            lambda c: health_sql.record_notice(c, feed, kind, clean, now, chosen)
        )

    async def seen_alike(self, feed: str, items: Sequence[Item]) -> set[str]:
        wanted = list(items)
        return await self._run(lambda c: health_sql.seen_alike(c, feed, wanted))

    async def release_feeds(self, names: Sequence[str]) -> None:
        wanted = tuple(names)
        if wanted:
            await self._run(lambda c: feeds_sql.release_feeds(c, wanted, self.owner))
        else:
            self._require()

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

    async def outbox_stats(self, now: datetime) -> list[OutboxStat]:
        return await self._run(outbox_sql.outbox_stats)

    async def retry_due_count(self, channel: str, now: datetime) -> int:
        return await self._run(lambda c: health_sql.retry_due_count(c, channel, now))

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
        return await self._run(lambda c: health_sql.last_digest(c, channel))

    async def set_last_digest(self, channel: str, at: datetime) -> None:
        await self._run(lambda c: health_sql.set_last_digest(c, channel, at))

    @contextlib.asynccontextmanager
    async def digest_lock(self, channel: str) -> AsyncIterator[None]:
        """A session advisory lock per channel, tried every `digest_retry` seconds until this
        worker gets it (a pooled connection is held only while the lock is), held on that
        connection while the block runs: the workers' digests of one channel run one after
        the other. Released when the block ends, or by PostgreSQL when the holder's
        connection dies."""
        pool = self._require()
        key = (LOCK_CLASS, lock_key("digest", self._schema, channel))
        conn = await locks.hold(pool, key, self.digest_retry, self.where)
        self._lending.locking.add(conn)
        try:
            yield
        finally:
            await locks.let_go(pool, conn, key)

    @contextlib.asynccontextmanager
    async def lead(self, role: str) -> AsyncIterator[asyncio.Event]:
        """A session advisory lock for `role`, tried every `lead_retry` seconds until this
        worker gets it, on a connection of its own checked every `lead_check` seconds: when
        that connection dies (or a check fails or hangs, and it is closed), PostgreSQL has
        dropped the lock (another worker may take it), and `lost` is set."""
        pool = self._require()
        key = (LOCK_CLASS, lock_key("lead", self._schema, role))
        conn = await locks.hold(pool, key, self.lead_retry, self.where)
        self._lending.locking.add(conn)
        lost = asyncio.Event()
        watch = asyncio.get_running_loop().create_task(
            locks.watch(conn, lost, self.lead_check, self.lead_check_timeout)
        )
        try:
            yield lost
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await locks.let_go(pool, conn, key)

    # --- alerts ----------------------------------------------------------------------------

    async def alert_count(self, since: datetime) -> int:
        return await self._run(lambda c: outbox_sql.alert_count(c, since))

    # --- mutes -----------------------------------------------------------------------------

    async def mute(self, rule: str, until: datetime, *, now: datetime) -> None:
        await self._run(lambda c: health_sql.mute(c, rule, until, now))

    async def unmute(self, rule: str) -> bool:
        return await self._run(lambda c: health_sql.unmute(c, rule))

    async def mutes(self, now: datetime) -> dict[str, datetime]:
        return await self._run(lambda c: health_sql.mutes(c, now))

    # --- housekeeping ----------------------------------------------------------------------

    async def prune(self, now: datetime, retention: Retention) -> Pruned:
        lock = (LOCK_CLASS, lock_key("prune", self._schema))
        return await self._run(lambda c: outbox_sql.prune(c, now, retention, lock))

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
        return await self._run(lambda c: health_sql.release_claims(c, channel))

    async def claimed_count(self, channel: str, now: datetime) -> int:
        return await self._run(lambda c: health_sql.claimed_count(c, channel, now))
