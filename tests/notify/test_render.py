"""Plain-text alert rendering."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from monitor.models import Alert, Match
from monitor.notify.render import describe, local_time, shorten, text_alert

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def alert(**kw: object) -> Alert:
    base: dict[str, object] = {
        "feed": "World",
        "item_key": "id:1",
        "title": "Talks stall in Geneva",
        "link": "https://example.org/a",
        "summary": "Envoys say the talks reached a dead end.",
        "published": NOW,
        "seen_at": NOW,
        "matches": (
            Match("talks", ("talks", '"dead end"'), ("title",), ("desk",)),
            Match("other", (), ("title",), ("mail",)),
        ),
    }
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_text_alert_shows_headline_link_feed_time_rules_and_snippet() -> None:
    text = text_alert(alert(), "desk", ZoneInfo("Europe/Berlin"))
    assert text.splitlines() == [
        "Talks stall in Geneva",
        "https://example.org/a",
        "World · 2026-11-28 10:00 CET",
        'matched: talks (talks, "dead end")',
        "Envoys say the talks reached a dead end.",
    ]


def test_text_alert_without_link_summary_or_title() -> None:
    text = text_alert(alert(title="", link="", summary="", published=None), "mail", ZoneInfo("UTC"))
    assert text.splitlines() == ["(untitled)", "World · 2026-11-28 09:00 UTC", "matched: other"]


def test_shorten_cuts_on_a_word_with_an_ellipsis() -> None:
    assert shorten("short", 10) == "short"
    assert shorten("one two three four five", 12) == "one two…"
    assert len(shorten("x" * 500, 100)) == 100


def test_helpers() -> None:
    assert local_time(None, ZoneInfo("UTC")) == ""
    assert describe((Match("a", ("x", "y"), (), ()),)) == "a (x, y)"


def test_the_snippet_around_the_first_hit_replaces_the_summary_start() -> None:
    matches = (Match("talks", ("geneva",), ("summary",), ("desk",), "…envoys met in Geneva…"),)
    text = text_alert(alert(matches=matches), "desk", ZoneInfo("UTC"))
    assert text.splitlines()[-1] == "…envoys met in Geneva…"
