"""The Notifier contract."""

from __future__ import annotations

from typing import Protocol

from monitor.models import ChannelSpec, Delivery


class Notifier(Protocol):
    """Sends deliveries to one channel.

    Lifecycle: `async with notifier:` opens connections (and may check credentials, raising
    `ChannelError`), exit closes them. The dispatcher calls `send` for one delivery at a time
    per channel, so a notifier needs no locking of its own; different channels run
    concurrently.

    `send` returns when the channel has accepted the message. It raises `DeliveryError`:
    `permanent=False` (timeouts, 5xx, rate limits with `retry_after`) is retried with backoff;
    `permanent=True` marks this delivery failed; `ChannelError` pauses the whole channel until
    its config changes and leaves this delivery pending (nothing is lost). Any other exception
    is a bug, and is treated as a retryable failure so nothing is lost.
    """

    spec: ChannelSpec

    async def send(self, delivery: Delivery) -> None: ...

    async def __aenter__(self) -> Notifier: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
