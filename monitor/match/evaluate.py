"""Evaluate one query tree on one item's fields, collecting hits for explanations (pure).

Word semantics (the property test's reference evaluator states them too):
- a Term matches its words as consecutive tokens of one field, compared folded, or raw when
  `case_sensitive`, and against the field's stemmed tokens when `stem` is set; a prefix term's
  last word is compared, unstemmed, with `startswith`;
- a Near holds in a field when one occurrence of each of its terms can be chosen with all first
  words at most `distance` positions apart (any order; occurrences may overlap);
- a Regex is searched in the plain field text, bounded by REGEX_TIMEOUT per search;
- scoped nodes (`fields`) look only at their fields, others at the rule's.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Sequence

import regex as rx

from monitor.match.explain import Hit
from monitor.match.query import And, Near, Node, Not, Or, Regex, Term
from monitor.match.stem import stem_words
from monitor.match.text import fold, raw_words, token_span, tokens, words
from monitor.models import Item

#: Seconds one regex search may take on one field before it counts as "no match".
REGEX_TIMEOUT = 0.05


class Fields:
    """An item's fields, tokenised once (per normalisation) and shared by every rule."""

    __slots__ = (
        "_folded",
        "_spaced",
        "_text",
        "_texts",
        "_words",
        "searched",
        "timeouts",
    )

    def __init__(self, text: Callable[[str], str]) -> None:
        self._text = text
        self._texts: dict[str, str] = {}
        self._words: dict[tuple[str, bool, str | None], list[str]] = {}
        self._folded: dict[str, str] = {}
        self._spaced: dict[tuple[tuple[str, ...], bool, str | None], str] = {}
        #: (pattern, field) -> span of its first match, None when none.
        self.searched: dict[tuple[rx.Pattern[str], str], tuple[int, int] | None] = {}
        #: Regex terms that hit REGEX_TIMEOUT on this item (reported by the caller).
        self.timeouts: list[str] = []

    @classmethod
    def of(cls, item: Item) -> Fields:
        return cls(item.text)

    def text(self, name: str) -> str:
        found = self._texts.get(name)
        if found is None:
            found = self._texts[name] = self._text(name)
        return found

    def words(self, name: str, case_sensitive: bool = False, stem: str | None = None) -> list[str]:
        """Tokens of one field: folded, or raw when case-sensitive; then stemmed if asked."""
        key = (name, case_sensitive, stem)
        found = self._words.get(key)
        if found is None:
            if stem is not None:
                found = stem_words(stem, self.words(name, True))
            elif case_sensitive:
                found = raw_words(self.text(name))
            else:
                found = words(self.text(name))
            self._words[key] = found
        return found

    def search(self, pattern: rx.Pattern[str], name: str, label: str) -> tuple[int, int] | None:
        """Span of the first match of `pattern` in a field, memoised per item (rules often
        share a pattern); a search over REGEX_TIMEOUT counts as none and is noted."""
        key = (pattern, name)
        if key in self.searched:
            return self.searched[key]
        try:
            # positional (pos, endpos, concurrent, partial, timeout): keyword parsing costs more
            found = pattern.search(self.text(name), None, None, None, False, REGEX_TIMEOUT)
        except TimeoutError:
            self.timeouts.append(label)
            found = None
        span = self.searched[key] = None if found is None else found.span()
        return span

    def spaced(self, names: tuple[str, ...], case_sensitive: bool, stem: str | None) -> str:
        """The `words(...)` of several fields joined by single spaces, fields apart by " \\n ",
        with a space at both ends (scanned by the index for word, pair and prefix keys)."""
        key = (names, case_sensitive, stem)
        found = self._spaced.get(key)
        if found is None:
            joined = " \n ".join(" ".join(self.words(n, case_sensitive, stem)) for n in names)
            found = self._spaced[key] = f" {joined} "
        return found

    def folded_text(self, name: str) -> str:
        """The folded plain text (for regex literal checks). Folded like words (accents and
        all), not just casefolded: "İSTANBUL".casefold() keeps a combining dot that would hide
        the literal "istanbul", which the regex itself matches case-insensitively."""
        if name not in self._folded:
            self._folded[name] = fold(self.text(name))
        return self._folded[name]

    def span(self, name: str, first: int, last: int) -> tuple[int, int]:
        """Characters from token `first` to token `last` (inclusive) of a field."""
        return token_span(self.text(name), first, last)


def occurrences(term: Term, fields: Fields, name: str) -> list[int]:
    """Ascending token positions where `term` starts in field `name`."""
    toks = fields.words(name, term.case_sensitive, term.stem)
    first, n = term.words[0], len(term.words)
    if term.prefix:
        base = fields.words(name, term.case_sensitive, None) if term.stem else toks
        last, head = term.words[-1], list(term.words[:-1])
        return [
            j - n + 1
            for j, word in enumerate(base)
            if word.startswith(last) and j >= n - 1 and toks[j - n + 1 : j] == head
        ]
    found: list[int] = []
    if first not in toks:
        return found
    rest = list(term.words[1:])
    i = toks.index(first)
    while True:
        if toks[i + 1 : i + n] == rest:
            found.append(i)
        try:
            i = toks.index(first, i + 1)
        except ValueError:
            return found


def first_occurrence(term: Term, fields: Fields, name: str) -> int | None:
    """The token position of the first occurrence of `term` in field `name`, None if none
    (`occurrences(...)[0]` without finding the others: the single-word case is one C scan)."""
    if term.prefix or len(term.words) > 1:
        found = occurrences(term, fields, name)
        return found[0] if found else None
    toks = fields.words(name, term.case_sensitive, term.stem)
    word = term.words[0]
    return toks.index(word) if word in toks else None


def near_window(near: Near, fields: Fields, name: str) -> tuple[int, int] | None:
    """Token span [start, end) of the first satisfying choice of occurrences in one field."""
    lists = [occurrences(t, fields, name) for t in near.terms]
    if not all(lists):
        return None
    for low in sorted({p for positions in lists for p in positions}):
        end = low
        for term, positions in zip(near.terms, lists, strict=True):
            k = bisect_left(positions, low)
            if k == len(positions) or positions[k] > low + near.distance:
                break
            end = max(end, positions[k] + len(term.words))
        else:
            return low, end
    return None


def evaluate(node: Node, fields: Fields, names: Sequence[str], hits: list[Hit]) -> bool:
    """Whether `node` holds on the item; appends what made it hold to `hits`.

    Every child of AND/OR is evaluated (no short-circuit) so explanations list all the terms
    that matched; terms under NOT never count as hits. A hit is (term, field, start, end,
    in_chars): token positions for words, character offsets for regexes.
    """
    if isinstance(node, Term):
        n, before = len(node.words), len(hits)
        for name in node.fields or names:
            first = first_occurrence(node, fields, name)
            if first is not None:
                hits.append((node.text, name, first, first + n, False))
        return len(hits) > before
    if isinstance(node, And):
        local: list[Hit] = []
        results = [evaluate(child, fields, names, local) for child in node.children]
        if all(results):
            hits.extend(local)
            return True
        return False
    if isinstance(node, Or):
        results = [evaluate(child, fields, names, hits) for child in node.children]
        return any(results)
    if isinstance(node, Not):
        return not evaluate(node.child, fields, names, [])
    before = len(hits)
    if isinstance(node, Near):
        for name in node.fields or names:
            window = near_window(node, fields, name)
            if window is not None:
                hits.append((node.text, name, *window, False))
    else:
        for name in node.fields or names:
            span = fields.search(node.pattern, name, node.text)
            if span is not None:
                hits.append((node.text, name, span[0], span[1], True))
    return len(hits) > before


def hit_spans(node: Node, text: str) -> list[tuple[int, int]]:
    """Character spans of `text` to highlight for a rule's query (e.g. bold in a notifier).

    Every occurrence of every positive term (not under NOT) in `text`, field scopes ignored
    (the caller says which text it renders); a NEAR's terms only where the NEAR holds; regexes
    by their matches. Sorted, overlapping spans merged.
    """
    fields = Fields(lambda _: text)
    spans = tokens(text).spans
    found: list[tuple[int, int]] = []

    def walk(node: Node) -> None:
        if isinstance(node, And | Or):
            for child in node.children:
                walk(child)
        elif isinstance(node, Term):
            found.extend(_term_spans(node, fields, spans))
        elif isinstance(node, Near):
            if near_window(node, fields, "text") is not None:
                for term in node.terms:
                    found.extend(_term_spans(term, fields, spans))
        elif isinstance(node, Regex):
            with contextlib.suppress(TimeoutError):
                found.extend(m.span() for m in node.pattern.finditer(text, timeout=REGEX_TIMEOUT))

    walk(node)
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in found if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _term_spans(term: Term, fields: Fields, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    n = len(term.words)
    return [(spans[i][0], spans[i + n - 1][1]) for i in occurrences(term, fields, "text")]
