"""The engine (prefilter + evaluation) agrees with the reference evaluator on generated rules."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.match.matcher import Matcher
from monitor.match.query import And, Near, Node, Not, Or, Regex, Term, regex
from monitor.match.stem import stem_words
from monitor.match.text import raw_words, words
from monitor.models import FeedSpec, Item, Rule
from tests.match.reference import matching, positive_hits

VOCAB = [
    "talks", "Talks", "geneva", "Genève", "sanction", "sanctions", "sanctioned", "peace",
    "dead", "end", "café", "cafe", "CAFE", "санкции", "Санкции", "банк", "東京", "都",
    "Ωμέγα", "the", "of", "a", "Zürich", "ZURICH", "running", "runs",
]  # fmt: skip
PUNCT = [" ", " ", " ", ", ", ". ", "-", " — ", "'", "“", "”", "!", " (", ") "]
PATTERNS = [r"\bsanction\w*", r"talks?\b", r"end$", r"\d+", r"gen[eè]va", r"(?i)PEACE|café"]
FIELD_SETS = [("title", "summary"), ("title",), ("summary",)]
FEED = FeedSpec(name="f", url="https://example.org/f", interval=__import__("datetime").timedelta(1))


@st.composite
def terms(draw: st.DrawFn) -> Term:
    written = " ".join(draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=3)))
    cs = draw(st.booleans())
    stem = draw(st.sampled_from([None, None, "en", "ru"]))
    found = list(raw_words(written) if cs else words(written))
    prefix = draw(st.booleans())
    if prefix:
        cut = draw(st.integers(1, len(found[-1])))
        found[-1] = found[-1][:cut]
    if stem:
        stems = stem_words(stem, raw_words(written))
        found = stems[:-1] + ([found[-1]] if prefix else [stems[-1]])
    scope = draw(st.sampled_from([None, None, None, ("title",), ("summary",)]))
    return Term(written, tuple(found), prefix, scope, cs, stem)


def nears() -> st.SearchStrategy[Near]:
    return st.builds(
        lambda ts, d, f: Near(f"NEAR/{d}({', '.join(t.text for t in ts)})", tuple(ts), d, f),
        st.lists(
            terms().map(lambda t: dataclasses.replace(t, fields=None)), min_size=2, max_size=3
        ),
        st.integers(0, 4),
        st.sampled_from([None, None, ("title",)]),
    )


def regexes() -> st.SearchStrategy[Regex]:
    return st.builds(
        lambda p, cs, f: dataclasses.replace(regex(p, case_sensitive=cs), fields=f),
        st.sampled_from(PATTERNS),
        st.booleans(),
        st.sampled_from([None, ("summary",)]),
    )


leaves = st.one_of(terms(), terms(), terms(), nears(), regexes())
trees: st.SearchStrategy[Node] = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda c: And(tuple(c))),
        st.lists(kids, min_size=1, max_size=3).map(lambda c: Or(tuple(c))),
        kids.map(Not),
    ),
    max_leaves=6,
)


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(VOCAB), st.sampled_from(PUNCT)), max_size=8))
    text = "".join(w + p for w, p in parts)
    shape = draw(st.sampled_from([str, str.upper, str.title, str.lower]))
    return shape(text) + draw(st.sampled_from(["", "", " 42", "!"]))


@st.composite
def rule_sets(draw: st.DrawFn) -> list[Rule]:
    queries = draw(st.lists(trees, min_size=1, max_size=8))
    return [
        Rule(name=f"r{i}", query=q, fields=draw(st.sampled_from(FIELD_SETS)))
        for i, q in enumerate(queries)
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(), title=texts(), summary=texts())
def test_engine_agrees_with_reference(rules: list[Rule], title: str, summary: str) -> None:
    item = Item(feed="f", key="k", title=title, link="", summary=summary)
    found = Matcher(rules).match(FEED, item)
    assert [m.rule for m in found] == matching(rules, item)
    by_name = {r.name: r for r in rules}
    for m in found:
        rule = by_name[m.rule]
        assert set(m.terms) <= positive_hits(rule.query, item, rule.fields)
        assert m.snippet or not (title.strip() or summary.strip())


SMALL = ["talks", "geneva", "peace", "end"]


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(
        st.lists(st.sampled_from(SMALL), min_size=1, max_size=2), min_size=2, max_size=3
    ),
    distance=st.integers(0, 3),
    prefix=st.booleans(),
    title=st.lists(st.sampled_from([*SMALL, "x", "y"]), max_size=10).map(" ".join),
)
def test_near_agrees_with_reference(
    picks: list[list[str]], distance: int, prefix: bool, title: str
) -> None:
    near = Near(
        "near",
        tuple(Term(" ".join(p), tuple(p), prefix and len(p) == 1) for p in picks),
        distance,
    )
    rule = Rule(name="n", query=near)
    item = Item(feed="f", key="k", title=title, link="")
    assert [m.rule for m in Matcher([rule]).match(FEED, item)] == matching([rule], item)
