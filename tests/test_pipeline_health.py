"""Feed health through the whole poll: dead feeds, backoff, admin notices, guid churn and
server hints. Real HTTP on loopback, the real parser and matcher, real stores, and a clock the
test moves by hand (nothing here waits for time to pass)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from monitor.match.matcher import Matcher
from monitor.match.query import structured
from monitor.models import AdminSettings, Delivery, FeedSpec, FeedState, PollPolicy, Rule
from monitor.pipeline import Poller, PollOutcome
from monitor.sources.http import HttpFetcher
from monitor.sources.workers import ParsePool
from monitor.store import MemoryStore, Store, open_store
from tests.builders import rss
from tests.feedserver import FeedServer

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
INTERVAL = 10 * MINUTE
#: No jitter, so every next poll time is exact.
POLICY = PollPolicy(jitter=0.0)
RULE = Rule(name="stories", query=structured(any_=["story"]), notify=("desk",))
ADMIN = AdminSettings("ops", failing_after=HOUR)
LEASE = timedelta(minutes=5)


class Clock:
    """Stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Rig:
    """A Poller over a loopback feed server and a store, with feeds by name."""

    def __init__(
        self, server: FeedServer, store: Store, poller: Poller, clock: Clock, feeds: list[FeedSpec]
    ) -> None:
        self.server, self.store, self.poller, self.clock = server, store, poller, clock
        self.feeds = {feed.name: feed for feed in feeds}

    def serve(self, body: str, *, name: str = "f", **options: object) -> None:
        self.server.set(f"/{name}.xml", body, **options)  # type: ignore[arg-type]

    async def state(self, name: str = "f") -> FeedState:
        found = await self.store.feed_state(name)
        assert found is not None
        return found

    async def poll(self, name: str = "f") -> PollOutcome:
        return await self.poller.poll(self.feeds[name], await self.state(name))

    async def poll_when_due(self, name: str = "f") -> PollOutcome:
        """Move the clock to the feed's next poll time, then poll it."""
        next_at = (await self.state(name)).next_poll_at
        assert next_at is not None
        self.clock.now = max(self.clock.now, next_at)
        return await self.poll(name)

    async def delay(self, name: str = "f") -> timedelta:
        """How long after now the feed is due."""
        next_at = (await self.state(name)).next_poll_at
        assert next_at is not None
        return next_at - self.clock.now

    async def notices(self, channel: str = "ops") -> list[Delivery]:
        """The channel's deliveries, oldest first."""
        return list(reversed(await self.store.deliveries(channel, limit=1000)))

    async def titles(self, channel: str = "ops") -> list[str]:
        return [d.alert.title for d in await self.notices(channel)]


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


MakeRig = Callable[..., AbstractAsyncContextManager[Rig]]


@pytest.fixture
def make_rig(feed_server: FeedServer, tmp_path: Path, backend: str) -> MakeRig:
    @asynccontextmanager
    async def make(
        *,
        admin: AdminSettings | None = None,
        policy: PollPolicy = POLICY,
        targets: dict[str, tuple[str, ...]] | None = None,
        feeds: Sequence[FeedSpec] | None = None,
    ) -> AsyncIterator[Rig]:
        specs = list(feeds or [spec("f")])
        specs = [
            FeedSpec(
                name=s.name,
                url=feed_server.url(f"/{s.name}.xml"),
                interval=s.interval,
                min_interval=s.min_interval,
                max_interval=s.max_interval,
                adaptive=s.adaptive,
            )
            for s in specs
        ]
        store = MemoryStore() if backend == "memory" else open_store(f"sqlite:///{tmp_path}/s.db")
        async with (
            store,
            HttpFetcher(policy, user_agent="test") as fetcher,
            ParsePool(workers=0) as parser,
        ):
            clock = Clock()
            poller = Poller(
                store,
                fetcher,
                parser,
                Matcher((RULE,)),
                policy,
                clock,
                random.Random(1),
                targets=targets or {},
                admin=admin,
            )
            await store.sync_feeds(specs, clock())
            yield Rig(feed_server, store, poller, clock, specs)

    return make


def spec(name: str, **options: object) -> FeedSpec:
    """A feed; its URL is filled in by the rig."""
    return FeedSpec(name=name, url="http://unused/", interval=INTERVAL, **options)  # type: ignore[arg-type]


def document(entries: Sequence[tuple[str, str, str]], *, ttl: int | None = None) -> str:
    """An RSS 2.0 document of (guid, title, link) entries, newest first, with an optional ttl."""
    items = "".join(
        f'<item><guid isPermaLink="false">{escape(guid)}</guid><title>{escape(title)}</title>'
        f"<link>{escape(link)}</link>"
        f"<pubDate>{format_datetime(T0 - timedelta(minutes=n))}</pubDate></item>"
        for n, (guid, title, link) in enumerate(entries)
    )
    channel_ttl = "" if ttl is None else f"<ttl>{ttl}</ttl>"
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        "<title>Test</title><link>https://news.example/</link><description>t</description>"
        f"{channel_ttl}{items}</channel></rss>"
    )


def stories(guids: Sequence[str], prefix: str = "g") -> str:
    """Entries whose title and link follow the number in the guid, whatever its prefix."""
    return document(
        [
            (f"{prefix}{n}", f"story {n}", f"https://news.example/story/{n}")
            for n in (g.removeprefix("g") for g in guids)
        ]
    )


def error(status: int, headers: dict[str, str] | None = None) -> dict[str, object]:
    return {"status": status, "validators": False, "headers": headers or {}}


# --- dead feeds --------------------------------------------------------------------------------


async def test_410_gone_kills_the_feed_at_the_first_poll(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("gone for good", **error(410))
        outcome = await rig.poll()
        assert (outcome.status, outcome.error) == ("error", "HTTP 410")
        dead = await rig.state()
        assert dead.dead_since == T0
        assert dead.dead_reason == "HTTP 410"
        assert dead.last_error == "HTTP 410"
        assert dead.consecutive_failures == 1
        for later in (T0, T0 + DAY, T0 + 365 * DAY):
            assert await rig.store.claim_due_feeds(later, 10, LEASE) == []
        assert rig.server.hits("/f.xml") == 1


async def test_a_revived_feed_is_polled_again(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("gone", **error(410))
        await rig.poll()
        rig.clock.now += DAY
        assert await rig.store.revive_feeds(["f"], rig.clock.now) == ["f"]
        claimed = await rig.store.claim_due_feeds(rig.clock.now, 10, LEASE)
        assert [s.name for s in claimed] == ["f"]
        rig.serve(stories(["g1"]))
        outcome = await rig.poller.poll(rig.feeds["f"], claimed[0])
        assert outcome.status == "ok"
        back = await rig.state()
        assert (back.dead_since, back.failing_since, back.consecutive_failures) == (None, None, 0)
        assert back.next_poll_at == rig.clock.now + INTERVAL


async def test_a_new_url_revives_a_dead_feed(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("gone", **error(410))
        await rig.poll()
        moved = FeedSpec("f", rig.server.url("/moved.xml"), interval=INTERVAL)
        await rig.store.sync_feeds([moved], rig.clock.now)
        assert (await rig.state()).dead_since is None
        due = await rig.store.claim_due_feeds(rig.clock.now + INTERVAL, 10, LEASE)
        assert [s.name for s in due] == ["f"]


async def test_a_feed_failing_longer_than_dead_after_dies(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("oops", **error(500))
        await rig.poll()
        polls = 1
        while (await rig.state()).dead_since is None:
            before = rig.clock.now
            await rig.poll_when_due()
            polls += 1
            # Backing off, never stopping, never waiting longer than the cap.
            assert rig.clock.now - before <= POLICY.backoff_cap
            state = await rig.state()
            dead_now = rig.clock.now - T0 >= POLICY.dead_after
            assert (state.dead_since is not None) == dead_now
            assert polls < 100
        dead = await rig.state()
        assert dead.dead_since == rig.clock.now
        assert dead.dead_reason == "HTTP 500"
        assert dead.failing_since == T0
        assert dead.consecutive_failures == polls
        assert rig.server.hits("/f.xml") == polls
        assert await rig.store.claim_due_feeds(rig.clock.now + 30 * DAY, 10, LEASE) == []
        # No admin channel: feeds still die, but nobody is told.
        assert await rig.store.deliveries(limit=1000) == []
        assert (await rig.state()).notice == ""


async def test_a_success_within_dead_after_starts_the_count_again(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("oops", **error(500))
        await rig.poll()
        rig.clock.now += 2 * DAY
        await rig.poll()
        rig.serve(stories(["g1"]))
        rig.clock.now += 12 * HOUR
        assert (await rig.poll()).status == "ok"
        rig.serve("oops", **error(500))
        rig.clock.now += 12 * HOUR  # 3 days after the first failure, 12 h after a success
        await rig.poll()
        state = await rig.state()
        assert state.dead_since is None
        assert state.failing_since == rig.clock.now


async def test_a_404_backs_off_further_than_a_500(make_rig: MakeRig) -> None:
    async with make_rig(feeds=[spec("a"), spec("b")]) as rig:
        rig.serve("oops", name="a", **error(500))
        rig.serve("where?", name="b", **error(404))
        await rig.poll("a")
        await rig.poll("b")
        assert await rig.delay("a") == INTERVAL
        assert await rig.delay("b") == 8 * INTERVAL
        a, b = await rig.state("a"), await rig.state("b")
        assert a.consecutive_failures == b.consecutive_failures == 1
        await rig.poll("a")
        await rig.poll("b")
        assert await rig.delay("a") == 2 * INTERVAL
        assert await rig.delay("b") == 16 * INTERVAL
        assert b.dead_since is None


async def test_retry_after_on_429_is_honoured(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("slow down", **error(429, {"Retry-After": "3600"}))
        await rig.poll()
        assert await rig.delay() == HOUR


async def test_an_absurd_retry_after_is_capped_and_the_failure_recorded(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("later", **error(503, {"Retry-After": "99999999999999999999"}))
        outcome = await rig.poll()
        assert outcome.status == "error"
        state = await rig.state()
        assert state.consecutive_failures == 1
        assert state.failing_since == T0
        assert await rig.delay() == POLICY.backoff_cap


# --- admin notices -----------------------------------------------------------------------------


async def test_a_failing_feed_is_reported_once_then_its_recovery(make_rig: MakeRig) -> None:
    async with make_rig(admin=ADMIN) as rig:
        rig.serve(stories(["g1"]))
        await rig.poll()
        rig.serve("oops", **error(500))
        rig.clock.now += INTERVAL
        first_failure = rig.clock.now
        await rig.poll()
        while rig.clock.now - first_failure < ADMIN.failing_after:
            assert await rig.notices() == []
            await rig.poll_when_due()
        failing = await rig.notices()
        assert len(failing) == 1
        assert failing[0].channel == "ops"
        assert failing[0].target == ""
        assert failing[0].alert.title.startswith("Feed f has been failing for ")
        assert failing[0].alert.item_key.startswith("notice:failing:")
        assert failing[0].alert.link == rig.feeds["f"].url
        assert (await rig.state()).notice == "failing"
        for _ in range(3):
            await rig.poll_when_due()
        assert len(await rig.notices()) == 1

        rig.serve(stories(["g1"]))
        await rig.poll_when_due()
        assert await rig.titles() == [failing[0].alert.title, "Feed f works again"]
        assert all(d.status == "pending" for d in await rig.notices())
        assert (await rig.state()).notice == ""
        await rig.poll_when_due()
        assert len(await rig.notices()) == 2
        assert await rig.notices("desk") == []


async def test_a_dying_feed_is_reported_failing_then_dead_then_back(make_rig: MakeRig) -> None:
    async with make_rig(admin=ADMIN) as rig:
        rig.serve("oops", **error(500))
        await rig.poll()
        while (await rig.state()).dead_since is None:
            await rig.poll_when_due()
        kinds = [d.alert.item_key.split(":")[1] for d in await rig.notices()]
        assert kinds == ["failing", "dead"]
        dead = (await rig.notices())[-1].alert
        assert dead.title == "Feed f is dead and no longer polled"
        assert "monitor feeds --retry f" in dead.summary
        assert (await rig.state()).notice == "dead"

        rig.clock.now += DAY
        await rig.store.revive_feeds(["f"], rig.clock.now)
        rig.serve(stories(["g1"]))
        await rig.poll()
        assert (await rig.titles())[-1] == "Feed f works again"
        assert len(await rig.notices()) == 3


async def test_a_gone_feed_is_reported_dead_at_once(make_rig: MakeRig) -> None:
    async with make_rig(admin=ADMIN, targets={"ops": ("1", "2")}) as rig:
        rig.serve("gone", **error(410))
        await rig.poll()
        notices = await rig.notices()
        assert [d.target for d in notices] == ["1", "2"]
        assert {d.alert.title for d in notices} == {"Feed f is dead and no longer polled"}
        assert notices[0].alert.summary.startswith("HTTP 410.")


async def test_no_notices_without_an_admin_channel(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve("oops", **error(500))
        await rig.poll()
        rig.clock.now += 2 * DAY
        await rig.poll()
        rig.serve(stories(["g1"]))
        await rig.poll_when_due()
        rig.serve("gone", **error(410))
        await rig.poll_when_due()
        assert (await rig.state()).dead_since is not None
        assert await rig.store.deliveries(limit=1000) == []


async def test_a_feed_gone_silent_is_reported_once(make_rig: MakeRig) -> None:
    admin = AdminSettings("ops", silent_factor=10.0, silent_min=HOUR)
    async with make_rig(admin=admin) as rig:
        guids = ["g1"]
        rig.serve(stories(guids))
        await rig.poll()
        for n in range(2, 6):  # a new story on every poll: the usual cadence is one interval
            guids.insert(0, f"g{n}")
            rig.serve(stories(guids))
            await rig.poll_when_due()
        state = await rig.state()
        assert state.cadence == INTERVAL
        last_new = state.last_new_at
        assert last_new == rig.clock.now
        # Then nothing new (the server answers 304 to the conditional GET).
        while rig.clock.now + INTERVAL - last_new < 10 * INTERVAL:
            await rig.poll_when_due()
        assert await rig.notices() == []
        await rig.poll_when_due()
        assert rig.clock.now - last_new == 10 * INTERVAL
        assert await rig.titles() == ["Feed f has published nothing for 1 h 40 min"]
        assert "every 10 min" in (await rig.notices())[0].alert.summary
        rig.clock.now += 5 * DAY
        await rig.poll()
        assert len(await rig.notices()) == 1
        assert (await rig.state()).notice == "silent"

        guids.insert(0, "g6")
        rig.serve(stories(guids))
        await rig.poll_when_due()
        assert (await rig.titles())[-1] == "Feed f is publishing again"
        assert (await rig.state()).notice == ""
        assert len(await rig.notices("desk")) == 5


async def test_no_silent_notice_before_the_cadence_is_known(make_rig: MakeRig) -> None:
    admin = AdminSettings("ops", silent_min=HOUR)
    async with make_rig(admin=admin) as rig:
        rig.serve(stories(["g1"]))
        await rig.poll()
        rig.clock.now += 30 * DAY
        await rig.poll()
        assert await rig.notices() == []


# --- guid churn --------------------------------------------------------------------------------


async def test_rewritten_guids_do_not_alert_again(make_rig: MakeRig) -> None:
    async with make_rig(admin=ADMIN) as rig:
        plain = {"validators": False}  # every poll gets the whole document
        rig.serve(stories(["g1", "g2", "g3", "g4"]), **plain)
        await rig.poll()
        assert await rig.notices("desk") == []

        # Every guid rewritten (same links and titles), and one real new story.
        rig.serve(stories(["g5", "g1", "g2", "g3", "g4"], prefix="x"), **plain)
        outcome = await rig.poll_when_due()
        assert outcome.status == "ok"
        desk = await rig.notices("desk")
        assert [d.alert.item_key for d in desk] == ["id:x5"]
        assert outcome.alerts == 1
        churned = await rig.notices()
        assert [d.alert.title for d in churned] == ["Feed f changed the ids of its items"]
        assert "4 of its 5 items" in churned[0].alert.summary
        assert (await rig.state()).notice == "churn"

        # Stored under their new ids: the same document again is nothing new.
        again = await rig.poll_when_due()
        assert (again.status, again.new_items, again.alerts) == ("ok", 0, 0)

        # Rewritten once more: still recognised, and the notice is not repeated.
        rig.serve(stories(["g5", "g1", "g2", "g3", "g4"], prefix="y"), **plain)
        third = await rig.poll_when_due()
        assert third.alerts == 0
        assert len(await rig.notices("desk")) == 1
        assert len(await rig.notices()) == 1


async def test_churn_is_recognised_without_an_admin_channel(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve(stories(["g1", "g2"]))
        await rig.poll()
        rig.serve(stories(["g1", "g2"], prefix="https://news.example/guid/"))
        outcome = await rig.poll_when_due()
        assert outcome.alerts == 0
        assert await rig.store.deliveries(limit=1000) == []


async def test_a_recovery_with_churn_reports_both(make_rig: MakeRig) -> None:
    admin = AdminSettings("ops", failing_after=timedelta(0))
    async with make_rig(admin=admin) as rig:
        rig.serve(stories(["g1", "g2", "g3"]))
        await rig.poll()
        rig.serve("oops", **error(500))
        await rig.poll_when_due()
        assert await rig.titles() == ["Feed f has been failing for 0 s"]
        # It comes back having rewritten its guids (a new CMS, say).
        rig.serve(stories(["g1", "g2", "g3"], prefix="new-"))
        outcome = await rig.poll_when_due()
        assert outcome.alerts == 0
        assert (await rig.titles())[1:] == [
            "Feed f works again",
            "Feed f changed the ids of its items",
        ]
        assert (await rig.state()).notice == "churn"


async def test_items_sharing_one_link_still_alert(make_rig: MakeRig) -> None:
    """BAD-INPUTS I04: every item under the same link, told apart by guid and title."""
    home = "https://news.example/"
    async with make_rig(admin=ADMIN) as rig:
        entries = [("g2", "story two", home), ("g1", "story one", home)]
        rig.serve(document(entries))
        await rig.poll()
        entries.insert(0, ("g3", "story three", home))
        rig.serve(document(entries))
        outcome = await rig.poll_when_due()
        assert (outcome.new_items, outcome.alerts) == (1, 1)
        assert [d.alert.title for d in await rig.notices("desk")] == ["story three"]
        assert await rig.notices() == []


async def test_items_sharing_one_link_and_one_title_still_alert(make_rig: MakeRig) -> None:
    """I04 at its worst: one link and one title for every item (an "upcoming advisories"
    feed); only the guid tells them apart, so link and title are no identity here."""
    home = "https://news.example/upcoming"
    async with make_rig(admin=ADMIN) as rig:
        entries = [("g2", "Upcoming story", home), ("g1", "Upcoming story", home)]
        rig.serve(document(entries))
        await rig.poll()
        entries.insert(0, ("g3", "Upcoming story", home))
        rig.serve(document(entries))
        outcome = await rig.poll_when_due()
        assert outcome.alerts == 1
        assert [d.alert.item_key for d in await rig.notices("desk")] == ["id:g3"]
        assert await rig.notices() == []


async def test_a_new_briefing_under_a_stored_link_and_title_still_alerts(
    make_rig: MakeRig,
) -> None:
    """A feed listing one "daily briefing" at a time, always on one page under one title: a
    new guid there is a new item, not a rewritten id (only most of a document coming back
    under new ids shows unstable ids)."""
    page = "https://news.example/briefing"
    async with make_rig(admin=ADMIN) as rig:
        rig.serve(document([("d1", "story briefing", page), ("x", "other story", page + "/x")]))
        await rig.poll()
        rig.serve(document([("d2", "story briefing", page), ("x", "other story", page + "/x")]))
        outcome = await rig.poll_when_due()
        assert outcome.alerts == 1
        assert [d.alert.item_key for d in await rig.notices("desk")] == ["id:d2"]
        assert await rig.notices() == []


# --- server hints ------------------------------------------------------------------------------


async def test_max_age_lengthens_the_interval(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve(stories(["g1"]), headers={"Cache-Control": "public, max-age=1800"})
        await rig.poll()
        assert await rig.delay() == 30 * MINUTE


async def test_max_age_is_capped_at_the_ceiling(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve(stories(["g1"]), headers={"Cache-Control": "max-age=86400"})
        await rig.poll()
        assert await rig.delay() == 4 * INTERVAL  # the default ceiling


async def test_a_short_max_age_never_shortens_the_interval(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve(stories(["g1"]), headers={"Cache-Control": "max-age=5"})
        await rig.poll()
        assert await rig.delay() == INTERVAL


async def test_no_store_ignores_max_age(make_rig: MakeRig) -> None:
    async with make_rig() as rig:
        rig.serve(stories(["g1"]), headers={"Cache-Control": "no-store, max-age=1800"})
        await rig.poll()
        assert await rig.delay() == INTERVAL


async def test_rss_ttl_lengthens_the_interval(make_rig: MakeRig) -> None:
    feeds = [spec("f", max_interval=2 * HOUR)]
    async with make_rig(feeds=feeds) as rig:
        rig.serve(document([("g1", "story 1", "https://news.example/1")], ttl=90))
        await rig.poll()
        assert await rig.delay() == 90 * MINUTE
        rig.serve(document([("g1", "story 1", "https://news.example/1")], ttl=600))
        await rig.poll()
        assert await rig.delay() == 2 * HOUR


async def test_rss_ttl_is_honoured_after_a_304(make_rig: MakeRig) -> None:
    """A 304 carries no document: the ttl of the last one fetched still holds."""
    feeds = [spec("f", max_interval=2 * HOUR)]
    async with make_rig(feeds=feeds) as rig:
        rig.serve(document([("g1", "story 1", "https://news.example/1")], ttl=90))
        assert (await rig.poll()).status == "ok"
        rig.clock.now += 90 * MINUTE
        assert (await rig.poll()).status == "not_modified"
        assert (await rig.state()).ttl == 90
        assert await rig.delay() == 90 * MINUTE
        rig.serve(document([("g2", "story 2", "https://news.example/2")]))
        rig.clock.now += 90 * MINUTE
        assert (await rig.poll()).status == "ok"
        assert (await rig.state()).ttl is None
        assert await rig.delay() == INTERVAL


async def test_a_busy_adaptive_feed_is_polled_at_its_floor(make_rig: MakeRig) -> None:
    feeds = [spec("f", adaptive=True, min_interval=2 * MINUTE)]
    async with make_rig(feeds=feeds) as rig:
        guids = ["g1"]
        rig.serve(rss([(g, f"story {g}") for g in guids]))
        await rig.poll()
        assert await rig.delay() == INTERVAL  # no cadence yet
        for n in range(2, 5):
            guids.insert(0, f"g{n}")
            rig.serve(rss([(g, f"story {g}") for g in guids]))
            rig.clock.now += 3 * MINUTE
            await rig.poll()
        assert (await rig.state()).cadence == 3 * MINUTE
        assert await rig.delay() == 2 * MINUTE
