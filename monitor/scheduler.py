"""Due-feed claiming: one recurring job claims what is due and runs it in a bounded pool.

Next poll times live in the store, so a restart resumes the schedule without a burst, and a
store with leases lets several workers share one feed set later. There is never one job per
feed: the tick claims at most as many feeds as there are free slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from monitor.models import FeedSpec, FeedState
from monitor.pipeline import Poller, PollOutcome

log = logging.getLogger("monitor.scheduler")


class PollScheduler:
    """Claims due feeds on each `tick()` and polls them as tasks, at most `slots` at once."""

    def __init__(
        self,
        poller: Poller,
        feeds: Mapping[str, FeedSpec],
        slots: int,
        clock: Callable[[], datetime],
        on_done: Callable[[PollOutcome], None] | None = None,
    ) -> None:
        self._poller = poller
        self._feeds = dict(feeds)
        self._slots = slots
        self._clock = clock
        self._on_done = on_done
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def lease(self) -> timedelta:
        """How long a claim holds: the slowest fetch plus parsing, with margin."""
        deadline = max((f.limits.deadline for f in self._feeds.values()), default=60.0)
        return timedelta(seconds=2 * deadline + 60)

    async def tick(self) -> int:
        """Claim the feeds that are due now (up to the free slots) and start polling them."""
        free = self._slots - len(self._tasks)
        if self._stopping or free <= 0:
            return 0
        claimed = await self._poller.store.claim_due_feeds(self._clock(), free, self.lease())
        started = 0
        for state in claimed:
            feed = self._feeds.get(state.name)
            # A poll queued behind a slow host can outlive its lease; the store then offers
            # the feed again, but it is still ours and still running: never poll it twice.
            if feed is not None and feed.name not in self._tasks:
                self._start(feed, state)
                started += 1
        return started

    def _start(self, feed: FeedSpec, state: FeedState) -> None:
        task = asyncio.create_task(self._run(feed, state), name=f"poll:{feed.name}")
        self._tasks[feed.name] = task
        task.add_done_callback(lambda _: self._tasks.pop(feed.name, None))

    async def _run(self, feed: FeedSpec, state: FeedState) -> None:
        outcome = await self._poller.poll(feed, state)
        if self._on_done is not None:
            self._on_done(outcome)

    async def poll_all(self) -> list[PollOutcome]:
        """Poll every configured feed now, due or not, `slots` at a time (`monitor once`)."""
        limit = asyncio.Semaphore(self._slots)
        states = {s.name: s for s in await self._poller.store.feed_states()}

        async def one(feed: FeedSpec) -> PollOutcome:
            async with limit:
                state = states.get(feed.name) or FeedState(name=feed.name, url=feed.url)
                return await self._poller.poll(feed, state)

        return list(await asyncio.gather(*(one(f) for f in self._feeds.values())))

    async def drain(self, grace: float) -> None:
        """Stop claiming; let polls in flight finish for up to `grace` seconds, then cancel
        them and release their claims. A cancelled poll either committed its items already or
        committed nothing, and its feed is polled again after restart either way."""
        self._stopping = True
        if not self._tasks:
            return
        running = dict(self._tasks)
        _, pending = await asyncio.wait(set(running.values()), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            cancelled = [name for name, task in running.items() if task in pending]
            await self._poller.store.release_feeds(cancelled)
            log.info("cancelled %d polls still running at shutdown", len(pending))
