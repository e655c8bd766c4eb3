"""Telegram HTML rendering: escaping, templates, highlighting, length limits and splitting."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from monitor.match.parse import parse_query
from monitor.models import Alert, Match, Rule
from monitor.notify.telegram_render import (
    MAX_LENGTH,
    TemplateProblem,
    compile_template,
    plain_text,
    render_alert,
    render_group,
    safe_link,
    split_html,
    visible_length,
)

NOW = datetime(2026, 11, 28, 8, 15, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
DEFAULT = compile_template(None)

# --- a strict validator of Telegram HTML -------------------------------------------------------

#: The tags our own output may use.
ALLOWED = frozenset({"b", "i", "u", "s", "a", "code", "pre", "blockquote"})
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")
_TAG = re.compile(r"</?[a-z][a-z-]*(?: href=\"[^\"<>]*\")?>")


class _Strict(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.text: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED:
            self.problems.append(f"tag <{tag}>")
        wanted = [name for name, value in attrs if value is not None]
        if attrs and (tag != "a" or wanted != ["href"] or len(attrs) != 1):
            self.problems.append(f"attributes {attrs} on <{tag}>")
        if tag == "a" and not attrs:
            self.problems.append("<a> without href")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"misplaced </{tag}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        self.text.append({"lt": "<", "gt": ">", "amp": "&", "quot": '"'}[name])

    def handle_charref(self, name: str) -> None:
        self.text.append(chr(int(name[1:], 16) if name[:1] in "xX" else int(name)))

    def unknown_decl(self, data: str) -> None:
        self.problems.append(f"declaration {data}")

    def handle_comment(self, data: str) -> None:
        self.problems.append("comment")


def checked(html: str) -> str:
    """The text Telegram would show for `html`, after asserting it parses strictly."""
    bare = _ENTITY.sub("", _TAG.sub("", html))
    assert not set("<>&") & set(bare), f"stray markup character in {html!r}"
    parser = _Strict()
    parser.feed(html)
    parser.close()
    assert not parser.problems, parser.problems
    assert not parser.open, f"unclosed {parser.open}"
    return "".join(parser.text)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def squash(text: str) -> str:
    return "".join(text.split())


# --- fixtures ----------------------------------------------------------------------------------


def alert(**kw: object) -> Alert:
    base: dict[str, object] = {
        "feed": "Coastal Courier",
        "item_key": "id:1",
        "title": "Lighthouse keepers end strike after dead end talks",
        "link": "https://news.example/lighthouse",
        "summary": "Keepers on the north coast return to work on Monday.",
        "published": NOW,
        "seen_at": NOW,
        "matches": (
            Match(
                "strikes",
                ("strike", '"dead end"'),
                ("summary",),
                ("desk",),
                "…talks reached a dead end before the strike ended…",
            ),
            Match("other", ("keepers",), ("title",), ("mail",)),
        ),
    }
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def one(item: Alert, template: str | None = None, rules: dict[str, Rule] | None = None) -> str:
    messages = render_alert(item, "desk", BERLIN, compile_template(template), rules)
    assert len(messages) == 1
    return messages[0]


# --- the default template ----------------------------------------------------------------------


def test_default_template_links_the_headline_highlights_the_snippet_and_ends_with_a_footer() -> (
    None
):
    assert one(alert()).splitlines() == [
        '<a href="https://news.example/lighthouse">'
        "Lighthouse keepers end strike after dead end talks</a>",
        "…talks reached a <b>dead end</b> before the <b>strike</b> ended…",
        "<i>Coastal Courier</i> · 2026-11-28 09:15 CET · strikes",
    ]


def test_without_link_the_headline_is_bold_and_a_title_snippet_gives_way_to_the_summary() -> None:
    title = "Ferry strike called off"
    matches = (Match("strikes", ("strike",), ("title",), ("desk",), title),)
    html = one(alert(title=title, link="", published=None, matches=matches))
    assert html.splitlines() == [
        "<b>Ferry strike called off</b>",
        "Keepers on the north coast return to work on Monday.",
        "<i>Coastal Courier</i> · 2026-11-28 09:15 CET · strikes",
    ]


def test_only_the_matches_for_the_channel_are_listed() -> None:
    html = render_alert(alert(), "mail", BERLIN, DEFAULT)[0]
    assert html.endswith("· other")
    assert "<b>dead end</b>" not in html


HOSTILE = [
    "<script>alert(1)</script>",
    "Rates & bonds: a & b",
    "<b>unclosed bold",
    "&amp; literally, and &lt;not a tag&gt;",
    'Quote " and \' in the "headline"',
    "Flood 🌊 warnings 🚨 for 👩‍👩‍👧 families",
    "مفاوضات السلام في جنيف تتعثر",
    "השיחות בז'נבה נתקעו",
    "Mixed עברית and English ‏marks‎",
    "Zero\u200bwidth\u200djoiners\u2060here",
    "</a></b></i> closing tags first",
    "Combining cafe\u0301 and e\u0308",
]


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_text_renders_as_valid_html_showing_the_text_literally(title: str) -> None:
    item = alert(
        title=title,
        feed=f"Feed {title}",
        summary=title,
        link='https://news.example/a?q="x"&r=<y>',
        matches=(Match(f"rule {title}", (title,), ("title",), ("desk",), f"Snippet: {title} …"),),
    )
    html = one(item)
    text = checked(html)
    assert text.count(title) == 4  # headline, snippet, feed and rule name
    assert 'href="https://news.example/a?q=&#34;x&#34;&amp;r=&lt;y&gt;"' in html
    group, _ = render_group([item, item], "desk", BERLIN)
    assert checked(group).count(title) == 6


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "JavaScript:alert(document.cookie)",
        " javascript:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://files.example/report.pdf",
        "/relative/story",
        "https://",
        "https://news.example/a b",
        "http://[broken",
    ],
)
def test_links_other_than_absolute_http_are_dropped(link: str) -> None:
    assert safe_link(link) == ""
    html = one(alert(link=link))
    assert html.startswith("<b>Lighthouse keepers")
    assert "href" not in html
    assert "href" not in render_group([alert(link=link)], "desk", BERLIN)[0]
    assert one(alert(link=link), "[{{ link }}] {{ title }}").startswith("[] ")


def test_http_and_https_links_are_kept() -> None:
    assert safe_link("HTTPS://news.example/x?a=1&b=2") == "HTTPS://news.example/x?a=1&b=2"
    assert safe_link(" http://news.example/ ") == "http://news.example/"


# --- templates ---------------------------------------------------------------------------------


def test_a_user_template_sees_every_variable() -> None:
    source = (
        "{{ title }}|{{ link }}|{{ feed }}|{{ summary }}|{{ snippet }}|{{ rules | join(',') }}"
        "|{{ terms | join(',') }}|{{ published }}|{{ seen }}|{{ channel }}"
    )
    seen_later = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    html = one(alert(published=None, seen_at=seen_later), source)
    assert html.split("|") == [
        "Lighthouse keepers end strike after dead end talks",
        "https://news.example/lighthouse",
        "Coastal Courier",
        "Keepers on the north coast return to work on Monday.",
        "…talks reached a <b>dead end</b> before the <b>strike</b> ended…",
        "strikes",
        "strike,&#34;dead end&#34;",
        "",
        "2026-11-28 10:00 CET",
        "desk",
    ]


def test_a_syntax_error_names_its_line() -> None:
    with pytest.raises(TemplateProblem, match="template line 2: unexpected '}'") as caught:
        compile_template("<b>{{ title }}</b>\n{{ feed }\n")
    assert caught.value.line == 2


def test_an_unclosed_block_is_a_problem() -> None:
    with pytest.raises(TemplateProblem, match="endif"):
        compile_template("{% if link %}\n<a href='{{ link }}'>{{ title }}</a>\n")


def test_an_undefined_variable_is_named_with_its_line() -> None:
    with pytest.raises(TemplateProblem, match="line 3: 'headline' is undefined") as caught:
        compile_template("{{ title }}\n\n{{ headline }}\n")
    assert caught.value.line == 3
    assert "variables: title, link, feed" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ rules[3] }}", "no element 3"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ title.__class__.__mro__ }}", "line 1"),
        ("{{ rules.append('x') }}", "line 1"),
        ("{% if false %}x{% endif %}", "empty message"),
    ],
)
def test_templates_that_fail_on_a_sample_alert_are_rejected(source: str, expected: str) -> None:
    with pytest.raises(TemplateProblem, match=re.escape(expected)):
        compile_template(source)


def test_a_template_failing_only_on_a_real_alert_raises_a_template_problem() -> None:
    template = compile_template('{% if channel != "sample" %}{{ nope }}{% endif %}x')
    with pytest.raises(TemplateProblem, match="'nope' is undefined"):
        render_alert(alert(), "desk", BERLIN, template)


def test_user_templates_are_escaped_too() -> None:
    html = one(alert(title="<i>x</i> & y"), "<u>{{ title }}</u> {{ title | upper }}")
    assert html == "<u>&lt;i&gt;x&lt;/i&gt; &amp; y</u> &lt;I&gt;X&lt;/I&gt; &amp; Y"


# --- highlighting ------------------------------------------------------------------------------


def highlighted(snippet: str, terms: tuple[str, ...], rules: dict[str, Rule] | None = None) -> str:
    match = Match("watch", terms, ("summary",), ("desk",), snippet)
    return one(alert(matches=(match,)), "{{ snippet }}", rules=rules)


def rule(query: str, stem: str | None = None) -> dict[str, Rule]:
    return {"watch": Rule("watch", parse_query(query, stem=stem), notify=("desk",))}


def test_a_stemmed_rule_highlights_every_form_of_the_word() -> None:
    snippet = "Negotiators say negotiations on the negotiated truce stall"
    assert highlighted(snippet, ("negotiation",), rule("negotiation", stem="en")) == (
        "<b>Negotiators</b> say <b>negotiations</b> on the <b>negotiated</b> truce stall"
    )


def test_prefix_and_phrase_rules_highlight_what_they_match() -> None:
    snippet = "Sanctioned shippers hit a dead end; sanctions stay"
    query = 'sanction* OR "dead end" OR NOT shippers'
    assert highlighted(snippet, (), rule(query)) == (
        "<b>Sanctioned</b> shippers hit a <b>dead end</b>; <b>sanctions</b> stay"
    )


def test_without_the_rule_its_matched_terms_are_highlighted_as_written() -> None:
    snippet = "Sanctioned shippers hit a dead end over the negotiation and negotiators"
    terms = ("sanction*", '"dead end"', "negotiation", '"unclosed', "NEAR/2(hit, over)")
    assert highlighted(snippet, terms) == (
        "<b>Sanctioned</b> shippers hit a <b>dead end</b> over the <b>negotiation</b> and "
        "negotiators"
    )


def test_the_rule_wins_over_its_terms() -> None:
    assert highlighted("Talks in Geneva", ("talks",), rule("geneva")) == "Talks in <b>Geneva</b>"


def test_highlighting_escapes_the_text_around_and_inside_the_bold() -> None:
    snippet = 'A <b> & "R&D" strike-fund'
    assert highlighted(snippet, ("r&d", "strike")) == (
        "A &lt;b&gt; &amp; &#34;<b>R&amp;D</b>&#34; <b>strike</b>-fund"
    )


# --- length ------------------------------------------------------------------------------------


def test_visible_length_counts_what_telegram_counts() -> None:
    assert visible_length('<a href="https://news.example/?a=1&amp;b=2">link</a>') == 4
    assert visible_length("&lt;&gt;&amp;&quot;&#34;&#x27;") == 6
    assert visible_length("🌊") == 2
    assert visible_length("&#x1F30A;") == 2
    assert visible_length("👩‍💻") == 5  # woman, joiner, laptop
    assert visible_length("é") == 1
    assert visible_length("&nbsp;") == 6  # not an entity Telegram knows: shown as written


def test_a_huge_summary_is_shortened_into_one_message() -> None:
    summary = " ".join(f"Clause {n} of the harbour treaty was read aloud." for n in range(500))
    assert len(summary) > 20_000
    html = one(alert(summary=summary), "{{ title }}\n{{ summary }}")
    assert html.endswith("…")
    assert visible_length(html) <= MAX_LENGTH


def test_a_template_repeating_the_summary_is_shortened_until_it_fits() -> None:
    summary = "Harbour treaty clauses read aloud. " * 600
    source = "{% for n in range(12) %}{{ n }}: {{ summary }}\n{% endfor %}"
    html = one(alert(summary=summary), source)
    assert visible_length(html) <= MAX_LENGTH
    assert html.count("Harbour treaty") > 12  # shortened, not dropped


def test_a_huge_title_is_shortened_into_one_message() -> None:
    title = "Council debates the long harbour bill " * 500
    html = one(alert(title=title))
    assert visible_length(html) <= MAX_LENGTH
    assert checked(html).startswith("Council debates")
    assert "<b>dead end</b>" in html


def test_a_template_too_big_to_shorten_is_split_into_valid_parts() -> None:
    source = "<b>{% for n in range(3000) %}{{ feed }} {% endfor %}</b>"
    parts = render_alert(alert(), "desk", BERLIN, compile_template(source))
    assert len(parts) == 12
    for part in parts:
        assert visible_length(part) <= MAX_LENGTH
        assert part.startswith("<b>")
        assert part.endswith("</b>")
    assert "".join(checked(part) for part in parts).count("Coastal") == 3000


# --- splitting ---------------------------------------------------------------------------------


def long_message() -> str:
    """About 10,000 visible characters; <i> spans everything, links and bold span the cuts,
    emoji sit all over, and one stretch has no newline and another no space at all."""
    lines = [
        f'<b>Day {n}</b>: 🌊 storm surge 🚢 <a href="https://news.example/storm?day={n}&amp;x=1">'
        f"ferries 👩‍👩‍👧 stay in port</a> &amp; crews wait &lt;{n}&gt;"
        for n in range(60)
    ]
    words = " ".join(f"wave{n}🌊" for n in range(400))
    solid = "🌊x" * 600 + "é" * 300 + "👩‍💻" * 200
    html = "\n".join(lines) + f'\n<b>{words}</b>\n<a href="https://news.example/s">{solid}</a>'
    return f"<i>{html}</i>"


def test_a_10000_character_message_splits_into_valid_parts_losing_no_text() -> None:
    html = long_message()
    original = checked(html)
    assert utf16(original) > 10_000
    parts = split_html(html)
    assert len(parts) >= 3
    texts = [checked(part) for part in parts]
    for part, text in zip(parts, texts, strict=True):
        assert visible_length(part) == utf16(text) <= MAX_LENGTH
        assert part.startswith("<i>")
        assert part.endswith("</i>")
        assert not text.startswith(("\u200d", "\u0301"))
        assert not text.endswith("\u200d")
    assert squash("".join(texts)) == squash(original)


def test_tags_open_at_a_cut_reopen_with_the_same_attributes() -> None:
    html = 'Intro\n<b><a href="https://news.example/?a=1&amp;b=2">' + "storm " * 30 + "</a></b>"
    parts = split_html(html, 100)
    assert checked(parts[0]) == "Intro\n" + "storm " * 14 + "storm"
    for part in parts[1:]:
        assert part.startswith('<b><a href="https://news.example/?a=1&amp;b=2">storm')
        assert part.endswith("</a></b>")


def test_a_cut_prefers_a_newline_then_a_space_then_anywhere() -> None:
    assert split_html("aaaa bbbb\ncc dd", 12) == ["aaaa bbbb", "cc dd"]
    assert split_html("aaaa bbbb cc dd", 12) == ["aaaa bbbb cc", "dd"]
    assert split_html("aaaaaaaaaaaaaaa", 12) == ["aaaaaaaaaaaa", "aaa"]
    assert split_html("x\naaaaaaaaaaaaaaa", 12) == ["x\naaaaaaaaaa", "aaaaa"]  # a newline too early


def test_a_cut_never_splits_an_emoji_or_an_entity() -> None:
    assert split_html("a🌊🌊", 4) == ["a🌊", "🌊"]
    assert split_html("ab&amp;&lt;c", 3) == ["ab&amp;", "&lt;c"]
    assert split_html("ab👩‍💻", 5) == ["ab", "👩‍💻"]
    assert split_html("abcde\u0301", 5) == ["abcd", "e\u0301"]
    assert split_html("a🇩🇪🇫🇷", 6) == ["a🇩🇪", "🇫🇷"]
    assert split_html("🇩🇪🇫🇷🇮🇹", 10) == ["🇩🇪🇫🇷", "🇮🇹"]


def test_a_message_that_fits_is_returned_as_it_is() -> None:
    assert split_html("<b>short</b>") == ["<b>short</b>"]
    with pytest.raises(ValueError, match="limit"):
        split_html("abc", 1)


_CHARS = st.sampled_from([*"ab c\n<>&\"'é", "🌊", "\u200d", "\u0301", "א", "ب"])
_TAGS = ["b", "i", "u", "s", "code", "pre", "blockquote", "a"]


def _element(tag: str, children: list[str]) -> str:
    opening = '<a href="https://news.example/?q=1&amp;r=2">' if tag == "a" else f"<{tag}>"
    return f"{opening}{''.join(children)}</{tag}>"


_MARKUP = st.recursive(
    st.text(_CHARS, max_size=30).map(lambda text: str(escape(text))),
    lambda inner: st.builds(_element, st.sampled_from(_TAGS), st.lists(inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_MARKUP, min_size=1, max_size=5).map("".join), st.integers(2, 40))
def test_split_html_gives_valid_parts_within_the_limit_losing_no_text(
    html: str, limit: int
) -> None:
    original = checked(html)
    parts = split_html(html, limit)
    texts = [checked(part) for part in parts]
    for part, text in zip(parts, texts, strict=True):
        assert utf16(text) == visible_length(part) <= limit
    assert squash("".join(texts)) == squash(original)
    if visible_length(html) <= limit:
        assert parts == [html]


# --- plain text --------------------------------------------------------------------------------


def test_plain_text_drops_tags_decodes_entities_and_spells_out_links() -> None:
    html = (
        '<a href="https://news.example/?a=1&amp;b=2">Storm &amp; surge</a>\n'
        '<b>bold</b> &lt;tag&gt; &#34;q&#34; <a href="https://news.example/">'
        "https://news.example/</a>"
    )
    assert plain_text(html) == (
        'Storm & surge (https://news.example/?a=1&b=2)\nbold <tag> "q" https://news.example/'
    )


def test_plain_text_of_a_rendered_alert_reads_like_the_text_channel() -> None:
    text = plain_text(one(alert(title="R&D <budget> cut")))
    assert text.splitlines() == [
        "R&D <budget> cut (https://news.example/lighthouse)",
        "…talks reached a dead end before the strike ended…",
        "Coastal Courier · 2026-11-28 09:15 CET · strikes",
    ]


# --- groups ------------------------------------------------------------------------------------


def numbered(count: int) -> list[Alert]:
    return [
        alert(
            item_key=f"id:{n}",
            title=f"Storm closes coastal road {n}",
            link=f"https://n.example/{n}",
        )
        for n in range(count)
    ]


def test_a_group_lists_each_alert_on_a_line_under_a_count() -> None:
    html, count = render_group(numbered(2), "desk", BERLIN)
    assert count == 2
    assert html.splitlines() == [
        "<b>2 new alerts</b>",
        '• <a href="https://n.example/0">Storm closes coastal road 0</a> — '
        "<i>Coastal Courier</i> (strikes)",
        '• <a href="https://n.example/1">Storm closes coastal road 1</a> — '
        "<i>Coastal Courier</i> (strikes)",
    ]
    single, _ = render_group([replace(numbered(1)[0], link="")], "desk", BERLIN)
    assert single.splitlines() == [
        "<b>1 new alert</b>",
        "• Storm closes coastal road 0 — <i>Coastal Courier</i> (strikes)",
    ]


@pytest.mark.parametrize("limit", [120, 500, MAX_LENGTH])
def test_a_group_lists_as_many_as_fit_oldest_first(limit: int) -> None:
    alerts = numbered(300)
    html, count = render_group(alerts, "desk", BERLIN, limit)
    assert 1 <= count < 300
    assert visible_length(html) <= limit
    text = checked(html)
    assert text.startswith(f"{count} new alert{'s' if count > 1 else ''}\n")
    assert [line.split(" — ")[0] for line in text.splitlines()[1:]] == [
        f"• Storm closes coastal road {n}" for n in range(count)
    ]
    one_more, _ = render_group(alerts[: count + 1], "desk", BERLIN, 10**6)
    assert visible_length(one_more) > limit


def test_a_group_of_one_huge_headline_shortens_it() -> None:
    huge = alert(title="Harbour " * 2000)
    html, count = render_group([huge, *numbered(3)], "desk", BERLIN, 80)
    assert count == 1
    assert visible_length(html) <= 80
    assert checked(html).startswith("1 new alert\n• Harbour Harbour")
    assert "…</a>" in html
    html, count = render_group([huge, *numbered(3)], "desk", BERLIN)
    assert count == 4
    assert visible_length(html) < 1000


def test_an_empty_group_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="at least one"):
        render_group([], "desk", BERLIN)


def test_our_own_markup_is_valid_for_every_fixture() -> None:
    for item in (alert(), alert(link="", summary="", published=None), *numbered(3)):
        checked(render_alert(item, "desk", BERLIN, DEFAULT)[0])
        checked(render_alert(item, "mail", ZoneInfo("UTC"), DEFAULT)[0])


def test_the_validator_rejects_what_telegram_rejects() -> None:
    for bad in ("<script>x</script>", "a & b", "<b>x", "<b><i>x</b></i>", "&nbsp;", "x < y"):
        with pytest.raises(AssertionError):
            checked(bad)
    assert unicodedata.name(checked("&#x1F30A;")) == "WATER WAVE"
