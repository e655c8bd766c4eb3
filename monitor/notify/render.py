"""Plain-text rendering of alerts, shared by the text channels (pure)."""

from __future__ import annotations

import contextlib
from datetime import datetime
from zoneinfo import ZoneInfo

from monitor.models import Alert, Match

#: Longest summary excerpt shown under a headline.
SNIPPET_CHARS = 280


def local_time(moment: datetime | None, tz: ZoneInfo) -> str:
    """`2026-11-28 09:15 CET`, or "" when unknown."""
    if moment is None:
        return ""
    # Year 1 or 9999 has no local time in some zones: shown in UTC then.
    with contextlib.suppress(OverflowError, ValueError):
        moment = moment.astimezone(tz)
    return moment.strftime("%Y-%m-%d %H:%M %Z")


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters on a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def describe(matches: tuple[Match, ...]) -> str:
    """`russia-sanctions (sanctions, russia); talks (talks)`."""
    return "; ".join(f"{m.rule} ({', '.join(m.terms)})" if m.terms else m.rule for m in matches)


def text_alert(alert: Alert, channel: str, tz: ZoneInfo) -> str:
    """A few readable lines: headline, link, feed and time, rules and terms, snippet."""
    when = local_time(alert.published or alert.seen_at, tz)
    lines = [alert.title or "(untitled)"]
    if alert.link:
        lines.append(alert.link)
    lines.append(" · ".join(part for part in (alert.feed, when) if part))
    matches = alert.matches_for(channel)
    lines.append("matched: " + describe(matches))
    snippet = next((m.snippet for m in matches if m.snippet), "")
    if snippet and snippet != alert.title:
        lines.append(snippet)  # the text around the first hit says more than the summary's start
    elif alert.summary:
        lines.append(shorten(alert.summary, SNIPPET_CHARS))
    return "\n".join(lines)
