"""The rule query language: text -> query tree, or a QueryError pointing at the culprit.

    query   := or
    or      := and ("OR" and)*
    and     := unary (["AND"] unary)*          adjacent terms are ANDed
    unary   := "NOT" unary | "-" unary | scoped
    scoped  := [field ":"] primary             field from monitor.models.FIELDS
    primary := "(" or ")" | NEAR | "/regex/" | '"phrase"' | word

Operators are keywords only in upper case (AND, OR, NOT, NEAR); `and`, `or`, `not`, `near`
are ordinary words, and so is `"AND"` quoted. `word` runs up to a space, parenthesis or quote;
a trailing `*` makes it a prefix. An ASCII identifier directly followed by `:` is always a field
scope (an unknown one is an error, so `titel:x` is not silently a phrase); any other colon is
punctuation inside a word (`10:30`). Quote a term to search a word with a colon: `"re:x"`.

Leaves are built by `compile.py`. A scoped leaf's text shows its field (`title:sanctions`),
also when the scope came from a group: `title:(a OR b)` gives the same tree as
`title:a OR title:b`. Written by hand rather than with a parser library: the grammar is small,
and exact error positions matter more than anything else here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TypeVar

from monitor.match.compile import all_of, any_of, make_regex, make_term, negate
from monitor.match.query import Near, Node, Regex, Term, TermError
from monitor.models import FIELDS

#: Distance of a NEAR written without /N.
DEFAULT_DISTANCE = 10
#: Deepest nesting of parentheses and NOTs accepted.
MAX_DEPTH = 100

_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):")
_NEAR = re.compile(r"NEAR(?:/(.*))?", re.DOTALL)
# What ends a bare word; inside NEAR(...) a comma does too.
_STOP = frozenset('()"')
_NEAR_STOP = _STOP | {","}


class QueryError(TermError):
    """An invalid query; `position` is a 0-based index into the query text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message, position)


def parse_query(text: str, *, case_sensitive: bool = False, stem: str | None = None) -> Node:
    """The tree for a query; options are pushed into every leaf (see compile.make_term)."""
    return _Parser(text, case_sensitive, stem).parse()


_Leaf = TypeVar("_Leaf", Term, Near, Regex)
# (label, position) of what a term is expected after, e.g. ("AND", 6); None at a start.
_After = tuple[str, int] | None


class _Parser:
    def __init__(self, text: str, case_sensitive: bool, stem: str | None) -> None:
        self.text = text
        self.pos = 0
        # Errors "at the end" point just after the last visible character, not after a
        # trailing newline of a YAML block.
        self.end = len(text.rstrip())
        self.case_sensitive = case_sensitive
        self.stem = stem
        self.scope: str | None = None
        self.depth = 0

    def parse(self) -> Node:
        self.skip()
        if self.pos >= self.end:
            raise QueryError("empty query", 0)
        node = self.or_(None)
        if self.pos < self.end:  # `or_` stops only at the end or at a ')'
            raise QueryError("unexpected ')'", self.pos)
        return node

    # --- lexing ---------------------------------------------------------------------------

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def word_end(self, stop: frozenset[str]) -> int:
        end = self.pos
        while end < len(self.text) and not self.text[end].isspace() and self.text[end] not in stop:
            end += 1
        return end

    def keyword(self) -> str | None:
        """The operator at the cursor (AND, OR, NOT), if any; the cursor does not move."""
        word = self.text[self.pos : self.word_end(_STOP)]
        return word if word in ("AND", "OR", "NOT") else None

    def at_boundary(self, index: int | None = None, stops: str = "(),") -> bool:
        """Whether a term ends at `index` (default: the cursor); `"a"b`, `/x/i` are mistakes."""
        i = self.pos if index is None else index
        return i >= len(self.text) or self.text[i].isspace() or self.text[i] in stops

    # --- grammar --------------------------------------------------------------------------

    def or_(self, after: _After) -> Node:
        parts = [self.and_(after)]
        while self.keyword() == "OR":
            at = self.pos
            self.pos += 2
            parts.append(self.and_(("OR", at)))
        return any_of(parts)

    def and_(self, after: _After) -> Node:
        parts = [self.unary(after)]
        while True:
            self.skip()
            if self.pos >= self.end or self.text[self.pos] == ")" or self.keyword() == "OR":
                return all_of(parts)
            if self.keyword() == "AND":
                at = self.pos
                self.pos += 3
                parts.append(self.unary(("AND", at)))
            else:
                parts.append(self.unary(None))

    def unary(self, after: _After) -> Node:
        self.skip()
        at = self.pos
        self.depth += 1
        if self.depth > MAX_DEPTH:
            # Python's recursion limit would turn this into a crash rather than a problem.
            raise QueryError(f"query nested more than {MAX_DEPTH} levels deep", at)
        try:
            return self.negated(after, at)
        finally:
            self.depth -= 1

    def negated(self, after: _After, at: int) -> Node:
        if self.keyword() == "NOT":
            self.pos += 3
            return negate(self.unary(("NOT", at)))
        if self.text.startswith("-", at) and not self.at_boundary(at + 1, ")"):
            self.pos += 1
            return negate(self.unary(("'-'", at)))
        return self.scoped(after)

    def missing(self, after: _After) -> QueryError:
        """The error for a term expected at the cursor but not found there."""
        at = min(self.pos, self.end)
        if after is not None:
            return QueryError(f"expected a term after {after[0]}", at)
        if self.pos < self.end and self.text[self.pos] == ")":
            return QueryError("unexpected ')'", at)
        return QueryError(f"expected a term before {self.keyword() or 'this'}", at)

    def scoped(self, after: _After) -> Node:
        start = self.pos
        if self.pos >= self.end or self.text[self.pos] == ")" or self.keyword() in ("AND", "OR"):
            raise self.missing(after)
        found = _FIELD.match(self.text, start)
        if not found:
            return self.primary()
        name = found.group(1)
        if name not in FIELDS:
            raise QueryError(f"unknown field '{name}' (fields: {', '.join(FIELDS)})", start)
        if self.scope is not None:
            raise QueryError(f"field '{name}:' inside the scope of '{self.scope}:'", start)
        self.pos = found.end()
        if self.at_boundary(stops="),") or self.keyword() in ("AND", "OR"):
            raise QueryError(f"expected a term after '{name}:'", min(self.pos, self.end))
        if self.keyword() == "NOT" or self.text[self.pos] == "-":
            raise QueryError(f"put NOT before the field: NOT {name}:...", self.pos)
        self.scope = name
        try:
            return self.primary()
        finally:
            self.scope = None

    def primary(self) -> Node:
        start, char = self.pos, self.text[self.pos]
        if char == "(":
            return self.group()
        if char == "/":
            return self.regex()
        if char == '"':
            return self.leaf(self.quoted())
        self.pos = self.word_end(_STOP)
        word = self.text[start : self.pos]
        near = _NEAR.fullmatch(word)
        return self.near(near.group(1), start) if near else self.leaf(start)

    def group(self) -> Node:
        opened = self.pos
        self.pos += 1
        self.skip()
        if self.pos >= self.end:
            raise QueryError("unclosed parenthesis", opened)
        if self.text[self.pos] == ")":
            raise QueryError("empty parentheses", opened)
        node = self.or_(None)
        if self.pos >= self.end:
            raise QueryError("unclosed parenthesis", opened)
        self.pos += 1
        return node

    def quoted(self) -> int:
        """Moves past a quoted phrase; returns where it starts."""
        start = self.pos
        close = self.text.find('"', start + 1)
        if close < 0:
            raise QueryError("unclosed quote", start)
        self.pos = close + 1
        if not self.at_boundary():
            raise QueryError("expected a space or operator after the closing quote", self.pos)
        return start

    def leaf(self, start: int) -> Term:
        source = self.text[start : self.pos]
        try:
            term = make_term(source, case_sensitive=self.case_sensitive, stem=self.stem)
        except TermError as exc:
            raise QueryError(str(exc), start + (exc.position or 0)) from None
        return self.in_scope(term)

    def in_scope(self, node: _Leaf) -> _Leaf:
        if self.scope is None:
            return node
        return dataclasses.replace(node, text=f"{self.scope}:{node.text}", fields=(self.scope,))

    def regex(self) -> Node:
        opened = self.pos
        i = opened + 1
        while i < len(self.text) and self.text[i] != "/":
            i += 2 if self.text[i] == "\\" else 1  # `\/` is a slash inside the pattern
        if i >= len(self.text):
            raise QueryError("unclosed regex: end it with '/'", opened)
        self.pos = i + 1
        if not self.at_boundary():
            raise QueryError("expected a space or operator after the regex (no flags)", self.pos)
        if i == opened + 1:
            raise QueryError("empty regex would match everything", opened)
        try:
            node = make_regex(self.text[opened + 1 : i], case_sensitive=self.case_sensitive)
        except TermError as exc:
            raise QueryError(str(exc), opened + 1 + (exc.position or 0)) from None
        return self.in_scope(dataclasses.replace(node, text=self.text[opened : self.pos]))

    def near(self, written: str | None, start: int) -> Node:
        distance = DEFAULT_DISTANCE
        if written is not None:
            if not (written.isascii() and written.isdigit() and int(written) > 0):
                raise QueryError("NEAR distance must be a positive whole number", start + 5)
            distance = int(written)
        self.skip()
        opened = self.pos
        if not self.text.startswith("(", opened):
            raise QueryError("expected '(' after NEAR, as in NEAR/5(talks, geneva)", opened)
        self.pos += 1
        terms = [self.near_operand(opened)]
        while self.text.startswith(",", self.pos):
            self.pos += 1
            terms.append(self.near_operand(opened))
        if not self.text.startswith(")", self.pos):
            if self.pos >= self.end:
                raise QueryError("unclosed parenthesis", opened)
            raise QueryError("expected ',' or ')' (quote phrases: \"peace talks\")", self.pos)
        self.pos += 1
        if len(terms) < 2:
            raise QueryError("NEAR needs at least two terms", start)
        return self.in_scope(Near(self.text[start : self.pos], tuple(terms), distance))

    def near_operand(self, opened: int) -> Term:
        self.skip()
        start = self.pos
        if start >= self.end:
            raise QueryError("unclosed parenthesis", opened)
        if self.text[start] in ",)":
            raise QueryError("expected a word or phrase", start)
        if _FIELD.match(self.text, start):
            raise QueryError("put the field before NEAR, as in title:NEAR/5(a, b)", start)
        if self.text[start] == '"':
            self.quoted()
        else:
            self.pos = self.word_end(_NEAR_STOP)
            word = self.text[start : self.pos]
            if self.text[start] in "(-/" or word in ("AND", "OR", "NOT") or _NEAR.fullmatch(word):
                raise QueryError("NEAR takes words, phrases or prefixes only", start)
        scope, self.scope = self.scope, None  # the scope belongs to the Near, not its terms
        try:
            term = self.leaf(start)
        finally:
            self.scope = scope
        self.skip()
        return term
