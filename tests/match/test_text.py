"""Tokenisation: Unicode words, CJK characters as tokens, raw/folded forms, the ASCII fast path."""

from __future__ import annotations

import pytest

from monitor.match import text as t
from monitor.match.text import fold, raw_words, tokens, words


def test_folds_case_and_accents() -> None:
    assert words("Le Café de ZÜRICH") == ["le", "cafe", "de", "zurich"]
    assert raw_words("Le Café de ZÜRICH") == ["Le", "Café", "de", "ZÜRICH"]


def test_cyrillic_greek_arabic_hebrew_words() -> None:
    assert words("Новые САНКЦИИ, банки") == ["новые", "санкции", "банки"]
    assert words("Ωμέγα Αθήνα") == ["ωμεγα", "αθηνα"]
    assert words("عقوبات جديدة") == ["عقوبات", "جديدة"]
    assert words("סנקציות חדשות") == ["סנקציות", "חדשות"]


def test_cjk_characters_are_each_a_token() -> None:
    assert words("東京都で") == ["東", "京", "都", "て"]
    assert words("コーヒー") == ["コ", "ー", "ヒ", "ー"]
    assert words("한국어 news") == ["한", "국", "어", "news"]


def test_raw_and_folded_have_the_same_tokens() -> None:
    for sample in ["e\u0301te\u0301 \u0301 x", "ﬁne ½ Straße", "東京 Zürich", "“Talks” — end…"]:
        assert len(words(sample)) == len(raw_words(sample)) == len(tokens(sample).spans)


def test_spans_point_into_the_original_text() -> None:
    for sample in ["“Talks” — Geneva’s end…", "Новые санкции", "東京都 Zürich", "plain ascii"]:
        found = tokens(sample)
        assert [fold(sample[a:b]) for a, b in found.spans] == found.folded


@pytest.mark.parametrize(
    "sample",
    ["Talks resume in Geneva", "Geneva’s “talks” — stalled…", "x_y 42 A-B", "", "  !!  "],
)
def test_fast_path_equals_slow_path(sample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = (words(sample), raw_words(sample), tokens(sample))
    monkeypatch.setattr(t, "_plain", lambda _: False)
    assert (words(sample), raw_words(sample), tokens(sample)) == fast


def test_typographic_punctuation_separates_words() -> None:
    assert words("Geneva’s “talks”—stalled") == ["geneva", "s", "talks", "stalled"]
