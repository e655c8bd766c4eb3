"""A deliberately simple evaluator, one rule at a time, straight from the documented semantics.

It shares nothing with the engine (no index, no caches, no `evaluate`) beyond tokenisation
(`text.words`/`raw_words`) and stemming (`stem.stem_words`), and favours obviousness over speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

from monitor.match.query import And, Near, Node, Not, Or, Regex, Term
from monitor.match.stem import stem_words
from monitor.match.text import raw_words, words
from monitor.models import Item, Rule


def term_starts(term: Term, text: str) -> list[int]:
    """Every token position where `term` starts in `text`, by brute force."""
    base = raw_words(text) if term.case_sensitive else words(text)
    compared = stem_words(term.stem, raw_words(text)) if term.stem else base
    n = len(term.words)
    starts = []
    for i in range(len(base) - n + 1):
        ok = True
        for k, want in enumerate(term.words):
            if term.prefix and k == n - 1:
                ok = ok and base[i + k].startswith(want)
            else:
                ok = ok and compared[i + k] == want
        if ok:
            starts.append(i)
    return starts


def _near_in(near: Near, text: str) -> bool:
    lists = [term_starts(t, text) for t in near.terms]
    return any(max(choice) - min(choice) <= near.distance for choice in product(*lists))


def _leaf_fields(node: Term | Near | Regex, item: Item, fields: Sequence[str]) -> list[str]:
    """The fields (of the node's scope) in which a leaf holds."""
    found = []
    for name in node.fields or fields:
        text = item.text(name)
        if isinstance(node, Term):
            ok = bool(term_starts(node, text))
        elif isinstance(node, Near):
            ok = _near_in(node, text)
        else:
            ok = node.pattern.search(text) is not None
        if ok:
            found.append(name)
    return found


def holds(node: Node, item: Item, fields: Sequence[str]) -> bool:
    if isinstance(node, And):
        return all(holds(child, item, fields) for child in node.children)
    if isinstance(node, Or):
        return any(holds(child, item, fields) for child in node.children)
    if isinstance(node, Not):
        return not holds(node.child, item, fields)
    return bool(_leaf_fields(node, item, fields))


def positive_hits(node: Node, item: Item, fields: Sequence[str]) -> set[str]:
    """Texts of the leaves outside any NOT that hold somewhere (a superset of what to report)."""
    if isinstance(node, And | Or):
        return {t for child in node.children for t in positive_hits(child, item, fields)}
    if isinstance(node, Not):
        return set()
    return {node.text} if _leaf_fields(node, item, fields) else set()


def matching(rules: Sequence[Rule], item: Item) -> list[str]:
    """Names of the rules that hold on `item`, in order (feed scope ignored)."""
    return [rule.name for rule in rules if holds(rule.query, item, rule.fields)]
