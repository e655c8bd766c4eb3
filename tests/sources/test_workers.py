"""ParsePool: real worker processes, deadlines, crashes, memory cap, and thread mode."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources import workers
from monitor.sources.feed import parse_feed
from monitor.sources.workers import ParsePool

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SMALL = (
    b'<rss version="2.0"><channel><title>T</title>'
    b"<item><guid>1</guid><title>one</title></item></channel></rss>"
)


@functools.cache
def big_feed(items: int) -> bytes:
    # About 0.2 ms of feedparser time per item here: 60,000 items take ~12 s, far past the
    # deadlines. The DOCTYPE keeps it off parse_feed's fast path (which takes a tenth of that).
    entries = "".join(
        f"<item><guid>{n}</guid><title>t {n}</title><description>&lt;p&gt;{n}&lt;/p&gt;"
        "</description></item>"
        for n in range(items)
    )
    return f'<!DOCTYPE rss><rss version="2.0"><channel>{entries}</channel></rss>'.encode()


def processes(pool: ParsePool) -> list[BaseProcess]:
    return [lane.process for lane in pool._lanes]


async def parse(pool: ParsePool, body: bytes = SMALL) -> ParsedFeed:
    return await pool.parse(body, url="https://example.com/f", headers={}, feed="f", now=NOW)


async def test_parses_in_a_worker_process() -> None:
    async with ParsePool(workers=1, deadline=30) as pool:
        parsed = await parse(pool)
    assert [item.title for item in parsed.items] == ["one"]
    assert parsed.items[0].seen_at == NOW


async def test_a_bad_feed_raises_the_parse_error_from_the_worker() -> None:
    async with ParsePool(workers=1) as pool:
        with pytest.raises(ParseError, match="empty document"):
            await parse(pool, b"   ")


async def test_an_overrun_raises_and_the_pool_recovers() -> None:
    async with ParsePool(workers=1, deadline=1.0) as pool:
        with pytest.raises(ParseError, match=r"^parsing took longer than 1s; feed skipped$"):
            await parse(pool, big_feed(60_000))
        # The stuck worker was replaced: the next parse does not queue behind it.
        assert (await parse(pool)).items


async def test_a_crashed_worker_raises_and_the_pool_recovers() -> None:
    async with ParsePool(workers=1, deadline=60) as pool:

        async def kill_worker() -> None:
            await asyncio.sleep(0.3)
            for process in processes(pool):
                process.kill()

        outcome = await asyncio.gather(
            parse(pool, big_feed(60_000)), kill_worker(), return_exceptions=True
        )
        assert isinstance(outcome[0], ParseError)
        assert str(outcome[0]) == "parser worker crashed; feed skipped"
        assert (await parse(pool)).items


async def test_a_worker_that_died_while_idle_is_replaced() -> None:
    async with ParsePool(workers=1) as pool:
        await parse(pool)
        for process in processes(pool):
            process.kill()
            await asyncio.to_thread(process.join, 5)
        await asyncio.sleep(0.2)  # let the executor notice and mark itself broken
        assert (await parse(pool)).items


async def test_parses_run_side_by_side_and_an_overrun_spares_the_others() -> None:
    async with ParsePool(workers=2, deadline=1.5) as pool:
        slow, fast = await asyncio.gather(
            parse(pool, big_feed(60_000)), parse(pool), return_exceptions=True
        )
    assert isinstance(slow, ParseError)
    assert isinstance(fast, ParsedFeed)


async def test_a_parse_killed_by_another_ones_overrun_is_retried() -> None:
    async with ParsePool(workers=2, deadline=3.0) as pool:

        async def started_late() -> ParsedFeed:
            # Under 1 s of work, still running when the other parse overruns at 3 s: its worker
            # is killed with the pool, and it is retried on the fresh one.
            await asyncio.sleep(2.8)
            return await pool.parse(
                big_feed(4_000),
                url="https://e.com/f",
                headers={},
                feed="f",
                now=NOW,
                max_items=4_000,
            )

        slow, late = await asyncio.gather(
            parse(pool, big_feed(60_000)), started_late(), return_exceptions=True
        )
    assert isinstance(slow, ParseError)
    assert isinstance(late, ParsedFeed)
    assert len(late.items) == 4_000


async def test_workers_run_under_the_memory_cap() -> None:
    limit = 768 * 1024 * 1024
    async with ParsePool(workers=1, memory_limit=limit) as pool:
        (process,) = processes(pool)
        limits = await asyncio.to_thread(Path(f"/proc/{process.pid}/limits").read_text)
    (line,) = [line for line in limits.splitlines() if line.startswith("Max address space")]
    assert line.split()[3] == str(limit)  # soft limit, in bytes


def test_memory_error_in_a_worker_means_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object) -> ParsedFeed:
        raise MemoryError

    monkeypatch.setattr(workers, "_run", exhausted)
    with pytest.raises(ParseError, match=r"^feed too large to parse$"):
        workers._parse_in_worker(SMALL, "https://example.com/f", {}, "f", NOW, 500)


async def test_thread_mode_has_the_same_api() -> None:
    async with ParsePool(workers=0) as pool:
        parsed = await parse(pool)
        with pytest.raises(ParseError, match="not a feed"):
            await parse(pool, b"<html><body>hi</body></html>")
    assert parsed.items[0].title == "one"


async def test_parse_outside_the_context_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await parse(ParsePool(workers=0))


async def test_a_slow_parse_does_not_hold_up_the_other_feeds() -> None:
    finished: list[str] = []

    async def run(name: str, body: bytes) -> None:
        try:
            await parse(pool, body)
        except ParseError:
            finished.append(f"{name} failed")
        else:
            finished.append(name)

    async with ParsePool(workers=1, deadline=2.0, slow_after=0.2) as pool:
        slow = asyncio.create_task(run("slow", big_feed(60_000)))
        await asyncio.sleep(0.05)  # the slow one has the only worker
        await asyncio.gather(*(run(f"small{n}", SMALL) for n in range(5)))
        await slow
        # The spare lane served the others; once the slow parse is over, one lane is left.
        assert len(pool._lanes) == 1

    # With one worker and no spare, every small feed would have waited for the overrun (2 s).
    assert finished == [f"small{n}" for n in range(5)] + ["slow failed"]


async def test_spare_lanes_are_bounded() -> None:
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(processes(pool)))
            await asyncio.sleep(0.01)

    async with ParsePool(workers=1, deadline=1.5, slow_after=0.1) as pool:
        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.gather(
            *(parse(pool, big_feed(60_000)) for _ in range(4)), return_exceptions=True
        )
        watcher.cancel()
        assert all(isinstance(o, ParseError) for o in outcomes)
        assert len(pool._lanes) == 1
    assert most == 2  # four slow feeds at once: one worker and one spare, never more


async def test_a_parse_in_a_worker_equals_one_in_this_process() -> None:
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title><ttl>15</ttl>'
        b"<item><guid>1</guid><title>one</title><category>a</category>"
        b"<pubDate>Mon, 06 Sep 2010 00:01:00 +0000</pubDate></item>"
        b"<item><title>no id</title><description>&lt;b&gt;x</description></item>"
        b"<item></item></channel></rss>"
    )
    here = parse_feed(body, url="https://example.com/f", headers={}, feed="f", now=NOW)
    async with ParsePool(workers=1) as pool:
        there = await parse(pool, body)
    assert there == here  # every field, every item (they cross as plain tuples)
    assert (there.ttl, there.skipped, len(there.items)) == (15, 1, 2)
