"""Fault-injection harness: the real daemon as a subprocess, killed at chosen moments.

    with FaultBench(tmp_path, feeds=5) as bench:
        daemon = bench.start()                     # `monitor run` as a child process
        bench.wait_until(bench.all_seeded, "every feed seeded", daemon)
        bench.publish("f1", matching=True)         # a new story on a feed
        daemon.kill()                              # SIGKILL
        daemon = bench.start()
        bench.wait_until(bench.settled, "every story delivered", daemon)
        daemon.terminate()
        bench.telegram(), bench.email()            # what each channel received
        check_store(bench.db, bench.expected(), {"desk": CHAT, "mail": RECIPIENT})

The parts around the daemon are the usual loopback fakes, each able to be slow on purpose so
that a kill can land mid-fetch or mid-send: feeds served by `FeedServer` with an optional
delay before the answer, the fake Bot API (`FakeBot.hang`: the message is accepted, the answer
held), and an SMTP server that can hold its answer to DATA after recording the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.builders import rss, write_config
from tests.fakebot import FakeBot
from tests.feedserver import CLIENT_GONE, FeedServer, stopping
from tests.smtpserver import SmtpServer, _Handler

#: The chat of the Telegram channel (a private chat: paced at about one message a second).
CHAT = "42"
#: The one recipient of the email channel.
RECIPIENT = "desk@news.example"
#: Every story's guid and headline start with this token, so any message naming it (an
#: alert, a grouped message, an email burst) can be traced back to the story.
TOKEN = re.compile(r"\bfx(\d{5})\b")


def token(n: int) -> str:
    return f"fx{n:05d}"


def tokens_in(text: str) -> set[int]:
    return {int(m) for m in TOKEN.findall(text)}


# --- slow parts ------------------------------------------------------------------------------


class _Gate:
    """Counts requests started and answered, and hands out one-shot delays."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.started = 0
        self.answered = 0
        self.in_flight = 0
        self._delays: list[float] = []

    def delay_next(self, seconds: float) -> None:
        with self.cond:
            self._delays.append(seconds)

    def clear_delays(self) -> None:
        with self.cond:
            self._delays.clear()

    def begin(self) -> float:
        with self.cond:
            self.started += 1
            self.in_flight += 1
            self.cond.notify_all()
            return self._delays.pop(0) if self._delays else 0.0

    def end(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.answered += 1
            self.cond.notify_all()

    def wait(self, what: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(what, timeout)


class Feeds:
    """Feeds `f0`, `f1`, … on a FeedServer, whose stories tests add while the daemon runs.

    Every answer is a 200 with the whole current document (no validators: each poll parses,
    matches and records). `gate.delay_next(s)` holds the next answer for `s` seconds.
    """

    def __init__(self, server: FeedServer, count: int) -> None:
        self.server = server
        self.names = [f"f{i}" for i in range(count)]
        self.gate = _Gate()
        self._lock = threading.Lock()
        self._entries: dict[str, list[tuple[str, str]]] = {name: [] for name in self.names}
        for name in self.names:
            server.handle(self.path(name), self._handler(name))

    @staticmethod
    def path(name: str) -> str:
        return f"/{name}.xml"

    def add(self, name: str, guid: str, title: str) -> None:
        with self._lock:
            self._entries[name].insert(0, (guid, title))  # newest first

    def document(self, name: str) -> bytes:
        with self._lock:
            return rss(self._entries[name], title=f"Feed {name}").encode()

    def _handler(self, name: str) -> Callable[[BaseHTTPRequestHandler], None]:
        def handler(h: BaseHTTPRequestHandler) -> None:
            delay = self.gate.begin()
            try:
                body = self.document(name)
                if delay and stopping(h).wait(delay):
                    h.close_connection = True
                    return
                h.send_response(200)
                h.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
            except CLIENT_GONE:  # the daemon was killed mid-fetch
                h.close_connection = True
            finally:
                self.gate.end()

        return handler


@dataclass
class _SlowHandler(_Handler):
    """The SMTP hooks, with a one-shot hold of the 250 after DATA (the message is recorded,
    as when a server accepts an email but its answer never reaches the client)."""

    gate: _Gate = field(default_factory=_Gate)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        delay = self.gate.begin()
        try:
            answer = await super().handle_DATA(server, session, envelope)
            if delay:
                await asyncio.sleep(delay)
            return answer
        finally:
            self.gate.end()


class SlowSmtp(SmtpServer):
    """SmtpServer whose `gate.delay_next(s)` holds the answer to the next DATA for `s`."""

    def __init__(self) -> None:
        super().__init__()
        handler = _SlowHandler(self)
        self._handler = handler
        self._controller.handler = handler
        self.gate = handler.gate

    def count(self) -> int:
        with self._changed:
            return len(self.received)


# --- the daemon ------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Pids of live processes in process group `pgid` (from /proc; empty where there is none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


class DaemonProcess:
    """One `monitor run` child, in a session of its own, logging JSON lines to a file."""

    def __init__(self, config: Path, log: Path, *, log_level: str = "info") -> None:
        self.log_path = log
        self._log: IO[bytes] | None = log.open("wb")
        command = [sys.executable, "-m", "monitor", "run", "-c", str(config)]
        self.proc = subprocess.Popen(
            [*command, "--log-format", "json", "--log-level", log_level],
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.started = time.monotonic()
        #: Processes of its group still alive after the daemon itself died (then killed).
        self.leftovers: list[int] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon process alone (as a crash or the OOM killer would), then reap it
        and clean up whatever of its process group outlived it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._sweep()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Make sure nothing of this daemon is left running; idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._sweep()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _sweep(self) -> None:
        members = _group_members(self.proc.pid)
        if members:
            self.leftovers.extend(m for m in members if m not in self.leftovers)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (a line cut short by a kill is skipped)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


# --- the bench -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    n: int
    feed: str
    title: str
    matching: bool
    #: Published after every feed was seeded: must alert (when matching).
    counted: bool


_MATCHING = ["talks resume in Geneva", "talks stall over ports", "new talks on grain", "talks end"]
_OTHER = ["weather: rain in Geneva", "sport: talks of a transfer", "markets close higher"]


@dataclass
class Delivered:
    """What one channel received: the stories named by each message, in arrival order."""

    messages: list[set[int]]

    def counts(self) -> Counter[int]:
        return Counter(n for message in self.messages for n in message)

    def stories(self) -> set[int]:
        return set(self.counts())

    def duplicates(self) -> int:
        """Deliveries of a story beyond its first."""
        return sum(c - 1 for c in self.counts().values())

    def repeated_messages(self) -> int:
        """Messages some of whose stories were delivered again later: each kill may cause one
        (the message in flight), whether it is repeated as one message or several."""
        first: dict[int, int] = {}
        for i, message in enumerate(self.messages):
            for n in message:
                first.setdefault(n, i)
        return len({first[n] for n, c in self.counts().items() if c > 1})


class FaultBench:
    """Feed server, fake Bot API, SMTP server, config and state in `workdir`; starts daemons."""

    def __init__(
        self,
        workdir: Path,
        *,
        feeds: int = 5,
        jitter: float = 0.5,
        group_threshold: int = 5,
    ) -> None:
        self.workdir = workdir
        self.feed_server = FeedServer()
        self.bot = FakeBot()
        self.smtp = SlowSmtp()
        self.feeds: Feeds | None = None
        self.feed_count = feeds
        self.jitter = jitter
        self.group_threshold = group_threshold
        self.stories: list[Story] = []
        self.daemons: list[DaemonProcess] = []
        self.db = workdir / "state.db"
        self.config = workdir / "monitor.yaml"
        self._numbers = itertools.count(1)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> FaultBench:
        stack = self._stack
        stack.enter_context(self.feed_server)
        stack.enter_context(self.bot)
        stack.enter_context(self.smtp)
        self.feeds = Feeds(self.feed_server, self.feed_count)
        self._write_config()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for daemon in self.daemons:
                daemon.close()
        finally:
            if self.feeds is not None:
                self.feeds.gate.clear_delays()
            self.smtp.gate.clear_delays()
            self._stack.close()

    def _write_config(self) -> None:
        assert self.feeds is not None
        feeds = "\n".join(
            f"  - {{name: {name}, url: '{self.feed_server.url(Feeds.path(name))}'}}"
            for name in self.feeds.names
        )
        write_config(
            self.config,
            f"""\
state: state.db
timezone: UTC
defaults: {{interval: 10s}}
poll: {{jitter: {self.jitter}}}
delivery: {{retry_base: 1s, retry_cap: 5s}}
feeds:
{feeds}
channels:
  desk:
    type: telegram
    token: {self.bot.token}
    chat_id: [{CHAT}]
    api_url: {self.bot.api_url}
    group_threshold: {self.group_threshold}
  mail:
    type: email
    smtp: {{host: 127.0.0.1, port: {self.smtp.port}, security: none}}
    from: alerts@monitor.example
    to: [{RECIPIENT}]
    group_threshold: {self.group_threshold}
rules:
  - name: talks
    query: 'talks AND NOT sport'
""",
        )

    # --- stories -----------------------------------------------------------------------------

    def publish(self, feed: str, *, matching: bool, counted: bool = True, pick: int = 0) -> Story:
        """Add a new story at the top of `feed`; `pick` chooses its wording."""
        assert self.feeds is not None
        n = next(self._numbers)
        words = _MATCHING if matching else _OTHER
        story = Story(n, feed, f"{token(n)} {words[pick % len(words)]}", matching, counted)
        self.feeds.add(feed, token(n), story.title)
        self.stories.append(story)
        return story

    def expected(self) -> set[int]:
        """Stories that must alert: matching ones published after the feeds were seeded."""
        return {s.n for s in self.stories if s.matching and s.counted}

    # --- daemons -----------------------------------------------------------------------------

    def start(self) -> DaemonProcess:
        daemon = DaemonProcess(self.config, self.workdir / f"daemon-{len(self.daemons) + 1}.log")
        self.daemons.append(daemon)
        return daemon

    def wait_until(
        self, done: Callable[[], bool], what: str, daemon: DaemonProcess, timeout: float = 60
    ) -> None:
        """Poll `done` until true; AssertionError (with the daemon's log and the state of the
        outbox) if the daemon exits or `timeout` (a safety net) passes first."""
        give_up = time.monotonic() + timeout
        while not done():
            if not daemon.alive():
                raise AssertionError(
                    f"daemon {daemon.pid} exited ({daemon.proc.returncode}) while waiting for "
                    f"{what}:\n{self.state()}\n{daemon.tail()}"
                )
            if time.monotonic() > give_up:
                raise AssertionError(
                    f"no {what} within {timeout}s:\n{self.state()}\n{self.report()}"
                )
            time.sleep(0.1)

    def state(self) -> str:
        """Where things stand: stories not stored, not delivered, deliveries not sent."""
        published = {s.n for s in self.stories}
        expected = self.expected()
        unsent = self.query(
            "SELECT id, channel, status, attempts, last_error, next_attempt_at, lease_until"
            " FROM deliveries WHERE status != 'sent' ORDER BY id LIMIT 20"
        )
        return "\n".join(
            [
                f"stories not stored yet: {sorted(published - self.stored_stories())}",
                f"not on telegram: {sorted(expected - self.telegram().stories())}",
                f"not by email: {sorted(expected - self.email().stories())}",
                f"deliveries not sent: {unsent}",
            ]
        )

    # --- state ---------------------------------------------------------------------------------

    def query(self, sql: str) -> list[tuple[Any, ...]] | None:
        """Rows from the state file opened read-only (beside a running daemon, or one that
        was killed), or None while it cannot be read yet."""
        # Only once the daemon has switched the file to WAL: a reader then never blocks it.
        if not self.db.with_name(self.db.name + "-wal").exists():
            return None
        try:
            conn = sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return None
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.Error:
            return None
        finally:
            conn.close()

    def all_seeded(self) -> bool:
        rows = self.query("SELECT count(*) FROM feeds WHERE seeded = 1")
        return rows is not None and rows[0][0] == self.feed_count

    def stored_stories(self) -> set[int]:
        rows = self.query("SELECT key FROM items") or []
        return {n for (key,) in rows for n in tokens_in(key)}

    def pending(self) -> int | None:
        rows = self.query("SELECT count(*) FROM deliveries WHERE status = 'pending'")
        return None if rows is None else int(rows[0][0])

    def settled(self) -> bool:
        """Every published story is stored and no delivery is pending (all sent or failed)."""
        published = {s.n for s in self.stories}
        return published <= self.stored_stories() and self.pending() == 0

    # --- what the channels received --------------------------------------------------------------

    def telegram(self) -> Delivered:
        return Delivered([tokens_in(s.text) for s in self.bot.sent if s.chat_id == CHAT])

    def email(self) -> Delivered:
        messages = []
        for received in list(self.smtp.received):
            body = received.message.get_body(("plain",))
            text = body.get_content() if body is not None else ""
            messages.append(tokens_in(f"{received.message['Subject']}\n{text}"))
        return Delivered(messages)

    def report(self) -> str:
        """The last lines of the latest daemon's log, and its warnings and errors, for
        assertion messages."""
        lines = []
        for daemon in self.daemons:
            for record in daemon.records():
                if record.get("level") in ("warning", "error", "critical"):
                    lines.append(f"[daemon {daemon.pid}] {json.dumps(record)[:500]}")
        if self.daemons:
            latest = self.daemons[-1]
            lines.append(f"--- log of the latest daemon ({latest.log_path.name}):")
            lines.append(latest.tail())
        return "\n".join(lines[-80:])


def problems(bench: FaultBench) -> list[str]:
    """Error-level log records of every daemon run."""
    found = []
    for daemon in bench.daemons:
        for record in daemon.records():
            if record.get("level") in ("error", "critical"):
                found.append(f"[{daemon.log_path.name}] {json.dumps(record)[:800]}")
    return found


def check_store(db: Path, expected: set[int], channels: dict[str, str]) -> list[str]:
    """What is wrong with the state file at `db`, opened read-only (empty when all is well):
    integrity, foreign keys, nothing pending or failed, one alert per story and exactly the
    `expected` stories, each alert with one delivery per channel (`channels`: name -> target).
    """
    wrong: list[str] = []
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            wrong.append(f"integrity_check: {integrity}")
        orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
        if orphans:
            wrong.append(f"foreign_key_check: {orphans[:10]}")
        statuses = dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status"))
        for status in ("pending", "failed"):
            if statuses.get(status):
                rows = conn.execute(
                    "SELECT id, channel, target, attempts, last_error FROM deliveries"
                    " WHERE status = ? LIMIT 10",
                    (status,),
                ).fetchall()
                wrong.append(f"{statuses[status]} deliveries {status}: {rows}")
        twice = conn.execute(
            "SELECT feed, item_key, count(*) FROM alerts GROUP BY feed, item_key"
            " HAVING count(*) > 1"
        ).fetchall()
        if twice:
            wrong.append(f"stories alerted more than once: {twice[:10]}")
        keys = conn.execute("SELECT item_key FROM alerts").fetchall()
        alerted = {n for (key,) in keys for n in tokens_in(key)}
        if alerted != expected:
            wrong.append(
                f"alerts: missing {sorted(expected - alerted)}, "
                f"unexpected {sorted(alerted - expected)}"
            )
        want = sorted(channels.items())
        for alert_id, item_key in conn.execute("SELECT id, item_key FROM alerts ORDER BY id"):
            got = sorted(
                conn.execute(
                    "SELECT channel, target FROM deliveries WHERE alert_id = ?", (alert_id,)
                ).fetchall()
            )
            if got != want:
                wrong.append(f"alert {alert_id} ({item_key}) has deliveries {got}, not {want}")
    finally:
        conn.close()
    return wrong
