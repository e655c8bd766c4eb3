"""Feed health rules (pure): when a feed is dead, how far a failure backs off, and which
notice the admin channel gets for each change of a feed's health."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.errors import FetchError, HTTPStatusError
from monitor.health import (
    NOTICE_RULE,
    Notice,
    assess,
    churn,
    extra_failures,
    is_dead,
    is_gone,
    notice_alert,
    span,
)
from monitor.models import AdminSettings, FeedSpec, FeedState, PollPolicy

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
URL = "https://news.example/feed.xml"
ADMIN = AdminSettings(
    "ops", failing_after=HOUR, silent_factor=10.0, silent_min=DAY
)  # the defaults, spelled out
POLICY = PollPolicy(dead_after=3 * DAY)
HEALTHY = FeedState("f", URL, seeded=True, last_success_at=NOW - MINUTE)


def failing(since: timedelta, *, notice: str = "", failures: int = 5) -> FeedState:
    """A feed failing for `since` up to NOW."""
    return replace(
        HEALTHY,
        failing_since=NOW - since,
        consecutive_failures=failures,
        last_error="HTTP 500",
        notice=notice,
    )


def quiet(cadence: timedelta | None, silent_for: timedelta, *, notice: str = "") -> FeedState:
    """A healthy feed whose last new item came `silent_for` before NOW."""
    return replace(HEALTHY, cadence=cadence, last_new_at=NOW - silent_for, notice=notice)


# --- is_dead, is_gone, extra_failures ----------------------------------------------------------


def test_410_gone_is_dead_at_the_first_failure() -> None:
    gone = HTTPStatusError(URL, 410)
    assert is_gone(gone)
    assert is_dead(HEALTHY, gone, NOW, POLICY)


@pytest.mark.parametrize(
    "exc",
    [HTTPStatusError(URL, 500), HTTPStatusError(URL, 404), FetchError(URL, "refused"), None],
)
def test_other_failures_are_not_dead_at_first(exc: Exception | None) -> None:
    assert not is_gone(exc)
    assert not is_dead(HEALTHY, exc, NOW, POLICY)


def test_dead_after_is_measured_from_the_first_failure_of_the_run() -> None:
    exc = HTTPStatusError(URL, 500)
    assert not is_dead(failing(3 * DAY - MINUTE), exc, NOW, POLICY)
    assert is_dead(failing(3 * DAY), exc, NOW, POLICY)
    assert is_dead(failing(10 * DAY), None, NOW, POLICY)
    # The count of failures does not matter, only how long the run lasts.
    assert not is_dead(failing(HOUR, failures=10_000), exc, NOW, POLICY)


def test_dead_after_is_configurable() -> None:
    short = PollPolicy(dead_after=2 * HOUR)
    assert not is_dead(failing(HOUR), None, NOW, short)
    assert is_dead(failing(2 * HOUR), None, NOW, short)


@pytest.mark.parametrize(("status", "extra"), [(401, 3), (403, 3), (404, 3)])
def test_lasting_statuses_count_as_several_failures(status: int, extra: int) -> None:
    assert extra_failures(HTTPStatusError(URL, status)) == extra


@pytest.mark.parametrize(
    "exc",
    [
        HTTPStatusError(URL, 500),
        HTTPStatusError(URL, 429, retry_after=60),
        HTTPStatusError(URL, 410),
        FetchError(URL, "connection refused"),
        None,
    ],
)
def test_other_failures_count_once(exc: Exception | None) -> None:
    assert extra_failures(exc) == 0


# --- failing -----------------------------------------------------------------------------------


def test_no_notice_while_a_run_of_failures_is_shorter_than_failing_after() -> None:
    assert assess(failing(MINUTE), NOW, ADMIN) is None
    assert assess(failing(HOUR - timedelta(seconds=1)), NOW, ADMIN) is None


def test_failing_notice_once_failing_after_has_passed() -> None:
    notice = assess(failing(HOUR, failures=7), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "failing"
    assert notice.title == "Feed f has been failing for 1 h"
    assert "7 failed polls in a row" in notice.summary
    assert "HTTP 500" in notice.summary


def test_failing_notice_is_not_repeated() -> None:
    assert assess(failing(2 * HOUR, notice="failing"), NOW, ADMIN) is None
    assert assess(failing(2 * DAY, notice="failing"), NOW, ADMIN) is None


@pytest.mark.parametrize("before", ["silent", "churn"])
def test_failing_notice_after_another_notice(before: str) -> None:
    notice = assess(failing(2 * HOUR, notice=before), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "failing"


def test_failing_after_is_configurable() -> None:
    eager = replace(ADMIN, failing_after=10 * MINUTE)
    notice = assess(failing(10 * MINUTE), NOW, eager)
    assert notice is not None
    assert notice.kind == "failing"


# --- dead --------------------------------------------------------------------------------------


def dead(notice: str = "", reason: str = "HTTP 410") -> FeedState:
    return replace(failing(MINUTE, notice=notice), dead_since=NOW, dead_reason=reason)


@pytest.mark.parametrize("before", ["", "failing", "silent", "churn"])
def test_dead_notice_once(before: str) -> None:
    notice = assess(dead(before), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "dead"
    assert notice.title == "Feed f is dead and no longer polled"
    assert notice.summary.startswith("HTTP 410.")
    assert "monitor feeds --retry f" in notice.summary
    assert assess(dead("dead"), NOW, ADMIN) is None
    assert assess(dead("dead"), NOW + 10 * DAY, ADMIN) is None


def test_dead_notice_falls_back_to_the_last_error() -> None:
    notice = assess(dead(reason=""), NOW, ADMIN)
    assert notice is not None
    assert notice.summary.startswith("HTTP 500.")


# --- recovered ---------------------------------------------------------------------------------


@pytest.mark.parametrize("before", ["failing", "dead"])
def test_recovered_after_failing_or_dead(before: str) -> None:
    notice = assess(replace(HEALTHY, notice=before), NOW, ADMIN)
    assert notice == Notice("", "Feed f works again", "Its last poll succeeded.")


@pytest.mark.parametrize("before", ["", "churn"])
def test_a_healthy_feed_gets_no_notice(before: str) -> None:
    assert assess(replace(HEALTHY, notice=before), NOW, ADMIN) is None


def test_a_revived_feed_failing_again_is_not_recovered_yet() -> None:
    # Revived (dead mark cleared) and failing again, but not for long: nothing yet, and the
    # "dead" notice stays until a success or a long enough run of failures.
    assert assess(failing(MINUTE, notice="dead"), NOW, ADMIN) is None
    notice = assess(failing(2 * HOUR, notice="dead"), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "failing"


# --- silent ------------------------------------------------------------------------------------


def test_silent_after_silent_factor_times_the_cadence() -> None:
    # cadence 6 h: 10 x 6 h = 60 h is longer than silent_min (1 d).
    assert assess(quiet(6 * HOUR, 60 * HOUR - MINUTE), NOW, ADMIN) is None
    notice = assess(quiet(6 * HOUR, 60 * HOUR), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "silent"
    assert notice.title == "Feed f has published nothing for 2 d 12 h"
    assert "every 6 h" in notice.summary


def test_silent_never_before_silent_min() -> None:
    # cadence 10 min: 10 x 10 min = 100 min, but silent_min is 1 d.
    assert assess(quiet(10 * MINUTE, 23 * HOUR), NOW, ADMIN) is None
    notice = assess(quiet(10 * MINUTE, DAY), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "silent"


def test_silent_factor_is_configurable() -> None:
    patient = replace(ADMIN, silent_factor=30.0)
    assert assess(quiet(6 * HOUR, 100 * HOUR), NOW, patient) is None
    assert assess(quiet(6 * HOUR, 180 * HOUR), NOW, patient) is not None


def test_no_silent_notice_without_a_known_cadence() -> None:
    assert assess(quiet(None, 365 * DAY), NOW, ADMIN) is None
    assert assess(replace(HEALTHY, cadence=HOUR, last_new_at=None), NOW, ADMIN) is None


def test_silent_notice_is_not_repeated() -> None:
    assert assess(quiet(HOUR, 2 * DAY, notice="silent"), NOW, ADMIN) is None
    assert assess(quiet(HOUR, 200 * DAY, notice="silent"), NOW, ADMIN) is None


def test_silent_after_a_churn_notice() -> None:
    notice = assess(quiet(HOUR, 2 * DAY, notice="churn"), NOW, ADMIN)
    assert notice is not None
    assert notice.kind == "silent"


def test_publishing_again_when_new_items_come() -> None:
    notice = assess(quiet(HOUR, MINUTE, notice="silent"), NOW, ADMIN)
    assert notice == Notice("", "Feed f is publishing again", "It had new items in its last poll.")


def test_recovery_comes_before_silence() -> None:
    # Failing, then a success after a long quiet spell: first "works again"...
    notice = assess(quiet(HOUR, 5 * DAY, notice="failing"), NOW, ADMIN)
    assert notice is not None
    assert (notice.kind, notice.title) == ("", "Feed f works again")
    # ...then, the notice recorded, "silent" at the next assessment.
    later = assess(quiet(HOUR, 5 * DAY, notice=""), NOW, ADMIN)
    assert later is not None
    assert later.kind == "silent"


# --- churn -------------------------------------------------------------------------------------


def test_churn_when_most_items_came_back_under_new_ids() -> None:
    notice = churn(HEALTHY, 3, 4)
    assert notice is not None
    assert notice.kind == "churn"
    assert notice.title == "Feed f changed the ids of its items"
    assert "3 of its 4 items" in notice.summary


def test_no_churn_for_fewer_than_two_alike() -> None:
    assert churn(HEALTHY, 0, 1) is None
    assert churn(HEALTHY, 1, 1) is None


def test_no_churn_when_at_most_half_came_back() -> None:
    assert churn(HEALTHY, 2, 4) is None
    assert churn(HEALTHY, 5, 10) is None
    assert churn(HEALTHY, 6, 10) is not None


def test_churn_notice_is_not_repeated() -> None:
    assert churn(replace(HEALTHY, notice="churn"), 10, 10) is None


# --- notice_alert ------------------------------------------------------------------------------


def test_notice_alert_goes_to_the_admin_channel_only() -> None:
    feed = FeedSpec(name="f", url=URL, interval=timedelta(minutes=5))
    notice = Notice("failing", "Feed f has been failing for 1 h", "details")
    alert = notice_alert(notice, feed, NOW, "ops")
    assert alert.channels == ("ops",)
    assert [m.rule for m in alert.matches] == [NOTICE_RULE]
    assert alert.feed == "f"
    assert alert.item_key.startswith("notice:failing:")
    assert (alert.title, alert.summary, alert.link) == (notice.title, "details", URL)
    assert alert.published == alert.seen_at == NOW


def test_notice_alert_keys_never_collide_with_items_or_each_other() -> None:
    feed = FeedSpec(name="f", url=URL, interval=timedelta(minutes=5))
    recovered = notice_alert(Notice("", "Feed f works again"), feed, NOW, "ops")
    assert recovered.item_key.startswith("notice:ok:")
    later = notice_alert(Notice("", "Feed f works again"), feed, NOW + MINUTE, "ops")
    assert later.item_key != recovered.item_key
    # Item keys are "id:", "link:" or "hash:" prefixed.
    assert not recovered.item_key.startswith(("id:", "link:", "hash:"))


# --- span --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0 s"),
        (timedelta(seconds=45), "45 s"),
        (timedelta(seconds=59.9), "59 s"),
        (timedelta(minutes=1), "1 min"),
        (timedelta(minutes=12, seconds=30), "12 min"),
        (timedelta(hours=1), "1 h"),
        (timedelta(hours=3, minutes=5), "3 h 5 min"),
        (timedelta(days=1), "1 d"),
        (timedelta(days=2, hours=4, minutes=59), "2 d 4 h"),
        (timedelta(days=400), "400 d"),
        (timedelta(seconds=-5), "0 s"),
    ],
)
def test_span(delta: timedelta, text: str) -> None:
    assert span(delta) == text
