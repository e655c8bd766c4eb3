"""Rules against items: word boundaries, phrases, prefixes, regexes, scope, explanations."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from functools import partial

import pytest

from monitor.match.matcher import Matcher, hit_spans, snippet
from monitor.match.query import And, Near, Node, Not, Or, Term, TermError, regex, structured, term
from monitor.match.stem import stem_word
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


# --- the query tree: Near, scopes, case, stems, explanations ------------------------------------


def node_rule(query: Node, name: str = "r", **kw: object) -> Rule:
    return Rule(name=name, query=query, notify=("desk",), **kw)  # type: ignore[arg-type]


def word(text: str, **kw: object) -> Term:
    return dataclasses.replace(term(text), **kw)  # type: ignore[arg-type]


def test_cjk_term_matches_inside_a_longer_run() -> None:
    assert matched(rule(any_=("東京",)), item("東京都で新しい制裁"))
    assert not matched(rule(any_=("東京",)), item("京東"))


def test_near_any_order_within_distance_in_one_field() -> None:
    near = Near("NEAR/2(talks, geneva)", (term("talks"), term("geneva")), 2)
    r = node_rule(near)
    assert matched(r, item("Geneva hosts talks"))
    assert matched(r, item("talks in Geneva"))
    assert not matched(r, item("talks were held far away in Geneva"))
    assert not matched(r, item("talks", "geneva"))  # one field, not across fields


def test_near_chooses_occurrences_not_just_the_first() -> None:
    near = Near("n", (term("talks"), term("geneva")), 1)
    assert matched(node_rule(near), item("talks and more and then talks geneva"))


def test_field_scope_on_a_term_overrides_the_rules_fields() -> None:
    r = node_rule(word("sanctions", fields=("summary",)), fields=("title",))
    assert matched(r, item("Markets", "New sanctions"))
    assert not matched(r, item("sanctions", "Markets"))
    [m] = Matcher((r,)).match(WORLD, item("Markets", "New sanctions"))
    assert m.fields == ("summary",)


def test_regex_scope() -> None:
    scoped = dataclasses.replace(regex(r"\d+ dead"), fields=("summary",))
    assert matched(node_rule(scoped), item("x", "12 dead"))
    assert not matched(node_rule(scoped), item("12 dead", "x"))


def test_case_sensitive_term_compares_raw_words() -> None:
    r = node_rule(Term("US", ("US",), case_sensitive=True))
    assert matched(r, item("US sanctions"))
    assert not matched(r, item("let us talk"))


def test_stemmed_term_matches_inflections() -> None:
    stem = partial(stem_word, "en")
    r = node_rule(Term("sanction", (stem("sanction"),), stem="en"))
    for title in ("New sanctions", "Banks sanctioned", "A sanction"):
        assert matched(r, item(title))
    assert not matched(r, item("Sanctuary"))


def test_stemmed_phrase_and_prefix() -> None:
    stem = partial(stem_word, "en")
    r = node_rule(Term("peace talk*", (stem("peace"), "talk"), prefix=True, stem="en"))
    assert matched(r, item("Peaceful talks"))  # "peaceful" does not stem to "peac"
    assert not matched(r, item("talks"))


def test_pure_not_and_regex_only_rules_are_always_evaluated() -> None:
    rules = (node_rule(Not(term("sport")), "not"), rule("rx", regexes=(r"\d{4}",)))
    found = Matcher(rules).match(WORLD, item("Elections 2026"))
    assert [m.rule for m in found] == ["not", "rx"]
    [m, _] = found
    assert m.terms == ()
    assert m.snippet == "Elections 2026"


def test_snippet_is_around_the_first_hit_preferring_the_title() -> None:
    long = " ".join(["filler"] * 40) + " sanctions announced " + " ".join(["more"] * 40)
    [m] = Matcher((rule(any_=("sanctions",)),)).match(WORLD, item("Markets", long))
    assert "sanctions announced" in m.snippet
    assert m.snippet.startswith("…")
    assert m.snippet.endswith("…")
    assert len(m.snippet) <= 162
    assert all(w in ("filler", "sanctions", "announced", "more") for w in m.snippet[1:-1].split())
    [m] = Matcher((rule(any_=("sanctions",)),)).match(WORLD, item("Sanctions!", long))
    assert m.snippet == "Sanctions!"


def test_snippet_cut_keeps_whole_words() -> None:
    text = "alpha " * 10 + "target" + " omega" * 40
    cut = snippet(text, text.index("target"), text.index("target") + 6)
    assert "target" in cut
    assert all(w in ("alpha", "target", "omega") for w in cut.strip("…").split())


def test_hit_spans_for_highlighting() -> None:
    query = And((term("talks"), Or((term("geneva"), term("sanction*"))), Not(term("sport"))))
    text = "Talks in Geneva; sanctions bite; sport talks"
    spans = hit_spans(query, text)
    assert [text[a:b] for a, b in spans] == ["Talks", "Geneva", "sanctions", "talks"]
    assert hit_spans(regex(r"\d+"), "a 12 b 3") == [(2, 4), (7, 8)]


def test_large_rule_set_evaluates_only_candidates() -> None:
    rules = [rule(f"r{i}", any_=(f"w{i}", f"k{i}")) for i in range(10_000)]
    rules.append(node_rule(Not(term("sport")), "always"))
    matcher = Matcher(rules)
    it = item("news about w17 and k4242")
    assert [r.name for r in matcher.candidates(it)] == ["r17", "r4242", "always"]
    assert [m.rule for m in matcher.match(WORLD, it)] == ["r17", "r4242", "always"]


def _query_rule(query: str, **options: object) -> Rule:
    from monitor.match.parse import parse_query

    return node_rule(parse_query(query, **options))  # type: ignore[arg-type]


def test_regex_literal_prefilter_sees_dotted_capital_i() -> None:
    # "İSTANBUL".casefold() keeps a combining dot; the prefilter must still offer the rule.
    assert matched(_query_rule("/istanbul/"), item("İSTANBUL talks"))
    assert matched(_query_rule(r"/\bistanbul/"), item("İstanbul talks"))


def test_russian_stemming_sees_the_letters_the_stemmer_needs() -> None:
    # Stemming happens before accent folding: "й" must reach the Russian stemmer.
    assert matched(_query_rule("Украина", stem="ru"), item("Переговоры с Украиной"))
    assert matched(_query_rule("война", stem="ru"), item("Конфликт с войной"))


def test_compatibility_characters_never_put_spaces_inside_tokens() -> None:
    # U+FC5E decomposes to a space and marks; a phrase over such text must compile and run.
    rules = (_query_rule('"foo abc\ufc5edef"'),)
    Matcher(rules).match(WORLD, item("foo abc\ufc5edef"))


def test_a_regex_nested_too_deeply_is_a_term_error() -> None:
    with pytest.raises(TermError, match="nested too deeply"):
        regex("(" * 400 + "a" + ")" * 400)
