"""ParsePool: real worker processes, deadlines, crashes, memory cap, and thread mode."""

from __future__ import annotations

import asyncio
import functools
import resource
from datetime import UTC, datetime

import pytest

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources import workers
from monitor.sources.workers import ParsePool

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SMALL = (
    b'<rss version="2.0"><channel><title>T</title>'
    b"<item><guid>1</guid><title>one</title></item></channel></rss>"
)


@functools.cache
def big_feed(items: int) -> bytes:
    # About 0.2 ms of parse time per item here: 60,000 items take ~12 s, far past the deadlines.
    entries = "".join(
        f"<item><guid>{n}</guid><title>t {n}</title><description>&lt;p&gt;{n}&lt;/p&gt;"
        "</description></item>"
        for n in range(items)
    )
    return f'<rss version="2.0"><channel>{entries}</channel></rss>'.encode()


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
            assert pool._executor is not None
            for process in pool._executor._processes.values():
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
        assert pool._executor is not None
        for process in pool._executor._processes.values():
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
        assert pool._executor is not None
        future = pool._executor.submit(resource.getrlimit, resource.RLIMIT_AS)
        soft, _hard = await asyncio.wrap_future(future)
    assert soft == limit


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
