"""Alerts, bursts and digests as emails: a subject, a plain-text part and an HTML part (pure:
no network, no clock).

Every value from a feed is escaped by Jinja2's autoescape in the HTML part (feed HTML is never
passed through); the subject is one line with every control character removed, so a title
cannot add a header (BAD-INPUTS E01). Templates are Jinja2 in a sandbox; an undefined name is
an error, found when the config is loaded.

Variables of `alert_html` / `alert_text` (the same as the Telegram channel's):
`title`, `link` (http(s) only, else ""), `feed`, `summary`, `snippet` (matched words in `<b>`
in HTML, plain in text), `rules`, `terms`, `published`, `seen` (local time, "" when unknown),
`channel`.

Variables of `digest_html` / `digest_text` (also used for a burst of alerts sent at once):
`kind` ("digest" or "burst"), `heading`, `period` ("" for a burst), `count` (alerts),
`channel`, and `groups`: a list of `{rule, stories}` (one group with rule "" for a burst),
each story `{title, link, feed, sources, published, snippet, summary, rules}` where `sources`
lists `{feed, link, published}` for every feed that carried it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from monitor.models import Alert, Rule
from monitor.notify.render import local_time, shorten
from monitor.notify.telegram_render import (
    AlertContext,
    alert_context,
    safe_link,
    sample_alerts,
    template_line,
)
from monitor.sources.identity import normalise_link

#: Template names, in the order they are checked.
TEMPLATE_NAMES: tuple[str, ...] = ("alert_html", "alert_text", "digest_html", "digest_text")
#: Characters of a headline in a subject.
SUBJECT_CHARS = 200
#: Characters of summary and snippet in an email (no hard limit, but a digest stays readable).
SUMMARY_CHARS = 1000

_META = (
    "{{ feed }}{% if published or seen %} · {{ published or seen }}{% endif %}"
    '{% if rules %} · {{ rules | join(", ") }}{% endif %}'
)

ALERT_HTML = (
    """\
<!DOCTYPE html>
<html><body style="font-family: sans-serif; line-height: 1.4">
<p style="font-size: 1.15em; margin: 0 0 .3em">
{% if link %}<a href="{{ link }}">{{ title }}</a>{% else %}<b>{{ title }}</b>{% endif %}
</p>
<p style="color: #666; margin: 0 0 1em">"""
    + _META
    + """</p>
{% if snippet %}
<p>{{ snippet }}</p>
{% endif %}
{% if summary and summary != title %}
<p style="color: #333">{{ summary }}</p>
{% endif %}
</body></html>
"""
)

ALERT_TEXT = (
    """\
{{ title }}
{% if link %}
{{ link }}
{% endif %}
"""
    + _META
    + """

{% if snippet %}

{{ snippet }}
{% endif %}
{% if summary and summary != title %}

{{ summary }}
{% endif %}
"""
)

_TIME = "{% if story.published %} · {{ story.published }}{% endif %}"
_SOURCES_HTML = (
    "{% for source in story.sources %}"
    '{% if source.link and story.sources | length > 1 %}<a href="{{ source.link }}">'
    "{{ source.feed }}</a>{% else %}{{ source.feed }}{% endif %}"
    "{% if not loop.last %}, {% endif %}{% endfor %}" + _TIME
)
_SOURCES_TEXT = "{{ story.sources | map(attribute='feed') | join(', ') }}" + _TIME

DIGEST_HTML = (
    """\
<!DOCTYPE html>
<html><body style="font-family: sans-serif; line-height: 1.4">
<h2 style="margin: 0 0 .2em">{{ heading }}</h2>
{% if period %}
<p style="color: #666; margin: 0 0 1em">{{ period }}</p>
{% endif %}
{% if not groups %}
<p>Nothing matched in this period.</p>
{% endif %}
{% for group in groups %}
{% if group.rule %}
<h3 style="margin: 1.2em 0 .4em">{{ group.rule }} ({{ group.stories | length }})</h3>
{% endif %}
<ul style="padding-left: 1.2em">
{% for story in group.stories %}
<li style="margin-bottom: .8em">
{% if story.link %}<a href="{{ story.link }}">{{ story.title }}</a>{% else %}<b>{{ story.title }}\
</b>{% endif %}<br>
<span style="color: #666">"""
    + _SOURCES_HTML
    + """</span>
{% if story.snippet %}
<br>{{ story.snippet }}
{% endif %}
</li>
{% endfor %}
</ul>
{% endfor %}
</body></html>
"""
)

DIGEST_TEXT = (
    """\
{{ heading }}
{% if period %}
{{ period }}
{% endif %}
{% if not groups %}

Nothing matched in this period.
{% endif %}
{% for group in groups %}
{% if group.rule %}

== {{ group.rule }} ({{ group.stories | length }}) ==
{% endif %}
{% for story in group.stories %}

* {{ story.title }}
{% if story.link %}
  {{ story.link }}
{% endif %}
  """
    + _SOURCES_TEXT
    + """

{% if story.snippet %}
  {{ story.snippet }}
{% endif %}
{% endfor %}
{% endfor %}
"""
)

BUILT_IN: dict[str, str] = {
    "alert_html": ALERT_HTML,
    "alert_text": ALERT_TEXT,
    "digest_html": DIGEST_HTML,
    "digest_text": DIGEST_TEXT,
}


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


_HTML_ENV, _TEXT_ENV = _environment(True), _environment(False)

# Line and paragraph breaks that a mail client or parser may treat as a line end.
_BREAKS = frozenset("\u2028\u2029\u0085")
_BLANK_LINES = re.compile(r"\n{3,}")


class TemplateProblem(ValueError):
    """A template that does not compile or fails to render: "digest_html line 3: ..."."""

    def __init__(self, name: str, message: str, line: int | None = None) -> None:
        where = name if line is None else f"{name} line {line}"
        super().__init__(f"{where}: {message}")
        self.name = name
        self.line = line


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """What to send: a one-line subject, a plain-text part and an HTML part."""

    subject: str
    text: str
    html: str


@dataclass(frozen=True, slots=True)
class EmailTemplates:
    """The four checked templates of a channel; get them from `compile_templates`."""

    #: The user's sources by name (names absent use the built-in templates).
    sources: Mapping[str, str]
    _compiled: Mapping[str, Template] = field(repr=False, compare=False)

    def render(self, name: str, variables: Mapping[str, object]) -> str:
        """Template `name` rendered; TemplateProblem when it fails on these values."""
        try:
            text = self._compiled[name].render(variables)
        except Exception as exc:  # any error a user's expression can raise is their problem
            message = (
                str(exc) if isinstance(exc, UndefinedError) else f"{type(exc).__name__}: {exc}"
            )
            raise TemplateProblem(name, message, template_line(exc.__traceback__)) from exc
        return _BLANK_LINES.sub("\n\n", text.strip()) + "\n"


def compile_templates(sources: Mapping[str, str]) -> EmailTemplates:
    """The templates for `sources` (a name absent: the built-in one), each test-rendered on
    sample data, so a syntax error or an undefined name is reported when the config loads.

    Raises TemplateProblem naming the template and the line ("digest_html line 3: ...").
    """
    unknown = sorted(set(sources) - set(TEMPLATE_NAMES))
    if unknown:
        raise TemplateProblem(unknown[0], f"unknown template (known: {', '.join(TEMPLATE_NAMES)})")
    compiled: dict[str, Template] = {}
    for name in TEMPLATE_NAMES:
        source = sources.get(name, BUILT_IN[name])
        env = _HTML_ENV if name.endswith("_html") else _TEXT_ENV
        try:
            compiled[name] = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(name, exc.message or "syntax error", exc.lineno) from exc
    templates = EmailTemplates(dict(sources), compiled)
    _check(templates)
    return templates


def _check(templates: EmailTemplates) -> None:
    tz, until = ZoneInfo("UTC"), datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
    for sample in sample_alerts():
        render_alert_email(sample, "sample", tz, templates)
    for alerts in (sample_alerts(), ()):
        render_digest(alerts, "sample", tz, templates, since=until - timedelta(days=1), until=until)
    render_burst_email(sample_alerts(), "sample", tz, templates)


# --- subjects ----------------------------------------------------------------------------------


def clean_header(text: str) -> str:
    """`text` as one header line: control characters (CR, LF, NUL, U+0085...) and U+2028/2029
    become spaces, runs of whitespace one space."""
    cleaned = "".join(" " if unicodedata.category(c) == "Cc" or c in _BREAKS else c for c in text)
    return " ".join(cleaned.split())


def _subject(prefix: str, text: str) -> str:
    return " ".join(part for part in (clean_header(prefix), text) if part)


def _headline(alert: Alert, chars: int = SUBJECT_CHARS) -> str:
    return shorten(clean_header(alert.title) or "(untitled)", chars)


# --- one alert ---------------------------------------------------------------------------------


def render_alert_email(
    alert: Alert,
    channel: str,
    tz: ZoneInfo,
    templates: EmailTemplates,
    rules: Mapping[str, Rule] | None = None,
    subject_prefix: str = "",
) -> RenderedEmail:
    """The email for one alert on one channel. `rules` gives the exact words to highlight.
    Raises TemplateProblem when a user template fails on this alert."""
    context = _context(alert, channel, tz, rules)
    html = context.variables()
    text = {**html, "snippet": context.snippet.striptags()}
    return RenderedEmail(
        subject=_subject(subject_prefix, _headline(alert)),
        text=templates.render("alert_text", text),
        html=templates.render("alert_html", html),
    )


# --- several alerts ----------------------------------------------------------------------------


def render_burst_email(
    alerts: Sequence[Alert],
    channel: str,
    tz: ZoneInfo,
    templates: EmailTemplates,
    rules: Mapping[str, Rule] | None = None,
    subject_prefix: str = "",
) -> RenderedEmail:
    """One email listing every alert of a burst, in the order given (the same story from
    several feeds once, with its sources). Uses the digest templates with `kind` "burst"."""
    if not alerts:
        raise ValueError("render_burst_email needs at least one alert")
    count = len(alerts)
    heading = f"{count} new alert{'' if count == 1 else 's'}"
    first = _headline(alerts[0], SUBJECT_CHARS - 30)
    more = "" if count == 1 or first.endswith("…") else "…"
    groups = [("", list(alerts))]
    variables = {"kind": "burst", "heading": heading, "period": "", "count": count}
    return _render_list(
        _subject(subject_prefix, f"{heading}: {first}{more}"),
        variables,
        groups,
        channel,
        tz,
        templates,
        rules,
    )


def render_digest(
    alerts: Sequence[Alert],
    channel: str,
    tz: ZoneInfo,
    templates: EmailTemplates,
    *,
    since: datetime | None,
    until: datetime,
    rules: Mapping[str, Rule] | None = None,
    subject_prefix: str = "",
) -> RenderedEmail:
    """The digest of everything matched for `channel` from `since` to `until`.

    Grouped by rule (in the order rules first appear in the alerts' matches; an alert that
    matched two rules is listed under each), newest first within a rule, and the same story
    from several feeds listed once with all its sources (the same normalised link, or the
    same title where one of them has no link; see `_stories`). Raises TemplateProblem when a
    user template fails on these alerts.
    """
    by_rule: dict[str, list[Alert]] = {}
    for alert in alerts:
        for rule in dict.fromkeys(m.rule for m in alert.matches_for(channel)):
            by_rule.setdefault(rule, []).append(alert)
    groups = [(rule, sorted(found, key=_when, reverse=True)) for rule, found in by_rule.items()]
    day = until.astimezone(tz).strftime("%Y-%m-%d")
    short = since is not None and until - since < timedelta(days=1)
    label = until.astimezone(tz).strftime("%Y-%m-%d %H:%M") if short else day
    count = len(alerts)
    what = f"{count} alert{'' if count == 1 else 's'}" if count else "nothing new"
    period = (
        f"{local_time(since, tz)} – {local_time(until, tz)}"
        if since
        else f"until {local_time(until, tz)}"
    )
    variables = {"kind": "digest", "heading": f"Digest: {what}", "period": period, "count": count}
    return _render_list(
        _subject(subject_prefix, f"Digest: {what} ({label})"),
        variables,
        groups,
        channel,
        tz,
        templates,
        rules,
    )


def _render_list(
    subject: str,
    variables: dict[str, object],
    groups: Sequence[tuple[str, Sequence[Alert]]],
    channel: str,
    tz: ZoneInfo,
    templates: EmailTemplates,
    rules: Mapping[str, Rule] | None,
) -> RenderedEmail:
    html: list[dict[str, object]] = []
    text: list[dict[str, object]] = []
    for rule, alerts in groups:
        items = [_item(story, channel, tz, rules) for story in _stories(alerts)]
        html.append({"rule": rule, "stories": items})
        plain = [{**item, "snippet": _plain(item["snippet"])} for item in items]
        text.append({"rule": rule, "stories": plain})
    shared = {**variables, "channel": channel}
    return RenderedEmail(
        subject=subject,
        text=templates.render("digest_text", {**shared, "groups": text}),
        html=templates.render("digest_html", {**shared, "groups": html}),
    )


def _when(alert: Alert) -> datetime:
    """When a story happened, for ordering: its date, but never later than we saw it."""
    return min(alert.published, alert.seen_at) if alert.published else alert.seen_at


def _stories(alerts: Sequence[Alert]) -> list[list[Alert]]:
    """`alerts` with the same story together, in the order each story first appears.

    An alert with a link joins the story that has its normalised link, or else a story of
    the same title that has no link at all; an alert without a link joins the first story of
    its title. So different links under one headline ("Live updates", "Briefing") stay
    different stories, even with a link-less copy of one of them around.
    """
    stories: list[list[Alert]] = []
    linked: list[bool] = []
    by_link: dict[str, int] = {}
    #: title -> the first story holding an alert with that title.
    by_title: dict[str, int] = {}
    for alert in alerts:
        link, title = _story_link(alert), _story_title(alert)
        if link:
            at = by_link.get(link)
            if at is None and title:
                found = by_title.get(title)
                at = found if found is not None and not linked[found] else None
        else:
            at = by_title.get(title) if title else None
        if at is None:
            at = len(stories)
            stories.append([])
            linked.append(False)
        stories[at].append(alert)
        if link:
            by_link.setdefault(link, at)
            linked[at] = True
        if title:
            by_title.setdefault(title, at)
    return stories


def _story_link(alert: Alert) -> str:
    """The alert's link as compared between stories (normalised; "" when it has none)."""
    link = safe_link(alert.link)
    if not link:
        return ""
    try:
        return normalise_link(link)
    except ValueError:  # a bad port: compare the link as it is
        return link


def _story_title(alert: Alert) -> str:
    """The alert's title as compared between stories: casefolded, whitespace collapsed."""
    return " ".join(alert.title.casefold().split())


def _item(
    story: Sequence[Alert], channel: str, tz: ZoneInfo, rules: Mapping[str, Rule] | None
) -> dict[str, object]:
    first = story[0]
    context = _context(first, channel, tz, rules)
    sources = {
        a.feed: {"feed": a.feed, "link": safe_link(a.link), "published": _local(a, tz)}
        for a in story
    }
    return {
        "title": context.title,
        "link": context.link,
        "feed": first.feed,
        "sources": list(sources.values()),
        "published": _local(first, tz),
        "snippet": context.snippet,
        "summary": context.summary,
        "rules": list(context.rules),
    }


def _context(
    alert: Alert, channel: str, tz: ZoneInfo, rules: Mapping[str, Rule] | None
) -> AlertContext:
    """The Telegram channel's template variables, the headline on one line."""
    one_line = replace(alert, title=clean_header(alert.title))
    return alert_context(one_line, channel, tz, rules, text=SUMMARY_CHARS)


def _local(alert: Alert, tz: ZoneInfo) -> str:
    return local_time(alert.published or alert.seen_at, tz)


def _plain(value: object) -> str:
    return value.striptags() if isinstance(value, Markup) else str(value)
