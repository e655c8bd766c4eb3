"""Conversions between domain objects and the plain values a database row holds.

Datetimes become fixed-width ISO-8601 UTC text ("2024-05-01T12:00:00.000000Z"), so string order
in SQL is time order; matches and tags become JSON, non-ASCII kept as is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.models import Match


def utc(value: datetime) -> datetime:
    """`value` in UTC; naive datetimes are refused (they would compare wrongly)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store only takes aware UTC datetimes")
    return value.astimezone(UTC)


def opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def dt_to_text(value: datetime) -> str:
    # isoformat pads the year to 4 digits and timespec fixes the fraction: constant width.
    return utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def opt_dt_to_text(value: datetime | None) -> str | None:
    return None if value is None else dt_to_text(value)


def text_to_dt(value: str) -> datetime:
    return datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=UTC)


def opt_text_to_dt(value: str | None) -> datetime | None:
    return None if value is None else text_to_dt(value)


def tags_to_json(tags: Sequence[str]) -> str:
    return json.dumps(list(tags), ensure_ascii=False)


def json_to_tags(value: str) -> tuple[str, ...]:
    return tuple(str(t) for t in json.loads(value))


def matches_to_json(matches: Sequence[Match]) -> str:
    return json.dumps(
        [
            {
                "rule": m.rule,
                "terms": list(m.terms),
                "fields": list(m.fields),
                "channels": list(m.channels),
                "snippet": m.snippet,
            }
            for m in matches
        ],
        ensure_ascii=False,
    )


def json_to_matches(value: str) -> tuple[Match, ...]:
    raw: list[dict[str, Any]] = json.loads(value)
    return tuple(
        Match(
            rule=str(m["rule"]),
            terms=tuple(m["terms"]),
            fields=tuple(m["fields"]),
            channels=tuple(m["channels"]),
            snippet=str(m.get("snippet", "")),
        )
        for m in raw
    )
