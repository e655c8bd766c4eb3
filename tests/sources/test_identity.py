"""Item identity: safe links, normalised links, keys and in-document de-duplication."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from monitor.sources.identity import Draft, assemble, item_key, normalise_link, safe_link

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BASE = "https://example.com/news/feed.xml"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("https://example.com/a", "https://example.com/a"),
        ("/rel/path", "https://example.com/rel/path"),
        ("story.html", "https://example.com/news/story.html"),
        ("//cdn.example.org/x", "https://cdn.example.org/x"),
        ("  https://example.com/padded  ", "https://example.com/padded"),
        ("https://example.com/a b", "https://example.com/a%20b"),
        ("javascript:alert(1)", ""),
        ("JavaScript:alert(1)", ""),
        ("data:text/html,<script>", ""),
        ("file:///etc/passwd", ""),
        ("ftp://example.com/file", ""),
        ("https://example.com/a\r\nSet-Cookie: x", ""),
        ("https://example.com:99999/", ""),
        ("http://[::1", ""),
        ("http:///no-host", ""),
        ("", ""),
    ],
    ids=[
        "absolute",
        "root-relative",
        "relative",
        "scheme-relative",
        "padded",
        "space",
        "javascript",
        "javascript-mixed-case",
        "data",
        "file",
        "ftp",
        "crlf",
        "bad-port",
        "bad-ipv6",
        "no-host",
        "empty",
    ],
)
def test_safe_link(link: str, expected: str) -> None:
    assert safe_link(link, BASE) == expected


@pytest.mark.parametrize("value", [None, 1.2, ["https://example.com/"], {"href": "x"}])
def test_safe_link_of_a_non_string_is_empty(value: object) -> None:
    assert safe_link(value, BASE) == ""


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("HTTPS://Example.COM/Path", "https://example.com/Path"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/a#section", "https://example.com/a"),
        (
            "https://example.com/a?id=7&utm_source=rss&UTM_Medium=x&b=%20&c",
            "https://example.com/a?id=7&b=%20&c",
        ),
        ("https://example.com/a?utm_campaign=z", "https://example.com/a"),
        ("https://user@Example.com/a", "https://user@example.com/a"),
        ("http://[2001:DB8::1]:80/a", "http://[2001:db8::1]/a"),
    ],
    ids=[
        "case",
        "default-tls-port",
        "default-port",
        "other-port",
        "empty-path",
        "fragment",
        "tracking-params",
        "only-tracking",
        "userinfo",
        "ipv6",
    ],
)
def test_normalise_link(link: str, expected: str) -> None:
    assert normalise_link(link) == expected


def test_key_prefers_the_feed_id() -> None:
    draft = Draft(guid="  tag:example.com,2024:1 ", link="https://example.com/a", title="t")
    assert item_key(draft) == "id:tag:example.com,2024:1"


def test_key_falls_back_to_the_normalised_link() -> None:
    draft = Draft(guid="", link="https://Example.com/a?utm_source=x#top", title="t")
    assert item_key(draft) == "link:https://example.com/a"


def test_key_falls_back_to_a_hash_of_the_text() -> None:
    published = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    draft = Draft(guid="", link="", title="Title", summary="Sum", published=published)
    digest = hashlib.sha256(f"Title\nSum\n{published.isoformat()}".encode()).hexdigest()
    assert item_key(draft) == "hash:" + digest
    assert item_key(Draft(guid="", link="", title="", summary="only summary")) is not None


def test_no_id_link_title_or_summary_means_no_key() -> None:
    assert item_key(Draft(guid=" ", link="", title="", content="content alone")) is None


@pytest.mark.parametrize("guid", ["x" * 513, "bad\x00id", "lone\ud800"])
def test_long_or_unstorable_ids_are_hashed(guid: str) -> None:
    key = item_key(Draft(guid=guid, link="", title=""))
    assert key is not None
    assert key.startswith("id:sha256:")
    assert len(key) == len("id:sha256:") + 64
    key.encode("utf-8")  # storable


def test_an_id_of_512_chars_is_kept() -> None:
    assert item_key(Draft(guid="x" * 512, link="", title="")) == "id:" + "x" * 512


def test_assemble_keeps_the_first_of_duplicate_keys_and_counts_the_unidentifiable() -> None:
    drafts = [
        Draft(guid="same", link="", title="first"),
        Draft(guid="", link="", title=""),
        Draft(guid="same", link="", title="second"),
        Draft(guid="", link="https://example.com/x", title="by link"),
    ]
    items, skipped = assemble(drafts, feed="news", now=NOW)
    assert [(i.key, i.title) for i in items] == [
        ("id:same", "first"),
        ("link:https://example.com/x", "by link"),
    ]
    assert skipped == 1
    assert all(i.feed == "news" and i.seen_at == NOW for i in items)
