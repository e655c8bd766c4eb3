"""Emails as the reader sees them: one-line subjects, escaped HTML, digests grouped by rule
with duplicate stories folded, and user templates checked with the line of their mistake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from monitor.models import Alert, Match
from monitor.notify.email_render import (
    TemplateProblem,
    compile_templates,
    render_alert_email,
    render_burst_email,
    render_digest,
)

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")
TEMPLATES = compile_templates({})


def alert(
    title: str,
    *,
    rules: tuple[str, ...] = ("talks",),
    feed: str = "wire",
    link: str = "https://news.example/1",
    minutes: int = 0,
    snippet: str = "",
) -> Alert:
    matches = tuple(
        Match(rule, ("talks",), ("title",), ("desk",), snippet=snippet) for rule in rules
    )
    moment = T0 + timedelta(minutes=minutes)
    return Alert(feed, f"id:{title}", title, link, "", moment, moment, matches)


def test_an_alert_email_shows_the_story_in_both_parts() -> None:
    story = alert("Ceasefire talks resume", snippet="…negotiators said talks resume today…")
    rendered = render_alert_email(story, "desk", PARIS, TEMPLATES, subject_prefix="[news]")
    assert rendered.subject == "[news] Ceasefire talks resume"
    assert '<a href="https://news.example/1">Ceasefire talks resume</a>' in rendered.html
    assert "…negotiators said <b>talks</b> resume today…" in rendered.html
    assert "2026-11-28 10:00 CET" in rendered.text  # the configured timezone
    assert "negotiators said talks resume today" in rendered.text  # no markup in text
    assert "<b>" not in rendered.text
    assert "wire" in rendered.text
    assert "talks" in rendered.text


def test_hostile_titles_are_escaped_in_html_and_one_line_in_the_subject() -> None:
    title = "<script>alert(1)</script> a & b\r\nBcc: evil@example.com\u2028x\x00y"
    rendered = render_alert_email(alert(title), "desk", PARIS, TEMPLATES)
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a &amp; b" in rendered.html
    assert rendered.subject == "<script>alert(1)</script> a & b Bcc: evil@example.com x y"
    assert "Bcc: evil@example.com x y" in rendered.text  # the headline stays one line


def test_only_http_links_are_linked() -> None:
    rendered = render_alert_email(
        alert("Talks", link="javascript:alert(1)"), "desk", PARIS, TEMPLATES
    )
    assert "javascript:" not in rendered.html + rendered.text
    assert "<b>Talks</b>" in rendered.html


def test_a_long_title_is_cut_in_the_subject() -> None:
    rendered = render_alert_email(alert("talks " * 100), "desk", PARIS, TEMPLATES)
    assert len(rendered.subject) <= 200
    assert rendered.subject.endswith("…")


def test_a_burst_lists_every_alert_in_one_email() -> None:
    alerts = [alert(f"Talks round {n}", link=f"https://news.example/{n}") for n in range(300)]
    rendered = render_burst_email(alerts, "desk", PARIS, TEMPLATES, subject_prefix="[news]")
    assert rendered.subject == "[news] 300 new alerts: Talks round 0…"
    for n in range(300):
        assert f'<a href="https://news.example/{n}">Talks round {n}</a>' in rendered.html
        assert f"Talks round {n}\n" in rendered.text


def test_a_digest_groups_by_rule_newest_first_and_folds_the_same_story() -> None:
    alerts = [
        alert("Old talks", rules=("talks",), link="https://a.example/old", minutes=0),
        alert(
            "Strike and talks", rules=("strikes", "talks"), link="https://a.example/s", minutes=5
        ),
        alert("New talks", rules=("talks",), link="https://a.example/new", minutes=10),
        # The same story from another feed: same link but for tracking and case of the host.
        alert(
            "New talks",
            rules=("talks",),
            feed="other wire",
            link="https://A.example/new?utm_source=x",
            minutes=12,
        ),
        # The same story by title from a third feed that gives no link.
        alert("new   TALKS", rules=("talks",), feed="third", link="", minutes=11),
    ]
    since = T0 - timedelta(days=1)
    rendered = render_digest(alerts, "desk", PARIS, TEMPLATES, since=since, until=T0)
    assert rendered.subject == "Digest: 5 alerts (2026-11-28)"
    text = rendered.text
    talks, strikes = text.index("== talks (3) =="), text.index("== strikes (1) ==")
    assert talks < strikes  # rule order as first seen in the matches
    talks_part = text[talks:strikes]
    assert talks_part.index("New talks") < talks_part.index("Strike and talks")
    assert talks_part.index("Strike and talks") < talks_part.index("Old talks")
    assert talks_part.count("New talks") == 1
    assert "other wire, third, wire · 2026-11-28 10:12 CET" in talks_part  # newest first
    assert "Strike and talks" in text[strikes:]  # under both of its rules
    # Each source that has a link is linked; the one without is named.
    assert '<a href="https://A.example/new?utm_source=x">other wire</a>, third, ' in rendered.html


def test_different_stories_under_one_headline_stay_apart() -> None:
    alerts = [
        alert("Live updates", link="https://a.example/live/1", minutes=0),
        alert("Live updates", feed="other wire", link="https://b.example/live/2", minutes=5),
        # A link-less copy of one of them is still folded in by its title...
        alert("Live  UPDATES", feed="third", link="", minutes=6),
        # ...and a second feed carrying the first link is folded in by its link.
        alert("Live updates", feed="fourth", link="https://a.example/live/1#top", minutes=7),
    ]
    rendered = render_digest(alerts, "desk", PARIS, TEMPLATES, since=None, until=T0)
    assert rendered.html.count("<li") == 2
    # Newest first: the fourth feed's copy heads the first story.
    assert '<a href="https://a.example/live/1#top">Live updates</a>' in rendered.html
    assert '<a href="https://b.example/live/2">Live updates</a>' in rendered.html
    assert "  https://b.example/live/2\n" in rendered.text
    # The first link's story lists its three feeds; the other story only its own.
    assert "  fourth, third, wire · 2026-11-28 10:07 CET\n" in rendered.text
    assert "  other wire · 2026-11-28 10:05 CET\n" in rendered.text


def test_stories_without_links_fold_by_title() -> None:
    alerts = [
        alert("Storm warning", link="", minutes=0),
        alert("storm  WARNING", feed="other wire", link="", minutes=1),
        alert("Storm watch", feed="third", link="", minutes=2),
    ]
    rendered = render_digest(alerts, "desk", PARIS, TEMPLATES, since=None, until=T0)
    assert rendered.html.count("<li") == 2
    assert "other wire, wire · " in rendered.text


def test_an_empty_digest_says_so() -> None:
    rendered = render_digest(
        [], "desk", PARIS, TEMPLATES, since=None, until=T0, subject_prefix="[n]"
    )
    assert rendered.subject == "[n] Digest: nothing new (2026-11-28)"
    assert "Nothing matched" in rendered.text
    assert "Nothing matched" in rendered.html


def test_a_short_period_names_its_hour() -> None:
    since = T0 - timedelta(hours=1)
    rendered = render_digest([alert("Talks")], "desk", PARIS, TEMPLATES, since=since, until=T0)
    assert rendered.subject == "Digest: 1 alert (2026-11-28 10:00)"


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({"digest_html": "<p>\n{{ heading }}\n{% for g in groups %}\n"}, "digest_html line 3"),
        (
            {"alert_text": "{{ title }}\n{{ nonsense }}"},
            "alert_text line 2: 'nonsense' is undefined",
        ),
        ({"digest_text": "{{ count }}\n\n{{ groups[0].rule }}"}, "digest_text line 3"),
        ({"alert_html": "{{ title | nofilter }}"}, "alert_html line 1"),
        ({"summary": "{{ title }}"}, "summary: unknown template"),
    ],
)
def test_template_mistakes_are_reported_with_their_line(
    sources: dict[str, str], expected: str
) -> None:
    with pytest.raises(TemplateProblem, match=expected):
        compile_templates(sources)


def test_user_templates_get_the_values_and_escape_them() -> None:
    templates = compile_templates(
        {
            "alert_html": "<h1>{{ title }}</h1>{{ snippet }}",
            "alert_text": "{{ title }} ({{ feed }})",
            "digest_text": "{% for g in groups %}{{ g.rule }}: "
            "{% for s in g.stories %}{{ s.title }}{% endfor %}{% endfor %}",
        }
    )
    story = alert("a <b> & talks", snippet="some talks")
    rendered = render_alert_email(story, "desk", PARIS, templates)
    assert rendered.html == "<h1>a &lt;b&gt; &amp; talks</h1>some <b>talks</b>\n"
    assert rendered.text == "a <b> & talks (wire)\n"
    digest = render_digest([story], "desk", PARIS, templates, since=None, until=T0)
    assert digest.text == "talks: a <b> & talks\n"
