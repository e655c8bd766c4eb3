"""When a feed is polled next: interval with jitter, adapted to the server's hints and the
feed's posting rate, backoff after failures (pure)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from monitor.models import FeedSpec, PollPolicy

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:[,=]|$)", re.IGNORECASE)

#: Exponent cap so the backoff arithmetic stays small; the time cap applies first anyway.
_MAX_DOUBLINGS = 16


def _jittered(delay: timedelta, jitter: float, rng: random.Random) -> timedelta:
    return delay * rng.uniform(1 - jitter, 1 + jitter)


def next_poll_after_success(
    feed: FeedSpec,
    now: datetime,
    policy: PollPolicy,
    rng: random.Random,
    *,
    hint: timedelta | None = None,
    cadence: timedelta | None = None,
) -> datetime:
    """`now` + the feed's interval, ± the policy's jitter so polls of many feeds spread out.

    An adaptive feed with a known `cadence` (its usual time between new items) is polled
    twice per cadence instead, within [interval_floor, interval_ceiling]. A server `hint`
    (see `poll_hint`) only ever lengthens the delay, up to `interval_ceiling`: polling sooner
    than the server's cache allows would fetch the same bytes.
    """
    delay = feed.interval
    if feed.adaptive and cadence is not None:
        delay = min(max(cadence / 2, feed.interval_floor), feed.interval_ceiling)
    if hint is not None:
        delay = max(delay, min(hint, feed.interval_ceiling))
    return now + _jittered(delay, policy.jitter, rng)


def poll_hint(headers: Mapping[str, str], ttl: int | None, now: datetime) -> timedelta | None:
    """How long the server says the document stays fresh: `Cache-Control: max-age`, else
    `Expires` (against the response's `Date`, or `now`), and the RSS `<ttl>` (minutes); the
    longest of them. None when there is no usable hint (or `no-cache`/`no-store`)."""
    hints: list[timedelta] = []
    control = headers.get("cache-control", "")
    if not _NO_CACHE.search(control):
        found = _MAX_AGE.search(control)
        if found:
            hints.append(timedelta(seconds=int(found.group(1))))
        elif "expires" in headers:
            expires = _http_date(headers["expires"])
            date = _http_date(headers.get("date", "")) or now
            if expires is not None and expires > date:
                hints.append(expires - date)
    if ttl is not None and ttl > 0:
        hints.append(timedelta(minutes=ttl))
    return max(hints) if hints else None


def _http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
        # Capped in seconds first: a Retry-After of 10**16 s does not fit a timedelta.
        capped = min(retry_after, policy.backoff_cap.total_seconds())
        delay = max(delay, timedelta(seconds=capped))
    return now + _jittered(delay, policy.jitter, rng)
