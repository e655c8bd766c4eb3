"""`monitor feeds`: each feed's health, from the state file; `--retry` revives dead feeds.

Reads beside a running daemon. `--retry NAME...` (or `--retry-dead`) clears the dead mark and
the failure count and makes the feeds due now: a running daemon polls them on its next tick.
Exit 0 when done, 1 when the state file cannot be read or written, 2 for an invalid config or
an unknown feed name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from monitor import terminal
from monitor.cliconfig import load_for_command
from monitor.errors import MonitorError
from monitor.health import span
from monitor.logs import redact
from monitor.models import Config, FeedState
from monitor.store import SQLiteStore, open_store
from monitor.terminal import Column

OK, FAILED, INVALID = 0, 1, 2
#: Longest last error shown in the table (the JSON output has all of it).
ERROR_WIDTH = 60
#: The table's columns; the feed's name and its last error are cut on a narrow terminal.
COLUMNS = (
    Column("FEED", flexible=True),
    Column("STATUS"),
    Column("LAST SUCCESS"),
    Column("FAILS"),
    Column("NEXT POLL"),
    Column("ITEMS"),
    Column("EVERY"),
    Column("ERROR", flexible=True),
)
#: How each status word is shown on a colour terminal.
STYLES = {"ok": "green", "failing": "yellow", "dead": "bold red", "new": "cyan"}


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `feeds` subcommand's arguments."""
    feeds = commands.add_parser(
        "feeds",
        parents=[common],
        help="show each feed's health; revive dead feeds",
        description="Show each configured feed's health from the state file (works beside a "
        "running daemon): status, last success, consecutive failures, next poll, items seen, "
        "usual time between new items, last error. --retry revives feeds: a running daemon "
        "polls them on its next tick. Exit 0 when done, 1 when the state file failed, 2 on an "
        "invalid config or an unknown feed.",
    )
    which = feeds.add_mutually_exclusive_group()
    which.add_argument("--retry", metavar="NAME", nargs="+", help="revive and poll these feeds")
    which.add_argument("--retry-dead", action="store_true", help="revive every dead feed")
    feeds.add_argument("--json", action="store_true", help="one JSON object per feed")


def main(args: argparse.Namespace) -> int:
    """Run `monitor feeds`; returns the exit code."""
    config = load_for_command(args.config, json_logs=args.log_format == "json")
    if config is None:
        return INVALID
    names = [f.name for f in config.feeds]
    unknown = [n for n in args.retry or () if n not in names]
    if unknown:
        print(f"no feed named {', '.join(map(repr, unknown))} in {config.path}", file=sys.stderr)
        return INVALID
    try:
        if args.retry or args.retry_dead:
            revived = asyncio.run(_revive(config, args.retry or (), dead=args.retry_dead))
            print(f"revived {len(revived)} feeds: {', '.join(revived) or '-'}")
            return OK
        stored = {s.name: s for s in asyncio.run(_states(config))}
    except MonitorError as exc:
        print(redact(f"state store: {exc}"), file=sys.stderr)
        return FAILED
    # Every configured feed, in config order; one the daemon has not stored yet is new. Feeds
    # no longer configured are not shown (their state is kept in case they come back).
    states = [stored.get(f.name) or FeedState(name=f.name, url=f.url) for f in config.feeds]
    now = datetime.now(UTC)
    if args.json:
        for state in states:
            print(redact(json.dumps(as_json(state), ensure_ascii=False)))
    else:
        terminal.print_table(terminal.console(), COLUMNS, table(states, now, names))
    return OK


async def _states(config: Config) -> list[FeedState]:
    store = open_store(config.state, read_only=True)
    if isinstance(store, SQLiteStore) and not store.path.exists():
        return []  # no daemon ran yet: every feed is new
    async with store:
        return await store.feed_states()


async def _revive(config: Config, names: Sequence[str], *, dead: bool) -> list[str]:
    async with open_store(config.state, shared=True) as store:
        if dead:  # configured ones only, in config order
            found = {s.name for s in await store.feed_states() if s.dead_since is not None}
            names = [f.name for f in config.feeds if f.name in found]
        return await store.revive_feeds(names, datetime.now(UTC))


def status(state: FeedState, now: datetime) -> str:
    """One word or two for the table: ok, failing 3 h, dead, new."""
    if state.dead_since is not None:
        return "dead"
    if state.failing_since is not None:
        return f"failing {span(now - state.failing_since)}"
    if state.last_success_at is None:
        return "new"
    return "ok"


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    return f"{span(now - when)} ago" if when <= now else f"in {span(when - now)}"


def table(states: Sequence[FeedState], now: datetime, order: Sequence[str]) -> list[list[Text]]:
    """The rows of the feeds table (`COLUMNS`), in config order, secrets redacted."""
    rank = {name: i for i, name in enumerate(order)}
    rows = []
    for s in sorted(states, key=lambda s: rank.get(s.name, len(rank))):
        # Redacted before any cut: a cut secret would no longer be recognised.
        error = redact(s.dead_reason or s.last_error)
        word = status(s, now)
        cells = [
            redact(s.name),
            word,
            _ago(s.last_success_at, now),
            str(s.consecutive_failures),
            "never (dead)" if s.dead_since else _ago(s.next_poll_at, now),
            str(s.items_seen),
            span(s.cadence) if s.cadence else "-",
            error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…",
        ]
        row = [Text(cell) for cell in cells]
        row[1].stylize(STYLES[word.split()[0]])
        rows.append(row)
    return rows


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def as_json(state: FeedState) -> dict[str, object]:
    """A feed's health as a JSON-ready dict (times ISO 8601 UTC, durations in seconds)."""
    return {
        "feed": state.name,
        "url": state.url,
        "dead": state.dead_since is not None,
        "dead_since": _iso(state.dead_since),
        "dead_reason": state.dead_reason,
        "failing_since": _iso(state.failing_since),
        "consecutive_failures": state.consecutive_failures,
        "last_error": state.last_error,
        "last_warning": state.last_warning,
        "last_polled_at": _iso(state.last_polled_at),
        "last_success_at": _iso(state.last_success_at),
        "next_poll_at": _iso(state.next_poll_at),
        "items_seen": state.items_seen,
        "last_new_at": _iso(state.last_new_at),
        "cadence_seconds": state.cadence.total_seconds() if state.cadence else None,
    }
