"""The reference store: plain dicts, obviously correct, gone when the process exits.

Used by tests and `state: memory:`. Every method body runs without an `await`, so each call is
atomic on the event loop, which is all the serialisation the contract asks for. Stored objects
are frozen or private, and everything returned is a fresh frozen object: no caller can alias
the store's state.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType

from monitor.errors import StoreError
from monitor.models import (
    Alert,
    CacheInfo,
    Delivery,
    DeliveryStatus,
    FeedSpec,
    FeedState,
    Item,
    Retention,
)
from monitor.sources.identity import fingerprint
from monitor.store.codec import utc
from monitor.store.common import (
    LAST_SEEN_REFRESH,
    LEASE_TAKEN,
    WORKER_TTL,
    clean_alert,
    clean_targets,
    clean_text,
    cutoff,
    delivery_targets,
    first_per_key,
    first_poll_at,
    lease_live,
    lease_taken,
    next_cadence,
    stored_item,
)
from monitor.store.protocol import OutboxStat, Pruned, Recorded, Worker


@dataclass(slots=True)
class _Feed:
    state: FeedState
    active: bool = True
    lease_until: datetime | None = None
    lease_owner: str | None = None
    #: The last `record_items` (a document parsed); None until the first one.
    last_fetched_at: datetime | None = None


@dataclass(slots=True)
class _Item:
    item: Item
    last_seen_at: datetime
    text_pruned: bool
    #: Insertion order, the tie-break between items seen at the same instant.
    seq: int
    #: Second identity (link and title), see `identity.fingerprint`.
    alt: str | None = None


@dataclass(slots=True)
class _Alert:
    alert: Alert
    created_at: datetime


@dataclass(slots=True)
class _Delivery:
    id: int
    alert_id: int
    channel: str
    target: str
    created_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_error: str = ""
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None
    lease_owner: str | None = None
    sent_at: datetime | None = None


class MemoryStore:
    """Everything in dicts; see `monitor.store.protocol.Store` for the contract."""

    def __init__(self) -> None:
        self._open = False
        self._feeds: dict[str, _Feed] = {}
        self._items: dict[tuple[str, str], _Item] = {}
        #: (feed, fingerprint) -> key of the first item stored with it.
        self._alts: dict[tuple[str, str], str] = {}
        self._alerts: dict[int, _Alert] = {}
        self._deliveries: dict[int, _Delivery] = {}
        #: rule -> until; the time a mute was set is not needed by any read.
        self._mutes: dict[str, datetime] = {}
        #: channel -> its last digest time.
        self._digests: dict[str, datetime] = {}
        self._workers: dict[str, Worker] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        #: This store's claims carry this id (see the Store docstring).
        self.owner = uuid.uuid4().hex

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        # Data survives close/open on the same object, like a file would.
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check(self) -> None:
        if not self._open:
            raise StoreError("the store is not open")

    def _feed(self, name: str) -> _Feed:
        self._check()
        try:
            return self._feeds[name]
        except KeyError:
            raise StoreError(f"unknown feed {name!r}: sync_feeds never saw it") from None

    def _delivery(self, delivery_id: int) -> _Delivery:
        self._check()
        try:
            return self._deliveries[delivery_id]
        except KeyError:
            raise StoreError(f"unknown delivery {delivery_id}") from None

    # --- feeds -----------------------------------------------------------------------------

    async def sync_feeds(self, feeds: Sequence[FeedSpec], now: datetime) -> None:
        self._check()
        now = utc(now)
        configured = {spec.name: spec for spec in feeds}
        for name, known in self._feeds.items():
            known.active = name in configured
        new_feeds = sum(1 for name in configured if name not in self._feeds)
        for spec in configured.values():
            row = self._feeds.get(spec.name)
            if row is None:
                first = first_poll_at(spec.name, spec.interval, now, new_feeds)
                self._feeds[spec.name] = _Feed(FeedState(spec.name, spec.url, next_poll_at=first))
            elif row.state.url != spec.url:
                # Another URL may be another source: seed it again rather than risk a flood.
                row.state = replace(
                    row.state,
                    url=spec.url,
                    cache=CacheInfo(),
                    seeded=False,
                    dead_since=None,
                    dead_reason="",
                    failing_since=None,
                    consecutive_failures=0,
                )
                # The poll of the old URL in flight must not seed the new one.
                if row.lease_owner is not None or row.lease_until is not None:
                    row.lease_owner = LEASE_TAKEN
                row.lease_until = None

    async def claim_due_feeds(self, now: datetime, limit: int, lease: timedelta) -> list[FeedState]:
        self._check()
        now = utc(now)
        due = [
            row
            for row in self._feeds.values()
            if row.active
            and row.state.dead_since is None
            and row.state.next_poll_at is not None
            and row.state.next_poll_at <= now
            and not lease_live(row.lease_until, now)
        ]
        due.sort(key=lambda r: (r.state.next_poll_at, r.state.name))
        claimed = due[: max(limit, 0)]
        for row in claimed:
            row.lease_until = now + lease
            row.lease_owner = self.owner
        return [row.state for row in claimed]

    async def feed_state(self, name: str) -> FeedState | None:
        self._check()
        row = self._feeds.get(name)
        return None if row is None else row.state

    async def feed_states(self) -> list[FeedState]:
        self._check()
        return [self._feeds[n].state for n in sorted(self._feeds) if self._feeds[n].active]

    async def unseen(self, feed: str, keys: Sequence[str]) -> set[str]:
        self._check()
        return {k for k in keys if (feed, clean_text(k)) not in self._items}

    async def record_items(
        self,
        feed: str,
        items: Sequence[Item],
        alerts: Sequence[Alert],
        *,
        cache: CacheInfo,
        now: datetime,
        next_poll_at: datetime,
        warning: str = "",
        targets: Mapping[str, Sequence[str]] | None = None,
        ttl: int | None = None,
    ) -> Recorded:
        row = self._feed(feed)
        now, next_poll_at = utc(now), utc(next_poll_at)
        # Convert every input before the first write: a bad one must leave nothing behind.
        clean_alerts = [clean_alert(a) for a in alerts]
        chosen = clean_targets(targets)
        prepared = [(item, stored_item(item, feed, now)) for item in first_per_key(items)]
        if lease_taken(row.lease_owner, self.owner):
            return Recorded((), 0, 0)
        new_items = self._store_items(feed, prepared, now)
        n_alerts, n_deliveries = self._store_alerts(
            feed, clean_alerts, {i.key for i in new_items}, chosen, now
        )
        last_new_at, cadence = row.state.last_new_at, row.state.cadence
        if not row.state.seeded:
            last_new_at = now
        elif new_items:
            cadence, last_new_at = next_cadence(cadence, last_new_at, now), now
        row.state = replace(
            row.state,
            cache=CacheInfo(cache.etag, cache.last_modified),
            next_poll_at=next_poll_at,
            last_polled_at=now,
            last_success_at=now,
            last_error="",
            consecutive_failures=0,
            seeded=True,
            items_seen=row.state.items_seen + len(new_items),
            last_warning=clean_text(warning),
            failing_since=None,
            last_new_at=last_new_at,
            cadence=cadence,
            ttl=ttl,
        )
        row.last_fetched_at = now
        row.lease_until = row.lease_owner = None
        return Recorded(tuple(new_items), n_alerts, n_deliveries)

    def _store_items(
        self, feed: str, prepared: Sequence[tuple[Item, Item]], now: datetime
    ) -> list[Item]:
        """Insert the (as given, as stored) pairs not stored yet; refresh the others."""
        new_items: list[Item] = []
        for given, kept in prepared:
            stored = self._items.get((feed, kept.key))
            if stored is None:
                alt = fingerprint(kept.link, kept.title)
                self._items[(feed, kept.key)] = _Item(kept, now, False, next(self._seq), alt)
                if alt is not None:
                    self._alts.setdefault((feed, alt), kept.key)
                new_items.append(replace(kept, content=given.content))
            elif stored.last_seen_at < now - LAST_SEEN_REFRESH:
                stored.last_seen_at = now
        return new_items

    def _store_alerts(
        self,
        feed: str,
        alerts: Sequence[Alert],
        new_keys: set[str],
        targets: Mapping[str, tuple[str, ...]],
        now: datetime,
    ) -> tuple[int, int]:
        """Alerts for items new in this call (one per item), and their pending deliveries."""
        pending = set(new_keys)
        n_alerts = n_deliveries = 0
        for alert in alerts:
            if alert.feed != feed or alert.item_key not in pending:
                continue
            pending.discard(alert.item_key)
            alert_id = next(self._ids)
            self._alerts[alert_id] = _Alert(alert, now)
            n_alerts += 1
            for channel, target in delivery_targets(alert, targets):
                delivery_id = next(self._ids)
                self._deliveries[delivery_id] = _Delivery(
                    delivery_id, alert_id, channel, target, now
                )
                n_deliveries += 1
        return n_alerts, n_deliveries

    async def record_not_modified(
        self,
        feed: str,
        *,
        now: datetime,
        next_poll_at: datetime,
        cache: CacheInfo | None = None,
    ) -> None:
        row = self._feed(feed)
        now = utc(now)
        if lease_taken(row.lease_owner, self.owner):
            return
        row.state = replace(
            row.state,
            cache=row.state.cache if cache is None else CacheInfo(cache.etag, cache.last_modified),
            next_poll_at=utc(next_poll_at),
            last_polled_at=now,
            last_success_at=now,
            last_error="",
            consecutive_failures=0,
            failing_since=None,
        )
        row.lease_until = row.lease_owner = None

    async def record_failure(
        self, feed: str, error: str, *, now: datetime, next_poll_at: datetime, dead: bool = False
    ) -> None:
        row = self._feed(feed)
        now = utc(now)
        if lease_taken(row.lease_owner, self.owner):
            return
        error = clean_text(error)
        row.state = replace(
            row.state,
            next_poll_at=utc(next_poll_at),
            last_polled_at=now,
            last_error=error,
            consecutive_failures=row.state.consecutive_failures + 1,
            failing_since=row.state.failing_since or now,
            dead_since=now if dead else row.state.dead_since,
            dead_reason=error if dead else row.state.dead_reason,
        )
        row.lease_until = row.lease_owner = None

    async def revive_feeds(self, names: Sequence[str], now: datetime) -> list[str]:
        self._check()
        found = [n for n in dict.fromkeys(names) if n in self._feeds]
        for name in found:
            row = self._feeds[name]
            row.state = replace(
                row.state,
                dead_since=None,
                dead_reason="",
                failing_since=None,
                consecutive_failures=0,
                next_poll_at=utc(now),
            )
        return found

    async def record_notice(
        self,
        feed: str,
        kind: str,
        alert: Alert | None,
        *,
        now: datetime,
        targets: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        row = self._feed(feed)
        now = utc(now)
        written = 0
        if row.state.notice == kind:  # recorded already: once per change
            return 0
        if alert is not None:
            clean = clean_alert(alert)
            chosen = clean_targets(targets)
            alert_id = next(self._ids)
            self._alerts[alert_id] = _Alert(clean, now)
            for channel, target in delivery_targets(clean, chosen):
                delivery_id = next(self._ids)
                self._deliveries[delivery_id] = _Delivery(
                    delivery_id, alert_id, channel, target, now
                )
                written += 1
        row.state = replace(row.state, notice=kind)
        return written

    async def seen_alike(self, feed: str, items: Sequence[Item]) -> set[str]:
        self._check()
        alike: set[str] = set()
        for item in items:
            alt = fingerprint(item.link, item.title)
            known = None if alt is None else self._alts.get((feed, alt))
            if known is not None and known != item.key:
                alike.add(item.key)
        return alike

    async def release_feeds(self, names: Sequence[str]) -> None:
        self._check()
        for name in names:
            row = self._feeds.get(name)
            if row is not None and not lease_taken(row.lease_owner, self.owner):
                row.lease_until = row.lease_owner = None

    # --- items -----------------------------------------------------------------------------

    async def recent_items(self, since: datetime, feed: str | None = None) -> list[Item]:
        self._check()
        since = utc(since)
        found = [
            row
            for row in self._items.values()
            if not row.text_pruned
            and (feed is None or row.item.feed == feed)
            and row.item.seen_at is not None
            and row.item.seen_at >= since
        ]
        found.sort(key=lambda r: (r.item.seen_at, r.seq), reverse=True)
        return [row.item for row in found]

    # --- deliveries ------------------------------------------------------------------------

    def _to_delivery(self, row: _Delivery) -> Delivery:
        return Delivery(
            id=row.id,
            channel=row.channel,
            alert=self._alerts[row.alert_id].alert,
            status=row.status,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            target=row.target,
        )

    async def claim_deliveries(
        self,
        channel: str,
        now: datetime,
        limit: int,
        lease: timedelta,
        skip_targets: Collection[str] = (),
    ) -> list[Delivery]:
        now = utc(now)
        claimed = self._due(channel, now, limit, skip_targets)
        for row in claimed:
            row.lease_until = now + lease
            row.lease_owner = self.owner
        return [self._to_delivery(row) for row in claimed]

    async def release_deliveries(self, delivery_ids: Sequence[int]) -> None:
        """Drop the claim on deliveries claimed but not tried; unknown ids are ignored."""
        self._check()
        for delivery_id in delivery_ids:
            row = self._deliveries.get(delivery_id)
            if (
                row is not None
                and row.status is DeliveryStatus.PENDING
                and not lease_taken(row.lease_owner, self.owner)
            ):
                row.lease_until = row.lease_owner = None

    async def extend_claims(
        self, delivery_ids: Sequence[int], now: datetime, lease: timedelta
    ) -> list[int]:
        self._check()
        until = utc(now) + lease
        kept: list[int] = []
        for delivery_id in dict.fromkeys(delivery_ids):
            row = self._deliveries.get(delivery_id)
            if (
                row is not None
                and row.status is DeliveryStatus.PENDING
                and row.lease_owner == self.owner
            ):
                row.lease_until = until
                kept.append(delivery_id)
        return kept

    async def mark_sent(self, delivery_id: int, now: datetime) -> None:
        row = self._delivery(delivery_id)
        if row.status is not DeliveryStatus.SENT:
            row.status = DeliveryStatus.SENT
            row.sent_at = utc(now)
        row.lease_until = row.lease_owner = None

    async def mark_retry(
        self,
        delivery_id: int,
        error: str,
        *,
        now: datetime,
        retry_at: datetime,
        attempt: bool = True,
    ) -> None:
        row = self._delivery(delivery_id)
        # A late report on a row already finished (its lease expired and another attempt
        # settled it) must not reopen it: that would send a second copy.
        if row.status is DeliveryStatus.PENDING:
            if attempt:
                row.attempts += 1
            row.last_error = clean_text(error)
            row.next_attempt_at = utc(retry_at)
            if not lease_taken(row.lease_owner, self.owner):  # another store's claim stays
                row.lease_until = row.lease_owner = None

    async def mark_failed(self, delivery_id: int, error: str, *, now: datetime) -> None:
        row = self._delivery(delivery_id)
        if row.status is DeliveryStatus.PENDING:
            row.status = DeliveryStatus.FAILED
            row.attempts += 1
            row.last_error = clean_text(error)
            row.lease_until = row.lease_owner = None

    async def pending_count(self, channel: str | None = None) -> int:
        self._check()
        return sum(
            1
            for row in self._deliveries.values()
            if row.status is DeliveryStatus.PENDING and channel in (None, row.channel)
        )

    async def pending_by_target(self, channel: str) -> dict[str, int]:
        self._check()
        counts: dict[str, int] = {}
        for row in self._deliveries.values():
            if row.channel == channel and row.status is DeliveryStatus.PENDING:
                counts[row.target] = counts.get(row.target, 0) + 1
        return dict(sorted(counts.items()))

    async def deliveries(
        self, channel: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        self._check()
        rows = [
            row
            for row in self._deliveries.values()
            if channel in (None, row.channel) and status in (None, row.status.value)
        ]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [self._to_delivery(row) for row in rows[: max(limit, 0)]]

    async def outbox_stats(self, now: datetime) -> list[OutboxStat]:
        self._check()
        counts: dict[str, dict[DeliveryStatus, int]] = {}
        oldest: dict[str, datetime] = {}
        for row in self._deliveries.values():
            by_status = counts.setdefault(row.channel, dict.fromkeys(DeliveryStatus, 0))
            by_status[row.status] += 1
            if row.status is DeliveryStatus.PENDING:
                first = oldest.get(row.channel)
                oldest[row.channel] = (
                    row.created_at if first is None else min(first, row.created_at)
                )
        return [
            OutboxStat(
                channel,
                by_status[DeliveryStatus.PENDING],
                by_status[DeliveryStatus.SENT],
                by_status[DeliveryStatus.FAILED],
                oldest.get(channel),
            )
            for channel, by_status in sorted(counts.items())
        ]

    async def retry_due_count(self, channel: str, now: datetime) -> int:
        self._check()
        now = utc(now)
        return sum(
            1
            for row in self._deliveries.values()
            if row.channel == channel
            and row.status is DeliveryStatus.PENDING
            and row.attempts >= 1
            and row.next_attempt_at is not None
            and row.next_attempt_at <= now
            and not lease_live(row.lease_until, now)
        )

    # --- workers ---------------------------------------------------------------------------

    async def check_in(
        self, worker: str, config: str, *, started_at: datetime, now: datetime
    ) -> list[Worker]:
        self._check()
        now = utc(now)
        self._workers[worker] = Worker(worker, config, utc(started_at), now)
        self._workers = {n: w for n, w in self._workers.items() if w.seen_at > now - WORKER_TTL}
        return [w for n, w in sorted(self._workers.items()) if n != worker]

    async def check_out(self, worker: str) -> None:
        self._check()
        self._workers.pop(worker, None)

    # --- digests ---------------------------------------------------------------------------

    async def last_digest(self, channel: str) -> datetime | None:
        self._check()
        return self._digests.get(channel)

    async def set_last_digest(self, channel: str, at: datetime) -> None:
        self._check()
        self._digests[channel] = utc(at)

    # --- alerts ----------------------------------------------------------------------------

    async def alert_count(self, since: datetime) -> int:
        self._check()
        since = utc(since)
        return sum(1 for row in self._alerts.values() if row.created_at >= since)

    # --- mutes -----------------------------------------------------------------------------

    async def mute(self, rule: str, until: datetime, *, now: datetime) -> None:
        self._check()
        utc(now)  # refused when naive, like everywhere else
        self._mutes[rule] = utc(until)

    async def unmute(self, rule: str) -> bool:
        self._check()
        return self._mutes.pop(rule, None) is not None

    async def mutes(self, now: datetime) -> dict[str, datetime]:
        self._check()
        now = utc(now)
        return {rule: until for rule, until in sorted(self._mutes.items()) if until > now}

    # --- housekeeping ----------------------------------------------------------------------

    def _left_feed(self, feed: str, last_seen_at: datetime) -> bool:
        """Whether an item last seen at `last_seen_at` was missing from `feed`'s latest parsed
        document (always true for a feed never fetched)."""
        row = self._feeds.get(feed)
        fetched = None if row is None else row.last_fetched_at
        return fetched is None or last_seen_at < fetched - LAST_SEEN_REFRESH

    async def prune(self, now: datetime, retention: Retention) -> Pruned:
        self._check()
        now = utc(now)
        seen_cutoff = cutoff(now, retention.seen)
        forget = [
            key
            for key, row in self._items.items()
            if row.last_seen_at < seen_cutoff and self._left_feed(key[0], row.last_seen_at)
        ]
        for key in forget:
            alt = self._items.pop(key).alt
            if alt is not None and self._alts.get((key[0], alt)) == key[1]:
                del self._alts[(key[0], alt)]
        texts = 0
        text_cutoff = cutoff(now, retention.text)
        for row in self._items.values():
            seen_at = row.item.seen_at
            if not row.text_pruned and seen_at is not None and seen_at < text_cutoff:
                row.item = replace(row.item, title="", summary="", link="", author="", tags=())
                row.text_pruned = True
                texts += 1
        old_cutoff = cutoff(now, retention.deliveries)
        old = [
            d.id
            for d in self._deliveries.values()
            if d.status is not DeliveryStatus.PENDING and d.created_at < old_cutoff
        ]
        for delivery_id in old:
            del self._deliveries[delivery_id]
        referenced = {d.alert_id for d in self._deliveries.values()}
        for alert_id in [
            i for i, a in self._alerts.items() if i not in referenced and a.created_at < old_cutoff
        ]:
            del self._alerts[alert_id]
        ended = [rule for rule, until in self._mutes.items() if until <= now]
        for rule in ended:
            del self._mutes[rule]
        return Pruned(items=len(forget), texts=texts, deliveries=len(old), mutes=len(ended))

    # --- digests: outbox operations --------------------------------------------------------

    async def mark_sent_many(self, delivery_ids: Sequence[int], now: datetime) -> None:
        self._check()
        rows = [self._delivery(delivery_id) for delivery_id in delivery_ids]  # all known first
        now = utc(now)
        for row in rows:
            if row.status is not DeliveryStatus.SENT:
                row.status = DeliveryStatus.SENT
                row.sent_at = now
            row.lease_until = row.lease_owner = None

    async def due_deliveries(
        self,
        channel: str,
        now: datetime,
        limit: int,
        skip_targets: Collection[str] = (),
    ) -> list[Delivery]:
        return [self._to_delivery(row) for row in self._due(channel, utc(now), limit, skip_targets)]

    def _due(
        self, channel: str, now: datetime, limit: int, skip_targets: Collection[str]
    ) -> list[_Delivery]:
        """`channel`'s pending deliveries due at `now` and not claimed, oldest first."""
        self._check()
        skip = frozenset(skip_targets)
        due = [
            row
            for row in self._deliveries.values()
            if row.channel == channel
            and row.target not in skip
            and row.status is DeliveryStatus.PENDING
            and (row.next_attempt_at is None or row.next_attempt_at <= now)
            and not lease_live(row.lease_until, now)
        ]
        due.sort(key=lambda r: (r.created_at, r.id))
        return due[: max(limit, 0)]

    async def release_claims(self, channel: str) -> int:
        self._check()
        released = 0
        for row in self._deliveries.values():
            if (
                row.channel == channel
                and row.status is DeliveryStatus.PENDING
                and row.lease_until is not None
            ):
                row.lease_until = row.lease_owner = None
                released += 1
        return released

    async def claimed_count(self, channel: str, now: datetime) -> int:
        self._check()
        now = utc(now)
        return sum(
            1
            for row in self._deliveries.values()
            if row.channel == channel
            and row.status is DeliveryStatus.PENDING
            and lease_live(row.lease_until, now)
        )

    @asynccontextmanager
    async def digest_lock(self, channel: str) -> AsyncIterator[None]:
        """Nothing to hold: only this process uses a memory store."""
        self._check()
        yield

    @asynccontextmanager
    async def lead(self, role: str) -> AsyncIterator[asyncio.Event]:
        """Granted at once: only this process uses a memory store."""
        self._check()
        yield asyncio.Event()
