"""Alerts as Telegram messages in HTML parse mode (pure: no network, no clock).

Telegram rejects a whole message ("can't parse entities") for one stray `<` or `&`, an
unclosed tag or an unknown entity, and any message over 4096 characters as it counts them
(text after entity parsing, in UTF-16 code units). So every value from a feed is escaped by
Jinja2's autoescape (feed HTML is never passed through), our own markup uses only tags Telegram
knows, and a message too long is shortened, or split into parts that are each valid on their
own.

Template variables (a user template is Jinja2 in a sandbox; an undefined name is an error):

- `title`: the headline, plain text ("(untitled)" when the feed gave none);
- `link`: the story's http(s) link, "" when there is none (any other scheme is dropped);
- `feed`: the feed's name;
- `summary`: the item summary, plain text, shortened to about 600 characters;
- `snippet`: the text around the first hit, escaped, with the matched words in `<b>…</b>`
  ("" when there is none or it would only repeat the title);
- `rules`: names of the rules that matched, for this channel (a list);
- `terms`: the matched terms as written in the rules, without repeats (a list);
- `published`: publication time in the configured timezone, `2026-11-28 09:15 CET`,
  "" when the feed gave none;
- `seen`: when the item was first seen, same format;
- `channel`: the channel name.
"""

from __future__ import annotations

import html as htmllib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import NamedTuple, cast
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from monitor.match.evaluate import hit_spans
from monitor.match.parse import QueryError, parse_query
from monitor.match.query import Node
from monitor.models import Alert, Match, Rule
from monitor.notify.render import local_time, shorten

#: Longest message Telegram accepts, in UTF-16 code units of its visible text.
MAX_LENGTH = 4096
#: Characters of summary offered to a template.
SUMMARY_CHARS = 600
#: Characters of a headline in a grouped message's list.
GROUP_TITLE_CHARS = 200

#: Tried in turn until one alert renders short enough: (title chars or None for all of it,
#: summary and snippet chars).
_BUDGETS: tuple[tuple[int | None, int], ...] = (
    (None, SUMMARY_CHARS),
    (300, SUMMARY_CHARS),
    (300, 300),
    (300, 150),
    (200, 60),
    (100, 0),
)

DEFAULT_SOURCE = """\
{% if link %}
<a href="{{ link }}">{{ title }}</a>
{% else %}
<b>{{ title }}</b>
{% endif %}
{% if snippet %}
{{ snippet }}
{% elif summary and summary != title %}
{{ summary }}
{% endif %}
<i>{{ feed }}</i>{% if published or seen %} · {{ published or seen }}{% endif %}\
{% if rules %} · {{ rules | join(", ") }}{% endif %}
"""

_ENV = ImmutableSandboxedEnvironment(
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)


class TemplateProblem(ValueError):
    """A template that does not compile or fails to render; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message if line is None else f"template line {line}: {message}")
        self.line = line


# --- templates ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertContext:
    """The variables a template sees (described in the module docstring)."""

    title: str
    link: str
    feed: str
    summary: str
    snippet: Markup
    rules: tuple[str, ...]
    terms: tuple[str, ...]
    published: str
    seen: str
    channel: str

    def variables(self) -> dict[str, object]:
        found: dict[str, object] = {name: getattr(self, name) for name in VARIABLES}
        found["rules"], found["terms"] = list(self.rules), list(self.terms)
        return found


#: Every template variable, in documentation order.
VARIABLES: tuple[str, ...] = AlertContext.__match_args__


@dataclass(frozen=True, slots=True)
class AlertTemplate:
    """A checked Jinja2 template for one alert; get one from `compile_template`."""

    #: The source it was compiled from.
    source: str
    _template: Template = field(repr=False, compare=False)

    def render(self, context: AlertContext) -> str:
        """The message HTML. Raises TemplateProblem when the template fails on this context
        (it passed the sample render, but e.g. `rules[1]` fails for an alert with one rule)."""
        text = self._render(context)
        if not text:
            raise TemplateProblem("the template renders an empty message")
        return text

    def _render(self, context: AlertContext) -> str:
        try:
            return self._template.render(context.variables()).strip()
        except Exception as exc:  # any error a user's expression can raise is their problem
            raise _problem(exc) from exc


def compile_template(source: str | None) -> AlertTemplate:
    """The template for `source` (None: the built-in one), test-rendered on sample alerts.

    Raises TemplateProblem with the line of a syntax error or the name of an undefined
    variable, so a bad template is rejected when the config is loaded.
    """
    text = DEFAULT_SOURCE if source is None else source
    try:
        compiled = AlertTemplate(text, _ENV.from_string(text))
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from exc
    full, bare = (alert_context(a, "sample", ZoneInfo("UTC")) for a in sample_alerts())
    compiled.render(full)
    compiled._render(bare)  # may be empty: a template may show only the optional parts
    return compiled


def _problem(exc: Exception) -> TemplateProblem:
    message = str(exc) if isinstance(exc, UndefinedError) else f"{type(exc).__name__}: {exc}"
    if message.endswith(" is undefined"):
        message += f" (variables: {', '.join(VARIABLES)})"
    return TemplateProblem(message, template_line(exc.__traceback__))


def template_line(tb: TracebackType | None) -> int | None:
    """The innermost template line in a traceback (Jinja2 rewrites frames to point there)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def sample_alerts() -> tuple[Alert, Alert]:
    """An alert with every field set, and one with only what an alert always has."""
    moment = datetime(2026, 11, 28, 8, 15, tzinfo=UTC)
    full = Alert(
        feed="Sample Wire",
        item_key="id:sample",
        title="Harbour board approves a night ferry to the islands",
        link="https://news.example/ferry",
        summary="The harbour board voted to run a night ferry from spring & review it in May.",
        published=moment,
        seen_at=moment,
        matches=(
            Match("ferries", ("ferry", "harbour*"), ("summary",), ("sample",), "…a night ferry…"),
        ),
    )
    bare = Match("ferries", (), ("title",), ("sample",))
    return full, replace(
        full, item_key="id:bare", link="", summary="", published=None, matches=(bare,)
    )


# --- one alert ---------------------------------------------------------------------------------


def render_alert(
    alert: Alert,
    channel: str,
    tz: ZoneInfo,
    template: AlertTemplate,
    rules: Mapping[str, Rule] | None = None,
    *,
    limit: int = MAX_LENGTH,
) -> list[str]:
    """The message(s) for one alert on one channel: usually exactly one.

    Too long a message is re-rendered with a shorter title, then a shorter summary and
    snippet; only when that cannot make it fit (a huge template) is it split. `rules` gives
    the exact words to highlight (stemmed forms included); without a rule, its matched terms
    are highlighted as written. Raises TemplateProblem when the template fails on this alert.
    """
    first = ""
    for title_chars, text_chars in _BUDGETS:
        context = alert_context(alert, channel, tz, rules, title=title_chars, text=text_chars)
        message = template.render(context)
        if visible_length(message) <= limit:
            return [message]
        first = first or message
    return split_html(first, limit)


def alert_context(
    alert: Alert,
    channel: str,
    tz: ZoneInfo,
    rules: Mapping[str, Rule] | None = None,
    *,
    title: int | None = None,
    text: int = SUMMARY_CHARS,
) -> AlertContext:
    """The template variables for an alert, the title cut to `title` characters (None: whole)
    and the summary and snippet to `text`."""
    matches = alert.matches_for(channel)
    headline = alert.title.strip() or "(untitled)"
    snippet = _cut(_snippet(matches, headline), text)
    return AlertContext(
        title=headline if title is None else shorten(headline, title),
        link=safe_link(alert.link),
        feed=alert.feed,
        summary=_cut(alert.summary.strip(), text),
        snippet=highlight(snippet, _spans(snippet, matches, rules or {})),
        rules=tuple(m.rule for m in matches),
        terms=tuple(dict.fromkeys(t for m in matches for t in m.terms)),
        published=local_time(alert.published, tz),
        seen=local_time(alert.seen_at, tz),
        channel=channel,
    )


def safe_link(link: str) -> str:
    """`link` when it is an absolute http(s) URL, else "" (no `javascript:` in an href)."""
    link = link.strip()
    try:
        parts = urlsplit(link)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    return "" if any(c.isspace() or not c.isprintable() for c in link) else link


def highlight(text: str, spans: Iterable[tuple[int, int]]) -> Markup:
    """`text` escaped, with each span wrapped in `<b>` (pieces escaped before tags go in)."""
    pieces: list[Markup] = []
    at = 0
    for start, end in spans:
        pieces += [escape(text[at:start]), Markup("<b>%s</b>") % text[start:end]]
        at = end
    pieces.append(escape(text[at:]))
    return Markup("").join(pieces)


def _snippet(matches: Sequence[Match], title: str) -> str:
    """The first match's snippet, unless it only repeats the headline."""
    found = next((m.snippet.strip() for m in matches if m.snippet.strip()), "")
    return "" if found.strip("…").strip() == title else found


def _cut(text: str, chars: int) -> str:
    return shorten(text, chars) if chars > 0 else ""


def _spans(text: str, matches: Sequence[Match], rules: Mapping[str, Rule]) -> list[tuple[int, int]]:
    """Merged spans of `text` that any of the matches' queries hit."""
    if not text:
        return []
    found = sorted(span for query in _queries(matches, rules) for span in hit_spans(query, text))
    merged: list[tuple[int, int]] = []
    for start, end in found:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _queries(matches: Sequence[Match], rules: Mapping[str, Rule]) -> list[Node]:
    """Each match's rule query, or, for a rule we were not given, its matched terms parsed."""
    queries: list[Node] = []
    for match in matches:
        rule = rules.get(match.rule)
        if rule is not None:
            queries.append(rule.query)
            continue
        for term in match.terms:
            try:
                queries.append(parse_query(term))
            except QueryError:
                continue  # a term written in the structured syntax may not parse as a query
    return queries


# --- several alerts as one message -------------------------------------------------------------


def render_group(
    alerts: Sequence[Alert], channel: str, tz: ZoneInfo, limit: int = MAX_LENGTH
) -> tuple[str, int]:
    """One message listing the first N of `alerts` (N >= 1) that fit in `limit`; (html, N).

    `tz` is accepted for symmetry with `render_alert`; lines carry no times.
    """
    if not alerts:
        raise ValueError("render_group needs at least one alert")
    lines = [_first_line(alerts[0], channel, limit)]
    used = visible_length(lines[0]) + 1  # each line follows a newline
    for alert in alerts[1:]:
        line = _group_line(alert, channel, GROUP_TITLE_CHARS)
        width = visible_length(line) + 1
        if visible_length(_header(len(lines) + 1)) + used + width > limit:
            break
        lines.append(line)
        used += width
    message = "\n".join([_header(len(lines)), *lines])
    if visible_length(message) > limit:  # a huge feed name in a tiny limit: cut it, still valid
        message = split_html(message, limit)[0]
    return message, len(lines)


def _header(count: int) -> str:
    return f"<b>{count} new alert{'' if count == 1 else 's'}</b>"


def _first_line(alert: Alert, channel: str, limit: int) -> str:
    """The first alert's line, its title shortened until the line fits beside the header."""
    room = limit - visible_length(_header(1)) - 1
    for chars in (GROUP_TITLE_CHARS, 100, 50, 20, 8):
        line = _group_line(alert, channel, chars)
        if visible_length(line) <= room:
            break
    return line


def _group_line(alert: Alert, channel: str, title_chars: int) -> str:
    """`• <a href="…">title</a> — <i>feed</i> (rules)`."""
    title = escape(shorten(alert.title.strip() or "(untitled)", title_chars))
    link = safe_link(alert.link)
    headline = Markup('<a href="%s">%s</a>') % (link, title) if link else title
    rules = ", ".join(dict.fromkeys(m.rule for m in alert.matches_for(channel)))
    suffix = Markup(" (%s)") % rules if rules else ""
    return str(Markup("• %s — <i>%s</i>%s") % (headline, alert.feed, suffix))


# --- Telegram's view of HTML -------------------------------------------------------------------

#: Tags Telegram's HTML parse mode knows; only these open and close entities when splitting.
TELEGRAM_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre"}
    | {"blockquote", "span", "tg-spoiler", "tg-emoji"}
)

_TOKEN = re.compile(
    r"<(?P<close>/)?(?P<name>[A-Za-z][A-Za-z0-9-]*)(?P<attrs>(?:[^>\"']|\"[^\"]*\"|'[^']*')*)>"
    r"|&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|lt|gt|amp|quot);"
)
_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_ZWJ = "\u200d"


class _Atom(NamedTuple):
    """A piece of a message that is never cut: a tag, an entity, or one character."""

    #: As written in the HTML.
    raw: str
    #: What it shows as ("" for a tag).
    text: str
    #: UTF-16 code units Telegram counts for it.
    width: int = 0
    #: Lower-cased name of a Telegram tag ("" for text and other tags).
    name: str = ""
    closing: bool = False


_Stack = tuple[_Atom, ...]


def visible_length(html: str) -> int:
    """The length Telegram checks against MAX_LENGTH: text after entity parsing, in UTF-16
    code units (a character outside the BMP, like most emoji, counts 2)."""
    return sum(atom.width for atom in _atoms(html))


def plain_text(html: str) -> str:
    """The message as plain text: tags dropped, entities decoded, a link's URL after its text
    in parentheses (unless the text is the URL). For resending after Telegram rejects HTML."""
    out: list[str] = []
    links: list[tuple[str, int]] = []
    for atom in _atoms(html):
        if atom.text:
            out.append(atom.text)
        elif atom.name == "a" and not atom.closing:
            links.append((_href(atom.raw), len(out)))
        elif atom.name == "a" and links:
            href, start = links.pop()
            if href and "".join(out[start:]).strip() != href:
                out.append(f" ({href})")
    return "".join(out)


def split_html(html: str, limit: int = MAX_LENGTH) -> list[str]:
    """`html` as parts of at most `limit` visible units, each valid Telegram HTML on its own.

    Cuts at a newline, else a space (either in the second half of a part; that character is
    dropped), else between two characters that do not form one symbol together; never inside
    a tag or entity. Tags open at a cut are closed before it and reopened, with the same
    attributes, after it.
    """
    if limit < 2:
        raise ValueError("limit must leave room for one character (2 UTF-16 units)")
    atoms = _atoms(html)
    if sum(atom.width for atom in atoms) <= limit:
        return [html]
    parts: list[str] = []
    start, stack = 0, cast(_Stack, ())
    while start < len(atoms):
        end, resume, after = _next_cut(atoms, start, stack, limit)
        part = "".join(a.raw for a in _drop_empty([*stack, *atoms[start:end], *_closers(after)]))
        if plain_text(part).strip():
            parts.append(part)
        start, stack = resume, after
    return parts


def _atoms(html: str) -> list[_Atom]:
    atoms: list[_Atom] = []
    at = 0
    for found in _TOKEN.finditer(html):
        atoms += (_Atom(c, c, _utf16(c)) for c in html[at : found.start()])
        atoms.append(_token(found))
        at = found.end()
    atoms += (_Atom(c, c, _utf16(c)) for c in html[at:])
    return atoms


def _token(found: re.Match[str]) -> _Atom:
    raw = found.group()
    if not raw.startswith("<"):
        text = htmllib.unescape(raw)
        return _Atom(raw, text, _utf16(text))
    name = found.group("name").lower()
    if name not in TELEGRAM_TAGS or found.group("attrs").rstrip().endswith("/"):
        return _Atom(raw, "")  # not Telegram's: passes through, and does not nest
    return _Atom(raw, "", 0, name, bool(found.group("close")))


def _utf16(text: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text)


def _href(tag: str) -> str:
    found = _HREF.search(tag)
    return (
        "" if found is None else htmllib.unescape(next(g for g in found.groups() if g is not None))
    )


def _next_cut(atoms: list[_Atom], start: int, stack: _Stack, limit: int) -> tuple[int, int, _Stack]:
    """(end, resume, open tags at end): a part is atoms[start:end], the next starts at resume."""
    used = 0
    soft: dict[str, tuple[int, _Stack]] = {}
    for i in range(start, len(atoms)):
        atom = atoms[i]
        if not atom.text:
            stack = _after(stack, atom)
            continue
        if atom.text in ("\n", " ") and used >= limit // 2:
            soft[atom.text] = (i, stack)  # dropped when cut at, so it need not fit
        if used + atom.width > limit:
            for char in ("\n", " "):
                if char in soft:
                    at, open_tags = soft[char]
                    return at, at + 1, open_tags
            end = _symbol_start(atoms, start, i)
            return end, end, stack  # only characters lie between end and i: same tags open
        used += atom.width
    return len(atoms), len(atoms), stack


def _symbol_start(atoms: list[_Atom], start: int, i: int) -> int:
    """A cut at or before `i` that does not separate a character from a combining mark, a
    variation selector, a skin tone or a zero-width joiner, nor the halves of a flag; `i` when
    there is none (one symbol longer than a part)."""
    end = i
    while end - 1 > start and atoms[end - 1].text and _glued(atoms, end):
        end -= 1
    return end if any(a.text for a in atoms[start:end]) else i


def _glued(atoms: list[_Atom], at: int) -> bool:
    """Whether a cut just before `atoms[at]` would break one visible symbol apart."""
    before, after = atoms[at - 1].text[-1], atoms[at].text[0]
    if _flag_half(before) and _flag_half(after):
        run = 1  # regional indicators pair up from the start of their run
        while at - run > 0 and atoms[at - run - 1].text and _flag_half(atoms[at - run - 1].text):
            run += 1
        return run % 2 == 1
    return (
        _ZWJ in (before, after)
        or unicodedata.category(after) in ("Mn", "Mc", "Me")
        or 0x1F3FB <= ord(after) <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= ord(after) <= 0xE007F  # tag characters of flag sequences
    )


def _flag_half(char: str) -> bool:
    return len(char) == 1 and 0x1F1E6 <= ord(char) <= 0x1F1FF


def _after(stack: _Stack, tag: _Atom) -> _Stack:
    """The open Telegram tags after `tag`."""
    if not tag.name:
        return stack
    if not tag.closing:
        return (*stack, tag)
    for i in range(len(stack) - 1, -1, -1):
        if stack[i].name == tag.name:
            return stack[:i] + stack[i + 1 :]
    return stack


def _closers(stack: _Stack) -> list[_Atom]:
    return [_Atom(f"</{tag.name}>", "", 0, tag.name, True) for tag in reversed(stack)]


def _drop_empty(atoms: list[_Atom]) -> list[_Atom]:
    """Without elements that hold nothing (a tag reopened only to be closed at once)."""
    kept: list[_Atom] = []
    for atom in atoms:
        top = kept[-1] if kept else None
        if atom.closing and top is not None and top.name == atom.name and not top.closing:
            kept.pop()
        else:
            kept.append(atom)
    return kept
