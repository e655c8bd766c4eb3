"""Every file of the shared feed corpus through parse_feed, plus hand-ported feedparser oracles.

The corpus lives beside the project (../shared/corpus/feeds); machines without it skip.
The `feedparser_expect` column is Python for feedparser's harness: it is read here as a
human oracle and ported by hand, never evaluated.
"""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources.feed import parse_feed

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "feeds"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.skipif(
    not (CORPUS / "MANIFEST.tsv").is_file(), reason=f"feed corpus not found at {CORPUS}"
)


def manifest() -> dict[str, dict[str, str]]:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        return {}
    with (CORPUS / "MANIFEST.tsv").open(encoding="utf-8", newline="") as tsv:
        rows = csv.DictReader(tsv, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {row["file"]: row for row in rows}


ROWS = manifest()


def headers_of(row: dict[str, str]) -> dict[str, str]:
    """The simulated response headers: "Name: value", one per row in this manifest."""
    headers = {}
    for line in row["simulated_http_headers"].split("\\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers


def parse(file: str) -> ParsedFeed:
    return parse_feed(
        (CORPUS / file).read_bytes(),
        url=f"http://corpus.test/{file}",
        headers=headers_of(ROWS[file]),
        feed="corpus",
        now=NOW,
    )


def check(file: str) -> ParsedFeed | None:
    """Parse one file and assert the invariants; None when it was refused with a ParseError."""
    try:
        first = parse(file)
    except ParseError as exc:  # refused with a reason; nothing but ParseError may escape
        assert str(exc)  # noqa: PT017
        return None
    keys = [item.key for item in first.items]
    assert all(keys), "every item has a key"
    assert len(set(keys)) == len(keys), "keys are unique within a document"
    for item in first.items:
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in item.title + item.link)
        assert item.link == "" or item.link.startswith(("http://", "https://"))
    # Stable identity: the same bytes give the same keys, so a re-fetch alerts on nothing.
    assert [item.key for item in parse(file).items] == keys
    return first


@pytest.mark.parametrize("file", sorted(ROWS))
def test_corpus_file(file: str) -> None:
    started = time.perf_counter()
    check(file)
    assert time.perf_counter() - started < 5


def test_the_whole_corpus_in_one_go() -> None:
    # Also covers the files a "-k 'not http'" selection drops (26 names contain "http").
    started = time.perf_counter()
    parsed = [check(file) for file in ROWS]
    assert time.perf_counter() - started < 30
    assert sum(1 for feed in parsed if feed is not None) >= 250


# --- hand-ported oracles (feedparser_expect -> our Item fields) -------------------------------


def test_oracle_rss_guid_is_the_key() -> None:
    # not bozo and entries[0]['guid'] == 'http://guid.example.com/'
    (item,) = parse("feedparser__wellformed__rss__item_guid.xml").items
    assert item.key == "id:http://guid.example.com/"


def test_oracle_rss_link_wins_over_a_permalink_guid() -> None:
    # not bozo and entries[0]['link'] == 'http://link.example.com/'
    (item,) = parse("feedparser__wellformed__rss__item_guid_conflict_link.xml").items
    assert item.link == "http://link.example.com/"


def test_oracle_rss_guid_not_permalink_is_not_a_link() -> None:
    # not bozo and not entries[0].has_key('link')
    (item,) = parse("feedparser__wellformed__rss__item_guid_not_permalink.xml").items
    assert item.link == ""
    assert item.key == "id:http://guid.example.com/"


def test_oracle_rdf_about_is_the_id() -> None:
    # not bozo and entries[0]['id'] == 'http://example.org/1'
    (item,) = parse("feedparser__wellformed__rdf__rdf_item_rdf_about.xml").items
    assert item.key == "id:http://example.org/1"


def test_oracle_rdf_item_link() -> None:
    # not bozo and entries[0]['link'] == 'http://example.com/1'
    (item,) = parse("feedparser__wellformed__rdf__rdf_item_link.xml").items
    assert item.link == "http://example.com/1"


def test_oracle_relative_link_resolves_against_the_final_url() -> None:
    # entries[0]['links'][0]['href'] == 'http://example.com/relative/link' with the file's
    # Content-Location header; our final URL is the base (it replaces Content-Location).
    file = "feedparser__wellformed__base__http_entry_link_base_content_location.xml"
    (item,) = parse(file).items
    assert item.link == "http://corpus.test/relative/link"


def test_relative_id_is_kept_as_written_not_resolved() -> None:
    # feedparser's oracle resolves it ('http://example.com/relative/link'); we deliberately do
    # not: an id resolved against the feed URL would change whenever that URL does.
    (item,) = parse("feedparser__wellformed__base__http_entry_id_base_content_location.xml").items
    assert item.key == "id:/relative/link"


def test_oracle_query_ampersands_in_links() -> None:
    # entries[0].link == 'http://example/?a=1&b=2&c'
    (item,) = parse("feedparser__entities__query_variable_entry.xml").items
    assert item.link == "http://example/?a=1&b=2&c"
    assert item.key == "link:http://example/?a=1&b=2&c"


def test_oracle_illformed_feed_still_gives_its_link() -> None:
    # entries[0].link == 'http://link/get?a=1&b=2' (the document is not well-formed)
    parsed = parse("feedparser__illformed__rss_item_link_corrupted_ampersands.xml")
    assert [item.link for item in parsed.items] == ["http://link/get?a=1&b=2"]
    assert parsed.warning is not None
    assert "not well-formed" in parsed.warning


def test_oracle_child_id_wins_and_duplicates_collapse() -> None:
    # entries[0]['id'] == entries[1]['id'] == 'Correct Value': one identity, one item.
    # feedparser resolves an Atom id (and an RSS permalink guid) against the base URL, so a
    # relative id's key depends on the final URL: "Correct Value" -> "http://corpus.test/...".
    parsed = parse("feedparser__wellformed__node_precedence__atom10_id.xml")
    assert [item.key for item in parsed.items] == ["id:Correct Value"]


def test_oracle_entity_declared_in_doctype() -> None:
    # not bozo and entries[0]['guid'] == 'tag:example.com,2006-05-04:/blog/'
    parsed = parse("feedparser__wellformed__rss__entity_in_doctype.xml")
    assert [item.key for item in parsed.items] == ["id:tag:example.com,2006-05-04:/blog/"]
    assert parsed.warning is None


def test_oracle_double_encoded_html_entity() -> None:
    # bozo and ord(entries[0]['description']) == 8230
    (item,) = parse("feedparser__encoding__bozo_double-encoded-html.xml").items
    assert item.summary == "\u2026"


def test_oracle_smart_quote() -> None:
    # not bozo and entries[0]['description'] == 'don\u2019t'
    (item,) = parse("feedparser__encoding__demoronize-1.xml").items
    assert item.summary == "don\u2019t"


def test_oracle_windows_1251_real_feed() -> None:
    parsed = parse("miniflux__parser__encoding_WINDOWS-1251.xml")
    assert parsed.title == "iBash.Org.Ru"
    assert parsed.items[0].title == "Цитата #17703"
    assert parsed.items[0].key == "id:http://ibash.org.ru/quote.php?id=17703"


def test_oracle_koi8r() -> None:
    parsed = parse("miniflux__encoding__koi8r.xml")
    assert parsed.title == "Пример RSS ленты"
    assert [item.title for item in parsed.items] == ["Первая новость", "Вторая новость"]


def test_oracle_json_feed_example() -> None:
    # not bozo and feed.title == 'My Example Feed' and len(entries) == 2
    parsed = parse("feedparser__json__example.json")
    assert parsed.title == "My Example Feed"
    assert [item.key for item in parsed.items] == ["id:2", "id:1"]
    assert parsed.items[1].content == "Hello, world!"


def test_oracle_json_feed_unknown_version() -> None:
    with pytest.raises(ParseError, match="unsupported JSON Feed version"):
        parse("reader__data__unknown.json")


@pytest.mark.parametrize(
    "file", ["miniflux__xml__iso88591.xml", "feedparser__illformed__rss_empty_document.xml"]
)
def test_oracle_non_feeds_are_refused(file: str) -> None:
    with pytest.raises(ParseError, match=r"^not a feed"):
        parse(file)
