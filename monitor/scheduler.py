"""Due-feed claiming: claims what is due and runs it in a bounded pool of poll tasks.

Next poll times live in the store, so a restart resumes the schedule without a burst, and a
store with leases lets several workers share one feed set later. There is never one job per
feed: a claim takes at most as many feeds as there are free slots.

Claims happen on the daemon's periodic `tick()` and, while feeds are waiting for a slot, as
soon as a poll finishes: a slot freed mid-second is refilled at once instead of at the next
tick (10,000 due feeds at 20 slots a second would otherwise take over eight minutes). Claims
are serialised, so the free-slot count a claim is sized by is never stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from monitor.models import FeedSpec, FeedState
from monitor.pipeline import Poller, PollOutcome

log = logging.getLogger("monitor.scheduler")


class PollScheduler:
    """Claims due feeds and polls them as tasks, at most `slots` at once.

    `tick()` claims due feeds up to the free slots. When a claim filled every free slot (or
    found none free), more feeds may be due: finished polls then claim again right away (once
    an eighth of the slots is free, so claims come in batches), until a claim comes back
    short. A feed is never polled twice at once, even when the store offers it again (its
    lease expired while it was still queued or running).
    """

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
        self._lease = _lease(self._feeds.values())
        # One claim at a time: the free-slot count must not change under a claim in flight.
        self._claiming = asyncio.Lock()
        #: True when the last claim may have left due feeds behind (it filled every slot).
        self._backlog = False
        self._refill: asyncio.Task[None] | None = None
        # Under a backlog, wait for this many free slots before claiming again: one claim (a
        # store transaction) per finished poll would cost more than the polls themselves, and
        # seven eighths of the slots stay busy.
        self._batch = max(1, slots // 8)
        #: Claims made so far (ticks and refills), for diagnostics.
        self.claims = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def lease(self) -> timedelta:
        """How long a claim holds: the slowest fetch plus parsing, with margin."""
        return self._lease

    async def tick(self) -> int:
        """Claim the feeds that are due now (up to the free slots) and start polling them."""
        async with self._claiming:
            return await self._claim()

    async def _claim(self) -> int:
        free = self._slots - len(self._tasks)
        if self._stopping:
            return 0
        if free <= 0:
            self._backlog = True  # unknown: let the next finished poll look
            return 0
        claimed = await self._poller.store.claim_due_feeds(self._clock(), free, self._lease)
        self.claims += 1
        self._backlog = len(claimed) >= free
        if self._stopping:  # drain() began while the claim was in flight: hand them back
            await self._poller.store.release_feeds([s.name for s in claimed])
            return 0
        started = 0
        unknown = []
        for state in claimed:
            feed = self._feeds.get(state.name)
            if feed is None:
                # In the store but not in this config: another worker's newer (or older)
                # config lists it. Hand it back at once rather than sit on it for a lease.
                unknown.append(state.name)
            elif feed.name not in self._tasks:
                # A poll queued behind a slow host can outlive its lease; the store then
                # offers the feed again, but it is still ours and still running: never poll
                # it twice.
                self._start(feed, state)
                started += 1
        if unknown:
            await self._poller.store.release_feeds(unknown)
        return started

    def _start(self, feed: FeedSpec, state: FeedState) -> None:
        task = asyncio.create_task(self._run(feed, state), name=f"poll:{feed.name}")
        self._tasks[feed.name] = task
        task.add_done_callback(lambda _: self._finished(feed.name))

    def _finished(self, name: str) -> None:
        self._tasks.pop(name, None)
        if (
            self._backlog
            and not self._stopping
            and self._slots - len(self._tasks) >= self._batch
            and (self._refill is None or self._refill.done())
        ):
            self._refill = asyncio.get_running_loop().create_task(self._refilling())

    async def _refilling(self) -> None:
        # Polls finishing while a claim is in flight are picked up by the next round, so one
        # claim serves every slot freed meanwhile.
        try:
            while (
                self._backlog
                and not self._stopping
                and self._slots - len(self._tasks) >= self._batch
            ):
                async with self._claiming:
                    await self._claim()
        except Exception:
            self._backlog = False  # the next tick tries again
            log.exception("claiming due feeds failed")

    async def _run(self, feed: FeedSpec, state: FeedState) -> None:
        outcome = await self._poller.poll(feed, state)
        if self._on_done is not None:
            self._on_done(outcome)

    async def poll_all(
        self, progress: Callable[[PollOutcome], None] | None = None
    ) -> list[PollOutcome]:
        """Poll every configured feed now, due or not, `slots` at a time (`monitor once`).

        `progress`, when given, is called on the loop with each outcome as its poll ends (for
        a progress display); it must return quickly and not raise. Outcomes are returned in
        the order of the feeds, whatever order the polls end in.
        """
        limit = asyncio.Semaphore(self._slots)
        states = {s.name: s for s in await self._poller.store.feed_states()}

        async def one(feed: FeedSpec) -> PollOutcome:
            async with limit:
                state = states.get(feed.name) or FeedState(name=feed.name, url=feed.url)
                outcome = await self._poller.poll(feed, state)
            if progress is not None:
                progress(outcome)
            return outcome

        return list(await asyncio.gather(*(one(f) for f in self._feeds.values())))

    async def drain(self, grace: float) -> None:
        """Stop claiming; let polls in flight finish for up to `grace` seconds, then cancel
        them and release their claims. A cancelled poll either committed its items already or
        committed nothing, and its feed is polled again after restart either way."""
        self._stopping = True
        async with self._claiming:  # a claim in flight starts its polls (or releases them)
            pass
        if self._refill is not None:
            await asyncio.wait([self._refill])
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


def _lease(feeds: Iterable[FeedSpec]) -> timedelta:
    deadline = max((f.limits.deadline for f in feeds), default=60.0)
    return timedelta(seconds=2 * deadline + 60)
