"""The jsonl channel appends one parseable JSON object per delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.errors import DeliveryError
from monitor.models import Alert, ChannelSpec, Delivery, Match
from monitor.notify.jsonl import JsonlNotifier

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def delivery(n: int, title: str = "Talks\nstall \u2028 «here»") -> Delivery:
    alert = Alert(
        feed="World",
        item_key=f"id:{n}",
        title=title,
        link="https://example.org/a",
        summary="s",
        published=None,
        seen_at=NOW,
        matches=(
            Match("talks", ("talks",), ("title",), ("file",)),
            Match("other", ("x",), ("title",), ("desk",)),
        ),
    )
    return Delivery(id=n, channel="file", alert=alert)


async def test_lines_are_appended_and_parse_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "alerts.jsonl"
    spec = ChannelSpec(name="file", type="jsonl", options={"path": str(path)})
    async with JsonlNotifier(spec) as notifier:
        await notifier.send(delivery(1))
        await notifier.send(delivery(2))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["title"] == "Talks\nstall \u2028 «here»"
    assert first["rules"] == ["talks"]  # only the rules that notify this channel
    assert first["terms"] == ["talks"]
    assert first["published"] is None
    assert first["seen"] == "2026-11-28T09:00:00+00:00"


async def test_unwritable_path_is_a_retryable_delivery_error(tmp_path: Path) -> None:
    target = tmp_path / "dir-not-file"
    target.mkdir()
    spec = ChannelSpec(name="file", type="jsonl", options={"path": str(target)})
    async with JsonlNotifier(spec) as notifier:
        with pytest.raises(DeliveryError) as info:
            await notifier.send(delivery(1))
    assert not info.value.permanent
    assert str(target) in str(info.value)
