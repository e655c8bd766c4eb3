"""The Store contract: everything the daemon remembers between polls and across restarts.

Implementations: `MemoryStore` (reference, for tests and `state: memory:`), `SQLiteStore`
(default). A PostgreSQL store will implement the same contract for several workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol

from monitor.models import Alert, CacheInfo, Delivery, FeedSpec, FeedState, Item, Retention


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record_items` actually wrote."""

    #: Items that were new (not already stored for that feed), in input order.
    new_items: tuple[Item, ...]
    #: Alerts written (only those whose item was new).
    alerts: int
    #: Delivery rows written (one per alert, channel and target).
    deliveries: int


@dataclass(frozen=True, slots=True)
class Pruned:
    """What `prune` removed."""

    items: int
    texts: int
    deliveries: int
    #: Mutes that had ended.
    mutes: int = 0


@dataclass(frozen=True, slots=True)
class Worker:
    """A process using the store, as of its last `check_in`."""

    #: "host:pid".
    name: str
    #: Digest of the config file it runs ("" when it has none).
    config: str
    started_at: datetime
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxStat:
    """One channel's deliveries in the outbox (`outbox_stats`), for /status and the gauges."""

    channel: str
    #: Deliveries not yet sent nor failed for good (claimed ones and ones awaiting a retry too).
    pending: int
    #: Deliveries sent, still kept (`retention.deliveries`).
    sent: int
    #: Deliveries failed for good, still kept.
    failed: int
    #: Creation time of the oldest pending delivery (UTC); None when none is pending.
    oldest_pending: datetime | None


class Store(Protocol):
    """Durable state: feeds' poll state, seen items, alerts, the delivery outbox, mutes and
    digest times.

    Lifecycle: `await store.open()` before use (creates or migrates the schema, takes any
    instance lock), `await store.close()` at the end; both idempotent. `async with store:` does
    both. Every method is a coroutine and is safe to call from one event loop concurrently; an
    implementation serialises access itself (SQLite runs all calls in one worker thread).

    Atomicity: `record_items` writes the new items, their alerts and their delivery rows, and
    the feed's success state, in ONE transaction: after a crash either all of it is there or
    none of it (the feed is then simply fetched again). Nothing is ever sent before that commit.

    Time: every method that needs the time takes `now` (aware UTC); stores never read a clock.

    Claims have an owner: each store object (each worker) claims feeds and deliveries under an
    id of its own. Releasing a claim, and finishing a feed's poll, act only on the claims of
    the store doing it, or on rows nobody claimed (a process that records without claiming):
    a worker whose lease ran out, and whose feed or delivery another worker claimed since,
    cannot clear that worker's claim (a third one would poll or send the same thing again).

    Text: NUL characters are removed from every text stored (`common.clean_text`); PostgreSQL
    refuses them, and the stores keep the same things.

    Errors: `StoreError` when the store cannot be opened (locked by another instance, newer
    schema than this code knows) or a write fails; the caller stops advancing on it.
    """

    async def open(self) -> None:
        """Connect, create or migrate the schema, take the instance lock where there is one."""
        ...

    async def close(self) -> None:
        """Release every resource; pending work stays stored."""
        ...

    async def __aenter__(self) -> Store:
        """`open()`, then the store itself."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """`close()`."""
        ...

    # --- feeds ---------------------------------------------------------------------------------

    async def sync_feeds(self, feeds: Sequence[FeedSpec], now: datetime) -> None:
        """Make the stored feed set match the config.

        A new feed gets a first poll time spread over [now, now + min(interval, 1 min, 50 ms per
        new feed)) so a start with many feeds does not burst. A feed whose URL changed keeps
        its seen items but loses its cache validators and is seeded again (another URL may be
        another source, and its backlog must not flood); it is also revived if dead, and a claim
        on it is taken away: it can be claimed again at once, and the poll of the old URL
        still in flight writes nothing when it ends (see `record_items`). Feeds no
        longer configured are kept (their seen items too) but never returned by
        `claim_due_feeds`. Existing poll times are kept (a restart resumes the schedule).
        """
        ...

    async def claim_due_feeds(self, now: datetime, limit: int, lease: timedelta) -> list[FeedState]:
        """Claim up to `limit` configured live (not dead) feeds whose next poll time is <= `now`,
        oldest first.

        A claimed feed is not returned again until it is finished (`record_items`,
        `record_not_modified`, `record_failure`), released (`release_feeds`) or `now + lease`
        has passed. This is what keeps
        a feed from being polled twice at once. (A lease holds while `now < lease_until`; at
        `lease_until` exactly the feed can be claimed again. Same for deliveries.)
        """
        ...

    async def feed_state(self, name: str) -> FeedState | None:
        """The stored state of one feed, or None if it was never synced."""
        ...

    async def feed_states(self) -> list[FeedState]:
        """All configured feeds' states (dead ones too), by name."""
        ...

    async def unseen(self, feed: str, keys: Sequence[str]) -> set[str]:
        """The subset of `keys` not yet stored for `feed` (a read; no claim is made)."""
        ...

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
        """Finish a successful poll in one transaction.

        Stores the items not yet stored for `feed` (first one wins on duplicate keys; stored
        ones get their last-seen time refreshed), then each alert whose item was new in THIS
        call, with its pending deliveries. Alerts for items that were already stored are
        dropped: an item alerts at most once, ever. Also saves the validators, resets the
        failure count, marks the feed seeded and releases its claim. Remembers `now` as the
        feed's last fetch, which retention counts from (see `prune`).

        Deliveries: for each channel in `alert.channels`, one per target (destination within
        the channel, e.g. a Telegram chat id) in `targets[channel]`, in the order given,
        repeated targets once; a channel absent from `targets`, or mapped to an empty sequence,
        gets one delivery with target "". So each destination succeeds, fails and pauses on its
        own row. A plain `str` as a mapping value is refused (TypeError): it would be taken as
        one target per character.

        Items are stored under `feed` with `seen_at = now` (an input `seen_at` is ignored); the
        returned `new_items` carry that time and keep their `content`, which is not stored.
        Alerts of another feed, and a second alert for one item, are dropped too. StoreError
        if `feed` was never synced (same for `record_not_modified` and `record_failure`).

        Health: clears `failing_since`; when the feed was seeded and this call stored new
        items, updates `cadence` from the time since `last_new_at` (see `common.next_cadence`)
        and sets `last_new_at = now`; the first fetch sets `last_new_at = now` only.
        Saves `ttl` (the document's RSS `<ttl>`, minutes, or None) as `FeedState.ttl`.

        Claim taken: when the feed was claimed by another store since this one claimed it
        (its lease ran out), or `sync_feeds` took the claim away (the URL changed while this
        poll ran), the poll is stale: NOTHING is written (no item, alert, delivery, nor feed
        state: the old URL's validators must not seed the new one) and `Recorded((), 0, 0)` is
        returned; whoever claims the feed next polls it again. `record_not_modified` and
        `record_failure` likewise write nothing, without error. A feed nobody claimed is
        recorded as usual.
        """
        ...

    async def record_not_modified(
        self,
        feed: str,
        *,
        now: datetime,
        next_poll_at: datetime,
        cache: CacheInfo | None = None,
    ) -> None:
        """Finish a poll that got 304: success (clears `failing_since`), releases the claim.

        A 304 may carry new validators (a new ETag): given `cache`, they replace the stored
        ones, both fields as given (like `record_items`); without it the stored ones stay.
        Not a fetch: items keep their last-seen times and retention does not advance.
        Writes nothing when the claim was taken (see `record_items`).
        """
        ...

    async def record_failure(
        self, feed: str, error: str, *, now: datetime, next_poll_at: datetime, dead: bool = False
    ) -> None:
        """Finish a failed poll: keep `error`, count it, set the next poll, release the claim.

        The first failure after a success sets `failing_since` to `now` (any success clears
        it). With `dead`, the feed is also declared dead (`dead_since = now`, `dead_reason =
        error`): `claim_due_feeds` skips it until `revive_feeds`, or `sync_feeds` with a new URL.
        Writes nothing when the claim was taken (see `record_items`).
        """
        ...

    async def revive_feeds(self, names: Sequence[str], now: datetime) -> list[str]:
        """Bring dead feeds back: clear the dead mark, the failure count and `failing_since`,
        and make them due at `now`. Feeds that are alive are made due at `now` too (a manual
        retry). Returns the names found, in the order given; unknown names are ignored.
        """
        ...

    async def record_notice(
        self,
        feed: str,
        kind: str,
        alert: Alert | None,
        *,
        now: datetime,
        targets: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        """Remember `kind` as the feed's last health notice (`FeedState.notice`) and, in the
        same transaction, store `alert` (a notice for the admin channel, whatever its
        `item_key`: notices are not items) with one pending delivery per channel and target as
        in `record_items`. Returns the deliveries written. StoreError for an unknown feed.

        Once per change: when `kind` already is the feed's notice, nothing is written (not
        `alert` either) and 0 is returned, so two workers noticing the same change at once
        queue it once.
        """
        ...

    async def seen_alike(self, feed: str, items: Sequence[Item]) -> set[str]:
        """Keys of `items` stored under another key for `feed` with the same fingerprint (the
        same normalised link and title, see `identity.fingerprint`): the same story whose id
        changed. Items with no fingerprint (no link or no title) are never alike.
        """
        ...

    async def release_feeds(self, names: Sequence[str]) -> None:
        """Drop the claim on feeds claimed but not finished (polls cancelled at shutdown), so
        they are due again at once; nothing else changes (no failure is counted, the next poll
        time stays). Unknown names, unclaimed feeds, and feeds claimed by another store since
        (this one's lease ran out) are ignored.
        """
        ...

    # --- items ---------------------------------------------------------------------------------

    async def recent_items(self, since: datetime, feed: str | None = None) -> list[Item]:
        """Stored items first seen at or after `since` whose text is still kept, newest first."""
        ...

    # --- deliveries ----------------------------------------------------------------------------

    async def claim_deliveries(
        self,
        channel: str,
        now: datetime,
        limit: int,
        lease: timedelta,
        skip_targets: Collection[str] = (),
    ) -> list[Delivery]:
        """Claim up to `limit` pending deliveries for `channel` that are due, oldest first
        (by creation time, then id).

        Due means: never attempted, or its retry time has come. A claimed delivery is not
        returned again until it is marked or `now + lease` has passed. Deliveries whose target
        is in `skip_targets` (the destinations the dispatcher has paused) are neither returned
        nor claimed, and do not count towards `limit`.
        """
        ...

    async def release_deliveries(self, delivery_ids: Sequence[int]) -> None:
        """Drop the claim on deliveries claimed but not tried (shutdown, a paused channel), so
        they are due again at once; no attempt is counted. Unknown or finished ids, and
        deliveries claimed by another store since (this one's lease ran out), are ignored.
        """
        ...

    async def extend_claims(
        self, delivery_ids: Sequence[int], now: datetime, lease: timedelta
    ) -> list[int]:
        """Keep claiming these deliveries: the ones still pending and claimed by THIS store
        (even if their lease ran out meanwhile, as long as no other store claimed them since)
        are leased until `now + lease`; returns their ids, in the order given, each once.
        A dispatcher whose batch may outlast its lease extends before each send and skips the
        ones not returned (sent, failed, released, or claimed by another worker). Unknown ids
        are ignored.
        """
        ...

    async def mark_sent(self, delivery_id: int, now: datetime) -> None:
        """Record a send the channel accepted. Idempotent."""
        ...

    async def mark_retry(
        self,
        delivery_id: int,
        error: str,
        *,
        now: datetime,
        retry_at: datetime,
        attempt: bool = True,
    ) -> None:
        """Record a failed attempt to retry at `retry_at`; counts the attempt, keeps `error`.

        With `attempt=False` the attempt is not counted (a channel answering "retry after N
        seconds" did not fail); `error`, `retry_at` and the released claim are as above.

        `mark_retry` and `mark_failed` change only a pending delivery: a late report about one
        already sent or failed (its lease ran out and another attempt settled it) is ignored.
        A report from a store whose claim another store took since (its lease ran out) is
        recorded, but leaves that store's claim in place. All three `mark_*` raise StoreError
        for an unknown id.
        """
        ...

    async def mark_failed(self, delivery_id: int, error: str, *, now: datetime) -> None:
        """Record a permanent failure: the delivery is not retried; counts the attempt."""
        ...

    async def pending_count(self, channel: str | None = None) -> int:
        """Pending deliveries, for one channel or all."""
        ...

    async def pending_by_target(self, channel: str) -> dict[str, int]:
        """Pending deliveries of `channel` per target, by target; targets with none are left
        out (for status displays)."""
        ...

    async def deliveries(
        self, channel: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Deliveries, newest first, optionally filtered (for status displays and tests)."""
        ...

    async def retry_due_count(self, channel: str, now: datetime) -> int:
        """Pending deliveries of `channel` that were tried and failed (`attempts >= 1`), whose
        retry time has come (<= `now`) and that are not claimed: what a digest channel sends
        again before its next scheduled digest. Deliveries never tried are not counted."""
        ...

    async def outbox_stats(self, now: datetime) -> list[OutboxStat]:
        """Per channel that has deliveries stored (any status), by channel name: how many are
        pending, sent and failed, and when the oldest pending one was written. Sent and failed
        deliveries count until `prune` removes them. A read, cheap enough to run on every
        metrics scrape. `now` is the time of the reading; the figures do not depend on it (it
        is there so a backend computing ages itself uses the caller's clock, not its own)."""
        ...

    # --- workers -------------------------------------------------------------------------------

    async def check_in(
        self, worker: str, config: str, *, started_at: datetime, now: datetime
    ) -> list[Worker]:
        """Record that `worker` ("host:pid") runs the config file whose digest is `config`, as
        of `now`; forget workers not seen for `common.WORKER_TTL`; return the others seen
        since, by name (several workers share a PostgreSQL database: they must run the same
        config, and this is how a worker notices one that does not)."""
        ...

    async def check_out(self, worker: str) -> None:
        """Forget `worker` (it is stopping); nothing when it is unknown."""
        ...

    # --- digests -------------------------------------------------------------------------------

    async def last_digest(self, channel: str) -> datetime | None:
        """When `channel`'s last digest was complete (the scheduled time it covered up to, as
        given to `set_last_digest`, in UTC), or None if it never had one."""
        ...

    async def set_last_digest(self, channel: str, at: datetime) -> None:
        """Remember `at` as `channel`'s last digest, replacing the one stored (even a later
        one: the caller decides). Kept across restarts; never pruned."""
        ...

    # --- alerts --------------------------------------------------------------------------------

    async def alert_count(self, since: datetime) -> int:
        """Alerts written (by `record_items` at its `now`) at or after `since`, for "alerts
        today"; alerts removed by `prune` no longer count."""
        ...

    # --- mutes ---------------------------------------------------------------------------------

    async def mute(self, rule: str, until: datetime, *, now: datetime) -> None:
        """Mute `rule` until `until` (exclusive), replacing any mute it had; `now` is kept as
        when it was set. The store only keeps mutes (it does not check that the rule exists);
        whoever alerts consults `mutes`. An `until` not after `now` leaves the rule unmuted.
        """
        ...

    async def unmute(self, rule: str) -> bool:
        """Remove `rule`'s mute; True if one was stored (it may have ended already and not yet
        been pruned), False if there was none."""
        ...

    async def mutes(self, now: datetime) -> dict[str, datetime]:
        """The mutes in force at `now` (`until > now`): rule -> until, by rule."""
        ...

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: datetime, retention: Retention) -> Pruned:
        """Apply retention: forget items unseen for `retention.seen`, drop item text older than
        `retention.text`, and sent/failed deliveries (with alerts no longer referenced) older
        than `retention.deliveries`. Pending deliveries are never pruned. Also drops the
        mutes that have ended (`until <= now`).

        An item is forgotten only when BOTH its last-seen time is older than `now -
        retention.seen` AND it was missing from its feed's latest fetch (`record_items`), i.e.
        its last-seen time is older than that fetch minus LAST_SEEN_REFRESH (last-seen times
        are refreshed at most that often). So an item still listed is never forgotten, however
        long its feed answers 304 or fails. Items of a feed never fetched follow the first
        rule only.

        A forgotten item that a feed lists again is new again (and may alert again), so
        `retention.seen` must outlast how long a feed may drop an item and list it again; it
        is also what bounds the store's size.

        A store shared by several processes prunes in one of them at a time: a call finding
        another prune running skips it and returns `Pruned(0, 0, 0, 0)`.
        """
        ...

    # --- digests: outbox operations ------------------------------------------------------------

    async def mark_sent_many(self, delivery_ids: Sequence[int], now: datetime) -> None:
        """`mark_sent` for every id, in ONE transaction: a digest's alerts are all marked sent
        or (a failed write, an unknown id: StoreError) none of them. Idempotent."""
        ...

    async def due_deliveries(
        self,
        channel: str,
        now: datetime,
        limit: int,
        skip_targets: Collection[str] = (),
    ) -> list[Delivery]:
        """The deliveries `claim_deliveries` would claim now, in the same order, without
        claiming them: a read (a digest preview beside a running daemon)."""
        ...

    async def release_claims(self, channel: str) -> int:
        """Drop every claim on `channel`'s pending deliveries; returns how many there were.
        Only for a caller that knows no live process holds them: at start, with the instance
        lock taken, for claims left by a process that died or was stopped mid-send. No
        attempt is counted."""
        ...

    async def claimed_count(self, channel: str, now: datetime) -> int:
        """Pending deliveries of `channel` claimed at `now` (a lease still running)."""
        ...

    def digest_lock(self, channel: str) -> AbstractAsyncContextManager[None]:
        """`async with store.digest_lock(channel):` holds `channel`'s digest lock across
        every process using this store, waiting for another holder first: the Digester holds
        it from reading the last digest time to writing it, so one digest period is sent by
        one worker, and claims found under it belong to no live digest. A store only one
        process can use (memory; SQLite, by its instance lock) has nothing to hold. Released
        when the block ends, or when the holder dies. StoreError when it cannot be taken."""
        ...

    def lead(self, role: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """`async with store.lead(role) as lost:` waits until this process is the only one
        among all processes using this store doing `role` (e.g. "bot commands": Telegram lets
        one process read a bot's updates), and keeps it so until the block ends. `lost` is
        set if that hold is lost meanwhile (the database connection holding it died): the
        holder must stop doing `role` and leave the block. A store only one process can use
        (memory; SQLite, by its instance lock) grants it at once and never loses it.
        StoreError when the store is closed or cannot be reached."""
        ...
