"""Words for matching: Unicode-aware tokenisation shared by queries and item text.

A token is a run of Unicode word characters (letters, digits, underscore, with their combining
marks), except that each CJK ideograph, Hiragana, Katakana and Hangul syllable is a token of its
own (those scripts do not separate words with spaces, so the term "東京" becomes the phrase
("東", "京") and matches inside "東京都"). Every token has two forms (lists of equal length):

- folded (`words`): NFKD, combining marks dropped, NFC, casefolded: "Zürich" -> "zurich";
- raw (`raw_words`): only NFC-normalised, for case-sensitive terms: "Zürich" -> "Zürich".

Pure-ASCII text (after common typographic punctuation such as curly quotes and dashes) takes a
fast path: one `str.lower()` and one `re.findall`, no per-character unicodedata.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from itertools import islice
from operator import methodcaller
from typing import NamedTuple

import regex as rx

_ASCII_WORD = re.compile(r"\w+", re.ASCII)
_SPAN = methodcaller("span")
#: Typographic punctuation common in English news: text made only of ASCII and these still
#: takes the fast path (they are not word characters, and `lower()` leaves them alone).
_PUNCT = (
    "\u00a0\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00ab\u00bb\u2022\u00b7\u2009\u202f\u201e"
)
_NOT_PLAIN = re.compile(f"[^\x00-\x7f{_PUNCT}]")
# Ideographs (incl. extensions and compatibility), kana (incl. the prolonged sound mark and
# halfwidth forms), Hangul syllables, iteration marks: one token per character.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc\uff70\u3005\u3006\u303b\uac00-\ud7a3"
_HAS_CJK = rx.compile(f"[{_CJK}]")
_WORD = rx.compile(r"[\w\p{M}]+")
_WORD_CJK = rx.compile(rf"[{_CJK}]|[\w\p{{M}}--{_CJK}]+", rx.V1)


class Tokens(NamedTuple):
    """The tokens of a text: folded and raw forms (same length) and their character spans."""

    folded: list[str]
    raw: list[str]
    spans: list[tuple[int, int]]


def fold(text: str) -> str:
    """Case- and accent-insensitive form of `text` (NFKD, combining marks dropped, casefolded)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped).casefold()


@lru_cache(maxsize=200_000)
def _fold_token(token: str) -> str:
    # Compatibility forms can decompose to a space plus marks (U+FC5E): a token never holds
    # whitespace, or phrase keys built from tokens would split wrongly.
    return "".join(fold(token).split())


@lru_cache(maxsize=200_000)
def _raw_token(token: str) -> str:
    return unicodedata.normalize("NFC", token)


def _plain(text: str) -> bool:
    """Whether `text` is ASCII apart from common typographic punctuation (the fast path)."""
    return text.isascii() or _NOT_PLAIN.search(text) is None


def words(text: str) -> list[str]:
    """The folded words of `text`, in order; punctuation separates words."""
    if _plain(text):
        return _ASCII_WORD.findall(text.lower())
    return [word for word in map(_fold_token, _found(text)) if word]


def raw_words(text: str) -> list[str]:
    """The same tokens as `words` (same count and order), NFC-normalised but not folded."""
    if _plain(text):
        return _ASCII_WORD.findall(text)
    return [_raw_token(token) for token in _found(text) if _fold_token(token)]


def _found(text: str) -> list[str]:
    """Tokens of non-plain text as written (a stray run of combining marks folds to nothing)."""
    return (_WORD_CJK if _HAS_CJK.search(text) else _WORD).findall(text)


def tokens(text: str) -> Tokens:
    """Folded and raw tokens of `text` with their (start, end) spans in `text` itself."""
    if _plain(text):
        found = list(_ASCII_WORD.finditer(text))
        raw = [m.group() for m in found]
        return Tokens([w.lower() for w in raw], raw, [m.span() for m in found])
    folded: list[str] = []
    raw = []
    spans: list[tuple[int, int]] = []
    pattern = _WORD_CJK if _HAS_CJK.search(text) else _WORD
    for m in pattern.finditer(text):
        token = m.group()
        word = _fold_token(token)
        if word:
            folded.append(word)
            raw.append(_raw_token(token))
            spans.append(m.span())
    return Tokens(folded, raw, spans)


def token_span(text: str, first: int, last: int) -> tuple[int, int]:
    """Character span from the start of token `first` to the end of token `last` of `text`."""
    if _plain(text):
        kept: Iterator[tuple[int, int]] = map(_SPAN, _ASCII_WORD.finditer(text))
    else:
        pattern = _WORD_CJK if _HAS_CJK.search(text) else _WORD
        kept = (m.span() for m in pattern.finditer(text) if _fold_token(m.group()))
    start, end = next(islice(kept, first, None), (0, 0))
    if last > first:
        end = next(islice(kept, last - first - 1, None), (0, 0))[1]
    return start, end
