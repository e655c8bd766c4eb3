"""Leaves with rule options pushed in, flat trees, and the structured form."""

from __future__ import annotations

import pytest

from monitor.match.compile import (
    all_of,
    any_of,
    compile_rule,
    compile_structured,
    make_regex,
    make_term,
    negate,
    options_problem,
    uses_regex,
)
from monitor.match.parse import parse_query
from monitor.match.query import And, Near, Not, Or, Term, TermError, regex, structured, term


def test_plain_terms_fold_case_and_accents() -> None:
    assert make_term("Zürich") == Term("Zürich", ("zurich",))
    assert make_term('"Dead End"') == Term('"Dead End"', ("dead", "end"))
    assert make_term("'dead end'").words == ("dead", "end")
    assert make_term("dead end") == Term("dead end", ("dead", "end"))
    assert make_term("Sanction*") == Term("Sanction*", ("sanction",), prefix=True)


def test_stemming_makes_word_forms_equal() -> None:
    assert make_term("sanction", stem="en").words == ("sanction",)
    assert make_term("sanctioned", stem="en").words == ("sanction",)
    assert make_term("Sanctions", stem="en").words == ("sanction",)
    assert make_term("санкции", stem="ru").words == make_term("санкций", stem="ru").words
    assert make_term("talks", stem="en") == Term("talks", ("talk",), stem="en")


def test_a_prefix_keeps_its_last_word_unstemmed() -> None:
    # "sanctions*" stemmed would become "sanction*" and match more than written.
    assert make_term("sanctions*", stem="en").words == ("sanctions",)
    phrase = make_term('"running sanctions*"', stem="en")
    assert phrase.words == ("run", "sanctions")
    assert phrase.prefix


def test_case_sensitive_keeps_case_and_accents() -> None:
    assert make_term("Zürich AG", case_sensitive=True) == Term(
        "Zürich AG", ("Zürich", "AG"), case_sensitive=True
    )
    assert make_term("Apple*", case_sensitive=True).words == ("Apple",)
    assert make_term("東京", case_sensitive=True).words == ("東", "京")


def test_fields_are_kept() -> None:
    assert make_term("x", fields=("title",)).fields == ("title",)
    assert make_regex("x", fields=("summary",)).fields == ("summary",)


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "term '' contains no word to match", None),
        ("!!", "term '!!' contains no word to match", None),
        ("*", "'*' needs a word before it", 0),
        ("a*b", "'*' is only allowed at the end of a term", 1),
        (' "a* b"', "'*' is only allowed at the end of a term", 3),
        ("a**", "'*' is only allowed at the end of a term", 1),
    ],
)
def test_term_errors(text: str, message: str, position: int | None) -> None:
    with pytest.raises(TermError, match=message) as info:
        make_term(text)
    assert info.value.position == position


def test_options_problems() -> None:
    assert options_problem(False, None) is None
    assert options_problem(False, "en") is None
    assert options_problem(True, None) is None
    assert options_problem(True, "en") == "case_sensitive and stem cannot be combined"
    unknown = options_problem(False, "xx")
    assert unknown is not None
    assert unknown.startswith("unknown stem language 'xx' (known: ar, ca, cs, ")
    with pytest.raises(TermError, match="cannot be combined"):
        make_term("a", case_sensitive=True, stem="en")


def test_regex_case_and_errors() -> None:
    assert make_regex("Abc").pattern.search("ABC")
    assert not make_regex("Abc", case_sensitive=True).pattern.search("ABC")
    with pytest.raises(TermError, match="empty regex"):
        make_regex("")
    with pytest.raises(TermError, match="missing \\)") as info:
        make_regex("x(a")
    assert info.value.position == 1


def test_groups_are_flattened_and_collapsed() -> None:
    a, b, c, d = (make_term(x) for x in "abcd")
    assert all_of([a, And((b, c)), d]) == And((a, b, c, d))
    assert any_of([Or((a, b)), Or((c, d))]) == Or((a, b, c, d))
    assert all_of([a]) == a
    # Only groups of the same kind merge.
    assert all_of([a, Or((b, c))]) == And((a, Or((b, c))))
    assert negate(negate(a)) == a
    assert negate(a) == Not(a)
    with pytest.raises(TermError):
        all_of([])


def test_structured_tree_shape() -> None:
    a, b, c, d = (make_term(x) for x in "abcd")
    assert compile_structured(["a", "b"], ["c"], ["d"]) == And((c, Or((a, b)), Not(d)))
    assert compile_structured(any_=["a"]) == a
    assert compile_structured(none=["a", "b"]) == Not(Or((a, b)))
    with pytest.raises(TermError, match="rule has no terms"):
        compile_structured()


def test_structured_honours_options() -> None:
    node = compile_structured(["Sanctions"], none=["Sport"], stem="en")
    assert node == And((make_term("Sanctions", stem="en"), Not(make_term("Sport", stem="en"))))
    cased = compile_structured(["Apple"], regexes=["Inc"], case_sensitive=True)
    assert isinstance(cased, And)
    first, second = cased.children
    assert first == make_term("Apple", case_sensitive=True)
    assert not second.pattern.search("inc")  # type: ignore[union-attr]


def test_query_module_wrappers_keep_their_signatures() -> None:
    assert term("x*") == make_term("x*")
    assert regex("a", case_sensitive=True).pattern.pattern == "a"
    assert structured(["a"], ["b"]) == compile_structured(["a"], ["b"])


def test_compile_rule_either_form() -> None:
    assert compile_rule("a OR b") == parse_query("a OR b")
    assert compile_rule(any_=["a", "b"]) == parse_query("a OR b")
    assert compile_rule("a", stem="en") == parse_query("a", stem="en")
    with pytest.raises(TermError, match="not both"):
        compile_rule("a", any_=["b"])
    with pytest.raises(TermError, match="cannot be combined"):
        compile_rule("a", case_sensitive=True, stem="en")


def test_uses_regex() -> None:
    assert uses_regex(parse_query("a AND NOT (b OR /c/)"))
    assert uses_regex(parse_query("title:/x/"))
    assert not uses_regex(parse_query('a AND NOT (b OR "c d") NEAR(x, y)'))
    assert not uses_regex(Near("NEAR(a, b)", (make_term("a"), make_term("b")), 3))
    assert uses_regex(compile_structured(regexes=["x"]))
