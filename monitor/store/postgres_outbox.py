"""PostgreSQL queries for the delivery outbox, alert counts and retention.

A claim locks the deliveries it takes (`FOR UPDATE SKIP LOCKED`) and leases them in the same
transaction, so two workers dispatching one channel never get the same delivery.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from monitor.errors import StoreError
from monitor.models import Delivery, Retention
from monitor.store import rows
from monitor.store.codec import utc
from monitor.store.common import LAST_SEEN_REFRESH, clean_text, cutoff
from monitor.store.postgres_feeds import opt_dt
from monitor.store.postgres_schema import Conn
from monitor.store.protocol import OutboxStat, Pruned

_DELIVERY_SELECT = rows.DELIVERY_SELECT


def _delivery(row: Any) -> Delivery:
    return rows.delivery(row, opt_dt)


async def _require_delivery(conn: Conn, delivery_id: int) -> None:
    cursor = await conn.execute("SELECT 1 FROM deliveries WHERE id = %s", (delivery_id,))
    if await cursor.fetchone() is None:
        raise StoreError(f"unknown delivery {delivery_id}")


async def claim_deliveries(
    conn: Conn,
    channel: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    skip_targets: Collection[str],
    owner: str,
) -> list[Delivery]:
    """Rows another worker is claiming at this moment are skipped, not waited for."""
    now = utc(now)
    cursor = await conn.execute(
        f"WITH {_due_ids(lock=True)}, claimed AS ("
        " UPDATE deliveries AS d SET lease_until = %(until)s, lease_owner = %(owner)s"
        " FROM due WHERE d.id = due.id RETURNING d.*)"
        f" {_DELIVERY_SELECT.replace('deliveries AS d', 'claimed AS d')}"
        " ORDER BY d.created_at, d.id",
        {**_due_params(channel, now, limit, skip_targets), "until": now + lease, "owner": owner},
    )
    return [_delivery(row) for row in await cursor.fetchall()]


async def due_deliveries(
    conn: Conn, channel: str, now: datetime, limit: int, skip_targets: Collection[str]
) -> list[Delivery]:
    cursor = await conn.execute(
        f"WITH {_due_ids(lock=False)} {_DELIVERY_SELECT} JOIN due ON due.id = d.id"
        " ORDER BY d.created_at, d.id",
        _due_params(channel, utc(now), limit, skip_targets),
    )
    return [_delivery(row) for row in await cursor.fetchall()]


def _due_ids(*, lock: bool) -> str:
    """CTEs ending in `due(id)`: the ids `claim_deliveries` claims (and `due_deliveries`
    lists), the `limit` oldest of the deliveries never tried and of those whose retry time
    has come, each read from its own index (deliveries_fresh, deliveries_retry): a queue of
    deliveries waiting for a retry is not walked on every claim. With `lock`, each candidate
    row is locked, skipping the ones another transaction holds."""
    locking = " FOR UPDATE SKIP LOCKED" if lock else ""
    common = (
        " FROM deliveries WHERE channel = %(channel)s AND status = 'pending'"
        " AND target <> ALL(%(skip)s::text[])"
        " AND (lease_until IS NULL OR lease_until <= %(now)s)"
    )
    return (
        f"fresh AS (SELECT id, created_at{common} AND next_attempt_at IS NULL"
        f" ORDER BY created_at, id LIMIT %(limit)s{locking}),"
        f" retry AS (SELECT id, created_at{common} AND next_attempt_at <= %(now)s"
        f" ORDER BY created_at, id LIMIT %(limit)s{locking}),"
        " due AS (SELECT id FROM (SELECT * FROM fresh UNION ALL SELECT * FROM retry) AS both_"
        " ORDER BY created_at, id LIMIT %(limit)s)"
    )


def _due_params(
    channel: str, now: datetime, limit: int, skip_targets: Collection[str]
) -> dict[str, object]:
    return {
        "channel": channel,
        "skip": sorted(set(skip_targets)),
        "now": now,
        "limit": max(limit, 0),
    }


async def release_deliveries(conn: Conn, delivery_ids: Sequence[int], owner: str) -> None:
    """Only this store's claims (and claims of no one's, from an older version)."""
    if delivery_ids:
        await conn.execute(
            "UPDATE deliveries SET lease_until = NULL, lease_owner = NULL"
            " WHERE id = ANY(%s) AND status = 'pending' AND lease_until IS NOT NULL"
            " AND (lease_owner IS NULL OR lease_owner = %s)",
            (sorted(set(delivery_ids)), owner),
        )


async def extend_claims(
    conn: Conn, delivery_ids: Sequence[int], now: datetime, lease: timedelta, owner: str
) -> list[int]:
    wanted = list(dict.fromkeys(delivery_ids))
    if not wanted:
        return []
    cursor = await conn.execute(
        "UPDATE deliveries SET lease_until = %s"
        " WHERE id = ANY(%s) AND status = 'pending' AND lease_owner = %s RETURNING id",
        (utc(now) + lease, sorted(wanted), owner),
    )
    kept = {row[0] for row in await cursor.fetchall()}
    return [delivery_id for delivery_id in wanted if delivery_id in kept]


async def mark_sent(conn: Conn, delivery_id: int, now: datetime) -> None:
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'sent', sent_at = %s, lease_until = NULL,"
        " lease_owner = NULL"
        " WHERE id = %s AND status <> 'sent'",
        (utc(now), delivery_id),
    )
    if cursor.rowcount == 0:
        await _require_delivery(conn, delivery_id)


async def mark_sent_many(conn: Conn, delivery_ids: Sequence[int], now: datetime) -> None:
    """Every id marked sent in one transaction; an unknown id rolls all of it back."""
    now = utc(now)
    wanted = sorted(set(delivery_ids))
    if not wanted:
        return
    cursor = await conn.execute("SELECT id FROM deliveries WHERE id = ANY(%s)", (wanted,))
    missing = set(wanted) - {row[0] for row in await cursor.fetchall()}
    if missing:
        raise StoreError(f"unknown delivery {min(missing)}")
    await conn.execute(
        "UPDATE deliveries SET status = 'sent', sent_at = %s, lease_until = NULL,"
        " lease_owner = NULL WHERE id = ANY(%s) AND status <> 'sent'",
        (now, wanted),
    )


async def mark_retry(
    conn: Conn, delivery_id: int, error: str, retry_at: datetime, attempt: bool, owner: str
) -> None:
    # Only a pending row: a late report on a row already settled must not reopen it. The
    # claim is dropped only when it is this store's (or no one's).
    cursor = await conn.execute(
        "UPDATE deliveries SET attempts = attempts + %(n)s, last_error = %(error)s,"
        " next_attempt_at = %(retry)s,"
        " lease_until = CASE WHEN lease_owner IS NULL OR lease_owner = %(owner)s THEN NULL"
        " ELSE lease_until END,"
        " lease_owner = CASE WHEN lease_owner = %(owner)s THEN NULL ELSE lease_owner END"
        " WHERE id = %(id)s AND status = 'pending'",
        {
            "n": 1 if attempt else 0,
            "error": clean_text(error),
            "retry": utc(retry_at),
            "owner": owner,
            "id": delivery_id,
        },
    )
    if cursor.rowcount == 0:
        await _require_delivery(conn, delivery_id)


async def mark_failed(conn: Conn, delivery_id: int, error: str) -> None:
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'failed', attempts = attempts + 1, last_error = %s,"
        " lease_until = NULL, lease_owner = NULL WHERE id = %s AND status = 'pending'",
        (clean_text(error), delivery_id),
    )
    if cursor.rowcount == 0:
        await _require_delivery(conn, delivery_id)


async def _count(conn: Conn, sql: str, params: Sequence[object] = ()) -> int:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def pending_count(conn: Conn, channel: str | None) -> int:
    if channel is None:
        return await _count(conn, "SELECT count(*) FROM deliveries WHERE status = 'pending'")
    return await _count(
        conn,
        "SELECT count(*) FROM deliveries WHERE status = 'pending' AND channel = %s",
        (channel,),
    )


async def pending_by_target(conn: Conn, channel: str) -> dict[str, int]:
    cursor = await conn.execute(
        "SELECT target, count(*) FROM deliveries WHERE channel = %s AND status = 'pending'"
        " GROUP BY target",
        (channel,),
    )
    # Sorted here, by code point like the other stores, whatever the database's collation.
    return dict(sorted((target, int(n)) for target, n in await cursor.fetchall()))


async def deliveries(
    conn: Conn, channel: str | None, status: str | None, limit: int
) -> list[Delivery]:
    where: list[str] = []
    params: list[object] = []
    if channel is not None:
        where.append("d.channel = %s")
        params.append(channel)
    if status is not None:
        where.append("d.status = %s")
        params.append(status)
    sql = _DELIVERY_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    cursor = await conn.execute(
        sql + " ORDER BY d.created_at DESC, d.id DESC LIMIT %s", (*params, max(limit, 0))
    )
    return [_delivery(row) for row in await cursor.fetchall()]


async def outbox_stats(conn: Conn) -> list[OutboxStat]:
    cursor = await conn.execute(
        "SELECT channel, count(*) FILTER (WHERE status = 'pending'),"
        " count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'failed'),"
        " min(created_at) FILTER (WHERE status = 'pending') FROM deliveries GROUP BY channel"
    )
    stats = [
        OutboxStat(channel, int(pending), int(sent), int(failed), opt_dt(oldest))
        for channel, pending, sent, failed, oldest in await cursor.fetchall()
    ]
    return sorted(stats, key=lambda s: s.channel)


async def alert_count(conn: Conn, since: datetime) -> int:
    return await _count(conn, "SELECT count(*) FROM alerts WHERE created_at >= %s", (utc(since),))


async def prune(conn: Conn, now: datetime, retention: Retention, lock: tuple[int, int]) -> Pruned:
    """One worker at a time (a transaction-level advisory lock; the others skip). Items are
    locked in (feed, key) order by code point before they change, the order `record_items`
    locks a feed's items in: a prune and a poll never wait for each other."""
    now = utc(now)
    cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", lock)
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return Pruned(items=0, texts=0, deliveries=0, mutes=0)
    old_deliveries = cutoff(now, retention.deliveries)
    items = await conn.execute(
        "DELETE FROM items USING ("
        " SELECT i.feed, i.key FROM items AS i WHERE i.last_seen_at < %s AND NOT EXISTS ("
        " SELECT 1 FROM feeds AS f WHERE f.name = i.feed"
        " AND i.last_seen_at >= f.last_fetched_at - %s::interval)"
        ' ORDER BY i.feed COLLATE "C", i.key COLLATE "C" FOR UPDATE OF i'
        ") AS old WHERE items.feed = old.feed AND items.key = old.key",
        (cutoff(now, retention.seen), LAST_SEEN_REFRESH),
    )
    texts = await conn.execute(
        "UPDATE items SET title = '', summary = '', link = '', author = '', tags_json = '[]',"
        " text_pruned = true FROM ("
        " SELECT feed, key FROM items WHERE NOT text_pruned AND seen_at < %s"
        ' ORDER BY feed COLLATE "C", key COLLATE "C" FOR UPDATE'
        ") AS old WHERE items.feed = old.feed AND items.key = old.key",
        (cutoff(now, retention.text),),
    )
    removed = await conn.execute(
        "DELETE FROM deliveries WHERE status IN ('sent', 'failed') AND created_at < %s",
        (old_deliveries,),
    )
    await conn.execute(
        "DELETE FROM alerts WHERE created_at < %s"
        " AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.alert_id = alerts.id)",
        (old_deliveries,),
    )
    mutes = await conn.execute("DELETE FROM mutes WHERE until <= %s", (now,))
    return Pruned(
        items=items.rowcount,
        texts=texts.rowcount,
        deliveries=removed.rowcount,
        mutes=mutes.rowcount,
    )
