"""`monitor digest`: send an email channel's digest now, or preview it as an HTML file.

`--now` sends what a scheduled digest would send now, and closes the period: every pending
alert that is due (never tried, or failed and due for its retry; those still waiting for
their retry time are left to the daemon's retries), for the recipients listed in `to`. It
needs the state file to itself (a running daemon holds it). `--preview` opens the state
read-only, beside a running daemon, and writes the first recipient's copy of that same digest
to a file: nothing is sent or marked. Exit 0 when done, 1 when a digest (or the state file)
failed, 2 for an invalid config or a channel that is not an email channel in digest mode.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from monitor.cliconfig import load_for_command
from monitor.digest import Digester, DigestReport
from monitor.errors import MonitorError
from monitor.models import ChannelSpec, Config, EmailSettings
from monitor.notify.email import EmailNotifier
from monitor.store import Store, open_store

OK, FAILED, INVALID = 0, 1, 2


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `digest` subcommand's arguments."""
    digest = commands.add_parser(
        "digest",
        parents=[common],
        help="send an email digest now, or preview it",
        description="Send the digest of an email channel in digest mode now (--now), or write "
        "the HTML of the digest its first recipient would get to a file without sending "
        "anything (--preview). Exit 0 when done, 1 when sending failed, 2 on an invalid config "
        "or a channel that is not an email digest channel.",
    )
    digest.add_argument("--channel", metavar="NAME", required=True, help="an email channel")
    which = digest.add_mutually_exclusive_group(required=True)
    which.add_argument("--now", action="store_true", help="send the digest now")
    which.add_argument("--preview", metavar="OUT.html", type=Path, help="write its HTML here")


def main(args: argparse.Namespace) -> int:
    """Run `monitor digest`; returns the exit code."""
    config = load_for_command(args.config, json_logs=args.log_format == "json")
    if config is None:
        return INVALID
    spec = next((c for c in config.channels if c.name == args.channel), None)
    settings = spec.options.get("email") if spec is not None and spec.type == "email" else None
    if spec is None or not isinstance(settings, EmailSettings) or settings.digest is None:
        digests = [c.name for c in config.channels if _is_digest(c)]
        print(
            f"{args.channel!r} is not an email channel in digest mode in {config.path} "
            f"(digest channels: {', '.join(digests) or 'none'})",
            file=sys.stderr,
        )
        return INVALID
    try:
        if args.preview is not None:
            count = asyncio.run(preview(config, spec, args.preview))
            alerts = f"{count} alert{'' if count == 1 else 's'}"
            print(
                f"{spec.name}: wrote the digest for {settings.to[0]} ({alerts}) to {args.preview}"
            )
            return OK
        report = asyncio.run(send_now(config, spec))
    except (MonitorError, OSError) as exc:
        # StoreError (a daemon holds the state file), ChannelError (login refused), or the
        # preview file cannot be written.
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    print(describe(report))
    return OK if report.ok else FAILED


def _is_digest(spec: ChannelSpec) -> bool:
    settings = spec.options.get("email")
    return isinstance(settings, EmailSettings) and settings.digest is not None


def _digester(config: Config, spec: ChannelSpec, store: Store) -> tuple[Digester, EmailNotifier]:
    tz = ZoneInfo(config.timezone)
    notifier = EmailNotifier(spec, tz, {r.name: r for r in config.rules})
    digester = Digester(store, {spec.name: notifier}, tz, config.delivery, _now, config.rules)
    return digester, notifier


def _now() -> datetime:
    return datetime.now(UTC)


async def preview(config: Config, spec: ChannelSpec, path: Path) -> int:
    """Write the digest's HTML to `path`; the number of alerts in it."""
    async with open_store(config.state, read_only=True) as store:
        digester, _ = _digester(config, spec, store)
        return await digester.preview(spec.name, _now(), path)


async def send_now(config: Config, spec: ChannelSpec) -> DigestReport:
    """Send the digest now, as the schedule would."""
    async with open_store(config.state) as store:
        digester, notifier = _digester(config, spec, store)
        # Entering the notifier checks the login: refused credentials fail here (ChannelError).
        async with notifier:
            # Holding the state file, no digest can be running: claims left in it are those
            # of a digest cut short, and go out now.
            await digester.recover()
            return await digester.run(spec.name, _now())


def describe(report: DigestReport) -> str:
    """One line per recipient: what went out, or why not."""
    if not report.recipients:
        return f"{report.channel}: nothing pending, no digest sent"
    lines = []
    for r in report.recipients:
        what = f"{r.alerts} alert{'' if r.alerts == 1 else 's'}"
        if r.gave_up:
            what += f", {r.gave_up} given up after their last attempt"
        status = {"sent": "sent", "failed": "FAILED", "retrying": "RETRYING", "held": "HELD"}
        tail = f": {r.error}" if r.error else ""
        lines.append(f"{report.channel} {r.target}: {status[r.outcome]} ({what}){tail}")
    return "\n".join(lines)
