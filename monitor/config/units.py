"""Human-friendly durations (`90s`, `1h30m`) and sizes (`500KB`, `10MiB`) for the config."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from monitor.config.yamlsource import kind

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_WHOLE = re.compile(rf"(?:\s*{_DURATION_PART.pattern})+\s*", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_BYTES = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(text: str | int | float) -> timedelta:
    """`90s`, `5m`, `2h`, `1d`, `1w`, `1h30m`, `500ms`, or a bare number of seconds.

    Raises ValueError with a message fit for the user when the value is not a positive duration.
    """
    shown = _show(text)
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {shown}: use e.g. 90s, 5m, 2h")
    if isinstance(text, int | float):
        seconds = float(text)
    elif _NUMBER.fullmatch(text.strip()):
        seconds = float(text.strip())
    elif _DURATION_WHOLE.fullmatch(text):
        seconds = sum(float(n) * _SECONDS[unit.lower()] for n, unit in _DURATION_PART.findall(text))
    else:
        raise ValueError(f"invalid duration {shown}: use e.g. 90s, 5m, 2h")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {shown}: must be more than zero, e.g. 90s, 5m, 2h")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {shown}: too long") from None


def parse_size(text: str | int | float) -> int:
    """Bytes: an int, or `500KB`, `10MB`, `10MiB`, `1GiB` (KB = 1000, KiB = 1024), any case.

    Raises ValueError with a message fit for the user when the value is not a positive size.
    """
    shown = _show(text)
    if isinstance(text, bool):
        raise ValueError(f"invalid size {shown}: use e.g. 500KB, 10MiB, 1GB")
    if isinstance(text, int | float):
        size = float(text)
    else:
        found = _SIZE.fullmatch(text)
        if found is None:
            raise ValueError(f"invalid size {shown}: use e.g. 500KB, 10MiB, 1GB")
        number, unit = found.groups()
        size = float(number) * _BYTES[(unit or "b").lower()]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"invalid size {shown}: must be at least one byte, e.g. 500KB, 10MiB")
    return int(size)


def format_duration(value: timedelta) -> str:
    """The shortest spelling `parse_duration` reads back: `10s`, `1h30m`, `500ms`."""
    millis = round(value.total_seconds() * 1000)
    parts: list[str] = []
    for unit, factor in (("w", 604800_000), ("d", 86400_000), ("h", 3600_000), ("m", 60_000)):
        count, millis = divmod(millis, factor)
        if count:
            parts.append(f"{count}{unit}")
    seconds, millis = divmod(millis, 1000)
    if seconds:
        parts.append(f"{seconds}s")
    if millis or not parts:
        parts.append(f"{millis}ms")
    return "".join(parts)


def _show(value: object) -> str:
    # Long values are cut so a pasted blob does not flood the error report.
    if not isinstance(value, str):
        return str(value).lower()
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as 90s or 5m, got {kind(value)}")
    return parse_duration(value)


def _size(value: object) -> int:
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a size such as 500KB or 10MiB, got {kind(value)}")
    return parse_size(value)


def _at_least_10s(value: timedelta) -> timedelta:
    # Polling faster than this is abuse of the publisher, not monitoring.
    if value < timedelta(seconds=10):
        raise ValueError("must be at least 10s")
    return value


def at_least(minimum: timedelta, why: str = "") -> AfterValidator:
    """A validator refusing durations shorter than `minimum`, saying `why` if given."""
    message = f"must be at least {format_duration(minimum)}" + (f": {why}" if why else "")

    def check(value: timedelta) -> timedelta:
        if value < minimum:
            raise ValueError(message)
        return value

    return AfterValidator(check)


#: Config field types: a duration, a poll interval (10s or more), a size in bytes.
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Interval = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_at_least_10s)]
Size = Annotated[int, BeforeValidator(_size)]
