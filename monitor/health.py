"""Feed health: when a feed is dead, and which notices the admin channel gets (pure).

A notice is sent once per change of a feed's health, which the store remembers
(`FeedState.notice`): "failing" once a run of failures lasts `admin.failing_after`, "dead"
when the feed is declared dead, "" (recovered) at the first success after either, "silent"
when a feed that usually publishes has not for much longer than usual, "" again when it
publishes, and "churn" when it rewrote the ids of its items. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.errors import HTTPStatusError
from monitor.models import AdminSettings, Alert, FeedSpec, FeedState, Match, PollPolicy

#: The rule name notices carry, shown where an alert shows the rules it matched.
NOTICE_RULE = "feed health"

#: Statuses that say "this URL is wrong or closed to us": backed off as if several failures
#: had happened already, so a broken subscription costs the server little.
_LASTING = {401: 3, 403: 3, 404: 3}


@dataclass(frozen=True, slots=True)
class Notice:
    """A change of a feed's health: `kind` becomes `FeedState.notice`; a notice with a
    `title` is also sent to the admin channel, one without only updates the state."""

    kind: str
    title: str = ""
    summary: str = ""


def is_gone(exc: Exception | None) -> bool:
    """410 Gone: the publisher says the feed will not come back."""
    return isinstance(exc, HTTPStatusError) and exc.status == 410


def extra_failures(exc: Exception | None) -> int:
    """How many failures further along the backoff a failure counts."""
    return _LASTING.get(exc.status, 0) if isinstance(exc, HTTPStatusError) else 0


def is_dead(state: FeedState, exc: Exception | None, now: datetime, policy: PollPolicy) -> bool:
    """Whether this failure makes the feed dead: 410 Gone, or failing since `dead_after` ago
    (the current failure included)."""
    return is_gone(exc) or now - (state.failing_since or now) >= policy.dead_after


def assess(state: FeedState, now: datetime, admin: AdminSettings) -> Notice | None:
    """The notice the feed's state (just recorded) calls for, or None."""
    name, was = state.name, state.notice
    if state.dead_since is not None:
        if was == "dead":
            return None
        return Notice(
            "dead",
            f"Feed {name} is dead and no longer polled",
            f"{state.dead_reason or state.last_error}. It is polled again after "
            f"`monitor feeds --retry {name}` or when its URL changes in the config.",
        )
    if state.failing_since is not None:
        failing_for = now - state.failing_since
        if was in ("failing",) or failing_for < admin.failing_after:
            return None
        return Notice(
            "failing",
            f"Feed {name} has been failing for {span(failing_for)}",
            f"{state.consecutive_failures} failed polls in a row; last error: "
            f"{state.last_error}. It is retried with growing pauses.",
        )
    if was in ("failing", "dead"):
        return Notice("", f"Feed {name} works again", "Its last poll succeeded.")
    quiet = _quiet_for(state, now, admin)
    if quiet is not None and was in ("", "churn"):
        usual = span(state.cadence) if state.cadence else "?"
        return Notice(
            "silent",
            f"Feed {name} has published nothing for {span(quiet)}",
            f"It usually has something new every {usual}. Polls succeed, so the publisher "
            "may have moved the feed or stopped updating it.",
        )
    if quiet is None and was == "silent":
        return Notice("", f"Feed {name} is publishing again", "It had new items in its last poll.")
    return None


def _quiet_for(state: FeedState, now: datetime, admin: AdminSettings) -> timedelta | None:
    """How long the feed has been quiet, when that is much longer than usual."""
    if state.cadence is None or state.last_new_at is None:
        return None
    quiet = now - state.last_new_at
    limit = max(state.cadence * admin.silent_factor, admin.silent_min)
    return quiet if quiet >= limit else None


def churning(alike: int, listed: int) -> bool:
    """Whether a document whose `alike` items (of `listed`) are stored stories under new ids
    shows a feed rewriting its ids: at least two, and most of the document."""
    return alike >= 2 and alike * 2 > listed


def churn(state: FeedState, alike: int, listed: int) -> Notice | None:
    """A notice when most of a document came back under new ids (same link and title)."""
    if state.notice == "churn" or not churning(alike, listed):
        return None
    return Notice(
        "churn",
        f"Feed {state.name} changed the ids of its items",
        f"{alike} of its {listed} items came back under new ids with the same link and "
        "title; they were recognised and not alerted again.",
    )


def notice_alert(notice: Notice, feed: FeedSpec, now: datetime, channel: str) -> Alert:
    """The notice as an alert for the admin channel (its item key is never an item's)."""
    return Alert(
        feed=feed.name,
        item_key=f"notice:{notice.kind or 'ok'}:{now.isoformat()}",
        title=notice.title,
        link=feed.url,
        summary=notice.summary,
        published=now,
        seen_at=now,
        matches=(Match(NOTICE_RULE, (), (), (channel,)),),
    )


def span(delta: timedelta) -> str:
    """A duration for people: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"
