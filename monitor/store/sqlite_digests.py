"""SQLite queries for digest channels: the last digest time, failed digests due again, and
the claims a digest may find at start.

Synchronous functions taking the connection; `SQLiteStore` runs them on its worker thread.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from monitor.store.codec import dt_to_text, text_to_dt


def retry_due_count(conn: sqlite3.Connection, channel: str, now: datetime) -> int:
    now_text = dt_to_text(now)
    count: int = conn.execute(
        "SELECT count(*) FROM deliveries WHERE channel = ? AND status = 'pending'"
        " AND attempts >= 1 AND next_attempt_at <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?)",
        (channel, now_text, now_text),
    ).fetchone()[0]
    return count


def last_digest(conn: sqlite3.Connection, channel: str) -> datetime | None:
    row = conn.execute("SELECT last_at FROM digests WHERE channel = ?", (channel,)).fetchone()
    return None if row is None else text_to_dt(row[0])


def set_last_digest(conn: sqlite3.Connection, channel: str, at: datetime) -> None:
    conn.execute(
        "INSERT INTO digests (channel, last_at) VALUES (?, ?)"
        " ON CONFLICT (channel) DO UPDATE SET last_at = excluded.last_at",
        (channel, dt_to_text(at)),
    )


def release_claims(conn: sqlite3.Connection, channel: str) -> int:
    released: int = conn.execute(
        "UPDATE deliveries SET lease_until = NULL, lease_owner = NULL"
        " WHERE channel = ? AND status = 'pending' AND lease_until IS NOT NULL",
        (channel,),
    ).rowcount
    return released


def claimed_count(conn: sqlite3.Connection, channel: str, now: datetime) -> int:
    count: int = conn.execute(
        "SELECT count(*) FROM deliveries WHERE channel = ? AND status = 'pending'"
        " AND lease_until > ?",
        (channel, dt_to_text(now)),
    ).fetchone()[0]
    return count
