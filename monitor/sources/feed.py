"""Feed bytes -> ParsedFeed: RSS, Atom and RDF through feedparser, JSON Feed through jsonfeed.

Pure and bounded: no I/O, no clock (`now` is given), every text field cleaned and capped, and
nothing but ParseError escapes. Run it in a `ParsePool` worker for CPU and memory limits.

feedparser is the parser of record: it survives malformed feeds, and what it makes of a feed
is what an item is. It is also slow (30 ms for 50 items on a small machine, 95% of it in its
SAX handlers). Plain, well-formed RSS 2.0 and Atom 1.0 feeds, the bulk of real traffic, take a
fast path (`_fast`): one expat pass into an ElementTree, then feedparser's own rules for the few
elements it accepts, replayed with feedparser's own helpers (date parsing, URL joining, its
text clean-ups), giving the same entries feedparser would. Anything it does not know for
certain (an unknown element or attribute, markup inside a text element, xml:base, a DTD,
duplicates of a field, a decoding warning...) goes to feedparser, whole. The equivalence is
tested on every corpus file and on generated variants (tests/sources/test_corpus.py).
"""

from __future__ import annotations

import codecs
import contextlib
import io
import re
import xml.etree.ElementTree as ET
import xml.sax
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import feedparser
from feedparser.datetimes import _parse_date
from feedparser.encodings import convert_to_utf8
from feedparser.html import _cp1252
from feedparser.mixin import _FeedParserMixin
from feedparser.urls import _urljoin, make_safe_absolute_uri

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
_PROLOG_ENCODING = re.compile(rb"<\?xml[^>]*\bencoding\s*=\s*[\"']([A-Za-z0-9._-]+)")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._-]+)", re.IGNORECASE)
#: A well-formed UTF-8 sequence of two to four bytes.
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)

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
    fast: bool = True,
) -> ParsedFeed:
    """Parse fetched bytes into a ParsedFeed.

    `url` is the final URL (base for relative links), `headers` the response headers (names
    lower-cased), `feed` the configured feed name, `now` the aware UTC time stored as
    `Item.seen_at`. At most `max_items` entries are read, from the top of the document.
    `fast=False` sends every feed through feedparser (the fast path gives the same result).
    Raises ParseError, with an operator-readable message, when the bytes are not a usable feed;
    never raises anything else.
    """
    try:
        return _parse(body, url, headers, feed, now, max_items, fast)
    except ParseError:
        raise
    except MemoryError as exc:
        raise ParseError("feed too large to parse") from exc
    except Exception as exc:  # feedparser and codecs have many failure modes; none may escape
        message = f"could not parse feed: {type(exc).__name__}: {exc}"
        raise ParseError(message[:300]) from exc


def _parse(
    body: bytes,
    url: str,
    headers: Mapping[str, str],
    feed: str,
    now: datetime,
    max_items: int,
    fast: bool = True,
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
    if fast and not warnings and (quick := _fast(text, url, feed, now, max_items)) is not None:
        return quick
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
    if sniffed is None and isinstance(
        outcome.get("bozo_exception"), feedparser.CharacterEncodingOverride
    ):
        repaired = _repair_utf8(body, content_type)
        if repaired is not None:
            return repaired
    declared = "charset" in content_type or _XML_ENCODING.search(body[:512]) is not None
    return text, _describe_bozo(outcome.get("bozo_exception"), declared=declared)


def _repair_utf8(body: bytes, content_type: str) -> tuple[bytes, str] | None:
    """A document declared UTF-8 whose bytes are not all UTF-8, decoded better than by
    feedparser's fallback (chardet's guess for the whole document, which turns one stray byte
    in a Cyrillic feed into mojibake everywhere): UTF-8 with the stray bytes replaced when the
    rest is real UTF-8 (multi-byte sequences decode), else windows-1252 (Latin-1 text with a
    wrong declaration). None unless what the server and the prolog declared is UTF-8."""
    charset = _CHARSET.search(content_type)
    prolog = _PROLOG_ENCODING.search(body[:512])
    declared = {charset[1]} if charset else set()
    declared |= {prolog[1].decode("ascii")} if prolog else set()
    # Every declaration says UTF-8 (when the header and the prolog disagree, feedparser's own
    # fallbacks, which try the other one, decide).
    if not declared or any(d.lower().replace("_", "-") not in ("utf-8", "utf8") for d in declared):
        return None
    if _UTF8_MULTIBYTE.search(body):
        text = body.decode("utf-8", "replace").encode("utf-8")
        return text, "invalid UTF-8 bytes in a feed declared UTF-8 were replaced"
    text = body.decode("cp1252", "replace").encode("utf-8")
    return text, "declared charset 'utf-8' was wrong; decoded as windows-1252"


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


# --- fast path: plain, well-formed RSS 2.0 and Atom 1.0 ----------------------------------------
#
# Each rule below restates what feedparser 6.0 (strict, SAX mode, as `_parse` calls it:
# sanitizing and URI resolution in content off, "id" never resolved) does with the elements
# accepted here; `_fast` returns None for everything else and feedparser takes the feed.

#: How `_decode` (feedparser's convert_to_utf8) starts every document it re-encodes; feedparser
#: writes the same declaration again, so its SAX parser sees exactly these bytes.
_FAST_PREFIX = b"<?xml version='1.0' encoding='utf-8'?>"
#: Namespaces whose mere declaration changes feedparser's idea of the version: left to it
#: (as quoted attribute values: the content module's URI starts like RSS 1.0's).
_VERSION_URIS = tuple(
    quote + uri + quote
    for uri in (b"http://my.netscape.com/rdf/simple/0.9/", b"http://purl.org/rss/1.0/")
    for quote in (b'"', b"'")
)
_ATOM_FEED = "{http://www.w3.org/2005/Atom}feed"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
#: feedparser's prefixes for the namespaces it knows (the Atom and RSS ones map to "").
_PREFIXES = {uri.lower(): prefix for uri, prefix in _FeedParserMixin.namespaces.items()}
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: Text constructs whose type keeps them plain (feedparser's names after map_content_type).
_TEXT_TYPES = {"text": "text/plain", "plain": "text/plain", "html": "text/html"}
_PLAIN_TYPES = frozenset({"text/plain", "text/html"})
_LINK_ATTRS = frozenset({"href", "rel", "type", "title", "hreflang", "length"})
_NONE: frozenset[str] = frozenset()
_TYPED = frozenset({"type"})
_QUERY_REF = re.compile("&([A-Za-z0-9_]+);")

#: RSS 2.0 <channel> children -> allowed attributes. Only title and ttl are read; the others
#: were checked to touch neither them nor the items.
_RSS_CHANNEL = {
    "title": _NONE,
    "ttl": _NONE,
    "link": _LINK_ATTRS,  # RSS <link>, or <atom:link rel="self" .../> (Atom maps to "")
    "description": _NONE,
    "language": _NONE,
    "copyright": _NONE,
    "managingeditor": _NONE,
    "webmaster": _NONE,
    "pubdate": _NONE,
    "lastbuilddate": _NONE,
    "category": frozenset({"domain"}),
    "generator": _NONE,
    "docs": _NONE,
    "rating": _NONE,
    "sy:updateperiod": _NONE,
    "sy:updatefrequency": _NONE,
    "sy:updatebase": _NONE,
}
#: Channel children with children of their own: the allowed (text-only) grandchildren.
_RSS_GROUPS = {
    "image": frozenset({"url", "title", "link", "width", "height", "description"}),
    "textinput": frozenset({"title", "description", "name", "link"}),
    "skiphours": frozenset({"hour"}),
    "skipdays": frozenset({"day"}),
}
_CLOUD_ATTRS = frozenset({"domain", "port", "path", "registerprocedure", "protocol"})
#: RSS 2.0 <item> children -> allowed attributes.
_RSS_ITEM = {
    "title": _NONE,
    "link": _NONE,
    "description": _NONE,
    "guid": frozenset({"ispermalink"}),
    "pubdate": _NONE,
    "author": _NONE,
    "dc:creator": _NONE,
    "dc:date": _NONE,
    "category": frozenset({"domain"}),
    "dc:subject": _NONE,
    "comments": _NONE,
    "enclosure": frozenset({"url", "length", "type"}),
    "source": frozenset({"url"}),
    "content:encoded": _NONE,
    "wfw:comment": _NONE,
    "wfw:commentrss": _NONE,
    "slash:comments": _NONE,
    "feedburner:origlink": _NONE,
}
#: Atom 1.0 <feed> children -> allowed attributes (author/contributor checked apart).
_ATOM_FEED_CHILDREN = {
    "title": _TYPED,
    "subtitle": _TYPED,
    "rights": _TYPED,
    "id": _NONE,
    "updated": _NONE,
    "link": _LINK_ATTRS,
    "category": frozenset({"term", "scheme", "label"}),
    "generator": frozenset({"uri", "version"}),
    "icon": _NONE,
    "logo": _NONE,
}
#: Atom 1.0 <entry> children -> allowed attributes (author/contributor checked apart).
_ATOM_ENTRY = {
    "id": _NONE,
    "title": _TYPED,
    "summary": _TYPED,
    "content": _TYPED,
    "rights": _TYPED,
    "updated": _NONE,
    "published": _NONE,
    "link": _LINK_ATTRS,
    "category": frozenset({"term", "scheme", "label"}),
}
_PERSON = frozenset({"name", "email", "uri"})
#: Item fields that may appear once at most (feedparser's rules for repeats are intricate).
_ONCE = {"author": "author", "dc:creator": "author"}


class _Decline(Exception):
    """Not certain to match feedparser: let feedparser parse the whole document."""


def _fast(text: bytes, url: str, feed: str, now: datetime, max_items: int) -> ParsedFeed | None:
    """The ParsedFeed feedparser would give for `text` (UTF-8, as `_decode` returns it), or None
    when the document is anything but plain, well-formed RSS 2.0 or Atom 1.0."""
    if not text.startswith(_FAST_PREFIX):
        return None
    lowered = text.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        return None
    if any(uri in lowered for uri in _VERSION_URIS):
        return None
    try:
        root = ET.fromstring(text)
        base = _element_base(url)
        if root.tag == "rss":
            version, channel, entries = "rss20", *_rss(root, base)
        elif root.tag == _ATOM_FEED:
            version, channel, entries = "atom10", *_atom(root, base)
        else:
            return None
    except (ET.ParseError, _Decline):
        return None
    kept = entries[: max(max_items, 0)]
    items, skipped = assemble((_draft(e, url) for e in kept), feed=feed, now=now)
    return ParsedFeed(
        version=version,
        title=clean_text(channel.get("title"), TITLE_LIMIT),
        items=items,
        warning=None,
        skipped=skipped,
        ttl=_ttl(channel.get("ttl")),
    )


def _element_base(url: str) -> str:
    """The base URI feedparser resolves links against inside the document.

    It starts from the Content-Location (`url`) and, at every start tag, re-joins the base with
    itself; that settles after one step for any sane URL. One that keeps changing is declined.
    """
    base = url
    steps = []
    for _ in range(5):
        base = (make_safe_absolute_uri(base, base) or base) if base else _urljoin(base, base)
        steps.append(base)
    if len(set(steps)) != 1:
        raise _Decline
    return base


def _name(tag: str) -> str:
    """feedparser's name for an element: "title", "dc:creator", "content:encoded"..."""
    name = _NAMES.get(tag)
    if name is not None:
        return name
    if tag[0] != "{":
        name = tag.lower()
    else:
        uri, _, local = tag[1:].partition("}")
        prefix = _PREFIXES.get(uri.lower())
        if prefix is None:
            raise _Decline  # a namespace feedparser does not know
        name = f"{prefix}:{local.lower()}" if prefix else local.lower()
    if len(_NAMES) < 4096:  # the same few dozen tags come back in every feed
        _NAMES[tag] = name
    return name


_NAMES: dict[str, str] = {}
_NO_ATTRS: dict[str, str] = {}


def _attrs(element: ET.Element, allowed: frozenset[str]) -> dict[str, str]:
    """Attributes as feedparser sees them (names lower-cased, rel and type values too)."""
    if not element.attrib:
        return _NO_ATTRS
    found: dict[str, str] = {}
    for key, value in element.attrib.items():
        if key == _XML_LANG:
            continue  # only ever sets a language
        name = key.lower()
        if key[0] == "{" or name not in allowed or name in found:
            raise _Decline
        found[name] = value.lower() if name in ("rel", "type") else value
    return found


def _leaf(element: ET.Element, allowed: frozenset[str]) -> dict[str, str]:
    if len(element):
        raise _Decline  # markup inside a text element: feedparser's inline-content rules
    return _attrs(element, allowed)


def _text(raw: str | None) -> str:
    """feedparser's `pop()` clean-ups for a text element (in this order)."""
    output = (raw or "").strip()
    return _fixups(output)


def _fixups(output: str) -> str:
    # Text that was UTF-8 read as Latin-1 is read again as UTF-8; then cp1252's C1 extras.
    if output.isascii():
        return output  # both are no-ops on ASCII
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        output = output.encode("iso-8859-1").decode("utf-8")
    return output.translate(_cp1252)


def _link_text(raw: str | None, base: str) -> str:
    """An RSS <link>'s text: resolved, cleaned up, then feedparser's query-string repair."""
    output = (raw or "").strip()
    if output:
        output = _urljoin(base, output)
    output = _fixups(output).replace("&amp;", "&")
    return _QUERY_REF.sub(r"&\g<1>", output)


def _content_type(attrs: dict[str, str], default: str) -> str:
    given = attrs.get("type", default)
    kind = _TEXT_TYPES.get(given, given)
    if kind not in _PLAIN_TYPES:
        raise _Decline  # xhtml, base64 and other types have rules of their own
    return kind


def _add_tag(tags: list[dict[str, str | None]], term: str | None, scheme: str | None) -> None:
    if not term and not scheme:
        return
    tag: dict[str, str | None] = {"term": term, "scheme": scheme, "label": None}
    if tag not in tags:
        tags.append(tag)


def _category(entry: dict[str, object], attrs: dict[str, str], text: str) -> None:
    """feedparser's _start_category and _end_category: a tag from the attributes, then the
    text as its term (or as a tag of its own)."""
    tags = entry.setdefault("tags", [])
    assert isinstance(tags, list)
    label = attrs.get("label")
    term, scheme = attrs.get("term"), attrs.get("scheme", attrs.get("domain"))
    if term or scheme or label:
        tag = {"term": term, "scheme": scheme, "label": label}
        if tag not in tags:
            tags.append(tag)
    if not text:
        return
    if tags and not tags[-1]["term"]:
        tags[-1]["term"] = text
    else:
        _add_tag(tags, text, None)


def _once(seen: set[str], name: str) -> None:
    key = _ONCE.get(name, name)
    if key in seen:
        raise _Decline
    seen.add(key)


def _rss(root: ET.Element, base: str) -> tuple[dict[str, str], list[dict[str, object]]]:
    if not _attrs(root, frozenset({"version"})).get("version", "").startswith("2."):
        raise _Decline
    if len(root) != 1 or root[0].tag != "channel":
        raise _Decline
    channel_element = root[0]
    _attrs(channel_element, _NONE)
    channel: dict[str, str] = {}
    entries: list[dict[str, object]] = []
    for child in channel_element:
        name = _name(child.tag)
        if name == "item":
            _attrs(child, _NONE)
            entries.append(_rss_item(child, base))
        elif name in _RSS_CHANNEL:
            _leaf(child, _RSS_CHANNEL[name])
            if name in ("title", "ttl"):
                if name in channel:
                    raise _Decline
                channel[name] = _text(child.text)
        elif name in _RSS_GROUPS:
            _attrs(child, _NONE)
            for part in child:
                if _name(part.tag) not in _RSS_GROUPS[name]:
                    raise _Decline
                _leaf(part, _NONE)
        elif name == "cloud":
            _leaf(child, _CLOUD_ATTRS)
        else:
            raise _Decline
    return channel, entries


def _rss_item(item: ET.Element, base: str) -> dict[str, object]:
    entry: dict[str, object] = {}
    seen: set[str] = set()
    for child in item:
        name = _name(child.tag)
        allowed = _RSS_ITEM.get(name)
        if allowed is None:
            raise _Decline
        attrs = _leaf(child, allowed)
        if name in ("category", "dc:subject"):
            _category(entry, attrs, _text(child.text))
            continue
        _once(seen, name)
        if name == "title":
            entry["title"] = _text(child.text)
        elif name == "link":
            entry["link"] = _link_text(child.text, base)
        elif name == "description":
            entry["summary"] = _text(child.text)
        elif name == "content:encoded":
            value = _text(child.text)
            entry["content"] = [{"value": value}]
            entry.setdefault("summary", value)  # a <description> outranks it, before or after
        elif name == "guid":
            value = _text(child.text)
            entry["id"] = value
            if attrs.get("ispermalink", "true") == "true":
                entry.setdefault("link", value)  # a <link> outranks it, before or after
        elif name == "pubdate":
            entry["published_parsed"] = _parse_date(_text(child.text))
        elif name == "dc:date":
            entry["updated_parsed"] = _parse_date(_text(child.text))
        elif name in ("author", "dc:creator"):
            entry["author"] = _text(child.text)
        # comments, enclosure, source, wfw:*, slash:*, feedburner:origlink: none of our fields
    return entry


def _atom(root: ET.Element, base: str) -> tuple[dict[str, str], list[dict[str, object]]]:
    _attrs(root, _NONE)
    channel: dict[str, str] = {}
    entries: list[dict[str, object]] = []
    for child in root:
        name = _name(child.tag)
        if name == "entry":
            _attrs(child, _NONE)
            entries.append(_atom_entry(child, base))
        elif name in ("author", "contributor"):
            _person(child)
        elif name in _ATOM_FEED_CHILDREN:
            attrs = _leaf(child, _ATOM_FEED_CHILDREN[name])
            if name in ("title", "subtitle", "rights"):
                _content_type(attrs, "text/plain")
            if name == "link" and "href" not in attrs:
                raise _Decline
            if name == "title":
                if "title" in channel:
                    raise _Decline
                channel["title"] = _text(child.text)
        else:
            raise _Decline
    return channel, entries


def _atom_entry(element: ET.Element, base: str) -> dict[str, object]:
    entry: dict[str, object] = {}
    seen: set[str] = set()
    for child in element:
        name = _name(child.tag)
        if name in ("author", "contributor"):
            person = _person(child)
            if name == "author":
                _once(seen, name)
                entry["author"] = person
            continue
        allowed = _ATOM_ENTRY.get(name)
        if allowed is None:
            raise _Decline
        attrs = _leaf(child, allowed)
        if name == "link":
            _atom_link(entry, attrs, base)
            continue
        if name == "category":
            _category(entry, attrs, _text(child.text))
            continue
        _once(seen, name)
        if name in ("title", "summary", "content", "rights"):
            _content_type(attrs, "text/plain")
        if name == "id":
            value = _text(child.text)
            entry["id"] = value
            entry.setdefault("link", value)  # an alternate <link> outranks it, before or after
        elif name in ("title", "summary"):
            entry[name] = _text(child.text)
        elif name == "content":
            value = _text(child.text)
            entry["content"] = [{"value": value}]
            entry.setdefault("summary", value)  # a <summary> outranks it, before or after
        elif name == "published":
            entry["published_parsed"] = _parse_date(_text(child.text))
        elif name == "updated":
            entry["updated_parsed"] = _parse_date(_text(child.text))
    return entry


def _atom_link(entry: dict[str, object], attrs: dict[str, str], base: str) -> None:
    if "href" not in attrs:
        raise _Decline  # a link with text content: feedparser pushes it as text
    rel = attrs.get("rel", "alternate")
    kind = attrs.get("type", "application/atom+xml" if rel == "self" else "text/html")
    if rel == "alternate" and _TEXT_TYPES.get(kind, kind) in _HTML_TYPES:
        entry["link"] = _urljoin(base, attrs["href"])  # the last alternate link wins


def _person(element: ET.Element) -> str:
    """An Atom person's name as feedparser makes the entry's author of it: "name (email)",
    "name" or "email" (their text stripped, nothing more), or ""."""
    _attrs(element, _NONE)
    if (element.text or "").strip():
        raise _Decline
    parts: dict[str, str] = {}
    for part in element:
        kind = _name(part.tag)
        if kind not in _PERSON or kind in parts or (part.tail or "").strip():
            raise _Decline
        _leaf(part, _NONE)
        parts[kind] = (part.text or "").strip()
    name, email = parts.get("name"), parts.get("email")
    if name and email:
        return f"{name} ({email})"
    return name or email or ""
