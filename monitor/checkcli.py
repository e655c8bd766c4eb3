"""`monitor check`: the config validated, and what it holds shown as tables (feeds, rules as
queries, channels and where they send), secrets never shown."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from monitor import logs, terminal
from monitor.health import span
from monitor.match.compile import uses_regex
from monitor.match.query import And, Near, Node, Not, Or, Regex, Term
from monitor.models import ChannelSpec, Config, EmailSettings, FeedSpec, Rule, TelegramSettings
from monitor.redact import safe_dsn
from monitor.terminal import Column

FEED_COLUMNS = (
    Column("FEED", flexible=True),
    Column("URL", flexible=True),
    Column("EVERY"),
    Column("TAGS", flexible=True),
)
RULE_COLUMNS = (
    Column("RULE", flexible=True),
    Column("MATCHES", flexible=True),
    Column("FIELDS"),
    Column("FEEDS", flexible=True),
    Column("NOTIFY", flexible=True),
)
CHANNEL_COLUMNS = (Column("CHANNEL"), Column("TYPE"), Column("SENDS TO", flexible=True))


def print_check(config: Config, out: Console) -> None:
    """What `monitor check` prints for a valid config: that it is valid, the counts, state
    and timezone (for `head -3`), then the feeds, rules and channels it checked as tables.
    Secrets (tokens, passwords, keys in URLs) never appear."""
    out.print(Text(f"{config.path}: valid", style="bold green"))
    out.print(
        Text(
            f"{_count(len(config.feeds), 'feed')}, {_count(len(config.rules), 'rule')}, "
            f"{_count(len(config.channels), 'channel')}"
        )
    )
    out.print(Text(f"state {safe_dsn(config.state)}, timezone {config.timezone}"))
    sections = (
        (FEED_COLUMNS, [_feed_row(f) for f in config.feeds]),
        (RULE_COLUMNS, [_rule_row(r) for r in config.rules]),
        (CHANNEL_COLUMNS, [_channel_row(c, config) for c in config.channels]),
    )
    for columns, rows in sections:
        if rows:
            out.print()
            terminal.print_table(out, columns, rows)
    slow = [r.name for r in config.rules if uses_regex(r.query)]
    if slow:
        out.print()
        out.print(
            Text(
                f"regex rules are slower (searched item by item): {', '.join(slow)}",
                style="yellow",
            )
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _feed_row(feed: FeedSpec) -> list[terminal.Cell]:
    every = span(feed.interval)
    if feed.adaptive:
        every += " adaptive"
    return [
        logs.redact(feed.name),
        logs.redact(feed.url),
        every,
        ", ".join(sorted(feed.tags)) or "-",
    ]


def _rule_row(rule: Rule) -> list[terminal.Cell]:
    scope = rule.feeds
    feeds = [*sorted(scope.names), *(f"tag {t}" for t in sorted(scope.tags))]
    matches = Text(query_text(rule.query))
    if uses_regex(rule.query):
        matches.stylize("yellow")
    return [
        rule.name,
        matches,
        ", ".join(rule.fields),
        ", ".join(feeds) or "every feed",
        ", ".join(rule.notify),
    ]


def _channel_row(channel: ChannelSpec, config: Config) -> list[terminal.Cell]:
    options = channel.options
    telegram, email = options.get("telegram"), options.get("email")
    if isinstance(telegram, TelegramSettings):
        sends_to = "chat " + ", ".join(telegram.chats)
        if telegram.commands is not None:
            sends_to += "; answers bot commands"
    elif isinstance(email, EmailSettings):
        sends_to = f"{', '.join(email.to)} via {email.smtp.host}:{email.smtp.port}"
        if email.digest is not None:
            sends_to += f"; digest at {email.digest.cron}"
    elif channel.type == "jsonl":
        sends_to = str(options.get("path", ""))
    elif channel.type == "console":
        sends_to = "standard output"
    else:
        sends_to = "-"
    if config.admin is not None and config.admin.channel == channel.name:
        sends_to += "; feed-health notices"
    return [channel.name, channel.type, logs.redact(sends_to)]


def query_text(node: Node) -> str:
    """A rule's query in the query language, whichever form it was written in."""
    if isinstance(node, Term):
        quoted = " " in node.text and not node.text.startswith(('"', "'"))
        return f'"{node.text}"' if quoted else node.text
    if isinstance(node, Near):
        return node.text
    if isinstance(node, Regex):
        return node.text if node.text.startswith("/") else f"/{node.text}/"
    if isinstance(node, Not):
        return f"NOT {_operand(node.child)}"
    joiner = " AND " if isinstance(node, And) else " OR "
    return joiner.join(_operand(child) for child in node.children)


def _operand(node: Node) -> str:
    text = query_text(node)
    return f"({text})" if isinstance(node, And | Or) else text
