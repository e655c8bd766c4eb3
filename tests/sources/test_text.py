"""Feed text -> plain text: markup, entities, control characters, length."""

from __future__ import annotations

import time

import pytest

from monitor.sources.text import (
    ELLIPSIS,
    MAX_TAGS,
    clean_tags,
    clean_text,
    repair_char_refs,
    strip_tags,
    truncate,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("AT&amp;T", "AT&T"),
        ("don&#8217;t", "don’t"),
        ("<p>Hello</p><p>world</p>", "Hello world"),
        ("line<br>break<br/>again", "line break again"),
        ("<b>Hel</b>lo", "Hello"),
        ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
        ("a<3 b", "a<3 b"),
        ("x <b", "x <b"),
        ("&lt;b&gt;escaped&lt;/b&gt;", "<b>escaped</b>"),
        ("<script>alert(1)</script>News", "News"),
        ("a<style>p { color: red }</style>b", "a b"),
        ("<SCRIPT type='x'>evil()</SCRIPT >ok", "ok"),
        ("before<script>never closed", "before"),
        ("<!-- hidden -->shown", "shown"),
        ("a <!-- never closed <script>x</script>", "a"),
        ("<![CDATA[<b>bold</b><script>x</script>]]>", "bold"),
        ("<![CDATA[<script></script>]]&gt;", "]]>"),
        ("<![CDATA[kept]]> text", "kept text"),
        ("  lots \n\t of   space ", "lots of space"),
        ("a\x00b\x07c", "a b c"),
        ("Hello&#13;&#10;Bcc: x@y", "Hello Bcc: x@y"),
        ("x\u2028y\u2029z\x85w\x7fv\x9bu", "x y z w v u"),
        ("lone\ud800surrogate", "lone surrogate"),
        ("e\u0301", "\u00e9"),  # NFC
        ("non&nbsp;breaking", "non breaking"),
        ("&bogus; stays", "&bogus; stays"),
    ],
)
def test_clean_text(raw: str, expected: str) -> None:
    assert clean_text(raw, 1_000) == expected


@pytest.mark.parametrize("value", [None, 1000, ["not a string"], {"a": 1}, True, ""])
def test_clean_text_of_a_non_string_is_empty(value: object) -> None:
    assert clean_text(value, 100) == ""


def test_truncate_counts_the_ellipsis() -> None:
    assert truncate("abcdef", 4) == "abc" + ELLIPSIS
    assert truncate("abc", 3) == "abc"
    assert len(clean_text("word " * 1_000, 100)) == 100
    assert clean_text("word " * 1_000, 100).endswith(ELLIPSIS)


def test_an_input_cut_before_cleaning_still_says_so() -> None:
    # 40 chars of visible text hidden after 10,000 chars of markup: the cap cuts it off.
    text = clean_text("<i></i>" * 2_000 + "x" * 40, 100)
    assert text.endswith(ELLIPSIS)
    assert len(text) <= 100


@pytest.mark.parametrize(
    "piece",
    ["<a ", "<!--", "<![", "</", "<a>", "<", "&#", "<script>", "<!", "<![CDATA[>", "<![CDATA[x]]"],
)
def test_hostile_markup_is_stripped_in_linear_time(piece: str) -> None:
    # html.parser on 3.11 takes ~50 s for "<a " * 20000; this must stay well under a second.
    started = time.perf_counter()
    strip_tags(piece * 200_000)
    assert time.perf_counter() - started < 2.0


def test_clean_tags_dedupes_cleans_and_caps() -> None:
    assert clean_tags(["News", " news ", "News", "", None, 3, "<b>World</b>"]) == (
        "News",
        "news",
        "World",
    )
    assert len(clean_tags(f"t{i}" for i in range(1_000))) == MAX_TAGS


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"&#55357;&#56832;", b"&#128512;"),  # emoji as UTF-16 code units -> one code point
        (b"&#xD83D;&#xDE00;", b"&#128512;"),
        (b"a &#xD800; b", b"a &#xFFFD; b"),
        (b"a &#55296 b", b"a &#xFFFD; b"),
        (b"&#xDE00;&#xD83D;", b"&#xFFFD;&#xFFFD;"),
        (b"&#x110000;", b"&#xFFFD;"),
        (b"&#99999999999999999999;", b"&#xFFFD;"),
        (b"&#8217; &#x2019; &#128512; &amp;", b"&#8217; &#x2019; &#128512; &amp;"),
        (b"no references", b"no references"),
    ],
)
def test_repair_char_refs(body: bytes, expected: bytes) -> None:
    assert repair_char_refs(body) == expected
