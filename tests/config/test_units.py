"""Durations and sizes as users write them in the config."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.config import parse_duration, parse_size
from monitor.config.units import format_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (" 1h 30m ", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("2H", timedelta(hours=2)),
        ("45", timedelta(seconds=45)),
        (" 2.5 ", timedelta(seconds=2.5)),
        (30, timedelta(seconds=30)),
        (0.25, timedelta(milliseconds=250)),
    ],
)
def test_durations(text: str | int | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "m5", "5mm", "1h-30m", "h", "5y"])
def test_garbage_duration_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*: use e\.g\. 90s, 5m, 2h"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["0s", "0", 0, -5, "-5", 0.0, "0h0m"])
def test_zero_or_negative_duration_is_rejected(value: str | int | float) -> None:
    with pytest.raises(ValueError, match="must be more than zero"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), "99999999999w"])
def test_nonsense_durations_are_rejected(value: str | float) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_duration_message_quotes_the_text() -> None:
    with pytest.raises(ValueError, match=r"^invalid duration 'soon': use e\.g\. 90s, 5m, 2h$"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("500KB", 500_000),
        ("500kb", 500_000),
        ("10MB", 10_000_000),
        ("10MiB", 10 * 1024 * 1024),
        ("10mib", 10 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("1GB", 10**9),
        ("64KiB", 65536),
        (" 2 MiB ", 2 * 1024 * 1024),
        ("1.5KiB", 1536),
        ("100B", 100),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "big", "10 parsecs", "MiB", "10MiBs", "-1KB", "1e3"])
def test_garbage_size_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid size .*: use e\.g\. 500KB, 10MiB, 1GB"):
        parse_size(text)


@pytest.mark.parametrize("value", [0, "0", "0KB", -3, True])
def test_empty_or_negative_size_is_rejected(value: str | int) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=10), "10s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(weeks=2, days=1), "2w1d"),
        (timedelta(0), "0ms"),
    ],
)
def test_format_duration_reads_back(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    if value:
        assert parse_duration(text) == value
