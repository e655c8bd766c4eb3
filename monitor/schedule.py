"""When a feed is polled next: interval with jitter, backoff after failures (pure)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from monitor.models import FeedSpec, PollPolicy

#: Exponent cap so the backoff arithmetic stays small; the time cap applies first anyway.
_MAX_DOUBLINGS = 16


def _jittered(delay: timedelta, jitter: float, rng: random.Random) -> timedelta:
    return delay * rng.uniform(1 - jitter, 1 + jitter)


def next_poll_after_success(
    feed: FeedSpec, now: datetime, policy: PollPolicy, rng: random.Random
) -> datetime:
    """`now` + the feed's interval, ± the policy's jitter so polls of many feeds spread out."""
    return now + _jittered(feed.interval, policy.jitter, rng)


def next_poll_after_failure(
    feed: FeedSpec,
    now: datetime,
    failures: int,
    retry_after: float | None,
    policy: PollPolicy,
    rng: random.Random,
) -> datetime:
    """Back off exponentially from the interval: 1×, 2×, 4×… capped at `policy.backoff_cap`.

    A server's Retry-After hint is honoured when it asks for longer (still capped), never
    sooner: polling never stops for good on a transient error, and never hammers a server
    that asked us to wait.
    """
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    delay = min(feed.interval * 2**doublings, policy.backoff_cap)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(timedelta(seconds=retry_after), policy.backoff_cap))
    return now + _jittered(delay, policy.jitter, rng)
