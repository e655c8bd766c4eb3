"""Group commit (`monitor.store.batch.Batcher`), and every store's 304s through it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from monitor.errors import StoreError
from monitor.models import CacheInfo
from monitor.store import MemoryStore, Store
from monitor.store.batch import Batcher
from tests.store.factories import MINUTE, T0, spec


class Recorder:
    """A flush that records its batches; requests named "bad" fail alone, and a batch holding
    "boom" fails as a whole."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, requests: Sequence[str]) -> list[BaseException | None]:
        self.batches.append(list(requests))
        await self.gate.wait()
        if "boom" in requests:
            raise StoreError("disk full")
        return [StoreError(f"no {r}") if r == "bad" else None for r in requests]


async def test_requests_arriving_during_a_flush_share_the_next_one() -> None:
    flush = Recorder()
    batcher = Batcher(flush)
    flush.gate.clear()
    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0)  # the first flush starts with "a" alone
    rest = [asyncio.create_task(batcher.submit(name)) for name in "bcd"]
    await asyncio.sleep(0)
    flush.gate.set()
    await asyncio.gather(first, *rest)
    assert flush.batches == [["a"], ["b", "c", "d"]]


async def test_a_batch_never_exceeds_the_limit() -> None:
    flush = Recorder()
    batcher = Batcher(flush, limit=2)
    await asyncio.gather(*(batcher.submit(str(n)) for n in range(5)))
    assert [len(b) for b in flush.batches] == [2, 2, 1]


async def test_an_error_for_one_request_fails_only_its_caller() -> None:
    batcher = Batcher(Recorder())
    results = await asyncio.gather(
        batcher.submit("a"), batcher.submit("bad"), batcher.submit("c"), return_exceptions=True
    )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], StoreError)
    assert str(results[1]) == "no bad"


async def test_a_failed_flush_fails_every_caller_of_that_batch_only() -> None:
    flush = Recorder()
    batcher = Batcher(flush)
    flush.gate.clear()
    lone = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0)
    doomed = [asyncio.create_task(batcher.submit(name)) for name in ("boom", "b")]
    await asyncio.sleep(0)
    flush.gate.set()
    results = await asyncio.gather(lone, *doomed, return_exceptions=True)
    assert results[0] is None
    assert all(isinstance(r, StoreError) and str(r) == "disk full" for r in results[1:])
    await batcher.submit("after")  # the batcher carries on
    assert flush.batches[-1] == ["after"]


async def test_a_cancelled_caller_does_not_cancel_the_write_of_the_others() -> None:
    flush = Recorder()
    batcher = Batcher(flush)
    flush.gate.clear()
    cancelled = asyncio.create_task(batcher.submit("a"))
    other = asyncio.create_task(batcher.submit("b"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    flush.gate.set()
    await other
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert flush.batches == [["a", "b"]]  # "a" was written all the same


async def test_drain_waits_for_every_submitted_request() -> None:
    flush = Recorder()
    batcher = Batcher(flush)
    flush.gate.clear()
    task = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0)
    drained = asyncio.create_task(batcher.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()
    flush.gate.set()
    await drained
    assert task.done()


# --- the stores' 304s, batched ----------------------------------------------------------------


async def test_concurrent_304s_are_all_recorded_and_an_unknown_feed_fails_alone(
    new_store: Callable[[], Store],
) -> None:
    names = [f"f{n}" for n in range(300)]
    async with new_store() as store:
        await store.sync_feeds([spec(name) for name in names], T0)
        cache = CacheInfo(etag='"v2"')
        results = await asyncio.gather(
            *(
                store.record_not_modified(name, now=T0, next_poll_at=T0 + MINUTE, cache=cache)
                for name in [*names, "never-synced", "f1"]
            ),
            return_exceptions=True,
        )
        assert results[:-2] == [None] * len(names)
        assert isinstance(results[-2], StoreError)
        assert "never-synced" in str(results[-2])
        assert results[-1] is None  # a feed twice in one batch
        states = {s.name: s for s in await store.feed_states()}
    assert all(states[n].cache.etag == '"v2"' for n in names)
    assert all(states[n].next_poll_at == T0 + MINUTE for n in names)


async def test_a_304_with_an_unstorable_validator_fails_alone(
    new_store: Callable[[], Store],
) -> None:
    store = new_store()
    if isinstance(store, MemoryStore):
        pytest.skip("a memory store keeps any str; only a database refuses lone surrogates")
    async with store:
        await store.sync_feeds([spec("a"), spec("b")], T0)
        bad, good = await asyncio.gather(
            store.record_not_modified(
                "a", now=T0, next_poll_at=T0 + MINUTE, cache=CacheInfo(etag='"\ud800"')
            ),
            store.record_not_modified("b", now=T0, next_poll_at=T0 + MINUTE),
            return_exceptions=True,
        )
        assert isinstance(bad, StoreError)
        assert good is None
        state = await store.feed_state("b")
    assert state is not None
    assert state.next_poll_at == T0 + MINUTE


async def test_304s_submitted_before_close_are_written(new_store: Callable[[], Store]) -> None:
    store = new_store()
    if isinstance(store, MemoryStore):
        pytest.skip("a memory store forgets everything at close")
    async with store:
        await store.sync_feeds([spec("a")], T0)
        pending = asyncio.create_task(
            store.record_not_modified("a", now=T0, next_poll_at=T0 + MINUTE)
        )
        await asyncio.sleep(0)
    await pending
    async with new_store() as reopened:
        state = await reopened.feed_state("a")
    assert state is not None
    assert state.next_poll_at == T0 + MINUTE
