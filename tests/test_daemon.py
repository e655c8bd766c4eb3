"""End to end, in process: a real feed server on loopback, the real fetcher and parser
processes, a real SQLite file, and the jsonl channel writing real files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from monitor.config import load_config
from monitor.daemon import Daemon, OnceReport
from tests.builders import rss, write_config
from tests.feedserver import FeedServer, never_answer

GOOD = [("g1", "Ceasefire talks open in Geneva"), ("g2", "Weather: rain expected")]


def config(tmp_path: Path, server: FeedServer, feeds: str = "", extra: str = "") -> Path:
    return write_config(
        tmp_path / "monitor.yaml",
        f"""
state: state.db
feeds:
  - name: wire
    url: {server.url("/wire.xml")}
{feeds}
channels:
  out: {{type: jsonl, path: alerts.jsonl}}
rules:
  - name: talks
    any: [talks, '"dead end"']
{extra}
""",
    )


async def once(path: Path) -> OnceReport:
    async with Daemon(load_config(path)) as daemon:
        return await daemon.once()


def alerts(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_first_fetch_seeds_then_a_new_matching_item_alerts_once(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(GOOD), validators=False)
    path = config(tmp_path, feed_server)

    first = await once(path)
    assert [p.status for p in first.polls] == ["ok"]
    assert first.polls[0].new_items == 2
    assert alerts(tmp_path) == []  # the backlog is remembered, not alerted

    feed_server.set(
        "/wire.xml",
        rss([("g3", "Talks reach a dead end", "Envoys leave"), ("g4", "Markets calm"), *GOOD]),
        validators=False,
    )
    second = await once(path)
    assert second.polls[0].new_items == 2
    assert second.dispatch.sent == 1
    [alert] = alerts(tmp_path)
    assert alert["title"] == "Talks reach a dead end"
    assert alert["feed"] == "wire"
    assert alert["rules"] == ["talks"]
    assert alert["terms"] == ["talks", '"dead end"']
    assert alert["link"] == "https://news.example/g3"

    third = await once(path)  # a restart: a new process, the same state file
    assert third.polls[0].new_items == 0
    assert len(alerts(tmp_path)) == 1


async def test_not_modified_answers_the_conditional_get_and_counts_as_success(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(GOOD))
    path = config(tmp_path, feed_server)
    await once(path)
    report = await once(path)
    assert report.polls[0].status == "not_modified"
    _, headers = feed_server.requests[-1]
    assert {k.lower() for k in headers} >= {"if-none-match", "if-modified-since"}
    async with Daemon(load_config(path)) as daemon:
        state = await daemon.store.feed_state("wire")
    assert state is not None
    assert state.consecutive_failures == 0
    assert state.seeded


async def test_backfill_alerts_the_newest_matching_items_on_first_fetch(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    entries = [("n1", "Talks resume"), ("n2", "Talks planned"), ("n3", "Talks ended")]
    feed_server.set("/wire.xml", rss(entries))
    feeds = "    first_fetch: {backfill: 2}"
    await once(config(tmp_path, feed_server, feeds))
    assert [a["title"] for a in alerts(tmp_path)] == ["Talks resume", "Talks planned"]


async def test_broken_feeds_are_recorded_and_do_not_stop_the_others(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss(GOOD), validators=False)
    feed_server.set("/500.xml", "oops", status=500)
    feed_server.set("/garbage.xml", b"\x00\xff\xfe garbage \x89PNG", content_type="text/plain")
    feed_server.set(
        "/page.html", "<html><body><h1>Sign in</h1></body></html>", content_type="text/html"
    )
    feed_server.handle("/hang.xml", never_answer())
    feeds = "\n".join(
        f"  - {{name: {name}, url: '{feed_server.url(p)}', timeout: {{total: 1s, read: 1s}}}}"
        for name, p in [
            ("five-hundred", "/500.xml"),
            ("garbage", "/garbage.xml"),
            ("page", "/page.html"),
            ("hang", "/hang.xml"),
        ]
    )
    path = config(tmp_path, feed_server, feeds)
    await once(path)
    feed_server.set("/wire.xml", rss([("g9", "Peace talks resume"), *GOOD]), validators=False)

    report = await once(path)
    status = {p.feed: p.status for p in report.polls}
    assert status == {
        "wire": "ok",
        "five-hundred": "error",
        "garbage": "error",
        "page": "error",
        "hang": "error",
    }
    assert [a["title"] for a in alerts(tmp_path)] == ["Peace talks resume"]

    async with Daemon(load_config(path)) as daemon:
        states = {s.name: s for s in await daemon.store.feed_states()}
    assert states["five-hundred"].last_error == "HTTP 500"
    assert "not a feed" in states["page"].last_error
    assert "timed out" in states["hang"].last_error
    assert states["garbage"].last_error
    for name in ("five-hundred", "garbage", "page", "hang"):
        assert states[name].consecutive_failures == 2
        assert not states[name].seeded
    assert states["wire"].consecutive_failures == 0


async def test_run_polls_on_schedule_delivers_and_stops_cleanly(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/wire.xml", rss([("r1", "Border talks stalled"), *GOOD]))
    path = config(tmp_path, feed_server, "    first_fetch: {backfill: 5}")
    stop = asyncio.Event()
    async with Daemon(load_config(path)) as daemon:
        task = asyncio.create_task(daemon.run(stop))
        for _ in range(600):  # bounded: both alerts written (one alone may be the first)
            if len(alerts(tmp_path)) >= 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        assert await daemon.store.pending_count() == 0
    assert [a["title"] for a in alerts(tmp_path)] == [
        "Border talks stalled",
        "Ceasefire talks open in Geneva",
    ]


async def test_a_muted_rule_sends_nothing_until_its_mute_ends(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    from datetime import UTC, datetime, timedelta

    feed_server.set("/wire.xml", rss(GOOD), validators=False)
    path = config(tmp_path, feed_server)
    async with Daemon(load_config(path)) as daemon:
        await daemon.once()
        now = datetime.now(UTC)
        await daemon.store.mute("talks", now + timedelta(hours=1), now=now)
        feed_server.set("/wire.xml", rss([("g3", "Talks resume"), *GOOD]), validators=False)
        report = await daemon.once()
        assert report.polls[0].new_items == 1
        assert alerts(tmp_path) == []  # seen, remembered, but silent
        await daemon.store.unmute("talks")
        feed_server.set(
            "/wire.xml",
            rss([("g4", "Talks stall"), ("g3", "Talks resume"), *GOOD]),
            validators=False,
        )
        await daemon.once()
    assert [a["title"] for a in alerts(tmp_path)] == ["Talks stall"]
