"""The dispatcher: sends pending deliveries from the outbox, one channel at a time each.

Every delivery is marked in the store as soon as its send returns, so a crash repeats at most
the one message that was in flight per channel. Channels run concurrently and independently:
a slow or broken channel never holds up another.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.errors import ChannelError, DeliveryError, StoreError, TargetError
from monitor.metrics import Metrics
from monitor.models import Delivery, DeliveryPolicy
from monitor.notify.protocol import GroupingNotifier, Notifier
from monitor.store.protocol import Store

log = logging.getLogger("monitor.dispatch")

#: Deliveries claimed per store round trip, per destination of the channel.
BATCH = 20
#: At most this many in one claim, however many destinations.
MAX_BATCH = 400
#: How long a claimed delivery stays reserved; covers the slowest send with margin.
LEASE = timedelta(minutes=2)


def retry_delay(attempts: int, policy: DeliveryPolicy, rng: random.Random) -> timedelta:
    """Exponential backoff with ±20% jitter: base, 2×base, 4×base… capped at `retry_cap`."""
    base = policy.retry_base.total_seconds() * 2 ** min(max(attempts - 1, 0), 30)
    seconds = min(base, policy.retry_cap.total_seconds()) * rng.uniform(0.8, 1.2)
    return timedelta(seconds=seconds)


@dataclass
class DispatchStats:
    """What one dispatch pass did, per outcome."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """Sends due deliveries for every channel it has a notifier for.

    `run_once()` drains what is due now and returns; the daemon calls it on a short interval.
    Pauses, all in memory (a restart or a config change tries again):
    - a channel that raised `ChannelError` is paused as a whole; its deliveries stay pending;
    - a destination (`Delivery.target`, e.g. one Telegram chat) that raised `TargetError` is
      paused, its delivery failed, its later ones kept pending; the channel's other
      destinations go on;
    - a `retry_after` hint pauses that destination until the hinted time, then it resumes
      with the same delivery; nothing is counted as failed.
    A grouping notifier (`GroupingNotifier`) gets the deliveries due at once for one target as
    one grouped message when there are more than its `group_threshold`.
    """

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        policy: DeliveryPolicy,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or Metrics(process=False)
        self._notifiers = dict(notifiers)
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._resume_at: dict[tuple[str, str], datetime] = {}
        #: Channels paused as a whole: name -> why.
        self.paused: dict[str, str] = {}
        #: Destinations paused until the config changes: (channel, target) -> why.
        self.blocked: dict[tuple[str, str], str] = {}
        #: Destinations whose grouped message was refused: sent one by one.
        self._ungrouped: set[tuple[str, str]] = set()
        self._stopping = False

    def stop(self) -> None:
        """Finish the send in flight on each channel, then claim nothing more."""
        self._stopping = True

    @property
    def channels(self) -> list[str]:
        """The channels it sends for (instant ones: digest channels are the Digester's)."""
        return list(self._notifiers)

    async def skipped_targets(self, channel: str) -> list[str]:
        """Destinations of `channel` it claims nothing for now: paused, waiting out a "retry
        after", or no longer listed by the channel."""
        return self._skipped(channel) + await self._unlisted(self._notifiers[channel])

    def waiting(self, channel: str) -> dict[str, datetime]:
        """Destinations of `channel` waiting out a "retry after" hint: target -> until when."""
        now = self._clock()
        return {t: at for (c, t), at in self._resume_at.items() if c == channel and at > now}

    async def run_once(self) -> DispatchStats:
        stats = DispatchStats()
        done = await asyncio.gather(*(self._drain(name, stats) for name in self._notifiers))
        if all(done):  # every claim and mark went through (also when nothing was due)
            self._metrics.store_ok("dispatch")
        return stats

    async def _drain(self, channel: str, stats: DispatchStats) -> bool:
        """Send what is due on `channel`; False when the store failed it."""
        try:
            await self._drain_channel(channel, stats)
        except StoreError as exc:  # stop this channel's pass; the next one retries
            if self._metrics.store_failed("dispatch", str(exc)):
                log.error("dispatch stopped: %s", exc, extra={"channel": channel})
            else:  # the same trouble every second: said once a minute, else quietly
                log.debug("dispatch stopped: %s", exc, extra={"channel": channel})
            return False
        except Exception:  # a bug: stop this channel's pass; the next one retries
            log.exception("dispatch stopped for this pass", extra={"channel": channel})
        return True

    async def _drain_channel(self, channel: str, stats: DispatchStats) -> None:
        notifier = self._notifiers[channel]
        unlisted = await self._unlisted(notifier)
        while not self._stopping and channel not in self.paused:
            # Rows come oldest first across all destinations: claim enough that each of them
            # gets a full batch, so a burst to several chats still shows as a burst per chat.
            size = min(BATCH * max(1, len(notifier.spec.targets)), MAX_BATCH)
            claimed_at = self._clock()
            batch = await self._store.claim_deliveries(
                channel, claimed_at, size, LEASE, skip_targets=self._skipped(channel) + unlisted
            )
            if not batch:
                return
            for target, rows in _by_target(batch).items():
                claimed_at = await self._drain_target(
                    notifier, channel, target, rows, stats, claimed_at
                )

    async def _drain_target(
        self,
        notifier: Notifier,
        channel: str,
        target: str,
        rows: list[Delivery],
        stats: DispatchStats,
        claimed_at: datetime,
    ) -> datetime:
        """Send `rows` (claimed at `claimed_at`); returns when their claim was last renewed.

        A batch can take longer than its lease to send (pacing, slow servers): past half the
        lease, the claim of what is left is renewed before the next message, and rows
        another worker took meanwhile (the lease ran out) are not sent here."""
        threshold = notifier.group_threshold if isinstance(notifier, GroupingNotifier) else 0
        group = 0 < threshold < len(rows) and (channel, target) not in self._ungrouped
        while rows:
            if self._stopping or not self._ready(channel, target):
                # Hand back what was claimed but not tried, so it is not held by a lease.
                await self._store.release_deliveries([d.id for d in rows])
                return claimed_at
            now = self._clock()
            if now - claimed_at > LEASE / 2:
                kept = set(await self._store.extend_claims([d.id for d in rows], now, LEASE))
                claimed_at = now
                if len(kept) < len(rows):
                    log.warning(
                        "%d deliveries were taken over by another worker (their claim ran "
                        "out while this one sent others); left to it",
                        len(rows) - len(kept),
                        extra={"channel": channel, "target": target or None},
                    )
                    rows = [d for d in rows if d.id in kept]
                    continue
            done = await self._attempt(notifier, rows if group else rows[:1], stats)
            rows = rows[done:]
        return claimed_at

    async def _unlisted(self, notifier: Notifier) -> list[str]:
        """Destinations with pending deliveries that the channel no longer lists (a chat
        removed from the config): kept, never sent there (the daemon warns at start)."""
        listed = notifier.spec.targets
        if not listed:
            return []
        pending = await self._store.pending_by_target(notifier.spec.name)
        return sorted(t for t in pending if t not in listed)

    def _skipped(self, channel: str) -> list[str]:
        now = self._clock()
        return sorted(
            {t for (c, t) in self.blocked if c == channel}
            | {t for (c, t), at in self._resume_at.items() if c == channel and at > now}
        )

    def _ready(self, channel: str, target: str) -> bool:
        if channel in self.paused or (channel, target) in self.blocked:
            return False
        resume = self._resume_at.get((channel, target))
        return resume is None or resume <= self._clock()

    async def _attempt(self, notifier: Notifier, rows: list[Delivery], stats: DispatchStats) -> int:
        """One message for `rows` (one delivery, or a group); returns how many it settled."""
        first = rows[0]
        channel, target = first.channel, first.target
        where = {"channel": channel, "delivery": first.id, "target": target or None}
        try:
            if len(rows) == 1:
                await notifier.send(first)
                done = 1
            else:
                assert isinstance(notifier, GroupingNotifier)
                done = max(1, min(await notifier.send_group(rows), len(rows)))
        except ChannelError as exc:
            # The channel, not this alert, is broken: keep the deliveries pending so they go
            # out once the channel is fixed (config change and restart).
            self._metrics.attempted(channel, "held")
            self.paused[channel] = str(exc)
            log.error("channel paused until its config changes: %s", exc, extra=where)
            await self._store.release_deliveries([d.id for d in rows])
            return len(rows)
        except TargetError as exc:
            # The destination refused: the first alert fails with the reason, the others
            # stay pending for when it is fixed (the paused target is not claimed).
            self._metrics.attempted(channel, "failed")
            self.blocked[channel, target] = str(exc)
            log.error("destination paused until the config changes: %s", exc, extra=where)
            await self._fail(first, str(exc), stats)
            await self._store.release_deliveries([d.id for d in rows[1:]])
            return len(rows)
        except DeliveryError as exc:
            if exc.permanent and len(rows) > 1:
                # The grouped message itself was refused, not these alerts: send them one by
                # one from now on for this destination (all of them go again: a retry).
                self._metrics.attempted(channel, "retry")
                self._ungrouped.add((channel, target))
                log.warning("grouped message refused (%s); sending one by one", exc, extra=where)
                await self._store.release_deliveries([d.id for d in rows])
                return len(rows)
            outcome = "failed" if exc.permanent else "retry"
            self._metrics.attempted(channel, "throttled" if exc.retry_after else outcome)
            for delivery in rows:
                if exc.permanent:
                    await self._fail(delivery, str(exc), stats)
                else:
                    await self._retry(delivery, str(exc), exc.retry_after, stats)
            return len(rows)
        except Exception as exc:  # a notifier bug must not lose the alert
            self._metrics.attempted(channel, "retry")
            log.exception("notifier crashed", extra=where)
            error = f"internal error: {type(exc).__name__}: {exc}"
            for delivery in rows:
                await self._retry(delivery, error, None, stats)
            return len(rows)
        self._metrics.attempted(channel, "sent")
        now = self._clock()
        for delivery in rows[:done]:
            await self._store.mark_sent(delivery.id, now)
            self._metrics.delivered(channel, [delivery.alert], now)
        stats.sent += done
        stats.by_channel[channel] = stats.by_channel.get(channel, 0) + done
        if done > 1:
            log.info("sent %d alerts as one grouped message", done, extra=where)
        else:
            log.debug("delivery sent", extra=where)
        return done

    async def _retry(
        self, delivery: Delivery, error: str, retry_after: float | None, stats: DispatchStats
    ) -> None:
        now = self._clock()
        where = {"channel": delivery.channel, "delivery": delivery.id}
        if retry_after is not None:
            # "Slow down" is not a failure of this alert: wait exactly as asked, count nothing.
            retry_at = now + timedelta(seconds=retry_after)
            self._resume_at[delivery.channel, delivery.target] = retry_at
            await self._store.mark_retry(
                delivery.id, error, now=now, retry_at=retry_at, attempt=False
            )
            self._metrics.retried(delivery.channel)
            stats.retried += 1
            log.warning("channel asked to wait %gs: %s", retry_after, error, extra=where)
            return
        attempts = delivery.attempts + 1
        if attempts >= self._policy.max_attempts:
            await self._fail(delivery, f"gave up after {attempts} attempts: {error}", stats)
            return
        retry_at = now + retry_delay(attempts, self._policy, self._rng)
        await self._store.mark_retry(delivery.id, error, now=now, retry_at=retry_at)
        self._metrics.retried(delivery.channel)
        stats.retried += 1
        log.warning(
            "delivery failed, will retry at %s: %s",
            retry_at.isoformat(timespec="seconds"),
            error,
            extra={**where, "attempt": attempts},
        )

    async def _fail(self, delivery: Delivery, error: str, stats: DispatchStats) -> None:
        await self._store.mark_failed(delivery.id, error, now=self._clock())
        self._metrics.failed(delivery.channel)
        stats.failed += 1
        log.error(
            "delivery failed for good: %s",
            error,
            extra={"channel": delivery.channel, "delivery": delivery.id},
        )


def _by_target(batch: list[Delivery]) -> dict[str, list[Delivery]]:
    """The batch per destination, in order of first appearance, each oldest first."""
    found: dict[str, list[Delivery]] = {}
    for delivery in batch:
        found.setdefault(delivery.target, []).append(delivery)
    return found
