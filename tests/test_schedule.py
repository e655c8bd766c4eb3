"""Next poll times: jitter bounds, backoff growth and cap, Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from monitor.models import FeedSpec, PollPolicy
from monitor.schedule import next_poll_after_failure, next_poll_after_success

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
