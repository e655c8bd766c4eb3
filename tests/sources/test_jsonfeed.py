"""JSON Feed 1.0 / 1.1: versions, items, and wrong-typed fields that must not crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources.jsonfeed import parse_json_feed, parse_rfc3339

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
URL = "https://example.org/feed.json"
V11 = "https://jsonfeed.org/version/1.1"


def parse(document: object, max_items: int = 500) -> ParsedFeed:
    body = json.dumps(document).encode()
    return parse_json_feed(body, url=URL, feed="json", now=NOW, max_items=max_items)


def test_a_full_feed() -> None:
    parsed = parse(
        {
            "version": V11,
            "title": "My &amp; Feed",
            "items": [
                {
                    "id": "2",
                    "title": "Second",
                    "content_text": "Plain content",
                    "content_html": "<p>HTML content</p>",
                    "summary": "A summary",
                    "url": "/second",
                    "date_published": "2020-01-02T14:00:00-07:00",
                    "authors": [{"name": "Joe"}, {"url": "mailto:x@y"}, {"name": "Jane"}],
                    "tags": ["a", "b", "a", 7],
                },
                {
                    "id": "1",
                    "content_html": "<p>Hello,</p><script>alert()</script><p>world!</p>",
                    "external_url": "https://elsewhere.example/story",
                    "date_modified": "2020-01-02T12:00:00Z",
                },
            ],
        }
    )
    assert parsed.version == "json11"
    assert parsed.title == "My & Feed"
    first, second = parsed.items
    assert first.key == "id:2"
    assert first.feed == "json"
    assert first.link == "https://example.org/second"
    assert first.content == "Plain content"
    assert first.summary == "A summary"
    assert first.author == "Joe, Jane"
    assert first.tags == ("a", "b")
    assert first.published == datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
    assert first.seen_at == NOW
    assert second.link == "https://elsewhere.example/story"
    assert second.content == "Hello, world!"
    assert second.published == datetime(2020, 1, 2, 12, 0, tzinfo=UTC)


def test_version_1_0_with_a_single_author() -> None:
    parsed = parse(
        {
            "version": "https://jsonfeed.org/version/1",
            "items": [{"id": "x", "title": "t", "author": {"name": "Solo"}}],
        }
    )
    assert parsed.version == "json10"
    assert parsed.items[0].author == "Solo"


@pytest.mark.parametrize(
    "version", ["https://jsonfeed.org/version/1234", "2", "jsonfeed"], ids=["1234", "2", "word"]
)
def test_an_unknown_version_is_refused(version: str) -> None:
    with pytest.raises(ParseError, match=r"unsupported JSON Feed version '.+'"):
        parse({"version": version, "items": []})


@pytest.mark.parametrize("document", [{"items": []}, {"version": 1.1, "items": []}])
def test_a_missing_version_is_not_a_feed(document: object) -> None:
    with pytest.raises(ParseError, match="not a feed"):
        parse(document)


@pytest.mark.parametrize("body", [b"{", b'{"version": }', b"\xff\xfe{}", b"{" * 100_000])
def test_invalid_json_is_refused(body: bytes) -> None:
    with pytest.raises(ParseError, match="invalid JSON"):
        parse_json_feed(body, url=URL, feed="json", now=NOW)


def test_a_json_array_is_not_a_feed() -> None:
    with pytest.raises(ParseError, match="not a feed"):
        parse_json_feed(b"[1, 2]", url=URL, feed="json", now=NOW)


def test_wrong_typed_fields_are_dropped_or_coerced() -> None:
    # Shapes taken from lemon24/reader's tests/data/invalid.json.
    parsed = parse(
        {
            "version": V11,
            "title": ["not a string"],
            "items": {"not": "a list"},
        }
    )
    assert parsed.title == ""
    assert parsed.items == ()
    assert parsed.warning is not None

    parsed = parse(
        {
            "version": V11,
            "items": [
                {
                    "id": "2",
                    "title": 1000,
                    "content_text": ["not a string"],
                    "content_html": True,
                    "summary": True,
                    "date_published": "not a date",
                    "date_modified": {},
                    "url": 1.2,
                    "authors": "not a list",
                    "tags": "not a list",
                },
                {"id": 3.1415, "title": "float id", "author": "not a dict"},
                {"id": 42, "authors": ["not a dict", {"name": []}, {"name": "Jane"}]},
                {"id": True, "title": "a boolean is no id"},
                {"title": "no id at all"},
                "not a dict",
            ],
        }
    )
    keys = [item.key for item in parsed.items]
    assert keys[:3] == ["id:2", "id:3.1415", "id:42"]
    # Entries without a usable id are kept under a text hash rather than lost.
    assert [k.split(":")[0] for k in keys[3:]] == ["hash", "hash"]
    assert [i.title for i in parsed.items[3:]] == ["a boolean is no id", "no id at all"]
    wrong = parsed.items[0]
    assert (wrong.title, wrong.content, wrong.summary, wrong.link) == ("", "", "", "")
    assert wrong.published is None
    assert wrong.tags == ()
    assert parsed.items[1].author == ""
    assert parsed.items[2].author == "Jane"
    assert parsed.skipped == 1  # "not a dict"


def test_duplicate_ids_keep_the_first_and_max_items_reads_from_the_top() -> None:
    items = [{"id": "a", "title": "first"}, {"id": "a", "title": "again"}]
    items += [{"id": str(i), "title": f"n{i}"} for i in range(10)]
    parsed = parse({"version": V11, "items": items}, max_items=5)
    assert [(i.key, i.title) for i in parsed.items] == [
        ("id:a", "first"),
        ("id:0", "n0"),
        ("id:1", "n1"),
        ("id:2", "n2"),
    ]


def test_hostile_text_and_links() -> None:
    parsed = parse(
        {
            "version": V11,
            "items": [
                {
                    "id": "x",
                    "title": "<script>alert(1)</script>Hi\r\nBcc: a@b",
                    "url": "javascript:alert(1)",
                    "external_url": "data:text/html,x",
                }
            ],
        }
    )
    item = parsed.items[0]
    assert item.title == "Hi Bcc: a@b"
    assert item.link == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-01-02T14:00:00-07:00", datetime(2020, 1, 2, 21, 0, tzinfo=UTC)),
        ("2020-01-04T01:00:00+0100", datetime(2020, 1, 4, 0, 0, tzinfo=UTC)),
        ("2020-01-02T12:00:00.123456789Z", datetime(2020, 1, 2, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2020-01-02t12:00:00z", datetime(2020, 1, 2, 12, 0, tzinfo=UTC)),
        ("2020-01-02T12:00:00", datetime(2020, 1, 2, 12, 0, tzinfo=UTC)),
        ("2020-01-02", datetime(2020, 1, 2, tzinfo=UTC)),
        ("2100-01-01T00:00:00Z", datetime(2100, 1, 1, tzinfo=UTC)),
        ("not a date", None),
        ("2020-13-01T00:00:00Z", None),
        ("2020-01-01T00:00:00+25:00", None),
        ("9999-12-31T23:00:00-05:00", None),
        ("", None),
        (None, None),
        (12345, None),
    ],
)
def test_parse_rfc3339(value: object, expected: datetime | None) -> None:
    parsed = parse_rfc3339(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


def test_an_item_without_id_is_keyed_by_its_link() -> None:
    parsed = parse(
        {"version": V11, "items": [{"url": "https://example.org/story", "title": "Talks"}]}
    )
    assert [item.key for item in parsed.items] == ["link:https://example.org/story"]
    assert parsed.skipped == 0
