"""The prefilter: trigger keys per rule, and candidate lookup per item."""

from __future__ import annotations

import dataclasses

from monitor.match.evaluate import Fields
from monitor.match.index import Index, required_literals, triggers
from monitor.match.query import And, Near, Not, Or, Term, regex, structured, term
from monitor.models import Item, Rule

F = ("title", "summary")


def fields(title: str, summary: str = "") -> Fields:
    return Fields.of(Item(feed="f", key="k", title=title, link="", summary=summary))


def test_term_triggers_on_its_word_or_best_word_pair_in_each_field() -> None:
    assert triggers(term("sanctions"), F) == {
        ("w", "title", False, None, "sanctions"),
        ("w", "summary", False, None, "sanctions"),
    }
    assert triggers(term("peace of mind"), ("title",)) == {("b", "title", False, None, "peace of")}
    assert triggers(term("dead en*"), ("title",)) == {("w", "title", False, None, "dead")}
    assert triggers(term("sanction*"), ("title",)) == {("p", "title", False, None, "sanction")}
    scoped = dataclasses.replace(term("x"), fields=("summary",))
    assert triggers(scoped, F) == {("w", "summary", False, None, "x")}


def test_and_picks_one_child_or_unions_not_has_none() -> None:
    assert triggers(And((term("a*"), term("geneva"))), ("title",)) == {
        ("w", "title", False, None, "geneva")
    }
    assert triggers(Or((term("a"), term("b"))), ("title",)) == {
        ("w", "title", False, None, "a"),
        ("w", "title", False, None, "b"),
    }
    assert triggers(Not(term("a")), F) is None
    assert triggers(Or((term("a"), Not(term("b")))), F) is None
    assert triggers(And((term("a"), Not(term("b")))), ("title",)) == {
        ("w", "title", False, None, "a")
    }
    near = Near("n", (term("a"), term("longer")), 3)
    assert triggers(near, ("title",)) == {("w", "title", False, None, "longer")}


def test_regex_required_literals() -> None:
    assert required_literals(regex(r"\bsanction(s|ed)?\b").pattern) == ["sanction"]
    # the stdlib parser factors out the common prefix "co": still sound
    assert required_literals(regex(r"(covid|corona)-?19").pattern) == ["vid", "rona"]
    assert required_literals(regex(r"\b[A-Z]{2,5}-\d+\b").pattern) is None
    assert required_literals(regex(r"(?:foo){e<=1}").pattern) is None  # fuzzy: `regex` only
    assert required_literals(regex(r"[[:alpha:]]+xyz").pattern) is None
    assert required_literals(regex(r"(?:abc)?x").pattern) is None


def test_candidates_cover_words_prefixes_literals_and_always_rules() -> None:
    rules = [
        Rule("word", structured(any_=["geneva"])),
        Rule("prefix", structured(any_=["sanction*"])),
        Rule("regex", structured(regexes=[r"covid-?19"])),
        Rule("not", structured(none=["sport"])),
        Rule("title-only", structured(any_=["talks"]), fields=("title",)),
        Rule("case", Term("US", ("US",), case_sensitive=True)),
        Rule("phrase", structured(any_=['"dead end"'])),
    ]
    index = Index(rules)
    assert index.always == (3,)
    found = index.candidates(fields("Talks", "in geneva on sanctions and COVID19 for us"))
    assert [rules[i].name for i in found] == ["word", "prefix", "regex", "not", "title-only"]
    assert index.candidates(fields("x", "talks by the US")) == [3, 5]
    assert index.candidates(fields("end dead", "dead-end")) == [3, 6]


def test_pairs_do_not_span_fields_and_literals_share_one_scan() -> None:
    rules = [
        Rule("phrase", structured(any_=['"dead end"'])),
        Rule("covid", structured(regexes=[r"covid-?19"])),
        Rule("sanction", structured(regexes=[r"\bsanction(s|ed)?\b"])),
        Rule("phrase-title", structured(any_=['"peace talks"']), fields=("title",)),
    ]
    index = Index(rules)
    assert index.candidates(fields("a dead", "end b")) == []
    assert index.candidates(fields("peace", "talks")) == []
    assert index.candidates(fields("x", "peace talks")) == []
    assert index.candidates(fields("Peace talks", "dead end")) == [0, 3]
    assert index.candidates(fields("COVID19", "sanctioned")) == [1, 2]
    assert index.candidates(fields("x", "sanction covid-19 sanction")) == [1, 2]


def test_prefixes_match_word_starts_only_and_short_literals_guard_searches() -> None:
    rules = [
        Rule("prefix", structured(any_=["sanction*"])),
        Rule("code", structured(regexes=[r"\b[A-Z]{3}-\d{3}\b"])),
        Rule("anchored", structured(regexes=[r"^\d+$"])),
    ]
    index = Index(rules)
    assert required_literals(rules[1].query.pattern, 1) == ["-"]  # type: ignore[attr-defined]
    assert index.candidates(fields("sanctioned", "")) == [0]
    assert index.candidates(fields("desanction", "unsanctioned")) == []
    # no "-" in either field: the code regex is not even searched
    assert index.candidates(fields("ABC 123", "x")) == []
    assert index.candidates(fields("x", "flight ABC-123 landed")) == [1]
    assert index.candidates(fields("x", "2026")) == [2]  # no literal at all: always searched
