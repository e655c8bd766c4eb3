"""Poll sequences as a property: whatever feeds do between polls (add, drop, re-add, reorder,
duplicate guids, untitled items), every matching item alerts exactly once after the first
poll, and nothing already seen ever alerts. Real HTTP on loopback, real parser, real store."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.match.matcher import Matcher
from monitor.match.query import structured
from monitor.models import FeedSpec, FeedState, PollPolicy, Rule
from monitor.pipeline import Poller
from monitor.sources.http import HttpFetcher
from monitor.sources.workers import ParsePool
from monitor.store import SQLiteStore
from tests.builders import rss
from tests.feedserver import FeedServer

RULE = Rule(name="talks", query=structured(any_=["talks"]), notify=("desk",))
WORDS = ["talks", "weather", "markets", "Talks!", "stalks"]

guid = st.integers(min_value=0, max_value=30).map(lambda n: f"g{n}")
entry = st.tuples(guid, st.sampled_from(WORDS))
snapshots = st.lists(st.lists(entry, max_size=8), min_size=1, max_size=6)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=snapshots)
async def test_every_matching_item_alerts_exactly_once(
    sequence: list[list[tuple[str, str]]], tmp_path_factory: object
) -> None:
    folder: Path = tmp_path_factory.mktemp("seq")  # type: ignore[attr-defined]
    feed_spec_url = "/feed.xml"
    with FeedServer() as server:
        feed = FeedSpec(name="f", url=server.url(feed_spec_url), interval=timedelta(minutes=1))
        async with (
            SQLiteStore(folder / "state.db") as store,
            HttpFetcher(PollPolicy(), user_agent="test") as fetcher,
            ParsePool(workers=0) as parser,
        ):
            clock = Clock()
            poller = Poller(
                store, fetcher, parser, Matcher((RULE,)), PollPolicy(), clock, random.Random(1)
            )
            await store.sync_feeds([feed], clock())
            seen: set[str] = set()
            expected: list[str] = []
            for n, snapshot in enumerate(sequence):
                server.set(feed_spec_url, rss(snapshot) if snapshot else rss([]))
                state = await store.feed_state("f") or FeedState("f", feed.url)
                outcome = await poller.poll(feed, state)
                assert outcome.status in ("ok", "not_modified")
                first_seen = {}
                for key, title in snapshot:
                    first_seen.setdefault(key, title)  # duplicate guid: the first one wins
                for key, title in first_seen.items():
                    if key not in seen and n > 0 and title in ("talks", "Talks!"):
                        expected.append(f"id:{key}")
                seen |= set(first_seen)
            delivered = [d.alert.item_key for d in await store.deliveries("desk", limit=1000)]
    assert sorted(delivered) == sorted(expected)
    assert len(set(delivered)) == len(delivered)
