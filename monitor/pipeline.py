"""One feed's poll cycle: fetch, parse, keep what is new, match, decide, record.

This is the only code that sequences I/O for a feed. It never raises for a problem of the feed
(network, server, bytes): every outcome is recorded on the feed in the store and returned.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from monitor.decide import alerts_for, eligible
from monitor.errors import FetchError, ParseError
from monitor.match.matcher import Matcher
from monitor.models import FeedSpec, FeedState, PollPolicy
from monitor.schedule import next_poll_after_failure, next_poll_after_success
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

    async def poll(self, feed: FeedSpec, state: FeedState) -> PollOutcome:
        """Poll `feed` once and record the outcome; never raises (but CancelledError).

        Feed problems (FetchError, ParseError) are recorded on the feed with backoff. Anything
        else (a store failure, a bug) is logged with its traceback and recorded the same way
        when the store still answers, so one feed's trouble never stops the others.
        """
        try:
            return await self._poll(feed, state)
        except (FetchError, ParseError) as exc:
            return await self._recorded_failure(feed, state, str(exc), exc)
        except Exception as exc:
            log.exception("poll crashed", extra={"feed": feed.name})
            return await self._recorded_failure(
                feed, state, f"internal error: {type(exc).__name__}: {exc}", None
            )

    async def _recorded_failure(
        self, feed: FeedSpec, state: FeedState, error: str, exc: Exception | None
    ) -> PollOutcome:
        try:
            return await self._failed(feed, state, error, getattr(exc, "retry_after", None))
        except Exception:  # the store itself is failing: nothing more can be recorded now
            log.exception("could not record the poll failure", extra={"feed": feed.name})
            return PollOutcome(feed.name, "error", error=error)

    async def _poll(self, feed: FeedSpec, state: FeedState) -> PollOutcome:
        fetched = await self.fetcher.fetch(feed, state.cache)
        if fetched.not_modified:
            now = self.clock()
            next_at = next_poll_after_success(feed, now, self.policy, self.rng)
            await self.store.record_not_modified(
                feed.name, now=now, next_poll_at=next_at, cache=fetched.cache
            )
            log.debug("not modified", extra={"feed": feed.name})
            return PollOutcome(feed.name, "not_modified")

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
            next_poll_at=next_poll_after_success(feed, now, self.policy, self.rng),
            warning=warning,
            targets=self.targets,
        )
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
        return PollOutcome(feed.name, "ok", len(recorded.new_items), recorded.alerts)

    async def _failed(
        self, feed: FeedSpec, state: FeedState, error: str, retry_after: float | None
    ) -> PollOutcome:
        now = self.clock()
        failures = state.consecutive_failures + 1
        next_at = next_poll_after_failure(feed, now, failures, retry_after, self.policy, self.rng)
        await self.store.record_failure(feed.name, error, now=now, next_poll_at=next_at)
        log.warning(
            "poll failed (%d in a row), next try at %s: %s",
            failures,
            next_at.isoformat(timespec="seconds"),
            error,
            extra={"feed": feed.name},
        )
        return PollOutcome(feed.name, "error", error=error)


def _skipped(count: int) -> str:
    return f"{count} items skipped: no id, link, title or summary" if count else ""
