"""The query tree every rule compiles to, whatever syntax the user wrote it in.

Both the structured form (`any`/`all`/`none`/`regex`) and the query language compile to these
nodes. Rule options are pushed down into the leaves at compile time (a Term knows whether it is
case-sensitive and which stemmer made its words), so evaluators only ever look at leaves.
Nodes are frozen and hashable so identical subtrees can be shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import regex as rx


@dataclass(frozen=True, slots=True)
class Term:
    """A keyword or phrase: consecutive words; the last one may be a prefix (`sanction*`)."""

    #: The term as the user wrote it (shown in explanations).
    text: str
    #: Words to find consecutively, normalised like item words: folded (`text.words`), or
    #: only NFC-normalised when `case_sensitive` (`text.raw_words`); then stemmed with
    #: `stem.stemmer(stem)` when `stem` is set (a prefix's last word is never stemmed).
    words: tuple[str, ...]
    #: Whether the last word matches as a prefix.
    prefix: bool = False
    #: Fields this term is scoped to (`title:x`); None means the rule's fields.
    fields: tuple[str, ...] | None = None
    #: Compare words with their case (and accents) as written.
    case_sensitive: bool = False
    #: Language code (see `stem.LANGUAGES`) whose stemmer produced `words`; None: no stemming.
    stem: str | None = None


@dataclass(frozen=True, slots=True)
class Near:
    """Two or more terms within `distance` words of each other, in any order, in one field.

    "Within N words" means the first words of the terms are at most N positions apart.
    """

    #: As written, e.g. `NEAR/5(talks, geneva)`.
    text: str
    #: The terms (each a word, phrase or prefix), at least two.
    terms: tuple[Term, ...]
    #: Largest distance, in words, between the terms' first words.
    distance: int
    #: Fields this proximity is scoped to; None means the rule's fields.
    fields: tuple[str, ...] | None = None


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
    #: Fields this pattern is scoped to; None means the rule's fields.
    fields: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Node = Term | Near | Regex | And | Or | Not


class TermError(ValueError):
    """A term or pattern that cannot be compiled; `position` is 0-based within the text."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message)


# The builders live in compile.py (with rule options); these keep the original signatures for
# existing callers. Imported lazily: compile.py builds on the node classes above.


def term(text: str) -> Term:
    """Compile a keyword or phrase: `talks`, `"dead end"`, `dead end`, `sanction*`."""
    from monitor.match.compile import make_term

    return make_term(text)


def regex(text: str, *, case_sensitive: bool = False) -> Regex:
    """Compile a regex term; an invalid pattern raises TermError with the error's position."""
    from monitor.match.compile import make_regex

    return make_regex(text, case_sensitive=case_sensitive)


def terms_of(node: Node) -> list[str]:
    """Every term's text in the tree, in the order written (for stable explanations)."""
    if isinstance(node, Term | Regex | Near):
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
    """Build the tree for `any`/`all`/`none` lists plus regex terms (see
    `compile.compile_structured`, which also takes the rule's options)."""
    from monitor.match.compile import compile_structured

    return compile_structured(any_, all_, none, regexes)


def error_with_caret(exc: TermError, text: str) -> str:
    """The error with the offending line of `text` and a caret under the position."""
    if exc.position is None or not text.strip():
        return str(exc)
    before = text[: exc.position].split("\n")
    shown = text.split("\n")[len(before) - 1].expandtabs()
    caret = " " * len(before[-1].expandtabs()) + "^"
    if "\n" in text.rstrip():
        # A block (`query: |`) query: a character offset would mean counting across lines.
        where = f"line {len(before)}, column {len(before[-1]) + 1} of the query"
    else:
        where = f"position {exc.position}"
    return f"{exc} at {where}\n    {shown}\n    {caret}"
