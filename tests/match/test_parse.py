"""The query language: every construct's tree, precedence, and every error with its position."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.match.compile import compile_structured, make_regex, make_term
from monitor.match.parse import DEFAULT_DISTANCE, MAX_DEPTH, QueryError, parse_query
from monitor.match.query import And, Near, Not, Or, Regex, Term, TermError


def t(text: str, **kw: object) -> Term:
    return make_term(text, **kw)  # type: ignore[arg-type]


def scoped(field: str, text: str) -> Term:
    """A leaf as a field scope writes it: its text shows the scope."""
    return dataclasses.replace(make_term(text), text=f"{field}:{text}", fields=(field,))


def re_(written: str, pattern: str, fields: tuple[str, ...] | None = None) -> Regex:
    node = make_regex(pattern, fields=fields)
    return Regex(written, node.pattern, fields)


# --- constructs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("talks", t("talks")),
        ("a AND b", And((t("a"), t("b")))),
        ("a OR b", Or((t("a"), t("b")))),
        ("a b", And((t("a"), t("b")))),
        ("NOT a", Not(t("a"))),
        ("-a", Not(t("a"))),
        ("a -b", And((t("a"), Not(t("b"))))),
        ("NOT NOT a", t("a")),
        ("(a)", t("a")),
        ('"dead end"', t('"dead end"')),
        ("sanction*", t("sanction*")),
        ('"security guar*"', t('"security guar*"')),
        ("10:30", t("10:30")),
        ("covid-19", t("covid-19")),
        ('"AND"', t('"AND"')),
        ("and or not near", And((t("and"), t("or"), t("not"), t("near")))),
    ],
)
def test_constructs(query: str, expected: object) -> None:
    assert parse_query(query) == expected


def test_phrase_and_prefix_words() -> None:
    assert parse_query('"dead end"') == Term('"dead end"', ("dead", "end"))
    assert parse_query("Sanction*") == Term("Sanction*", ("sanction",), prefix=True)
    assert parse_query('"security guar*"') == Term(
        '"security guar*"', ("security", "guar"), prefix=True
    )


def test_precedence_not_over_and_over_or() -> None:
    a, b, c, d = map(t, "abcd")
    assert parse_query("a OR b AND c") == Or((a, And((b, c))))
    assert parse_query("a OR b c") == Or((a, And((b, c))))
    assert parse_query("a AND b OR c AND d") == Or((And((a, b)), And((c, d))))
    assert parse_query("NOT a b") == And((Not(a), b))
    assert parse_query("NOT a OR b") == Or((Not(a), b))
    assert parse_query("NOT (a OR b)") == Not(Or((a, b)))
    assert parse_query("(a OR b) c") == And((Or((a, b)), c))


def test_nested_groups_of_one_kind_are_flattened() -> None:
    a, b, c, d = map(t, "abcd")
    assert parse_query("a AND (b AND (c d))") == And((a, b, c, d))
    assert parse_query("(a OR b) OR (c OR d)") == Or((a, b, c, d))
    assert parse_query("((a))") == a


def test_field_scope_on_terms_and_groups() -> None:
    assert parse_query("title:sanctions") == scoped("title", "sanctions")
    assert parse_query('summary:"security guarantees"') == scoped(
        "summary", '"security guarantees"'
    )
    assert parse_query("title:sanction*") == scoped("title", "sanction*")
    group = parse_query("title:(a OR b) c")
    assert group == And((Or((scoped("title", "a"), scoped("title", "b"))), t("c")))
    # A group scope gives the same tree as scoping each leaf.
    assert parse_query("title:(a OR b)") == parse_query("title:a OR title:b")
    assert parse_query("NOT title:a") == Not(scoped("title", "a"))
    assert parse_query("title:(NOT a)") == Not(scoped("title", "a"))


def test_near() -> None:
    near = parse_query("NEAR/5(talks, geneva)")
    assert near == Near("NEAR/5(talks, geneva)", (t("talks"), t("geneva")), 5)
    default = parse_query('NEAR(peace, "security guar*")')
    assert default == Near(
        'NEAR(peace, "security guar*")', (t("peace"), t('"security guar*"')), DEFAULT_DISTANCE
    )
    assert DEFAULT_DISTANCE == 10
    three = parse_query("NEAR/3( a ,b,  c* )")
    assert three == Near("NEAR/3( a ,b,  c* )", (t("a"), t("b"), t("c*")), 3)
    assert parse_query("x NEAR/2(a, b) OR y") == Or(
        (And((t("x"), Near("NEAR/2(a, b)", (t("a"), t("b")), 2))), t("y"))
    )


def test_near_with_a_field_scope() -> None:
    assert parse_query("title:NEAR/3(a, b)") == Near(
        "title:NEAR/3(a, b)", (t("a"), t("b")), 3, fields=("title",)
    )
    assert parse_query("title:(NEAR(a, b))") == Near(
        "title:NEAR(a, b)", (t("a"), t("b")), 10, fields=("title",)
    )


def test_regex_terms() -> None:
    assert parse_query("/sanction(s|ed)/") == re_("/sanction(s|ed)/", "sanction(s|ed)")
    escaped = parse_query(r"/a\/b c/")
    assert escaped == re_(r"/a\/b c/", r"a\/b c")
    assert isinstance(escaped, Regex)
    assert escaped.pattern.search("A/B C")
    assert parse_query("title:/x+/") == re_("title:/x+/", "x+", ("title",))
    both = parse_query("/x/ AND y")
    assert both == And((re_("/x/", "x"), t("y")))


def test_regex_case_follows_the_rule() -> None:
    node = parse_query("/Abc/", case_sensitive=True)
    assert isinstance(node, Regex)
    assert node.pattern.search("xAbc")
    assert not node.pattern.search("abc")
    insensitive = parse_query("/Abc/")
    assert isinstance(insensitive, Regex)
    assert insensitive.pattern.search("abc")


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("санкции", ("санкции",)),
        ("Κρήτη", ("κρητη",)),
        ("طهران", ("طهران",)),
        ("東京", ("東", "京")),
        ("title:Санкции", ("санкции",)),
    ],
)
def test_unicode_terms(query: str, words: tuple[str, ...]) -> None:
    node = parse_query(query)
    assert isinstance(node, Term)
    assert node.words == words


def test_options_reach_every_leaf() -> None:
    node = parse_query('Sanctions OR NEAR(Talks, "Peace deal")', stem="en")
    assert node == Or(
        (
            t("Sanctions", stem="en"),
            Near(
                'NEAR(Talks, "Peace deal")',
                (t("Talks", stem="en"), t('"Peace deal"', stem="en")),
                10,
            ),
        )
    )
    cased = parse_query("title:Zürich", case_sensitive=True)
    assert cased == Term("title:Zürich", ("Zürich",), fields=("title",), case_sensitive=True)


def test_pure_not_is_valid() -> None:
    assert parse_query("NOT sport") == Not(t("sport"))
    assert parse_query("-sport -football") == And((Not(t("sport")), Not(t("football"))))


def test_structured_and_query_forms_give_the_same_tree() -> None:
    assert compile_structured(["a", "b"], ["c"], ["d"]) == parse_query("c AND (a OR b) AND NOT d")
    assert compile_structured(["a"], none=["d", "e"]) == parse_query("a NOT (d OR e)")
    assert compile_structured(all_=['"dead end"', "x*"]) == parse_query('"dead end" x*')
    assert compile_structured(["a"], stem="en") == parse_query("a", stem="en")


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message", "position"),
    [
        ("", "empty query", 0),
        ("   ", "empty query", 0),
        ("a AND", "expected a term after AND", 5),
        ("a AND  \n", "expected a term after AND", 5),
        ("a OR", "expected a term after OR", 4),
        ("OR b", "expected a term before OR", 0),
        ("AND b", "expected a term before AND", 0),
        ("a OR OR b", "expected a term after OR", 5),
        ("a AND )", "expected a term after AND", 6),
        ("NOT", "expected a term after NOT", 3),
        ("a -", "term '-' contains no word to match", 2),
        ("(a", "unclosed parenthesis", 0),
        ("x (a OR (b)", "unclosed parenthesis", 2),
        ("a)", "unexpected ')'", 1),
        (")", "unexpected ')'", 0),
        ("()", "empty parentheses", 0),
        ("a ( )", "empty parentheses", 2),
        ("(OR a)", "expected a term before OR", 1),
        ('"dead end', "unclosed quote", 0),
        ('"a"b', "expected a space or operator after the closing quote", 3),
        ("sanc*tion", "'*' is only allowed at the end of a term", 4),
        ("a *", "'*' needs a word before it, as in sanction*", 2),
        ('"a *"', "'*' needs a word before it, as in sanction*", 3),
        ('"a* b"', "'*' is only allowed at the end of a term", 2),
        ('x "!!"', "term '\"!!\"' contains no word to match", 2),
        (
            "titel:x",
            "unknown field 'titel' (fields: title, summary, content, author, tags, link)",
            0,
        ),
        ("a https://x", "unknown field 'https'", 2),
        ("title:", "expected a term after 'title:'", 6),
        ("title: x", "expected a term after 'title:'", 6),
        ("title:-x", "put NOT before the field: NOT title:...", 6),
        ("title:AND x", "expected a term after 'title:'", 6),
        ("title:(a summary:b)", "field 'summary:' inside the scope of 'title:'", 9),
        ("/x(a/", "invalid regex 'x(a': missing ), unterminated subpattern", 2),
        ("a /b[/", "invalid regex 'b[': unterminated character set", 4),
        ("/abc", "unclosed regex: end it with '/'", 0),
        ("//", "empty regex would match everything", 0),
        ("/x/i", "expected a space or operator after the regex (no flags)", 3),
        ("NEAR/0(a, b)", "NEAR distance must be a positive whole number", 5),
        ("NEAR/x(a, b)", "NEAR distance must be a positive whole number", 5),
        ("a NEAR b", "expected '(' after NEAR, as in NEAR/5(talks, geneva)", 7),
        ("NEAR(a)", "NEAR needs at least two terms", 0),
        ("NEAR(a, b", "unclosed parenthesis", 4),
        ("NEAR(a, )", "expected a word or phrase", 8),
        ("NEAR(peace talks, b)", "expected ',' or ')' (quote phrases: \"peace talks\")", 11),
        ("NEAR(a, (b OR c))", "NEAR takes words, phrases or prefixes only", 8),
        ("NEAR(a, NOT b)", "NEAR takes words, phrases or prefixes only", 8),
        ("NEAR(a, /b/)", "NEAR takes words, phrases or prefixes only", 8),
        ("NEAR(title:a, b)", "put the field before NEAR, as in title:NEAR/5(a, b)", 5),
        ('NEAR(a, "!")', "term '\"!\"' contains no word to match", 8),
    ],
)
def test_errors_and_their_positions(query: str, message: str, position: int) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert str(info.value).startswith(message)
    assert info.value.position == position
    assert isinstance(info.value, TermError)


def test_conflicting_options_are_refused() -> None:
    with pytest.raises(TermError, match="case_sensitive and stem cannot be combined"):
        parse_query("a", case_sensitive=True, stem="en")


_PIECES = st.sampled_from(
    ["a", "Zürich", "санкции", "東京", "x*", "*", "AND", "OR", "NOT", "-", "(", ")", '"', "/",
     "\\", ",", ":", "title:", "titel:", "NEAR", "NEAR/3", "NEAR/0", " ", "\n", "!!", "10:30"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_any_text_parses_or_fails_with_a_position_inside_it(text: str) -> None:
    position: int | None = 0
    try:
        parse_query(text)
    except QueryError as exc:
        position = exc.position
    assert position is not None
    assert 0 <= position <= len(text)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    deep = MAX_DEPTH - 1  # the top level counts as one
    assert parse_query("(" * deep + "a" + ")" * deep) == t("a")
    with pytest.raises(QueryError, match="nested more than 100 levels") as info:
        parse_query("(" * 5000 + "a" + ")" * 5000)
    assert info.value.position == MAX_DEPTH
    with pytest.raises(QueryError, match="nested"):
        parse_query("NOT " * 5000 + "a")
