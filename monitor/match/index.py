"""The prefilter: from the words an item contains, the few rules that could match it.

Each rule gets a set of trigger keys such that the rule can only be true if the item holds at
least one of them (a Term: its longest exact word, a pair of its consecutive words, or its
prefix; AND: the best child's set; OR: the union of its children's; NEAR: its best term's).
NOT and regexes without a required literal have none: rules whose truth does not need any
positive key are always evaluated.

Words, pairs and prefixes are found by one pyahocorasick automaton (dependency:
pyahocorasick>=2.0) per group of fields with identical keys (the common case: every rule on
title and summary, one group): the item's tokens, already made for phrases and explanations,
are joined by single spaces, and the automaton holds " word ", " first second " and " prefix".
One C-level scan finds every key the item holds, whatever the number of rules; the earlier
per-token prefix loop cost a dict lookup per token and prefix length.

A regex's required literal (found with the stdlib parser) must occur in the casefolded field
text. All literals go into one more automaton: a single C-level scan per item, instead of one
`literal in text` per literal, whose cost grew with the number of regex rules.
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
#: pyahocorasick (no type stubs): the automata over word keys and over regex literals.
_ahocorasick: Any = importlib.import_module("ahocorasick")

#: ("w" word | "b" two consecutive words, space-joined | "p" prefix | "l" regex literal |
#:  "r" regex without a usable literal (searched once per item and field, shared by every rule
#:  using the pattern), field, case_sensitive, stem, text).
Key = tuple[str, str, bool, str | None, str]
_Kind = tuple[str, bool, str | None]
#: Literals shorter than this would flood the literal automaton with hits: regexes with only
#: such literals are searched on every item whose field holds one of them (a plain `in`).
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


def required_literals(pattern: rx.Pattern[str], shortest: int = MIN_LITERAL) -> list[str] | None:
    """Casefolded strings, each at least `shortest` long, one of which every match of
    `pattern` contains; None when there are none."""
    if pattern.flags & rx.V1 or _FOREIGN.search(pattern.pattern):
        return None
    try:
        parsed = _parser.parse(pattern.pattern, re.VERBOSE if pattern.flags & rx.VERBOSE else 0)
    except (re.error, RecursionError, OverflowError):
        return None
    found = _required(parsed)
    if found is None or min(len(lit) for lit in found) < shortest:
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
        tables: dict[_Kind, dict[str, list[int]]] = defaultdict(dict)
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
                if kind in _SPELLING:
                    table = tables[field, cs, stem]
                    text = _SPELLING[kind].format(text)
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
        self._lookups = _lookups(tables)
        self._literals = _automaton(literals) if literals else None
        self._literal_fields = tuple(sorted(literal_fields))
        self._searches = [
            (field, [_search(patterns[text], text, ids) for text, ids in table.items()])
            for field, table in searches.items()
        ]

    def candidates(self, fields: Fields) -> list[int]:
        """Indexes (config order) of the rules that may hold on the item behind `fields`."""
        found = set(self.always)
        update = found.update
        for names, cs, stem, automaton in self._lookups:
            for _, ids in automaton.iter(fields.spaced(names, cs, stem)):
                update(ids)
        if self._literals is not None:
            text = "\n".join(map(fields.folded_text, self._literal_fields))
            for _, ids in self._literals.iter(text):
                update(ids)
        for name, searches in self._searches:
            for pattern, label, guard, ids in searches:
                if guard and not any(map(fields.folded_text(name).__contains__, guard)):
                    continue
                if fields.search(pattern, name, label) is not None:
                    update(ids)
        return sorted(found)


def _search(pattern: rx.Pattern[str], label: str, ids: list[int]) -> _Search:
    """A regex searched per item, guarded by its short literals if it has any (too short for
    the automaton, whose hits they would flood, but a C-level `in` is cheaper than a search)."""
    return pattern, label, tuple(required_literals(pattern, 1) or ()), ids


#: (pattern, its key, short literals one of which the folded field must hold, rule ids).
_Search = tuple[rx.Pattern[str], str, tuple[str, ...], list[int]]


#: How word, pair and prefix keys are spelled in a lookup automaton, which scans the item's
#: tokens joined by single spaces (fields apart by " \n "): a word or a pair is a whole run of
#: tokens, a prefix the start of one. Tokens never hold whitespace, so these cannot misfire.
_SPELLING = {"w": " {} ", "b": " {} ", "p": " {}"}


def _automaton(table: dict[str, list[int]]) -> Any:
    automaton = _ahocorasick.Automaton()
    for text, ids in table.items():
        automaton.add_word(text, tuple(ids))
    automaton.make_automaton()
    return automaton


#: One lookup: fields whose tables are identical (scanned together), case sensitivity,
#: stemmer, and the automaton over their word, pair and prefix keys.
_Lookup = tuple[tuple[str, ...], bool, "str | None", Any]


def _lookups(tables: dict[_Kind, dict[str, list[int]]]) -> list[_Lookup]:
    """Per (case, stem): the fields grouped by identical tables, so that in the common case
    (every rule on title and summary) one scan covers every field."""
    groups: dict[tuple[bool, str | None], list[tuple[list[str], dict[str, list[int]]]]] = {}
    for (name, cs, stem), table in sorted(tables.items(), key=lambda kv: _order(kv[0])):
        kind = groups.setdefault((cs, stem), [])
        for group, same in kind:
            if same == table:
                group.append(name)
                break
        else:
            kind.append(([name], table))
    return [
        (tuple(names), cs, stem, _automaton(table))
        for (cs, stem), kind in groups.items()
        for names, table in kind
    ]


def _order(kind: _Kind) -> tuple[str, bool, str]:
    name, cs, stem = kind
    return name, cs, stem or ""
