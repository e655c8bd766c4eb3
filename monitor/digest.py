"""Digests: an email channel in digest mode sends its pending deliveries as ONE email per
recipient at each scheduled time (a crontab in the config's timezone), instead of one by one.

The outbox stays the source of truth: a digest claims its deliveries, sends, then marks each
one sent, retrying or failed, so an alert is in exactly one digest that went out (a crash
between send and mark may repeat that one digest, with the same Message-ID). The time of the
last complete digest is stored per channel: it starts each digest's period and tells a start
whether a scheduled digest was missed while the daemon was down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from monitor.dispatch import retry_delay
from monitor.errors import ChannelError, DeliveryError
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

#: Deliveries claimed per store round trip (a digest claims until none is left).
BATCH = 500
#: How long a digest's deliveries stay reserved: covers rendering and sending every recipient.
LEASE = timedelta(minutes=10)
#: How far back `previous_run` looks for a scheduled time (a yearly crontab still has one).
LOOKBACK = timedelta(days=366)

Outcome = Literal["sent", "failed", "retrying", "held"]


class DigestNotifier(Protocol):
    """What a digest needs of an email channel (`monitor.notify.email.EmailNotifier`).

    `send_email` raises `DeliveryError` (retryable, or `permanent=True`), `TargetError` (this
    recipient is refused) or `ChannelError` (the channel itself is broken: SMTP login refused).
    """

    spec: ChannelSpec
    settings: EmailSettings

    async def send_email(self, target: str, rendered: RenderedEmail, message_id: str) -> None: ...

    def message_id(self, kind: str, ids: Sequence[int], target: str) -> str: ...


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

    @property
    def sent(self) -> int:
        return self.alerts if self.outcome == "sent" else 0

    @property
    def failed(self) -> int:
        return self.alerts if self.outcome == "failed" else 0

    @property
    def retrying(self) -> int:
        return self.alerts if self.outcome in ("retrying", "held") else 0


@dataclass(frozen=True, slots=True)
class DigestReport:
    """What one digest run did, per recipient (in order of their oldest alert)."""

    channel: str
    #: The end of the period it covered: the scheduled time, or when it was run.
    until: datetime
    recipients: tuple[RecipientReport, ...]
    #: Every recipient's digest went out or was settled, so the period is closed (the stored
    #: last digest time moved to `until`).
    complete: bool

    @property
    def ok(self) -> bool:
        """Every recipient's digest went out."""
        return all(r.outcome == "sent" for r in self.recipients)


class Digester:
    """Runs the digests of the email channels in digest mode among `notifiers` (others are
    ignored). The daemon calls `catch_up` once at start, `run` at each `next_run` time, and
    `retry_due` every minute; calls for one channel are serialised.
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
    ) -> None:
        self._store = store
        self._notifiers = {n: x for n, x in notifiers.items() if x.settings.digest is not None}
        self._tz = tz
        self._policy = policy
        self._clock = clock
        self._rules = {r.name: r for r in rules}
        self._rng = rng or random.Random()
        self._triggers: dict[str, CronTrigger] = {}
        self._templates: dict[str, EmailTemplates] = {}
        self._locks = {name: asyncio.Lock() for name in self._notifiers}
        for name, notifier in self._notifiers.items():
            digest = notifier.settings.digest
            assert digest is not None
            self._triggers[name] = CronTrigger.from_crontab(digest.cron, timezone=tz)
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

    # --- schedule ------------------------------------------------------------------------------

    def _fire(self, channel: str, at: datetime) -> datetime | None:
        """The first scheduled time at or after `at`."""
        found: datetime | None = self._triggers[channel].get_next_fire_time(None, at)
        return None if found is None else found.astimezone(UTC)

    def next_run(self, channel: str, after: datetime) -> datetime:
        """The first scheduled time strictly after `after` (UTC), so a digest run at its
        scheduled time does not get that time again; `previous_run` covers "at or before"."""
        self._notifier(channel)
        found = self._fire(channel, after + timedelta(microseconds=1))
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

    # --- runs ----------------------------------------------------------------------------------

    async def catch_up(self, now: datetime) -> list[DigestReport]:
        """At start: send once, now, each digest whose scheduled time passed while the daemon
        was down. A channel never digested before starts its first period now instead."""
        reports: list[DigestReport] = []
        for channel in self._notifiers:
            last = await self._store.last_digest(channel)
            if last is None:
                await self._store.set_last_digest(channel, now)
                continue
            missed = self.previous_run(channel, now)
            if missed is not None and missed > last:
                log.info(
                    "sending the digest missed at %s",
                    missed.astimezone(self._tz).isoformat(timespec="minutes"),
                    extra={"channel": channel},
                )
                reports.append(await self.run(channel, now, scheduled=missed))
        return reports

    async def retry_due(self, now: datetime) -> list[DigestReport]:
        """Send again the digests that failed and whose retry time has come (only their
        deliveries: alerts never tried wait for the next scheduled digest)."""
        reports: list[DigestReport] = []
        for channel in self._notifiers:
            if await self._store.retry_due_count(channel, now):
                # The failed digest was the last scheduled one, unless the period had been
                # closed after it (a failed `monitor digest --now`): then it ends now.
                last = await self._store.last_digest(channel)
                scheduled = self.previous_run(channel, now)
                if scheduled is not None and last is not None and scheduled <= last:
                    scheduled = None
                reports.append(await self.run(channel, now, scheduled=scheduled, retrying=True))
        return reports

    async def run(
        self,
        channel: str,
        now: datetime,
        *,
        scheduled: datetime | None = None,
        retrying: bool = False,
    ) -> DigestReport:
        """Send `channel`'s digest: every due pending delivery, one email per recipient,
        covering the period from the last complete digest to `scheduled` (or `now`).

        With `retrying`, only deliveries tried before are sent (a failed digest, again), and
        no empty digest. The last digest time moves to the period's end only when every
        recipient's digest went out or was settled. StoreError propagates (deliveries claimed
        then stay reserved until their lease runs out).
        """
        notifier = self._notifier(channel)
        async with self._locks[channel]:
            until = scheduled or now
            since = await self._store.last_digest(channel)
            rows = await self._claim_all(channel, now)
            if retrying:
                await self._store.release_deliveries([d.id for d in rows if d.attempts == 0])
                rows = [d for d in rows if d.attempts > 0]
            by_target = _by_target(rows)
            settings = notifier.settings
            if not retrying and settings.digest is not None and settings.digest.send_empty:
                for target in settings.to:
                    by_target.setdefault(target, [])
            reports = await self._send_all(notifier, by_target, since, until)
            complete = all(r.outcome in ("sent", "failed") for r in reports)
            if complete and (since is None or until > since):
                await self._store.set_last_digest(channel, until)
            return DigestReport(channel, until, tuple(reports), complete)

    async def _claim_all(self, channel: str, now: datetime) -> list[Delivery]:
        rows: list[Delivery] = []
        while batch := await self._store.claim_deliveries(channel, now, BATCH, LEASE):
            rows.extend(batch)
        return rows

    async def _send_all(
        self,
        notifier: DigestNotifier,
        by_target: Mapping[str, list[Delivery]],
        since: datetime | None,
        until: datetime,
    ) -> list[RecipientReport]:
        reports: list[RecipientReport] = []
        broken = ""
        for target, rows in by_target.items():
            if broken:  # the channel failed: hand the rest back untried
                await self._store.release_deliveries([d.id for d in rows])
                reports.append(RecipientReport(target, len(rows), "held", broken))
                continue
            report = await self._send(notifier, target, rows, since, until)
            if report.outcome == "held":
                broken = report.error
            reports.append(report)
        return reports

    async def _send(
        self,
        notifier: DigestNotifier,
        target: str,
        rows: list[Delivery],
        since: datetime | None,
        until: datetime,
    ) -> RecipientReport:
        """One recipient's digest: render, send, mark its deliveries."""
        channel = notifier.spec.name
        ids = [d.id for d in rows]
        where = {"channel": channel, "target": target}
        try:
            rendered = self._render(notifier, rows, since, until)
            await notifier.send_email(
                target, rendered, self._message_id(notifier, ids, target, until)
            )
        except ChannelError as exc:
            log.error("digest of %d alerts held, channel broken: %s", len(rows), exc, extra=where)
            await self._store.release_deliveries(ids)
            return RecipientReport(target, len(rows), "held", str(exc))
        except DeliveryError as exc:
            if exc.permanent:  # TargetError included: this recipient refuses it
                return await self._fail(rows, target, str(exc))
            return await self._retry(rows, target, str(exc), exc.retry_after)
        except Exception as exc:  # a template or notifier bug must not lose the alerts
            log.exception("digest crashed", extra=where)
            return await self._retry(rows, target, f"internal error: {type(exc).__name__}: {exc}")
        now = self._clock()
        for delivery_id in ids:
            await self._store.mark_sent(delivery_id, now)
        log.info("digest of %d alerts sent", len(rows), extra=where)
        return RecipientReport(target, len(rows), "sent")

    def _render(
        self,
        notifier: DigestNotifier,
        rows: Sequence[Delivery],
        since: datetime | None,
        until: datetime,
    ) -> RenderedEmail:
        """The digest email; the built-in templates when the user's fail on these alerts (they
        passed the check at load, but a value can still be missing): the digest goes out."""
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

        try:
            return render(self._templates[channel])
        except TemplateProblem as exc:
            log.error(
                "the channel's digest template failed (%s); sent with the built-in one",
                exc,
                extra={"channel": channel},
            )
            return render(compile_templates({}))

    def _message_id(
        self, notifier: DigestNotifier, ids: Sequence[int], target: str, until: datetime
    ) -> str:
        # Stable over the delivery ids, so a digest sent again after a crash is the same
        # message; an empty digest has none, so its period's end tells it apart.
        kind = "digest" if ids else f"digest-empty-{until:%Y%m%d%H%M%S}"
        return notifier.message_id(kind, ids, target)

    async def _fail(self, rows: list[Delivery], target: str, error: str) -> RecipientReport:
        now = self._clock()
        for delivery in rows:
            await self._store.mark_failed(delivery.id, error, now=now)
        where = {"channel": rows[0].channel if rows else "", "target": target}
        log.error("digest failed for good: %s", error, extra=where)
        return RecipientReport(target, len(rows), "failed", error)

    async def _retry(
        self, rows: list[Delivery], target: str, error: str, retry_after: float | None = None
    ) -> RecipientReport:
        """Keep the digest's deliveries pending, all due again at one time, so the retry
        sends them together; give up after `max_attempts`."""
        attempts = max((d.attempts for d in rows), default=0) + 1
        if rows and attempts >= self._policy.max_attempts:
            return await self._fail(rows, target, f"gave up after {attempts} attempts: {error}")
        now = self._clock()
        delay = retry_delay(attempts, self._policy, self._rng)
        if retry_after is not None:
            delay = max(delay, timedelta(seconds=retry_after))
        retry_at = now + delay
        for delivery in rows:
            await self._store.mark_retry(delivery.id, error, now=now, retry_at=retry_at)
        where = {"channel": rows[0].channel if rows else "", "target": target}
        log.warning(
            "digest failed, will retry at %s: %s",
            retry_at.isoformat(timespec="seconds"),
            error,
            extra={**where, "attempt": attempts},
        )
        return RecipientReport(target, len(rows), "retrying", error)

    # --- preview -------------------------------------------------------------------------------

    async def preview(self, channel: str, now: datetime, path: Path) -> int:
        """Write to `path` the HTML of the digest the first recipient would get now (every
        pending delivery, due or waiting for a retry); claim and mark nothing. Returns how
        many alerts it lists."""
        notifier = self._notifier(channel)
        target = notifier.settings.to[0]
        pending = await self._store.deliveries(channel, "pending", limit=10_000)
        rows = [d for d in reversed(pending) if d.target == target]  # oldest first, as claimed
        since = await self._store.last_digest(channel)
        rendered = self._render(notifier, rows, since, now)
        await asyncio.to_thread(path.write_text, rendered.html, encoding="utf-8")
        return len(rows)


def _by_target(rows: Sequence[Delivery]) -> dict[str, list[Delivery]]:
    """The deliveries per recipient, in order of first appearance, each oldest first."""
    found: dict[str, list[Delivery]] = {}
    for delivery in rows:
        found.setdefault(delivery.target, []).append(delivery)
    return found
