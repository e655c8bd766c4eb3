"""`monitor feeds` as a user runs it: the real command line in process, a real feed server, a
real state file, and a real daemon holding that file for the commands run beside it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from monitor import cli, feedscli, terminal
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.logs import register_secret
from monitor.models import FeedState
from tests.builders import rss, write_config
from tests.feedserver import FeedServer

#: A safety net only: waits end as soon as what they wait for happened.
PATIENCE = 45.0

#: The keys of each `--json` line (`monitor.feedscli.as_json`).
KEYS = {
    "feed", "url", "dead", "dead_since", "dead_reason", "failing_since",
    "consecutive_failures", "last_error", "last_warning", "last_polled_at",
    "last_success_at", "next_poll_at", "items_seen", "last_new_at", "cadence_seconds",
}  # fmt: skip
COLUMNS = ["FEED", "STATUS", "LAST SUCCESS", "FAILS", "NEXT POLL", "ITEMS", "EVERY", "ERROR"]


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`cli.main` sets up the root logger for a process: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def monitor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `monitor ARGV...` in process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(table: str) -> dict[str, dict[str, str]]:
    """The text table as {feed: {column: cell}}, cut at the header's column starts."""
    header, *lines = table.rstrip("\n").splitlines()
    starts = [header.index(c) for c in COLUMNS]
    ends = [*starts[1:], None]
    return {
        line[: starts[1]].strip(): {
            c: line[a:b].strip() for c, a, b in zip(COLUMNS, starts, ends, strict=True)
        }
        for line in lines
    }


def as_json(out: str) -> dict[str, dict[str, object]]:
    found = [json.loads(line) for line in out.splitlines()]
    assert all(set(f) == KEYS for f in found), found
    return {str(f["feed"]): f for f in found}


def config(tmp_path: Path, server: FeedServer, extra: str = "") -> Path:
    """Feeds `good` (two items), `missing` (404) and `gone` (410)."""
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
feeds:
  - {{name: good, url: '{server.url("/good.xml")}', interval: 10s}}
  - {{name: missing, url: '{server.url("/missing.xml")}', interval: 10s}}
  - {{name: gone, url: '{server.url("/gone.xml")}', interval: 10s}}
{extra}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - {{name: talks, any: [talks]}}
""",
    )


def serve(server: FeedServer) -> None:
    server.set("/good.xml", rss([("g1", "Talks open"), ("g2", "Rain")]), validators=False)
    server.set("/gone.xml", "gone for good", status=410, content_type="text/plain")


def parse_time(value: object) -> datetime:
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


# --- reading -----------------------------------------------------------------------------------


def test_before_any_run_every_configured_feed_is_new(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, feed_server)
    code, out, err = monitor(capsys, "feeds", "-c", str(path))
    assert code == 0, err
    table = rows(out)
    assert list(table) == ["good", "missing", "gone"]  # config order
    for row in table.values():
        assert row["STATUS"] == "new"
        assert row["LAST SUCCESS"] == "-"
        assert row["FAILS"] == "0"
        assert row["ITEMS"] == "0"
    assert not (tmp_path / "state.db").exists()  # reading created nothing

    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--json")
    assert code == 0, err
    found = as_json(out)
    assert list(found) == ["good", "missing", "gone"]
    assert found["good"]["url"] == feed_server.url("/good.xml")
    assert found["good"]["last_success_at"] is None
    assert found["good"]["dead"] is False


def test_after_a_poll_each_feed_shows_ok_failing_or_dead(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(feed_server)
    path = config(tmp_path, feed_server)
    before = datetime.now(UTC)
    code, _, err = monitor(capsys, "once", "-c", str(path))
    assert code == 0, err

    code, out, err = monitor(capsys, "feeds", "-c", str(path))
    assert code == 0, err
    table = rows(out)
    assert table["good"]["STATUS"] == "ok"
    assert table["good"]["LAST SUCCESS"].endswith(" s ago")
    assert table["good"]["NEXT POLL"].startswith("in ")
    assert (table["good"]["FAILS"], table["good"]["ITEMS"]) == ("0", "2")
    assert table["good"]["ERROR"] == ""
    assert table["missing"]["STATUS"].startswith("failing ")
    assert (table["missing"]["FAILS"], table["missing"]["ITEMS"]) == ("1", "0")
    assert table["missing"]["ERROR"] == "HTTP 404"
    assert table["missing"]["LAST SUCCESS"] == "-"
    assert table["gone"]["STATUS"] == "dead"
    assert table["gone"]["NEXT POLL"] == "never (dead)"
    assert table["gone"]["ERROR"] == "HTTP 410"
    assert all(line == line.rstrip() for line in out.splitlines())

    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--json")
    assert code == 0, err
    found = as_json(out)
    good, missing, gone = found["good"], found["missing"], found["gone"]
    assert good["dead"] is False
    assert good["items_seen"] == 2
    assert good["consecutive_failures"] == 0
    assert good["last_error"] == ""
    assert good["failing_since"] is None
    assert before <= parse_time(good["last_success_at"]) <= datetime.now(UTC)
    assert parse_time(good["next_poll_at"]) > parse_time(good["last_success_at"])
    assert parse_time(good["last_new_at"]) == parse_time(good["last_success_at"])
    assert good["cadence_seconds"] is None  # one poll with new items says nothing yet
    assert missing["dead"] is False
    assert missing["consecutive_failures"] == 1
    assert missing["last_error"] == "HTTP 404"
    assert missing["last_success_at"] is None
    assert parse_time(missing["failing_since"]) >= before
    assert gone["dead"] is True
    assert gone["dead_reason"] == "HTTP 410"
    assert parse_time(gone["dead_since"]) >= before
    assert gone["consecutive_failures"] == 1

    code, _, err = monitor(capsys, "once", "-c", str(path))
    assert code == 0, err
    code, out, _ = monitor(capsys, "feeds", "-c", str(path), "--json")
    found = as_json(out)
    assert found["missing"]["consecutive_failures"] == 2  # `once` polls every feed
    assert found["good"]["items_seen"] == 2  # the same two items, not counted again


def test_a_feed_added_to_the_config_is_new_and_a_removed_one_is_not_shown(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(feed_server)
    path = config(tmp_path, feed_server)
    assert monitor(capsys, "once", "-c", str(path))[0] == 0
    gone = f"  - {{name: gone, url: '{feed_server.url('/gone.xml')}', interval: 10s}}"
    later = f"  - {{name: later, url: '{feed_server.url('/later.xml')}', interval: 10s}}"
    write_config(path, path.read_text(encoding="utf-8").replace(gone, later))
    code, out, err = monitor(capsys, "feeds", "-c", str(path))
    assert code == 0, err
    table = rows(out)
    assert list(table) == ["good", "missing", "later"]
    assert [table[n]["STATUS"] for n in table] == ["ok", table["missing"]["STATUS"], "new"]
    assert table["missing"]["STATUS"].startswith("failing ")
    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--retry-dead")
    assert (code, out) == (0, "revived 0 feeds: -\n"), err  # `gone` is no longer configured


def test_invalid_config_and_unknown_feed_exit_2(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, feed_server)
    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--retry", "good", "nosuch")
    assert code == 2
    assert out == ""
    assert f"no feed named 'nosuch' in {path}" in err
    bad = write_config(
        tmp_path / "bad.yaml", "feeds:\n  - {url: 'https://x.example/f', intervl: 5m}\n"
    )
    code, _, err = monitor(capsys, "feeds", "-c", str(bad))
    assert code == 2
    assert "unknown key 'intervl'" in err
    assert not (tmp_path / "state.db").exists()


def test_an_unreadable_state_file_exits_1(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, feed_server)
    (tmp_path / "state.db").write_bytes(b"not a database, not even close" * 100)
    code, out, err = monitor(capsys, "feeds", "-c", str(path))
    assert code == 1
    assert out == ""
    assert err.startswith("state store: state file ")


def test_secrets_in_feed_urls_are_never_printed(
    tmp_path: Path,
    feed_server: FeedServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEED_KEY", "kq93-secret-token-77")
    feed_server.set("/private.xml", "no", status=500)
    path = write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
feeds:
  - {{name: private, url: '{feed_server.url("/private.xml")}?key=${{FEED_KEY}}'}}
rules:
  - {{name: r, any: [talks]}}
""",
    )
    assert monitor(capsys, "once", "-c", str(path))[0] == 0
    assert feed_server.requests[-1][0].endswith("key=kq93-secret-token-77")
    for args in ((), ("--json",)):
        code, out, err = monitor(capsys, "feeds", "-c", str(path), *args)
        assert code == 0, err
        assert "kq93-secret-token-77" not in out + err
    assert as_json(out)["private"]["url"] == feed_server.url("/private.xml") + "?key=<redacted>"


# --- reviving ----------------------------------------------------------------------------------


def test_retry_revives_a_dead_feed_and_makes_it_due_now(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(feed_server)
    path = config(tmp_path, feed_server)
    assert monitor(capsys, "once", "-c", str(path))[0] == 0

    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--retry", "gone")
    assert code == 0, err
    assert out == "revived 1 feeds: gone\n"
    found = as_json(monitor(capsys, "feeds", "-c", str(path), "--json")[1])
    gone = found["gone"]
    assert gone["dead"] is False
    assert gone["dead_since"] is None
    assert gone["consecutive_failures"] == 0
    assert parse_time(gone["next_poll_at"]) <= datetime.now(UTC)
    assert found["missing"]["consecutive_failures"] == 1  # not named: untouched

    # The publisher brings it back; the next poll succeeds.
    feed_server.set("/gone.xml", rss([("b1", "Back again")]), validators=False)
    assert monitor(capsys, "once", "-c", str(path))[0] == 0
    assert rows(monitor(capsys, "feeds", "-c", str(path))[1])["gone"]["STATUS"] == "ok"


def test_retry_dead_revives_every_dead_feed_and_only_those(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(feed_server)
    feed_server.set("/closed.xml", "closed", status=410, content_type="text/plain")
    closed = f"  - {{name: closed, url: '{feed_server.url('/closed.xml')}', interval: 10s}}"
    path = config(tmp_path, feed_server, closed)
    assert monitor(capsys, "once", "-c", str(path))[0] == 0
    before = as_json(monitor(capsys, "feeds", "-c", str(path), "--json")[1])

    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--retry-dead")
    assert code == 0, err
    assert out == "revived 2 feeds: gone, closed\n"
    after = as_json(monitor(capsys, "feeds", "-c", str(path), "--json")[1])
    assert [n for n, f in after.items() if f["dead"]] == []
    assert after["missing"] == before["missing"]  # failing, not dead: left alone
    assert after["good"] == before["good"]

    code, out, err = monitor(capsys, "feeds", "-c", str(path), "--retry-dead")
    assert (code, out) == (0, "revived 0 feeds: -\n")


# --- beside a running daemon -------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    give_up = time.monotonic() + PATIENCE
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_feeds_and_retry_work_beside_a_running_daemon(
    tmp_path: Path, feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(feed_server)
    path = config(tmp_path, feed_server)

    async def feeds(*args: str) -> tuple[int, str, str]:
        # In a thread: the command runs its own event loop, as in its own process.
        return await asyncio.to_thread(monitor, capsys, "feeds", "-c", str(path), *args)

    async def shown() -> dict[str, dict[str, object]]:
        code, out, err = await feeds("--json")
        assert code == 0, err
        return as_json(out)

    stop = asyncio.Event()
    async with Daemon(load_config(path)) as daemon:  # holds the state file's instance lock
        task = asyncio.create_task(daemon.run(stop))
        try:

            async def all_polled() -> bool:
                found = await shown()
                return found["gone"]["dead"] is True and found["good"]["items_seen"] == 2

            await until(all_polled, "the first polls")
            code, out, err = await feeds()
            assert code == 0, err
            table = rows(out)
            assert (table["good"]["STATUS"], table["gone"]["STATUS"]) == ("ok", "dead")

            feed_server.set("/gone.xml", rss([("b1", "Talks are back")]), validators=False)
            code, out, err = await feeds("--retry", "gone")
            assert (code, out) == (0, "revived 1 feeds: gone\n"), err

            async def back() -> bool:
                gone = (await shown())["gone"]
                return gone["last_success_at"] is not None

            await until(back, "the daemon to poll the revived feed")  # on its next tick
            gone = (await shown())["gone"]
            assert gone["dead"] is False
            assert gone["items_seen"] == 1
            assert feed_server.hits("/gone.xml") == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=PATIENCE)


# --- the table itself ---------------------------------------------------------------------------


def test_the_table_redacts_before_cutting_and_colours_the_status_on_a_terminal() -> None:
    now = datetime.now(UTC)
    secret = "Zq8-feed-key-Zq8"
    register_secret(secret)
    states = [
        FeedState(name="fine", url="https://a.example/", last_success_at=now),
        FeedState(
            name="keyed",
            url="https://b.example/",
            failing_since=now,
            consecutive_failures=1,
            # The secret straddles the cut at ERROR_WIDTH: cut first, its start would show.
            last_error="x" * (feedscli.ERROR_WIDTH - 8) + secret,
        ),
        FeedState(name="gone", url="https://c.example/", dead_since=now, dead_reason="HTTP 410"),
    ]
    rows = feedscli.table(states, now, ["gone", "keyed", "fine"])
    assert [row[0].plain for row in rows] == ["gone", "keyed", "fine"]  # config order
    error = rows[1][-1].plain
    assert "Zq8" not in error
    assert error.startswith("x" * (feedscli.ERROR_WIDTH - 8) + "<red")
    assert len(error) == feedscli.ERROR_WIDTH

    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=True, width=100, color_system="standard")
    terminal.print_table(out, feedscli.COLUMNS, rows)
    shown = buffer.getvalue()
    assert "\x1b[32mok" in shown  # green
    assert "\x1b[1;31mdead" in shown  # bold red
    assert "Zq8" not in shown
