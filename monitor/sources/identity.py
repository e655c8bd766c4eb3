"""Item identity: safe links, normalised links, and the stable key that says "seen before".

Keys must be identical for the same entry on every fetch (or it alerts twice) and storable in
any database: valid UTF-8, no NUL, bounded length.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urljoin, urlsplit, urlunsplit

from monitor.models import Item

#: Longest id used verbatim in a key; longer ones are hashed.
MAX_ID_LENGTH = 512
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LINK_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Draft:
    """One entry's fields, already cleaned, before it gets its key."""

    guid: str
    link: str
    title: str
    summary: str = ""
    content: str = ""
    author: str = ""
    tags: tuple[str, ...] = ()
    published: datetime | None = None


def safe_link(value: object, base: str) -> str:
    """`value` resolved against `base` if it is an absolute http(s) URL afterwards, else "".

    Drops `javascript:`, `data:`, `file:` and other schemes, and links with control characters
    (a CR/LF in a link would end up in an email or a log line).
    """
    if not isinstance(value, str):
        return ""
    link = value.strip().replace(" ", "%20")
    if not link or _LINK_CONTROLS.search(link):
        return ""
    try:
        absolute = urljoin(base, link)
        parts = urlsplit(absolute)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        return ""
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        return ""
    return absolute


def normalise_link(link: str) -> str:
    """Canonical form of an http(s) link for identity: the same story gives the same string.

    Lowercases scheme and host, drops default ports, the fragment and utm_* tracking
    parameters; the rest of the query keeps its order and encoding.
    """
    parts = urlsplit(link)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal: brackets were stripped by urlsplit
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if pair and not pair.partition("=")[0].lower().startswith("utm_")
    )
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def item_key(draft: Draft) -> str | None:
    """The identity of an entry, or None when it has nothing to be recognised by.

    Order of preference: the feed's own id, the link, then a hash of title, summary and date.
    The hash is a last resort: it changes whenever the publisher edits the text.
    """
    guid = draft.guid.strip()
    if guid:
        if len(guid) > MAX_ID_LENGTH or _LINK_CONTROLS.search(guid):
            return "id:sha256:" + _sha256(guid)
        return "id:" + guid
    if draft.link:
        return "link:" + normalise_link(draft.link)
    if draft.title or draft.summary:
        published = draft.published.isoformat() if draft.published else ""
        return "hash:" + _sha256(f"{draft.title}\n{draft.summary}\n{published}")
    return None


def fingerprint(link: str, title: str) -> str | None:
    """A second identity for a stored item: its link (scheme dropped, normalised) and title.

    Some feeds rewrite every guid (http to https, a new host, ids regenerated on each build);
    the same story then comes with a new key but the same link and title, and must not alert
    again. None when the link or the title is missing: a feed listing every item under one
    link (or with no titles) tells its items apart only by id.
    """
    if not link or not title.strip():
        return None
    canonical = normalise_link(link).partition("://")[2]
    return _sha256(f"{canonical}\n{' '.join(title.casefold().split())}")[:32]


def _sha256(text: str) -> str:
    # surrogatepass: a lone surrogate in an id must hash, not crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def assemble(drafts: Iterable[Draft], *, feed: str, now: datetime) -> tuple[tuple[Item, ...], int]:
    """Items with keys, first entry winning on a duplicate key, and the count without identity."""
    items: dict[str, Item] = {}
    skipped = 0
    for draft in drafts:
        key = item_key(draft)
        if key is None:
            skipped += 1
            continue
        if key not in items:
            items[key] = Item(
                feed=feed,
                key=key,
                title=draft.title,
                link=draft.link,
                summary=draft.summary,
                content=draft.content,
                author=draft.author,
                tags=draft.tags,
                published=draft.published,
                seen_at=now,
            )
    return tuple(items.values()), skipped
