"""Prometheus metrics of one `monitor run` process, and the store's health as the daemon saw it.

One `Metrics` per process (it outlives config reloads), with its own `CollectorRegistry`, never
the library's global one: two daemons in one process (tests) never mix their figures. Stages
report what happened through its methods (`polled`, `matched`, `queued`, `attempted`,
`delivered`...); the HTTP endpoint refreshes the gauges that come from the store (`outbox`,
`feeds`) right before each scrape and renders the registry with `render()`.

Label sets are bounded: feed, rule and channel names come from the config (channels also from
deliveries still stored for a channel no longer configured), every other label is one of the
fixed enums below. A config with more than `FEED_LABEL_CAP` feeds reports the feeds past the
cap (in config order) under one `feed="_other"` label.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    Summary,
    disable_created_metrics,
    generate_latest,
)

from monitor import __version__
from monitor.logs import redact, register_secret
from monitor.models import Alert, Config, FeedState
from monitor.store.protocol import OutboxStat

#: `outcome` of `monitor_polls_total`.
POLL_OUTCOMES = (
    "ok",
    "not_modified",
    "http_error",
    "fetch_error",
    "parse_error",
    "store_error",
    "internal_error",
)
#: `class` of `monitor_http_responses_total`: the final status of a fetch (after redirects).
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: `result` of `monitor_delivery_attempts_total`: what one send (one message) came to.
ATTEMPT_RESULTS = ("sent", "retry", "throttled", "failed", "held")
#: `outcome` of `monitor_alerts_total`.
ALERT_OUTCOMES = ("queued", "sent", "failed")
#: `health` of `monitor_feeds`.
FEED_HEALTH = ("ok", "failing", "dead", "new")

#: Feeds past this many (in config order) share the label `feed="_other"`: at about a dozen
#: series per feed, 10,000 feeds are some 120,000 series, which Prometheus takes in its stride.
FEED_LABEL_CAP = 10_000
OTHER = "_other"

#: Seconds: from a fast local fetch to the whole-fetch deadline.
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
#: Seconds: from "on the phone within seconds" to "six hours late" (minutes-scale news).
LATENCY_BUCKETS = (
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    10800.0,
    21600.0,
)


_SECRET_PARAM = re.compile(
    r"key|token|secret|pass|auth|sig|session|credential|private", re.IGNORECASE
)


def safe_url(url: str) -> str:
    """`url` without credentials: no userinfo, and the values of query parameters whose names
    look secret (`api_key`, `token`, `sig`...) replaced; no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "<redacted>" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="<>"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def public_name(name: str) -> str:
    """A feed's name fit to show: a feed configured without one is named by its URL, which
    may carry credentials (see `safe_url`); configured secrets are replaced too."""
    return redact(safe_url(name) if "://" in name else name)


def status_class(status: int) -> str | None:
    """ "2xx" for 200..299 and so on; None for a status outside 100..599."""
    return f"{status // 100}xx" if 100 <= status <= 599 else None


def feed_health(state: FeedState) -> str:
    """One of FEED_HEALTH: dead, failing (since its last success), new (never succeeded), ok."""
    if state.dead_since is not None:
        return "dead"
    if state.failing_since is not None or state.consecutive_failures:
        return "failing"
    if state.last_success_at is None:
        return "new"
    return "ok"


def alert_age(alert: Alert, at: datetime) -> float:
    """Seconds from the item's publication to `at`; from when it was first seen when the feed
    gave no date, or a date after that (a clock ahead, a feed dating items in the future)."""
    published = alert.published
    start = published if published is not None and published <= alert.seen_at else alert.seen_at
    return max((at - start).total_seconds(), 0.0)


class Metrics:
    """Every metric of the process, on a registry of its own; see the module docstring."""

    def __init__(self, *, process: bool = True) -> None:
        # No `_created` series beside every counter, histogram and summary: they would double
        # the series per feed and say nothing `monitor_start_time_seconds` does not. (A switch
        # of the client library for the whole process; nothing else here exports metrics.)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = r = CollectorRegistry()
        if process:  # CPU, memory, open files, Python version, as every exporter has them
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        #: Unix time the process started measuring (the daemon's start).
        self.started = time.time()
        #: The store's last failure the daemon met (a write refused: disk full, read-only,
        #: corrupt), until a later write succeeds; "" when none.
        self.store_problem = ""
        self._capped: frozenset[str] = frozenset()
        self._labels: dict[str, str] = {}

        Gauge(
            "monitor_build_info", "Always 1; the version in a label.", ["version"], registry=r
        ).labels(__version__).set(1)
        Gauge("monitor_start_time_seconds", "When the process started, Unix time.", registry=r).set(
            self.started
        )
        self.polls = Counter(
            "monitor_polls", "Feed polls by feed and outcome.", ["feed", "outcome"], registry=r
        )
        self.poll_seconds = Histogram(
            "monitor_poll_duration_seconds",
            "Time one poll took (fetch, parse, match, record), by outcome.",
            ["outcome"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.feed_poll_seconds = Summary(
            "monitor_feed_poll_duration_seconds",
            "Time polls of a feed took: _sum / _count is its average.",
            ["feed"],
            registry=r,
        )
        self.http = Counter(
            "monitor_http_responses",
            "Final HTTP status of feed fetches, by feed and status class.",
            ["feed", "class"],
            registry=r,
        )
        self.items = Counter(
            "monitor_items_new", "Items seen for the first time, by feed.", ["feed"], registry=r
        )
        self.matches = Counter(
            "monitor_rule_matches",
            "New items a rule matched (muted or not; on a first fetch only backfilled ones).",
            ["rule"],
            registry=r,
        )
        self.alerts = Counter(
            "monitor_alerts",
            "Alert deliveries (one per alert, channel and destination) by channel and outcome: "
            "queued in the outbox, sent, failed for good.",
            ["channel", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "monitor_delivery_attempts",
            "Sends tried (one message; a grouped one or a digest counts once), by channel and "
            "result.",
            ["channel", "result"],
            registry=r,
        )
        self.retries = Counter(
            "monitor_delivery_retries",
            "Deliveries put back to be sent again later (a temporary failure or a 'retry after' "
            "answer), by channel.",
            ["channel"],
            registry=r,
        )
        self.latency = Histogram(
            "monitor_alert_latency_seconds",
            "From an item's publication (or first sight, when undated) to its alert being "
            "delivered, by channel.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "monitor_outbox_pending",
            "Deliveries waiting in the outbox, by channel (read at scrape time).",
            ["channel"],
            registry=r,
        )
        self.oldest = Gauge(
            "monitor_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending delivery, by channel; 0 when none (read at scrape time).",
            ["channel"],
            registry=r,
        )
        self.feeds = Gauge(
            "monitor_feeds",
            "Configured feeds by health: ok, failing, dead, new (read at scrape time).",
            ["health"],
            registry=r,
        )
        self.store_errors = Counter(
            "monitor_store_errors",
            "State store failures met by polls, sends, claims and health checks.",
            registry=r,
        )
        self.reloads = Counter(
            "monitor_config_reloads",
            "Config reloads by result: applied, refused.",
            ["result"],
            registry=r,
        )
        self.ready = Gauge(
            "monitor_ready", "1 when /readyz answers 200 (checked at scrape time).", registry=r
        )
        for result in ("applied", "refused"):
            self.reloads.labels(result)

    # --- configuration -------------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Take the config a daemon starts running: series of feeds, rules and channels no
        longer configured are dropped, and those of rules and channels start at 0 (so a rate
        over them is defined before their first event)."""
        for secret in config.secrets:  # as `monitor run` does: no label may show one
            register_secret(secret)
        names = [f.name for f in config.feeds]
        self._capped = frozenset(names[FEED_LABEL_CAP:])
        self._labels = {}
        feeds = {self.feed_label(n) for n in names}
        rules = {r.name for r in config.rules}
        channels = {c.name for c in config.channels}
        _keep(self.polls, ("feed", "outcome"), feeds)
        _keep(self.feed_poll_seconds, ("feed",), feeds)
        _keep(self.http, ("feed", "class"), feeds)
        _keep(self.items, ("feed",), feeds)
        _keep(self.matches, ("rule",), rules)
        _keep(self.alerts, ("channel", "outcome"), channels)
        _keep(self.attempts, ("channel", "result"), channels)
        _keep(self.retries, ("channel",), channels)
        _keep(self.latency, ("channel",), channels)
        for rule in rules:
            self.matches.labels(rule)
        for channel in channels:
            for outcome in ALERT_OUTCOMES:
                self.alerts.labels(channel, outcome)
            self.retries.labels(channel)
            self.latency.labels(channel)

    def feed_label(self, feed: str) -> str:
        """The `feed` label of a feed: its name (without credentials, see `public_name`), or
        OTHER past the cap."""
        label = self._labels.get(feed)
        if label is None:
            label = self._labels[feed] = OTHER if feed in self._capped else public_name(feed)
        return label

    # --- polls ---------------------------------------------------------------------------------

    def polled(
        self, feed: str, outcome: str, seconds: float, *, status: int | None, new_items: int
    ) -> None:
        """One poll of `feed` ended with `outcome` (one of POLL_OUTCOMES) after `seconds`;
        `status` is the final HTTP status when the server answered."""
        label = self.feed_label(feed)
        self.polls.labels(label, outcome).inc()
        coarse = outcome if outcome in ("ok", "not_modified") else "error"
        self.poll_seconds.labels(coarse).observe(seconds)
        self.feed_poll_seconds.labels(label).observe(seconds)
        klass = None if status is None else status_class(status)
        if klass is not None:
            self.http.labels(label, klass).inc()
        if new_items:
            self.items.labels(label).inc(new_items)

    def matched(self, rules: Iterable[str]) -> None:
        """One new item matched by each rule in `rules` (a rule once per item)."""
        for rule in rules:
            self.matches.labels(rule).inc()

    # --- deliveries ----------------------------------------------------------------------------

    def queued(self, channel: str, deliveries: int) -> None:
        if deliveries:
            self.alerts.labels(channel, "queued").inc(deliveries)

    def attempted(self, channel: str, result: str) -> None:
        """One send (one message) to `channel` came to `result` (one of ATTEMPT_RESULTS)."""
        self.attempts.labels(channel, result).inc()

    def delivered(self, channel: str, alerts: Sequence[Alert], at: datetime) -> None:
        """`alerts` were marked sent at `at`."""
        if not alerts:
            return
        self.alerts.labels(channel, "sent").inc(len(alerts))
        histogram = self.latency.labels(channel)
        for alert in alerts:
            histogram.observe(alert_age(alert, at))

    def failed(self, channel: str, deliveries: int = 1) -> None:
        if deliveries:
            self.alerts.labels(channel, "failed").inc(deliveries)

    def retried(self, channel: str, deliveries: int = 1) -> None:
        if deliveries:
            self.retries.labels(channel).inc(deliveries)

    # --- the store -----------------------------------------------------------------------------

    def store_failed(self, reason: str) -> bool:
        """The store refused or failed an operation; True when that is news (no failure was
        standing, or another one), so the caller can say it loudly once."""
        self.store_errors.inc()
        news = reason != self.store_problem
        self.store_problem = reason
        return news

    def store_ok(self) -> None:
        """A write went through: any standing store failure is over."""
        self.store_problem = ""

    # --- scrape-time gauges --------------------------------------------------------------------

    def outbox(self, stats: Sequence[OutboxStat], now: datetime, channels: Iterable[str]) -> None:
        """Set the outbox gauges from `stats`; `channels` (the configured ones) show 0 when
        they have nothing stored. Channels neither configured nor stored are dropped."""
        by_channel = {s.channel: s for s in stats}
        self.pending.clear()
        self.oldest.clear()
        for channel in sorted(set(channels) | set(by_channel)):
            stat = by_channel.get(channel)
            first = None if stat is None else stat.oldest_pending
            self.pending.labels(channel).set(0 if stat is None else stat.pending)
            age = 0.0 if first is None else max((now - first).total_seconds(), 0.0)
            self.oldest.labels(channel).set(age)

    def feed_health(self, states: Iterable[FeedState]) -> None:
        counts = dict.fromkeys(FEED_HEALTH, 0)
        for state in states:
            counts[feed_health(state)] += 1
        for health, count in counts.items():
            self.feeds.labels(health).set(count)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


def _keep(metric: Counter | Histogram | Summary, labels: Sequence[str], keep: set[str]) -> None:
    """Drop the series of `metric` (labelled `labels`, in order) whose first label's value is
    not in `keep`."""
    found = {
        tuple(sample.labels[name] for name in labels)
        for family in metric.collect()
        for sample in family.samples
    }
    for values in found:
        if values[0] not in keep:
            metric.remove(*values)
