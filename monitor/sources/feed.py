"""Feed bytes -> ParsedFeed: RSS, Atom and RDF through feedparser, JSON Feed through jsonfeed.

Pure and bounded: no I/O, no clock (`now` is given), every text field cleaned and capped, and
nothing but ParseError escapes. Run it in a `ParsePool` worker for CPU and memory limits.
"""

from __future__ import annotations

import codecs
import io
import re
import xml.sax
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import feedparser
from feedparser.encodings import convert_to_utf8

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources.identity import Draft, assemble, safe_link
from monitor.sources.jsonfeed import parse_json_feed
from monitor.sources.text import (
    AUTHOR_LIMIT,
    CONTENT_LIMIT,
    SUMMARY_LIMIT,
    TITLE_LIMIT,
    clean_tags,
    clean_text,
    repair_char_refs,
)

_JSON_TYPES = ("application/feed+json", "application/json")
_HTML_START = re.compile(rb"<(?:!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE)
_OVERRIDE = re.compile(r"declared as (.*), but parsed as (.*)")
_XML_ENCODING = re.compile(rb"<\?xml[^>]*\bencoding\s*=")

# An entity declaration up to its closing ">", quotes respected; an unterminated one runs to
# the end of the data. Possessive and first-character-exclusive, so matching stays linear.
_DECL = re.compile(rb"<!ENTITY(?:[^>\"']++|\"[^\"]*+(?:\"|\Z)|'[^']*+(?:'|\Z))*+(?:>|\Z)")
# Declarations left alone: a named internal entity with a short literal value (no "&", so no
# nesting). feedparser re-inserts only these itself; we also bound their total expansion.
_SIMPLE_DECL = re.compile(rb"<!ENTITY\s+([A-Za-z_][\w.-]*)\s+(?:\"([^\"&%<]*)\"|'([^'&%<]*)')\s*>")
_MAX_EXPANSION = 64 * 1024
_MAX_KEPT_DECLARATIONS = 16  # each costs a scan of the document to count its references
#: Byte order marks, then the BOM-less "<?" of UTF-16/32 (UTF-32 first: its LE BOM starts with
#: UTF-16's). feedparser strips a mark itself; a BOM-less start is data, decoded as is.
_SIGNATURES = (
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF8, "utf-8"),
    ("<?".encode("utf-32-be"), "utf-32-be"),
    ("<?".encode("utf-32-le"), "utf-32-le"),
    ("<?".encode("utf-16-be"), "utf-16-be"),
    ("<?".encode("utf-16-le"), "utf-16-le"),
)
# feedparser resolves relative guids/ids against the document URL ("123" becomes
# "https://host/path/123"), so a feed whose final URL changes (http -> https, a new CDN host)
# would change every such item's identity and alert its whole backlog again. An id is an
# opaque identifier: keep it as written. Links are still resolved. Process-wide, which is
# fine: this module is feedparser's only user.
feedparser.mixin._FeedParserMixin.can_be_relative_uri.discard("id")

#: What feedparser is told about the text it gets: already decoded to UTF-8.
_UTF8_XML = "application/xml; charset=utf-8"


def parse_feed(
    body: bytes,
    *,
    url: str,
    headers: Mapping[str, str],
    feed: str,
    now: datetime,
    max_items: int = 500,
) -> ParsedFeed:
    """Parse fetched bytes into a ParsedFeed.

    `url` is the final URL (base for relative links), `headers` the response headers (names
    lower-cased), `feed` the configured feed name, `now` the aware UTC time stored as
    `Item.seen_at`. At most `max_items` entries are read, from the top of the document.
    Raises ParseError, with an operator-readable message, when the bytes are not a usable feed;
    never raises anything else.
    """
    try:
        return _parse(body, url, headers, feed, now, max_items)
    except ParseError:
        raise
    except MemoryError as exc:
        raise ParseError("feed too large to parse") from exc
    except Exception as exc:  # feedparser and codecs have many failure modes; none may escape
        message = f"could not parse feed: {type(exc).__name__}: {exc}"
        raise ParseError(message[:300]) from exc


def _parse(
    body: bytes, url: str, headers: Mapping[str, str], feed: str, now: datetime, max_items: int
) -> ParsedFeed:
    core = body.removeprefix(codecs.BOM_UTF8).strip()
    if not core:
        raise ParseError("empty document")
    fp_headers = {name.lower(): value for name, value in headers.items()}
    if _is_json(core, fp_headers.get("content-type", "")):
        return parse_json_feed(body, url=url, feed=feed, now=now, max_items=max_items)
    warnings = []
    text, problem = _decode(body, fp_headers)
    if problem is not None:
        warnings.append(problem)
    text, stripped = _neutralise_entities(repair_char_refs(text))
    if stripped:
        warnings.append("DTD entity declarations were removed before parsing")
    # Bytes in a BytesIO only: given a str, feedparser opens URLs and local files. Its HTML
    # sanitizer and in-content URI resolution are off: every field becomes plain text here
    # anyway (text.py drops scripts), and they cost 3/4 of the time on HTML-heavy feeds.
    result = feedparser.parse(
        io.BytesIO(text),
        response_headers={**fp_headers, "content-type": _UTF8_XML, "content-location": url},
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    version = _str(result.get("version"))
    entries = [e for e in result.get("entries") or () if isinstance(e, dict)][: max(max_items, 0)]
    if not version and not entries:
        if _HTML_START.search(core[:4096]):
            raise ParseError("not a feed: looks like an HTML page")
        raise ParseError("not a feed: no RSS, Atom or JSON Feed content found")
    if not version:
        warnings.append("feed format not recognised; items read leniently")
    if result.get("bozo"):
        warnings.append(_describe_bozo(result.get("bozo_exception"), declared=True))
    items, skipped = assemble((_draft(e, url) for e in entries), feed=feed, now=now)
    channel = result.get("feed")
    channel = channel if isinstance(channel, dict) else {}
    return ParsedFeed(
        version=version or "unknown",
        title=clean_text(dict.get(channel, "title"), TITLE_LIMIT),
        items=items,
        warning="; ".join(warnings) or None,
        skipped=skipped,
        ttl=_ttl(dict.get(channel, "ttl")),
    )


def _decode(body: bytes, headers: dict[str, str]) -> tuple[bytes, str | None]:
    """The document as UTF-8, decoded by feedparser's own rules, and what went wrong doing so.

    Decoding first, rather than leaving it to feedparser.parse, lets the entity and character
    reference checks see the text feedparser will parse, whatever encoding hid it in.
    """
    content_type = headers.get("content-type", "")
    # Without a Content-Type, feedparser falls back to ISO-8859-1; XML's own default is UTF-8.
    headers = {**headers, "content-type": content_type or "application/xml"}
    if (sniffed := _sniff(body)) is not None:
        # A byte order mark outranks the charset parameter (RFC 7303 3.3). feedparser tries the
        # HTTP charset first, and UTF-16 "decodes" as UTF-8 with NULs: tell it the real one.
        mime = headers["content-type"].partition(";")[0]
        headers["content-type"] = f"{mime}; charset={sniffed}"
    outcome: dict[str, object] = {}
    text: bytes = convert_to_utf8(headers, body, outcome)
    if not outcome.get("bozo"):
        return text, None
    declared = "charset" in content_type or _XML_ENCODING.search(body[:512]) is not None
    return text, _describe_bozo(outcome.get("bozo_exception"), declared=declared)


def _is_json(core: bytes, content_type: str) -> bool:
    if core.startswith(b"{"):
        return True
    mime = content_type.partition(";")[0].strip().lower()
    return mime in _JSON_TYPES and not core.startswith(b"<")


def _draft(entry: dict[str, object], base: str) -> Draft:
    # dict.get, not FeedParserDict.get: its "updated_parsed" fallback emits DeprecationWarning.
    contents = dict.get(entry, "content")
    content = " ".join(
        _str(dict.get(part, "value"))
        for part in (contents if isinstance(contents, list) else ())
        if isinstance(part, dict)
    )
    tags = dict.get(entry, "tags")
    return Draft(
        guid=_str(dict.get(entry, "id")),
        link=safe_link(dict.get(entry, "link"), base),
        title=clean_text(dict.get(entry, "title"), TITLE_LIMIT),
        summary=clean_text(dict.get(entry, "summary"), SUMMARY_LIMIT),
        content=clean_text(content, CONTENT_LIMIT),
        author=clean_text(dict.get(entry, "author"), AUTHOR_LIMIT),
        tags=clean_tags(_terms(tags if isinstance(tags, list) else [])),
        published=_datetime(dict.get(entry, "published_parsed"))
        or _datetime(dict.get(entry, "updated_parsed")),
    )


def _terms(tags: list[object]) -> Iterator[object]:
    for tag in tags:
        if isinstance(tag, dict):
            yield dict.get(tag, "term")


def _datetime(value: object) -> datetime | None:
    """feedparser's UTC 9-tuple as an aware datetime; None when absent or impossible."""
    if not isinstance(value, tuple) or len(value) < 6:  # struct_time is a tuple
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in value[:6])
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _ttl(value: object) -> int | None:
    text = _str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 7:
        return None
    return int(text)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _describe_bozo(exc: object, *, declared: bool) -> str:
    """feedparser's bozo exception, in words an operator can act on."""
    if isinstance(exc, xml.sax.SAXParseException):
        where = f"line {exc.getLineNumber()}: {exc.getMessage()}"
        return f"feed is not well-formed XML ({where}); parsed leniently"
    if isinstance(exc, feedparser.CharacterEncodingOverride):
        match = _OVERRIDE.search(str(exc))
        if match and not declared:  # feedparser reports XML's UTF-8 default as "declared"
            return f"no charset declared and the bytes are not UTF-8; decoded as {match[2].lower()}"
        if match:
            return f"declared charset {match[1]!r} was wrong; decoded as {match[2].lower()}"
    if isinstance(exc, feedparser.NonXMLContentType):
        return f"served as non-XML ({exc}); parsed anyway"
    if isinstance(exc, feedparser.CharacterEncodingUnknown):
        return "character encoding unknown; decoded as UTF-8 with replacements"
    return f"feed is not well-formed ({type(exc).__name__}: {str(exc)[:200]}); parsed leniently"


def _neutralise_entities(text: bytes) -> tuple[bytes, bool]:
    """UTF-8 `text` with DTD entity declarations removed, and whether any were.

    feedparser blocks external and nested entities, but its lenient parser expands a plain
    internal entity once per reference: 110 KB of input became a 1e9-character title (3 GB).
    Small, bounded declarations are kept so legitimate ones still resolve.
    """
    if b"<!ENTITY" not in text or _harmless(text):
        return text, False
    return _DECL.sub(b"", text), True


def _harmless(text: bytes) -> bool:
    declarations = _SIMPLE_DECL.findall(text)
    count = text.count(b"<!ENTITY")
    if len(declarations) != count or count > _MAX_KEPT_DECLARATIONS:
        return False
    # feedparser's lenient parser also expands "&name" without ";": count the prefix.
    expansion = sum(
        len(double or single) * text.count(b"&" + name) for name, double, single in declarations
    )
    return expansion <= _MAX_EXPANSION


def _sniff(body: bytes) -> str | None:
    """The encoding a byte order mark (or UTF-16/32's BOM-less "<?") says the body is in."""
    for prefix, codec in _SIGNATURES:
        if body.startswith(prefix):
            return codec
    return None
