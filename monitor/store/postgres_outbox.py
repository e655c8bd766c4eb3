"""PostgreSQL queries for the delivery outbox, alert counts and retention.

A claim locks the deliveries it takes (`FOR UPDATE SKIP LOCKED`) and leases them in the same
transaction, so two workers dispatching one channel never get the same delivery.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from monitor.errors import StoreError
from monitor.models import Alert, Delivery, DeliveryStatus, Retention
from monitor.store.codec import json_to_matches, utc
from monitor.store.common import LAST_SEEN_REFRESH, cutoff
from monitor.store.postgres_feeds import opt_dt
from monitor.store.postgres_schema import Conn
from monitor.store.protocol import OutboxStat, Pruned

_DELIVERY_SELECT = (
    "SELECT d.id, d.channel, d.status, d.attempts, d.last_error, d.created_at,"
    " a.feed, a.item_key, a.title, a.link, a.summary, a.published, a.seen_at, a.matches_json,"
    " d.target"
    " FROM deliveries AS d JOIN alerts AS a ON a.id = d.alert_id"
)


def _delivery(row: Any) -> Delivery:
    alert = Alert(
        feed=row[6],
        item_key=row[7],
        title=row[8],
        link=row[9],
        summary=row[10],
        published=opt_dt(row[11]),
        seen_at=utc(row[12]),
        matches=json_to_matches(row[13]),
    )
    return Delivery(
        id=row[0],
        channel=row[1],
        alert=alert,
        status=DeliveryStatus(row[2]),
        attempts=row[3],
        last_error=row[4],
        created_at=utc(row[5]),
        target=row[14],
    )


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
) -> list[Delivery]:
    now = utc(now)
    rows = await _due_rows(conn, channel, now, limit, skip_targets, lock=True)
    if rows:
        await conn.execute(
            "UPDATE deliveries SET lease_until = %s WHERE id = ANY(%s)",
            (now + lease, [row[0] for row in rows]),
        )
    return [_delivery(row) for row in rows]


async def due_deliveries(
    conn: Conn, channel: str, now: datetime, limit: int, skip_targets: Collection[str]
) -> list[Delivery]:
    rows = await _due_rows(conn, channel, utc(now), limit, skip_targets, lock=False)
    return [_delivery(row) for row in rows]


async def _due_rows(
    conn: Conn,
    channel: str,
    now: datetime,
    limit: int,
    skip_targets: Collection[str],
    *,
    lock: bool,
) -> list[Any]:
    """The rows `claim_deliveries` claims (and `due_deliveries` lists), oldest first. With
    `lock`, rows another worker is claiming are skipped, not waited for."""
    cursor = await conn.execute(
        f"{_DELIVERY_SELECT} WHERE d.channel = %(channel)s AND d.status = 'pending'"
        " AND d.target <> ALL(%(skip)s::text[])"
        " AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= %(now)s)"
        " AND (d.lease_until IS NULL OR d.lease_until <= %(now)s)"
        " ORDER BY d.created_at, d.id LIMIT %(limit)s"
        + (" FOR UPDATE OF d SKIP LOCKED" if lock else ""),
        {"channel": channel, "skip": sorted(set(skip_targets)), "now": now, "limit": max(limit, 0)},
    )
    return await cursor.fetchall()


async def release_deliveries(conn: Conn, delivery_ids: Sequence[int]) -> None:
    if delivery_ids:
        await conn.execute(
            "UPDATE deliveries SET lease_until = NULL"
            " WHERE id = ANY(%s) AND status = 'pending' AND lease_until IS NOT NULL",
            (list(delivery_ids),),
        )


async def mark_sent(conn: Conn, delivery_id: int, now: datetime) -> None:
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'sent', sent_at = %s, lease_until = NULL"
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
        "UPDATE deliveries SET status = 'sent', sent_at = %s, lease_until = NULL"
        " WHERE id = ANY(%s) AND status <> 'sent'",
        (now, wanted),
    )


async def mark_retry(
    conn: Conn, delivery_id: int, error: str, retry_at: datetime, attempt: bool
) -> None:
    # Only a pending row: a late report on a row already settled must not reopen it.
    cursor = await conn.execute(
        "UPDATE deliveries SET attempts = attempts + %s, last_error = %s, next_attempt_at = %s,"
        " lease_until = NULL WHERE id = %s AND status = 'pending'",
        (1 if attempt else 0, error, utc(retry_at), delivery_id),
    )
    if cursor.rowcount == 0:
        await _require_delivery(conn, delivery_id)


async def mark_failed(conn: Conn, delivery_id: int, error: str) -> None:
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'failed', attempts = attempts + 1, last_error = %s,"
        " lease_until = NULL WHERE id = %s AND status = 'pending'",
        (error, delivery_id),
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


async def prune(conn: Conn, now: datetime, retention: Retention) -> Pruned:
    now = utc(now)
    old_deliveries = cutoff(now, retention.deliveries)
    items = await conn.execute(
        "DELETE FROM items WHERE last_seen_at < %s AND NOT EXISTS ("
        " SELECT 1 FROM feeds AS f WHERE f.name = items.feed"
        " AND items.last_seen_at >= f.last_fetched_at - %s::interval)",
        (cutoff(now, retention.seen), LAST_SEEN_REFRESH),
    )
    texts = await conn.execute(
        "UPDATE items SET title = '', summary = '', link = '', author = '', tags_json = '[]',"
        " text_pruned = true WHERE NOT text_pruned AND seen_at < %s",
        (cutoff(now, retention.text),),
    )
    removed = await conn.execute(
        "DELETE FROM deliveries WHERE status <> 'pending' AND created_at < %s", (old_deliveries,)
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
