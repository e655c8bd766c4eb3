"""Bot command answers against a real SQLite store: status, rules, mutes that persist and
expire, and helpful replies to mistakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.commands import CommandContext, answer, command_of
from monitor.match.query import structured
from monitor.models import FeedSpec, Rule
from monitor.store import SQLiteStore, Store

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
RULES = (
    Rule("russia-sanctions", structured(any_=["sanctions"])),
    Rule("talks", structured(any_=["talks"])),
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(tmp_path / "state.db") as opened:
        yield opened


def context(store: Store, clock: Clock) -> CommandContext:
    return CommandContext(store, RULES, clock, ZoneInfo("Europe/Berlin"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/status", ("status", [])),
        ("/mute@fake_test_bot talks 2h", ("mute", ["talks", "2h"])),
        ("/MUTE talks 2h", ("mute", ["talks", "2h"])),
        ("/status@other_bot", None),
        ("hello /status", None),
    ],
)
def test_command_of(text: str, expected: object) -> None:
    assert command_of(text, "fake_test_bot") == expected


async def test_mute_persists_expires_and_unmutes(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    reply = await answer("mute", ["talks", "2h"], context(store, clock))
    assert "Muted <code>talks</code> until 2026-11-28 12:00 CET" in reply
    assert await store.mutes(clock.now) == {"talks": T0 + timedelta(hours=2)}
    assert "muted until" in await answer("rules", [], context(store, clock))
    await store.close()
    async with SQLiteStore(tmp_path / "state.db") as reopened:  # survives a restart
        assert list(await reopened.mutes(clock.now)) == ["talks"]
        clock.now += timedelta(hours=2)
        assert await reopened.mutes(clock.now) == {}  # expired on its own
        await answer("mute", ["talks", "1h"], context(reopened, clock))
        assert await answer("unmute", ["talks"], context(reopened, clock)) == (
            "Unmuted <code>talks</code>."
        )
        assert "was not muted" in await answer("unmute", ["talks"], context(reopened, clock))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["talk", "2h"], "No rule named <code>talk</code>. Did you mean <code>talks</code>?"),
        (["talks"], "Usage: /mute RULE DURATION"),
        (["talks", "soon"], "invalid duration"),
        (["talks", "90d"], "at most 30d"),
    ],
)
async def test_mute_mistakes_get_a_helpful_reply(
    store: Store, args: list[str], expected: str
) -> None:
    assert expected in await answer("mute", args, context(store, Clock()))
    assert await store.mutes(T0) == {}


async def test_status_counts_feeds_alerts_and_queue(store: Store) -> None:
    feeds = [
        FeedSpec(name=n, url=f"https://news.example/{n}", interval=timedelta(minutes=5))
        for n in ("wire", "broken")
    ]
    await store.sync_feeds(feeds, T0)
    await store.record_failure(
        "broken", "HTTP 503 <Service Unavailable>", now=T0, next_poll_at=T0 + timedelta(minutes=5)
    )
    reply = await answer("status", [], context(store, Clock()))
    assert "Feeds: 1 OK, 1 failing" in reply
    assert "broken: HTTP 503 &lt;Service Unavailable&gt; (1×)" in reply
    assert "Alerts today: 0" in reply
    assert "Queue: 0 waiting" in reply


async def test_help_and_unknown_commands(store: Store) -> None:
    assert "/mute RULE 2h" in await answer("help", [], context(store, Clock()))
    reply = await answer("<b>", [], context(store, Clock()))
    assert reply.startswith("Unknown command /&lt;b&gt;.")
