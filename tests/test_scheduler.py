"""Due-feed claiming: a feed is never polled twice at once, and one feed's failure (even of
the store) never stops the pass over the others."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.match.matcher import Matcher
from monitor.models import CacheInfo, FeedSpec, Fetched, FetchLimits, PollPolicy
from monitor.pipeline import Poller, PollOutcome
from monitor.scheduler import PollScheduler
from monitor.sources.http import HttpFetcher
from monitor.sources.workers import ParsePool
from monitor.store import MemoryStore
from tests.builders import rss, write_config
from tests.feedserver import FeedServer, never_answer

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def test_a_feed_still_polling_is_not_started_again_when_its_lease_expires(
    feed_server: FeedServer,
) -> None:
    feed_server.handle("/slow.xml", never_answer())
    feed = FeedSpec(
        name="slow",
        url=feed_server.url("/slow.xml"),
        interval=timedelta(minutes=5),
        limits=FetchLimits(deadline=30, read_timeout=30),
    )
    clock = Clock()
    async with (
        MemoryStore() as store,
        HttpFetcher(PollPolicy(), user_agent="test") as fetcher,
        ParsePool(workers=0) as parser,
    ):
        await store.sync_feeds([feed], clock.now)
        poller = Poller(store, fetcher, parser, Matcher(()), PollPolicy(), clock, random.Random(1))
        scheduler = PollScheduler(poller, {"slow": feed}, 5, clock)
        clock.now += timedelta(minutes=1)
        assert await scheduler.tick() == 1
        for _ in range(100):
            if feed_server.hits("/slow.xml"):
                break
            await asyncio.sleep(0.02)
        clock.now += timedelta(hours=1)  # far past the lease: the store offers the feed again
        assert await scheduler.tick() == 0
        assert scheduler.in_flight == 1
        await asyncio.sleep(0.2)
        assert feed_server.hits("/slow.xml") == 1
        await scheduler.drain(0.1)
        assert scheduler.in_flight == 0
        # The cancelled poll released its claim: the feed is due again at once.
        assert [s.name for s in await store.claim_due_feeds(clock.now, 5, timedelta(1))] == ["slow"]


async def test_a_claimed_feed_this_config_does_not_list_is_handed_back_at_once() -> None:
    """Several workers share a store: one running another config may find feeds it does not
    know due; it must not keep them for a lease while the worker that knows them waits."""
    known = FeedSpec(name="known", url="http://127.0.0.1:9/k.xml", interval=timedelta(hours=1))
    other = FeedSpec(name="other", url="http://127.0.0.1:9/o.xml", interval=timedelta(hours=1))
    clock = Clock()
    async with (
        MemoryStore() as store,
        HttpFetcher(PollPolicy(), user_agent="test") as fetcher,
        ParsePool(workers=0) as parser,
    ):
        await store.sync_feeds([known, other], clock.now)
        poller = Poller(store, fetcher, parser, Matcher(()), PollPolicy(), clock, random.Random(1))
        scheduler = PollScheduler(poller, {"known": known}, 5, clock)
        clock.now += timedelta(hours=2)
        assert await scheduler.tick() == 1
        await scheduler.drain(5)
        claimable = await store.claim_due_feeds(clock.now, 5, timedelta(minutes=1))
        assert [s.name for s in claimable] == ["other"]


async def test_once_survives_a_store_failure_on_one_feed_and_still_delivers(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/a.xml", rss([("a1", "Weather")]), validators=False)
    feed_server.set("/b.xml", rss([("b1", "Weather")]), validators=False)
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""\
state: state.db
feeds:
  - {{name: a, url: '{feed_server.url("/a.xml")}'}}
  - {{name: b, url: '{feed_server.url("/b.xml")}'}}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks]}}
""",
    )
    async with Daemon(load_config(path)) as daemon:
        await daemon.once()
    with sqlite3.connect(tmp_path / "state.db") as raw:  # feed "a" can no longer be written
        raw.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF last_polled_at ON feeds WHEN NEW.name = 'a'"
            " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    feed_server.set("/a.xml", rss([("a2", "Talks"), ("a1", "Weather")]), validators=False)
    feed_server.set("/b.xml", rss([("b2", "Talks resume"), ("b1", "Weather")]), validators=False)
    async with Daemon(load_config(path)) as daemon:
        report = await daemon.once()
    outcomes = {p.feed: p for p in report.polls}
    assert outcomes["a"].status == "error"
    assert "disk says no" in outcomes["a"].error
    assert outcomes["b"].status == "ok"
    assert report.dispatch.sent == 1
    assert "Talks resume" in (tmp_path / "alerts.jsonl").read_text(encoding="utf-8")


class GaugedFetcher:
    """Answers 304 after a short wait; records which feeds it fetched and the most at once."""

    def __init__(self, hold: float = 0.02) -> None:
        self.hold = hold
        self.now = 0
        self.peak = 0
        self.fetched: list[str] = []

    async def fetch(self, feed: FeedSpec, cache: CacheInfo) -> Fetched:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.fetched.append(feed.name)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.now -= 1
        return Fetched(feed.url, 304, b"", {}, cache)

    async def __aenter__(self) -> GaugedFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


@asynccontextmanager
async def scheduler_for(
    names: list[str], slots: int, clock: Clock
) -> AsyncIterator[tuple[PollScheduler, GaugedFetcher, MemoryStore, list[PollOutcome]]]:
    """A scheduler over `names` (all due), with a 304-answering fetcher and a memory store."""
    url = "http://h.test/"
    feeds = {n: FeedSpec(name=n, url=url + n, interval=timedelta(hours=1)) for n in names}
    fetcher = GaugedFetcher()
    async with MemoryStore() as store, ParsePool(workers=0) as parser:
        await store.sync_feeds(list(feeds.values()), clock.now - timedelta(hours=2))
        poller = Poller(store, fetcher, parser, Matcher(()), PollPolicy(), clock, random.Random(1))
        done: list[PollOutcome] = []
        scheduler = PollScheduler(poller, feeds, slots, clock, done.append)
        try:
            yield scheduler, fetcher, store, done
        finally:
            await scheduler.drain(5.0)


async def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_finished_poll_claims_the_next_due_feed_without_waiting_for_a_tick() -> None:
    clock = Clock()
    names = [f"f{n}" for n in range(30)]
    async with scheduler_for(names, 4, clock) as (scheduler, fetcher, store, done):
        assert await scheduler.tick() == 4  # the only tick: the rest is claimed as slots free

        await wait_for(lambda: len(done) == 30)
        assert sorted(fetcher.fetched) == sorted(names)  # each exactly once
        assert fetcher.peak == 4  # never more than the slots
        assert {o.status for o in done} == {"not_modified"}
        await wait_for(lambda: scheduler.in_flight == 0)
        # Nothing is due any more: finished polls stop claiming once a claim comes back short.
        assert await store.claim_due_feeds(clock.now, 100, timedelta(minutes=1)) == []


async def test_ticks_and_refills_together_never_exceed_the_slots() -> None:
    clock = Clock()
    names = [f"f{n}" for n in range(40)]
    async with scheduler_for(names, 3, clock) as (scheduler, fetcher, _store, done):
        while len(done) < 40:
            await scheduler.tick()  # a tick racing the refills must not overbook the slots
            await asyncio.sleep(0.005)

    assert fetcher.peak == 3
    assert sorted(fetcher.fetched) == sorted(names)


async def test_no_claims_after_drain() -> None:
    clock = Clock()
    names = [f"f{n}" for n in range(10)]
    async with scheduler_for(names, 2, clock) as (scheduler, fetcher, store, _done):
        await scheduler.tick()
        await scheduler.drain(5.0)
        await asyncio.sleep(0.1)

        assert scheduler.in_flight == 0
        assert len(fetcher.fetched) == 2  # the two in flight finished; nothing new started
        assert len(await store.claim_due_feeds(clock.now, 100, timedelta(minutes=1))) == 8


async def test_poll_all_reports_each_outcome_as_its_poll_ends() -> None:
    clock = Clock()
    names = [f"f{n}" for n in range(7)]
    async with scheduler_for(names, 3, clock) as (scheduler, fetcher, _store, done):
        seen: list[tuple[str, int]] = []
        outcomes = await scheduler.poll_all(lambda o: seen.append((o.feed, fetcher.now)))

    assert [o.feed for o in outcomes] == names  # in config order, whatever order polls end
    assert sorted(feed for feed, _ in seen) == names  # each reported once
    assert all(in_flight < 3 for _, in_flight in seen)  # after its fetch, not before
    assert done == []  # poll_all does not feed the daemon's per-poll hook
