"""The `monitor` command line: check, once, run, feeds, test-rule, test-notify, digest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from monitor import __version__, digestcli, feedscli, logs, testnotify, testrule
from monitor.config import find_config, load_config
from monitor.daemon import Daemon, OnceReport
from monitor.errors import ConfigError, MonitorError, StoreError
from monitor.match.compile import uses_regex
from monitor.models import Config
from monitor.reload import Supervisor

log = logging.getLogger("monitor.cli")

#: Exit codes.
OK, FAILED, INVALID = 0, 1, 2


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
    feedscli.add_parser(commands, common)
    testrule.add_parser(commands, common)
    testnotify.add_parser(commands, common)
    digestcli.add_parser(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
    try:
        config = load_config(find_config(args.config))
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return INVALID
    for secret in config.secrets:
        logs.register_secret(secret)
    command = args.command
    if command == "check":
        print(summary(config))
        return OK
    try:
        if command == "once":
            report = asyncio.run(_once(config))
            print(once_summary(report), file=sys.stderr)
            return OK
        asyncio.run(_run(config, watch=args.watch_config))
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return INVALID
    except StoreError as exc:
        log.error("state store: %s", exc)
        return FAILED
    except MonitorError as exc:
        log.error("%s", exc)
        return FAILED
    return OK


async def _once(config: Config) -> OnceReport:
    async with Daemon(config) as daemon:
        return await daemon.once()


async def _run(config: Config, *, watch: bool) -> None:
    supervisor = Supervisor(config, asyncio.Event(), watch=watch)
    supervisor.install_signals()
    await supervisor.run()


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, … (+{len(names) - limit})" if len(names) > limit else shown


def summary(config: Config) -> str:
    """What `monitor check` prints for a valid config."""
    rows = [
        ("feeds", [f.name for f in config.feeds]),
        ("rules", [r.name for r in config.rules]),
        ("channels", [f"{c.name} ({c.type})" for c in config.channels]),
    ]
    lines = [f"{config.path}: valid"]
    lines += [f"  {label:<9}{len(names):>4}  {_names(names)}" for label, names in rows]
    slow = [r.name for r in config.rules if uses_regex(r.query)]
    if slow:
        lines.append(f"  {'regex':<9}{len(slow):>4}  {_names(slow)} (regex rules are slower)")
    lines.append(f"  {'state':<9}      {config.state}")
    lines.append(f"  {'timezone':<9}      {config.timezone}")
    return "\n".join(lines)


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
