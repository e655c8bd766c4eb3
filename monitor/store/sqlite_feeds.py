"""SQLite queries for feeds and items, including the one-transaction `record_items`.

Synchronous functions taking the connection; `SQLiteStore` runs them on its worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from monitor.errors import StoreError
from monitor.models import Alert, CacheInfo, FeedSpec, FeedState, Item
from monitor.sources.identity import fingerprint
from monitor.store import rows
from monitor.store.codec import (
    dt_to_text,
    matches_to_json,
    opt_dt_to_text,
    opt_text_to_dt,
    tags_to_json,
)
from monitor.store.common import (
    LAST_SEEN_REFRESH,
    LEASE_TAKEN,
    NotModified,
    clean_alert,
    clean_targets,
    clean_text,
    delivery_targets,
    first_per_key,
    first_poll_at,
    lease_taken,
    next_cadence,
    stored_item,
    unstorable,
)
from monitor.store.protocol import Recorded
from monitor.store.sqlite_schema import transaction

#: Keys per IN (...) list: far below SQLite's bound variables limit (999 before 3.32).
CHUNK = 500

_FEED_COLUMNS = rows.FEED_COLUMNS
_ITEM_COLUMNS = rows.ITEM_COLUMNS


def _feed_state(row: Any) -> FeedState:
    return rows.feed_state(row, opt_text_to_dt)


def _item(row: Any) -> Item:
    return rows.item(row, opt_text_to_dt)


def chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def marks(n: int) -> str:
    return ", ".join("?" * n)


def _require_feed(conn: sqlite3.Connection, name: str) -> str | None:
    """The feed's lease owner; StoreError for a feed never synced."""
    row = conn.execute("SELECT lease_owner FROM feeds WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise StoreError(f"unknown feed {name!r}: sync_feeds never saw it")
    owner: str | None = row[0]
    return owner


# --- feeds -------------------------------------------------------------------------------------


def sync_feeds(conn: sqlite3.Connection, feeds: Sequence[FeedSpec], now: datetime) -> None:
    configured = {spec.name: spec for spec in feeds}
    with transaction(conn):
        stored: dict[str, str] = dict(conn.execute("SELECT name, url FROM feeds").fetchall())
        conn.executemany(
            "UPDATE feeds SET active = ? WHERE name = ?",
            [(name in configured, name) for name in stored],
        )
        added = [s for s in configured.values() if s.name not in stored]
        conn.executemany(
            "INSERT INTO feeds (name, url, next_poll_at) VALUES (?, ?, ?)",
            [
                (s.name, s.url, dt_to_text(first_poll_at(s.name, s.interval, now, len(added))))
                for s in added
            ],
        )
        # Another URL may be another source: seed it again rather than risk a flood, and take
        # a claim away: the poll of the old URL in flight must not record the feed as seeded.
        conn.executemany(
            "UPDATE feeds SET url = ?, etag = NULL, last_modified = NULL, seeded = 0,"
            " dead_since = NULL, dead_reason = '', failing_since = NULL,"
            " consecutive_failures = 0, lease_until = NULL,"
            " lease_owner = CASE WHEN lease_owner IS NULL AND lease_until IS NULL THEN NULL"
            " ELSE ? END WHERE name = ?",
            [
                (s.url, LEASE_TAKEN, s.name)
                for s in configured.values()
                if s.name in stored and stored[s.name] != s.url
            ],
        )


def claim_due_feeds(
    conn: sqlite3.Connection, now: datetime, limit: int, lease: timedelta, owner: str
) -> list[FeedState]:
    now_text = dt_to_text(now)
    with transaction(conn):
        rows = conn.execute(
            f"SELECT {_FEED_COLUMNS} FROM feeds"
            " WHERE active = 1 AND dead_since IS NULL AND next_poll_at <= ?"
            " AND (lease_until IS NULL OR lease_until <= ?)"
            " ORDER BY next_poll_at, name LIMIT ?",
            (now_text, now_text, max(limit, 0)),
        ).fetchall()
        conn.executemany(
            "UPDATE feeds SET lease_until = ?, lease_owner = ? WHERE name = ?",
            [(dt_to_text(now + lease), owner, row[0]) for row in rows],
        )
    return [_feed_state(row) for row in rows]


def feed_state(conn: sqlite3.Connection, name: str) -> FeedState | None:
    row = conn.execute(f"SELECT {_FEED_COLUMNS} FROM feeds WHERE name = ?", (name,)).fetchone()
    return None if row is None else _feed_state(row)


def feed_states(conn: sqlite3.Connection) -> list[FeedState]:
    rows = conn.execute(f"SELECT {_FEED_COLUMNS} FROM feeds WHERE active = 1 ORDER BY name")
    return [_feed_state(row) for row in rows]


def record_not_modified(
    conn: sqlite3.Connection, polls: Sequence[NotModified], owner: str
) -> list[StoreError | None]:
    """Record many 304s in one transaction (one durable commit for all of them).

    For each poll, in order: None, or the StoreError for it alone (a feed never synced, text
    that cannot be stored); those write nothing and do not stop the others.
    """
    outcomes = [unstorable(poll) for poll in polls]
    rows: list[tuple[int, dict[str, object]]] = []
    for index, (feed, now, next_poll_at, cache) in enumerate(polls):
        if outcomes[index] is not None:
            continue
        params = {
            "next": dt_to_text(next_poll_at),
            "now": dt_to_text(now),
            "replace": cache is not None,
            "etag": None if cache is None else cache.etag,
            "last_modified": None if cache is None else cache.last_modified,
            "feed": feed,
            "owner": owner,
        }
        rows.append((index, params))
    with transaction(conn):
        for index, params in rows:
            # Without new validators the stored ones stay: CASE keeps it one statement.
            cursor = conn.execute(
                "UPDATE feeds SET next_poll_at = :next, last_polled_at = :now,"
                " last_success_at = :now, last_error = '', consecutive_failures = 0,"
                " failing_since = NULL, lease_until = NULL, lease_owner = NULL,"
                " etag = CASE WHEN :replace THEN :etag ELSE etag END,"
                " last_modified = CASE WHEN :replace THEN :last_modified ELSE last_modified END"
                " WHERE name = :feed AND (lease_owner IS NULL OR lease_owner = :owner)",
                params,
            )
            # No row: a feed never synced, or one whose claim was taken (nothing to write).
            if (
                cursor.rowcount == 0
                and conn.execute("SELECT 1 FROM feeds WHERE name = ?", (params["feed"],)).fetchone()
                is None
            ):
                outcomes[index] = StoreError(
                    f"unknown feed {params['feed']!r}: sync_feeds never saw it"
                )
    return outcomes


def record_failure(
    conn: sqlite3.Connection,
    feed: str,
    error: str,
    now: datetime,
    next_poll_at: datetime,
    dead: bool = False,
    owner: str = "",
) -> None:
    """Nothing is written when the feed's claim was taken (see `Store.record_items`)."""
    cursor = conn.execute(
        "UPDATE feeds SET next_poll_at = :next, last_polled_at = :now, last_error = :error,"
        " consecutive_failures = consecutive_failures + 1, lease_until = NULL,"
        " lease_owner = NULL, failing_since = COALESCE(failing_since, :now),"
        " dead_since = CASE WHEN :dead THEN :now ELSE dead_since END,"
        " dead_reason = CASE WHEN :dead THEN :error ELSE dead_reason END"
        " WHERE name = :feed AND (lease_owner IS NULL OR lease_owner = :owner)",
        {
            "next": dt_to_text(next_poll_at),
            "now": dt_to_text(now),
            "error": clean_text(error),
            "dead": dead,
            "feed": feed,
            "owner": owner,
        },
    )
    if cursor.rowcount == 0:
        _require_feed(conn, feed)


def release_feeds(conn: sqlite3.Connection, names: Sequence[str], owner: str) -> None:
    """Only this store's claims (and claims of no one's)."""
    with transaction(conn):
        conn.executemany(
            "UPDATE feeds SET lease_until = NULL, lease_owner = NULL"
            " WHERE name = ? AND (lease_owner IS NULL OR lease_owner = ?)",
            [(name, owner) for name in names],
        )


# --- items -------------------------------------------------------------------------------------


def unseen(conn: sqlite3.Connection, feed: str, keys: Sequence[str]) -> set[str]:
    """Keys compared as stored (`clean_text`); the ones returned as given."""
    given = {key: clean_text(key) for key in keys}
    wanted = list(dict.fromkeys(given.values()))
    stored: set[str] = set()
    for part in chunks(wanted):
        rows = conn.execute(
            f"SELECT key FROM items WHERE feed = ? AND key IN ({marks(len(part))})",
            (feed, *part),
        )
        stored.update(row[0] for row in rows)
    return {key for key, kept in given.items() if kept not in stored}


def record_items(
    conn: sqlite3.Connection,
    feed: str,
    items: Sequence[Item],
    alerts: Sequence[Alert],
    *,
    cache: CacheInfo,
    now: datetime,
    next_poll_at: datetime,
    warning: str,
    targets: Mapping[str, Sequence[str]] | None = None,
    ttl: int | None = None,
    owner: str = "",
) -> Recorded:
    # Convert every input before BEGIN: a bad one fails before anything is written.
    now_text, next_text = dt_to_text(now), dt_to_text(next_poll_at)
    unique = [(item, stored_item(item, feed, now)) for item in first_per_key(items)]
    clean_alerts = [clean_alert(a) for a in alerts]
    chosen = clean_targets(targets)
    with transaction(conn):
        if lease_taken(_require_feed(conn, feed), owner):
            return Recorded((), 0, 0)  # the claim was taken: nothing is written
        fresh = unseen(conn, feed, [kept.key for _, kept in unique])
        new = [(given, kept) for given, kept in unique if kept.key in fresh]
        conn.executemany(
            f"INSERT INTO items ({_ITEM_COLUMNS}, last_seen_at, alt) VALUES ({marks(11)})",
            [(*_item_row(kept), now_text, fingerprint(kept.link, kept.title)) for _, kept in new],
        )
        _refresh_last_seen(conn, feed, [k.key for _, k in unique if k.key not in fresh], now)
        n_alerts, n_deliveries = _insert_alerts(conn, feed, clean_alerts, fresh, chosen, now_text)
        _record_cadence(conn, feed, now, bool(new))
        conn.execute(
            "UPDATE feeds SET etag = :etag, last_modified = :last_modified,"
            " next_poll_at = :next, last_polled_at = :now, last_success_at = :now,"
            " last_error = '', consecutive_failures = 0, seeded = 1,"
            " items_seen = items_seen + :new, last_warning = :warning, lease_until = NULL,"
            " lease_owner = NULL,"
            " last_fetched_at = :now, failing_since = NULL, ttl = :ttl WHERE name = :feed",
            {
                "etag": cache.etag,
                "last_modified": cache.last_modified,
                "next": next_text,
                "now": now_text,
                "new": len(new),
                "warning": clean_text(warning),
                "feed": feed,
                "ttl": ttl,
            },
        )
    new_items = tuple(replace(kept, content=given.content) for given, kept in new)
    return Recorded(new_items, n_alerts, n_deliveries)


def _record_cadence(conn: sqlite3.Connection, feed: str, now: datetime, stored_new: bool) -> None:
    """Before the row's `seeded` is set: the first fetch starts the clock, later fetches
    that stored new items update the moving average (see `common.next_cadence`)."""
    row = conn.execute(
        "SELECT seeded, last_new_at, cadence FROM feeds WHERE name = ?", (feed,)
    ).fetchone()
    if row[0] and not stored_new:
        return
    cadence = None if row[2] is None else timedelta(seconds=row[2])
    if row[0]:
        cadence = next_cadence(cadence, opt_text_to_dt(row[1]), now)
    conn.execute(
        "UPDATE feeds SET last_new_at = ?, cadence = ? WHERE name = ?",
        (dt_to_text(now), None if cadence is None else cadence.total_seconds(), feed),
    )


def _item_row(item: Item) -> tuple[object, ...]:
    return (
        item.feed,
        item.key,
        item.title,
        item.link,
        item.summary,
        item.author,
        tags_to_json(item.tags),
        opt_dt_to_text(item.published),
        opt_dt_to_text(item.seen_at),
    )


def _refresh_last_seen(
    conn: sqlite3.Connection, feed: str, keys: Sequence[str], now: datetime
) -> None:
    params = (dt_to_text(now), feed)
    stale = dt_to_text(now - LAST_SEEN_REFRESH)
    for part in chunks(keys):
        conn.execute(
            f"UPDATE items SET last_seen_at = ? WHERE feed = ? AND key IN ({marks(len(part))})"
            " AND last_seen_at < ?",
            (*params, *part, stale),
        )


def _insert_alerts(
    conn: sqlite3.Connection,
    feed: str,
    alerts: Sequence[Alert],
    fresh: set[str],
    targets: Mapping[str, tuple[str, ...]],
    now_text: str,
) -> tuple[int, int]:
    """Alerts for items new in this call (one per item), and their pending deliveries."""
    pending = set(fresh)
    deliveries: list[tuple[int, str, str, str]] = []
    n_alerts = 0
    for alert in alerts:
        if alert.feed != feed or alert.item_key not in pending:
            continue
        pending.discard(alert.item_key)
        cursor = conn.execute(
            "INSERT INTO alerts (feed, item_key, created_at, title, link, summary, published,"
            f" seen_at, matches_json) VALUES ({marks(9)})",
            (
                alert.feed,
                alert.item_key,
                now_text,
                alert.title,
                alert.link,
                alert.summary,
                opt_dt_to_text(alert.published),
                dt_to_text(alert.seen_at),
                matches_to_json(alert.matches),
            ),
        )
        alert_id = cursor.lastrowid
        assert alert_id is not None  # set by every successful INSERT
        n_alerts += 1
        deliveries.extend(
            (alert_id, channel, target, now_text)
            for channel, target in delivery_targets(alert, targets)
        )
    conn.executemany(
        "INSERT INTO deliveries (alert_id, channel, target, created_at) VALUES (?, ?, ?, ?)",
        deliveries,
    )
    return n_alerts, len(deliveries)


def recent_items(conn: sqlite3.Connection, since: datetime, feed: str | None) -> list[Item]:
    sql = f"SELECT {_ITEM_COLUMNS} FROM items WHERE text_pruned = 0 AND seen_at >= ?"
    params: list[object] = [dt_to_text(since)]
    if feed is not None:
        sql += " AND feed = ?"
        params.append(feed)
    # rowid breaks ties between items seen in one poll: later inserted counts as newer.
    rows = conn.execute(sql + " ORDER BY seen_at DESC, rowid DESC", params)
    return [_item(row) for row in rows]
