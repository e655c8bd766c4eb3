"""SQLite queries for feed health: reviving dead feeds, admin notices, guid churn."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime

from monitor.models import Alert, Item
from monitor.sources.identity import fingerprint
from monitor.store.codec import dt_to_text, text_to_dt
from monitor.store.common import WORKER_TTL, clean_alert, clean_targets
from monitor.store.protocol import Worker
from monitor.store.sqlite_feeds import _insert_alerts, _require_feed, chunks, marks
from monitor.store.sqlite_schema import transaction


def revive_feeds(conn: sqlite3.Connection, names: Sequence[str], now: datetime) -> list[str]:
    wanted = list(dict.fromkeys(names))
    with transaction(conn):
        found = {
            row[0]
            for part in chunks(wanted)
            for row in conn.execute(
                f"SELECT name FROM feeds WHERE name IN ({marks(len(part))})", tuple(part)
            )
        }
        conn.executemany(
            "UPDATE feeds SET dead_since = NULL, dead_reason = '', failing_since = NULL,"
            " consecutive_failures = 0, next_poll_at = ? WHERE name = ?",
            [(dt_to_text(now), name) for name in wanted if name in found],
        )
    return [name for name in wanted if name in found]


def record_notice(
    conn: sqlite3.Connection,
    feed: str,
    kind: str,
    alert: Alert | None,
    now: datetime,
    targets: Mapping[str, Sequence[str]] | None,
) -> int:
    clean = None if alert is None else clean_alert(alert)
    chosen = clean_targets(targets)
    with transaction(conn):
        # Conditional: a notice recorded already is not queued again.
        changed = conn.execute(
            "UPDATE feeds SET notice = ? WHERE name = ? AND notice IS NOT ?", (kind, feed, kind)
        ).rowcount
        if not changed:
            _require_feed(conn, feed)
            return 0
        written = 0
        if clean is not None:
            _, written = _insert_alerts(
                conn, feed, [clean], {clean.item_key}, chosen, dt_to_text(now)
            )
    return written


def seen_alike(conn: sqlite3.Connection, feed: str, items: Sequence[Item]) -> set[str]:
    by_alt: dict[str, list[str]] = {}
    for item in items:
        alt = fingerprint(item.link, item.title)
        if alt is not None:
            by_alt.setdefault(alt, []).append(item.key)
    alike: set[str] = set()
    for part in chunks(list(by_alt)):
        rows = conn.execute(
            f"SELECT alt, key FROM items WHERE feed = ? AND alt IN ({marks(len(part))})",
            (feed, *part),
        )
        for alt, key in rows:
            alike.update(k for k in by_alt[alt] if k != key)
    return alike


def check_in(
    conn: sqlite3.Connection, worker: str, config: str, *, started_at: datetime, now: datetime
) -> list[Worker]:
    with transaction(conn):
        conn.execute(
            "INSERT INTO workers (name, config, started_at, seen_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET config = excluded.config,"
            " started_at = excluded.started_at, seen_at = excluded.seen_at",
            (worker, config, dt_to_text(started_at), dt_to_text(now)),
        )
        conn.execute("DELETE FROM workers WHERE seen_at <= ?", (dt_to_text(now - WORKER_TTL),))
        rows = conn.execute(
            "SELECT name, config, started_at, seen_at FROM workers WHERE name != ? ORDER BY name",
            (worker,),
        ).fetchall()
    return [Worker(r[0], r[1], text_to_dt(r[2]), text_to_dt(r[3])) for r in rows]


def check_out(conn: sqlite3.Connection, worker: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM workers WHERE name = ?", (worker,))
