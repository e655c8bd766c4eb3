"""Rules every store applies the same way, so the backends cannot drift apart."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.errors import StoreError
from monitor.models import Alert, CacheInfo, Item, Match
from monitor.store.codec import opt_utc, utc

#: A stored item's last-seen time is rewritten only when older than this: a feed listing the
#: same 50 items every minute would otherwise cost 50 writes per poll, and retention is counted
#: in days anyway.
LAST_SEEN_REFRESH = timedelta(days=1)

#: New feeds' first polls are spread over at most this long after a start.
FIRST_POLL_SPREAD = timedelta(minutes=1)
#: ...and over this much per new feed, so a handful of new feeds is polled at once while
#: thousands are spread over the whole minute.
SPREAD_PER_FEED = timedelta(milliseconds=50)


def first_poll_at(name: str, interval: timedelta, now: datetime, new_feeds: int) -> datetime:
    """When a newly configured feed is first polled: in [now, now + spread), where spread is
    the smallest of the feed's interval, one minute, and 50 ms per feed added in this sync.

    Seeded from the feed name, so the spread is even over many feeds yet the same on every run
    (tests can rely on it, and a restart does not reshuffle).
    """
    spread = min(interval, FIRST_POLL_SPREAD, SPREAD_PER_FEED * new_feeds)
    spread_us = max(spread, timedelta(0)) // timedelta(microseconds=1)
    # Floor to whole microseconds so rounding can never reach the (open) end of the range.
    return now + timedelta(microseconds=int(spread_us * random.Random(name).random()))


#: `FeedState` lease owner written by `sync_feeds` when it takes a claimed feed's lease away
#: (its URL changed): no store has it, so the poll in flight writes nothing when it ends.
LEASE_TAKEN = "(taken: the url changed)"


def lease_taken(owner: str | None, me: str) -> bool:
    """Whether a row leased to `owner` was claimed by a store other than `me` (or its lease
    taken away): a finishing write of `me` then writes nothing. An unclaimed row (None) is
    anyone's, as in a single process that records without claiming."""
    return owner is not None and owner != me


def lease_live(lease_until: datetime | None, now: datetime) -> bool:
    """A lease holds until `lease_until`; from that instant on the row may be claimed again."""
    return lease_until is not None and lease_until > now


def clean_match(match: Match) -> Match:
    """A copy made only of tuples, whatever sequences the caller built it with; the text a
    document contributed (terms, snippet) without NUL."""
    return Match(
        match.rule,
        tuple(clean_text(term) for term in match.terms),
        tuple(match.fields),
        tuple(match.channels),
        clean_text(match.snippet),
    )


def clean_alert(alert: Alert) -> Alert:
    """The alert as a store keeps it: UTC times, tuples only, text without NUL."""
    return replace(
        alert,
        item_key=clean_text(alert.item_key),
        title=clean_text(alert.title),
        link=clean_text(alert.link),
        summary=clean_text(alert.summary),
        published=opt_utc(alert.published),
        seen_at=utc(alert.seen_at),
        matches=tuple(clean_match(m) for m in alert.matches),
    )


def clean_text(text: str) -> str:
    """`text` as every store keeps it: without NUL characters, which PostgreSQL's text type
    refuses (SQLite would keep them; the stores must not differ). Parsed feeds, server error
    messages and channel replies may carry them."""
    return text.replace("\x00", "") if "\x00" in text else text


def stored_item(item: Item, feed: str, seen_at: datetime) -> Item:
    """What a store keeps of an item: no content (it is only needed to match), UTC times,
    text without NUL (`clean_text`)."""
    return Item(
        feed=feed,
        key=clean_text(item.key),
        title=clean_text(item.title),
        link=clean_text(item.link),
        summary=clean_text(item.summary),
        author=clean_text(item.author),
        tags=tuple(clean_text(tag) for tag in item.tags),
        published=opt_utc(item.published),
        seen_at=utc(seen_at),
    )


def first_per_key(items: Sequence[Item]) -> list[Item]:
    """`items` without repeated keys (as stored: `clean_text`), the first one winning, in
    input order."""
    first: dict[str, Item] = {}
    for item in items:
        first.setdefault(clean_text(item.key), item)
    return list(first.values())


def cutoff(now: datetime, age: timedelta) -> datetime:
    """`now - age`, clamped: a retention of "forever" (timedelta.max) must not overflow."""
    try:
        return now - age
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def clean_targets(targets: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """A copy of `record_items`' targets: tuples, repeats dropped, empty ones left out.

    TypeError for a `str` value: it is a Sequence[str] too, and would become one target per
    character (a chat id "-100123" sending to "-", "1", "0", ...). TypeError as well for a
    target that is no `str` (an int chat id read from YAML), which backends would store
    differently.
    """
    cleaned: dict[str, tuple[str, ...]] = {}
    for channel, wanted in (targets or {}).items():
        if isinstance(wanted, str):
            raise TypeError(f"targets of channel {channel!r} must be a sequence, not a str")
        unique = tuple(dict.fromkeys(wanted))
        if not all(isinstance(target, str) for target in unique):
            raise TypeError(f"targets of channel {channel!r} must be str: {unique!r}")
        if unique:
            cleaned[channel] = unique
    return cleaned


def delivery_targets(alert: Alert, targets: Mapping[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """The (channel, target) pairs `alert` gets a delivery for, in order (see `record_items`).

    `targets` as `clean_targets` made it: a channel missing from it has one target, "".
    """
    return [
        (channel, target) for channel in alert.channels for target in targets.get(channel, ("",))
    ]


#: Weight of the newest gap in the moving average of a feed's cadence.
CADENCE_WEIGHT = 0.3


def next_cadence(
    cadence: timedelta | None, last_new_at: datetime | None, now: datetime
) -> timedelta | None:
    """The feed's usual time between polls finding new items, after one more such poll at
    `now`: an exponential moving average of the gaps, started by the first gap."""
    if last_new_at is None or now <= last_new_at:
        return cadence
    gap = now - last_new_at
    if cadence is None:
        return gap
    return cadence * (1 - CADENCE_WEIGHT) + gap * CADENCE_WEIGHT


#: One 304 to record (`Store.record_not_modified`, batched by `batch.Batcher`): feed, now,
#: next poll, new validators (None: keep the stored ones).
NotModified = tuple[str, datetime, datetime, CacheInfo | None]


def unstorable(poll: NotModified) -> StoreError | None:
    """Why a 304 cannot be written (text that is not valid Unicode), checked before a batch's
    transaction so that one bad row cannot fail the others; None when it can."""
    feed, _, _, cache = poll
    texts = (feed, "") if cache is None else (feed, cache.etag or "", cache.last_modified or "")
    try:
        for text in texts:
            text.encode()
    except UnicodeEncodeError as exc:
        return StoreError(f"feed {feed!r}: validator is not valid Unicode: {exc}")
    return None


#: A worker that has not checked in for this long is gone (`Store.check_in`); workers check
#: in every minute.
WORKER_TTL = timedelta(minutes=3)
