"""Next poll times: jitter bounds, backoff growth and cap, Retry-After."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.models import FeedSpec, PollPolicy
from monitor.schedule import next_poll_after_failure, next_poll_after_success, poll_hint

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
FEED = FeedSpec(name="f", url="https://example.org/", interval=timedelta(minutes=5))
POLICY = PollPolicy(jitter=0.1, backoff_cap=timedelta(hours=6))


def test_success_is_interval_within_jitter() -> None:
    rng = random.Random(1)
    for _ in range(100):
        delay = next_poll_after_success(FEED, NOW, POLICY, rng) - NOW
        assert timedelta(minutes=4.5) <= delay <= timedelta(minutes=5.5)


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [next_poll_after_failure(FEED, NOW, n, None, POLICY, rng) - NOW for n in (1, 2, 3)]
    assert timedelta(minutes=4.5) <= delays[0] <= timedelta(minutes=5.5)
    assert timedelta(minutes=9) <= delays[1] <= timedelta(minutes=11)
    assert timedelta(minutes=18) <= delays[2] <= timedelta(minutes=22)
    capped = next_poll_after_failure(FEED, NOW, 50, None, POLICY, rng) - NOW
    assert capped <= timedelta(hours=6.6)


def test_retry_after_is_honoured_but_capped() -> None:
    rng = random.Random(1)
    hinted = next_poll_after_failure(FEED, NOW, 1, 3600, POLICY, rng) - NOW
    assert hinted >= timedelta(minutes=54)
    huge = next_poll_after_failure(FEED, NOW, 1, 10**9, POLICY, rng) - NOW
    assert huge <= timedelta(hours=6.6)


# --- server hints ------------------------------------------------------------------------------

HTTP_NOW = "Sat, 28 Nov 2026 09:00:00 GMT"


def test_poll_hint_none_without_hints() -> None:
    assert poll_hint({}, None, NOW) is None
    assert poll_hint({"cache-control": "public"}, None, NOW) is None
    assert poll_hint({"content-type": "application/rss+xml"}, 0, NOW) is None


@pytest.mark.parametrize(
    "control",
    [
        "max-age=600",
        "public, max-age=600",
        "max-age=600, must-revalidate",
        'max-age="600"',
        "  MAX-AGE = 600 ",
        "s-maxage=60, max-age=600",
    ],
)
def test_poll_hint_max_age(control: str) -> None:
    assert poll_hint({"cache-control": control}, None, NOW) == timedelta(minutes=10)


@pytest.mark.parametrize(
    "control", ["s-maxage=600", "max-age=ten", "max-age=-5", "x-max-age=600", "max-age=600x"]
)
def test_poll_hint_ignores_what_is_not_max_age(control: str) -> None:
    assert poll_hint({"cache-control": control}, None, NOW) is None


@pytest.mark.parametrize(
    "control",
    [
        "no-cache, max-age=600",
        "max-age=600, no-store",
        "private, no-cache",
        'no-cache="set-cookie"',
    ],
)
def test_poll_hint_no_cache_or_no_store_cancels_the_http_hints(control: str) -> None:
    headers = {"cache-control": control, "expires": "Sat, 28 Nov 2026 10:00:00 GMT"}
    assert poll_hint(headers, None, NOW) is None
    # The feed's own ttl still counts.
    assert poll_hint(headers, 30, NOW) == timedelta(minutes=30)


def test_poll_hint_expires_against_the_response_date() -> None:
    headers = {"expires": "Sat, 28 Nov 2026 08:30:00 GMT", "date": "Sat, 28 Nov 2026 08:00:00 GMT"}
    # The server's clock is an hour behind ours: its Date, not our clock, is the reference.
    assert poll_hint(headers, None, NOW) == timedelta(minutes=30)


def test_poll_hint_expires_against_now_without_a_date() -> None:
    headers = {"expires": "Sat, 28 Nov 2026 09:20:00 GMT"}
    assert poll_hint(headers, None, NOW) == timedelta(minutes=20)
    headers = {"expires": "Sat, 28 Nov 2026 09:20:00 GMT", "date": "garbage"}
    assert poll_hint(headers, None, NOW) == timedelta(minutes=20)


def test_poll_hint_max_age_wins_over_expires() -> None:
    headers = {"cache-control": "max-age=60", "expires": "Sat, 28 Nov 2026 12:00:00 GMT"}
    assert poll_hint(headers, None, NOW) == timedelta(minutes=1)


@pytest.mark.parametrize(
    "expires",
    [
        "0",
        "-1",
        "",
        "yesterday",
        "Sat, 28 Nov 2026 08:00:00 GMT",  # in the past
        HTTP_NOW,  # already stale
        "Sat, 99 Nov 2026 09:00:00 GMT",
        "Fri, 31 Dec 99999 23:59:59 GMT",
    ],
)
def test_poll_hint_ignores_unusable_expires(expires: str) -> None:
    assert poll_hint({"expires": expires, "date": HTTP_NOW}, None, NOW) is None


def test_poll_hint_expires_without_timezone_is_utc() -> None:
    headers = {"expires": "Sat, 28 Nov 2026 09:10:00 -0000", "date": HTTP_NOW}
    assert poll_hint(headers, None, NOW) == timedelta(minutes=10)


def test_poll_hint_rss_ttl_in_minutes() -> None:
    assert poll_hint({}, 45, NOW) == timedelta(minutes=45)
    assert poll_hint({}, 0, NOW) is None
    assert poll_hint({}, 9_999_999, NOW) == timedelta(minutes=9_999_999)


def test_poll_hint_longest_wins() -> None:
    assert poll_hint({"cache-control": "max-age=600"}, 60, NOW) == timedelta(hours=1)
    assert poll_hint({"cache-control": "max-age=7200"}, 60, NOW) == timedelta(hours=2)
    expires = {"expires": "Sat, 28 Nov 2026 11:00:00 GMT", "date": HTTP_NOW}
    assert poll_hint(expires, 60, NOW) == timedelta(hours=2)


def test_poll_hint_survives_absurd_values() -> None:
    assert poll_hint({"cache-control": "max-age=9999999999"}, None, NOW) == timedelta(
        seconds=9_999_999_999
    )
    far = {"expires": "Fri, 31 Dec 9999 23:59:59 GMT", "date": "Thu, 01 Jan 1970 00:00:00 GMT"}
    hint = poll_hint(far, None, NOW)
    assert hint is not None
    assert hint > timedelta(days=365 * 8000)


# --- next poll after a success: hints and cadence ----------------------------------------------

NO_JITTER = PollPolicy(jitter=0.0)
BOUNDED = FeedSpec(
    name="b",
    url="https://example.org/",
    interval=timedelta(minutes=10),
    min_interval=timedelta(minutes=2),
    max_interval=timedelta(hours=1),
)
ADAPTIVE = replace(BOUNDED, adaptive=True)


def delay_after_success(
    feed: FeedSpec, *, hint: timedelta | None = None, cadence: timedelta | None = None
) -> timedelta:
    rng = random.Random(1)
    return next_poll_after_success(feed, NOW, NO_JITTER, rng, hint=hint, cadence=cadence) - NOW


def test_a_hint_only_lengthens_the_interval() -> None:
    assert delay_after_success(BOUNDED, hint=timedelta(minutes=1)) == timedelta(minutes=10)
    assert delay_after_success(BOUNDED, hint=timedelta(0)) == timedelta(minutes=10)
    assert delay_after_success(BOUNDED, hint=timedelta(minutes=25)) == timedelta(minutes=25)


def test_a_hint_is_capped_at_the_interval_ceiling() -> None:
    assert delay_after_success(BOUNDED, hint=timedelta(days=30)) == timedelta(hours=1)
    # Without max_interval the ceiling is 4 x interval.
    assert delay_after_success(FEED, hint=timedelta(days=30)) == timedelta(minutes=20)


def test_a_hint_is_jittered_like_the_interval() -> None:
    rng = random.Random(1)
    for _ in range(100):
        delay = next_poll_after_success(BOUNDED, NOW, POLICY, rng, hint=timedelta(minutes=30))
        assert timedelta(minutes=27) <= delay - NOW <= timedelta(minutes=33)


def test_a_busy_adaptive_feed_is_polled_at_the_floor() -> None:
    assert delay_after_success(ADAPTIVE, cadence=timedelta(minutes=1)) == timedelta(minutes=2)
    assert delay_after_success(ADAPTIVE, cadence=timedelta(minutes=8)) == timedelta(minutes=4)


def test_a_quiet_adaptive_feed_is_polled_at_the_ceiling() -> None:
    assert delay_after_success(ADAPTIVE, cadence=timedelta(days=1)) == timedelta(hours=1)
    assert delay_after_success(ADAPTIVE, cadence=timedelta(minutes=50)) == timedelta(minutes=25)


def test_an_adaptive_feed_without_cadence_keeps_its_interval() -> None:
    assert delay_after_success(ADAPTIVE) == timedelta(minutes=10)


def test_a_non_adaptive_feed_ignores_its_cadence() -> None:
    assert delay_after_success(BOUNDED, cadence=timedelta(minutes=1)) == timedelta(minutes=10)
    assert delay_after_success(BOUNDED, cadence=timedelta(days=1)) == timedelta(minutes=10)


def test_an_adaptive_feed_is_never_polled_faster_than_its_interval_without_min_interval() -> None:
    plain = replace(FEED, adaptive=True)
    assert delay_after_success(plain, cadence=timedelta(seconds=10)) == FEED.interval


def test_a_hint_beats_a_busy_cadence() -> None:
    delay = delay_after_success(ADAPTIVE, cadence=timedelta(minutes=1), hint=timedelta(minutes=30))
    assert delay == timedelta(minutes=30)


# --- backoff extremes --------------------------------------------------------------------------


def test_a_huge_retry_after_is_capped_not_an_error() -> None:
    rng = random.Random(1)
    for retry_after in (1e15, 1e20, 1e300):
        delay = next_poll_after_failure(FEED, NOW, 1, retry_after, POLICY, rng) - NOW
        assert timedelta(hours=5.4) <= delay <= timedelta(hours=6.6)


def test_a_long_interval_still_backs_off_within_the_cap() -> None:
    daily = replace(FEED, interval=timedelta(days=1))
    rng = random.Random(1)
    delay = next_poll_after_failure(daily, NOW, 1, None, POLICY, rng) - NOW
    assert delay <= timedelta(hours=6.6)
