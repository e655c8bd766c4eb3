"""Leaves built with the rule's options pushed in, and the tree builders every syntax shares.

Both rule syntaxes (the structured `any`/`all`/`none`/`regex` lists and the query language in
`parse.py`) build their trees here, so equivalent rules give equal trees. Trees are kept flat
(`And` inside `And` is merged, one-child groups collapse): the engine walks them per candidate
rule, and a flat tree is also what the reference evaluator in the tests expects.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import regex as rx

from monitor.match.query import And, Near, Node, Not, Or, Regex, Term, TermError
from monitor.match.stem import LANGUAGES, stem_words
from monitor.match.text import raw_words, words

# A `*` that ends a word: the only place a prefix wildcard may stand.
_STAR = re.compile(r"\*")


def options_problem(case_sensitive: bool, stem: str | None) -> str | None:
    """Why these rule options cannot be used together, or None when they can."""
    if stem is not None and stem not in LANGUAGES:
        return f"unknown stem language {stem!r} (known: {', '.join(sorted(LANGUAGES))})"
    if case_sensitive and stem is not None:
        # Snowball stemmers lower-case and expect folded input: a stemmed word has no case left
        # to compare, so the combination would silently mean something else.
        return "case_sensitive and stem cannot be combined"
    return None


def make_term(
    text: str,
    *,
    case_sensitive: bool = False,
    stem: str | None = None,
    fields: tuple[str, ...] | None = None,
) -> Term:
    """A keyword, phrase or prefix: `talks`, `"dead end"`, `dead end`, `sanction*`.

    Raises TermError; a misplaced `*` carries its position within `text`.
    """
    problem = options_problem(case_sensitive, stem)
    if problem:
        raise TermError(problem)
    start, end = _unquote(text)
    body = text[start:end]
    for star in _STAR.finditer(body):
        at = star.start()
        if at == 0 or not _word_char(body[at - 1]):
            raise TermError("'*' needs a word before it, as in sanction*", start + at)
        if at != len(body) - 1:
            raise TermError("'*' is only allowed at the end of a term", start + at)
    prefix = body.endswith("*")
    found = (raw_words if case_sensitive else words)(body[:-1] if prefix else body)
    if not found:
        raise TermError(f"term {text!r} contains no word to match")
    if stem is not None:
        stemmed = stem_words(stem, raw_words(body[:-1] if prefix else body))
        # A prefix's last word is a fragment: stemming it would change what it matches.
        last = len(found) - 1 if prefix else len(found)
        found = [stemmed[i] if i < last else w for i, w in enumerate(found)]
    return Term(text, tuple(found), prefix, fields, case_sensitive, stem)


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_" or unicodedata.category(char).startswith("M")


def _unquote(text: str) -> tuple[int, int]:
    """The (start, end) of the term inside optional surrounding quotes and spaces."""
    start, end = len(text) - len(text.lstrip()), len(text.rstrip())
    if end - start >= 2 and text[start] == text[end - 1] and text[start] in "\"'":
        return start + 1, end - 1
    return start, end


def make_regex(
    pattern: str,
    *,
    case_sensitive: bool = False,
    fields: tuple[str, ...] | None = None,
) -> Regex:
    """A regex term; an invalid pattern raises TermError with its position in `pattern`."""
    if not pattern:
        raise TermError("empty regex would match everything")
    try:
        compiled = rx.compile(pattern, 0 if case_sensitive else rx.IGNORECASE)
    except (RecursionError, OverflowError) as exc:
        raise TermError("regex is nested too deeply or too large to compile") from exc
    except rx.error as exc:
        # The stdlib points at where a broken construct starts ("missing ), unterminated
        # subpattern at position 0"); `regex` points at where it noticed. Prefer the former.
        try:
            re.compile(pattern)
        except re.error as std:
            raise TermError(f"invalid regex {pattern!r}: {std.msg}", std.pos) from exc
        msg, pos = getattr(exc, "msg", str(exc)), getattr(exc, "pos", None)
        raise TermError(f"invalid regex {pattern!r}: {msg}", pos) from exc
    return Regex(pattern, compiled, fields)


def all_of(parts: Iterable[Node]) -> Node:
    """AND of `parts`, with nested ANDs merged and a single part returned as is."""
    return _group(And, parts)


def any_of(parts: Iterable[Node]) -> Node:
    """OR of `parts`, with nested ORs merged and a single part returned as is."""
    return _group(Or, parts)


def _group(kind: type[And] | type[Or], parts: Iterable[Node]) -> Node:
    children: list[Node] = []
    for part in parts:
        children.extend(part.children if isinstance(part, kind) else (part,))
    if not children:
        raise TermError("empty group")
    return children[0] if len(children) == 1 else kind(tuple(children))


def negate(node: Node) -> Node:
    """NOT `node`; a double negation cancels out."""
    return node.child if isinstance(node, Not) else Not(node)


def compile_structured(
    any_: Sequence[str] = (),
    all_: Sequence[str] = (),
    none: Sequence[str] = (),
    regexes: Sequence[str] = (),
    *,
    case_sensitive: bool = False,
    stem: str | None = None,
) -> Node:
    """The tree for `any`/`all`/`none` lists plus regex terms.

    Meaning: every `all` term AND at least one `any` term (when given) AND at least one regex
    (when given) AND no `none` term. A rule with only `none` matches everything else. The same
    as the query `all1 AND all2 AND (any1 OR any2) AND (/re1/ OR /re2/) AND NOT (none1 OR none2)`.
    """

    def term(text: str) -> Term:
        return make_term(text, case_sensitive=case_sensitive, stem=stem)

    parts: list[Node] = [term(t) for t in all_]
    if any_:
        parts.append(any_of(map(term, any_)))
    if regexes:
        parts.append(any_of(make_regex(r, case_sensitive=case_sensitive) for r in regexes))
    if none:
        parts.append(negate(any_of(map(term, none))))
    if not parts:
        raise TermError("rule has no terms: give any, all, none or regex")
    return all_of(parts)


def compile_rule(
    query: str | None = None,
    any_: Sequence[str] = (),
    all_: Sequence[str] = (),
    none: Sequence[str] = (),
    regexes: Sequence[str] = (),
    *,
    case_sensitive: bool = False,
    stem: str | None = None,
) -> Node:
    """The tree for a rule written either way (a query, or the lists); raises TermError."""
    problem = options_problem(case_sensitive, stem)
    if problem:
        raise TermError(problem)
    if query is not None:
        if any_ or all_ or none or regexes:
            raise TermError("use either query or any/all/none/regex, not both")
        from monitor.match.parse import parse_query  # parse builds on this module

        return parse_query(query, case_sensitive=case_sensitive, stem=stem)
    return compile_structured(any_, all_, none, regexes, case_sensitive=case_sensitive, stem=stem)


def uses_regex(node: Node) -> bool:
    """Whether any leaf is a regex (such rules are searched item by item: slow at scale)."""
    if isinstance(node, Regex):
        return True
    if isinstance(node, Term | Near):
        return False
    if isinstance(node, Not):
        return uses_regex(node.child)
    return any(uses_regex(child) for child in node.children)
