"""Digests: an email channel in digest mode sends its pending deliveries as ONE email per
recipient at each scheduled time (a crontab in the config's timezone), instead of one by one.

The outbox stays the source of truth: a digest claims its deliveries, sends, then marks them
sent (all of one email in one transaction), retrying or failed, so an alert is in exactly one
digest that went out (a crash between send and mark may repeat that one email, with the same
Message-ID).

Besides, one time per channel is stored (`Store.last_digest`): the end of the period of the
last digest that was carried out, i.e. every recipient was tried (sent, failed for good, or
kept for a retry). It starts the next digest's period, and tells a start whether a scheduled
digest was missed while the daemon was down. It moves only at the end of a scheduled digest
(or `monitor digest --now`), never backwards, and never:

- by a retry: a recipient whose digest failed is retried alone with backoff (`retry_due`),
  with the alerts it held (alerts never tried wait for the next scheduled digest); the
  period is done for everyone else, so a restart meanwhile sends nobody an extra digest;
- by a digest cut short (crash, or a shutdown past its grace, see `drain`): the next start
  releases the claims it left (`recover`, part of `catch_up`) and sends it, once;
- while any delivery of the channel is still claimed by a digest that did not finish;
- when the channel failed as a whole (login refused: "held"): the next start, or the next
  scheduled time, sends it.

Every run of one channel (scheduled, catch-up, retry, recover) holds that channel's lock from
reading the stored time to writing it, shared by every `Digester` of the process on one store
(a config reload runs a new one beside the old), and the store's `digest_lock` for that
channel, so several workers on one PostgreSQL store send each period once. Runs are tasks
of the Digester's own, so a caller cancelled at shutdown does not cut a digest short; `drain`
waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from monitor.dispatch import retry_delay
from monitor.errors import ChannelError, DeliveryError
from monitor.metrics import Metrics
from monitor.models import ChannelSpec, Delivery, DeliveryPolicy, EmailSettings, Rule
from monitor.notify.email_render import (
    EmailTemplates,
    RenderedEmail,
    TemplateProblem,
    compile_templates,
    render_digest,
)
from monitor.store.protocol import Store

log = logging.getLogger("monitor.digest")

T = TypeVar("T")

#: Deliveries claimed per store round trip (a digest claims until none is left).
BATCH = 500
#: How long a digest's deliveries stay reserved: covers rendering and sending every recipient.
LEASE = timedelta(minutes=10)
#: How far back `previous_run` looks for a scheduled time (a yearly crontab still has one).
LOOKBACK = timedelta(days=366)
#: Most alerts a preview lists (a real digest has no limit).
PREVIEW_LIMIT = 100_000
_TICK = timedelta(microseconds=1)

Outcome = Literal["sent", "failed", "retrying", "held"]


# --- schedules -----------------------------------------------------------------------------------

#: crontab(5) day names, by their number (0 = Sunday); APScheduler knows them by name too.
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_trigger(expr: str, tz: tzinfo) -> CronTrigger:
    """The APScheduler trigger for a standard five-field crontab `expr`, in `tz`.

    Not `CronTrigger.from_crontab`: APScheduler 3 numbers weekdays from Monday = 0, so there
    "0 8 * * 1-5" fires Tuesday to Saturday and "0,7" is refused (agronholm/apscheduler#286).
    The weekday field is read as crontab(5) reads it (0 and 7 are Sunday, names sun-sat,
    ranges, lists, steps) and handed over as day names. The other fields mean the same to
    both. As in APScheduler (unlike crontab, where either suffices), a day of the month and a
    weekday given together must both match. Raises ValueError for an invalid expression.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_weekdays(weekday),
        timezone=tz,
    )


def _weekdays(field: str) -> str:
    """A crontab weekday field as APScheduler day names ("1-5" -> "mon,tue,wed,thu,fri")."""
    days: set[int] = set()
    for part in field.split(","):
        days |= _weekday_part(part, field)
    if days == set(range(7)):
        return "*"
    return ",".join(_WEEKDAYS[d] for d in sorted(days, key=lambda d: (d - 1) % 7))


def _weekday_part(part: str, field: str) -> set[int]:
    """One list element: "*", "3", "mon", "1-5", "sat-sun", each with an optional "/step"
    ("4/2" runs from 4 to the end of the week)."""
    body, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
            raise ValueError(f"invalid step {step_text!r} in the weekday field {field!r}")
        step = int(step_text)
    if body == "*":
        first, last = 0, 6
    elif "-" in body:
        start, _, end = body.partition("-")
        first, last = _weekday(start, field), _weekday(end, field, end=True)
        if last < first:
            raise ValueError(f"the weekday range {body!r} runs backwards (in {field!r})")
    else:
        first = _weekday(body, field)
        last = 7 if slash else first
    return {day % 7 for day in range(first, last + 1, step)}


def _weekday(text: str, field: str, *, end: bool = False) -> int:
    """0-7 (0 and 7 Sunday) or a name; "sun" ending a range is 7, so "sat-sun" works."""
    name = text.strip().lower()
    if name.isascii() and name.isdigit() and int(name) <= 7:
        return int(name)
    if name in _WEEKDAYS:
        number = _WEEKDAYS.index(name)
        return 7 if end and number == 0 else number
    raise ValueError(
        f"invalid weekday {text!r} in {field!r} (0-7, where 0 and 7 are Sunday, or sun-sat)"
    )


# --- reports -------------------------------------------------------------------------------------


class DigestNotifier(Protocol):
    """What a digest needs of an email channel (`monitor.notify.email.EmailNotifier`).

    `send_email` raises `DeliveryError` (retryable, or `permanent=True`), `TargetError` (this
    recipient is refused) or `ChannelError` (the channel itself is broken: SMTP login refused).
    """

    spec: ChannelSpec
    settings: EmailSettings

    async def send_email(self, target: str, rendered: RenderedEmail, message_id: str) -> None: ...

    def message_id(self, kind: str, deliveries: Sequence[Delivery], target: str) -> str: ...


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What became of one recipient's digest."""

    #: The recipient's address (`Delivery.target`).
    target: str
    #: Alerts in the digest (0 for an empty one).
    alerts: int
    #: "sent"; "failed" (for good, reason in `error`); "retrying" (kept pending, retried
    #: later); "held" (the channel failed: kept pending, untried).
    outcome: Outcome
    #: Why it did not go out ("" when it did).
    error: str = ""
    #: With "retrying": alerts of the digest whose attempts ran out, failed for good while
    #: the others are retried.
    gave_up: int = 0

    @property
    def sent(self) -> int:
        return self.alerts if self.outcome == "sent" else 0

    @property
    def failed(self) -> int:
        return self.alerts if self.outcome == "failed" else self.gave_up

    @property
    def retrying(self) -> int:
        return self.alerts - self.gave_up if self.outcome in ("retrying", "held") else 0


@dataclass(frozen=True, slots=True)
class DigestReport:
    """What one digest run did, per recipient (in order of their oldest alert)."""

    channel: str
    #: The end of the period it covered: the scheduled time, or when it was run (for a
    #: retry: the end of the last period carried out).
    until: datetime
    recipients: tuple[RecipientReport, ...]
    #: Every recipient was tried (none held back because the channel failed): for a scheduled
    #: digest, its period is done (the stored last digest time is `until`).
    complete: bool

    @property
    def ok(self) -> bool:
        """Every recipient's digest went out."""
        return all(r.outcome == "sent" for r in self.recipients)


@dataclass(frozen=True, slots=True)
class _Job:
    """One email to send: a recipient's deliveries (none: an empty digest) and its period."""

    target: str
    rows: list[Delivery]
    since: datetime | None
    until: datetime


@dataclass(frozen=True, slots=True)
class _EmptyRetry:
    """An empty digest (`send_empty`) that failed and is tried again; kept in memory only."""

    since: datetime | None
    until: datetime
    attempts: int
    retry_at: datetime


#: One lock per store and channel, shared by every Digester of the process.
_LOCKS: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


class Digester:
    """Runs the digests of the email channels in digest mode among `notifiers` (others are
    ignored). The daemon calls `catch_up` once at start, `run` at each scheduled time,
    `retry_due` every minute, and `drain` at shutdown (see the module docstring).
    """

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, DigestNotifier],
        tz: ZoneInfo,
        policy: DeliveryPolicy,
        clock: Callable[[], datetime],
        rules: Sequence[Rule] = (),
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or Metrics(process=False)
        self._notifiers = {n: x for n, x in notifiers.items() if x.settings.digest is not None}
        self._tz = tz
        self._policy = policy
        self._clock = clock
        self._rules = {r.name: r for r in rules}
        self._rng = rng or random.Random()
        self._triggers: dict[str, CronTrigger] = {}
        self._templates: dict[str, EmailTemplates] = {}
        try:
            self._locks = _LOCKS.setdefault(store, {})
        except TypeError:  # a store that cannot be weakly referenced: this Digester's own
            self._locks = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._empty: dict[tuple[str, str], _EmptyRetry] = {}
        #: channel -> the period of the last digest this Digester carried out, so its retries
        #: show the same heading (after a restart, `_retry_channel` works it out).
        self._periods: dict[str, tuple[datetime | None, datetime]] = {}
        for name, notifier in self._notifiers.items():
            digest = notifier.settings.digest
            assert digest is not None
            self._triggers[name] = cron_trigger(digest.cron, tz)
            self._templates[name] = compile_templates(notifier.settings.templates)

    @property
    def channels(self) -> tuple[str, ...]:
        """The digest channels, in config order."""
        return tuple(self._notifiers)

    def _notifier(self, channel: str) -> DigestNotifier:
        try:
            return self._notifiers[channel]
        except KeyError:
            raise ValueError(
                f"channel {channel!r} is not an email channel in digest mode"
            ) from None

    def _lock(self, channel: str) -> asyncio.Lock:
        return self._locks.setdefault(channel, asyncio.Lock())

    async def _own(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` as a task of this Digester's own: a caller cancelled (the scheduler
        shutting down) does not cut it short, and `drain` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    # --- schedule ------------------------------------------------------------------------------

    def _fire(self, channel: str, at: datetime) -> datetime | None:
        """The first scheduled time at or after `at`."""
        found: datetime | None = self._triggers[channel].get_next_fire_time(None, at)
        return None if found is None else found.astimezone(UTC)

    def next_run(self, channel: str, after: datetime) -> datetime:
        """The first scheduled time strictly after `after` (UTC), so a digest run at its
        scheduled time does not get that time again; `previous_run` covers "at or before"."""
        self._notifier(channel)
        found = self._fire(channel, after + _TICK)
        if found is None:  # a crontab always fires again; APScheduler returns None only at end
            raise ValueError(f"channel {channel!r}: its digest schedule never fires again")
        return found

    def previous_run(self, channel: str, now: datetime) -> datetime | None:
        """The latest scheduled time at or before `now` (UTC), or None if there was none in
        the last `LOOKBACK`. A bisection over start times: ~25 trigger look-ups."""
        self._notifier(channel)
        low = now - LOOKBACK
        first = self._fire(channel, low)
        if first is None or first > now:
            return None
        # Invariant: the fire time from low+lo is <= now; from low+hi it is > now (or none).
        # Scheduled times are whole seconds, so whole-second steps find the last one.
        lo, hi = 0, math.ceil((now - low).total_seconds()) + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            found = self._fire(channel, low + timedelta(seconds=mid))
            if found is not None and found <= now:
                lo = mid
            else:
                hi = mid
        return self._fire(channel, low + timedelta(seconds=lo))

    # --- start and stop ------------------------------------------------------------------------

    async def recover(self) -> int:
        """Release the claims left on the digest channels' deliveries by a digest that never
        finished (a process that crashed or was stopped mid-digest), so the next digest takes
        them at once; returns how many. Only at start: holding the state file (its instance
        lock) or, with several workers, the channel's `digest_lock`, and each channel's lock,
        no live digest can hold them. `catch_up` does it first.
        """
        if self._stopping:
            return 0
        return await self._own(self._recover_all())

    async def _recover_all(self) -> int:
        released = 0
        for channel in self._notifiers:
            async with self._lock(channel), self._store.digest_lock(channel):
                released += await self._recover(channel)
        return released

    async def _recover(self, channel: str) -> int:
        released = await self._store.release_claims(channel)
        if released:
            log.warning(
                "%d deliveries were held by a digest that did not finish; released, they go "
                "out with this channel's next digest",
                released,
                extra={"channel": channel},
            )
        return released

    async def catch_up(self, now: datetime) -> list[DigestReport]:
        """At start: `recover`, then send once, now, each digest whose scheduled time passed
        while the daemon was down (or while a digest cut short left its period open). A
        channel never digested before starts its first period now instead."""
        if self._stopping:
            return []
        return await self._own(self._catch_up(now))

    async def _catch_up(self, now: datetime) -> list[DigestReport]:
        reports: list[DigestReport] = []
        for channel in self._notifiers:
            async with self._lock(channel), self._store.digest_lock(channel):
                await self._recover(channel)
                last = await self._store.last_digest(channel)
                if last is None:
                    await self._store.set_last_digest(channel, now)
                    continue
                missed = self.previous_run(channel, now)
                if missed is None or missed <= last:
                    continue
                log.info(
                    "sending the digest missed at %s",
                    missed.astimezone(self._tz).isoformat(timespec="minutes"),
                    extra={"channel": channel},
                )
                reports.append(await self._digest(channel, now, missed))
        return reports

    async def drain(self, grace: float) -> bool:
        """At shutdown: start no digest any more, and give those running `grace` seconds to
        finish. Any still running then is cancelled: it hands back the deliveries it had not
        marked, and leaves its period open, so the next start sends that digest (an email
        whose send was cut short may then go out twice, with one Message-ID). True when every
        digest finished in time."""
        self._stopping = True
        running = [task for task in self._tasks if not task.done()]
        if not running:
            return True
        _, late = await asyncio.wait(running, timeout=max(grace, 0.0))
        if not late:
            return True
        log.warning(
            "%d digest runs still going after %gs: stopped; their digests go out at the next start",
            len(late),
            grace,
        )
        for task in late:
            task.cancel()
        await asyncio.wait(late)  # each hands its claims back
        return False

    # --- runs ----------------------------------------------------------------------------------

    async def run(
        self, channel: str, now: datetime, *, scheduled: datetime | None = None
    ) -> DigestReport:
        """Send `channel`'s digest: every due pending delivery of its listed recipients, one
        email per recipient, covering the period from the last digest carried out to
        `scheduled` (or `now`: `monitor digest --now`). A scheduled time not after the last
        digest's was carried out already (a catch-up, a `--now`): nothing is sent.

        StoreError propagates (the period then stays open, and the deliveries claimed are
        handed back when the store allows it, at the latest at the next start).
        """
        self._notifier(channel)
        if self._stopping:
            return DigestReport(channel, scheduled or now, (), complete=False)
        return await self._own(self._run(channel, now, scheduled))

    async def _run(self, channel: str, now: datetime, scheduled: datetime | None) -> DigestReport:
        async with self._lock(channel), self._store.digest_lock(channel):
            return await self._digest(channel, now, scheduled)

    async def _digest(
        self, channel: str, now: datetime, scheduled: datetime | None
    ) -> DigestReport:
        """A scheduled (or --now) digest; the channel's lock is held."""
        notifier = self._notifiers[channel]
        settings = notifier.settings
        until = scheduled or now
        since = await self._store.last_digest(channel)
        if scheduled is not None and since is not None and scheduled <= since:
            log.debug("digest of %s sent already", scheduled, extra={"channel": channel})
            return DigestReport(channel, until, (), complete=True)
        rows = await self._claim_all(channel, now)
        try:
            by_target = _by_target(rows)
            if settings.digest is not None and settings.digest.send_empty:
                for target in settings.to:
                    by_target.setdefault(target, [])
            # This digest supersedes any failed empty one still being retried.
            for key in [k for k in self._empty if k[0] == channel]:
                del self._empty[key]
            jobs = [_Job(target, found, since, until) for target, found in by_target.items()]
            reports = await self._send_all(notifier, jobs)
        except BaseException:
            await self._release_quietly(channel, rows)
            raise
        complete = all(r.outcome != "held" for r in reports)
        if complete:
            claimed = await self._store.claimed_count(channel, self._clock())
            if claimed:
                # Held by a run that did not finish: its alerts belong to this period, so
                # the period stays open for the next start (or digest) to send them.
                log.warning(
                    "%d deliveries are held by another digest run; this period stays open",
                    claimed,
                    extra={"channel": channel},
                )
                complete = False
        if complete and (since is None or until > since):
            await self._store.set_last_digest(channel, until)
            self._periods[channel] = (since, until)
        return DigestReport(channel, until, tuple(reports), complete)

    async def retry_due(self, now: datetime) -> list[DigestReport]:
        """Send again the recipients' digests that failed and whose retry time has come: only
        their deliveries (alerts never tried wait for the next scheduled digest), and the
        empty digests that failed. Never moves the stored last digest time."""
        if self._stopping:
            return []
        return await self._own(self._retry_all(now))

    async def _retry_all(self, now: datetime) -> list[DigestReport]:
        reports: list[DigestReport] = []
        for channel in self._notifiers:
            async with self._lock(channel), self._store.digest_lock(channel):
                report = await self._retry_channel(channel, now)
            if report is not None:
                reports.append(report)
        return reports

    async def _retry_channel(self, channel: str, now: datetime) -> DigestReport | None:
        notifier = self._notifiers[channel]
        listed = set(notifier.settings.to)
        empties = {
            t: e
            for (c, t), e in self._empty.items()
            if c == channel and e.retry_at <= now and t in listed
        }
        due = await self._store.retry_due_count(channel, now)
        if not due and not empties:
            return None
        last = await self._store.last_digest(channel)
        until = last or now
        # The period the failed digest covered (for its heading): that of the last digest
        # carried out; after a restart, from the scheduled time before its end.
        since, known = self._periods.get(channel, (None, None))
        if known != last:
            since = self.previous_run(channel, until - _TICK) if last is not None else None
        rows = await self._claim_all(channel, now) if due else []
        try:
            fresh = [d.id for d in rows if d.attempts == 0]
            if fresh:  # never tried: they wait for the next scheduled digest
                await self._store.release_deliveries(fresh)
            jobs = [
                _Job(target, found, since, until)
                for target, found in _by_target([d for d in rows if d.attempts > 0]).items()
            ]
            tried = {job.target for job in jobs}
            jobs += [_Job(t, [], e.since, e.until) for t, e in empties.items() if t not in tried]
            if not jobs:
                return None
            reports = await self._send_all(notifier, jobs)
        except BaseException:
            await self._release_quietly(channel, rows)
            raise
        return DigestReport(
            channel, until, tuple(reports), all(r.outcome != "held" for r in reports)
        )

    async def _claim_all(self, channel: str, now: datetime) -> list[Delivery]:
        """Every due delivery of `channel`, but none for a recipient no longer in `to`: those
        are kept, and sent if the recipient is listed again (like the instant dispatcher)."""
        listed = set(self._notifiers[channel].settings.to)
        pending = await self._store.pending_by_target(channel)
        unlisted = sorted(t for t in pending if t not in listed)
        rows: list[Delivery] = []
        try:
            while batch := await self._store.claim_deliveries(
                channel, now, BATCH, LEASE, skip_targets=unlisted
            ):
                rows.extend(batch)
        except BaseException:
            await self._release_quietly(channel, rows)
            raise
        return rows

    async def _release_quietly(self, channel: str, rows: Sequence[Delivery]) -> None:
        """A run cut short: hand back its claims (sent and failed ones are left alone)."""
        if not rows:
            return
        try:
            await self._store.release_deliveries([d.id for d in rows])
        except Exception as exc:  # the store is failing: the next start releases them
            log.error(
                "could not hand back a digest's deliveries: %s", exc, extra={"channel": channel}
            )

    async def _send_all(
        self, notifier: DigestNotifier, jobs: Sequence[_Job]
    ) -> list[RecipientReport]:
        reports: list[RecipientReport] = []
        broken = ""
        for job in jobs:
            if broken:  # the channel failed: hand the rest back untried
                await self._store.release_deliveries([d.id for d in job.rows])
                reports.append(RecipientReport(job.target, len(job.rows), "held", broken))
                continue
            report = await self._send(notifier, job)
            if report.outcome == "held":
                broken = report.error
            reports.append(report)
        return reports

    async def _send(self, notifier: DigestNotifier, job: _Job) -> RecipientReport:
        """One recipient's digest: render, send, mark its deliveries."""
        channel = notifier.spec.name
        target, rows = job.target, job.rows
        ids = [d.id for d in rows]
        where = {"channel": channel, "target": target}
        try:
            rendered = await self._render(notifier, rows, job.since, job.until)
            message_id = self._message_id(notifier, rows, target, job.until)
            await notifier.send_email(target, rendered, message_id)
        except ChannelError as exc:
            self._metrics.attempted(channel, "held")
            log.error("digest of %d alerts held, channel broken: %s", len(rows), exc, extra=where)
            await self._store.release_deliveries(ids)
            return RecipientReport(target, len(rows), "held", str(exc))
        except DeliveryError as exc:
            if exc.permanent:  # TargetError included: this recipient refuses it
                self._metrics.attempted(channel, "failed")
                return await self._fail(channel, rows, target, str(exc))
            self._metrics.attempted(channel, "throttled" if exc.retry_after else "retry")
            return await self._retry(channel, job, str(exc), exc.retry_after)
        except Exception as exc:  # a template or notifier bug must not lose the alerts
            self._metrics.attempted(channel, "retry")
            log.exception("digest crashed", extra=where)
            return await self._retry(channel, job, f"internal error: {type(exc).__name__}: {exc}")
        self._metrics.attempted(channel, "sent")
        sent_at = self._clock()
        await self._store.mark_sent_many(ids, sent_at)
        self._metrics.delivered(channel, [d.alert for d in rows], sent_at)
        self._metrics.store_ok("digest")
        self._empty.pop((channel, target), None)
        log.info("digest of %d alerts sent", len(rows), extra=where)
        return RecipientReport(target, len(rows), "sent")

    async def _render(
        self,
        notifier: DigestNotifier,
        rows: Sequence[Delivery],
        since: datetime | None,
        until: datetime,
    ) -> RenderedEmail:
        """The digest email, rendered off the event loop (a digest may list thousands of
        alerts); the built-in templates when the user's fail on these alerts (they passed
        the check at load, but a value can still be missing): the digest goes out."""
        channel = notifier.spec.name
        alerts = [d.alert for d in rows]

        def render(templates: EmailTemplates) -> RenderedEmail:
            return render_digest(
                alerts,
                channel,
                self._tz,
                templates,
                since=since,
                until=until,
                rules=self._rules,
                subject_prefix=notifier.settings.subject_prefix,
            )

        def render_either() -> RenderedEmail:
            try:
                return render(self._templates[channel])
            except TemplateProblem as exc:
                log.error(
                    "the channel's digest template failed (%s); sent with the built-in one",
                    exc,
                    extra={"channel": channel},
                )
                return render(compile_templates({}))

        return await asyncio.to_thread(render_either)

    def _message_id(
        self, notifier: DigestNotifier, rows: Sequence[Delivery], target: str, until: datetime
    ) -> str:
        # Stable over the deliveries, so a digest sent again after a crash is the same
        # message; an empty digest has none, so its period's end tells it apart.
        kind = "digest" if rows else f"digest-empty-{until:%Y%m%d%H%M%S}"
        return notifier.message_id(kind, rows, target)

    async def _fail(
        self, channel: str, rows: Sequence[Delivery], target: str, error: str
    ) -> RecipientReport:
        now = self._clock()
        for delivery in rows:
            await self._store.mark_failed(delivery.id, error, now=now)
        self._metrics.failed(channel, len(rows))
        self._empty.pop((channel, target), None)
        log.error("digest failed for good: %s", error, extra={"channel": channel, "target": target})
        return RecipientReport(target, len(rows), "failed", error)

    async def _retry(
        self, channel: str, job: _Job, error: str, retry_after: float | None = None
    ) -> RecipientReport:
        """Keep the digest's deliveries pending, all due again at one time, so the retry
        sends them together. Each delivery counts its own attempts: one whose attempts ran
        out (an old alert that failed in earlier digests) fails for good, the others wait."""
        where = {"channel": channel, "target": job.target}
        now = self._clock()
        if not job.rows:
            return self._retry_empty(channel, job, error, retry_after, now)
        limit = self._policy.max_attempts
        spent = [d for d in job.rows if d.attempts + 1 >= limit]
        kept = [d for d in job.rows if d.attempts + 1 < limit]
        for delivery in spent:
            gave_up = f"gave up after {delivery.attempts + 1} attempts: {error}"
            await self._store.mark_failed(delivery.id, gave_up, now=now)
        self._metrics.failed(channel, len(spent))
        if spent:
            log.error(
                "%d alerts of the digest failed for good, their attempts ran out: %s",
                len(spent),
                error,
                extra=where,
            )
        if not kept:
            most = max(d.attempts for d in spent) + 1
            return RecipientReport(
                job.target, len(job.rows), "failed", f"gave up after {most} attempts: {error}"
            )
        attempts = max(d.attempts for d in kept) + 1
        retry_at = now + self._delay(attempts, retry_after)
        for delivery in kept:
            await self._store.mark_retry(delivery.id, error, now=now, retry_at=retry_at)
        self._metrics.retried(channel, len(kept))
        log.warning(
            "digest failed, will retry at %s: %s",
            retry_at.isoformat(timespec="seconds"),
            error,
            extra={**where, "attempt": attempts},
        )
        return RecipientReport(job.target, len(job.rows), "retrying", error, gave_up=len(spent))

    def _retry_empty(
        self, channel: str, job: _Job, error: str, retry_after: float | None, now: datetime
    ) -> RecipientReport:
        """An empty digest that failed: tried again by `retry_due` with backoff, like one
        with alerts, but remembered in memory only (a restart forgets it)."""
        where = {"channel": channel, "target": job.target}
        key = (channel, job.target)
        previous = self._empty.get(key)
        attempts = (previous.attempts if previous is not None else 0) + 1
        if attempts >= self._policy.max_attempts:
            self._empty.pop(key, None)
            gave_up = f"gave up after {attempts} attempts: {error}"
            log.error("empty digest failed for good: %s", gave_up, extra=where)
            return RecipientReport(job.target, 0, "failed", gave_up)
        retry_at = now + self._delay(attempts, retry_after)
        self._empty[key] = _EmptyRetry(job.since, job.until, attempts, retry_at)
        log.warning(
            "empty digest failed, will retry at %s: %s",
            retry_at.isoformat(timespec="seconds"),
            error,
            extra={**where, "attempt": attempts},
        )
        return RecipientReport(job.target, 0, "retrying", error)

    def _delay(self, attempts: int, retry_after: float | None) -> timedelta:
        delay = retry_delay(attempts, self._policy, self._rng)
        if retry_after is not None:
            delay = max(delay, timedelta(seconds=retry_after))
        return delay

    # --- preview -------------------------------------------------------------------------------

    async def preview(self, channel: str, now: datetime, path: Path) -> int:
        """Write to `path` the HTML of the digest the first recipient would get from a run
        now: the same deliveries a run would claim (due, so not those waiting for a retry);
        claim and mark nothing. Returns how many alerts it lists."""
        notifier = self._notifier(channel)
        target = notifier.settings.to[0]
        others = [t for t in await self._store.pending_by_target(channel) if t != target]
        rows = await self._store.due_deliveries(channel, now, PREVIEW_LIMIT, skip_targets=others)
        since = await self._store.last_digest(channel)
        rendered = await self._render(notifier, rows, since, now)
        await asyncio.to_thread(path.write_text, rendered.html, encoding="utf-8")
        return len(rows)


def _by_target(rows: Sequence[Delivery]) -> dict[str, list[Delivery]]:
    """The deliveries per recipient, in order of first appearance, each oldest first."""
    found: dict[str, list[Delivery]] = {}
    for delivery in rows:
        found.setdefault(delivery.target, []).append(delivery)
    return found
