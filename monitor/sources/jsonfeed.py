"""JSON Feed 1.0 / 1.1 (https://jsonfeed.org) -> ParsedFeed; feedparser 6.0.14 cannot read it.

Publishers get field types wrong often, so a wrong-typed field is dropped (or a number id
turned into a string), never a crash; only unusable documents raise ParseError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources.identity import Draft, assemble, safe_link
from monitor.sources.text import (
    AUTHOR_LIMIT,
    CONTENT_LIMIT,
    SUMMARY_LIMIT,
    TITLE_LIMIT,
    clean_tags,
    clean_text,
)

#: Version URL path (scheme and trailing slash ignored) -> our version string.
_VERSIONS = {"jsonfeed.org/version/1": "json10", "jsonfeed.org/version/1.1": "json11"}

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?)?"
    r"\s*(?:([Zz])|([+-])(\d\d):?(\d\d))?"
)


def parse_json_feed(
    body: bytes, *, url: str, feed: str, now: datetime, max_items: int = 500
) -> ParsedFeed:
    """Parse a JSON Feed document; see `monitor.sources.feed.parse_feed` for the contract."""
    try:
        document = json.loads(body)
    except RecursionError as exc:
        raise ParseError("invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, over-long integers
        raise ParseError(f"invalid JSON: {str(exc)[:200]}") from exc
    if not isinstance(document, dict):
        raise ParseError("not a feed: JSON document is not a JSON Feed object")
    version = _version(document.get("version"))
    raw_items = document.get("items")
    warning = None
    if not isinstance(raw_items, list):
        warning = "JSON Feed has no 'items' list; no items read"
        raw_items = []
    entries = raw_items[: max(max_items, 0)]
    drafts = [_draft(entry, url) for entry in entries if isinstance(entry, dict)]
    # The spec requires an id, but a missing one must not lose the story: an entry without
    # one is keyed like an RSS item without a guid (its link, else a hash of its text).
    items, skipped = assemble(drafts, feed=feed, now=now)
    skipped += len(entries) - len(drafts)
    return ParsedFeed(
        version=version,
        title=clean_text(document.get("title"), TITLE_LIMIT),
        items=items,
        warning=warning,
        skipped=skipped,
    )


def _version(value: object) -> str:
    text = value if isinstance(value, str) else ""
    path = text.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    if path in _VERSIONS:
        return _VERSIONS[path]
    if not text:
        raise ParseError("not a feed: JSON document without a JSON Feed 'version'")
    raise ParseError(f"unsupported JSON Feed version {text[:100]!r}")


def _draft(entry: dict[str, object], base: str) -> Draft:
    content = entry.get("content_text")
    if not isinstance(content, str) or not content.strip():
        content = entry.get("content_html")
    return Draft(
        guid=_id(entry.get("id")),
        link=safe_link(entry.get("url"), base) or safe_link(entry.get("external_url"), base),
        title=clean_text(entry.get("title"), TITLE_LIMIT),
        summary=clean_text(entry.get("summary"), SUMMARY_LIMIT),
        content=clean_text(content, CONTENT_LIMIT),
        author=clean_text(", ".join(_author_names(entry)), AUTHOR_LIMIT),
        tags=clean_tags(_list(entry.get("tags"))),
        published=parse_rfc3339(entry.get("date_published"))
        or parse_rfc3339(entry.get("date_modified")),
    )


def _id(value: object) -> str:
    if isinstance(value, bool):  # bool is an int subclass; "True" is no identity
        return ""
    if isinstance(value, int | float):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _author_names(entry: dict[str, object]) -> Iterator[str]:
    # 1.1 has "authors" (a list); 1.0 had a single "author" object.
    authors = _list(entry.get("authors")) or [entry.get("author")]
    for author in authors:
        name = author.get("name") if isinstance(author, dict) else None
        if isinstance(name, str) and name.strip():
            yield name


def parse_rfc3339(value: object) -> datetime | None:
    """An aware UTC datetime from an RFC 3339 timestamp (lenient on details), else None."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    try:
        tz = UTC
        if sign:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            tz = timezone(-offset if sign == "-" else offset)
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=tz,
        )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # month 13, offset >= 24h, year 9999 + offset...
        return None
