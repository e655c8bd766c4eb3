"""PostgreSQL queries for feeds and items, including the one-transaction `record_items`.

Coroutines taking a pooled connection inside the transaction `PostgresStore` opened for the
call. Claims lock the rows they take (`FOR UPDATE SKIP LOCKED`), so workers claiming at once
each get other feeds; sets go as arrays (`unnest`, `= ANY`), one round trip per statement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.errors import StoreError
from monitor.models import Alert, CacheInfo, FeedSpec, FeedState, Item
from monitor.sources.identity import fingerprint
from monitor.store import rows
from monitor.store.codec import matches_to_json, tags_to_json, utc
from monitor.store.common import (
    LAST_SEEN_REFRESH,
    LEASE_TAKEN,
    NotModified,
    clean_text,
    delivery_targets,
    first_per_key,
    first_poll_at,
    lease_taken,
    next_cadence,
    stored_item,
    unstorable,
)
from monitor.store.postgres_schema import Conn
from monitor.store.protocol import Recorded

FEED_COLUMNS = rows.FEED_COLUMNS
_ITEM_COLUMNS = rows.ITEM_COLUMNS


def opt_dt(value: datetime | None) -> datetime | None:
    """A timestamptz as read (in the session's zone), as the contract returns it: UTC."""
    return None if value is None else value.astimezone(UTC)


def feed_state(row: Any) -> FeedState:
    return rows.feed_state(row, opt_dt)


def _item(row: Any) -> Item:
    return rows.item(row, opt_dt)


async def scheduling_only(conn: Conn) -> None:
    """This transaction only moves a feed's schedule or claim: commit it without waiting for
    the WAL to reach the disk. A database crash may then forget it (the feed is polled again,
    its items are still stored once); waiting would cost a disk flush per poll, which is what
    bounds the whole poll rate otherwise. Items, alerts and deliveries stay synchronous."""
    await conn.execute("SET LOCAL synchronous_commit = off")


async def lock_feeds(conn: Conn, names: Sequence[str]) -> dict[str, str | None]:
    """Lock the rows of these feeds, in name order (by code point), before a statement that
    updates several of them: every transaction locking several feed rows takes them in this
    one order, so two of them never wait for each other (a deadlock). Returns the lease
    owner of each feed found."""
    if not names:
        return {}
    cursor = await conn.execute(
        'SELECT name, lease_owner FROM feeds WHERE name = ANY(%s) ORDER BY name COLLATE "C"'
        " FOR UPDATE",
        (sorted(set(names)),),
    )
    return {row[0]: row[1] for row in await cursor.fetchall()}


async def require_feed(conn: Conn, name: str, *, lock: bool = False) -> Any:
    """The feed's (seeded, last_new_at, cadence, lease_owner), its row locked with `lock`;
    StoreError for a feed never synced."""
    cursor = await conn.execute(
        "SELECT seeded, last_new_at, cadence, lease_owner FROM feeds WHERE name = %s"
        + (" FOR UPDATE" if lock else ""),
        (name,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise StoreError(f"unknown feed {name!r}: sync_feeds never saw it")
    return row


# --- feeds -------------------------------------------------------------------------------------


async def sync_feeds(
    conn: Conn, feeds: Sequence[FeedSpec], now: datetime, lock: tuple[int, int]
) -> None:
    """Under a transaction-level advisory lock: workers starting (or reloading) together
    sync one after the other, and the later ones find nothing left to change."""
    now = utc(now)
    configured = {spec.name: spec for spec in feeds}
    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock)
    cursor = await conn.execute("SELECT name, url, active FROM feeds")
    stored = {name: (url, active) for name, url, active in await cursor.fetchall()}
    # Only rows whose flag changes are written: the others may be claimed by a worker.
    flipped = [name for name, (_, active) in stored.items() if (name in configured) != active]
    moved = [s for s in configured.values() if s.name in stored and stored[s.name][0] != s.url]
    await lock_feeds(conn, [*flipped, *(s.name for s in moved)])
    if flipped:
        await conn.execute("UPDATE feeds SET active = NOT active WHERE name = ANY(%s)", (flipped,))
    added = [s for s in configured.values() if s.name not in stored]
    if added:
        await conn.execute(
            "INSERT INTO feeds (name, url, next_poll_at)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])",
            (
                [s.name for s in added],
                [s.url for s in added],
                [first_poll_at(s.name, s.interval, now, len(added)) for s in added],
            ),
        )
    # Another URL may be another source: seed it again rather than risk a flood, and take a
    # claim away: the poll of the old URL in flight must not record the feed as seeded.
    if moved:
        await conn.execute(
            "UPDATE feeds SET url = m.url, etag = NULL, last_modified = NULL, seeded = false,"
            " dead_since = NULL, dead_reason = '', failing_since = NULL,"
            " consecutive_failures = 0, lease_until = NULL,"
            " lease_owner = CASE WHEN lease_owner IS NULL AND lease_until IS NULL THEN NULL"
            " ELSE %s END"
            " FROM unnest(%s::text[], %s::text[]) AS m(name, url) WHERE feeds.name = m.name",
            (LEASE_TAKEN, [s.name for s in moved], [s.url for s in moved]),
        )


async def claim_due_feeds(
    conn: Conn, now: datetime, limit: int, lease: timedelta, owner: str
) -> list[FeedState]:
    """Walks the due-time index; rows another worker is claiming right now are skipped, and
    rows it claimed meanwhile fail the lease test when re-checked after its commit."""
    now = utc(now)
    await scheduling_only(conn)
    cursor = await conn.execute(
        f"UPDATE feeds SET lease_until = %(until)s, lease_owner = %(owner)s FROM ("
        " SELECT name FROM feeds WHERE active AND dead_since IS NULL AND next_poll_at <= %(now)s"
        " AND (lease_until IS NULL OR lease_until <= %(now)s)"
        ' ORDER BY next_poll_at, name COLLATE "C" LIMIT %(limit)s FOR UPDATE SKIP LOCKED'
        f") AS due WHERE feeds.name = due.name RETURNING {_qualified('feeds', FEED_COLUMNS)}",
        {"until": now + lease, "now": now, "limit": max(limit, 0), "owner": owner},
    )
    states = [feed_state(row) for row in await cursor.fetchall()]
    # RETURNING keeps no order: oldest first, as the contract says.
    states.sort(key=lambda s: (s.next_poll_at or now, s.name))
    return states


def _qualified(table: str, columns: str) -> str:
    return ", ".join(f"{table}.{c.strip()}" for c in columns.split(","))


async def get_feed_state(conn: Conn, name: str) -> FeedState | None:
    cursor = await conn.execute(f"SELECT {FEED_COLUMNS} FROM feeds WHERE name = %s", (name,))
    row = await cursor.fetchone()
    return None if row is None else feed_state(row)


async def feed_states(conn: Conn) -> list[FeedState]:
    cursor = await conn.execute(f"SELECT {FEED_COLUMNS} FROM feeds WHERE active")
    return sorted((feed_state(row) for row in await cursor.fetchall()), key=lambda s: s.name)


async def record_not_modified(
    conn: Conn, polls: Sequence[NotModified], owner: str
) -> list[StoreError | None]:
    """Record many 304s in one statement of one transaction; for each poll, in order, None or
    the StoreError for it alone (a feed never synced, text that cannot be stored). A feed
    whose claim was taken (see `Store.record_items`) is left alone, without error."""
    outcomes = [unstorable(poll) for poll in polls]
    # A feed twice in one batch: its last 304 counts (one UPDATE row per feed).
    last = {poll[0]: poll for poll, error in zip(polls, outcomes, strict=True) if error is None}
    await scheduling_only(conn)
    # The rows locked in name order first: the UPDATE ... FROM unnest below would lock them
    # in whatever order its join runs, and two batches could wait for each other.
    found = await lock_feeds(conn, list(last))
    rows = [
        poll for name, poll in last.items() if name in found and not lease_taken(found[name], owner)
    ]
    if not rows:
        return _not_modified_outcomes(polls, outcomes, found)
    await conn.execute(
        "UPDATE feeds AS f SET next_poll_at = v.next, last_polled_at = v.now,"
        " last_success_at = v.now, last_error = '', consecutive_failures = 0,"
        " failing_since = NULL, lease_until = NULL, lease_owner = NULL,"
        " etag = CASE WHEN v.replace THEN v.etag ELSE f.etag END,"
        " last_modified = CASE WHEN v.replace THEN v.last_modified ELSE f.last_modified END"
        " FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::bool[],"
        " %s::text[], %s::text[]) AS v(name, now, next, replace, etag, last_modified)"
        " WHERE f.name = v.name",
        (
            [feed for feed, _, _, _ in rows],
            [utc(now) for _, now, _, _ in rows],
            [utc(next_poll_at) for _, _, next_poll_at, _ in rows],
            [cache is not None for _, _, _, cache in rows],
            [None if cache is None else cache.etag for _, _, _, cache in rows],
            [None if cache is None else cache.last_modified for _, _, _, cache in rows],
        ),
    )
    return _not_modified_outcomes(polls, outcomes, found)


def _not_modified_outcomes(
    polls: Sequence[NotModified], outcomes: Sequence[StoreError | None], found: Mapping[str, object]
) -> list[StoreError | None]:
    return [
        error
        if error is not None or poll[0] in found
        else StoreError(f"unknown feed {poll[0]!r}: sync_feeds never saw it")
        for poll, error in zip(polls, outcomes, strict=True)
    ]


async def record_failure(
    conn: Conn,
    feed: str,
    error: str,
    now: datetime,
    next_poll_at: datetime,
    dead: bool,
    owner: str,
) -> None:
    """Nothing is written when the feed's claim was taken (see `Store.record_items`)."""
    if not dead:  # declaring a feed dead is kept for sure
        await scheduling_only(conn)
    cursor = await conn.execute(
        "UPDATE feeds SET next_poll_at = %(next)s, last_polled_at = %(now)s,"
        " last_error = %(error)s, consecutive_failures = consecutive_failures + 1,"
        " lease_until = NULL, lease_owner = NULL,"
        " failing_since = COALESCE(failing_since, %(now)s),"
        " dead_since = CASE WHEN %(dead)s THEN %(now)s ELSE dead_since END,"
        " dead_reason = CASE WHEN %(dead)s THEN %(error)s ELSE dead_reason END"
        " WHERE name = %(feed)s AND (lease_owner IS NULL OR lease_owner = %(owner)s)",
        {
            "next": utc(next_poll_at),
            "now": utc(now),
            "error": clean_text(error),
            "dead": dead,
            "feed": feed,
            "owner": owner,
        },
    )
    if cursor.rowcount == 0:
        await require_feed(conn, feed)


async def release_feeds(conn: Conn, names: Sequence[str], owner: str) -> None:
    """Only this store's claims (and claims of no one's, from an older version)."""
    await scheduling_only(conn)
    found = await lock_feeds(conn, names)
    mine = [name for name, held in found.items() if not lease_taken(held, owner)]
    if mine:
        await conn.execute(
            "UPDATE feeds SET lease_until = NULL, lease_owner = NULL WHERE name = ANY(%s)"
            " AND (lease_until IS NOT NULL OR lease_owner IS NOT NULL)",
            (mine,),
        )


# --- items -------------------------------------------------------------------------------------


async def unseen(conn: Conn, feed: str, keys: Sequence[str]) -> set[str]:
    """Keys compared as stored (`clean_text`); the ones returned as given."""
    wanted = {key: clean_text(key) for key in keys}
    if not wanted:
        return set()
    cursor = await conn.execute(
        "SELECT key FROM items WHERE feed = %s AND key = ANY(%s)",
        (feed, sorted(set(wanted.values()))),
    )
    stored = {row[0] for row in await cursor.fetchall()}
    return {key for key, kept in wanted.items() if kept not in stored}


async def record_items(
    conn: Conn,
    feed: str,
    items: Sequence[Item],
    alerts: Sequence[Alert],
    *,
    cache: CacheInfo,
    now: datetime,
    next_poll_at: datetime,
    warning: str,
    targets: Mapping[str, tuple[str, ...]],
    ttl: int | None,
    owner: str,
) -> Recorded:
    """`alerts` cleaned and `targets` checked by the caller; items are converted here, before
    the first statement. Nothing is written when the claim was taken."""
    now, next_poll_at = utc(now), utc(next_poll_at)
    unique = [(given, stored_item(given, feed, now)) for given in first_per_key(items)]
    seeded, last_new_at, cadence_s, held = await require_feed(conn, feed, lock=True)
    if lease_taken(held, owner):
        return Recorded((), 0, 0)
    fresh = await _insert_items(conn, feed, [kept for _, kept in unique], now)
    new = [(given, kept) for given, kept in unique if kept.key in fresh]
    await _refresh_last_seen(conn, feed, [k.key for _, k in unique if k.key not in fresh], now)
    n_alerts, n_deliveries = await insert_alerts(conn, feed, alerts, fresh, targets, now)
    cadence = None if cadence_s is None else timedelta(seconds=cadence_s)
    if not seeded:
        last_new_at = now
    elif new:
        cadence, last_new_at = next_cadence(cadence, opt_dt(last_new_at), now), now
    await conn.execute(
        "UPDATE feeds SET etag = %(etag)s, last_modified = %(last_modified)s,"
        " next_poll_at = %(next)s, last_polled_at = %(now)s, last_success_at = %(now)s,"
        " last_error = '', consecutive_failures = 0, seeded = true,"
        " items_seen = items_seen + %(new)s, last_warning = %(warning)s, lease_until = NULL,"
        " lease_owner = NULL,"
        " last_fetched_at = %(now)s, failing_since = NULL, last_new_at = %(last_new_at)s,"
        " cadence = %(cadence)s, ttl = %(ttl)s WHERE name = %(feed)s",
        {
            "etag": cache.etag,
            "last_modified": cache.last_modified,
            "next": next_poll_at,
            "now": now,
            "new": len(new),
            "warning": clean_text(warning),
            "last_new_at": last_new_at,
            "cadence": None if cadence is None else cadence.total_seconds(),
            "ttl": ttl,
            "feed": feed,
        },
    )
    new_items = tuple(replace(kept, content=given.content) for given, kept in new)
    return Recorded(new_items, n_alerts, n_deliveries)


async def _insert_items(conn: Conn, feed: str, kept: Sequence[Item], now: datetime) -> set[str]:
    """Insert the items not stored yet, in order; returns their keys. ON CONFLICT makes it
    exact even if another transaction stored one meanwhile (it cannot: the feed row is
    locked, but the primary key is what guarantees an item alerts at most once)."""
    if not kept:
        return set()
    cursor = await conn.execute(
        "INSERT INTO items (feed, key, title, link, summary, author, tags_json, published,"
        " seen_at, last_seen_at, alt)"
        " SELECT %(feed)s, u.key, u.title, u.link, u.summary, u.author, u.tags, u.published,"
        " %(now)s, %(now)s, u.alt FROM unnest(%(keys)s::text[], %(titles)s::text[],"
        " %(links)s::text[], %(summaries)s::text[], %(authors)s::text[], %(tags)s::text[],"
        " %(published)s::timestamptz[], %(alts)s::text[])"
        " WITH ORDINALITY AS u(key, title, link, summary, author, tags, published, alt, n)"
        " ORDER BY u.n ON CONFLICT DO NOTHING RETURNING key",
        {
            "feed": feed,
            "now": now,
            "keys": [i.key for i in kept],
            "titles": [i.title for i in kept],
            "links": [i.link for i in kept],
            "summaries": [i.summary for i in kept],
            "authors": [i.author for i in kept],
            "tags": [tags_to_json(i.tags) for i in kept],
            "published": [i.published for i in kept],
            "alts": [fingerprint(i.link, i.title) for i in kept],
        },
    )
    return {row[0] for row in await cursor.fetchall()}


async def _refresh_last_seen(conn: Conn, feed: str, keys: Sequence[str], now: datetime) -> None:
    """The rows locked in key order (by code point) first, the order `prune` locks them in
    too: the two never wait for each other."""
    if keys:
        await conn.execute(
            "UPDATE items SET last_seen_at = %(now)s FROM ("
            " SELECT feed, key FROM items WHERE feed = %(feed)s AND key = ANY(%(keys)s)"
            ' AND last_seen_at < %(stale)s ORDER BY key COLLATE "C" FOR UPDATE'
            ") AS stale WHERE items.feed = stale.feed AND items.key = stale.key",
            {"now": now, "feed": feed, "keys": list(keys), "stale": now - LAST_SEEN_REFRESH},
        )


async def insert_alerts(
    conn: Conn,
    feed: str,
    alerts: Sequence[Alert],
    fresh: set[str],
    targets: Mapping[str, tuple[str, ...]],
    now: datetime,
) -> tuple[int, int]:
    """Alerts (cleaned) for items new in this call, one per item, and their pending
    deliveries; returns how many of each."""
    pending = set(fresh)
    chosen: list[Alert] = []
    for alert in alerts:
        if alert.feed == feed and alert.item_key in pending:
            pending.discard(alert.item_key)
            chosen.append(alert)
    if not chosen:
        return 0, 0
    cursor = await conn.execute(
        "INSERT INTO alerts (feed, item_key, created_at, title, link, summary, published,"
        " seen_at, matches_json)"
        " SELECT %(feed)s, u.item_key, %(now)s, u.title, u.link, u.summary, u.published,"
        " u.seen_at, u.matches FROM unnest(%(keys)s::text[], %(titles)s::text[],"
        " %(links)s::text[], %(summaries)s::text[], %(published)s::timestamptz[],"
        " %(seen)s::timestamptz[], %(matches)s::text[])"
        " WITH ORDINALITY AS u(item_key, title, link, summary, published, seen_at, matches, n)"
        " ORDER BY u.n RETURNING id, item_key",
        {
            "feed": feed,
            "now": now,
            "keys": [a.item_key for a in chosen],
            "titles": [a.title for a in chosen],
            "links": [a.link for a in chosen],
            "summaries": [a.summary for a in chosen],
            "published": [a.published for a in chosen],
            "seen": [a.seen_at for a in chosen],
            "matches": [matches_to_json(a.matches) for a in chosen],
        },
    )
    ids = {key: alert_id for alert_id, key in await cursor.fetchall()}
    rows = [
        (ids[alert.item_key], channel, target)
        for alert in chosen
        for channel, target in delivery_targets(alert, targets)
    ]
    if rows:
        await conn.execute(
            "INSERT INTO deliveries (alert_id, channel, target, created_at)"
            " SELECT u.alert_id, u.channel, u.target, %s FROM unnest(%s::bigint[], %s::text[],"
            " %s::text[]) WITH ORDINALITY AS u(alert_id, channel, target, n) ORDER BY u.n",
            (now, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )
    return len(chosen), len(rows)


async def recent_items(conn: Conn, since: datetime, feed: str | None) -> list[Item]:
    sql = f"SELECT {_ITEM_COLUMNS} FROM items WHERE NOT text_pruned AND seen_at >= %s"
    params: list[object] = [utc(since)]
    if feed is not None:
        sql += " AND feed = %s"
        params.append(feed)
    # seq breaks ties between items seen in one poll: later inserted counts as newer.
    cursor = await conn.execute(sql + " ORDER BY seen_at DESC, seq DESC", params)
    return [_item(row) for row in await cursor.fetchall()]
