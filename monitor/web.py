"""The HTTP endpoint of `monitor run`: /healthz, /readyz, /metrics, /status.

A small HTTP/1.1 server on the daemon's event loop: asyncio streams, h11 (already used by the
fetcher) for the protocol, GET and HEAD only, one request per connection (`Connection: close`),
requests bounded in size and in time. It serves whichever daemon `Site.daemon` names, so it
keeps listening across config reloads (the Supervisor points it at the new daemon).

- `/healthz`: 200 while the process answers (liveness).
- `/readyz`: 200 when a config is running, the scheduler claims due feeds, and the state store
  answers and took its last write; 503 with the reasons otherwise (JSON either way).
- `/metrics`: the Prometheus text format; store-backed gauges are read right before.
- `/status`: JSON: version, uptime, readiness, feeds with their health, rules with their match
  counts, channels with pending/sent/failed deliveries. No secret appears in it: URL
  credentials and secret-looking query values are removed, and the whole text goes through
  the log redaction with the config's secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import h11
from prometheus_client import Counter

from monitor import __version__
from monitor.config.schema import listen_host
from monitor.errors import ConfigError, ConfigProblem, StoreError
from monitor.logs import redact
from monitor.metrics import Metrics, feed_health, public_name, safe_url
from monitor.models import Config, FeedState, HttpSettings
from monitor.store.protocol import OutboxStat

if TYPE_CHECKING:
    from monitor.daemon import Daemon

log = logging.getLogger("monitor.web")

#: Largest request head (request line and headers) accepted.
MAX_REQUEST = 16 * 1024
#: Seconds a client gets to send its request, and to take the response.
IO_TIMEOUT = 10.0
#: After answering, how long (seconds) and how much (bytes) of what the client still sends is
#: read and dropped before closing (see `_linger`).
LINGER = 2.0
MAX_LINGER = 1024 * 1024
#: Connections served at once; more are closed at once.
MAX_CONNECTIONS = 32
#: Seconds the store gets to answer a readiness probe or a scrape.
STORE_TIMEOUT = 5.0
#: Seconds without a claim of due feeds (one is tried every second) before the scheduler
#: counts as stuck.
STALL = 30.0
#: Seconds the feed-health gauges of /metrics are reused before the store is read again.
FEEDS_EVERY = 30.0

ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/status")
_JSON = "application/json"
#: The classic text format, which every Prometheus reads; `generate_latest` writes it (names
#: here are plain ASCII, so its 1.0.0 escaping changes nothing).
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(text: str) -> HttpSettings:
    """`HOST:PORT`, `[IPv6]:PORT`, or `:PORT` (127.0.0.1) as given to `--http`; ValueError
    with the reason when it is none of these."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {text!r}")
    return HttpSettings(listen_host(host) if host else HttpSettings().host, int(port))


def address_argument(text: str) -> HttpSettings:
    """`parse_address` for argparse (`monitor run --http`): a bad value exits 2 with usage."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str


class Site:
    """What the endpoints report on: the process's metrics and the daemon running now.

    The Supervisor sets `daemon` when a daemon starts running and `reloading` while one is
    handed over to the next; `reloads` and `refused` mirror its counts.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.daemon: Daemon | None = None
        self.reloading = False
        self.reloads = 0
        self.refused = 0
        #: Seconds the `monitor_feeds` gauges are reused before the store is read again
        #: (every feed's state: some 0.1 s of the store's time at 10,000 feeds).
        self.feeds_every = FEEDS_EVERY
        self._feeds_at: float | None = None

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
        last = daemon.last_tick
        if not daemon.running or last is None:
            if self.reloading:  # the old config stopping, or the new one starting
                return Check("scheduler", True, "handing over to a reloaded config")
            if not daemon.running:
                return Check("scheduler", False, "not running (starting or shutting down)")
            return Check("scheduler", False, "no claim of due feeds yet")
        idle = time.monotonic() - last
        if idle > STALL:
            return Check("scheduler", False, f"no claim of due feeds for {idle:.0f} s")
        return Check("scheduler", True, f"running, {daemon.scheduler.in_flight} polls in flight")

    async def _probe(self, daemon: Daemon) -> tuple[Check, list[OutboxStat] | None]:
        try:
            stats = await asyncio.wait_for(
                daemon.store.outbox_stats(datetime.now(UTC)), STORE_TIMEOUT
            )
        except TimeoutError:
            self.metrics.store_errors.inc()
            return Check("store", False, f"did not answer within {STORE_TIMEOUT:g} s"), None
        except StoreError as exc:  # a read failed: the file is gone, corrupted, closed
            self.metrics.store_errors.inc()
            return Check("store", False, str(exc)), None
        except Exception as exc:
            log.exception("the state store probe failed")
            self.metrics.store_errors.inc()
            return Check("store", False, f"{type(exc).__name__}: {exc}"), None
        problem = self.metrics.store_problem
        if problem:
            return Check("store", False, f"its last write failed: {problem}"), stats
        return Check("store", True, "answering"), stats

    # --- endpoints -----------------------------------------------------------------------------

    async def readyz(self) -> tuple[int, bytes]:
        checks, _ = await self.checks()
        ready = all(c.ok for c in checks)
        body = {
            "ready": ready,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        }
        return (200 if ready else 503), self._json(body)

    async def metrics_text(self) -> bytes:
        checks, stats = await self.checks()
        metrics = self.metrics
        metrics.ready.set(1 if all(c.ok for c in checks) else 0)
        daemon = self.daemon
        if daemon is not None:
            channels = [c.name for c in daemon.config.channels]
            if stats is not None:
                metrics.outbox(stats, datetime.now(UTC), channels)
            last = self._feeds_at
            if last is None or time.monotonic() - last >= self.feeds_every:
                states = await self._feed_states(daemon)
                if states is not None:
                    metrics.feed_health(states)
                    self._feeds_at = time.monotonic()
        return metrics.render()

    async def _feed_states(self, daemon: Daemon) -> list[FeedState] | None:
        """The configured feeds' states (new ones for feeds not stored yet); None when the
        store fails (its check says why)."""
        try:
            stored = await asyncio.wait_for(daemon.store.feed_states(), STORE_TIMEOUT)
        except (TimeoutError, StoreError):
            return None
        by_name = {s.name: s for s in stored}
        return [by_name.get(f.name) or FeedState(f.name, f.url) for f in daemon.config.feeds]

    async def status(self) -> bytes:
        checks, stats = await self.checks()
        metrics = self.metrics
        now = datetime.now(UTC)
        body: dict[str, object] = {
            "version": __version__,
            "started_at": _iso(datetime.fromtimestamp(metrics.started, UTC)),
            "uptime_seconds": round(time.time() - metrics.started, 3),
            "ready": all(c.ok for c in checks),
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        }
        daemon = self.daemon
        if daemon is None:
            return self._json(body)
        config = daemon.config
        states = await self._feed_states(daemon)
        mutes = await self._mutes(daemon, now)
        body["config"] = {
            "path": config.path,
            "state": safe_dsn(config.state),
            "timezone": config.timezone,
            "reloads": self.reloads,
            "reloads_refused": self.refused,
        }
        body["feeds"] = _feeds(config, states, metrics)
        body["rules"] = [
            {
                "name": rule.name,
                "notify": list(rule.notify),
                "matches": _count(metrics.matches, (rule.name,)),
                "muted_until": _iso(mutes.get(rule.name)),
            }
            for rule in config.rules
        ]
        body["rules_note"] = (
            "matches: new items the rule matched since this process started (from the metrics "
            "counters; 0 again after a restart, kept across reloads)"
        )
        body["channels"] = _channels(daemon, stats, now)
        return self._json(body)

    async def _mutes(self, daemon: Daemon, now: datetime) -> dict[str, datetime]:
        try:
            return await asyncio.wait_for(daemon.store.mutes(now), STORE_TIMEOUT)
        except (TimeoutError, StoreError):
            return {}

    def _json(self, body: object) -> bytes:
        text = json.dumps(body, ensure_ascii=False, indent=1)
        return scrub(text, self.daemon.config.secrets if self.daemon else ()).encode() + b"\n"


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


def _channels(
    daemon: Daemon, stats: list[OutboxStat] | None, now: datetime
) -> list[dict[str, object]]:
    by_channel = {s.channel: s for s in stats or ()}
    configured = {c.name: c.type for c in daemon.config.channels}
    paused = daemon.dispatcher.paused
    blocked: dict[str, dict[str, str]] = {}
    for (channel, target), why in daemon.dispatcher.blocked.items():
        blocked.setdefault(channel, {})[target] = why
    alerts = _by_first_label(daemon.metrics.alerts)
    channels: list[dict[str, object]] = []
    for name in [*configured, *sorted(set(by_channel) - set(configured))]:
        stat = by_channel.get(name)
        first = None if stat is None else stat.oldest_pending
        entry: dict[str, object] = {
            "name": name,
            "type": configured.get(name),
            "configured": name in configured,
        }
        if stats is not None:
            entry.update(
                {
                    "pending": stat.pending if stat else 0,
                    "sent": stat.sent if stat else 0,
                    "failed": stat.failed if stat else 0,
                    "oldest_pending": _iso(first),
                    "oldest_pending_age_seconds": (
                        None if first is None else round((now - first).total_seconds(), 3)
                    ),
                }
            )
        entry["paused"] = paused.get(name)
        entry["blocked_targets"] = blocked.get(name, {})
        entry["since_start"] = alerts.get(name, {})
        channels.append(entry)
    return channels


def _by_first_label(metric: Counter) -> dict[str, dict[str, int]]:
    """A two-label counter's totals: first label -> second label -> count."""
    found: dict[str, dict[str, int]] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                first, second = list(sample.labels.values())[:2]
                found.setdefault(first, {})[second] = int(sample.value)
    return found


def _count(metric: Counter, labels: tuple[str, ...]) -> int:
    """A counter's total for one set of label values."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and tuple(sample.labels.values()) == labels:
                return int(sample.value)
    return 0


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def safe_dsn(state: str) -> str:
    """The state location without credentials or options: scheme, host and path only."""
    if state == "memory:" or state.startswith("sqlite:"):
        return state
    try:
        parts = urlsplit(state)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable>"
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` through the log redaction, and without any of `secrets`."""
    text = redact(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


# --- the server --------------------------------------------------------------------------------


class WebServer:
    """Serves `site` on `settings` until `close()`; use as `async with WebServer(...)`."""

    def __init__(self, settings: HttpSettings, site: Site, *, origin: str = "http") -> None:
        self.settings = settings
        self.site = site
        #: Where the address came from, for errors: "http" (the config key) or "--http".
        self._origin = origin
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: The port bound (the one picked when the setting is 0); 0 before `start`.
        self.port = 0

    async def __aenter__(self) -> WebServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; ConfigError (exit 2 at start) when the address cannot be used."""
        host, port = self.settings.host, self.settings.port
        try:
            self._server = await asyncio.start_server(
                self._connected, host, port, limit=MAX_REQUEST, reuse_address=True
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "address already in use (another process listens there)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "no such address on this machine"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges)"
            else:
                why = exc.strerror or str(exc)
            where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            problem = ConfigProblem("", 0, self._origin, f"cannot listen on {where}: {why}")
            raise ConfigError([problem]) from None
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        shown = host if ":" not in host else f"[{host}]"
        log.info("serving %s on http://%s:%d", " ".join(ENDPOINTS), shown, self.port)

    async def close(self) -> None:
        """Stop listening and end the requests being served."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._handlers) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._handlers.add(task)
        answered = False
        try:
            answered = await self._serve(reader, writer)
            if answered:
                await _linger(reader, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            pass  # the client went away or stalled: nothing more to say
        except asyncio.CancelledError:
            # Only `close()` cancels a handler; ending quietly spares the streams' done
            # callback, which would report a cancelled handler as an error.
            answered = False
        except Exception:
            log.exception("serving an HTTP request failed")
        finally:
            self._handlers.discard(task)
            if answered:
                writer.close()  # after the response, which drain() handed to the kernel
            else:
                writer.transport.abort()  # never wait on a client that does not read

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True once the answer is written out."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            async with asyncio.timeout(IO_TIMEOUT):
                request = await _read_request(conn, reader)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            body = HTTPStatus(status).phrase.lower().encode() + b"\n"
            return await _send(writer, conn, status, body, "text/plain", head=False)
        except TimeoutError:
            return False  # a client that never finished its request gets nothing
        if request is None:
            return False
        method = request.method.decode("ascii", "replace").upper()
        path = urlsplit(request.target.decode("ascii", "replace")).path
        status, body, content_type, extra = await self._route(method, path)
        log.debug("%s %s %d", method, path, status)
        return await _send(
            writer, conn, status, body, content_type, head=method == "HEAD", extra=extra
        )

    async def _route(self, method: str, path: str) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        if path not in ENDPOINTS:
            return 404, b"not found: try " + " ".join(ENDPOINTS).encode() + b"\n", "text/plain", []
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", "text/plain", [("Allow", "GET, HEAD")]
        site = self.site
        if path == "/healthz":
            return 200, b"ok\n", "text/plain", []
        if path == "/readyz":
            status, body = await site.readyz()
            return status, body, _JSON, []
        if path == "/metrics":
            return 200, await site.metrics_text(), _PROMETHEUS, []
        return 200, await site.status(), _JSON, []


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the client still sends (a body nobody asked for,
    the rest of an oversized request) until it closes, for at most LINGER seconds and
    MAX_LINGER bytes: closing with unread input makes the kernel reset the connection, and the
    client could lose the response."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    left = MAX_LINGER
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER):
            while left > 0 and (data := await reader.read(min(left, 65536))):
                left -= len(data)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request's head, or None when the client closed without sending one."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(4096))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed


async def _send(
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str,
    *,
    head: bool,
    extra: list[tuple[str, str]] | None = None,
) -> bool:
    """Write the response; False when the request was too broken to answer at all."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Connection", "close"),
        *(extra or []),
    ]
    reason = HTTPStatus(status).phrase.encode()
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
    except h11.LocalProtocolError:
        return False
    if not head:
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
    data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    writer.write(data)
    async with asyncio.timeout(IO_TIMEOUT):
        await writer.drain()
    return True
