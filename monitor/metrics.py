"""Prometheus metrics of one `monitor run` process, and the store's health as the daemon saw it.

One `Metrics` per process (it outlives config reloads), with its own `CollectorRegistry`, never
the library's global one: two daemons in one process (tests) never mix their figures. Stages
report what happened through its methods (`polled`, `matched`, `queued`, `attempted`,
`delivered`...); the HTTP endpoint refreshes the gauges that come from the store
(`set_outbox`, `set_due`, `set_channels`, `set_feed_health`) right before each scrape and
renders the registry with `render()`.

Label sets are bounded: feed, rule and channel names come from the config (channels also from
deliveries still stored for a channel no longer configured), every other label is one of the
fixed enums below. A config with more than `FEED_LABEL_CAP` feeds reports the feeds past the
cap (in config order) under one `feed="_other"` label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from monitor import __version__
from monitor.models import Alert, Config, FeedState
from monitor.redact import redact, register_secret, safe_url
from monitor.store.protocol import OutboxStat

#: `outcome` of `monitor_polls_total` and `monitor_poll_duration_seconds`.
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
#: `outcome` of `monitor_delivery_attempts_total`: what one send (one message) came to.
ATTEMPT_OUTCOMES = ("sent", "retry", "throttled", "failed", "held")
#: `outcome` of `monitor_deliveries_total`.
DELIVERY_OUTCOMES = ("queued", "sent", "failed")
#: `outcome` of `monitor_config_reloads_total`.
RELOAD_OUTCOMES = ("applied", "refused")
#: `health` of `monitor_feeds`.
FEED_HEALTH = ("ok", "failing", "dead", "new")
#: What the daemon does with the store, each failing and recovering on its own (`store_failed`).
STORE_OPERATIONS = ("claim", "poll", "dispatch", "digest", "prune")

#: Feeds past this many (in config order) share the label `feed="_other"`: at about a dozen
#: series per feed, 10,000 feeds are some 120,000 series, which Prometheus takes in its stride.
FEED_LABEL_CAP = 10_000
OTHER = "_other"
#: Seconds between log lines about the same standing store failure of one operation.
REPEAT_LOG = 60.0
#: Items of first fetches (backfilled alerts) remembered so their delivery stays out of the
#: publication-latency histogram; the oldest are forgotten past this many.
BACKFILL_MEMORY = 20_000

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
#: Seconds: from first sight to sent, the daemon's own share (a poll, the outbox, the send).
DELIVERY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


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


def date_only(when: datetime) -> bool:
    """True for a time exactly at midnight: what a feed giving only a date (`2026-11-28`)
    parses to, which says nothing about the hour of publication."""
    return (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0)


def alert_age(alert: Alert, at: datetime) -> float:
    """Seconds from the item's publication to `at`; from when it was first seen when the feed
    gave no date, only a date (midnight exactly, see `date_only`), or a date after that (a
    clock ahead, a feed dating items in the future)."""
    published = alert.published
    dated = published is not None and published <= alert.seen_at and not date_only(published)
    start = published if dated and published is not None else alert.seen_at
    return max((at - start).total_seconds(), 0.0)


class Metrics:
    """Every metric of the process, on a registry of its own; see the module docstring."""

    def __init__(self, *, process: bool = True) -> None:
        # No `_created` series beside every counter and histogram: they would double the
        # series per feed and say nothing `monitor_start_time_seconds` does not. (A switch of
        # the client library for the whole process; nothing else here exports metrics.)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = r = CollectorRegistry()
        if process:  # CPU, memory, open files, Python version, as every exporter has them
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        #: Unix time the process started measuring (the daemon's start).
        self.started = time.time()
        #: The clock of store failures (`store_failures`): `time.monotonic`.
        self.clock: Callable[[], float] = time.monotonic
        #: Standing store failures by operation (one of STORE_OPERATIONS): (the store's
        #: message, `time.monotonic()` when the operation started failing).
        self._store_failures: dict[str, tuple[str, float]] = {}
        self._store_logged: dict[str, float] = {}
        self._backfilled: dict[tuple[str, str], None] = {}
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
        self.feed_poll_seconds = Counter(
            "monitor_feed_poll_seconds",
            "Time spent polling a feed; divided by its monitor_polls_total, its average poll time.",
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
        self.deliveries = Counter(
            "monitor_deliveries",
            "Deliveries (one per alert, channel and destination) by channel and outcome: "
            "queued in the outbox, sent, failed for good.",
            ["channel", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "monitor_delivery_attempts",
            "Sends tried (one message; a grouped one or a digest counts once), by channel and "
            "outcome.",
            ["channel", "outcome"],
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
            "From an item's publication (first sight when undated or dated by day only) to its "
            "alert being delivered, by channel; backfilled items of a first fetch left out.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "monitor_alert_delivery_seconds",
            "From an item's first sight to its alert being delivered, by channel.",
            ["channel"],
            buckets=DELIVERY_BUCKETS,
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
        self.oldest_due = Gauge(
            "monitor_outbox_oldest_due_age_seconds",
            "Age of the oldest delivery due to be sent now (not waiting for a digest, a retry, "
            "a paused channel or destination), by instantly sending channel; 0 when none.",
            ["channel"],
            registry=r,
        )
        self.paused = Gauge(
            "monitor_channel_paused",
            "1 while a channel is paused until its config changes (its deliveries wait).",
            ["channel"],
            registry=r,
        )
        self.blocked = Gauge(
            "monitor_channel_blocked_targets",
            "Destinations of a channel paused until the config changes (they refused).",
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
            "State store failures met by claims, polls, sends, digests and pruning.",
            registry=r,
        )
        self.reloads = Counter(
            "monitor_config_reloads",
            "Config reloads by outcome: applied, refused.",
            ["outcome"],
            registry=r,
        )
        self.ready = Gauge(
            "monitor_ready", "1 when /readyz answers 200 (checked at scrape time).", registry=r
        )
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome)

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
        _keep(self.deliveries, ("channel", "outcome"), channels)
        _keep(self.attempts, ("channel", "outcome"), channels)
        _keep(self.retries, ("channel",), channels)
        _keep(self.latency, ("channel",), channels)
        _keep(self.delivery_seconds, ("channel",), channels)
        for rule in rules:
            self.matches.labels(rule)
        for channel in channels:
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(channel, outcome)
            self.retries.labels(channel)
            self.latency.labels(channel)
            self.delivery_seconds.labels(channel)

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
        self.poll_seconds.labels(outcome).observe(seconds)
        self.feed_poll_seconds.labels(label).inc(seconds)
        klass = None if status is None else status_class(status)
        if klass is not None:
            self.http.labels(label, klass).inc()
        if new_items:
            self.items.labels(label).inc(new_items)

    def matched(self, rules: Iterable[str]) -> None:
        """One new item matched by each rule in `rules` (a rule once per item)."""
        for rule in rules:
            self.matches.labels(rule).inc()

    def backfilled(self, feed: str, item_keys: Iterable[str]) -> None:
        """Alerts of these items were queued by a feed's first fetch (a backfill): their
        publication can be long past, which says nothing about how late the news came."""
        memory = self._backfilled
        for key in item_keys:
            memory[feed, key] = None
        while len(memory) > BACKFILL_MEMORY:
            del memory[next(iter(memory))]

    # --- deliveries ----------------------------------------------------------------------------

    def queued(self, channel: str, deliveries: int) -> None:
        if deliveries:
            self.deliveries.labels(channel, "queued").inc(deliveries)

    def attempted(self, channel: str, outcome: str) -> None:
        """One send (one message) to `channel` came to `outcome` (one of ATTEMPT_OUTCOMES)."""
        self.attempts.labels(channel, outcome).inc()

    def delivered(self, channel: str, alerts: Sequence[Alert], at: datetime) -> None:
        """`alerts` were marked sent at `at`."""
        if not alerts:
            return
        self.deliveries.labels(channel, "sent").inc(len(alerts))
        latency = self.latency.labels(channel)
        waited = self.delivery_seconds.labels(channel)
        for alert in alerts:
            waited.observe(max((at - alert.seen_at).total_seconds(), 0.0))
            if (alert.feed, alert.item_key) not in self._backfilled:
                latency.observe(alert_age(alert, at))

    def failed(self, channel: str, deliveries: int = 1) -> None:
        if deliveries:
            self.deliveries.labels(channel, "failed").inc(deliveries)

    def retried(self, channel: str, deliveries: int = 1) -> None:
        if deliveries:
            self.retries.labels(channel).inc(deliveries)

    # --- the store -----------------------------------------------------------------------------

    def store_failed(self, operation: str, reason: str) -> bool:
        """The store failed `operation` (one of STORE_OPERATIONS) with `reason`; True when the
        caller should log it: news (the operation was not failing, or failed otherwise), or
        REPEAT_LOG seconds since it was last said."""
        self.store_errors.inc()
        now = self.clock()
        standing = self._store_failures.get(operation)
        self._store_failures[operation] = (reason, now if standing is None else standing[1])
        said = self._store_logged.get(operation)
        if standing is None or standing[0] != reason or said is None or now - said >= REPEAT_LOG:
            self._store_logged[operation] = now
            return True
        return False

    def store_ok(self, operation: str) -> None:
        """`operation` went through: its standing failure, if any, is over (another
        operation's is not)."""
        if self._store_failures.pop(operation, None) is not None:
            self._store_logged.pop(operation, None)

    def store_failures(self) -> dict[str, tuple[str, float]]:
        """The standing failures: operation -> (reason, `time.monotonic()` since when)."""
        return dict(self._store_failures)

    @property
    def store_problem(self) -> str:
        """The standing store failures in a few words ("" when none)."""
        return "; ".join(f"{op}: {why}" for op, (why, _) in sorted(self._store_failures.items()))

    # --- scrape-time gauges --------------------------------------------------------------------

    def set_outbox(
        self, stats: Sequence[OutboxStat], now: datetime, channels: Iterable[str]
    ) -> None:
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

    def set_due(self, oldest: Mapping[str, datetime | None], now: datetime) -> None:
        """Set `monitor_outbox_oldest_due_age_seconds`: channel -> creation time of its oldest
        delivery due now (None: none). Channels left out (digest, paused, removed ones) have
        no series."""
        self.oldest_due.clear()
        for channel, first in sorted(oldest.items()):
            age = 0.0 if first is None else max((now - first).total_seconds(), 0.0)
            self.oldest_due.labels(channel).set(age)

    def clear_outbox(self) -> None:
        """The store could not be read: no outbox figures rather than stale ones."""
        self.pending.clear()
        self.oldest.clear()
        self.oldest_due.clear()

    def set_channels(
        self, channels: Iterable[str], paused: Iterable[str], blocked: Mapping[str, int]
    ) -> None:
        """Set the channel pause gauges of the configured `channels`."""
        stopped = set(paused)
        self.paused.clear()
        self.blocked.clear()
        for channel in channels:
            self.paused.labels(channel).set(1 if channel in stopped else 0)
            self.blocked.labels(channel).set(blocked.get(channel, 0))

    def set_feed_health(self, states: Iterable[FeedState]) -> None:
        counts = dict.fromkeys(FEED_HEALTH, 0)
        for state in states:
            counts[feed_health(state)] += 1
        for health, count in counts.items():
            self.feeds.labels(health).set(count)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4); safe to call from a
        worker thread while the loop counts on."""
        return generate_latest(self.registry)


def _keep(metric: Counter | Histogram, labels: Sequence[str], keep: set[str]) -> None:
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
