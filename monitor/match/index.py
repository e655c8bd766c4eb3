"""The prefilter: from the words an item contains, the few rules that could match it.

Each rule gets a set of trigger keys such that the rule can only be true if the item holds at
least one of them (a Term: its longest exact word, or its prefix; AND: the best child's set;
OR: the union of its children's; NEAR: its best term's). NOT and regexes without a required
literal have none: rules whose truth does not need any positive key are always evaluated.

Lookups are token-level dicts, not an Aho-Corasick automaton: items are tokenised anyway (for
phrases and explanations), and one C-level `dict.keys() & set(tokens)` per field finds every
exact word at once; prefixes are looked up as `token[:k]` for each distinct prefix length.
A regex's required literal (found with the stdlib parser) is checked as a substring of the
casefolded field text.
"""

from __future__ import annotations

import importlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import regex as rx

from monitor.match.query import And, Near, Node, Not, Or, Regex, Term

if TYPE_CHECKING:
    from monitor.match.matcher import Fields
    from monitor.models import Rule

_parser: Any = importlib.import_module("re._parser")
_const: Any = importlib.import_module("re._constants")

#: ("w" word | "b" two consecutive words, space-joined | "p" prefix | "l" regex literal |
#:  "r" regex without a usable literal (searched once per item and field, shared by every rule
#:  using the pattern), field, case_sensitive, stem, text).
Key = tuple[str, str, bool, str | None, str]
_Kind = tuple[str, bool, str | None]
#: Literals shorter than this filter too little to be worth a check: such regexes always run.
MIN_LITERAL = 3
# Constructs the stdlib parser reads differently from `regex` (fuzzy `{e<=1}`, nested sets)
# or warns about: patterns containing them are always evaluated.
_FOREIGN = re.compile(r"\{(?!\d*,?\d*\})|\[[\[:=.]|--|&&|~~|\|\|")


def triggers(node: Node, fields: Sequence[str]) -> frozenset[Key] | None:
    """Keys one of which any item the node holds on contains; None when there are none."""
    if isinstance(node, Term):
        return _term_keys(node, node.fields or fields)
    if isinstance(node, Near):
        scope = node.fields or fields
        return _best([_term_keys(t, scope) for t in node.terms])
    if isinstance(node, Regex):
        literals = required_literals(node.pattern)
        scope = node.fields or fields
        if literals is None:
            return frozenset(("r", f, False, None, _pattern_key(node.pattern)) for f in scope)
        return frozenset(("l", f, False, None, lit) for lit in literals for f in scope)
    if isinstance(node, And):
        return _best([triggers(child, fields) for child in node.children])
    if isinstance(node, Or):
        found: set[Key] = set()
        for child in node.children:
            keys = triggers(child, fields)
            if keys is None:
                return None
            found |= keys
        return frozenset(found)
    assert isinstance(node, Not)
    return None


def _pattern_key(pattern: rx.Pattern[str]) -> str:
    return f"{pattern.flags}:{pattern.pattern}"


def _patterns(node: Node) -> dict[str, rx.Pattern[str]]:
    if isinstance(node, Regex):
        return {_pattern_key(node.pattern): node.pattern}
    if isinstance(node, Not):
        return _patterns(node.child)
    if isinstance(node, And | Or):
        return {k: p for child in node.children for k, p in _patterns(child).items()}
    return {}


def _term_keys(term: Term, scope: Sequence[str]) -> frozenset[Key]:
    exact = term.words[:-1] if term.prefix else term.words
    if len(exact) >= 2:  # a phrase: a pair of consecutive words, the first as long as can be
        pair = max(pairwise(exact), key=lambda p: (len(p[0]), len(p[1])))
        text = " ".join(pair)
        return frozenset(("b", f, term.case_sensitive, term.stem, text) for f in scope)
    if exact:
        word = max(exact, key=len)
        return frozenset(("w", f, term.case_sensitive, term.stem, word) for f in scope)
    return frozenset(("p", f, term.case_sensitive, None, term.words[-1]) for f in scope)


def _score(keys: frozenset[Key]) -> tuple[int, int, int]:
    """Lower is better: fewer distinct texts, pairs then words then the rest, longer texts."""
    texts = {(k[0], k[4]) for k in keys}
    rank = {"b": 0, "w": 1, "p": 2, "l": 3, "r": 9}
    return len(texts), sum(rank[kind] for kind, _ in texts), -min(len(t) for _, t in texts)


def _best(options: Iterable[frozenset[Key] | None]) -> frozenset[Key] | None:
    usable = [keys for keys in options if keys]
    return min(usable, key=_score) if usable else None


def required_literals(pattern: rx.Pattern[str]) -> list[str] | None:
    """Casefolded strings one of which every match of `pattern` contains, or None."""
    if pattern.flags & rx.V1 or _FOREIGN.search(pattern.pattern):
        return None
    try:
        parsed = _parser.parse(pattern.pattern, re.VERBOSE if pattern.flags & rx.VERBOSE else 0)
    except (re.error, RecursionError, OverflowError):
        return None
    found = _required(parsed)
    if found is None or min(len(lit) for lit in found) < MIN_LITERAL:
        return None
    return found


def _required(seq: Any) -> list[str] | None:
    best: list[str] | None = None

    def consider(option: list[str] | None) -> None:
        nonlocal best
        if option and (best is None or _lit_score(option) < _lit_score(best)):
            best = option

    run: list[str] = []
    for op, av in seq:
        if op is _const.LITERAL and 32 <= av < 127:
            run.append(chr(av).casefold())
            continue
        consider(["".join(run)] if run else None)
        run = []
        if op is _const.SUBPATTERN:
            consider(_required(av[-1]))
        elif op is _const.ATOMIC_GROUP:
            consider(_required(av))
        elif op in (_const.MAX_REPEAT, _const.MIN_REPEAT, _const.POSSESSIVE_REPEAT) and av[0]:
            consider(_required(av[2]))
        elif op is _const.BRANCH:
            options = [_required(branch) for branch in av[1]]
            if all(options):
                consider([lit for option in options if option for lit in option])
    consider(["".join(run)] if run else None)
    return best


def _lit_score(option: list[str]) -> tuple[int, int]:
    return -min(len(lit) for lit in option), len(option)


class Index:
    """Trigger keys of every rule, looked up per item; pure once built (shareable by threads)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        words: dict[_Kind, dict[str, list[int]]] = defaultdict(dict)
        pairs: dict[_Kind, dict[str, dict[str, list[int]]]] = defaultdict(dict)
        prefixes: dict[tuple[str, bool], dict[str, list[int]]] = defaultdict(dict)
        literals: dict[str, list[int]] = {}
        literal_fields: set[str] = set()
        searches: dict[str, dict[str, list[int]]] = defaultdict(dict)
        patterns: dict[str, rx.Pattern[str]] = {}
        always: list[int] = []
        for i, rule in enumerate(rules):
            keys = triggers(rule.query, rule.fields)
            if keys is None:
                always.append(i)
                continue
            for kind, field, cs, stem, text in keys:
                if kind == "w":
                    table = words[field, cs, stem]
                elif kind == "b":
                    first, second = text.split(" ")
                    table = pairs[field, cs, stem].setdefault(first, {})
                    text = second
                elif kind == "p":
                    table = prefixes[field, cs]
                elif kind == "l":  # one check over all literal fields' text: a superset
                    table = literals
                    literal_fields.add(field)
                else:
                    table = searches[field]
                    if text not in patterns:
                        patterns.update(_patterns(rule.query))
                ids = table.setdefault(text, [])
                if not ids or ids[-1] != i:
                    ids.append(i)
        self.always: tuple[int, ...] = tuple(always)
        self._words = dict(words)
        self._pairs = dict(pairs)
        self._prefixes = {key: _buckets(table) for key, table in prefixes.items()}
        self._literals = list(literals.items())
        self._literal_fields = tuple(sorted(literal_fields))
        self._searches = {
            field: [(patterns[text], text, ids) for text, ids in table.items()]
            for field, table in searches.items()
        }

    def candidates(self, fields: Fields) -> list[int]:
        """Indexes (config order) of the rules that may hold on the item behind `fields`."""
        found = set(self.always)
        for (name, cs, stem), table in self._words.items():
            for word in table.keys() & fields.distinct(name, cs, stem):
                found.update(table[word])
        for (name, cs, stem), firsts in self._pairs.items():
            for first in firsts.keys() & fields.distinct(name, cs, stem):
                toks, seconds = fields.words(name, cs, stem), firsts[first]
                i = toks.index(first)
                while i >= 0:
                    if i + 1 < len(toks) and toks[i + 1] in seconds:
                        found.update(seconds[toks[i + 1]])
                    i = toks.index(first, i + 1) if first in toks[i + 1 :] else -1
        for (name, cs), (short, buckets) in self._prefixes.items():
            distinct = fields.distinct(name, cs, None)
            for head in buckets.keys() & {word[:_BUCKET] for word in distinct}:
                for prefix, ids in buckets[head]:
                    if any(word.startswith(prefix) for word in distinct):
                        found.update(ids)
            for length, table in short.items():
                for head in table.keys() & {word[:length] for word in distinct}:
                    found.update(table[head])
        if self._literals:
            text = "\n".join(fields.folded_text(name) for name in self._literal_fields)
            for literal, ids in self._literals:
                if literal in text:
                    found.update(ids)
        for name, searches in self._searches.items():
            for pattern, label, ids in searches:
                if fields.search(pattern, name, label) is not None:
                    found.update(ids)
        return sorted(found)


#: Prefixes are bucketed by their first characters: one dict lookup per distinct token.
_BUCKET = 4
_Entries = list[tuple[str, list[int]]]
_Table = dict[str, list[int]]


def _buckets(table: dict[str, list[int]]) -> tuple[dict[int, _Table], dict[str, _Entries]]:
    """(prefixes shorter than _BUCKET by length, the others by their first _BUCKET chars)."""
    short: dict[int, _Table] = defaultdict(dict)
    buckets: dict[str, _Entries] = defaultdict(list)
    for prefix, ids in table.items():
        if len(prefix) < _BUCKET:
            short[len(prefix)][prefix] = ids
        else:
            buckets[prefix[:_BUCKET]].append((prefix, ids))
    return dict(short), dict(buckets)
