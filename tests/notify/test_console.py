"""The console channel prints readable blocks."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from monitor.models import Alert, ChannelSpec, Delivery, Match
from monitor.notify.console import ConsoleNotifier

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


async def test_each_alert_is_a_block_followed_by_a_blank_line() -> None:
    alert = Alert(
        feed="World",
        item_key="id:1",
        title="Sanctions widened",
        link="",
        summary="",
        published=NOW,
        seen_at=NOW,
        matches=(Match("sanctions", ("sanctions",), ("title",), ("console",)),),
    )
    out = io.StringIO()
    spec = ChannelSpec(name="console", type="console")
    async with ConsoleNotifier(spec, ZoneInfo("UTC"), out) as notifier:
        await notifier.send(Delivery(id=1, channel="console", alert=alert))
    assert out.getvalue() == (
        "Sanctions widened\nWorld · 2026-11-28 09:00 UTC\nmatched: sanctions (sanctions)\n\n"
    )
