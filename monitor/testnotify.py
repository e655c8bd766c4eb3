"""`monitor test-notify`: send a test alert through one channel and report what happened.

Works for every channel type: the channel's own notifier renders and sends a sample alert to
each of its destinations (every chat of a Telegram channel), outside the outbox, so nothing
is recorded and nothing is retried. Exit 0 when every destination accepted it, 1 when one
did not (the reason is printed), 2 for an invalid config or an unknown channel.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from monitor.cliconfig import load_for_command
from monitor.daemon import build_notifier
from monitor.errors import DeliveryError
from monitor.models import Alert, ChannelSpec, Config, Delivery, Match

OK, FAILED, INVALID = 0, 1, 2


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `test-notify` subcommand's arguments."""
    test = commands.add_parser(
        "test-notify",
        parents=[common],
        help="send a test alert through a channel",
        description="Send a sample alert through one configured channel, to each of its "
        "destinations, and report the result. Exit 0 when all accepted it, 1 when one did not, "
        "2 on an invalid config or unknown channel.",
    )
    test.add_argument("--channel", metavar="NAME", required=True, help="a channel from the config")


def sample_alert(channel: str, now: datetime) -> Alert:
    """The alert sent by test-notify: plainly a test, with markup-hostile characters so a
    rendering problem shows now rather than on a real story."""
    match = Match(
        rule="test-notify",
        terms=("test",),
        fields=("title",),
        channels=(channel,),
        snippet='This is a test alert from monitor: <tags> & "quotes" show as typed.',
    )
    return Alert(
        feed="monitor",
        item_key=f"test-notify-{now.timestamp():.0f}",
        title="Test alert from monitor <ok> & working",
        link="https://example.org/monitor/test-notify",
        summary="If you can read this, the channel works.",
        published=now,
        seen_at=now,
        matches=(match,),
    )


def main(args: argparse.Namespace) -> int:
    config = load_for_command(args.config, json_logs=args.log_format == "json")
    if config is None:
        return INVALID
    spec = next((c for c in config.channels if c.name == args.channel), None)
    if spec is None:
        names = [c.name for c in config.channels]
        close = difflib.get_close_matches(args.channel, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(
            f"no channel {args.channel!r} in {config.path}{hint}; channels: {', '.join(names)}",
            file=sys.stderr,
        )
        return INVALID
    results = asyncio.run(send_test(config, spec))
    for target, error in results:
        where = f"{spec.name} {target}".strip()
        print(f"{where}: {'sent' if not error else 'FAILED: ' + error}")
    return FAILED if any(error for _, error in results) else OK


async def send_test(config: Config, spec: ChannelSpec) -> list[tuple[str, str]]:
    """(target, "" or the error) per destination of the channel."""
    tz = ZoneInfo(config.timezone)
    alert = sample_alert(spec.name, datetime.now(UTC))
    results: list[tuple[str, str]] = []
    try:
        async with build_notifier(spec, tz, config.rules) as notifier:
            for target in spec.targets or ("",):
                delivery = Delivery(id=0, channel=spec.name, alert=alert, target=target)
                try:
                    await notifier.send(delivery)
                except DeliveryError as exc:
                    results.append((target, str(exc)))
                else:
                    results.append((target, ""))
    except DeliveryError as exc:  # the channel could not even open (a rejected token)
        return [(target, str(exc)) for target in spec.targets or ("",)]
    return results
