"""Group commit: many small writes from concurrent callers, committed together.

A warm poll cycle ends thousands of polls with a one-row write each (a 304 Not Modified). One
transaction each costs a durable commit (an fsync) each; `Batcher` lets every caller await its
own write while the writes waiting at the same moment share one transaction. Nothing waits on
a timer: the first write starts a flush at once, and writes that arrive while it runs form the
next one, so batches grow only when the store is the bottleneck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: What a flush returns: for each request, in order, None (written) or the error to raise.
Flush = Callable[[Sequence[T]], Awaitable[Sequence[BaseException | None]]]


class Batcher(Generic[T]):
    """Collects requests of type T and hands them to `flush` in batches of at most `limit`.

    `submit` returns when its request is committed, or raises its error: the one `flush`
    reported for it, or the exception `flush` raised for the whole batch (nothing of that
    batch was written). On the event loop only; `drain` waits for every submitted request.
    """

    def __init__(self, flush: Flush[T], *, limit: int = 500) -> None:
        self._flush = flush
        self._limit = limit
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here too, so an error for a caller cancelled meanwhile is not reported
        # as never retrieved.
        future.add_done_callback(_retrieve)
        self._waiting.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        # Shielded: a caller cancelled while its write is in flight leaves its future to the
        # flush, which writes the request with the others all the same and settles it.
        await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait until every request submitted so far is settled."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
            try:
                outcomes = await self._flush([request for request, _ in batch])
                if len(outcomes) != len(batch):  # a flush bug must not leave callers waiting
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} requests")
            except Exception as exc:  # nothing of the batch was written: each caller hears why
                outcomes = [exc] * len(batch)
            except BaseException:  # cancelled (the loop is closing): so are the callers
                for _, future in [*batch, *self._waiting]:
                    future.cancel()
                self._waiting = []
                raise
            for (_, future), error in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
