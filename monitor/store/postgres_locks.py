"""Session advisory locks on pooled connections, for `PostgresStore.digest_lock` and `lead`.

A session lock lives as long as the connection holding it, so it must never go back to the
pool held: every path that may leave one (a try cut off, an unlock failing) closes the
connection instead, which drops it, and the pool's reset (`unlock_all`) drops any left anyway.
"""

from __future__ import annotations

import asyncio
import time
import weakref

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from monitor.errors import StoreError
from monitor.store.postgres_schema import Conn, Location, describe_error

#: Seconds a pooled connection may sit idle before it is checked again when lent.
IDLE_CHECK = 5.0


async def hold(
    pool: AsyncConnectionPool[Conn], key: tuple[int, int], retry: float, where: Location
) -> Conn:
    """The connection holding the session lock `key`, tried every `retry` seconds; the
    connection goes back to the pool between tries (waiting holds none)."""
    while True:
        conn = await try_lock(pool, key, where)
        if conn is not None:
            return conn
        await asyncio.sleep(retry)


async def try_lock(
    pool: AsyncConnectionPool[Conn], key: tuple[int, int], where: Location
) -> Conn | None:
    """One try: the pooled connection now holding `key`, or None (given back). Whatever
    interrupts the try (cancellation, a lost connection) closes the connection: the lock may
    have been granted, and closing is what surely drops it."""
    try:
        conn = await pool.getconn()
    except psycopg.Error as exc:
        raise StoreError(describe_error(where, exc)) from exc
    try:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
        row = await cursor.fetchone()
        await conn.commit()
    except BaseException as exc:
        await discard(pool, conn)
        if isinstance(exc, psycopg.Error):
            raise StoreError(describe_error(where, exc)) from exc
        raise
    if row is not None and row[0]:
        return conn
    await pool.putconn(conn)
    return None


async def watch(conn: Conn, lost: asyncio.Event, every: float, check_within: float) -> None:
    """Every `every` seconds, a check bounded by `check_within` seconds: one that fails or
    hangs closes the connection (so the lock is surely gone, not held by a connection this
    worker no longer trusts) and sets `lost`."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.wait_for(_ping(conn), timeout=check_within)
        except (psycopg.Error, TimeoutError):
            await conn.close()
            lost.set()
            return


async def let_go(pool: AsyncConnectionPool[Conn], conn: Conn, key: tuple[int, int]) -> None:
    """Give the session lock `key` back, and its connection to the pool. A connection not idle
    (a check or a try cut off midway), or one that fails to unlock, or an unlock interrupted,
    is closed instead: that drops every session lock it held, and the pool replaces it.
    Never raises a psycopg error."""
    try:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
            await conn.commit()
        else:
            await conn.close()
    except psycopg.Error:
        await conn.close()  # the lock went with the connection: nothing left to report
    except BaseException:
        await conn.close()
        raise
    finally:
        await pool.putconn(conn)


class Lending:
    """The pool's `check` and `reset` callbacks, each a round trip only when needed.

    `check`, before a connection is lent: a ping when it has been idle longer than
    `IDLE_CHECK` (one lost meanwhile, e.g. by a PostgreSQL restart, is replaced rather than
    failing the call; one just given back is known good). `reset`, when it is given back: a
    connection that held a session lock (added to `locking`) is unlocked of everything, so no
    session lock stays with a pooled connection whatever path gave it back.
    """

    def __init__(self) -> None:
        self.locking: weakref.WeakSet[Conn] = weakref.WeakSet()
        self._returned: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    async def check(self, conn: Conn) -> None:
        if time.monotonic() - self._returned.get(conn, 0.0) > IDLE_CHECK:
            await AsyncConnectionPool.check_connection(conn)

    async def reset(self, conn: Conn) -> None:
        self._returned[conn] = time.monotonic()
        if conn in self.locking:
            self.locking.discard(conn)
            await conn.execute("SELECT pg_advisory_unlock_all()")
            await conn.commit()


async def discard(pool: AsyncConnectionPool[Conn], conn: Conn) -> None:
    """Close `conn` (dropping any session lock it holds) and hand it to the pool, which
    replaces it."""
    try:
        await conn.close()
    finally:
        await pool.putconn(conn)


async def _ping(conn: Conn) -> None:
    await conn.execute("SELECT 1")
    await conn.commit()
