"""Matching benchmark: the engine against a naive per-rule regex loop, same items, same run.

Generates news-like items (title + summary drawn from a Zipf-distributed vocabulary: common
English words plus a long tail of names, fixed seed) and rules of realistic shape: mostly single
keywords and 2-3 word phrases from the tail, ~15% boolean (all/any/none), ~1% regex. For 1,000
and 10,000 rules it prints, on one core:

- engine: items/s of `Matcher.match_all`, compile time, compiled size (tracemalloc);
- naive: every rule as its own case-insensitive word-boundary `re` regex over title+summary,
  tried in turn on every item (far fewer items: it is slow), and the engine/naive ratio;
- aho: a bare pyahocorasick scan of the same keywords over the lowercased text (if installed).

Each timing is the best of --repeat runs (these machines are noisy; the best run is the one least
disturbed by other load), the same for the engine and the baseline.

    python bench/match.py [--items 5000] [--naive-items 50] [--rules 1000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import re
import string
import sys
import time
import tracemalloc
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.match.matcher import Matcher  # noqa: E402
from monitor.match.query import structured  # noqa: E402
from monitor.models import FeedSpec, Item, Rule  # noqa: E402

#: Distinct rarer words (names, places, topic words) after the common ones.
TAIL = 100_000
COMMON = """the of to and a in is for on that with as by at from it be was are has have said
will after over new more than us its his their but not up about who into one two year years
government president minister police people says report week officials talks war state
country first could would deal amid against last world court city election security new
market economy prices bank oil gas energy trade workers strike protest attack killed forces
military troops border peace ceasefire sanctions climate storm flood fire health hospital
vaccine school students company shares profit billion million deal talks vote party leader
parliament law rules tax budget inflation rates growth jobs record crisis plan support aid
""".split()  # noqa: SIM905
FEED = FeedSpec(
    name="bench", url="https://example.org/", interval=__import__("datetime").timedelta(1)
)


def tail_words(rng: random.Random, n: int) -> list[str]:
    found: set[str] = set()
    while len(found) < n:
        found.add("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 10))))
    return sorted(found)


class Vocab:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = COMMON + tail_words(rng, TAIL)
        self.cumulative = list(accumulate(1 / (rank + 1) for rank in range(len(self.words))))

    def sample(self, k: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cumulative, k=k)

    def rare(self) -> str:
        """A rule keyword: names and topic words, from anywhere in the long tail."""
        return self.rng.choice(self.words[len(COMMON) :])


def make_items(vocab: Vocab, n: int) -> list[Item]:
    items = []
    for i in range(n):
        title = " ".join(vocab.sample(vocab.rng.randint(6, 12))).capitalize()
        summary = ". ".join(
            " ".join(vocab.sample(vocab.rng.randint(8, 14))).capitalize() for _ in range(2)
        )
        items.append(Item(feed="bench", key=f"k{i}", title=title, link="", summary=summary + "."))
    return items


def make_rules(vocab: Vocab, n: int) -> list[Rule]:
    rng = vocab.rng
    rules = []
    for i in range(n):
        shape = rng.random()
        if shape < 0.01:
            query = structured(regexes=[rng.choice([rf"\b{vocab.rare()}(s|ed)?\b",
                                                    rf"{vocab.rare()}-?\d+",
                                                    r"\b[A-Z]{3}-\d{3}\b"])])  # fmt: skip
        elif shape < 0.16:
            query = structured(
                all_=[vocab.rare()], any_=[vocab.rare(), vocab.rare()], none=[vocab.rare()]
            )
        elif shape < 0.45:
            query = structured(any_=[" ".join([vocab.rare(), *vocab.sample(rng.randint(1, 2))])])
        else:
            query = structured(any_=[vocab.rare() + ("*" if rng.random() < 0.05 else "")])
        rules.append(Rule(name=f"r{i}", query=query))
    return rules


def naive_patterns(rules: list[Rule]) -> list[re.Pattern[str]]:
    """One case-insensitive word-boundary regex per rule (its terms as alternatives; regex
    terms as written, the others escaped)."""
    from monitor.match.query import Regex, terms_of

    def regex_texts(node: object) -> set[str]:
        if isinstance(node, Regex):
            return {node.text}
        children = getattr(node, "children", ()) or [getattr(node, "child", None)]
        return {t for child in children if child is not None for t in regex_texts(child)}

    found = []
    for rule in rules:
        raw = regex_texts(rule.query)
        parts = [t if t in raw else re.escape(t.rstrip("*")) for t in terms_of(rule.query)]
        found.append(re.compile(r"\b(?:" + "|".join(parts) + r")\b", re.IGNORECASE))
    return found


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds else float("inf")


def best(run: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` timed runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(
    n_rules: int, items: list[Item], naive_items: int, vocab: Vocab, repeat: int
) -> list[str]:
    rules = make_rules(vocab, n_rules)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    matcher = Matcher(rules)
    compile_s = time.perf_counter() - t0
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    matcher.match_all(FEED, items[:200])  # warm caches
    matched = matcher.match_all(FEED, items)
    engine = rate(len(items), best(lambda: matcher.match_all(FEED, items), repeat))
    patterns = naive_patterns(rules)
    sample = items[:naive_items]

    def naive_loop() -> None:
        for item in sample:
            text = item.title + "\n" + item.summary
            for pattern in patterns:
                pattern.search(text)

    naive = rate(len(sample), best(naive_loop, repeat))
    aho = "-"
    try:
        import ahocorasick

        automaton = ahocorasick.Automaton()
        for i, rule in enumerate(rules):
            for term in __import__("monitor.match.query").match.query.terms_of(rule.query):
                automaton.add_word(term.lower().rstrip("*"), i)
        automaton.make_automaton()

        def scan() -> None:
            for item in items:
                list(automaton.iter((item.title + "\n" + item.summary).lower()))

        aho = f"{rate(len(items), best(scan, repeat)):,.0f}"
    except ImportError:
        pass
    share = len(matched) / len(items)
    return [f"{n_rules:,}", f"{engine:,.0f}", f"{naive:,.1f}", f"{engine / naive:,.0f}x", aho,
            f"{compile_s:.2f}", f"{size / 2**20:.1f}", f"{share:.1%}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--naive-items", type=int, default=50)
    parser.add_argument("--rules", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts")
    args = parser.parse_args()
    vocab = Vocab(random.Random(7))
    items = make_items(vocab, args.items)
    head = ["rules", "engine it/s", "naive it/s", "ratio", "aho scan it/s", "compile s",
            "index MB", "items matched"]  # fmt: skip
    rows = [head] + [bench(n, items, args.naive_items, vocab, args.repeat) for n in args.rules]
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
