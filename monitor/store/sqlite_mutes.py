"""SQLite queries for rule mutes ("/mute RULE 2h"); ended ones are dropped by `prune`.

Synchronous functions taking the connection; `SQLiteStore` runs them on its worker thread.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from monitor.store.codec import dt_to_text, text_to_dt


def mute(conn: sqlite3.Connection, rule: str, until: datetime, now: datetime) -> None:
    conn.execute(
        "INSERT INTO mutes (rule, until, created_at) VALUES (?, ?, ?) ON CONFLICT (rule)"
        " DO UPDATE SET until = excluded.until, created_at = excluded.created_at",
        (rule, dt_to_text(until), dt_to_text(now)),
    )


def unmute(conn: sqlite3.Connection, rule: str) -> bool:
    return conn.execute("DELETE FROM mutes WHERE rule = ?", (rule,)).rowcount > 0


def mutes(conn: sqlite3.Connection, now: datetime) -> dict[str, datetime]:
    rows = conn.execute(
        "SELECT rule, until FROM mutes WHERE until > ? ORDER BY rule", (dt_to_text(now),)
    )
    return {rule: text_to_dt(until) for rule, until in rows}
