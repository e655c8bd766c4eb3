"""SQLite queries for the delivery outbox, and retention.

Synchronous functions taking the connection; `SQLiteStore` runs them on its worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from monitor.errors import StoreError
from monitor.models import Delivery, DeliveryStatus, Retention
from monitor.store import rows
from monitor.store.codec import dt_to_text, opt_text_to_dt, text_to_dt
from monitor.store.common import LAST_SEEN_REFRESH, clean_text, cutoff
from monitor.store.protocol import OutboxStat, Pruned
from monitor.store.sqlite_feeds import marks
from monitor.store.sqlite_schema import transaction

_DELIVERY_SELECT = rows.DELIVERY_SELECT


def _delivery(row: Any) -> Delivery:
    return rows.delivery(row, opt_text_to_dt)


def _require_delivery(conn: sqlite3.Connection, delivery_id: int) -> None:
    if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() is None:
        raise StoreError(f"unknown delivery {delivery_id}")


def claim_deliveries(
    conn: sqlite3.Connection,
    channel: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    skip_targets: Collection[str],
    owner: str,
) -> list[Delivery]:
    with transaction(conn):
        rows = _due_rows(conn, channel, now, limit, skip_targets)
        conn.executemany(
            "UPDATE deliveries SET lease_until = ?, lease_owner = ? WHERE id = ?",
            [(dt_to_text(now + lease), owner, row[0]) for row in rows],
        )
    return [_delivery(row) for row in rows]


def due_deliveries(
    conn: sqlite3.Connection,
    channel: str,
    now: datetime,
    limit: int,
    skip_targets: Collection[str],
) -> list[Delivery]:
    return [_delivery(row) for row in _due_rows(conn, channel, now, limit, skip_targets)]


def _due_rows(
    conn: sqlite3.Connection,
    channel: str,
    now: datetime,
    limit: int,
    skip_targets: Collection[str],
) -> list[Any]:
    """The rows `claim_deliveries` claims (and `due_deliveries` lists), oldest first."""
    now_text = dt_to_text(now)
    # One bound variable per paused target: a channel's destinations are a handful, far
    # below SQLite's limit.
    skip = sorted(set(skip_targets))
    skipping = f" AND d.target NOT IN ({marks(len(skip))})" if skip else ""
    rows: list[Any] = conn.execute(
        f"{_DELIVERY_SELECT} WHERE d.channel = ? AND d.status = 'pending'{skipping}"
        " AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?)"
        " AND (d.lease_until IS NULL OR d.lease_until <= ?)"
        " ORDER BY d.created_at, d.id LIMIT ?",
        (channel, *skip, now_text, now_text, max(limit, 0)),
    ).fetchall()
    return rows


def release_deliveries(conn: sqlite3.Connection, delivery_ids: Sequence[int], owner: str) -> None:
    """Only this store's claims (and claims of no one's)."""
    with transaction(conn):
        conn.executemany(
            "UPDATE deliveries SET lease_until = NULL, lease_owner = NULL"
            " WHERE id = ? AND status = 'pending' AND (lease_owner IS NULL OR lease_owner = ?)",
            [(delivery_id, owner) for delivery_id in delivery_ids],
        )


def extend_claims(
    conn: sqlite3.Connection,
    delivery_ids: Sequence[int],
    now: datetime,
    lease: timedelta,
    owner: str,
) -> list[int]:
    until = dt_to_text(now + lease)
    kept: list[int] = []
    with transaction(conn):
        for delivery_id in dict.fromkeys(delivery_ids):
            cursor = conn.execute(
                "UPDATE deliveries SET lease_until = ?"
                " WHERE id = ? AND status = 'pending' AND lease_owner = ?",
                (until, delivery_id, owner),
            )
            if cursor.rowcount:
                kept.append(delivery_id)
    return kept


def mark_sent(conn: sqlite3.Connection, delivery_id: int, now: datetime) -> None:
    cursor = conn.execute(
        "UPDATE deliveries SET status = 'sent', sent_at = ?, lease_until = NULL,"
        " lease_owner = NULL WHERE id = ? AND status != 'sent'",
        (dt_to_text(now), delivery_id),
    )
    if cursor.rowcount == 0:
        _require_delivery(conn, delivery_id)


def mark_sent_many(conn: sqlite3.Connection, delivery_ids: Sequence[int], now: datetime) -> None:
    """Every id marked sent in one transaction; an unknown id rolls all of it back."""
    with transaction(conn):
        for delivery_id in delivery_ids:
            mark_sent(conn, delivery_id, now)


def mark_retry(
    conn: sqlite3.Connection,
    delivery_id: int,
    error: str,
    retry_at: datetime,
    attempt: bool,
    owner: str,
) -> None:
    # Only a pending row: a late report on a row already settled must not reopen it. The
    # claim is dropped only when it is this store's (or no one's).
    cursor = conn.execute(
        "UPDATE deliveries SET attempts = attempts + :n, last_error = :error,"
        " next_attempt_at = :retry,"
        " lease_until = CASE WHEN lease_owner IS NULL OR lease_owner = :owner THEN NULL"
        " ELSE lease_until END,"
        " lease_owner = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_owner END"
        " WHERE id = :id AND status = 'pending'",
        {
            "n": 1 if attempt else 0,
            "error": clean_text(error),
            "retry": dt_to_text(retry_at),
            "owner": owner,
            "id": delivery_id,
        },
    )
    if cursor.rowcount == 0:
        _require_delivery(conn, delivery_id)


def mark_failed(conn: sqlite3.Connection, delivery_id: int, error: str) -> None:
    cursor = conn.execute(
        "UPDATE deliveries SET status = 'failed', attempts = attempts + 1, last_error = ?,"
        " lease_until = NULL, lease_owner = NULL WHERE id = ? AND status = 'pending'",
        (clean_text(error), delivery_id),
    )
    if cursor.rowcount == 0:
        _require_delivery(conn, delivery_id)


def pending_count(conn: sqlite3.Connection, channel: str | None) -> int:
    sql = "SELECT count(*) FROM deliveries WHERE status = 'pending'"
    params: tuple[str, ...] = ()
    if channel is not None:
        sql += " AND channel = ?"
        params = (channel,)
    count: int = conn.execute(sql, params).fetchone()[0]
    return count


def pending_by_target(conn: sqlite3.Connection, channel: str) -> dict[str, int]:
    counts: dict[str, int] = dict(
        conn.execute(
            "SELECT target, count(*) FROM deliveries WHERE channel = ? AND status = 'pending'"
            " GROUP BY target ORDER BY target",
            (channel,),
        ).fetchall()
    )
    return counts


def outbox_stats(conn: sqlite3.Connection) -> list[OutboxStat]:
    """One pass over the (channel, status, created_at) index: no table row is read."""
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, datetime] = {}
    rows = conn.execute(
        "SELECT channel, status, count(*), min(created_at) FROM deliveries GROUP BY channel, status"
    )
    for channel, status, count, first in rows:
        counts.setdefault(channel, {})[status] = count
        if status == DeliveryStatus.PENDING.value:
            oldest[channel] = text_to_dt(first)
    return [
        OutboxStat(
            channel,
            by_status.get(DeliveryStatus.PENDING.value, 0),
            by_status.get(DeliveryStatus.SENT.value, 0),
            by_status.get(DeliveryStatus.FAILED.value, 0),
            oldest.get(channel),
        )
        for channel, by_status in sorted(counts.items())
    ]


def deliveries(
    conn: sqlite3.Connection, channel: str | None, status: str | None, limit: int
) -> list[Delivery]:
    where: list[str] = []
    params: list[object] = []
    if channel is not None:
        where.append("d.channel = ?")
        params.append(channel)
    if status is not None:
        where.append("d.status = ?")
        params.append(status)
    sql = _DELIVERY_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(
        sql + " ORDER BY d.created_at DESC, d.id DESC LIMIT ?", (*params, max(limit, 0))
    )
    return [_delivery(row) for row in rows]


def alert_count(conn: sqlite3.Connection, since: datetime) -> int:
    row = conn.execute("SELECT count(*) FROM alerts WHERE created_at >= ?", (dt_to_text(since),))
    count: int = row.fetchone()[0]
    return count


def _before_last_fetch(column: str) -> str:
    """SQL for the stored time text in `column` minus LAST_SEEN_REFRESH, as stored time text.

    Whole seconds are taken off the "YYYY-MM-DDTHH:MM:SS" part with datetime(), and the
    ".ffffffZ" rest kept as it is: exact to the microsecond, unlike julianday(). NULL (a feed
    never fetched) stays NULL, so a comparison with it is never true.
    """
    seconds = LAST_SEEN_REFRESH // timedelta(seconds=1)
    assert timedelta(seconds=seconds) == LAST_SEEN_REFRESH  # whole seconds only
    return (
        f"replace(datetime(substr({column}, 1, 19), '-{seconds} seconds'), ' ', 'T')"
        f" || substr({column}, 20)"
    )


def prune(conn: sqlite3.Connection, now: datetime, retention: Retention) -> Pruned:
    old_deliveries = dt_to_text(cutoff(now, retention.deliveries))
    with transaction(conn):
        items = conn.execute(
            "DELETE FROM items WHERE last_seen_at < ? AND NOT EXISTS ("
            " SELECT 1 FROM feeds AS f WHERE f.name = items.feed"
            f" AND items.last_seen_at >= {_before_last_fetch('f.last_fetched_at')})",
            (dt_to_text(cutoff(now, retention.seen)),),
        ).rowcount
        texts = conn.execute(
            "UPDATE items SET title = '', summary = '', link = '', author = '', tags_json = '[]',"
            " text_pruned = 1 WHERE text_pruned = 0 AND seen_at < ?",
            (dt_to_text(cutoff(now, retention.text)),),
        ).rowcount
        removed = conn.execute(
            "DELETE FROM deliveries WHERE status != 'pending' AND created_at < ?",
            (old_deliveries,),
        ).rowcount
        conn.execute(
            "DELETE FROM alerts WHERE created_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.alert_id = alerts.id)",
            (old_deliveries,),
        )
        mutes = conn.execute("DELETE FROM mutes WHERE until <= ?", (dt_to_text(now),)).rowcount
    return Pruned(items=items, texts=texts, deliveries=removed, mutes=mutes)
