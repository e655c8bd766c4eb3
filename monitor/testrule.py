"""`monitor test-rule`: does a rule or query match this text, why, and what would it have
matched over the stored items (a backtest)?"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from monitor import logs
from monitor.config import find_config, load_config, parse_duration
from monitor.errors import ConfigError, MonitorError
from monitor.match.compile import options_problem
from monitor.match.matcher import Matcher
from monitor.match.parse import parse_query
from monitor.match.query import And, Near, Node, Not, Or, Regex, Term, TermError, error_with_caret
from monitor.models import DEFAULT_FIELDS, FIELDS, Config, FeedScope, FeedSpec, Item, Match, Rule
from monitor.sources.text import CONTENT_LIMIT, SUMMARY_LIMIT, TITLE_LIMIT, clean_text
from monitor.store import open_store

#: Exit codes: match, no match (as grep does), invalid input.
MATCH, NO_MATCH, INVALID = 0, 1, 2
#: Exit code when the state store cannot be read (distinct from "no match").
FAILED = 3

_ANY_FEED = FeedSpec(name="(test)", url="https://example.invalid/", interval=timedelta(hours=1))


def query_rule(
    query: str, *, case_sensitive: bool, stem: str | None, fields: Sequence[str] | None
) -> Rule:
    """An ad-hoc rule from `--query` (ValueError for bad options, TermError for a bad query)."""
    problem = options_problem(case_sensitive, stem)
    if problem:
        raise ValueError(problem)
    unknown = [f for f in fields or () if f not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    node = parse_query(query, case_sensitive=case_sensitive, stem=stem)
    return Rule(name="(query)", query=node, fields=tuple(fields or DEFAULT_FIELDS))


def test_item(rule: Rule, title: str, summary: str, content: str, out: TextIO) -> int:
    """Evaluate `rule` on one made-up item, print the verdict and why; return the exit code."""
    # The same plain-text reduction feed items get: HTML stripped, entities decoded.
    item = Item(feed=_ANY_FEED.name, key="test", title=clean_text(title, TITLE_LIMIT), link="",
                summary=clean_text(summary, SUMMARY_LIMIT),
                content=clean_text(content, CONTENT_LIMIT), seen_at=datetime.now(UTC))  # fmt: skip
    unscoped = dataclasses.replace(rule, feeds=FeedScope())
    matches = Matcher((unscoped,)).match(_ANY_FEED, item)
    if matches:
        print("match: yes", file=out)
        _print_match(matches[0], out)
        return MATCH
    found, missing = _leaf_report(unscoped, item)
    print("match: no", file=out)
    print(f"  rule:      {rule.name}", file=out)
    print(f"  found:     {', '.join(found) or '-'}", file=out)
    print(f"  not found: {', '.join(missing) or '-'}", file=out)
    return NO_MATCH


def _print_match(match: Match, out: TextIO) -> None:
    print(f"  rule:      {match.rule}", file=out)
    print(f"  terms:     {', '.join(match.terms) or '-'}", file=out)
    print(f"  fields:    {', '.join(match.fields) or '-'}", file=out)
    if match.snippet:
        print(f"  snippet:   {match.snippet}", file=out)


def _leaf_report(rule: Rule, item: Item) -> tuple[list[str], list[str]]:
    """Each term of the rule on its own: present in the item or not (explains a no-match)."""
    found: list[str] = []
    missing: list[str] = []
    for leaf in leaves(rule.query):
        probe = dataclasses.replace(rule, name=leaf.text, query=leaf)
        hit = Matcher((probe,)).match(_ANY_FEED, item)
        (found if hit else missing).append(leaf.text)
    return found, missing


def backtest(config: Config, rule: Rule, since: timedelta, out: TextIO, limit: int) -> int:
    """List the stored items of the last `since` that `rule` matches; return the exit code."""
    items = asyncio.run(_recent(config, datetime.now(UTC) - since))
    feeds = {f.name: f for f in config.feeds}
    matcher = Matcher((rule,))
    hits: list[tuple[Item, Match]] = []
    for item in items:
        feed = feeds.get(item.feed) or dataclasses.replace(_ANY_FEED, name=item.feed)
        for match in matcher.match(feed, item):
            hits.append((item, match))
    for item, match in hits[:limit]:
        when = (item.published or item.seen_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M")
        print(f"{when}  {item.feed}: {item.title}", file=out)
        if item.link:
            print(f"    {item.link}", file=out)
        print(f"    terms: {', '.join(match.terms)}", file=out)
    more = f" (first {limit} shown)" if len(hits) > limit else ""
    print(f"{len(hits)} of {len(items)} stored items matched {rule.name}{more}", file=out)
    return MATCH if hits else NO_MATCH


async def _recent(config: Config, since: datetime) -> list[Item]:
    async with open_store(config.state, read_only=True) as store:
        return await store.recent_items(since)


def leaves(node: Node) -> list[Term | Near | Regex]:
    """The terms, proximities and patterns of a query, in the order written."""
    if isinstance(node, Not):
        return leaves(node.child)
    if isinstance(node, And | Or):
        return [leaf for child in node.children for leaf in leaves(child)]
    return [node]


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `test-rule` subcommand's arguments."""
    test = commands.add_parser(
        "test-rule",
        parents=[common],
        help="test a rule or query on text, or backtest it",
        description="Does a rule (--rule, from the config) or a query (--query) match the given "
        "text, and why? Exit 0 on match, 1 on no match, 2 on invalid input. With --since, replay "
        "it over the items stored in that period instead (a backtest).",
    )
    which = test.add_mutually_exclusive_group(required=True)
    which.add_argument("--rule", metavar="NAME", help="a rule from the config")
    which.add_argument("--query", metavar="Q", help="a query, e.g. 'sanction* AND russia'")
    test.add_argument("--case-sensitive", action="store_true", help="(with --query)")
    test.add_argument("--stem", metavar="LANG", help="stemming language, e.g. en (with --query)")
    test.add_argument("--fields", metavar="F,F", help="fields to look in (with --query)")
    test.add_argument("--title", default="", help="the item's title")
    test.add_argument("--summary", default="", help="the item's summary")
    test.add_argument("--content", default="", help="the item's content")
    test.add_argument("--since", metavar="DURATION", help="backtest over stored items, e.g. 7d")
    test.add_argument(
        "--limit", type=_positive, default=50, help="matches listed in a backtest (default 50)"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(args: argparse.Namespace) -> int:
    """Run `monitor test-rule`; returns the exit code."""
    try:
        return _main(args)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
    except TermError as exc:
        print(f"invalid query: {error_with_caret(exc, args.query or '')}", file=sys.stderr)
    except (KeyError, ValueError) as exc:
        print(f"invalid input: {exc.args[0] if exc.args else exc}", file=sys.stderr)
    except MonitorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    return INVALID


def _main(args: argparse.Namespace) -> int:
    if args.rule and (args.case_sensitive or args.stem or args.fields):
        raise ValueError(
            "--case-sensitive, --stem and --fields go with --query; a --rule has its own"
        )
    if args.since and (args.title or args.summary or args.content):
        raise ValueError("--since replays stored items: give either --since or --title/--summary")
    config = None
    if args.rule or args.since or args.config:
        config = load_config(find_config(args.config))
        for secret in config.secrets:
            logs.register_secret(secret)
    if args.query is not None:
        fields = [f.strip() for f in args.fields.split(",")] if args.fields else None
        rule = query_rule(
            args.query, case_sensitive=args.case_sensitive, stem=args.stem, fields=fields
        )
    else:
        assert config is not None
        rule = _configured_rule(config, args.rule)
    if args.since:
        assert config is not None
        return backtest(config, rule, parse_duration(args.since), sys.stdout, args.limit)
    if not (args.title or args.summary or args.content):
        print(
            "give --title, --summary or --content to test, or --since to backtest",
            file=sys.stderr,
        )
        return INVALID
    return test_item(rule, args.title, args.summary, args.content, sys.stdout)


def _configured_rule(config: Config, name: str) -> Rule:
    for rule in config.rules:
        if rule.name == name:
            return rule
    known = ", ".join(r.name for r in config.rules) or "none"
    raise KeyError(f"no rule named {name!r} in {config.path} (rules: {known})")
