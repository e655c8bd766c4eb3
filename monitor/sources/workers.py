"""ParsePool: parse_feed off the event loop, in worker processes with a deadline and memory cap.

feedparser is pure-Python CPU work (seconds for a 10 MB feed) and its lenient parser has
pathological inputs; a process can be killed when it overruns, a thread cannot.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from multiprocessing.context import BaseContext
from types import TracebackType

from monitor.errors import ParseError
from monitor.models import ParsedFeed
from monitor.sources.feed import parse_feed

#: Address-space cap of each worker process.
DEFAULT_MEMORY_LIMIT = 1 << 30


class ParsePool:
    """Runs `parse_feed` in `workers` processes (0: in a thread, for quick tools).

    Lifecycle: `async with pool:` starts the workers and kills them on exit. `parse` may be
    called concurrently from one event loop; at most `workers` parses run at once and the
    deadline counts from when a parse gets a worker, not from when it started waiting.
    A parse over the deadline, a crashed worker, or a worker out of memory raises ParseError,
    and the workers are replaced so the next parse starts clean. In thread mode an overrunning
    parse cannot be stopped: it raises ParseError but keeps its thread until it finishes.
    """

    def __init__(
        self,
        workers: int = 1,
        deadline: float = 30.0,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.workers = max(workers, 0)
        self.deadline = deadline
        self.memory_limit = memory_limit
        self._executor: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    async def __aenter__(self) -> ParsePool:
        self._slots = asyncio.Semaphore(max(self.workers, 1))
        if self.workers:
            # Off the loop: the first start launches the fork server, which imports feedparser.
            self._executor = await asyncio.to_thread(self._start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(_stop, executor)
        self._slots = None

    async def parse(
        self,
        body: bytes,
        *,
        url: str,
        headers: Mapping[str, str],
        feed: str,
        now: datetime,
        max_items: int = 500,
    ) -> ParsedFeed:
        """`parse_feed` in a worker; raises ParseError for a bad feed or an overrunning parse."""
        if self._slots is None:
            raise RuntimeError("ParsePool is not running; use 'async with pool:'")
        args = (body, url, dict(headers), feed, now, max_items)
        async with self._slots:
            if not self.workers:
                return await self._in_thread(args)
            # One retry, only when another parse's overrun or crash killed this one's worker.
            for _attempt in range(2):
                executor = self._executor
                if executor is None:
                    raise ParseError("parser pool was closed; feed skipped")
                try:
                    return await self._in_process(executor, args)
                except BrokenProcessPool as exc:
                    if executor is self._executor:  # our own worker died: replace it, give up
                        self._recycle()
                        raise ParseError("parser worker crashed; feed skipped") from exc
            raise ParseError("parser workers were restarted twice; feed skipped")

    async def _in_process(self, executor: ProcessPoolExecutor, args: _Args) -> ParsedFeed:
        try:
            submitted = executor.submit(_parse_in_worker, *args)
        except BrokenProcessPool:  # a worker died while idle: not this feed's fault
            executor = self._recycle()
            submitted = executor.submit(_parse_in_worker, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(submitted), self.deadline)
        except TimeoutError as exc:
            if executor is self._executor:
                self._recycle()
            raise ParseError(self._overrun()) from exc
        except (ParseError, BrokenProcessPool):
            raise
        except Exception as exc:  # e.g. a result that failed to pickle: still this feed's failure
            raise ParseError(f"parser worker failed: {type(exc).__name__}: {exc}"[:300]) from exc

    async def _in_thread(self, args: _Args) -> ParsedFeed:
        try:
            return await asyncio.wait_for(asyncio.to_thread(_run, *args), self.deadline)
        except TimeoutError as exc:
            raise ParseError(self._overrun()) from exc

    def _overrun(self) -> str:
        return f"parsing took longer than {self.deadline:g}s; feed skipped"

    def _start(self) -> ProcessPoolExecutor:
        # forkserver/spawn: the daemon has threads (asyncio, httpx, sqlite), and fork() copies
        # their locks mid-use. forkserver forks from a clean single-threaded server process.
        context: BaseContext
        if "forkserver" in multiprocessing.get_all_start_methods():
            forkserver = multiprocessing.get_context("forkserver")
            # Import the parser once in the server, so a fresh worker is a cheap fork of it.
            # Only takes effect before the server's first start; harmless afterwards.
            forkserver.set_forkserver_preload([__name__])
            context = forkserver
        else:
            context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_limit_memory,
            initargs=(self.memory_limit,),
        )
        # Start the workers now, so their start-up is not charged to the first deadline.
        for _ in range(self.workers):
            executor.submit(_ready)
        return executor

    def _recycle(self) -> ProcessPoolExecutor:
        """Kill every worker of the current executor (a stuck one never returns) and start anew."""
        old, self._executor = self._executor, self._start()
        if old is not None:
            _kill(old)
            old.shutdown(wait=False, cancel_futures=True)
        return self._executor


_Args = tuple[bytes, str, dict[str, str], str, datetime, int]


def _run(
    body: bytes, url: str, headers: dict[str, str], feed: str, now: datetime, max_items: int
) -> ParsedFeed:
    return parse_feed(body, url=url, headers=headers, feed=feed, now=now, max_items=max_items)


def _parse_in_worker(
    body: bytes, url: str, headers: dict[str, str], feed: str, now: datetime, max_items: int
) -> ParsedFeed:
    try:
        return _run(body, url, headers, feed, now, max_items)
    except MemoryError as exc:  # hit RLIMIT_AS somewhere parse_feed does not catch it
        raise ParseError("feed too large to parse") from exc


def _limit_memory(limit: int) -> None:
    """Worker initializer: cap the address space so a runaway parse fails with MemoryError."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _ready() -> None:
    """No-op task that makes a worker process start."""


def _kill(executor: ProcessPoolExecutor) -> None:
    # Python 3.14 has ProcessPoolExecutor.kill_workers(); before it, _processes is the only handle.
    for process in list((executor._processes or {}).values()):
        if process.is_alive():
            process.kill()


def _stop(executor: ProcessPoolExecutor) -> None:
    _kill(executor)
    executor.shutdown(wait=True, cancel_futures=True)
