"""Explanations: which terms, in which fields, and a short snippet around the first hit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from monitor.match.query import terms_of
from monitor.models import FIELDS, Match, Rule

if TYPE_CHECKING:
    from monitor.match.matcher import Fields

#: (term as written, field, start, end, in_chars): token positions, or character offsets when
#: `in_chars` (regex hits).
Hit = tuple[str, str, int, int, bool]

#: Target snippet length in characters (before the "…" marks).
SNIPPET = 160
#: Characters of context kept before the first hit, when the text is longer than a snippet.
LEAD = 50
#: Fields searched for the first hit, in this order (then the rest of FIELDS).
PREFERRED = ("title", "summary", *(f for f in FIELDS if f not in ("title", "summary")))


def explain(
    rule: Rule, hits: list[Hit], fields: Fields, written: Sequence[str] | None = None
) -> Match:
    """The Match for a rule that held, from the hits its evaluation collected.

    `written` is `terms_of(rule.query)` without repeats, when the caller has it precomputed.
    """
    order = tuple(dict.fromkeys(terms_of(rule.query))) if written is None else written
    found = {hit[0] for hit in hits}
    terms = tuple(t for t in order if t in found)
    hit_fields = {hit[1] for hit in hits}
    if len(hit_fields) == 1:  # the common case: every hit in one field
        name = hits[0][1]
        return Match(
            rule=rule.name,
            terms=terms,
            fields=(name,),
            channels=rule.notify,
            snippet=_snippet_in(name, hits, fields),
        )
    extra = [f for f in PREFERRED if f in hit_fields and f not in rule.fields]
    return Match(
        rule=rule.name,
        terms=terms,
        fields=(*(f for f in rule.fields if f in hit_fields), *extra),
        channels=rule.notify,
        snippet=_first_snippet(hits, fields),
    )


def _first_snippet(hits: list[Hit], fields: Fields) -> str:
    if not hits:
        return snippet(fields.text("title") or fields.text("summary"), 0, 0)
    return _snippet_in(min({hit[1] for hit in hits}, key=PREFERRED.index), hits, fields)


def _snippet_in(name: str, hits: list[Hit], fields: Fields) -> str:
    """The snippet around the first hit in field `name`."""
    text = fields.text(name).strip()
    if len(text) <= SNIPPET:  # shown whole: no need to locate the hit
        return text
    first = min((start, end, in_chars) for _, f, start, end, in_chars in hits if f == name)
    start, end, in_chars = first
    if not in_chars:
        start, end = fields.span(name, start, end - 1)
    return snippet(fields.text(name), start, end)


def snippet(text: str, start: int, end: int, width: int = SNIPPET) -> str:
    """About `width` characters of `text` around [start, end), cut at word boundaries.

    Cut ends are marked with "…"; a text that fits is returned whole.
    """
    text = text.strip()
    if len(text) <= width:
        return text
    lo = max(0, min(start - LEAD, len(text) - width))
    hi = min(len(text), lo + width)
    if lo > 0 and not text[lo - 1].isspace():
        space = text.find(" ", lo, start) if start > lo else -1
        lo = space + 1 if space >= 0 else lo
    if hi < len(text) and not text[hi].isspace():
        space = text.rfind(" ", max(lo, end), hi)
        hi = space if space > lo else hi
    cut = text[lo:hi].strip()
    return ("…" if lo > 0 else "") + cut + ("…" if hi < len(text) else "")
