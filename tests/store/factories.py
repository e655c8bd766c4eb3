"""Builders for store tests: feeds, items, alerts and a fixed clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from monitor.models import Alert, CacheInfo, FeedSpec, FeedState, Item, Match
from monitor.store import Recorded, Store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def spec(name: str = "a", *, url: str | None = None, interval: timedelta = 5 * MINUTE) -> FeedSpec:
    return FeedSpec(name=name, url=url or f"https://example.com/{name}.xml", interval=interval)


def item(key: str, feed: str = "a", **fields: object) -> Item:
    values: dict[str, object] = {
        "title": f"title {key}",
        "link": f"https://example.com/{key}",
        "summary": f"summary {key}",
    }
    values.update(fields)
    return Item(feed=feed, key=key, **values)  # type: ignore[arg-type]


def alert(
    key: str,
    feed: str = "a",
    channels: Sequence[str] = ("tg",),
    *,
    seen_at: datetime = T0,
    **fields: object,
) -> Alert:
    values: dict[str, object] = {
        "title": f"title {key}",
        "link": f"https://example.com/{key}",
        "summary": f"summary {key}",
        "published": None,
        "matches": (Match("rule", ("term",), ("title",), tuple(channels)),),
    }
    values.update(fields)
    return Alert(feed=feed, item_key=key, seen_at=seen_at, **values)  # type: ignore[arg-type]


async def record(
    store: Store,
    feed: str,
    items: Sequence[Item],
    alerts: Sequence[Alert] = (),
    *,
    now: datetime = T0,
    next_poll_at: datetime | None = None,
    cache: CacheInfo | None = None,
    warning: str = "",
    targets: Mapping[str, Sequence[str]] | None = None,
    ttl: int | None = None,
) -> Recorded:
    return await store.record_items(
        feed,
        items,
        alerts,
        cache=cache or CacheInfo(),
        now=now,
        next_poll_at=next_poll_at or now + 5 * MINUTE,
        warning=warning,
        targets=targets,
        ttl=ttl,
    )


async def poll_at(store: Store, feed: str, when: datetime) -> None:
    """Schedule `feed`'s next poll at `when` (through a 304, which changes nothing else)."""
    await store.record_not_modified(feed, now=T0, next_poll_at=when)


async def state(store: Store, name: str = "a") -> FeedState:
    """The stored state of feed `name`, which must exist."""
    found = await store.feed_state(name)
    assert found is not None
    return found
