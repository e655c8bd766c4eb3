"""What the HTTP endpoint serves: /healthz, /readyz, /metrics, /status.

It reports on whichever daemon `Site.daemon` names, so it keeps answering across config
reloads (the Supervisor points it at the new daemon).

- `/healthz`: 200 while the process answers (liveness).
- `/readyz`: 200 when a config is running, the scheduler claims due feeds, and the state store
  answers and no operation of the daemon on it is failing; 503 with the reasons otherwise
  (JSON either way).
- `/metrics`: the Prometheus text format; store-backed gauges are read right before.
- `/status`: JSON: version, uptime, readiness, feeds with their health, rules with their match
  counts, channels with pending/sent/failed deliveries. No secret appears in it: every string
  goes through `redact_data` (tokens, URL credentials, secret-looking query values, the
  config's secrets) before it is serialised, and destinations are masked.

The heavy answers (/metrics, /status, and /readyz's store probe) are computed once for all the
requests that ask meanwhile and reused for `cache_for` seconds; serialising them runs in a
worker thread, so a scrape of 10,000 feeds never holds up polls and sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import Counter

from monitor import __version__
from monitor.errors import StoreError
from monitor.metrics import Metrics, feed_health, public_name
from monitor.models import Config, FeedState
from monitor.redact import mask_target, redact_data, safe_dsn, safe_url
from monitor.store.protocol import OutboxStat
from monitor.web.server import Response

if TYPE_CHECKING:
    from monitor.daemon import Daemon

log = logging.getLogger("monitor.web")

T = TypeVar("T")

#: Seconds the store gets to answer a readiness probe or a scrape (below the probes' own
#: timeout, deploy/k8s: 5 s).
STORE_TIMEOUT = 3.0
#: Seconds without a claim of due feeds (one is tried every second) before the scheduler
#: counts as stuck; also the longest a reload's hand-over may take.
STALL = 30.0
#: Seconds the feed-health gauges of /metrics are reused before the store is read again.
FEEDS_EVERY = 30.0
#: Seconds an answer of /readyz, /metrics or /status is reused for the requests that follow.
CACHE_FOR = 1.0

ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/status")
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
#: The classic text format, which every Prometheus reads; `generate_latest` writes it (names
#: here are plain ASCII, so its 1.0.0 escaping changes nothing).
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str


class Site:
    """What the endpoints report on: the process's metrics and the daemon running now.

    The Supervisor sets `daemon` when a daemon starts running and calls `hand_over` when one
    is handed over to the next; `reloads` and `refused` mirror its counts.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.daemon: Daemon | None = None
        #: `time.monotonic()` when a reload's hand-over began, until the new daemon claims due
        #: feeds; None otherwise.
        self.handover_since: float | None = None
        self._handover_from: Daemon | None = None
        self.reloads = 0
        self.refused = 0
        #: Seconds the `monitor_feeds` gauges are reused before the store is read again
        #: (every feed's state: some 0.1 s of the store's time at 10,000 feeds).
        self.feeds_every = FEEDS_EVERY
        self.cache_for = CACHE_FOR
        self.store_timeout = STORE_TIMEOUT
        self.stall = STALL
        self._feeds_at: float | None = None
        self._gauges = asyncio.Lock()
        self._cache: dict[str, tuple[float, Response]] = {}
        self._running: dict[str, asyncio.Task[Response]] = {}

    def hand_over(self, old: Daemon | None) -> None:
        """A reload's hand-over from `old` to a new daemon begins (None: none is going on)."""
        self.handover_since = None if old is None else time.monotonic()
        self._handover_from = old

    # --- routing -------------------------------------------------------------------------------

    async def respond(self, method: str, path: str) -> Response:
        if path not in ENDPOINTS:
            return Response(404, b"not found: try " + " ".join(ENDPOINTS).encode() + b"\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        try:
            if path == "/healthz":
                return Response(200, b"ok\n")
            if path == "/readyz":
                return await self._shared("readyz", self._readyz)
            if path == "/metrics":
                return await self._shared("metrics", self._metrics)
            return await self._shared("status", self._status)
        except Exception:
            log.exception("answering %s failed", path)
            return Response(500, b"internal error\n", _TEXT)

    async def _shared(self, key: str, compute: Callable[[], Awaitable[Response]]) -> Response:
        """`compute()`'s answer, computed once for every request asking while it runs, and
        reused for `cache_for` seconds after."""
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.cache_for:
            return cached[1]
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._remember(key, compute))
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # A request going away (its client, the server closing) leaves the others theirs.
        return await asyncio.shield(task)

    async def _remember(self, key: str, compute: Callable[[], Awaitable[Response]]) -> Response:
        response = await compute()
        self._cache[key] = (time.monotonic(), response)
        return response

    def _finished(self, key: str, task: asyncio.Task[Response]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    # --- readiness -----------------------------------------------------------------------------

    async def checks(self) -> tuple[list[Check], list[OutboxStat] | None]:
        """The readiness checks, and the outbox figures the store probe read (None when it
        could not)."""
        daemon = self.daemon
        if daemon is None:
            return [Check("config", False, "no config running yet (starting)")], None
        config = daemon.config
        loaded = Check(
            "config",
            True,
            f"{len(config.feeds)} feeds, {len(config.rules)} rules, "
            f"{len(config.channels)} channels",
        )
        store, stats = await self._probe(daemon)
        return [loaded, self._scheduler(daemon), store], stats

    def _scheduler(self, daemon: Daemon) -> Check:
        now = time.monotonic()
        last = daemon.last_tick
        ticking = daemon.running and last is not None
        if ticking and daemon is not self._handover_from:
            self.hand_over(None)  # the new config claims due feeds: the hand-over is over
        if ticking and self.handover_since is None and last is not None:
            idle = now - last
            if idle > self.stall:
                return Check("scheduler", False, f"no claim of due feeds for {idle:.0f} s")
            return Check(
                "scheduler", True, f"running, {daemon.scheduler.in_flight} polls in flight"
            )
        since = self.handover_since
        if since is not None:  # the old config stopping, or the new one starting
            waited = now - since
            if waited <= self.stall:
                return Check("scheduler", True, "handing over to a reloaded config")
            return Check(
                "scheduler", False, f"handing over to a reloaded config for {waited:.0f} s"
            )
        if not daemon.running:
            return Check("scheduler", False, "not running (starting or shutting down)")
        return Check("scheduler", False, "no claim of due feeds yet")

    async def _probe(self, daemon: Daemon) -> tuple[Check, list[OutboxStat] | None]:
        """The store check: a read (the outbox figures) within `store_timeout`, and no
        operation of the daemon standing failed. A probe failing is not counted in
        `monitor_store_errors_total` (each probe and scrape would count it again)."""
        try:
            stats = await asyncio.wait_for(
                daemon.store.outbox_stats(datetime.now(UTC)), self.store_timeout
            )
        except TimeoutError:
            return Check("store", False, f"did not answer within {self.store_timeout:g} s"), None
        except StoreError as exc:  # a read failed: the file is gone, corrupted, closed
            return Check("store", False, str(exc)), None
        except Exception as exc:
            log.exception("the state store probe failed")
            return Check("store", False, f"{type(exc).__name__}: {exc}"), None
        failures = self.metrics.store_failures()
        if failures:
            now = self.metrics.clock()
            detail = "; ".join(
                f"{op} failing for {now - since:.0f} s: {why}"
                for op, (why, since) in sorted(failures.items())
            )
            return Check("store", False, detail), stats
        return Check("store", True, "answering"), stats

    async def _read(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call()` on the store within `store_timeout`; None when it fails (the store check
        says why; anything but a store failure is logged too)."""
        try:
            return await asyncio.wait_for(call(), self.store_timeout)
        except (TimeoutError, StoreError):
            return None
        except Exception:
            log.exception("reading %s from the state store failed", what)
            return None

    # --- endpoints -----------------------------------------------------------------------------

    async def _readyz(self) -> Response:
        checks, _ = await self.checks()
        ready = all(c.ok for c in checks)
        body = {"ready": ready, "checks": _checks(checks)}
        return Response(200 if ready else 503, await self._json(body), _JSON)

    async def _metrics(self) -> Response:
        metrics = self.metrics
        # The gauges set and the registry rendered as one: a refresh of another request never
        # lands between them.
        async with self._gauges:
            checks, stats = await self.checks()
            metrics.ready.set(1 if all(c.ok for c in checks) else 0)
            daemon = self.daemon
            if daemon is not None:
                await self._refresh(daemon, stats)
            text = await asyncio.to_thread(metrics.render)
        return Response(200, text, _PROMETHEUS)

    async def _refresh(self, daemon: Daemon, stats: list[OutboxStat] | None) -> None:
        metrics = self.metrics
        now = datetime.now(UTC)
        channels = [c.name for c in daemon.config.channels]
        dispatcher = daemon.dispatcher
        blocked: dict[str, int] = {}
        for channel, _ in dispatcher.blocked:
            blocked[channel] = blocked.get(channel, 0) + 1
        metrics.set_channels(channels, dispatcher.paused, blocked)
        due = None if stats is None else await self._read("due deliveries", self._due(daemon))
        if stats is None or due is None:
            metrics.clear_outbox()  # no figures rather than stale ones
        else:
            metrics.set_outbox(stats, now, channels)
            metrics.set_due(due, now)
        last = self._feeds_at
        if last is None or time.monotonic() - last >= self.feeds_every:
            states = await self._feed_states(daemon)
            if states is not None:
                metrics.set_feed_health(states)
                self._feeds_at = time.monotonic()

    def _due(self, daemon: Daemon) -> Callable[[], Awaitable[dict[str, datetime | None]]]:
        async def read() -> dict[str, datetime | None]:
            """Per instantly sending channel not paused: when its oldest delivery due now
            (not waiting for a retry, nor for a paused or unlisted destination) was written."""
            dispatcher = daemon.dispatcher
            now = datetime.now(UTC)
            found: dict[str, datetime | None] = {}
            for channel in dispatcher.channels:
                if channel in dispatcher.paused:
                    continue
                skip = await dispatcher.skipped_targets(channel)
                rows = await daemon.store.due_deliveries(channel, now, 1, skip_targets=skip)
                found[channel] = (rows[0].created_at or rows[0].alert.seen_at) if rows else None
            return found

        return read

    async def _feed_states(self, daemon: Daemon) -> list[FeedState] | None:
        """The configured feeds' states (new ones for feeds not stored yet); None when the
        store fails (its check says why)."""
        stored = await self._read("feed states", daemon.store.feed_states)
        if stored is None:
            return None
        by_name = {s.name: s for s in stored}
        return [by_name.get(f.name) or FeedState(f.name, f.url) for f in daemon.config.feeds]

    async def _status(self) -> Response:
        checks, stats = await self.checks()
        metrics = self.metrics
        head: dict[str, object] = {
            "version": __version__,
            "started_at": _iso(datetime.fromtimestamp(metrics.started, UTC)),
            "uptime_seconds": round(time.time() - metrics.started, 3),
            "ready": all(c.ok for c in checks),
            "checks": _checks(checks),
        }
        daemon = self.daemon
        if daemon is None:
            return Response(200, await self._json(head), _JSON)
        now = datetime.now(UTC)
        states = await self._feed_states(daemon)
        mutes = await self._read("mutes", lambda: daemon.store.mutes(now)) or {}
        dispatcher = daemon.dispatcher
        snapshot = _Snapshot(
            config=daemon.config,
            states=states,
            stats=stats,
            mutes=mutes,
            paused=dict(dispatcher.paused),
            blocked=dict(dispatcher.blocked),
            now=now,
            reloads=self.reloads,
            refused=self.refused,
        )
        # Building and serialising 10,000 feeds' entries takes a while: off the loop.
        body = await asyncio.to_thread(_status_body, head, snapshot, metrics)
        return Response(200, body, _JSON)

    async def _json(self, body: object) -> bytes:
        secrets = self.daemon.config.secrets if self.daemon else frozenset()
        return await asyncio.to_thread(_encode, body, secrets)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What /status reports, read on the loop, for the worker thread that writes it."""

    config: Config
    states: list[FeedState] | None
    stats: list[OutboxStat] | None
    mutes: dict[str, datetime]
    paused: dict[str, str]
    blocked: dict[tuple[str, str], str]
    now: datetime
    reloads: int
    refused: int


def _encode(body: object, secrets: frozenset[str]) -> bytes:
    """`body` as JSON, every string redacted first (see `redact_data`)."""
    clean = redact_data(body, secrets)
    return json.dumps(clean, ensure_ascii=False, indent=1).encode() + b"\n"


def _status_body(head: dict[str, object], snap: _Snapshot, metrics: Metrics) -> bytes:
    config = snap.config
    matches = {labels[0]: n for labels, n in _totals(metrics.matches).items()}
    body = dict(head)
    body["config"] = {
        "path": config.path,
        "state": safe_dsn(config.state),
        "timezone": config.timezone,
        "reloads": snap.reloads,
        "reloads_refused": snap.refused,
    }
    body["feeds"] = _feeds(config, snap.states, metrics)
    body["rules"] = [
        {
            "name": rule.name,
            "notify": list(rule.notify),
            "matches": matches.get(rule.name, 0),
            "muted_until": _iso(snap.mutes.get(rule.name)),
        }
        for rule in config.rules
    ]
    body["rules_note"] = (
        "matches: new items the rule matched since this process started (from the metrics "
        "counters; 0 again after a restart, kept across reloads)"
    )
    body["channels"] = _channels(snap, metrics)
    return _encode(body, config.secrets)


def _checks(checks: list[Check]) -> dict[str, dict[str, object]]:
    return {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}


def _feeds(
    config: Config, states: list[FeedState] | None, metrics: Metrics
) -> list[dict[str, object]]:
    by_name = {s.name: s for s in states or ()}
    polls = _by_first_label(metrics.polls)
    feeds: list[dict[str, object]] = []
    for spec in config.feeds:
        state = by_name.get(spec.name)
        entry: dict[str, object] = {"name": public_name(spec.name), "url": safe_url(spec.url)}
        if state is None:
            entry["health"] = "unknown" if states is None else "new"
        else:
            entry.update(
                {
                    "health": feed_health(state),
                    "notice": state.notice or None,
                    "last_polled_at": _iso(state.last_polled_at),
                    "last_success_at": _iso(state.last_success_at),
                    "next_poll_at": None if state.dead_since else _iso(state.next_poll_at),
                    "consecutive_failures": state.consecutive_failures,
                    "failing_since": _iso(state.failing_since),
                    "dead_since": _iso(state.dead_since),
                    "last_error": state.dead_reason or state.last_error or None,
                    "last_warning": state.last_warning or None,
                    "items_seen": state.items_seen,
                    "cadence_seconds": state.cadence.total_seconds() if state.cadence else None,
                }
            )
        entry["polls"] = polls.get(metrics.feed_label(spec.name), {})
        feeds.append(entry)
    return feeds


def _channels(snap: _Snapshot, metrics: Metrics) -> list[dict[str, object]]:
    by_channel = {s.channel: s for s in snap.stats or ()}
    configured = {c.name: c.type for c in snap.config.channels}
    blocked: dict[str, dict[str, str]] = {}
    for (channel, target), why in snap.blocked.items():
        blocked.setdefault(channel, {})[mask_target(target)] = why
    deliveries = _by_first_label(metrics.deliveries)
    channels: list[dict[str, object]] = []
    for name in [*configured, *sorted(set(by_channel) - set(configured))]:
        stat = by_channel.get(name)
        first = None if stat is None else stat.oldest_pending
        entry: dict[str, object] = {
            "name": name,
            "type": configured.get(name),
            "configured": name in configured,
        }
        if snap.stats is not None:
            entry.update(
                {
                    "pending": stat.pending if stat else 0,
                    "sent": stat.sent if stat else 0,
                    "failed": stat.failed if stat else 0,
                    "oldest_pending": _iso(first),
                    "oldest_pending_age_seconds": (
                        None if first is None else round((snap.now - first).total_seconds(), 3)
                    ),
                }
            )
        entry["paused"] = snap.paused.get(name)
        entry["blocked_targets"] = blocked.get(name, {})
        entry["since_start"] = deliveries.get(name, {})
        channels.append(entry)
    return channels


def _totals(metric: Counter) -> dict[tuple[str, ...], int]:
    """A counter's totals by label values, in one pass over its samples."""
    return {
        tuple(sample.labels.values()): int(sample.value)
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _by_first_label(metric: Counter) -> dict[str, dict[str, int]]:
    """A two-label counter's totals: first label -> second label -> count."""
    found: dict[str, dict[str, int]] = {}
    for (first, second, *_), count in _totals(metric).items():
        found.setdefault(first, {})[second] = count
    return found


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
