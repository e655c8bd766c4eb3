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

from monitor.errors import ChannelError, DeliveryError
from monitor.models import Delivery, DeliveryPolicy
from monitor.notify.protocol import Notifier
from monitor.store.protocol import Store

log = logging.getLogger("monitor.dispatch")

#: Deliveries claimed per store round trip.
BATCH = 20
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
    A channel that raised `ChannelError` is paused until the process restarts with a changed
    config; its remaining deliveries stay pending (nothing is lost). A `retry_after` hint
    pauses that channel until the hinted time.
    """

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        policy: DeliveryPolicy,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._notifiers = dict(notifiers)
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._resume_at: dict[str, datetime] = {}
        self.paused: dict[str, str] = {}
        self._stopping = False

    def stop(self) -> None:
        """Finish the send in flight on each channel, then claim nothing more."""
        self._stopping = True

    async def run_once(self) -> DispatchStats:
        stats = DispatchStats()
        await asyncio.gather(*(self._drain(name, stats) for name in self._notifiers))
        return stats

    async def _drain(self, channel: str, stats: DispatchStats) -> None:
        try:
            await self._drain_channel(channel, stats)
        except Exception:  # the store failed: stop this channel's pass; the next one retries
            log.exception("dispatch stopped for this pass", extra={"channel": channel})

    async def _drain_channel(self, channel: str, stats: DispatchStats) -> None:
        while not self._stopping and self._ready(channel):
            batch = await self._store.claim_deliveries(channel, self._clock(), BATCH, LEASE)
            if not batch:
                return
            for i, delivery in enumerate(batch):
                if self._stopping or not self._ready(channel):
                    # Hand back what was claimed but not tried, so it is not held by a lease.
                    await self._store.release_deliveries([d.id for d in batch[i:]])
                    return
                await self._send(self._notifiers[channel], delivery, stats)

    def _ready(self, channel: str) -> bool:
        if channel in self.paused:
            return False
        resume = self._resume_at.get(channel)
        return resume is None or resume <= self._clock()

    async def _send(self, notifier: Notifier, delivery: Delivery, stats: DispatchStats) -> None:
        channel = delivery.channel
        try:
            await notifier.send(delivery)
        except ChannelError as exc:
            # The channel, not this alert, is broken: keep the delivery pending so it goes out
            # once the channel is fixed (config change and restart).
            self.paused[channel] = str(exc)
            log.error(
                "channel paused until its config changes: %s",
                exc,
                extra={"channel": channel, "delivery": delivery.id},
            )
            await self._store.release_deliveries([delivery.id])
        except DeliveryError as exc:
            if exc.permanent:
                await self._fail(delivery, str(exc), stats)
            else:
                await self._retry(delivery, str(exc), exc.retry_after, stats)
        except Exception as exc:  # a notifier bug must not lose the alert
            log.exception("notifier crashed", extra={"channel": channel, "delivery": delivery.id})
            await self._retry(delivery, f"internal error: {type(exc).__name__}: {exc}", None, stats)
        else:
            await self._store.mark_sent(delivery.id, self._clock())
            stats.sent += 1
            stats.by_channel[channel] = stats.by_channel.get(channel, 0) + 1
            log.debug("delivery sent", extra={"channel": channel, "delivery": delivery.id})

    async def _retry(
        self, delivery: Delivery, error: str, retry_after: float | None, stats: DispatchStats
    ) -> None:
        now = self._clock()
        if retry_after is not None:
            # "Slow down" is not a failure of this alert: wait exactly as asked, count nothing.
            retry_at = now + timedelta(seconds=retry_after)
            self._resume_at[delivery.channel] = retry_at
            await self._store.mark_retry(
                delivery.id, error, now=now, retry_at=retry_at, attempt=False
            )
            stats.retried += 1
            log.warning(
                "channel asked to wait %gs: %s",
                retry_after,
                error,
                extra={"channel": delivery.channel, "delivery": delivery.id},
            )
            return
        attempts = delivery.attempts + 1
        if attempts >= self._policy.max_attempts:
            await self._fail(delivery, f"gave up after {attempts} attempts: {error}", stats)
            return
        retry_at = now + retry_delay(attempts, self._policy, self._rng)
        await self._store.mark_retry(delivery.id, error, now=now, retry_at=retry_at)
        stats.retried += 1
        log.warning(
            "delivery failed, will retry at %s: %s",
            retry_at.isoformat(timespec="seconds"),
            error,
            extra={"channel": delivery.channel, "delivery": delivery.id, "attempt": attempts},
        )

    async def _fail(self, delivery: Delivery, error: str, stats: DispatchStats) -> None:
        await self._store.mark_failed(delivery.id, error, now=self._clock())
        stats.failed += 1
        log.error(
            "delivery failed for good: %s",
            error,
            extra={"channel": delivery.channel, "delivery": delivery.id},
        )
