"""Language-aware stemming for rules with `stem: <language>` (snowballstemmer, cached)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache

import snowballstemmer

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
