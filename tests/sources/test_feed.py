"""parse_feed: golden feeds, identity fallbacks, hostile documents and encodings."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources.feed import parse_feed

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
URL = "https://example.com/news/feed.xml"


def parse(
    body: bytes | str,
    headers: Mapping[str, str] | None = None,
    max_items: int = 500,
    url: str = URL,
    *,
    fast: bool = True,
) -> ParsedFeed:
    data = body.encode() if isinstance(body, str) else body
    return parse_feed(
        data, url=url, headers=headers or {}, feed="news", now=NOW, max_items=max_items, fast=fast
    )


def rss(items: str, channel: str = "", prolog: str = '<?xml version="1.0"?>\n') -> str:
    return (
        f'{prolog}<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        f"<channel><title>Chan</title><link>https://example.com/</link>{channel}{items}"
        "</channel></rss>"
    )


# --- golden feeds ------------------------------------------------------------------------------

RSS_GOLDEN = rss(
    channel="<ttl>15</ttl>",
    items="""
<item>
  <guid isPermaLink="false">urn:uuid:1</guid>
  <title>AT&amp;amp;T buys &lt;b&gt;Time&lt;/b&gt; &#8217;24</title>
  <link>/2024/att.html?utm_source=rss</link>
  <description>&lt;p&gt;First&lt;br&gt;paragraph&lt;/p&gt;</description>
  <content:encoded><![CDATA[<div>Full <em>story</em></div>]]></content:encoded>
  <author>desk@example.com (News Desk)</author>
  <category>Business</category><category>Tech</category><category>Business</category>
  <pubDate>Tue, 30 Apr 2024 10:00:00 +0200</pubDate>
</item>
<item>
  <title>Linked only</title>
  <link>https://Example.com/story?id=2&amp;utm_medium=x#comments</link>
</item>
<item>
  <title>Hashed</title>
  <description>No guid, no link</description>
</item>
""",
)


def test_rss_golden() -> None:
    parsed = parse(RSS_GOLDEN)
    assert parsed.version == "rss20"
    assert parsed.title == "Chan"
    assert parsed.ttl == 15
    assert parsed.warning is None
    assert parsed.skipped == 0
    first, linked, hashed = parsed.items
    assert first.key == "id:urn:uuid:1"
    assert first.feed == "news"
    assert first.title == "AT&T buys Time ’24"
    assert first.link == "https://example.com/2024/att.html?utm_source=rss"
    assert first.summary == "First paragraph"
    assert first.content == "Full story"
    assert "News Desk" in first.author
    assert first.tags == ("Business", "Tech")
    assert first.published == datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    assert first.seen_at == NOW
    assert linked.key == "link:https://example.com/story?id=2"
    assert linked.link == "https://Example.com/story?id=2&utm_medium=x#comments"
    assert hashed.key.startswith("hash:")
    assert hashed.link == ""


def test_atom_golden() -> None:
    parsed = parse(
        """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://example.com/blog/">
  <title type="html">Blog &amp;lt;3</title>
  <id>urn:feed</id>
  <entry>
    <id>tag:example.com,2024:1</id>
    <title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">Hello <b>there</b></div></title>
    <link rel="alternate" href="posts/1"/>
    <updated>2024-04-30T10:00:00Z</updated>
    <summary type="html">&lt;p&gt;Short&lt;/p&gt;</summary>
    <content type="html">&lt;p&gt;Long &amp;amp; full&lt;/p&gt;</content>
    <author><name>Ann</name></author>
    <category term="python"/>
  </entry>
  <entry>
    <title>No id</title>
    <link href="https://example.com/blog/posts/2"/>
  </entry>
</feed>"""
    )
    assert parsed.version == "atom10"
    assert parsed.title == "Blog <3"
    first, second = parsed.items
    assert first.key == "id:tag:example.com,2024:1"
    assert first.title == "Hello there"
    assert first.link == "https://example.com/blog/posts/1"
    assert first.summary == "Short"
    assert first.content == "Long & full"
    assert first.author == "Ann"
    assert first.tags == ("python",)
    assert first.published == datetime(2024, 4, 30, 10, 0, tzinfo=UTC)
    assert second.key == "link:https://example.com/blog/posts/2"


def test_rdf_golden() -> None:
    parsed = parse(
        """<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
         xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel rdf:about="https://example.com/"><title>RDF</title></channel>
  <item rdf:about="https://example.com/1">
    <title>One</title><link>https://example.com/1</link>
    <dc:date>2024-04-30T10:00:00+00:00</dc:date>
  </item>
</rdf:RDF>"""
    )
    assert parsed.version == "rss10"
    assert parsed.title == "RDF"
    (item,) = parsed.items
    assert item.key == "id:https://example.com/1"
    assert item.published == datetime(2024, 4, 30, 10, 0, tzinfo=UTC)


JSON_FEED = b"""
{"version": "https://jsonfeed.org/version/1.1", "title": "J",
 "items": [{"id": 1, "title": "One", "url": "/one"}]}"""


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "application/feed+json"}, {"content-type": "text/plain"}],
)
def test_json_feed_is_detected_by_its_first_byte(headers: dict[str, str]) -> None:
    parsed = parse(JSON_FEED, headers)
    assert parsed.version == "json11"
    assert [(i.key, i.link) for i in parsed.items] == [("id:1", "https://example.com/one")]


def test_json_feed_is_detected_by_content_type() -> None:
    with pytest.raises(ParseError, match="invalid JSON"):
        parse(b"  [not json", {"content-type": "application/json; charset=utf-8"})
    # A server that labels XML as JSON still gets its XML parsed.
    assert parse(rss("<item><guid>1</guid></item>"), {"content-type": "application/json"}).items


# --- identity and fields -----------------------------------------------------------------------


def test_relative_links_resolve_against_the_final_url() -> None:
    parsed = parse(rss("<item><title>t</title><link>../other/story</link></item>"))
    assert parsed.items[0].link == "https://example.com/other/story"
    assert parsed.items[0].key == "link:https://example.com/other/story"


def test_hostile_titles_come_out_as_one_plain_line() -> None:
    parsed = parse(
        rss(
            "<item><guid>1</guid><title>&lt;script&gt;alert(1)&lt;/script&gt;Hi</title></item>"
            "<item><guid>2</guid><title>a\x00b\x07c</title></item>"
            "<item><guid>3</guid><title>Hello&#13;&#10;Bcc: x@y</title></item>"
            "<item><guid>4</guid><title>5 &lt; 6 and 7 &gt; 3</title></item>"
        )
    )
    titles = [item.title for item in parsed.items]
    assert titles == ["Hi", "a b c", "Hello Bcc: x@y", "5 < 6 and 7 > 3"]
    for title in titles:
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in title)


def test_character_references_feedparser_would_crash_on() -> None:
    parsed = parse(
        rss(
            "<item><guid>1</guid><title>Smile &#55357;&#56832; a&#xD800;b c&#x110000;d</title>"
            "</item>"
        )
    )
    assert parsed.items[0].title == "Smile \U0001f600 a\ufffdb c\ufffdd"


@pytest.mark.parametrize("link", ["javascript:alert(1)", "data:text/html,x", "file:///etc/passwd"])
def test_unsafe_links_are_dropped(link: str) -> None:
    parsed = parse(rss(f"<item><title>t</title><link>{link}</link></item>"))
    assert parsed.items[0].link == ""
    assert parsed.items[0].key.startswith("hash:")


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Wed, 01 May 2024 09:30:00 GMT", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("Fri, 01 Jan 2100 00:00:00 GMT", datetime(2100, 1, 1, tzinfo=UTC)),
        ("not a date", None),
        ("", None),
    ],
)
def test_dates(date: str, expected: datetime | None) -> None:
    parsed = parse(rss(f"<item><guid>1</guid><pubDate>{date}</pubDate></item>"))
    assert parsed.items[0].published == expected


def test_updated_is_the_fallback_date() -> None:
    parsed = parse(
        '<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>1</id>'
        "<updated>2024-01-02T03:04:05Z</updated></entry></feed>"
    )
    assert parsed.items[0].published == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_duplicate_guids_give_one_item_and_the_first_wins() -> None:
    parsed = parse(
        rss(
            '<item><guid isPermaLink="false">dup</guid><title>first</title></item>'
            '<item><guid isPermaLink="false">dup</guid><title>second</title></item>'
        )
    )
    assert [(i.key, i.title) for i in parsed.items] == [("id:dup", "first")]
    assert parsed.skipped == 0


def test_entries_without_id_link_title_or_summary_are_skipped() -> None:
    parsed = parse(rss("<item><author>nobody</author></item><item><guid>1</guid></item>"))
    assert [i.key for i in parsed.items] == ["id:1"]
    assert parsed.skipped == 1


def test_max_items_reads_from_the_top() -> None:
    items = "".join(f'<item><guid isPermaLink="false">{n}</guid></item>' for n in range(20))
    parsed = parse(rss(items), max_items=3)
    assert [i.key for i in parsed.items] == ["id:0", "id:1", "id:2"]


def test_long_fields_are_truncated() -> None:
    parsed = parse(rss(f"<item><guid>1</guid><title>{'word ' * 1000}</title></item>"))
    assert len(parsed.items[0].title) == 1000
    assert parsed.items[0].title.endswith("…")


@pytest.mark.parametrize(("ttl", "expected"), [("60", 60), ("soon", None), ("-5", None)])
def test_ttl(ttl: str, expected: int | None) -> None:
    assert parse(rss("", channel=f"<ttl>{ttl}</ttl>")).ttl == expected


# --- acceptance and refusal --------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"   \n\t ", b"\xef\xbb\xbf\n"])
def test_an_empty_document_is_refused(body: bytes) -> None:
    with pytest.raises(ParseError, match=r"^empty document$"):
        parse(body)


def test_an_html_page_is_not_a_feed() -> None:
    page = b"<!DOCTYPE html>\n<html><head><title>Hi</title></head><body><h1>Not a feed</h1>"
    with pytest.raises(ParseError, match=r"^not a feed: looks like an HTML page$"):
        parse(page)


def test_other_xml_is_not_a_feed() -> None:
    with pytest.raises(ParseError, match=r"^not a feed: no RSS, Atom or JSON Feed content found$"):
        parse('<?xml version="1.0"?><note><to>Ana</to></note>')


def test_a_feed_with_no_items_is_a_quiet_success() -> None:
    parsed = parse(rss(""))
    assert (parsed.version, parsed.title, parsed.items, parsed.warning) == (
        "rss20",
        "Chan",
        (),
        None,
    )


def test_malformed_xml_with_items_is_accepted_with_a_warning() -> None:
    parsed = parse("\n" + rss("<item><guid>1</guid><title>t</title></item>"))
    assert [i.title for i in parsed.items] == ["t"]
    assert parsed.warning is not None
    assert parsed.warning.startswith("feed is not well-formed XML (line ")
    assert parsed.warning.endswith("; parsed leniently")


def test_an_unexpected_feedparser_failure_becomes_a_parse_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise UnicodeError("label empty or too long")

    monkeypatch.setattr(feedparser, "parse", explode)
    with pytest.raises(ParseError, match=r"^could not parse feed: UnicodeError: label empty"):
        parse(rss(""), fast=False)


def test_feedparser_only_ever_gets_bytes_in_a_bytesio(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, dict[str, str]]] = []
    real = feedparser.parse

    def spy(source: object, **kwargs: dict[str, str]) -> object:
        calls.append((source, kwargs["response_headers"]))
        return real(source, **kwargs)

    monkeypatch.setattr(feedparser, "parse", spy)
    parse(rss(""), {"content-type": "application/rss+xml", "etag": "x"}, fast=False)
    ((source, headers),) = calls
    assert isinstance(source, io.BytesIO)
    assert headers["content-location"] == URL
    assert headers["etag"] == "x"


def test_a_body_that_is_a_local_path_is_not_opened(tmp_path: Path) -> None:
    local = tmp_path / "local.xml"
    local.write_text(rss("<item><guid>1</guid><title>LOCAL FILE READ</title></item>"))
    for body in (str(local).encode(), local.as_uri().encode()):
        with pytest.raises(ParseError, match="not a feed"):
            parse(body)


# --- DTD entities ------------------------------------------------------------------------------


def entity_feed(declarations: str, title: str) -> str:
    return rss(
        f"<item><guid>1</guid><title>{title}</title></item>",
        prolog=f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n{declarations}\n]>\n',
    )


def test_quadratic_entity_blowup_stays_unexpanded() -> None:
    body = entity_feed(f'<!ENTITY a "{"A" * 50_000}">', "&a;" * 2_000)
    started = time.perf_counter()
    parsed = parse(body)
    assert time.perf_counter() - started < 5
    assert len(parsed.items[0].title) <= 1_000
    assert "A" * 100 not in parsed.items[0].title
    assert parsed.warning is not None
    assert "DTD entity declarations were removed" in parsed.warning


def test_external_entities_are_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    body = entity_feed(f'<!ENTITY xxe SYSTEM "{secret.as_uri()}">', "a &xxe; b")
    parsed = parse(body)
    assert "TOPSECRET" not in repr(parsed)


def test_billion_laughs_stay_unexpanded() -> None:
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)
    ]
    parsed = parse(entity_feed("\n".join(levels), "&lol9;"))
    assert len(parsed.items[0].title) < 50


def test_small_internal_entities_still_resolve() -> None:
    parsed = parse(entity_feed('<!ENTITY site "example.com">', "Hello from &site;"))
    assert parsed.items[0].title == "Hello from example.com"
    assert parsed.warning is None


def test_many_small_entity_declarations_are_removed() -> None:
    # Each kept declaration costs a scan of the document; past a handful they all go.
    declarations = "\n".join(f'<!ENTITY e{n} "x">' for n in range(50))
    parsed = parse(entity_feed(declarations, "&e1; title"))
    assert parsed.warning is not None
    assert "DTD entity declarations were removed" in parsed.warning


def test_entity_declarations_in_utf16_are_removed() -> None:
    body = entity_feed(f'<!ENTITY a "{"A" * 50_000}">', "&a;" * 2_000)
    body = body.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-16"?>')
    parsed = parse(body.encode("utf-16"))
    assert len(parsed.items[0].title) <= 1_000
    assert parsed.warning is not None


def test_a_declaration_hidden_in_utf7_is_still_removed() -> None:
    body = entity_feed(f'<!ENTITY a "{"A" * 50_000}">', "&a;" * 2_000).replace(
        '<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-7"?>'
    )
    data = body.encode("utf-7").replace(b"<!ENTITY", b"+ADw-!ENTITY")
    assert b"<!ENTITY" not in data
    parsed = parse(data)
    assert len(parsed.items[0].title) <= 1_000
    assert parsed.warning is not None
    assert "DTD entity declarations were removed" in parsed.warning


# --- encodings ---------------------------------------------------------------------------------

CYRILLIC = rss("<item><guid>1</guid><title>Новости дня</title></item>", prolog="")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_a_byte_order_mark_decides_the_encoding(codec: str) -> None:
    body = '<?xml version="1.0" encoding="utf-16"?>\n' + CYRILLIC
    parsed = parse(body.encode(codec), {"content-type": "application/rss+xml; charset=latin-1"})
    assert parsed.items[0].title == "Новости дня"


def test_windows_1251_declared_in_the_prolog() -> None:
    body = ('<?xml version="1.0" encoding="windows-1251"?>\n' + CYRILLIC).encode("cp1251")
    parsed = parse(body, {"content-type": "application/rss+xml"})
    assert parsed.items[0].title == "Новости дня"
    assert parsed.warning is None


def test_a_lying_charset_header_is_overridden_with_a_warning() -> None:
    body = ('<?xml version="1.0" encoding="windows-1251"?>\n' + CYRILLIC).encode("cp1251")
    parsed = parse(body, {"content-type": "application/rss+xml; charset=utf-8"})
    assert parsed.items[0].title == "Новости дня"
    assert parsed.warning == "declared charset 'utf-8' was wrong; decoded as windows-1251"


def test_undeclared_bytes_that_are_not_utf8_fall_back_with_a_warning() -> None:
    parsed = parse(
        rss("<item><guid>1</guid><title>Café</title></item>", prolog="").encode("cp1252")
    )
    assert parsed.items[0].title == "Café"
    assert (
        parsed.warning == "no charset declared and the bytes are not UTF-8; decoded as windows-1252"
    )


def test_utf8_without_declaration_or_content_type_is_utf8() -> None:
    # feedparser alone would pick ISO-8859-1 here (headers present, no Content-Type).
    parsed = parse(CYRILLIC.encode())
    assert parsed.items[0].title == "Новости дня"


def test_a_non_xml_content_type_is_survivable() -> None:
    parsed = parse(rss("<item><guid>1</guid></item>"), {"content-type": "text/html"})
    assert len(parsed.items) == 1


def test_item_identity_survives_a_change_of_feed_url() -> None:
    from datetime import UTC, datetime

    from monitor.sources.feed import parse_feed

    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        b"<item><guid>12345</guid><title>a</title><link>/story/1</link></item>"
        b"</channel></rss>"
    )
    now = datetime(2026, 11, 28, tzinfo=UTC)
    old = parse_feed(body, url="http://old.example/feed.xml", headers={}, feed="f", now=now)
    new = parse_feed(body, url="https://cdn.example/x/feed.xml", headers={}, feed="f", now=now)
    assert [i.key for i in old.items] == [i.key for i in new.items] == ["id:12345"]
    assert [i.link for i in old.items] == ["http://old.example/story/1"]  # links still resolve
    assert [i.link for i in new.items] == ["https://cdn.example/story/1"]
