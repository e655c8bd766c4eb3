"""One feed's poll cycle: fetch, parse, keep what is new, match, decide, record.

This is the only code that sequences I/O for a feed. It never raises for a problem of the feed
(network, server, bytes): every outcome is recorded on the feed in the store and returned.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from monitor.decide import alerts_for, eligible
from monitor.errors import FetchError, HTTPStatusError, ParseError, StoreError
from monitor.health import Notice, assess, churn, churning, extra_failures, is_dead, notice_alert
from monitor.match.matcher import Matcher
from monitor.metrics import Metrics
from monitor.models import AdminSettings, Alert, FeedSpec, FeedState, Item, Match, PollPolicy
from monitor.schedule import next_poll_after_failure, next_poll_after_success, poll_hint
from monitor.sources.identity import fingerprint
from monitor.sources.protocol import Fetcher
from monitor.sources.workers import ParsePool
from monitor.store.protocol import Store

log = logging.getLogger("monitor.poll")


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll of one feed did."""

    feed: str
    #: "ok", "not_modified" or "error".
    status: str
    new_items: int = 0
    alerts: int = 0
    error: str = ""
    #: What the poll came to, finer than `status` (one of `metrics.POLL_OUTCOMES`).
    outcome: str = ""
    #: The final HTTP status of the fetch, when the server answered.
    http_status: int | None = None


@dataclass
class _Trace:
    """What a poll in progress has learned, kept when it fails part way."""

    http_status: int | None = None


@dataclass
class Poller:
    """Everything a feed poll needs; shared by all polls of a daemon."""

    store: Store
    fetcher: Fetcher
    parser: ParsePool
    matcher: Matcher
    policy: PollPolicy
    clock: Callable[[], datetime]
    rng: random.Random
    #: Channel -> its destinations (Telegram chats), each getting its own delivery.
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Where feed-health notices go; None: nowhere (feeds still die and recover).
    admin: AdminSettings | None = None
    #: Where polls are counted (the daemon's; a private one by default).
    metrics: Metrics = field(default_factory=lambda: Metrics(process=False))

    async def poll(self, feed: FeedSpec, state: FeedState) -> PollOutcome:
        """Poll `feed` once and record the outcome; never raises (but CancelledError).

        Feed problems (FetchError, ParseError) are recorded on the feed with backoff. Anything
        else (a store failure, a bug) is logged with its traceback and recorded the same way
        when the store still answers, so one feed's trouble never stops the others.
        """
        started = time.monotonic()
        trace = _Trace()
        polled = await self._outcome(feed, state, trace)
        polled = replace(polled, http_status=trace.http_status)
        self.metrics.polled(
            feed.name,
            polled.outcome,
            time.monotonic() - started,
            status=trace.http_status,
            new_items=polled.new_items,
        )
        return polled

    async def _outcome(self, feed: FeedSpec, state: FeedState, trace: _Trace) -> PollOutcome:
        churned: Notice | None = None
        try:
            polled, churned = await self._poll(feed, state, trace)
        except (FetchError, ParseError) as exc:
            if isinstance(exc, FetchError) and exc.status is not None:
                trace.http_status = exc.status  # answered, then refused (a body too big...)
            outcome = _failure_outcome(exc)
            polled = await self._recorded_failure(feed, state, str(exc), exc, outcome)
        except StoreError as exc:  # already says what is wrong with the state file
            log.error("poll not recorded: %s", exc, extra={"feed": feed.name})
            self.metrics.store_failed("poll", str(exc))
            return PollOutcome(feed.name, "error", error=str(exc), outcome="store_error")
        except Exception as exc:
            log.exception("poll crashed", extra={"feed": feed.name})
            polled = await self._recorded_failure(
                feed, state, f"internal error: {type(exc).__name__}: {exc}", None, "internal_error"
            )
        if self.admin is not None:
            await self._health(feed, self.admin, churned)
        return polled

    async def _health(self, feed: FeedSpec, admin: AdminSettings, churned: Notice | None) -> None:
        """Send the admin channel the notice the feed's new state calls for, if any, then the
        poll's churn notice: after it, so that a recovery in the same poll is still reported
        (the churn notice replaces `FeedState.notice`, which `assess` reads)."""
        try:
            state = await self.store.feed_state(feed.name)
            notice = None if state is None else assess(state, self.clock(), admin)
            if notice is not None:
                await self._notify(feed, notice, admin)
            if churned is not None:
                await self._notify(feed, churned, admin)
        except Exception:  # a notice is never worth losing the poll over
            log.exception("feed-health check failed", extra={"feed": feed.name})

    async def _notify(self, feed: FeedSpec, notice: Notice, admin: AdminSettings) -> None:
        now = self.clock()
        alert = notice_alert(notice, feed, now, admin.channel) if notice.title else None
        written = await self.store.record_notice(
            feed.name, notice.kind, alert, now=now, targets=self.targets
        )
        self.metrics.queued(admin.channel, written)
        if alert is not None:
            log.warning("feed health: %s", notice.title, extra={"feed": feed.name})

    async def _recorded_failure(
        self, feed: FeedSpec, state: FeedState, error: str, exc: Exception | None, outcome: str
    ) -> PollOutcome:
        try:
            polled = await self._failed(feed, state, error, exc)
        except Exception as failure:  # the store itself is failing: nothing more is recorded
            log.exception("could not record the poll failure", extra={"feed": feed.name})
            if isinstance(failure, StoreError):
                self.metrics.store_failed("poll", str(failure))
            return PollOutcome(feed.name, "error", error=error, outcome=outcome)
        self.metrics.store_ok("poll")
        return replace(polled, outcome=outcome)

    async def _poll(
        self, feed: FeedSpec, state: FeedState, trace: _Trace
    ) -> tuple[PollOutcome, Notice | None]:
        """The poll's outcome, and the churn notice it calls for (sent by `_health`)."""
        fetched = await self.fetcher.fetch(feed, state.cache)
        trace.http_status = fetched.status
        if fetched.not_modified:
            now = self.clock()
            next_at = next_poll_after_success(
                feed,
                now,
                self.policy,
                self.rng,
                hint=poll_hint(fetched.headers, state.ttl, now),
                cadence=state.cadence,
            )
            await self.store.record_not_modified(
                feed.name, now=now, next_poll_at=next_at, cache=fetched.cache
            )
            self.metrics.store_ok("poll")
            log.debug("not modified", extra={"feed": feed.name})
            return PollOutcome(feed.name, "not_modified", outcome="not_modified"), None

        parsed = await self.parser.parse(
            fetched.body,
            url=fetched.url,
            headers=fetched.headers,
            feed=feed.name,
            now=self.clock(),
            max_items=self.policy.max_items,
        )
        unseen = await self.store.unseen(feed.name, [item.key for item in parsed.items])
        new = [item for item in parsed.items if item.key in unseen]
        # The same story under a new id (a feed rewriting its guids) is not news again.
        suspects = _told_apart_by_id_only(parsed.items, new) if state.seeded else []
        alike = await self.store.seen_alike(feed.name, suspects) if suspects else set()
        if alike and not churning(len(alike), len(parsed.items)):
            # One or two stories repeating a stored link and title (a "daily briefing" on
            # one page) are new items; only a feed rewriting most ids has unstable ids.
            alike = set()
        if alike:
            log.info(
                "%d items came back under new ids with the same link and title: not alerted",
                len(alike),
                extra={"feed": feed.name},
            )
            new = [item for item in new if item.key not in alike]
        candidates = eligible(new, seeded=state.seeded, first_fetch=feed.first_fetch)
        now = self.clock()
        # Matching is CPU work that grows with items x rules: keep it off the event loop.
        matches = await asyncio.to_thread(self.matcher.match_all, feed, candidates)
        muted = await self.store.mutes(now) if matches else {}
        alerts = alerts_for(candidates, matches, now, muted)
        warning = "; ".join(filter(None, [parsed.warning, _skipped(parsed.skipped)]))
        recorded = await self.store.record_items(
            feed.name,
            parsed.items,
            alerts,
            cache=fetched.cache,
            now=now,
            next_poll_at=next_poll_after_success(
                feed,
                now,
                self.policy,
                self.rng,
                hint=poll_hint(fetched.headers, parsed.ttl, now),
                cadence=state.cadence,
            ),
            warning=warning,
            targets=self.targets,
            ttl=parsed.ttl,
        )
        self.metrics.store_ok("poll")
        self._count(feed, state, recorded.new_items, matches, alerts)
        churned = churn(state, len(alike), len(parsed.items)) if self.admin else None
        if warning and warning != state.last_warning:
            log.warning("feed parsed with a problem: %s", warning, extra={"feed": feed.name})
        log.info(
            "polled: %d items, %d new, %d alerts%s",
            len(parsed.items),
            len(recorded.new_items),
            recorded.alerts,
            "" if state.seeded else " (first fetch)",
            extra={"feed": feed.name},
        )
        polled = PollOutcome(
            feed.name, "ok", len(recorded.new_items), recorded.alerts, outcome="ok"
        )
        return polled, churned

    def _count(
        self,
        feed: FeedSpec,
        state: FeedState,
        new: Sequence[Item],
        matches: Mapping[str, Sequence[Match]],
        alerts: Sequence[Alert],
    ) -> None:
        """Rule matches and queued deliveries of what the store actually took as new (an item
        another worker stored first is not counted twice); a first fetch's alerts are marked
        as backfilled (kept out of the publication-latency histogram)."""
        stored = {item.key for item in new}
        for key, found in matches.items():
            if key in stored:
                self.metrics.matched(dict.fromkeys(m.rule for m in found))
        if not state.seeded:
            self.metrics.backfilled(feed.name, (a.item_key for a in alerts))
        for alert in alerts:
            if alert.item_key in stored:
                for channel in alert.channels:
                    destinations = len(dict.fromkeys(self.targets.get(channel, ())))
                    self.metrics.queued(channel, max(destinations, 1))

    async def _failed(
        self, feed: FeedSpec, state: FeedState, error: str, exc: Exception | None
    ) -> PollOutcome:
        now = self.clock()
        failures = state.consecutive_failures + 1
        retry_after = getattr(exc, "retry_after", None)
        next_at = next_poll_after_failure(
            feed, now, failures + extra_failures(exc), retry_after, self.policy, self.rng
        )
        dead = is_dead(state, exc, now, self.policy)
        await self.store.record_failure(feed.name, error, now=now, next_poll_at=next_at, dead=dead)
        if dead:
            log.error(
                "feed is dead and no longer polled (revive: monitor feeds --retry %s): %s",
                feed.name,
                error,
                extra={"feed": feed.name},
            )
        else:
            log.warning(
                "poll failed (%d in a row), next try at %s: %s",
                failures,
                next_at.isoformat(timespec="seconds"),
                error,
                extra={"feed": feed.name},
            )
        return PollOutcome(feed.name, "error", error=error)


def _failure_outcome(exc: FetchError | ParseError) -> str:
    if isinstance(exc, HTTPStatusError):
        return "http_error"
    return "fetch_error" if isinstance(exc, FetchError) else "parse_error"


def _told_apart_by_id_only(listed: Sequence[Item], new: Sequence[Item]) -> list[Item]:
    """The `new` items whose link and title are their own in the document: only those can
    be a stored story under a new id. When the document lists several items with one link
    and one title (a feed linking every item to one page under one title), link and title
    are no identity in this feed, and a new id there is a new item."""
    prints = {item.key: fingerprint(item.link, item.title) for item in listed}
    counts = Counter(p for p in prints.values() if p is not None)
    return [item for item in new if (p := prints.get(item.key)) is not None and counts[p] == 1]


def _skipped(count: int) -> str:
    return f"{count} items skipped: no id, link, title or summary" if count else ""
