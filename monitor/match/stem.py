"""Language-aware stemming for rules with `stem: <language>` (snowballstemmer, cached)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from functools import cache, lru_cache

import snowballstemmer

from monitor.match.text import fold

#: Codes accepted in `stem:`, mapped to snowball algorithm names.
LANGUAGES: dict[str, str] = {
    "ar": "arabic", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german",
    "el": "greek", "en": "english", "es": "spanish", "et": "estonian", "eu": "basque",
    "fi": "finnish", "fr": "french", "ga": "irish", "hi": "hindi", "hu": "hungarian",
    "hy": "armenian", "id": "indonesian", "it": "italian", "lt": "lithuanian", "ne": "nepali",
    "nl": "dutch", "no": "norwegian", "pl": "polish", "pt": "portuguese", "ro": "romanian",
    "ru": "russian", "sr": "serbian", "sv": "swedish", "ta": "tamil", "tr": "turkish",
    "fa": "persian", "yi": "yiddish",
}  # fmt: skip

#: Distinct words remembered per language: news vocabularies repeat, and stemming one word
#: costs about 30 µs uncached.
CACHE_SIZE = 200_000


@cache
def stemmer(language: str) -> Callable[[str], str]:
    """The cached stemming function for a language code from LANGUAGES (KeyError otherwise).

    Words are expected folded (lower case, accents removed) and come back the same way.
    """
    algorithm = snowballstemmer.stemmer(LANGUAGES[language])
    return lru_cache(maxsize=CACHE_SIZE)(algorithm.stemWord)


@lru_cache(maxsize=CACHE_SIZE)
def stem_word(language: str, token: str) -> str:
    """The matching form of one raw token under `language`: stemmed, then folded.

    Stemming comes before accent folding because stemmers need the letters their language
    writes (Russian "войной" stems right only with its "й"); folding the stem afterwards keeps
    matching accent-insensitive like everything else.
    """
    cased = unicodedata.normalize("NFC", token).casefold()
    return fold(stemmer(language)(cased))


def stem_words(language: str, tokens: Sequence[str]) -> list[str]:
    """`stem_word` over raw tokens (from `text.raw_words`), positions kept."""
    return [stem_word(language, token) for token in tokens]
