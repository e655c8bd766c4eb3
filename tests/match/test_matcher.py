"""Rules against items: word boundaries, phrases, prefixes, regexes, scope, explanations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.match.matcher import Matcher
from monitor.match.query import TermError, regex, structured, term
from monitor.models import FeedScope, FeedSpec, Item, Rule

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
WORLD = FeedSpec(
    name="World", url="https://example.org/world.xml", interval=NOW - NOW, tags=frozenset({"world"})
)
SPORT = FeedSpec(
    name="Sport", url="https://example.org/sport.xml", interval=NOW - NOW, tags=frozenset({"sport"})
)


def item(title: str, summary: str = "", **kw: object) -> Item:
    return Item(
        feed="World", key=f"id:{title}", title=title, link="", summary=summary, seen_at=NOW, **kw
    )  # type: ignore[arg-type]


def rule(
    name: str = "r",
    *,
    any_: tuple[str, ...] = (),
    all_: tuple[str, ...] = (),
    none: tuple[str, ...] = (),
    regexes: tuple[str, ...] = (),
    **kw: object,
) -> Rule:
    return Rule(name=name, query=structured(any_, all_, none, regexes), notify=("desk",), **kw)  # type: ignore[arg-type]


def matched(r: Rule, it: Item, feed: FeedSpec = WORLD) -> bool:
    return bool(Matcher((r,)).match(feed, it))


def test_keyword_matches_case_insensitively_on_word_boundaries() -> None:
    r = rule(any_=("talks",))
    assert matched(r, item("Talks resume in Geneva"))
    assert matched(r, item("Geneva TALKS."))
    assert not matched(r, item("Heron stalks its prey"))
    assert not matched(r, item("talkshow tonight"))


def test_phrase_matches_consecutive_words_only() -> None:
    r = rule(any_=('"dead end"',))
    assert matched(r, item("Negotiations at a dead-end, says envoy"))
    assert matched(r, item("Talks hit 'Dead End'"))
    assert not matched(r, item("The end is not dead"))


def test_unquoted_multiword_term_is_a_phrase() -> None:
    assert matched(rule(any_=("security guarantees",)), item("Demands for security guarantees"))
    assert not matched(rule(any_=("security guarantees",)), item("guarantees of security"))


def test_prefix_term() -> None:
    r = rule(any_=("sanction*",))
    assert matched(r, item("New sanctions announced"))
    assert matched(r, item("Banks sanctioned"))
    assert not matched(r, item("Insanctioned words"))


def test_all_any_none_combine() -> None:
    r = rule(all_=("talks",), any_=("stalled", '"dead end"'), none=("football",))
    assert matched(r, item("Talks stalled over border"))
    assert not matched(r, item("Talks continue"))
    assert not matched(r, item("Football talks stalled"))


def test_only_none_matches_everything_else() -> None:
    r = rule(none=("sport",))
    assert matched(r, item("Elections today"))
    assert not matched(r, item("Sport results"))


def test_regex_term_searches_plain_text() -> None:
    r = rule(regexes=(r"\b[A-Z]{2,5}-\d+\b",))
    assert matched(r, item("Flight su-100 grounded"))  # case-insensitive by default
    assert not matched(r, item("Nothing to see"))


def test_fields_restrict_where_terms_are_looked_for() -> None:
    r = rule(any_=("sanctions",), fields=("title",))
    assert not matched(r, item("Markets today", "New sanctions on oil"))
    r2 = rule(any_=("sanctions",))
    assert matched(r2, item("Markets today", "New sanctions on oil"))
    r3 = rule(any_=("economy",), fields=("tags",))
    assert matched(r3, item("Markets", tags=("Economy", "Europe")))


def test_unicode_and_accents_fold() -> None:
    assert matched(rule(any_=("санкции",)), item("Новые САНКЦИИ против банков"))
    assert matched(rule(any_=("cafe",)), item("Le Café de Flore"))
    assert matched(rule(any_=("Zürich",)), item("zurich talks"))
    assert matched(rule(any_=("東京",)), item("東京 news"))


def test_feed_scope_by_name_and_tag() -> None:
    by_tag = rule(any_=("goal",), feeds=FeedScope(tags=frozenset({"sport"})))
    assert matched(by_tag, item("A late goal"), SPORT)
    assert not matched(by_tag, item("A late goal"), WORLD)
    by_name = rule(any_=("goal",), feeds=FeedScope(names=frozenset({"World"})))
    assert matched(by_name, item("A late goal"), WORLD)
    assert not matched(by_name, item("A late goal"), SPORT)


def test_match_explains_terms_in_rule_order_and_fields() -> None:
    r = rule(all_=("talks",), any_=("geneva", "stalled", "vienna"), none=("sport",))
    [m] = Matcher((r,)).match(WORLD, item("Geneva talks stalled", "Talks in Vienna"))
    assert m.terms == ("talks", "geneva", "stalled", "vienna")
    assert m.fields == ("title", "summary")
    assert m.channels == ("desk",)


def test_terms_under_not_are_not_reported() -> None:
    r = rule(any_=("talks",), none=("football",))
    [m] = Matcher((r,)).match(WORLD, item("talks"))
    assert m.terms == ("talks",)


def test_several_rules_each_match() -> None:
    rules = (rule("a", any_=("talks",)), rule("b", any_=("geneva",)), rule("c", any_=("x",)))
    found = Matcher(rules).match(WORLD, item("Geneva talks"))
    assert [m.rule for m in found] == ["a", "b"]


def test_empty_fields_and_punctuation_do_not_crash() -> None:
    r = rule(any_=("talks",))
    assert not matched(r, item(""))
    assert not matched(r, item("!!! ... ???"))


def test_bad_terms_are_rejected_with_position() -> None:
    with pytest.raises(TermError, match="no word"):
        term('"  "')
    with pytest.raises(TermError) as info:
        regex("(a+")
    assert info.value.position == 0
    with pytest.raises(TermError, match="no terms"):
        structured()


def test_catastrophic_regex_is_bounded_and_counts_as_no_match() -> None:
    r = rule(regexes=(r"(a|aa)+$",), fields=("title", "summary"))
    hostile = "a" * 40 + "!"
    assert not matched(r, item(hostile, hostile))  # returns (after the per-search timeout)
    assert matched(rule(any_=("b",), regexes=(r"(a|aa)+$",)), item("b aa"))
