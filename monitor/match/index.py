"""The prefilter: from the words an item contains, the few rules that could match it.

Each rule gets a set of trigger keys such that the rule can only be true if the item holds at
least one of them (a Term: its longest exact word, a pair of its consecutive words, or its
prefix; AND: the best child's set; OR: the union of its children's; NEAR: its best term's).
NOT and regexes without a required literal have none: rules whose truth does not need any
positive key are always evaluated.

Words, pairs and prefixes are looked up in token-level dicts: items are tokenised anyway (for
phrases and explanations), and one C-level `dict.keys() & set(tokens)` finds every exact word at
once, `dict.keys() & set(pairwise(tokens))` every pair. Fields whose tables are identical (the
common case: every rule on title and summary) are looked up together, over the union of their
tokens. Prefixes are bucketed by their first characters.

A regex's required literal (found with the stdlib parser) must occur in the casefolded field
text. All literals go into ONE pyahocorasick automaton (dependency: pyahocorasick>=2.0): a
single C-level scan per item, instead of one `literal in text` per literal, whose cost grew
with the number of regex rules.
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
#: pyahocorasick (no type stubs): one automaton over every regex literal.
_ahocorasick: Any = importlib.import_module("ahocorasick")

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
        pairs: dict[_Kind, dict[tuple[str, str], list[int]]] = defaultdict(dict)
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
                    ids = pairs[field, cs, stem].setdefault((first, second), [])
                    if not ids or ids[-1] != i:
                        ids.append(i)
                    continue
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
        self._lookups = _lookups(words, pairs, prefixes)
        self._literals: Any = None
        if literals:
            self._literals = _ahocorasick.Automaton()
            for literal, ids in literals.items():
                self._literals.add_word(literal, tuple(ids))
            self._literals.make_automaton()
        self._literal_fields = tuple(sorted(literal_fields))
        self._searches = [
            (field, [(patterns[text], text, ids) for text, ids in table.items()])
            for field, table in searches.items()
        ]

    def candidates(self, fields: Fields) -> list[int]:
        """Indexes (config order) of the rules that may hold on the item behind `fields`."""
        found = set(self.always)
        update = found.update
        for names, cs, stem, table, bigrams, short, buckets in self._lookups:
            distinct = fields.distinct_in(names, cs, stem)
            if table is not None:
                for word in table.keys() & distinct:
                    update(table[word])
            if bigrams is not None:
                for pair in bigrams.keys() & fields.pairs_in(names, cs, stem):
                    update(bigrams[pair])
            if buckets is not None or short is not None:
                _prefixed(distinct, buckets or {}, short or {}, update)
        if self._literals is not None:
            text = "\n".join(map(fields.folded_text, self._literal_fields))
            for _, ids in self._literals.iter(text):
                update(ids)
        for name, searches in self._searches:
            for pattern, label, ids in searches:
                if fields.search(pattern, name, label) is not None:
                    update(ids)
        return sorted(found)


def _prefixed(
    distinct: set[str],
    buckets: dict[str, list[tuple[str, list[int]]]],
    short: dict[int, dict[str, list[int]]],
    update: Any,
) -> None:
    """Rules with a prefix that starts one of the words: one pass over the words, one dict
    lookup each (plus one per short-prefix length), no per-item set of heads."""
    get = buckets.get
    for word in distinct:
        entries = get(word[:_BUCKET])
        if entries is not None:
            for prefix, ids in entries:
                if word.startswith(prefix):
                    update(ids)
        for length, heads in short.items():
            found = heads.get(word[:length])
            if found is not None:
                update(found)


#: One lookup: fields whose tables are identical (their tokens are looked up together), case
#: sensitivity, stemmer, word table, pair table ((first, second) -> ids), prefix tables (short,
#: bucketed; see `_buckets`).
_Lookup = tuple[
    tuple[str, ...],
    bool,
    "str | None",
    "dict[str, list[int]] | None",
    "dict[tuple[str, str], list[int]] | None",
    "dict[int, dict[str, list[int]]] | None",
    "dict[str, list[tuple[str, list[int]]]] | None",
]


def _lookups(
    words: dict[_Kind, dict[str, list[int]]],
    pairs: dict[_Kind, dict[tuple[str, str], list[int]]],
    prefixes: dict[tuple[str, bool], dict[str, list[int]]],
) -> list[_Lookup]:
    """Per (case, stem): the fields grouped by identical tables, so that in the common case
    (every rule on title and summary) each token is looked up once for all its fields."""
    kinds = {(cs, stem) for _, cs, stem in (*words, *pairs)} | {(cs, None) for _, cs in prefixes}
    names = sorted({key[0] for key in words} | {key[0] for key in pairs} | {f for f, _ in prefixes})
    found: list[_Lookup] = []
    for cs, stem in sorted(kinds, key=lambda k: (k[0], k[1] or "")):
        groups: list[tuple[list[str], tuple[Any, Any, Any]]] = []
        for name in names:
            tables = (
                words.get((name, cs, stem)),
                pairs.get((name, cs, stem)),
                prefixes.get((name, cs)) if stem is None else None,
            )
            if tables == (None, None, None):
                continue
            for group, same in groups:
                if same == tables:
                    group.append(name)
                    break
            else:
                groups.append(([name], tables))
        for group, (table, bigrams, prefix_table) in groups:
            short, buckets = _buckets(prefix_table) if prefix_table else (None, None)
            found.append((tuple(group), cs, stem, table, bigrams, short or None, buckets or None))
    return found


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
