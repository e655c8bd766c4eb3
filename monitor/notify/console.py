"""The `console` channel: readable alert blocks on standard output."""

from __future__ import annotations

import sys
from typing import TextIO
from zoneinfo import ZoneInfo

from monitor.errors import DeliveryError
from monitor.models import ChannelSpec, Delivery
from monitor.notify.render import text_alert


class ConsoleNotifier:
    """Writes each alert as a block of lines, separated by a blank line, and flushes."""

    def __init__(self, spec: ChannelSpec, tz: ZoneInfo, stream: TextIO | None = None) -> None:
        self.spec = spec
        self._tz = tz
        self._stream = stream

    async def __aenter__(self) -> ConsoleNotifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, delivery: Delivery) -> None:
        stream = self._stream or sys.stdout
        try:
            stream.write(text_alert(delivery.alert, self.spec.name, self._tz) + "\n\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # closed or broken pipe
            raise DeliveryError(f"cannot write to standard output: {exc}") from exc
