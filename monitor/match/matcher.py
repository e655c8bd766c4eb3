"""Match rules against items: which rules match, on which terms, in which fields (pure).

`Matcher(rules)` compiles every rule's trigger keys into one `index.Index`; for each item only
the candidate rules it names are evaluated (`evaluate`), with the full tree, in config order.
For notifiers: `Match.terms/fields/snippet` explain a match, and `hit_spans(rule.query, text)`
gives the character spans of a text to highlight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from monitor.match.evaluate import REGEX_TIMEOUT, Fields, evaluate, hit_spans
from monitor.match.explain import Hit, explain, snippet
from monitor.match.index import Index
from monitor.match.query import terms_of
from monitor.models import FeedSpec, Item, Match, Rule

__all__ = ["REGEX_TIMEOUT", "Fields", "Matcher", "evaluate", "hit_spans", "snippet"]

log = logging.getLogger("monitor.match")


class Matcher:
    """All rules, compiled into one prefilter index. Pure and thread-safe once built."""

    __slots__ = ("_index", "_terms", "rules")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._index = Index(self.rules)
        self._terms = tuple(tuple(dict.fromkeys(terms_of(r.query))) for r in self.rules)

    def candidates(self, item: Item) -> list[Rule]:
        """The rules the prefilter selects for `item` (before feed scope and evaluation)."""
        return [self.rules[i] for i in self._index.candidates(Fields.of(item))]

    def match(self, feed: FeedSpec, item: Item) -> tuple[Match, ...]:
        """The matches of every in-scope rule on `item`, in config order."""
        fields = Fields.of(item)
        found: list[Match] = []
        for i in self._index.candidates(fields):
            rule = self.rules[i]
            if not rule.feeds.covers(feed):
                continue
            hits: list[Hit] = []
            if evaluate(rule.query, fields, rule.fields, hits):
                found.append(explain(rule, hits, fields, self._terms[i]))
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
