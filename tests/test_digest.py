"""Digests against a real SQLite store: one email per recipient, marked in the outbox; retries
that never put an alert in two digests; a digest missed while down sent once; the schedule
across DST; empty digests; a preview that touches nothing; and one real email over SMTP."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from monitor.config import load_config
from monitor.digest import Digester, cron_trigger
from monitor.errors import ChannelError, ConfigError, DeliveryError, TargetError
from monitor.models import (
    Alert,
    CacheInfo,
    ChannelSpec,
    Delivery,
    DeliveryPolicy,
    DigestSettings,
    EmailSettings,
    FeedSpec,
    Item,
    Match,
    SmtpSettings,
)
from monitor.notify.email import EmailNotifier
from monitor.notify.email_render import RenderedEmail
from monitor.store import SQLiteStore, Store
from tests.builders import write_config
from tests.smtpserver import SmtpServer

BERLIN = ZoneInfo("Europe/Berlin")
#: 08:00 in Berlin (summer time) on 2024-05-01, the daily digest time.
EIGHT = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
POLICY = DeliveryPolicy(retry_base=timedelta(seconds=10), retry_cap=MINUTE, max_attempts=3)
ANN, BOB = "ann@example.org", "bob@example.org"
FEED = FeedSpec(name="wire", url="https://news.example/feed.xml", interval=timedelta(minutes=5))


def email_settings(
    *,
    send_empty: bool = False,
    port: int = 25,
    to: tuple[str, ...] = (ANN, BOB),
    cron: str = "0 8 * * *",
) -> EmailSettings:
    return EmailSettings(
        smtp=SmtpSettings(host="127.0.0.1", port=port, security="none"),
        sender="monitor@example.org",
        to=to,
        subject_prefix="[news]",
        digest=DigestSettings(cron=cron, send_empty=send_empty),
    )


def email_spec(settings: EmailSettings) -> ChannelSpec:
    return ChannelSpec("mail", "email", {"email": settings}, targets=settings.to)


@dataclass
class Sent:
    target: str
    rendered: RenderedEmail
    message_id: str

    @property
    def stories(self) -> list[str]:
        return sorted(re.findall(r"Story \d+", self.rendered.text))


@dataclass
class FakeEmail:
    """An email channel that records what it sent; `script[target]` are errors raised, one per
    attempt, before that recipient's emails are accepted."""

    settings: EmailSettings
    script: dict[str, list[Exception]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    tried: list[Sent] = field(default_factory=list)
    #: When set, each send waits for it (after setting `started`): a send in flight.
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.spec = email_spec(self.settings)

    async def send_email(self, target: str, rendered: RenderedEmail, message_id: str) -> None:
        self.tried.append(Sent(target, rendered, message_id))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        failures = self.script.get(target)
        if failures:
            raise failures.pop(0)
        self.sent.append(Sent(target, rendered, message_id))

    def message_id(self, kind: str, deliveries: Sequence[Delivery], target: str) -> str:
        return f"<{kind}.{','.join(str(d.id) for d in deliveries)}.{target}>"

    def to(self, target: str) -> list[list[str]]:
        """The stories of each digest `target` got, in order."""
        return [s.stories for s in self.sent if s.target == target]


async def in_flight(channel: FakeEmail, job: asyncio.Task[Any]) -> None:
    """Wait until `job` is sending through `channel` (or has ended: a failure, not a hang)."""
    started = asyncio.ensure_future(channel.started.wait())
    await asyncio.wait([started, job], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    assert channel.started.is_set(), f"the digest ended without sending: {job}"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(tmp_path / "state.db") as opened:
        await opened.sync_feeds([FEED], EIGHT - DAY)
        yield opened


def digester(store: Store, channel: FakeEmail | EmailNotifier, clock: Clock) -> Digester:
    return Digester(store, {"mail": channel}, BERLIN, POLICY, clock, rng=random.Random(1))


async def alerts(store: Store, numbers: Sequence[int], at: datetime) -> None:
    """Stories `numbers` found at `at`, each alerting channel "mail" for both recipients."""
    match = Match("ferries", ("ferry",), ("title",), ("mail",))
    keys = [f"k{n}" for n in numbers]
    items = [
        Item(feed="wire", key=k, title=f"Story {n}", link="")
        for k, n in zip(keys, numbers, strict=True)
    ]
    found = [
        Alert("wire", k, f"Story {n}", "", "", None, at, (match,))
        for k, n in zip(keys, numbers, strict=True)
    ]
    await store.record_items(
        "wire", items, found, cache=CacheInfo(), now=at, next_poll_at=at + MINUTE,
        targets={"mail": [ANN, BOB]},
    )  # fmt: skip


async def statuses(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for delivery in await store.deliveries("mail", limit=1000):
        counts[delivery.status.value] = counts.get(delivery.status.value, 0) + 1
    return counts


# --- run ---------------------------------------------------------------------------------------


async def test_run_sends_one_digest_per_recipient_and_marks_every_alert_sent(store: Store) -> None:
    await alerts(store, [1, 2], EIGHT - 3 * 60 * MINUTE)
    await alerts(store, [3], EIGHT - MINUTE)
    channel = FakeEmail(email_settings())
    report = await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    assert channel.to(ANN) == [["Story 1", "Story 2", "Story 3"]]
    assert channel.to(BOB) == [["Story 1", "Story 2", "Story 3"]]
    assert channel.sent[0].rendered.subject == "[news] Digest: 3 alerts (2024-05-01)"
    assert [(r.target, r.sent, r.failed, r.retrying) for r in report.recipients] == [
        (ANN, 3, 0, 0),
        (BOB, 3, 0, 0),
    ]
    assert report.ok
    assert report.complete
    assert await statuses(store) == {"sent": 6}
    assert await store.last_digest("mail") == EIGHT
    # Nothing left: the next run sends nothing.
    assert (
        await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT + MINUTE)
    ).recipients == ()
    assert len(channel.sent) == 2


async def test_a_failed_digest_is_retried_alone_and_no_alert_is_in_two_digests(
    store: Store,
) -> None:
    await alerts(store, [1, 2], EIGHT - 60 * MINUTE)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 try later")]})
    clock = Clock(EIGHT)
    digests = digester(store, channel, clock)
    report = await digests.run("mail", EIGHT, scheduled=EIGHT)
    assert [(r.target, r.outcome) for r in report.recipients] == [(ANN, "retrying"), (BOB, "sent")]
    # Every recipient was tried: the 08:00 digest was carried out; Ann's is retried alone.
    assert report.complete
    assert await store.last_digest("mail") == EIGHT
    # A story found after the failed digest waits for the next scheduled one.
    await alerts(store, [3], EIGHT + 2 * MINUTE)
    clock.now = EIGHT + 2 * MINUTE
    [retried] = await digests.retry_due(clock.now)
    assert channel.to(ANN) == [["Story 1", "Story 2"]]  # the failed digest, again
    assert channel.tried[0].message_id == channel.sent[-1].message_id
    # The same email as the first try: the same period in its heading.
    assert channel.tried[0].rendered == channel.sent[-1].rendered
    assert retried.until == EIGHT
    assert await store.last_digest("mail") == EIGHT  # a retry never moves it
    assert await digests.retry_due(clock.now + DAY) == []  # nothing failed any more
    # The next day's digest: only the new story, for both.
    await digests.run("mail", EIGHT + DAY, scheduled=EIGHT + DAY)
    assert channel.to(ANN) == [["Story 1", "Story 2"], ["Story 3"]]
    assert channel.to(BOB) == [["Story 1", "Story 2"], ["Story 3"]]
    assert await statuses(store) == {"sent": 6}


async def test_a_scheduled_digest_skips_alerts_waiting_for_their_retry(store: Store) -> None:
    await alerts(store, [1], EIGHT - MINUTE)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 try later")]})
    clock = Clock(EIGHT)
    digests = digester(store, channel, clock)
    await digests.run("mail", EIGHT, scheduled=EIGHT)
    await alerts(store, [2], EIGHT + timedelta(seconds=1))
    # Run again before the retry time (8-12 s later): Story 1 waits, only Story 2 goes.
    await digests.run("mail", EIGHT + timedelta(seconds=2))
    assert channel.to(ANN) == [["Story 2"]]
    assert await store.retry_due_count("mail", EIGHT + DAY) == 1


async def test_permanent_failures_are_settled_and_close_the_period(store: Store) -> None:
    await alerts(store, [1], EIGHT - MINUTE)
    script: dict[str, list[Exception]] = {
        ANN: [TargetError("550 no such user")],
        BOB: [DeliveryError("554 rejected as spam", permanent=True)],
    }
    channel = FakeEmail(email_settings(), script)
    report = await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    assert [(r.outcome, r.failed, r.error) for r in report.recipients] == [
        ("failed", 1, "550 no such user"),
        ("failed", 1, "554 rejected as spam"),
    ]
    assert report.complete
    assert not report.ok
    assert await statuses(store) == {"failed": 2}
    assert await store.last_digest("mail") == EIGHT


async def test_retries_give_up_after_max_attempts(store: Store) -> None:
    await alerts(store, [1], EIGHT - MINUTE)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 later")] * 5})
    clock = Clock(EIGHT)
    digests = digester(store, channel, clock)
    await digests.run("mail", EIGHT, scheduled=EIGHT)
    for _ in range(4):
        clock.now += 10 * MINUTE
        await digests.retry_due(clock.now)
    [failed] = await store.deliveries("mail", "failed")
    assert (failed.target, failed.attempts) == (ANN, POLICY.max_attempts)
    assert failed.last_error == "gave up after 3 attempts: 451 later"
    assert len([t for t in channel.tried if t.target == ANN]) == POLICY.max_attempts


async def test_a_broken_channel_holds_every_digest_untried(store: Store) -> None:
    await alerts(store, [1, 2], EIGHT - MINUTE)
    channel = FakeEmail(email_settings(), {ANN: [ChannelError("535 login refused")]})
    report = await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    assert [(r.target, r.outcome, r.retrying) for r in report.recipients] == [
        (ANN, "held", 2),
        (BOB, "held", 2),
    ]
    assert [t.target for t in channel.tried] == [ANN]  # Bob's was not even tried
    pending = await store.deliveries("mail", "pending")
    assert [d.attempts for d in pending] == [0, 0, 0, 0]
    assert await store.last_digest("mail") is None
    # Fixed (config change, restart): everything goes out at the next run.
    channel.script.clear()
    await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT + MINUTE)
    assert channel.to(ANN) == channel.to(BOB) == [["Story 1", "Story 2"]]


# --- catch_up ----------------------------------------------------------------------------------


async def test_catch_up_sends_a_missed_digest_once(store: Store) -> None:
    channel = FakeEmail(email_settings())
    clock = Clock(EIGHT - DAY)
    # First start ever: the first period starts now, nothing to catch up.
    assert await digester(store, channel, clock).catch_up(EIGHT - DAY - MINUTE) == []
    assert await store.last_digest("mail") == EIGHT - DAY - MINUTE
    await digester(store, channel, clock).run("mail", EIGHT - DAY, scheduled=EIGHT - DAY)
    await alerts(store, [1], EIGHT - 60 * MINUTE)
    # The daemon was down at 08:00 and starts at 09:30.
    clock.now = EIGHT + 90 * MINUTE
    [report] = await digester(store, channel, clock).catch_up(clock.now)
    assert (report.until, report.ok) == (EIGHT, True)
    assert channel.to(ANN) == [["Story 1"]]
    assert await store.last_digest("mail") == EIGHT
    assert await digester(store, channel, clock).catch_up(clock.now + MINUTE) == []
    assert len(channel.sent) == 2


# --- schedule ----------------------------------------------------------------------------------


def test_the_schedule_follows_berlin_time_across_dst(store: Store) -> None:
    digests = digester(store, FakeEmail(email_settings()), Clock(EIGHT))
    # Spring forward on 2024-03-31: 08:00 is 07:00 UTC before, 06:00 UTC after.
    saturday = datetime(2024, 3, 30, 7, 0, tzinfo=UTC)
    sunday = datetime(2024, 3, 31, 6, 0, tzinfo=UTC)
    assert digests.next_run("mail", saturday - MINUTE) == saturday
    assert digests.next_run("mail", saturday) == sunday  # strictly after
    assert digests.previous_run("mail", sunday - timedelta(microseconds=1)) == saturday
    assert digests.previous_run("mail", sunday) == sunday
    # Fall back on 2024-10-27: 08:00 is 07:00 UTC again.
    assert digests.next_run("mail", datetime(2024, 10, 26, 6, 0, tzinfo=UTC)) == datetime(
        2024, 10, 27, 7, 0, tzinfo=UTC
    )
    assert digests.previous_run("mail", datetime(2024, 10, 28, 6, 59, tzinfo=UTC)) == datetime(
        2024, 10, 27, 7, 0, tzinfo=UTC
    )


async def test_previous_run_finds_a_yearly_schedule(store: Store) -> None:
    settings = email_settings()
    yearly = EmailSettings(
        smtp=settings.smtp, sender=settings.sender, to=settings.to,
        digest=DigestSettings(cron="0 8 1 1 *"),
    )  # fmt: skip
    digests = digester(store, FakeEmail(yearly), Clock(EIGHT))
    new_year = datetime(2024, 1, 1, 7, 0, tzinfo=UTC)
    assert digests.previous_run("mail", datetime(2024, 12, 31, 23, 0, tzinfo=UTC)) == new_year
    assert digests.next_run("mail", new_year) == datetime(2025, 1, 1, 7, 0, tzinfo=UTC)


# --- empty digests -----------------------------------------------------------------------------


async def test_an_empty_digest_goes_to_everyone_only_when_asked(store: Store) -> None:
    quiet = FakeEmail(email_settings())
    report = await digester(store, quiet, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    assert (quiet.sent, report.recipients, report.complete) == ([], (), True)
    chatty = FakeEmail(email_settings(send_empty=True))
    digests = digester(store, chatty, Clock(EIGHT + DAY))
    report = await digests.run("mail", EIGHT + DAY, scheduled=EIGHT + DAY)
    assert [(s.target, s.stories) for s in chatty.sent] == [(ANN, []), (BOB, [])]
    assert "Nothing matched in this period." in chatty.sent[0].rendered.text
    assert chatty.sent[0].rendered.subject == "[news] Digest: nothing new (2024-05-02)"
    assert [(r.target, r.outcome, r.alerts) for r in report.recipients] == [
        (ANN, "sent", 0),
        (BOB, "sent", 0),
    ]
    # Each period's empty digest is its own message.
    await digests.run("mail", EIGHT + 2 * DAY, scheduled=EIGHT + 2 * DAY)
    assert chatty.sent[0].message_id != chatty.sent[2].message_id


# --- preview -----------------------------------------------------------------------------------


async def test_preview_writes_the_html_and_claims_nothing(store: Store, tmp_path: Path) -> None:
    await alerts(store, [1, 2], EIGHT - MINUTE)
    channel = FakeEmail(email_settings())
    digests = digester(store, channel, Clock(EIGHT))
    out = tmp_path / "digest.html"
    assert await digests.preview("mail", EIGHT, out) == 2
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "Story 1" in html
    assert "Story 2" in html
    assert channel.tried == []
    assert await statuses(store) == {"pending": 4}
    # Nothing was claimed: a run right away sends it all.
    await digests.run("mail", EIGHT)
    assert channel.to(ANN) == [["Story 1", "Story 2"]]


# --- a real email ------------------------------------------------------------------------------


async def test_a_digest_goes_out_over_smtp(store: Store) -> None:
    await alerts(store, [1, 2], EIGHT - MINUTE)
    anns = [d for d in reversed(await store.deliveries("mail")) if d.target == ANN]
    with SmtpServer() as server:
        notifier = EmailNotifier(email_spec(email_settings(port=server.port)), BERLIN)
        async with notifier:
            report = await digester(store, notifier, Clock(EIGHT)).run("mail", EIGHT)
        received = server.wait_for(2)
    assert report.ok
    assert [r.rcpt_tos for r in received] == [(ANN,), (BOB,)]
    message = received[0].message
    assert message["Subject"] == "[news] Digest: 2 alerts (2024-05-01)"
    assert message["Message-ID"] == notifier.message_id("digest", anns, ANN)
    assert "Story 2" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert await statuses(store) == {"sent": 4}


async def test_a_refused_sender_holds_the_digest_instead_of_failing_its_alerts(
    store: Store,
) -> None:
    """A 553 at MAIL FROM is about the channel (its `from`), not these alerts: kept pending."""
    await alerts(store, [1], EIGHT - MINUTE)
    await store.set_last_digest("mail", EIGHT - DAY)
    with SmtpServer() as server:
        server.fail_next(553, "5.7.1 Sender address rejected: not owned by user", stage="MAIL")
        notifier = EmailNotifier(email_spec(email_settings(port=server.port)), BERLIN)
        report = await digester(store, notifier, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
        assert [(r.target, r.outcome) for r in report.recipients] == [(ANN, "held"), (BOB, "held")]
        assert "553 5.7.1 Sender address rejected" in report.recipients[0].error
        assert [d.attempts for d in await store.deliveries("mail", "pending")] == [0, 0]
        assert await store.last_digest("mail") == EIGHT - DAY  # the period stays open
        # Fixed: the next start sends the digest it missed.
        later = EIGHT + HOUR
        [caught_up] = await digester(store, notifier, Clock(later)).catch_up(later)
        assert caught_up.ok
        assert len(server.wait_for(2)) == 2


# --- recipients --------------------------------------------------------------------------------


async def test_a_recipient_removed_from_to_gets_no_digest_and_keeps_its_alerts(
    store: Store,
) -> None:
    await alerts(store, [1], EIGHT - MINUTE)  # for Ann and Bob
    ann_only = FakeEmail(email_settings(to=(ANN,)))
    report = await digester(store, ann_only, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    assert [(r.target, r.outcome) for r in report.recipients] == [(ANN, "sent")]
    assert [s.target for s in ann_only.tried] == [ANN]
    assert report.complete
    [kept] = await store.deliveries("mail", "pending")
    assert (kept.target, kept.attempts) == (BOB, 0)
    # Nor is Bob's alert retried.
    assert await digester(store, ann_only, Clock(EIGHT)).retry_due(EIGHT + DAY) == []
    # Listed again: his kept alert goes out with the next digest.
    both = FakeEmail(email_settings())
    await digester(store, both, Clock(EIGHT + DAY)).run("mail", EIGHT + DAY, scheduled=EIGHT + DAY)
    assert both.to(BOB) == [["Story 1"]]
    assert both.to(ANN) == []
    assert await statuses(store) == {"sent": 2}


# --- give-up per delivery ----------------------------------------------------------------------


async def test_each_alert_of_a_failing_digest_counts_its_own_attempts(store: Store) -> None:
    """An old alert that ran out of attempts fails for good; a new one that shared its
    digest is kept for a retry, not failed after one try."""
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 later")] * 3})
    clock = Clock(EIGHT)
    digests = digester(store, channel, clock)
    await digests.run("mail", EIGHT, scheduled=EIGHT)  # Story 1, attempt 1
    clock.now = EIGHT + 10 * MINUTE
    await digests.retry_due(clock.now)  # attempt 2 (of 3)
    await alerts(store, [2], EIGHT + 30 * MINUTE)
    clock.now = EIGHT + DAY
    report = await digests.run("mail", clock.now, scheduled=clock.now)
    [ann] = [r for r in report.recipients if r.target == ANN]
    assert (ann.outcome, ann.alerts, ann.failed, ann.retrying) == ("retrying", 2, 1, 1)
    by_title = {d.alert.title: d for d in await store.deliveries("mail") if d.target == ANN}
    assert by_title["Story 1"].status.value == "failed"
    assert by_title["Story 1"].last_error == "gave up after 3 attempts: 451 later"
    assert (by_title["Story 2"].status.value, by_title["Story 2"].attempts) == ("pending", 1)
    # Its retry: Story 2 alone goes out.
    clock.now += 10 * MINUTE
    await digests.retry_due(clock.now)
    assert channel.to(ANN) == [["Story 2"]]


# --- start, restart, shutdown ------------------------------------------------------------------


async def test_catch_up_sends_a_digest_cut_short_by_a_crash(store: Store) -> None:
    """A digest cut short leaves its deliveries claimed (a 10-minute lease): the next start
    releases them and sends the missed digest, instead of closing its period empty."""
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    # The 08:00 digest claimed its deliveries, then the process died.
    assert len(await store.claim_deliveries("mail", EIGHT, 100, timedelta(minutes=10))) == 2
    channel = FakeEmail(email_settings())
    restart = EIGHT + 2 * MINUTE  # back within the lease
    [report] = await digester(store, channel, Clock(restart)).catch_up(restart)
    assert (report.until, report.ok) == (EIGHT, True)
    assert channel.to(ANN) == channel.to(BOB) == [["Story 1"]]
    assert await store.last_digest("mail") == EIGHT
    assert await statuses(store) == {"sent": 2}


async def test_a_period_is_never_closed_while_its_deliveries_are_claimed(store: Store) -> None:
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    [bobs] = [d for d in await store.deliveries("mail") if d.target == BOB]
    # Bob's delivery is claimed by a digest that never finished (no recover yet).
    await store.claim_deliveries("mail", EIGHT, 100, timedelta(minutes=10), skip_targets=[ANN])
    channel = FakeEmail(email_settings())
    report = await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    assert [(r.target, r.outcome) for r in report.recipients] == [(ANN, "sent")]
    assert not report.complete
    assert await store.last_digest("mail") == EIGHT - DAY
    # The next start releases it and sends Bob the digest he missed, once.
    restart = EIGHT + HOUR
    await digester(store, channel, Clock(restart)).catch_up(restart)
    assert channel.to(BOB) == [["Story 1"]]
    assert channel.to(ANN) == [["Story 1"]]
    assert [d.status.value for d in await store.deliveries("mail") if d.id == bobs.id] == ["sent"]
    assert await store.last_digest("mail") == EIGHT


async def test_a_retry_at_start_does_not_swallow_the_missed_digest(store: Store) -> None:
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 later")]})
    await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    await alerts(store, [2], EIGHT + 2 * HOUR)  # found before the daemon went down
    # Down over the next day's 08:00; at start the retry job happens to run first.
    restart = EIGHT + DAY + 90 * MINUTE
    digests = digester(store, channel, Clock(restart))
    await digests.retry_due(restart)
    await digests.catch_up(restart)
    assert channel.to(ANN) == [["Story 1"], ["Story 2"]]
    assert channel.to(BOB) == [["Story 1"], ["Story 2"]]
    assert await store.last_digest("mail") == EIGHT + DAY
    assert await statuses(store) == {"sent": 4}


async def test_a_restart_while_a_recipient_retries_sends_nobody_an_extra_digest(
    store: Store,
) -> None:
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 later")]})
    await digester(store, channel, Clock(EIGHT)).run("mail", EIGHT, scheduled=EIGHT)
    await alerts(store, [2], EIGHT + 2 * MINUTE)
    restart = EIGHT + 5 * MINUTE
    digests = digester(store, channel, Clock(restart))
    assert await digests.catch_up(restart) == []
    assert channel.to(BOB) == [["Story 1"]]  # no unscheduled second digest
    await digests.retry_due(restart)  # Ann's retry is due (8-12 s after 08:00)
    assert channel.to(ANN) == [["Story 1"]]
    await digests.run("mail", EIGHT + DAY, scheduled=EIGHT + DAY)
    assert channel.to(ANN) == channel.to(BOB) == [["Story 1"], ["Story 2"]]


async def test_catch_ups_and_retries_of_one_channel_never_overlap(store: Store) -> None:
    """Two starts' catch-ups (a reload runs a second Digester on the same store) and a retry
    at once: the missed digest goes out once; with `send_empty`, a second run would send
    everyone an empty digest too."""
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(send_empty=True))
    restart = EIGHT + HOUR
    first = digester(store, channel, Clock(restart))
    second = digester(store, channel, Clock(restart))
    await asyncio.gather(
        first.catch_up(restart), second.catch_up(restart), first.retry_due(restart)
    )
    assert channel.to(ANN) == channel.to(BOB) == [["Story 1"]]
    assert await store.last_digest("mail") == EIGHT


async def test_drain_lets_a_digest_in_flight_finish_and_starts_no_other(store: Store) -> None:
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(), gate=asyncio.Event())
    digests = digester(store, channel, Clock(EIGHT))
    job = asyncio.create_task(digests.run("mail", EIGHT, scheduled=EIGHT))
    await in_flight(channel, job)
    # The scheduler shutting down cancels its job: the digest itself goes on.
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    draining = asyncio.create_task(digests.drain(3600))
    assert channel.gate is not None
    channel.gate.set()
    assert await draining
    assert channel.to(ANN) == channel.to(BOB) == [["Story 1"]]
    assert await store.last_digest("mail") == EIGHT
    # Stopped: no digest starts any more.
    await alerts(store, [2], EIGHT + MINUTE)
    report = await digests.run("mail", EIGHT + DAY, scheduled=EIGHT + DAY)
    assert (report.recipients, report.complete) == ((), False)
    assert await digests.catch_up(EIGHT + 2 * DAY) == []
    assert await digests.retry_due(EIGHT + 2 * DAY) == []
    assert len(channel.tried) == 2


async def test_drain_stops_a_digest_past_its_grace_and_hands_its_alerts_back(
    store: Store,
) -> None:
    await store.set_last_digest("mail", EIGHT - DAY)
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(), gate=asyncio.Event())  # a send that never ends
    digests = digester(store, channel, Clock(EIGHT))
    job = asyncio.create_task(digests.run("mail", EIGHT, scheduled=EIGHT))
    await in_flight(channel, job)
    assert not await digests.drain(0)
    with pytest.raises(asyncio.CancelledError):
        await job
    assert await store.claimed_count("mail", EIGHT) == 0
    assert [d.attempts for d in await store.deliveries("mail", "pending")] == [0, 0]
    assert await store.last_digest("mail") == EIGHT - DAY  # the period stays open
    # The next start sends it.
    channel.gate = None
    restart = EIGHT + HOUR
    [report] = await digester(store, channel, Clock(restart)).catch_up(restart)
    assert report.ok
    assert channel.to(ANN) == channel.to(BOB) == [["Story 1"]]


# --- empty digests that fail -------------------------------------------------------------------


async def test_a_failed_empty_digest_is_retried(store: Store) -> None:
    channel = FakeEmail(email_settings(send_empty=True), {ANN: [DeliveryError("451 later")]})
    clock = Clock(EIGHT)
    digests = digester(store, channel, clock)
    report = await digests.run("mail", EIGHT, scheduled=EIGHT)
    assert [(r.target, r.outcome) for r in report.recipients] == [(ANN, "retrying"), (BOB, "sent")]
    assert await digests.retry_due(EIGHT + timedelta(seconds=1)) == []  # not yet
    clock.now = EIGHT + 10 * MINUTE
    [retry] = await digests.retry_due(clock.now)
    assert [(r.target, r.outcome) for r in retry.recipients] == [(ANN, "sent")]
    assert [s.stories for s in channel.sent if s.target == ANN] == [[]]
    assert channel.sent[-1].message_id == channel.tried[0].message_id  # the same email
    assert channel.sent[-1].rendered == channel.tried[0].rendered
    assert await digests.retry_due(clock.now + DAY) == []


# --- preview matches a run ---------------------------------------------------------------------


async def test_preview_lists_what_a_run_would_send(store: Store, tmp_path: Path) -> None:
    await alerts(store, [1], EIGHT - HOUR)
    channel = FakeEmail(email_settings(), {ANN: [DeliveryError("451 later")]})
    digests = digester(store, channel, Clock(EIGHT))
    await digests.run("mail", EIGHT, scheduled=EIGHT)  # Ann's Story 1 waits for its retry
    await alerts(store, [2], EIGHT + timedelta(seconds=1))
    out = tmp_path / "digest.html"
    now = EIGHT + timedelta(seconds=2)  # its retry comes 8-12 s after 08:00
    assert await digests.preview("mail", now, out) == 1
    html = out.read_text(encoding="utf-8")
    assert "Story 2" in html
    assert "Story 1" not in html
    report = await digests.run("mail", now)
    assert channel.to(ANN) == [["Story 2"]]  # what the preview showed
    assert [r.alerts for r in report.recipients if r.target == ANN] == [1]


# --- cron --------------------------------------------------------------------------------------

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def fire_days(expr: str) -> list[int]:
    """The weekdays (Monday = 0) on which `expr` fires in a fortnight, each at 08:00 Berlin."""
    trigger = cron_trigger(expr, BERLIN)
    at = datetime(2024, 5, 6, tzinfo=BERLIN)  # a Monday
    end = at + timedelta(days=14)
    days: list[int] = []
    while (fired := trigger.get_next_fire_time(None, at)) is not None and fired < end:
        local = fired.astimezone(BERLIN)
        assert (local.hour, local.minute) == (8, 0)
        days.append(local.weekday())
        at = fired + timedelta(seconds=1)
    assert days[: len(days) // 2] == days[len(days) // 2 :]  # the same both weeks
    return sorted(set(days))


@pytest.mark.parametrize(
    ("expr", "days"),
    [
        ("0 8 * * 1-5", [MON, TUE, WED, THU, FRI]),
        ("0 8 * * mon-fri", [MON, TUE, WED, THU, FRI]),
        ("0 8 * * MON-Fri", [MON, TUE, WED, THU, FRI]),
        ("0 8 * * 0", [SUN]),
        ("0 8 * * 7", [SUN]),
        ("0 8 * * sun", [SUN]),
        ("0 8 * * 0,7", [SUN]),
        ("0 8 * * 6,0", [SAT, SUN]),
        ("0 8 * * sat-sun", [SAT, SUN]),
        ("0 8 * * 5-7", [FRI, SAT, SUN]),
        ("0 8 * * 1,3,5", [MON, WED, FRI]),
        ("0 8 * * */2", [TUE, THU, SAT, SUN]),  # 0, 2, 4, 6
        ("0 8 * * 1-5/2", [MON, WED, FRI]),
        ("0 8 * * 4/2", [THU, SAT]),
        ("0 8 * * *", [MON, TUE, WED, THU, FRI, SAT, SUN]),
        ("0 8 * * 0-7", [MON, TUE, WED, THU, FRI, SAT, SUN]),
    ],
)
def test_cron_weekdays_are_read_as_crontab_reads_them(expr: str, days: list[int]) -> None:
    assert fire_days(expr) == days


@pytest.mark.parametrize(
    "expr",
    ["0 8 * * 8", "0 8 * * 5-1", "0 8 * * mon-", "0 8 * * */0", "0 8 * * funday", "0 8 * *"],
)
def test_invalid_cron_weekdays_are_refused(expr: str) -> None:
    with pytest.raises(ValueError, match=r"weekday|step|fields"):
        cron_trigger(expr, BERLIN)


def test_the_digest_schedule_uses_crontab_weekdays(store: Store) -> None:
    weekdays = FakeEmail(email_settings(cron="0 8 * * 1-5"))
    digests = digester(store, weekdays, Clock(EIGHT))
    friday = datetime(2024, 5, 10, 6, 0, tzinfo=UTC)  # 08:00 in Berlin
    monday = datetime(2024, 5, 13, 6, 0, tzinfo=UTC)
    assert digests.next_run("mail", friday) == monday
    assert digests.previous_run("mail", monday - MINUTE) == friday


def digest_config(tmp_path: Path, cron: str) -> Path:
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
timezone: Europe/Berlin
state: "memory:"
channels:
  mail:
    type: email
    smtp: {{host: 127.0.0.1, port: 25, security: none}}
    from: monitor@example.org
    to: [{ANN}]
    digest: {{cron: "{cron}"}}
""",
    )


@pytest.mark.parametrize("cron", ["0 8 * * 0,7", "0 8 * * 1-5", "0 8 * * sat-sun"])
def test_the_config_takes_crontab_weekdays(tmp_path: Path, cron: str) -> None:
    [channel] = load_config(digest_config(tmp_path, cron)).channels
    settings = channel.options["email"]
    assert isinstance(settings, EmailSettings)
    assert settings.digest == DigestSettings(cron=cron)


def test_the_config_refuses_a_weekday_past_seven(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid cron schedule '0 8 \* \* 8'.*weekday '8'"):
        load_config(digest_config(tmp_path, "0 8 * * 8"))
