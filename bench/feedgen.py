"""Deterministic news feeds for the poll benchmark: RSS 2.0 and Atom, 50 items each.

Feed `n` at generation `g` lists the items with serials `g .. g + items - 1`, newest first, so
moving a feed to the next generation adds exactly one new item (and drops the oldest), the way
a real feed's window slides. An item's text depends only on (feed, serial): an item keeps its
title, summary and date from one generation to the next. Every fifth feed is Atom.

Titles and summaries are drawn from a fixed news vocabulary; about 2% of the titles carry one
of the `HOT` words the bench's rules look for.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape, quoteattr

ITEMS = 50
EPOCH = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)

SUBJECTS = """government president minister police officials regulators investors lawmakers
union workers farmers doctors nurses teachers students scientists researchers prosecutors judge
court senate parliament council mayor governor central-bank airline automaker retailer insurer
chipmaker startup carmaker shipping-group energy-firm utility pension-fund voters residents
protesters rescuers firefighters coastguard army navy diplomats negotiators envoy""".split()  # noqa: SIM905
VERBS = """approves rejects delays unveils announces warns considers backs blocks extends cuts
raises launches suspends expands reviews defends criticises probes settles wins loses signs
proposes scraps confirms denies plans resumes halts drops""".split()  # noqa: SIM905
OBJECTS = """budget plan deal merger tariffs rates bill reform strike talks ceasefire election
results inquiry lawsuit investment subsidies pensions wages prices forecast guidance dividend
buyback contract licence permit vaccine programme rescue aid package emissions target quota
visa rules tax credits ban sanctions inflation figures output report appeal""".split()  # noqa: SIM905
PLACES = """in-Brussels in-Berlin in-Paris in-Madrid in-Rome in-Warsaw in-London in-Dublin
in-Lisbon in-Athens in-Vienna in-Prague in-Tokyo in-Seoul in-Delhi in-Nairobi in-Lagos
in-Cairo in-Ottawa in-Mexico-City in-Brasilia in-Lima in-Canberra in-Jakarta after-vote
after-talks amid-protests amid-uncertainty despite-criticism ahead-of-summit""".split()  # noqa: SIM905
FILLER = """the a new latest second third final key major rare sharp modest surprise record
early late quarterly annual regional national global local cross-border long-awaited
controversial widely-expected""".split()  # noqa: SIM905
SUMMARY_WORDS = """said on Monday Tuesday Wednesday Thursday Friday that it would the plan is
expected to take effect next month according to a statement officials people familiar with the
matter told reporters analysts say move could affect thousands of households businesses and
markets reacted with shares rising falling percent while critics argued the decision was rushed
supporters welcomed it as overdue the measure follows weeks of negotiations and is part of a
wider effort to address rising costs in the sector spokesperson declined to comment further
details are due later this week figures published showed growth slowed in the third quarter
""".split()  # noqa: SIM905
#: Words the bench's rules look for; one of them is in about 2% of the titles.
HOT = ["earthquake", "ceasefire agreement", "antitrust fine", "data breach", "recall"]
SECTIONS = ["world", "business", "politics", "tech", "science", "health", "markets", "europe"]
AUTHORS = ["Ana Ruiz", "Ben Okafor", "Chloe Martin", "Dmitri Ivanov", "Emma Schulz", "Farah Ali"]

POOL = 4096


def _pools() -> tuple[list[str], list[str]]:
    rng = random.Random(2026)
    titles = []
    for n in range(POOL):
        words = [
            rng.choice(FILLER).capitalize(),
            rng.choice(SUBJECTS),
            rng.choice(VERBS),
            rng.choice(FILLER),
            rng.choice(OBJECTS),
            rng.choice(PLACES),
        ]
        if n % 50 == 0:
            words.insert(4, HOT[(n // 50) % len(HOT)])
        titles.append(" ".join(words).replace("-", " "))
    summaries = []
    for _ in range(POOL):
        sentences = []
        for _s in range(rng.randint(2, 4)):
            words = rng.choices(SUMMARY_WORDS, k=rng.randint(10, 22))
            sentences.append(" ".join(words).capitalize() + ".")
        summaries.append(" ".join(sentences))
    return titles, summaries


TITLES, SUMMARIES = _pools()


def _mix(n: int, k: int) -> int:
    # A cheap integer hash, so an item's text is a pure function of (feed, serial).
    h = (n * 0x9E3779B1 + k * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    return h ^ (h >> 12)


def is_atom(n: int) -> bool:
    return n % 5 == 4


def item_id(n: int, k: int) -> str:
    return f"urn:bench:{n}:{k}"


def _item(n: int, k: int) -> tuple[str, str, str, str, datetime, str, str]:
    h = _mix(n, k)
    title = TITLES[h % POOL]
    summary = SUMMARIES[(h >> 12) % POOL]
    section = SECTIONS[h % len(SECTIONS)]
    link = f"https://news{n % 97}.example/{section}/{n}/{k}-{title[:24].lower().replace(' ', '-')}"
    when = EPOCH + timedelta(minutes=17 * k + n % 17)
    return item_id(n, k), title, summary, link, when, section, AUTHORS[(h >> 7) % len(AUTHORS)]


def serials(generation: int, items: int = ITEMS) -> range:
    """The item serials feed shows at `generation`, newest first."""
    return range(generation + items - 1, generation - 1, -1)


def render(n: int, generation: int, items: int = ITEMS) -> bytes:
    """Feed `n` at `generation` as bytes (UTF-8)."""
    entries = [_item(n, k) for k in serials(generation, items)]
    if is_atom(n):
        return _atom(n, entries)
    return _rss(n, entries)


def _rss(n: int, entries: list[tuple[str, str, str, str, datetime, str, str]]) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>'
        f"<title>Daily News {n}</title><link>https://news{n % 97}.example/</link>"
        f"<description>Top stories from desk {n}</description><language>en</language><ttl>15</ttl>"
    ]
    for guid, title, summary, link, when, section, author in entries:
        parts.append(
            f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
            f'<guid isPermaLink="false">{guid}</guid>'
            f"<description>{escape(f'<p>{summary}</p>')}</description>"
            f"<pubDate>{format_datetime(when)}</pubDate>"
            f"<category>{section}</category><dc:creator>{author}</dc:creator></item>"
        )
    parts.append("</channel></rss>\n")
    return "".join(parts).encode()


def _atom(n: int, entries: list[tuple[str, str, str, str, datetime, str, str]]) -> bytes:
    updated = entries[0][4].isoformat().replace("+00:00", "Z") if entries else ""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
        f"<title>Wire {n}</title><id>urn:bench:feed:{n}</id><updated>{updated}</updated>"
        f'<link rel="alternate" href="https://wire{n % 97}.example/"/>'
    ]
    for guid, title, summary, link, when, section, author in entries:
        stamp = when.isoformat().replace("+00:00", "Z")
        parts.append(
            f"<entry><title>{escape(title)}</title><link href={quoteattr(link)}/>"
            f"<id>{guid}</id><updated>{stamp}</updated><published>{stamp}</published>"
            f'<summary type="html">{escape(f"<p>{summary}</p>")}</summary>'
            f'<author><name>{author}</name></author><category term="{section}"/></entry>'
        )
    parts.append("</feed>\n")
    return "".join(parts).encode()
