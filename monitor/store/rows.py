"""Rows of the database stores (SQLite, PostgreSQL) read back into domain objects.

Both schemas hold the same columns; only how a time comes back differs (ISO text from SQLite,
a timestamptz from PostgreSQL), so each decoder takes the backend's `When`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from monitor.models import Alert, CacheInfo, Delivery, DeliveryStatus, FeedState, Item
from monitor.store.codec import json_to_matches, json_to_tags

#: A stored time as the backend returns it -> aware UTC datetime; None stays None.
When = Callable[[Any], datetime | None]

FEED_COLUMNS = (
    "name, url, etag, last_modified, next_poll_at, last_polled_at, last_success_at,"
    " last_error, consecutive_failures, seeded, items_seen, last_warning,"
    " failing_since, dead_since, dead_reason, last_new_at, cadence, notice, ttl"
)
ITEM_COLUMNS = "feed, key, title, link, summary, author, tags_json, published, seen_at"
DELIVERY_SELECT = (
    "SELECT d.id, d.channel, d.status, d.attempts, d.last_error, d.created_at,"
    " a.feed, a.item_key, a.title, a.link, a.summary, a.published, a.seen_at, a.matches_json,"
    " d.target"
    " FROM deliveries AS d JOIN alerts AS a ON a.id = d.alert_id"
)


def feed_state(row: Any, when: When) -> FeedState:
    """A row of `SELECT {FEED_COLUMNS}`."""
    return FeedState(
        name=row[0],
        url=row[1],
        cache=CacheInfo(etag=row[2], last_modified=row[3]),
        next_poll_at=when(row[4]),
        last_polled_at=when(row[5]),
        last_success_at=when(row[6]),
        last_error=row[7],
        consecutive_failures=row[8],
        seeded=bool(row[9]),
        items_seen=row[10],
        last_warning=row[11],
        failing_since=when(row[12]),
        dead_since=when(row[13]),
        dead_reason=row[14],
        last_new_at=when(row[15]),
        cadence=None if row[16] is None else timedelta(seconds=row[16]),
        notice=row[17],
        ttl=row[18],
    )


def item(row: Any, when: When) -> Item:
    """A row of `SELECT {ITEM_COLUMNS}`."""
    return Item(
        feed=row[0],
        key=row[1],
        title=row[2],
        link=row[3],
        summary=row[4],
        author=row[5],
        tags=json_to_tags(row[6]),
        published=when(row[7]),
        seen_at=_required(when, row[8]),
    )


def delivery(row: Any, when: When) -> Delivery:
    """A row of `DELIVERY_SELECT`."""
    alert = Alert(
        feed=row[6],
        item_key=row[7],
        title=row[8],
        link=row[9],
        summary=row[10],
        published=when(row[11]),
        seen_at=_required(when, row[12]),
        matches=json_to_matches(row[13]),
    )
    return Delivery(
        id=row[0],
        channel=row[1],
        alert=alert,
        status=DeliveryStatus(row[2]),
        attempts=row[3],
        last_error=row[4],
        created_at=_required(when, row[5]),
        target=row[14],
    )


def _required(when: When, value: Any) -> datetime:
    decoded = when(value)
    if decoded is None:  # NOT NULL columns: only a damaged database gets here
        raise ValueError("a required time is missing from a stored row")
    return decoded
