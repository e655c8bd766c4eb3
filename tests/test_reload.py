"""Config reloads, end to end: `Supervisor` in process (and one real `monitor run` process
with SIGHUP), a real feed server on loopback, a real SQLite file, jsonl channels whose files
show what was alerted.

Feeds are polled every 10 s at the fastest, and a new feed within a second of the daemon's
start; a second poll is asked for as `monitor feeds --retry` does (the feed made due now),
and every wait watches state rather than sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO

import pytest
from _pytest.logging import LogCaptureFixture

from monitor import reload
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.errors import StoreError
from monitor.models import FeedState
from monitor.reload import Supervisor
from monitor.store import open_store
from tests.builders import rss, write_config
from tests.fakebot import FakeBot
from tests.feedserver import FeedServer, Handler, raw_response, stopping

#: A safety net only: every wait below ends as soon as what it waits for happened.
PATIENCE = 45.0

WIRE = [("w1", "Ceasefire talks open in Geneva"), ("w2", "Sanctions on steel eased")]


# --- helpers -----------------------------------------------------------------------------------


async def until(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    what: str,
) -> None:
    """Poll `check` until it is true; fail after PATIENCE seconds (a safety net)."""
    give_up = time.monotonic() + PATIENCE
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def alerts(path: Path) -> list[str]:
    """Titles alerted to a jsonl channel, in order."""
    if not path.exists():
        return []
    return [json.loads(line)["title"] for line in path.read_text(encoding="utf-8").splitlines()]


async def states(config_path: Path) -> dict[str, FeedState]:
    """The feeds' state, read beside the running daemon (read-only, as `monitor feeds` does)."""
    try:
        async with open_store(load_config(config_path).state, read_only=True) as store:
            return {s.name: s for s in await store.feed_states()}
    except StoreError:  # not created yet
        return {}


async def poll_now(config_path: Path, *names: str) -> None:
    """Make feeds due now, from beside the running daemon, as `monitor feeds --retry` does: a
    running daemon polls them on its next tick (instead of 10 s later)."""
    async with open_store(load_config(config_path).state, shared=True) as store:
        assert await store.revive_feeds(names, datetime.now(UTC)) == list(names)


def seeded(config_path: Path, *names: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await states(config_path)
        return all(n in found and found[n].seeded for n in names)

    return check


@asynccontextmanager
async def supervised(path: Path, *, watch: bool = False) -> AsyncIterator[Supervisor]:
    """A Supervisor running `path`'s config as a task; stopped (and its errors raised) at
    the end."""
    stop = asyncio.Event()
    supervisor = Supervisor(load_config(path), stop, watch=watch)
    task = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=PATIENCE)


async def pending(path: Path) -> int:
    """Deliveries not sent, once the daemon has stopped."""
    async with open_store(load_config(path).state) as store:
        return await store.pending_count()


def write_atomically(path: Path, text: str) -> None:
    """As editors save: a new file renamed over the old one."""
    new = path.with_name(path.name + ".new")
    new.write_text(text, encoding="utf-8")
    os.replace(new, path)


def wire_config(path: Path, server: FeedServer, more: str = "") -> Path:
    """v1 of most tests: feed `wire`, rule `talks`, channel `out` (alerts.jsonl)."""
    return write_config(
        path,
        f"""
state: state.db
feeds:
  - {{name: wire, url: '{server.url("/wire.xml")}', interval: 10s}}
{more}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks], notify: [out]}}
""",
    )


def poll_lines(caplog: LogCaptureFixture, feed: str = "wire") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "monitor.poll"
        and getattr(r, "feed", None) == feed
        and r.getMessage().startswith("polled:")
    ]


def error_messages(caplog: LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name == "monitor.reload" and r.levelno >= 40
    )


# --- reloads that work -------------------------------------------------------------------------


async def test_reload_adds_a_feed_rule_and_channel_without_alerting_anything_again(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    feed_server.set("/extra.xml", rss([("e1", "Sanctions talks collapse")]), validators=False)
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
feeds:
  - name: wire
    url: '{feed_server.url("/wire.xml")}'
    interval: 10s
    first_fetch: {{backfill: 5}}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks], notify: [out]}}
""",
    )
    out, out2 = tmp_path / "alerts.jsonl", tmp_path / "alerts2.jsonl"
    async with supervised(path) as supervisor:
        # v1's first poll: the backfill alerts the matching backlog item.
        await until(lambda: alerts(out) == ["Ceasefire talks open in Geneva"], "v1's alert")
        wire_hits = feed_server.hits("/wire.xml")

        write_config(
            path,
            f"""
state: state.db
feeds:
  - name: wire
    url: '{feed_server.url("/wire.xml")}'
    interval: 10s
    first_fetch: {{backfill: 5}}
  - {{name: extra, url: '{feed_server.url("/extra.xml")}', interval: 10s}}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
  out2: {{type: jsonl, path: alerts2.jsonl}}
rules:
  - {{name: talks, any: [talks], notify: [out]}}
  - {{name: sanctions, any: ['sanction*'], notify: [out2]}}
""",
        )
        supervisor.request_reload()
        await until(lambda: supervisor.reloads == 1, "the reload")
        assert supervisor.refused == 0
        assert [r.name for r in supervisor.config.rules] == ["talks", "sanctions"]
        # The new feed is polled at once; its backlog (matching both rules) is only seeded.
        await until(seeded(path, "extra"), "the new feed's first poll")

        # Then: a new item on the new feed, and the old feed answering with what it had (an
        # item the new rule matches among them) plus something new that matches nothing.
        feed_server.set(
            "/extra.xml",
            rss([("e2", "New sanctions on oil"), ("e1", "Sanctions talks collapse")]),
            validators=False,
        )
        feed_server.set("/wire.xml", rss([("w3", "Weather: rain"), *WIRE]), validators=False)
        await poll_now(path, "wire", "extra")

        async def both_polled_again() -> bool:
            found = await states(path)
            return (
                found["wire"].items_seen == 3
                and feed_server.hits("/wire.xml") > wire_hits
                and alerts(out2) == ["New sanctions on oil"]
            )

        await until(both_polled_again, "the second poll of both feeds")
    assert await pending(path) == 0  # everything alerted reached its file
    assert alerts(out) == ["Ceasefire talks open in Geneva"]  # not again
    assert alerts(out2) == ["New sanctions on oil"]  # not the old "Sanctions on steel eased"


def held(body: str, arrived: threading.Event, release: threading.Event) -> Handler:
    """Answers `body` once `release` is set (a slow server), saying when a request came."""
    answer = raw_response(200, body.encode(), {"Content-Type": "application/rss+xml"})

    def handler(h: BaseHTTPRequestHandler) -> None:
        arrived.set()
        while not release.wait(0.02):
            if stopping(h).is_set():
                return
        answer(h)

    return handler


async def test_a_changed_url_is_seeded_again_even_with_a_poll_of_the_old_one_in_flight(
    tmp_path: Path, feed_server: FeedServer, caplog: LogCaptureFixture
) -> None:
    """The new config's feeds are stored while the old daemon still runs; a poll of the old
    URL finishing after that must not count as the new URL's first fetch (whose backlog would
    then all be alerted)."""
    caplog.set_level(logging.INFO, logger="monitor")
    old = rss([("o1", "Old talks story")])
    feed_server.set("/old.xml", old, validators=False)
    feed_server.set(
        "/new.xml",
        rss([("n1", "Talks in another paper"), ("n2", "More talks elsewhere")]),
        validators=False,
    )
    v1 = f"""
state: state.db
feeds:
  - {{name: wire, url: '{feed_server.url("/old.xml")}', interval: 10s}}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks], notify: [out]}}
"""
    path = write_config(tmp_path / "monitor.yaml", v1)
    async with Daemon(load_config(path)) as daemon:
        await daemon.once()  # seeded from the old URL
        await daemon.store.revive_feeds(["wire"], datetime.now(UTC))  # due again at once
    caplog.clear()
    arrived, release = threading.Event(), threading.Event()
    feed_server.handle("/old.xml", held(old, arrived, release))
    try:
        async with supervised(path) as supervisor:
            await until(arrived.is_set, "the poll of the old URL")
            write_config(path, v1.replace("/old.xml", "/new.xml"))
            supervisor.request_reload()

            async def url_changed() -> bool:
                return (await states(path))["wire"].url == feed_server.url("/new.xml")

            await until(url_changed, "the new config's feeds to be stored")
            release.set()  # the old URL's poll finishes during the old daemon's grace period
            await until(lambda: supervisor.reloads == 1, "the reload")
            await until(lambda: len(poll_lines(caplog)) == 2, "the poll of the new URL")
            assert (await states(path))["wire"].seeded
    finally:
        release.set()
    assert await pending(path) == 0
    assert alerts(tmp_path / "alerts.jsonl") == []
    assert poll_lines(caplog) == [
        "polled: 1 items, 0 new, 0 alerts",  # the old URL, as the new config was stored
        "polled: 2 items, 2 new, 0 alerts (first fetch)",  # the new URL: a new source
    ]


async def test_a_dead_feed_is_revived_by_a_new_url_in_a_reload(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    feed_server.set("/gone.xml", "gone", status=410, content_type="text/plain")
    feed_server.set("/moved.xml", rss([("m1", "Talks moved here")]), validators=False)
    gone = "  - {{name: gone, url: '{}', interval: 10s}}"
    path = wire_config(
        tmp_path / "monitor.yaml", feed_server, gone.format(feed_server.url("/gone.xml"))
    )
    async with supervised(path) as supervisor:

        async def dead() -> bool:
            found = (await states(path)).get("gone")
            return found is not None and found.dead_since is not None

        await until(dead, "the 410 to make the feed dead")
        wire_config(path, feed_server, gone.format(feed_server.url("/moved.xml")))
        supervisor.request_reload()
        await until(lambda: supervisor.reloads == 1, "the reload")
        await until(seeded(path, "gone"), "the moved feed's first poll")
        found = (await states(path))["gone"]
        assert found.dead_since is None
        assert found.consecutive_failures == 0
        assert found.url == feed_server.url("/moved.xml")
    assert feed_server.hits("/gone.xml") == 1  # a dead feed is not polled
    assert alerts(tmp_path / "alerts.jsonl") == []


async def test_watch_config_reloads_when_the_file_changes(
    tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload, "WATCH_EVERY", 0.05)
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    feed_server.set("/extra.xml", rss([("e1", "Talks")]), validators=False)
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    v1 = path.read_text(encoding="utf-8")
    async with supervised(path, watch=True) as supervisor:
        await until(seeded(path, "wire"), "the first poll")
        write_atomically(path, v1 + "  - {name: broken, any: [x], notify: [nowhere]}\n")
        await until(lambda: supervisor.refused == 1, "the invalid file to be refused")
        extra = f"  - {{name: extra, url: '{feed_server.url('/extra.xml')}', interval: 10s}}"
        write_atomically(path, v1.replace("channels:", f"{extra}\nchannels:"))
        await until(lambda: supervisor.reloads == 1, "the reload")
        await until(seeded(path, "extra"), "the new feed's first poll")
        assert supervisor.refused == 1
    assert alerts(tmp_path / "alerts.jsonl") == []


async def test_watch_config_notices_a_change_made_while_the_daemon_starts(
    tmp_path: Path, feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload, "WATCH_EVERY", 0.05)
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    stop = asyncio.Event()
    supervisor = Supervisor(load_config(path), stop, watch=True)  # the file as read
    truce = "  - {name: truce, any: [truce], notify: [out]}\n"
    write_atomically(path, path.read_text(encoding="utf-8") + truce)
    task = asyncio.create_task(supervisor.run())
    try:
        await until(lambda: supervisor.reloads == 1, "the reload")
        assert [r.name for r in supervisor.config.rules] == ["talks", "truce"]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=PATIENCE)


# --- reloads refused ---------------------------------------------------------------------------


def refused(supervisor: Supervisor, count: int) -> Callable[[], bool]:
    return lambda: supervisor.refused == count


async def test_refused_configs_are_logged_and_the_old_one_keeps_running_with_its_feeds(
    tmp_path: Path, feed_server: FeedServer, caplog: LogCaptureFixture
) -> None:
    """Invalid files (every problem logged with file and line), then a valid file whose
    Telegram channel fails to start: each is refused, and the old config keeps polling and
    delivering, the feed the refused config dropped included."""
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    feed_server.set("/extra.xml", rss([("e1", "Markets calm")]), validators=False)
    feed_server.set("/third.xml", rss([("t1", "Talks")]), validators=False)
    extra = f"  - {{name: extra, url: '{feed_server.url('/extra.xml')}', interval: 10s}}"
    path = wire_config(tmp_path / "monitor.yaml", feed_server, extra)
    v1 = path.read_text(encoding="utf-8")
    url = feed_server.url("/wire.xml")
    invalid = [
        ("feeds: [unclosed\n", "YAML syntax error"),
        (v1.replace("interval: 10s", "intervl: 10s", 1), "feeds[0].intervl: unknown key 'intervl'"),
        (
            v1 + "  - {name: codes, query: '/[unclosed/', notify: [out]}\n",
            "rules[1].query: rule 'codes': invalid regex '[unclosed'",
        ),
        (v1.replace(url, "ftp://example.org/feed.xml"), "feeds[0].url: unsupported scheme"),
    ]
    wrong = "999999:AAWrongToken_for-tests_0123456789abcdef"
    with FakeBot() as bot:
        async with supervised(path) as supervisor:
            await until(seeded(path, "wire", "extra"), "the first polls")
            hits = {p: feed_server.hits(p) for p in ("/wire.xml", "/extra.xml")}
            for n, (text, problem) in enumerate(invalid, start=1):
                caplog.clear()
                write_config(path, text)
                supervisor.request_reload()
                await until(refused(supervisor, n), f"refusal {n}")
                errors = error_messages(caplog)
                assert "reload refused: invalid config, keeping the running one" in errors
                assert f"{path}:" in errors  # the file and line of each problem
                assert problem in errors

            # Valid, but its Telegram channel's token is rejected; it also drops `extra` and
            # adds `third`.
            caplog.clear()
            third = f"  - {{name: third, url: '{feed_server.url('/third.xml')}', interval: 10s}}"
            telegram = (
                f"  desk: {{type: telegram, token: '{wrong}', chat_id: 42, "
                f"api_url: '{bot.api_url}'}}"
            )
            write_config(
                path,
                v1.replace(extra, third).replace("channels:\n", f"channels:\n{telegram}\n"),
            )
            supervisor.request_reload()
            await until(refused(supervisor, len(invalid) + 1), "the refusal")
            errors = error_messages(caplog)
            assert "reload refused: new config refused, keeping the running one" in errors
            assert "channels.desk: Telegram rejected the bot token" in errors
            assert wrong not in caplog.text  # a secret, even a wrong one
            assert "third" not in await states(path)  # the refused feed set was never stored

            assert supervisor.reloads == 0
            assert supervisor.config.feeds[0].url == url
            assert [f.name for f in supervisor.config.feeds] == ["wire", "extra"]
            # The old config still polls and delivers, the dropped feed included.
            feed_server.set("/wire.xml", rss([("w3", "Talks resume"), *WIRE]), validators=False)
            feed_server.set(
                "/extra.xml",
                rss([("e2", "Talks in extra"), ("e1", "Markets calm")]),
                validators=False,
            )
            await poll_now(path, "wire", "extra")
            await until(
                lambda: (
                    sorted(alerts(tmp_path / "alerts.jsonl")) == ["Talks in extra", "Talks resume"]
                ),
                "the old config's next polls",
            )
            assert all(feed_server.hits(p) > n for p, n in hits.items())
    assert feed_server.hits("/third.xml") == 0


async def test_a_config_naming_another_state_is_refused(
    tmp_path: Path, feed_server: FeedServer, caplog: LogCaptureFixture
) -> None:
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    async with supervised(path) as supervisor:
        await until(seeded(path, "wire"), "the first poll")
        write_config(path, path.read_text().replace("state: state.db", "state: other.db"))
        supervisor.request_reload()
        await until(lambda: supervisor.refused == 1, "the refusal")
        assert "names another state store" in error_messages(caplog)
        assert supervisor.reloads == 0
        assert supervisor.config.state.endswith("/state.db")
    assert not (tmp_path / "other.db").exists()


# --- a real process and SIGHUP -----------------------------------------------------------------


class LogLines:
    """JSON log lines of a process's stderr, read by a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[dict[str, object]] = queue.Queue()
        self.seen: list[dict[str, object]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"message": line.rstrip("\n"), "level": "raw"})

    def wait_for(self, check: Callable[[dict[str, object]], bool], what: str) -> dict[str, object]:
        give_up = time.monotonic() + PATIENCE
        while True:
            try:
                line = self.lines.get(timeout=max(give_up - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no log line for {what}; got {self.seen}") from None
            self.seen.append(line)
            if check(line):
                return line


def message(start: str, feed: str | None = None) -> Callable[[dict[str, object]], bool]:
    return lambda line: (
        str(line.get("message", "")).startswith(start)
        and (feed is None or line.get("feed") == feed)
    )


def test_sighup_reloads_a_running_process_and_refuses_an_invalid_file(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(WIRE), validators=False)
    feed_server.set("/extra.xml", rss([("e1", "Talks")]), validators=False)
    path = wire_config(tmp_path / "monitor.yaml", feed_server)
    v1 = path.read_text(encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "-c", str(path), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stderr is not None
            logs = LogLines(proc.stderr)
            logs.wait_for(message("polled:", "wire"), "the first poll")

            extra = f"  - {{name: extra, url: '{feed_server.url('/extra.xml')}', interval: 10s}}"
            write_config(path, v1.replace("channels:", f"{extra}\nchannels:"))
            proc.send_signal(signal.SIGHUP)
            reloaded = logs.wait_for(message("config reloaded"), "the reload")
            assert reloaded["message"] == "config reloaded: 2 feeds, 1 rules, 1 channels"
            logs.wait_for(message("polled:", "extra"), "the new feed's first poll")

            write_config(path, v1.replace("interval: 10s", "intervl: 10s"))
            proc.send_signal(signal.SIGHUP)
            refused = logs.wait_for(message("reload refused"), "the refusal")
            assert refused["level"] == "error"
            assert "unknown key 'intervl'" in str(refused["message"])
            assert proc.poll() is None  # still running

            proc.send_signal(signal.SIGTERM)
            logs.wait_for(message("stopped;"), "the clean stop")
            proc.wait(timeout=PATIENCE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, logs.seen
    # One daemon at a time: one "running:" line per config that ran.
    running = [line for line in logs.seen if message("running:")(line)]
    assert [str(r["message"]).split(",")[0] for r in running] == [
        "running: 1 feeds",
        "running: 2 feeds",
    ]
