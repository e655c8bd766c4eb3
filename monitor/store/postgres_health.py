"""PostgreSQL queries for feed health (reviving dead feeds, admin notices, guid churn), rule
mutes and digest channels' records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from monitor.models import Alert, Item
from monitor.sources.identity import fingerprint
from monitor.store.codec import utc
from monitor.store.common import WORKER_TTL
from monitor.store.postgres_feeds import insert_alerts, lock_feeds, opt_dt, require_feed
from monitor.store.postgres_schema import Conn
from monitor.store.protocol import Worker

# --- feed health -------------------------------------------------------------------------------


async def revive_feeds(conn: Conn, names: Sequence[str], now: datetime) -> list[str]:
    wanted = list(dict.fromkeys(names))
    await lock_feeds(conn, wanted)  # in name order, like every write of several feeds
    cursor = await conn.execute(
        "UPDATE feeds SET dead_since = NULL, dead_reason = '', failing_since = NULL,"
        " consecutive_failures = 0, next_poll_at = %s WHERE name = ANY(%s) RETURNING name",
        (utc(now), wanted),
    )
    found = {row[0] for row in await cursor.fetchall()}
    return [name for name in wanted if name in found]


async def record_notice(
    conn: Conn,
    feed: str,
    kind: str,
    alert: Alert | None,
    now: datetime,
    targets: Mapping[str, tuple[str, ...]],
) -> int:
    """`alert` cleaned and `targets` checked by the caller. Conditional: of two workers
    recording the same notice at once, the second finds it set and writes nothing."""
    now = utc(now)
    cursor = await conn.execute(
        "UPDATE feeds SET notice = %s WHERE name = %s AND notice IS DISTINCT FROM %s"
        " RETURNING name",
        (kind, feed, kind),
    )
    if await cursor.fetchone() is None:
        await require_feed(conn, feed)  # StoreError for an unknown feed
        return 0
    written = 0
    if alert is not None:
        _, written = await insert_alerts(conn, feed, [alert], {alert.item_key}, targets, now)
    return written


async def seen_alike(conn: Conn, feed: str, items: Sequence[Item]) -> set[str]:
    by_alt: dict[str, list[str]] = {}
    for item in items:
        alt = fingerprint(item.link, item.title)
        if alt is not None:
            by_alt.setdefault(alt, []).append(item.key)
    if not by_alt:
        return set()
    cursor = await conn.execute(
        "SELECT alt, key FROM items WHERE feed = %s AND alt = ANY(%s)", (feed, list(by_alt))
    )
    alike: set[str] = set()
    for alt, key in await cursor.fetchall():
        alike.update(k for k in by_alt[alt] if k != key)
    return alike


# --- mutes -------------------------------------------------------------------------------------


async def mute(conn: Conn, rule: str, until: datetime, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO mutes (rule, until, created_at) VALUES (%s, %s, %s) ON CONFLICT (rule)"
        " DO UPDATE SET until = excluded.until, created_at = excluded.created_at",
        (rule, utc(until), utc(now)),
    )


async def unmute(conn: Conn, rule: str) -> bool:
    cursor = await conn.execute("DELETE FROM mutes WHERE rule = %s", (rule,))
    return cursor.rowcount > 0


async def mutes(conn: Conn, now: datetime) -> dict[str, datetime]:
    cursor = await conn.execute("SELECT rule, until FROM mutes WHERE until > %s", (utc(now),))
    return dict(sorted((rule, utc(until)) for rule, until in await cursor.fetchall()))


# --- digests -----------------------------------------------------------------------------------


async def retry_due_count(conn: Conn, channel: str, now: datetime) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM deliveries WHERE channel = %(channel)s AND status = 'pending'"
        " AND attempts >= 1 AND next_attempt_at <= %(now)s"
        " AND (lease_until IS NULL OR lease_until <= %(now)s)",
        {"channel": channel, "now": utc(now)},
    )
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def last_digest(conn: Conn, channel: str) -> datetime | None:
    cursor = await conn.execute("SELECT last_at FROM digests WHERE channel = %s", (channel,))
    row = await cursor.fetchone()
    return None if row is None else opt_dt(row[0])


async def set_last_digest(conn: Conn, channel: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO digests (channel, last_at) VALUES (%s, %s)"
        " ON CONFLICT (channel) DO UPDATE SET last_at = excluded.last_at",
        (channel, utc(at)),
    )


async def release_claims(conn: Conn, channel: str) -> int:
    cursor = await conn.execute(
        "UPDATE deliveries SET lease_until = NULL, lease_owner = NULL"
        " WHERE channel = %s AND status = 'pending' AND lease_until IS NOT NULL",
        (channel,),
    )
    return cursor.rowcount


async def claimed_count(conn: Conn, channel: str, now: datetime) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM deliveries WHERE channel = %s AND status = 'pending'"
        " AND lease_until > %s",
        (channel, utc(now)),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def check_in(
    conn: Conn, worker: str, config: str, *, started_at: datetime, now: datetime
) -> list[Worker]:
    await conn.execute(
        "INSERT INTO workers (name, config, started_at, seen_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET config = excluded.config,"
        " started_at = excluded.started_at, seen_at = excluded.seen_at",
        (worker, config, utc(started_at), utc(now)),
    )
    await conn.execute("DELETE FROM workers WHERE seen_at <= %s", (utc(now) - WORKER_TTL,))
    cursor = await conn.execute(
        "SELECT name, config, started_at, seen_at FROM workers WHERE name <> %s ORDER BY name",
        (worker,),
    )
    return [
        Worker(r[0], r[1], r[2].astimezone(UTC), r[3].astimezone(UTC))
        for r in await cursor.fetchall()
    ]


async def check_out(conn: Conn, worker: str) -> None:
    await conn.execute("DELETE FROM workers WHERE name = %s", (worker,))
