"""The `monitor` command line: check, once, run, feeds, test-rule, test-notify, digest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from monitor import (
    __version__,
    checkcli,
    digestcli,
    feedscli,
    logs,
    terminal,
    testnotify,
    testrule,
    web,
)
from monitor.cliconfig import load_for_command, report_invalid
from monitor.daemon import Daemon, OnceReport
from monitor.errors import ConfigError, MonitorError, StoreError
from monitor.models import (
    Config,
    HttpSettings,
)
from monitor.reload import Supervisor

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
    config = load_for_command(args.config, json_logs=json_logs)
    if config is None:
        return INVALID
    command = args.command
    if command == "check":
        checkcli.print_check(config, terminal.console())
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
        report_invalid(exc, json_logs=json_logs)
        return INVALID
    except StoreError as exc:
        log.error("state store: %s", exc)
        return FAILED
    except MonitorError as exc:
        log.error("%s", exc)
        return FAILED
    return OK


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
