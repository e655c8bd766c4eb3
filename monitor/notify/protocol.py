"""The Notifier contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from monitor.models import ChannelSpec, Delivery


class Notifier(Protocol):
    """Sends deliveries to one channel.

    Lifecycle: `async with notifier:` opens connections (and may check credentials, raising
    `ChannelError`), exit closes them. The dispatcher calls `send` for one delivery at a time
    per channel, so a notifier needs no locking of its own; different channels run
    concurrently.

    `send` returns when the channel has accepted the message. It raises `DeliveryError`:
    `permanent=False` (timeouts, 5xx, rate limits with `retry_after`) is retried with backoff;
    `permanent=True` marks this delivery failed; `TargetError` marks it failed and pauses its
    destination (`delivery.target`) until the config changes; `ChannelError` pauses the whole
    channel until its config changes and leaves this delivery pending (nothing is lost). A
    `retry_after` pauses only the delivery's destination, for that long. Any other exception
    is a bug, and is treated as a retryable failure so nothing is lost.
    """

    spec: ChannelSpec

    async def send(self, delivery: Delivery) -> None: ...

    async def __aenter__(self) -> Notifier: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class GroupingNotifier(Notifier, Protocol):
    """A notifier that can send several alerts for one destination as ONE message.

    When more than `group_threshold` deliveries for one target are due at once (one poll
    found many stories, or a backlog built up while the channel was down), the dispatcher
    hands them to `send_group` instead of sending each on its own, so a burst reads as one
    list rather than a flood. `group_threshold` 0 turns grouping off.
    """

    group_threshold: int

    async def send_group(self, deliveries: Sequence[Delivery]) -> int:
        """Send one message covering the first N of `deliveries` (N >= 1; all have the same
        channel and target, oldest first) and return N: as many as fit in one message. Raises
        like `send`; an error applies to every delivery passed in (none of them was sent).
        """
        ...
