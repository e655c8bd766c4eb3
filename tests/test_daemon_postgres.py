"""Daemons sharing one PostgreSQL database, in one process: what only several workers show.
Runs when MONITOR_TEST_POSTGRES holds a DSN (the 3-process run is tests/test_scaleout.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.models import Delivery
from tests.builders import rss, write_config
from tests.fakebot import FakeBot
from tests.feedserver import FeedServer

DSN = os.environ.get("MONITOR_TEST_POSTGRES", "")
pytestmark = pytest.mark.skipif(not DSN, reason="set MONITOR_TEST_POSTGRES to run it")


@pytest.fixture
def schema() -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"test_daemons_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def test_one_worker_answers_a_bot_command(
    tmp_path: Path, feed_server: FeedServer, schema: str
) -> None:
    """Telegram lets one process read a bot's updates: two workers with commands enabled
    must not both answer (nor fight with 409 Conflict); one leads, the other waits."""
    feed_server.set("/wire.xml", rss([]), validators=False)
    separator = "&" if "?" in DSN else "?"
    with FakeBot() as bot:
        path = write_config(
            tmp_path / "monitor.yaml",
            f"""
state: {DSN}{separator}schema={schema}
feeds:
  - name: wire
    url: {feed_server.url("/wire.xml")}
    interval: 1h
channels:
  desk:
    type: telegram
    token: {bot.token}
    chat_id: 42
    api_url: {bot.api_url}
    commands: {{allow: [42]}}
rules:
  - name: talks
    query: talks
    notify: [desk]
""",
        )
        config = load_config(path)
        stop = asyncio.Event()
        async with Daemon(config) as first, Daemon(config) as second:
            runs = [asyncio.create_task(d.run(stop)) for d in (first, second)]
            try:
                bot.push_message("/status", chat_id=42)
                await bot.wait_for_sent_async(1, timeout=30)
                await asyncio.sleep(1.0)  # room for a second answer, which must not come
            finally:
                stop.set()
                await asyncio.gather(*runs)
        answers = [s for s in bot.sent if s.chat_id == "42"]
        assert len(answers) == 1


async def test_a_worker_running_another_config_is_reported(
    tmp_path: Path, feed_server: FeedServer, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    feed_server.set("/wire.xml", rss([]), validators=False)
    separator = "&" if "?" in DSN else "?"
    paths = []
    for name, word in (("a.yaml", "talks"), ("b.yaml", "sanctions")):
        paths.append(
            write_config(
                tmp_path / name,
                f"""
state: {DSN}{separator}schema={schema}
feeds:
  - name: wire
    url: {feed_server.url("/wire.xml")}
channels:
  out: {{type: jsonl, path: {tmp_path / "alerts.jsonl"}}}
rules:
  - name: watch
    query: {word}
    notify: [out]
""",
            )
        )
    async with Daemon(load_config(paths[0])) as first, Daemon(load_config(paths[1])) as second:
        second.worker = "elsewhere:1"  # one process here: name the second as another host's
        await first.check_in()
        await second.check_in()
        assert "runs another config" not in caplog.text  # a moment of a rolling reload
        await first.check_in()
        await second.check_in()
        await first.check_in()  # its first sighting of the other was at the second round
    drift = [r.getMessage() for r in caplog.records if "runs another config" in r.getMessage()]
    assert [m.split(" runs")[0] for m in drift] == [f"worker {first.worker}", "worker elsewhere:1"]


async def test_deliveries_another_worker_took_during_a_long_batch_are_not_sent_twice(
    schema: str,
) -> None:
    """Worker A's batch outlasts its lease; worker B claims what is left meanwhile: A must
    leave those to B instead of sending them too."""
    from monitor.store.postgres import PostgresStore
    from tests.test_dispatch import Clock, SlowChannel, dispatcher, seed

    async with PostgresStore(DSN, schema=schema) as a, PostgresStore(DSN, schema=schema) as b:
        await seed(a, ["one", "two", "three"], ("desk",))
        clock = Clock()

        class TakenOver(SlowChannel):
            async def send(self, delivery: Delivery) -> None:
                await super().send(delivery)  # the clock passes the lease...
                taken.extend(await b.claim_deliveries("desk", clock.now, 10, timedelta(hours=1)))

        taken: list[Delivery] = []
        desk = TakenOver("desk", clock, timedelta(minutes=3))
        await dispatcher(a, clock, desk).run_once()
    assert desk.sent == ["one"]  # then "two" and "three" were left to B
    # B also took "one", in flight when its lease ran out: the one duplicate a lease allows.
    assert sorted(d.alert.title for d in taken) == ["one", "three", "two"]
