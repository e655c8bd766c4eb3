"""Composition root: config in, running daemon out. The only place that picks adapters.

`Daemon` opens the store, fetcher, parse pool and notifiers, then either runs forever under
an APScheduler AsyncIOScheduler (`run`) or makes one pass and returns (`once`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor import __version__
from monitor.commands import CommandContext
from monitor.digest import Digester, cron_trigger
from monitor.dispatch import Dispatcher, DispatchStats
from monitor.errors import ChannelError, ConfigError, ConfigProblem, StoreError
from monitor.match.matcher import Matcher
from monitor.metrics import Metrics
from monitor.models import ChannelSpec, Config, Rule
from monitor.notify.console import ConsoleNotifier
from monitor.notify.email import EmailNotifier
from monitor.notify.jsonl import JsonlNotifier
from monitor.notify.pace import Pacer
from monitor.notify.protocol import Notifier
from monitor.notify.telegram import TelegramNotifier, settings_of
from monitor.notify.telegram_updates import CommandListener
from monitor.pipeline import Poller, PollOutcome
from monitor.redact import safe_dsn
from monitor.scheduler import PollScheduler
from monitor.sources.http import HttpFetcher
from monitor.sources.workers import ParsePool
from monitor.store import open_store
from monitor.store.protocol import Store

log = logging.getLogger("monitor.daemon")

USER_AGENT = f"monitor/{__version__} (news monitoring daemon; polite conditional GET)"
#: Seconds between scheduling ticks and dispatch checks.
TICK = 1.0
#: Seconds polls and sends in flight get to finish at shutdown.
GRACE = 5.0
#: Seconds before trying again to lead bot commands after the store failed to answer.
LEAD_RETRY = 30.0
#: Seconds between a worker's check-ins with the store (`Store.check_in`).
CHECK_IN = 60.0


def config_digest(path: str) -> str:
    """What identifies a config file's content among workers: a hash of its bytes ("" when
    it cannot be read, e.g. a config built in memory)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_notifier(
    spec: ChannelSpec,
    tz: ZoneInfo,
    rules: Sequence[Rule] = (),
    pacers: dict[str, Pacer] | None = None,
) -> Notifier:
    """The notifier for a channel type. Telegram channels sharing a bot share its pacer
    (`pacers`, by token): Telegram's limits are per bot."""
    if spec.type == "console":
        return ConsoleNotifier(spec, tz)
    if spec.type == "jsonl":
        return JsonlNotifier(spec)
    if spec.type == "email":
        return EmailNotifier(spec, tz, {r.name: r for r in rules})
    if spec.type == "telegram":
        token = settings_of(spec).token
        pacer = Pacer() if pacers is None else pacers.setdefault(token, Pacer())
        return TelegramNotifier(spec, tz, {r.name: r for r in rules}, pacer)
    raise ConfigError(
        [ConfigProblem("", 0, f"channels.{spec.name}", f"unknown type {spec.type!r}")]
    )


@dataclass(frozen=True, slots=True)
class OnceReport:
    """What `monitor once` did."""

    polls: list[PollOutcome]
    dispatch: DispatchStats
    pending: int


class Daemon:
    """Owns every long-lived resource; use as `async with Daemon(config) as daemon:`.

    A `store` given is already open and stays open (a reload runs a new Daemon on the store of
    the old one); otherwise the Daemon opens the config's store and closes it. `metrics` (the
    process's, which outlive reloads) count what it does; by default it has its own.
    """

    def __init__(
        self, config: Config, *, store: Store | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        #: True while `run` has its jobs scheduled (not starting, not shutting down).
        self.running = False
        #: `time.monotonic()` when the last claim of due feeds ended (None before the first).
        self.last_tick: float | None = None
        self.tz = ZoneInfo(config.timezone)
        self._owns_store = store is None
        self.store = store or open_store(config.state)
        self._stack = AsyncExitStack()
        self._rng = random.Random()
        #: This process among the workers sharing a store (`Store.check_in`).
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._started = utcnow()
        self._config_digest = config_digest(config.path)
        #: Workers seen running another config at the last check-in: warned when they still
        #: do at the next one (a rolling reload passes through such a moment).
        self._drifting: frozenset[str] = frozenset()
        self._dispatch_task: asyncio.Task[None] | None = None
        self._dispatch_again = False
        self._pacers: dict[str, Pacer] = {}
        self._notifiers: dict[str, Notifier] = {}
        self._digest_crons: dict[str, str] = {}
        self.scheduler: PollScheduler
        self.dispatcher: Dispatcher

    async def __aenter__(self) -> Daemon:
        stack = self._stack
        await stack.__aenter__()
        try:
            if self._owns_store:
                await stack.enter_async_context(self.store)
            policy = self.config.poll
            fetcher = await stack.enter_async_context(
                HttpFetcher(policy, user_agent=policy.user_agent or USER_AGENT)
            )
            parser = await stack.enter_async_context(ParsePool(workers=min(2, os.cpu_count() or 1)))
            notifiers = {}
            for spec in self.config.channels:
                notifier = build_notifier(spec, self.tz, self.config.rules, self._pacers)
                try:
                    notifiers[spec.name] = await stack.enter_async_context(notifier)
                except ChannelError as exc:  # e.g. a rejected bot token: fail fast
                    problem = ConfigProblem("", 0, f"channels.{spec.name}", str(exc))
                    raise ConfigError([problem]) from None
            # Compiling thousands of rules takes a noticeable fraction of a second: off the
            # loop, so a reload never stalls polls and sends in flight.
            matcher = await asyncio.to_thread(Matcher, self.config.rules)
            # Last, after everything that can refuse the config (a reload keeps the running
            # one then): the feed set the running daemon polls must not have changed.
            await self.store.sync_feeds(self.config.feeds, utcnow())
        except BaseException:
            await stack.aclose()
            raise
        poller = Poller(
            store=self.store,
            fetcher=fetcher,
            parser=parser,
            matcher=matcher,
            policy=policy,
            clock=utcnow,
            rng=self._rng,
            targets={c.name: c.targets for c in self.config.channels if c.targets},
            admin=self.config.admin,
            metrics=self.metrics,
        )
        feeds = {f.name: f for f in self.config.feeds}
        self.scheduler = PollScheduler(poller, feeds, policy.concurrency, utcnow, self._polled)
        # Digest channels never send one by one: their deliveries wait for the schedule.
        digests = {
            n: x for n, x in notifiers.items() if isinstance(x, EmailNotifier) and x.settings.digest
        }
        self._digest_crons = {
            n: x.settings.digest.cron for n, x in digests.items() if x.settings.digest
        }
        instant = {n: x for n, x in notifiers.items() if n not in digests}
        self.dispatcher = Dispatcher(
            self.store, instant, self.config.delivery, utcnow, self._rng, self.metrics
        )
        self.digester = Digester(
            self.store,
            digests,
            self.tz,
            self.config.delivery,
            utcnow,
            self.config.rules,
            metrics=self.metrics,
        )
        self._notifiers = notifiers
        return self

    def command_listeners(self) -> list[CommandListener]:
        """One listener per bot token with commands enabled, allowing the union of the
        allow lists of the channels on that bot."""
        ctx = CommandContext(self.store, self.config.rules, utcnow, self.tz, self.dispatcher)
        bots: dict[str, tuple[TelegramNotifier, set[str]]] = {}
        for name, notifier in self._notifiers.items():
            if not isinstance(notifier, TelegramNotifier):
                continue
            settings = notifier.settings
            if settings.commands is None:
                continue
            _, allow = bots.setdefault(settings.token, (notifier, set()))
            allow.update(settings.commands.allow)
            log.info("bot commands enabled", extra={"channel": name})
        return [
            CommandListener(n.bot, token, allow, ctx, self._pacers.setdefault(token, Pacer()))
            for token, (n, allow) in bots.items()
        ]

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    # --- one pass ------------------------------------------------------------------------------

    async def once(self, progress: Callable[[PollOutcome], None] | None = None) -> OnceReport:
        """Poll every feed now, send everything that is due, and return. `progress` is called
        with each poll's outcome as it ends (`PollScheduler.poll_all`)."""
        polls = await self.scheduler.poll_all(progress)
        stats = await self.dispatcher.run_once()
        return OnceReport(polls, stats, await self.store.pending_count())

    # --- forever -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and dispatch on schedule until `stop` is set, then shut down cleanly."""
        self.metrics.configure(self.config)
        jobs = AsyncIOScheduler(timezone=UTC)
        # Each job runs first at once, then on its interval; a run still going when the next
        # is due is skipped, never stacked.
        for job, every, name in (
            (self._tick, TICK, "claim-due-feeds"),
            (self._dispatch_job, TICK, "dispatch"),
            (self._prune, 3600.0, "prune"),
            (self.check_in, CHECK_IN, "check-in"),
            (self._digest_retries, 60.0, "digest-retries"),
        ):
            jobs.add_job(
                job, "interval", seconds=every, id=name,
                max_instances=1, coalesce=True, next_run_time=utcnow(),
            )  # fmt: skip
        # Crontab weekdays (0 and 7 Sunday), which APScheduler's from_crontab misreads. No
        # misfire limit: a digest due while the loop was held up (a suspended machine) still
        # runs, once (coalesced), for the latest scheduled time.
        for channel, cron in self._digest_crons.items():
            jobs.add_job(
                self._digest, cron_trigger(cron, self.tz), args=[channel],
                id=f"digest-{channel}", max_instances=1, coalesce=True, misfire_grace_time=None,
            )  # fmt: skip
        jobs.start()
        await self._catch_up_digests()
        commands = self.command_listeners()
        listeners = (
            [asyncio.get_running_loop().create_task(self._answer_commands(commands))]
            if commands
            else []
        )
        log.info(
            "running: %d feeds, %d rules, %d channels, state %s",
            len(self.config.feeds),
            len(self.config.rules),
            len(self.config.channels),
            safe_dsn(self.config.state),
        )
        await self._warn_orphans()
        self.running = True
        try:
            await stop.wait()
        finally:
            self.running = False
            log.info("shutting down")
            with contextlib.suppress(Exception):  # the store may be what failed
                await self.store.check_out(self.worker)
            jobs.shutdown(wait=False)
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
            # One grace period for everything in flight: polls and the sends of each channel
            # finish together, or stay pending for the next start.
            deadline = asyncio.get_running_loop().time() + GRACE
            self.dispatcher.stop()
            # A digest being sent finishes in the same grace period (the scheduler's shutdown
            # cancelled its job, not the digest); past it, it is stopped and sent at the next
            # start. No new digest starts.
            digests = asyncio.get_running_loop().create_task(self.digester.drain(GRACE))
            await self.scheduler.drain(GRACE)
            if self._dispatch_task is not None:
                left = max(deadline - asyncio.get_running_loop().time(), 0.1)
                _, late = await asyncio.wait([self._dispatch_task], timeout=left)
                for task in late:  # a send hanging past the grace: its lease covers it
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await digests
            log.info("stopped; %d deliveries pending", await self.store.pending_count())

    async def _answer_commands(self, listeners: Sequence[CommandListener]) -> None:
        """Run the bot-command listeners while this worker leads "bot commands": Telegram
        lets one process read a bot's updates, so among several workers on one PostgreSQL
        database one answers, and another takes over when it dies. Until cancelled."""
        while True:
            try:
                async with self.store.lead("bot commands") as lost:
                    log.info("this worker answers bot commands")
                    tasks = [asyncio.get_running_loop().create_task(x.run()) for x in listeners]
                    try:
                        await lost.wait()
                    finally:
                        for task in tasks:
                            task.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                    log.warning("lost the lead for bot commands (database connection); retrying")
            except StoreError as exc:
                log.warning(
                    "cannot take the lead for bot commands, again in %gs: %s", LEAD_RETRY, exc
                )
                await asyncio.sleep(LEAD_RETRY)

    async def check_in(self) -> None:
        """Tell the store this worker runs, and warn about workers running another config
        (several workers on one PostgreSQL database must all read the same file)."""
        try:
            others = await self.store.check_in(
                self.worker, self._config_digest, started_at=self._started, now=utcnow()
            )
        except Exception:
            log.exception("checking in with the state store failed")
            return
        drifting = frozenset(w.name for w in others if w.config != self._config_digest)
        for name in sorted(drifting & self._drifting):
            log.warning(
                "worker %s runs another config than this one (%s): give every worker the same "
                "file and reload them all (SIGHUP), or their feeds, rules and channels differ",
                name,
                self.config.path,
            )
        self._drifting = drifting

    async def _warn_orphans(self) -> None:
        """Pending deliveries for a channel no longer configured are never sent: say so."""
        configured = {c.name for c in self.config.channels}
        for spec in self.config.channels:
            if not spec.targets:
                continue
            for target, count in (await self.store.pending_by_target(spec.name)).items():
                if target not in spec.targets:
                    log.warning(
                        "%d pending deliveries for %s, which channel %r no longer lists; "
                        "they are kept, and sent if it is listed again",
                        count,
                        target or "its only destination",
                        spec.name,
                        extra={"channel": spec.name},
                    )
        pending = await self.store.deliveries(status="pending", limit=10_000)
        for name in sorted({d.channel for d in pending} - configured):
            count = await self.store.pending_count(name)
            log.warning(
                "%d pending deliveries for channel %r, which the config no longer has; they "
                "are kept, and sent if the channel is configured again",
                count,
                name,
                extra={"channel": name},
            )

    async def _tick(self) -> None:
        """Claim due feeds and start their polls; a store failure is counted (it fails the
        readiness check) and logged once a minute while it lasts, not every second. Any claim
        that completed (even one finding nothing due) ends a standing claim failure."""
        try:
            claims = self.scheduler.claims
            await self.scheduler.tick()
            if self.scheduler.claims > claims:
                self.metrics.store_ok("claim")
        except StoreError as exc:
            if self.metrics.store_failed("claim", str(exc)):
                log.error("cannot claim due feeds, nothing is polled: %s", exc)
        except Exception:
            log.exception("claiming due feeds failed")
        finally:
            self.last_tick = time.monotonic()

    def _polled(self, outcome: PollOutcome) -> None:
        if outcome.alerts:
            self._kick_dispatch()

    async def _dispatch_job(self) -> None:
        # A coroutine so APScheduler runs it on the loop, not in a thread.
        self._kick_dispatch()

    def _kick_dispatch(self) -> None:
        """Start a dispatch pass now, or right after the one running."""
        if self._dispatch_task is not None and not self._dispatch_task.done():
            self._dispatch_again = True
            return
        self._dispatch_task = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        self._dispatch_again = True
        while self._dispatch_again:
            self._dispatch_again = False
            try:
                await self.dispatcher.run_once()
            except Exception:  # store trouble: log, and try again on the next tick
                log.exception("dispatch pass failed")
                return

    async def _catch_up_digests(self) -> None:
        """A digest whose time passed while the daemon was down goes out now, once. First,
        claims left by a digest cut short (a crash) are released (`Digester.recover`, done by
        `catch_up` under each channel's lock, so the retry job starting beside it is safe)."""
        try:
            for report in await self.digester.catch_up(utcnow()):
                log.info("sent a missed digest", extra={"channel": report.channel})
        except Exception as exc:
            self._store_trouble("digest", exc)
            log.exception("catching up missed digests failed; they go out on schedule")

    async def _digest(self, channel: str) -> None:
        now = utcnow()
        scheduled = self.digester.previous_run(channel, now) or now
        try:
            report = await self.digester.run(channel, now, scheduled=scheduled)
        except Exception as exc:
            self._store_trouble("digest", exc)
            log.exception("digest failed", extra={"channel": channel})
            return
        self.metrics.store_ok("digest")
        sent = sum(r.sent for r in report.recipients)
        log.info("digest: %d alerts sent", sent, extra={"channel": channel})

    async def _digest_retries(self) -> None:
        try:
            await self.digester.retry_due(utcnow())
        except Exception as exc:
            if self._store_trouble("digest", exc):
                log.exception("retrying digests failed")
            return
        self.metrics.store_ok("digest")

    async def _prune(self) -> None:
        try:
            pruned = await self.store.prune(utcnow(), self.config.retention)
        except Exception as exc:
            self._store_trouble("prune", exc)
            log.exception("pruning failed")
            return
        self.metrics.store_ok("prune")
        if pruned.items or pruned.texts or pruned.deliveries:
            log.info(
                "pruned %d items, %d item texts, %d deliveries",
                pruned.items,
                pruned.texts,
                pruned.deliveries,
            )

    def _store_trouble(self, operation: str, exc: Exception) -> bool:
        """Count a StoreError `exc` against `operation` (it fails the readiness check until
        that operation succeeds again); True when it is worth logging (anything else: always)."""
        if isinstance(exc, StoreError):
            return self.metrics.store_failed(operation, str(exc))
        return True
