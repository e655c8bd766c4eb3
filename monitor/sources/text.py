"""Feed text -> plain text: tags stripped, entities decoded, control characters removed, bounded.

Every feed-supplied string passes through `clean_text` before it becomes part of an `Item`, so
matchers and notifiers only ever see single-line, NFC-normalised, length-capped plain text.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable

TITLE_LIMIT = 1_000
SUMMARY_LIMIT = 10_000
CONTENT_LIMIT = 50_000
AUTHOR_LIMIT = 500
TAG_LIMIT = 200
#: Most tags kept per item; a feed could list thousands.
MAX_TAGS = 100

#: Input read per field, as a multiple of its output limit. Markup-heavy HTML is rarely more than
#: 10x its text; the cap bounds the work one hostile field can cause.
_INPUT_FACTOR = 20

ELLIPSIS = "…"

#: Tags whose boundaries separate words. Other (inline) tags vanish without a space: "<b>Hel</b>lo".
_BLOCK_WORDS = (
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 "
    "header hr img li main nav ol p pre section table tbody td tfoot th thead tr ul"
)
_BLOCK_TAGS = frozenset(_BLOCK_WORDS.split())
#: Elements whose content is code, not text.
_RAW_TAGS = frozenset({"script", "style"})

# A "<" starts markup only when followed by a letter, "/letter", "!" or "?" (as in html.parser),
# so plain text such as "5 < 6 and 7 > 3" or "a<3" is left alone.
_MARKUP_START = re.compile(r"<(?:[A-Za-z]|/[A-Za-z]|!|\?)")
_TAG_NAME = re.compile(r"/?([A-Za-z][A-Za-z0-9]*)")
_RAW_END = {name: re.compile(rf"</{name}", re.IGNORECASE) for name in _RAW_TAGS}

# Numeric character references that can be surrogates (D800-DFFF: 4+ hex or 5+ decimal digits)
# or beyond Unicode; smaller ones are always valid and never reach the callback.
_BIG_REF = rb"(&#(?:[xX]0*([0-9a-fA-F]{4,})|0*([0-9]{5,}));?)"  # sgmllib needs no ";"
_BIG_REFS = re.compile(_BIG_REF + _BIG_REF + b"?")

# C0 (tab/newline included), DEL, C1 (NEL included), lone surrogates, line/paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def strip_tags(value: str) -> str:
    """Remove markup from `value`, keeping its text; entities are not decoded here.

    A hand-written scanner rather than `html.parser`: on CPython 3.11 html.parser is quadratic on
    inputs like "<a " * 20000 (measured: 60 KB -> 50 s) and raises AssertionError on "<![" junk.
    Every step here either advances past a tag or ends the scan, so the cost is linear.
    """
    out: list[str] = []
    pos = 0
    last_cdata_end = value.rfind("]]>")  # saves a failing, whole-string search per "<![CDATA["
    while (start := _MARKUP_START.search(value, pos)) is not None:
        i = start.start()
        out.append(value[pos:i])
        end = _markup_end(value, i, last_cdata_end)
        if end < 0 and value.startswith("<!--", i):  # as in browsers: hides the rest
            return "".join(out)
        if end < 0:  # an unclosed tag is text, as html.parser shows it ("x <b", "if a <b")
            pos = i
            break
        if value.startswith("<![CDATA[", i) and value.startswith("]]>", end - 3):
            out.append(strip_tags(value[i + 9 : end - 3]))  # its text counts, its markup not
        elif (name := _TAG_NAME.match(value, i + 1)) is not None:
            tag = name.group(1).lower()
            if tag in _BLOCK_TAGS:
                out.append(" ")
            if tag in _RAW_TAGS and not value.startswith("</", i):
                closing = _RAW_END[tag].search(value, end)
                if closing is None:  # unterminated script: drop everything after it
                    return "".join(out)
                out.append(" ")
                end = closing.start()
        pos = end
    out.append(value[pos:])
    return "".join(out)


def _markup_end(value: str, i: int, last_cdata_end: int) -> int:
    """Index just past the markup starting at `i`, or -1 when it is never closed."""
    if value.startswith("<!--", i):
        found = value.find("-->", i + 4)
        return found + 3 if found >= 0 else -1
    if value.startswith("<![CDATA[", i) and last_cdata_end >= i + 9:
        return value.find("]]>", i + 9) + 3
    # Anything else, an unclosed CDATA section included, ends at the next ">" (as in HTML5).
    found = value.find(">", i + 1)
    return found + 1 if found >= 0 else -1


def clean_text(value: object, limit: int) -> str:
    """Plain, single-line text of a possibly-HTML feed value, at most `limit` characters.

    Non-strings (a feed's wrong-typed field) give "". Tags go first, then entities, so an
    escaped "&lt;b&gt;" survives as the literal text "<b>" rather than being stripped.
    """
    if not isinstance(value, str) or not value:
        return ""
    cap = limit * _INPUT_FACTOR
    text = html.unescape(strip_tags(value[:cap]))
    # Controls go before NFC so normalisation never sees lone surrogates.
    text = unicodedata.normalize("NFC", _CONTROLS.sub(" ", text))
    text = " ".join(text.split())
    if len(value) > cap and not text.endswith(ELLIPSIS):
        text = text[: max(limit - 1, 0)].rstrip() + ELLIPSIS  # input was cut: say so
    return truncate(text, limit)


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters on a code point boundary, marked with "…"."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + ELLIPSIS


def repair_char_refs(body: bytes) -> bytes:
    """Rewrite numeric character references feedparser's lenient parser would crash on.

    "&#55357;&#56832;" (an emoji written as UTF-16 code units, common from JavaScript-based
    publishers) becomes "&#128512;"; a lone surrogate or a value past U+10FFFF becomes U+FFFD.
    feedparser raises UnicodeEncodeError / ValueError / OverflowError on them, losing the feed.
    """
    if b"&#" not in body:
        return body
    return _BIG_REFS.sub(_repair_refs, body)


def _repair_refs(match: re.Match[bytes]) -> bytes:
    first_ref, first_hex, first_dec, second_ref, second_hex, second_dec = match.groups()
    first = _ref_value(first_hex, first_dec)
    if second_ref is None:
        return _valid_ref(first, first_ref)
    second = _ref_value(second_hex, second_dec)
    if 0xD800 <= first < 0xDC00 and 0xDC00 <= second < 0xE000:
        return b"&#%d;" % (0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
    return _valid_ref(first, first_ref) + _valid_ref(second, second_ref)


def _ref_value(hex_digits: bytes | None, decimal: bytes | None) -> int:
    digits, base = (hex_digits, 16) if hex_digits else (decimal or b"0", 10)
    return int(digits, base) if len(digits) <= 8 else 0x110000  # 9+ digits: out of range


def _valid_ref(value: int, original: bytes) -> bytes:
    return b"&#xFFFD;" if 0xD800 <= value < 0xE000 or value > 0x10FFFF else original


def clean_tags(values: Iterable[object]) -> tuple[str, ...]:
    """Cleaned, non-empty, de-duplicated tags in first-seen order, at most MAX_TAGS."""
    tags: dict[str, None] = {}
    for value in values:
        tag = clean_text(value, TAG_LIMIT)
        if tag:
            tags[tag] = None
            if len(tags) >= MAX_TAGS:
                break
    return tuple(tags)
