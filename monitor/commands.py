"""Bot commands: /status, /rules, /mute RULE 2h, /unmute RULE, /help (answers in HTML).

Channel-agnostic: the Telegram listener (`notify/telegram_updates.py`) decides who may ask
and sends the answer; this module reads the store and the dispatcher and writes the reply.
Mutes live in the store, so they survive restarts, and they expire on their own: a muted
rule still matches (items are still recorded as seen), it just creates no alerts.
"""

from __future__ import annotations

import difflib
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from monitor.config.units import parse_duration
from monitor.dispatch import Dispatcher
from monitor.models import Rule
from monitor.notify.render import local_time
from monitor.store.protocol import Store

#: Longest mute accepted: a forgotten mute must not silence a rule for good.
MAX_MUTE = timedelta(days=30)
#: Feeds listed by name under "failing" in /status before "and N more".
LISTED = 10
#: Rules listed by /rules (a reply must stay under Telegram's 4,096 characters).
LISTED_RULES = 60

HELP = """<b>Commands</b>
/status – feeds OK and failing, alerts today, queue length
/rules – the rules, and which are muted
/mute RULE 2h – no alerts from RULE for a while (up to 30d)
/unmute RULE – alerts from RULE again
/help – this list"""


@dataclass(frozen=True)
class CommandContext:
    """What commands read and change."""

    store: Store
    rules: Sequence[Rule]
    clock: Callable[[], datetime]
    tz: ZoneInfo
    dispatcher: Dispatcher | None = None


def command_of(text: str, bot_username: str | None = None) -> tuple[str, list[str]] | None:
    """("mute", ["rule", "2h"]) from "/mute@our_bot rule 2h"; None when `text` is not a
    command, or is addressed to another bot."""
    if not text.startswith("/"):
        return None
    head, *args = text.split()
    name, _, addressee = head[1:].partition("@")
    if addressee and bot_username and addressee.lower() != bot_username.lower():
        return None
    return name.lower(), args


async def answer(name: str, args: list[str], ctx: CommandContext) -> str:
    """The HTML reply to one command from an allowed user."""
    if name == "status":
        return await _status(ctx)
    if name == "rules":
        return await _rules(ctx)
    if name == "mute":
        return await _mute(args, ctx)
    if name == "unmute":
        return await _unmute(args, ctx)
    if name in ("help", "start"):
        return HELP
    return f"Unknown command /{html.escape(name)}.\n\n{HELP}"


async def _status(ctx: CommandContext) -> str:
    now = ctx.clock()
    states = await ctx.store.feed_states()
    failing = [s for s in states if s.consecutive_failures > 0]
    midnight = now.astimezone(ctx.tz).replace(hour=0, minute=0, second=0, microsecond=0)
    alerts = await ctx.store.alert_count(midnight)
    pending = await ctx.store.pending_count()
    mutes = await ctx.store.mutes(now)
    lines = [
        "<b>Status</b>",
        f"Feeds: {len(states) - len(failing)} OK, {len(failing)} failing",
    ]
    for state in failing[:LISTED]:
        error = state.last_error[:120]
        lines.append(
            f"• {html.escape(state.name)}: {html.escape(error)} ({state.consecutive_failures}×)"
        )
    if len(failing) > LISTED:
        lines.append(f"• and {len(failing) - LISTED} more")
    lines.append(f"Alerts today: {alerts}")
    lines.append(f"Queue: {pending} waiting to be sent")
    if mutes:
        lines.append("Muted: " + ", ".join(html.escape(r) for r in sorted(mutes)))
    lines.extend(_paused(ctx, now))
    return "\n".join(lines)


def _paused(ctx: CommandContext, now: datetime) -> list[str]:
    dispatcher = ctx.dispatcher
    if dispatcher is None:
        return []
    lines = [
        f"Paused channel {html.escape(c)}: {html.escape(why)}"
        for c, why in dispatcher.paused.items()
    ]
    lines += [
        f"Paused chat {html.escape(t)} of {html.escape(c)}: {html.escape(why)}"
        for (c, t), why in dispatcher.blocked.items()
    ]
    return lines


async def _rules(ctx: CommandContext) -> str:
    if not ctx.rules:
        return "No rules configured."
    mutes = await ctx.store.mutes(ctx.clock())
    lines = [f"<b>Rules</b> ({len(ctx.rules)})"]
    for rule in ctx.rules[:LISTED_RULES]:
        muted = mutes.get(rule.name)
        note = f" – muted until {local_time(muted, ctx.tz)}" if muted else ""
        lines.append(f"• <code>{html.escape(rule.name)}</code>{html.escape(note)}")
    if len(ctx.rules) > LISTED_RULES:
        lines.append(f"• and {len(ctx.rules) - LISTED_RULES} more (see the config)")
    others = sorted(set(mutes) - {r.name for r in ctx.rules[:LISTED_RULES]})
    if others:
        lines.append("Also muted: " + ", ".join(html.escape(r) for r in others))
    return "\n".join(lines)


async def _mute(args: list[str], ctx: CommandContext) -> str:
    if len(args) != 2:
        return "Usage: /mute RULE DURATION, e.g. /mute russia-sanctions 2h"
    rule, problem = _rule(args[0], ctx)
    if problem:
        return problem
    try:
        duration = parse_duration(args[1])
    except ValueError as exc:
        return html.escape(str(exc))
    if duration > MAX_MUTE:
        return "A mute lasts at most 30d."
    now = ctx.clock()
    until = now + duration
    await ctx.store.mute(rule, until, now=now)
    return f"Muted <code>{html.escape(rule)}</code> until {html.escape(local_time(until, ctx.tz))}."


async def _unmute(args: list[str], ctx: CommandContext) -> str:
    if len(args) != 1:
        return "Usage: /unmute RULE"
    rule, problem = _rule(args[0], ctx)
    if problem:
        return problem
    if await ctx.store.unmute(rule):
        return f"Unmuted <code>{html.escape(rule)}</code>."
    return f"<code>{html.escape(rule)}</code> was not muted."


def _rule(name: str, ctx: CommandContext) -> tuple[str, str]:
    """(the rule name, "") or ("", why not)."""
    names = [r.name for r in ctx.rules]
    if name in names:
        return name, ""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean <code>{html.escape(close[0])}</code>?" if close else ""
    return "", f"No rule named <code>{html.escape(name)}</code>.{hint} See /rules."
