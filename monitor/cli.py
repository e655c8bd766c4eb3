"""The `monitor` command line: check, once, run, feeds, test-rule, test-notify, digest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from monitor import __version__, digestcli, feedscli, logs, terminal, testnotify, testrule, web
from monitor.config import find_config, load_config
from monitor.daemon import Daemon, OnceReport
from monitor.errors import ConfigError, MonitorError, StoreError
from monitor.health import span
from monitor.match.compile import uses_regex
from monitor.match.query import And, Near, Node, Not, Or, Regex, Term
from monitor.models import (
    ChannelSpec,
    Config,
    EmailSettings,
    FeedSpec,
    HttpSettings,
    Rule,
    TelegramSettings,
)
from monitor.redact import safe_dsn
from monitor.reload import Supervisor
from monitor.terminal import Column

log = logging.getLogger("monitor.cli")

#: Exit codes. A reader that stopped reading (`monitor check | head -1`) ends the command
#: with 141, the status of a writer killed by SIGPIPE; Ctrl-C with 130.
OK, FAILED, INVALID, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="YAML config (default: ./monitor.yaml, then ./config/monitor.yaml)",
    )
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least severe log level shown (default: info)",
    )
    common.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines as readable text (default) or JSON objects",
    )
    parser = argparse.ArgumentParser(
        prog="monitor", description="Real-time news monitoring and alerting daemon."
    )
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "check",
        parents=[common],
        help="validate the config and print a summary",
        description="Validate the config. Exit 0 when valid, 2 when not.",
    )
    commands.add_parser(
        "once",
        parents=[common],
        help="poll every feed once, deliver, exit",
        description="Poll every feed now, send due alerts, exit (for cron and testing).",
    )
    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the daemon until SIGINT/SIGTERM (SIGHUP reloads the config)",
        description="Poll feeds on schedule and deliver alerts until stopped. SIGHUP reloads "
        "the config file; an invalid one is logged and the running config kept.",
    )
    run.add_argument(
        "--watch-config",
        action="store_true",
        help="reload the config file whenever it changes",
    )
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=web.address_argument,
        help="serve /healthz, /readyz, /metrics and /status there (e.g. 0.0.0.0:8080; port 0 "
        "picks a free one); overrides the config's http",
    )
    feedscli.add_parser(commands, common)
    testrule.add_parser(commands, common)
    testnotify.add_parser(commands, common)
    digestcli.add_parser(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Output cut short by its reader and Ctrl-C end the command quietly, without a traceback.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe must be noticed in the try
    except BrokenPipeError:
        _discard_stdout()
        return BROKEN_PIPE
    except KeyboardInterrupt:
        return INTERRUPTED
    return code


def _discard_stdout() -> None:
    """Send whatever is still buffered for standard output nowhere, so the interpreter's
    flush at exit does not fail on the closed pipe again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "test-rule":
        return testrule.main(args)
    if args.command == "test-notify":
        return testnotify.main(args)
    if args.command == "digest":
        return digestcli.main(args)
    if args.command == "feeds":
        return feedscli.main(args)
    # With JSON logs, standard error carries JSON lines only: what is printed otherwise is
    # logged (for the collector reading it).
    json_logs = args.log_format == "json"
    try:
        config = load_config(find_config(args.config))
    except ConfigError as exc:
        _invalid(exc, json_logs=json_logs)
        return INVALID
    for secret in config.secrets:
        logs.register_secret(secret)
    command = args.command
    if command == "check":
        print_check(config, terminal.console())
        return OK
    try:
        if command == "once":
            report = asyncio.run(_once(config, json_logs=json_logs))
            if json_logs:
                log.info("%s", once_summary(report))
            else:
                print(logs.redact(once_summary(report)), file=sys.stderr)
            return OK
        asyncio.run(_run(config, watch=args.watch_config, http=args.http))
    except ConfigError as exc:
        _invalid(exc, json_logs=json_logs)
        return INVALID
    except StoreError as exc:
        log.error("state store: %s", exc)
        return FAILED
    except MonitorError as exc:
        log.error("%s", exc)
        return FAILED
    return OK


def _invalid(exc: ConfigError, *, json_logs: bool) -> None:
    if json_logs:
        log.error("invalid config:\n%s", exc)
    else:
        print(f"invalid config:\n{exc}", file=sys.stderr)


async def _once(config: Config, *, json_logs: bool = False) -> OnceReport:
    async with Daemon(config) as daemon:
        if not terminal.wants_progress(json_logs=json_logs):
            return await daemon.once()
        progress = terminal.PollProgress(len(config.feeds), terminal.console(sys.stderr))
        with progress.shown():
            return await daemon.once(progress)


async def _run(config: Config, *, watch: bool, http: HttpSettings | None = None) -> None:
    supervisor = Supervisor(config, asyncio.Event(), watch=watch, http=http)
    supervisor.install_signals()
    await supervisor.run()


# --- monitor check ------------------------------------------------------------------------------

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


def once_summary(report: OnceReport) -> str:
    """The closing line of `monitor once`."""
    failed = [p for p in report.polls if p.status == "error"]
    new = sum(p.new_items for p in report.polls)
    alerts = sum(p.alerts for p in report.polls)
    text = (
        f"polled {len(report.polls)} feeds ({len(failed)} failed): {new} new items, "
        f"{alerts} alerts; sent {report.dispatch.sent}, retrying {report.dispatch.retried}, "
        f"failed {report.dispatch.failed}; {report.pending} pending"
    )
    return "\n".join([text, *(f"  failed: {p.feed}: {p.error}" for p in failed)])
