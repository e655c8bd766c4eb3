"""The query tree every rule compiles to, whatever syntax the user wrote it in.

The structured form (`any`/`all`/`none`) is built here; a query-language parser will produce
the same nodes. Nodes are frozen and hashable so identical subtrees can be shared.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import regex as rx

from monitor.match.text import words


@dataclass(frozen=True, slots=True)
class Term:
    """A keyword or phrase: consecutive words; the last one may be a prefix (`sanction*`)."""

    #: The term as the user wrote it (shown in explanations).
    text: str
    #: Folded words to find consecutively.
    words: tuple[str, ...]
    #: Whether the last word matches as a prefix.
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Regex:
    """A regular expression searched in the plain text of each field.

    Compiled with the `regex` module rather than `re`: it takes a per-search timeout, so a
    pattern with catastrophic backtracking (`(a|aa)+$`) costs a bounded time instead of
    hanging the daemon.
    """

    #: The pattern as written.
    text: str
    #: Compiled pattern (case-insensitive unless the rule says otherwise).
    pattern: rx.Pattern[str]


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Node = Term | Regex | And | Or | Not


class TermError(ValueError):
    """A term or pattern that cannot be compiled; `position` is 0-based within the text."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message)


def term(text: str) -> Term:
    """Compile a keyword or phrase: `talks`, `"dead end"`, `dead end`, `sanction*`."""
    raw = text.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]
    prefix = raw.endswith("*")
    found = words(raw[:-1] if prefix else raw)
    if not found:
        raise TermError(f"term {text!r} contains no word to match")
    return Term(text=text, words=tuple(found), prefix=prefix)


def regex(text: str, *, case_sensitive: bool = False) -> Regex:
    """Compile a regex term; an invalid pattern raises TermError with the error's position."""
    try:
        pattern = rx.compile(text, 0 if case_sensitive else rx.IGNORECASE)
    except rx.error as exc:
        # The stdlib points at where a broken construct starts ("missing ), unterminated
        # subpattern at position 0"); `regex` points at where it noticed. Prefer the former.
        try:
            re.compile(text)
        except re.error as std:
            raise TermError(f"invalid regex {text!r}: {std.msg}", std.pos) from exc
        msg, pos = getattr(exc, "msg", str(exc)), getattr(exc, "pos", None)
        raise TermError(f"invalid regex {text!r}: {msg}", pos) from exc
    return Regex(text=text, pattern=pattern)


def terms_of(node: Node) -> list[str]:
    """Every term's text in the tree, in the order written (for stable explanations)."""
    if isinstance(node, Term | Regex):
        return [node.text]
    if isinstance(node, Not):
        return terms_of(node.child)
    return [text for child in node.children for text in terms_of(child)]


def structured(
    any_: Sequence[str] = (),
    all_: Sequence[str] = (),
    none: Sequence[str] = (),
    regexes: Sequence[str] = (),
) -> Node:
    """Build the tree for `any`/`all`/`none` lists plus regex terms.

    Meaning: every `all` term AND at least one `any` term (when given) AND at least one regex
    (when given) AND no `none` term. A rule with only `none` matches everything else.
    """
    parts: list[Node] = [term(t) for t in all_]
    if any_:
        parts.append(Or(tuple(term(t) for t in any_)))
    if regexes:
        parts.append(Or(tuple(regex(r) for r in regexes)))
    if none:
        parts.append(Not(Or(tuple(term(t) for t in none))))
    if not parts:
        raise TermError("rule has no terms: give any, all, none or regex")
    return parts[0] if len(parts) == 1 else And(tuple(parts))
