"""Evaluate rules against items: which rules match, on which terms, in which fields (pure)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitor.match.query import And, Node, Or, Regex, Term, terms_of
from monitor.match.text import words
from monitor.models import FeedSpec, Item, Match, Rule

log = logging.getLogger("monitor.match")

#: (term as written, field name) pairs that made a query true.
Hits = set[tuple[str, str]]

#: Seconds one regex search may take on one field before it counts as "no match".
REGEX_TIMEOUT = 0.05


class Fields:
    """An item's fields, tokenised once and shared by every rule evaluated on it."""

    def __init__(self, item: Item) -> None:
        self._item = item
        self._positions: dict[str, dict[str, list[int]]] = {}
        self._words: dict[str, list[str]] = {}
        #: Regex terms that hit REGEX_TIMEOUT on this item (reported by the caller).
        self.timeouts: list[str] = []

    def text(self, name: str) -> str:
        return self._item.text(name)

    def words(self, name: str) -> list[str]:
        if name not in self._words:
            self._words[name] = words(self.text(name))
        return self._words[name]

    def positions(self, name: str) -> dict[str, list[int]]:
        """Word -> ascending positions, for phrase and keyword lookups."""
        if name not in self._positions:
            index: dict[str, list[int]] = defaultdict(list)
            for i, word in enumerate(self.words(name)):
                index[word].append(i)
            self._positions[name] = index
        return self._positions[name]


def _term_in(term: Term, fields: Fields, name: str) -> bool:
    tokens = fields.words(name)
    *head, last = term.words
    if term.prefix:
        starts = [i for i, w in enumerate(tokens) if w.startswith(last)]
        return any(_precedes(head, tokens, i) for i in starts)
    first = term.words[0]
    candidates = fields.positions(name).get(first, [])
    n = len(term.words)
    return any(tuple(tokens[i : i + n]) == term.words for i in candidates)


def _search(node: Regex, fields: Fields, name: str) -> bool:
    try:
        return node.pattern.search(fields.text(name), timeout=REGEX_TIMEOUT) is not None
    except TimeoutError:
        fields.timeouts.append(node.text)
        return False


def _precedes(head: Sequence[str], tokens: Sequence[str], i: int) -> bool:
    """Whether `head` stands immediately before position `i` in `tokens`."""
    start = i - len(head)
    return start >= 0 and list(tokens[start:i]) == list(head)


def evaluate(node: Node, fields: Fields, names: Sequence[str], hits: Hits) -> bool:
    """Whether `node` holds on the item; adds what made it hold to `hits`.

    Every child of AND/OR is evaluated (no short-circuit) so explanations list all the terms
    that matched; terms under NOT never count as hits.
    """
    if isinstance(node, Term):
        found = [name for name in names if _term_in(node, fields, name)]
        hits.update((node.text, name) for name in found)
        return bool(found)
    if isinstance(node, Regex):
        found = [name for name in names if _search(node, fields, name)]
        hits.update((node.text, name) for name in found)
        return bool(found)
    if isinstance(node, And):
        local: Hits = set()
        results = [evaluate(child, fields, names, local) for child in node.children]
        if all(results):
            hits.update(local)
            return True
        return False
    if isinstance(node, Or):
        results = [evaluate(child, fields, names, hits) for child in node.children]
        return any(results)
    return not evaluate(node.child, fields, names, set())


@dataclass(frozen=True, slots=True)
class Matcher:
    """All rules, ready to test items. Rules are evaluated in config order."""

    rules: tuple[Rule, ...]

    def match(self, feed: FeedSpec, item: Item) -> tuple[Match, ...]:
        """The matches of every in-scope rule on `item`."""
        fields = Fields(item)
        found: list[Match] = []
        for rule in self.rules:
            if not rule.feeds.covers(feed):
                continue
            hits: Hits = set()
            if evaluate(rule.query, fields, rule.fields, hits):
                found.append(_explain(rule, hits))
        if fields.timeouts:
            log.warning(
                "regex search took over %gs and counted as no match: %s",
                REGEX_TIMEOUT,
                ", ".join(sorted(set(fields.timeouts))),
                extra={"feed": feed.name},
            )
        return tuple(found)

    def match_all(self, feed: FeedSpec, items: Iterable[Item]) -> dict[str, tuple[Match, ...]]:
        """Item key -> its matches, for the items that matched at least one rule."""
        result: dict[str, tuple[Match, ...]] = {}
        for item in items:
            matches = self.match(feed, item)
            if matches:
                result[item.key] = matches
        return result


def _explain(rule: Rule, hits: Hits) -> Match:
    found = {term for term, _ in hits}
    terms = tuple(dict.fromkeys(t for t in terms_of(rule.query) if t in found))
    fields = tuple(name for name in rule.fields if any(f == name for _, f in hits))
    return Match(rule=rule.name, terms=terms, fields=fields, channels=rule.notify)
