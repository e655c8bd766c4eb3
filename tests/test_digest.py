"""Digests against a real SQLite store: one email per recipient, marked in the outbox; retries
that never put an alert in two digests; a digest missed while down sent once; the schedule
across DST; empty digests; a preview that touches nothing; and one real email over SMTP."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.digest import Digester
from monitor.errors import ChannelError, DeliveryError, TargetError
from monitor.models import (
    Alert,
    CacheInfo,
    ChannelSpec,
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
from tests.smtpserver import SmtpServer

BERLIN = ZoneInfo("Europe/Berlin")
#: 08:00 in Berlin (summer time) on 2024-05-01, the daily digest time.
EIGHT = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
POLICY = DeliveryPolicy(retry_base=timedelta(seconds=10), retry_cap=MINUTE, max_attempts=3)
ANN, BOB = "ann@example.org", "bob@example.org"
FEED = FeedSpec(name="wire", url="https://news.example/feed.xml", interval=timedelta(minutes=5))


def email_settings(*, send_empty: bool = False, port: int = 25) -> EmailSettings:
    return EmailSettings(
        smtp=SmtpSettings(host="127.0.0.1", port=port, security="none"),
        sender="monitor@example.org",
        to=(ANN, BOB),
        subject_prefix="[news]",
        digest=DigestSettings(cron="0 8 * * *", send_empty=send_empty),
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

    def __post_init__(self) -> None:
        self.spec = email_spec(self.settings)

    async def send_email(self, target: str, rendered: RenderedEmail, message_id: str) -> None:
        self.tried.append(Sent(target, rendered, message_id))
        failures = self.script.get(target)
        if failures:
            raise failures.pop(0)
        self.sent.append(Sent(target, rendered, message_id))

    def message_id(self, kind: str, ids: Sequence[int], target: str) -> str:
        return f"<{kind}.{','.join(map(str, ids))}.{target}>"

    def to(self, target: str) -> list[list[str]]:
        """The stories of each digest `target` got, in order."""
        return [s.stories for s in self.sent if s.target == target]


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
    assert not report.complete
    assert await store.last_digest("mail") is None  # the period is not closed yet
    # A story found after the failed digest waits for the next scheduled one.
    await alerts(store, [3], EIGHT + 2 * MINUTE)
    clock.now = EIGHT + 2 * MINUTE
    assert await digests.retry_due(clock.now) != []
    assert channel.to(ANN) == [["Story 1", "Story 2"]]  # the failed digest, again
    assert channel.tried[0].message_id == channel.sent[-1].message_id
    assert await store.last_digest("mail") == EIGHT
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
    anns = sorted(d.id for d in await store.deliveries("mail") if d.target == ANN)
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
