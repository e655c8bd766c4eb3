"""Small builders for test feeds and configs (our own fixtures, written for these tests)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

BASE = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def rss(entries: Sequence[tuple[str, str] | tuple[str, str, str]], title: str = "Test feed") -> str:
    """An RSS 2.0 document; each entry is (guid, title) or (guid, title, summary), newest first."""
    items = []
    for n, entry in enumerate(entries):
        guid, headline = entry[0], entry[1]
        summary = entry[2] if len(entry) > 2 else ""
        published = format_datetime(BASE - timedelta(minutes=n))
        items.append(
            f'<item><guid isPermaLink="false">{escape(guid)}</guid>'
            f"<title>{escape(headline)}</title>"
            f"<link>https://news.example/{escape(guid)}</link>"
            f"<description>{escape(summary)}</description>"
            f"<pubDate>{published}</pubDate></item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>https://news.example/</link>"
        f"<description>test</description>{''.join(items)}</channel></rss>"
    )


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path
