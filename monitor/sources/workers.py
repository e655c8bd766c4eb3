"""ParsePool: parse_feed off the event loop, in worker processes with a deadline and memory cap.

feedparser is pure-Python CPU work (seconds for a 10 MB feed) and its lenient parser has
pathological inputs; a process can be killed when it overruns, a thread cannot.

Each worker is a lane of its own: one process and a socket pair, written and read by the event
loop itself (no executor threads: a parse costs the daemon's process the pickling and little
else). An overrun or a crash kills only the worker that had it, and a slow parse does not take
capacity from the others: once a parse has run for `slow_after` seconds, a spare lane starts
beside it, so `workers` lanes stay free for every other feed until the slow one finishes or
hits its deadline (at most `workers` spares, however many feeds are slow at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import pickle
import resource
import signal
import socket
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import TracebackType

from monitor.errors import ParseError
from monitor.models import Item, ParsedFeed
from monitor.sources.feed import parse_feed

#: Address-space cap of each worker process.
DEFAULT_MEMORY_LIMIT = 1 << 30
#: Seconds a parse may run before a spare worker starts beside it.
SLOW_AFTER = 2.0
#: Seconds a new worker may take to start.
START_TIMEOUT = 60.0
_HEADER = 8  # bytes of a frame's length prefix


class _Broken(Exception):
    """The worker process is gone (crashed, killed, out of memory)."""


class _Lane:
    """One worker process and the parent's end of its socket pair."""

    def __init__(self, context: BaseContext, memory_limit: int) -> None:
        multiprocessing.active_children()  # reaps the lanes retired or killed before
        parent, child = socket.socketpair()
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child, memory_limit), daemon=True, name="monitor-parser"
        )
        try:
            self.process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent

    async def ready(self) -> None:
        """Wait for the worker's hello (it is up, with its memory cap set)."""
        if await self._receive() != b"ready":
            raise _Broken

    async def call(self, args: _Args) -> ParsedFeed:
        loop = asyncio.get_running_loop()
        data = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await loop.sock_sendall(self.sock, len(data).to_bytes(_HEADER, "big") + data)
        except OSError as exc:
            raise _Broken from exc
        kind, value = pickle.loads(await self._receive())
        if kind == "ok":
            return _unpack(value)
        assert isinstance(value, BaseException)
        raise value

    async def _receive(self) -> bytes:
        size = int.from_bytes(await self._exactly(_HEADER), "big")
        return await self._exactly(size)

    async def _exactly(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            try:
                n = await loop.sock_recv_into(self.sock, view[got:])
            except OSError as exc:
                raise _Broken from exc
            if not n:
                raise _Broken  # EOF: the worker died
            got += n
        return bytes(buffer)

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.sock.close()

    def close(self) -> None:
        """Let the worker finish (closing its socket ends its loop), killing it if it must."""
        self.sock.close()


class ParsePool:
    """Runs `parse_feed` in `workers` processes (0: in a thread, for quick tools).

    Lifecycle: `async with pool:` starts the workers (and waits until they are up) and kills
    them on exit. `parse` may be called concurrently from one event loop; at most `workers`
    parses run at once, plus one for each parse running longer than `slow_after` (see the
    module docstring), and the deadline counts from when a parse gets a worker, not from when
    it started waiting. A parse over the deadline, a crashed worker, or a worker out of memory
    raises ParseError, and that worker is replaced so the next parse starts clean. In thread
    mode an overrunning parse cannot be stopped: it raises ParseError but keeps its thread
    until it finishes.
    """

    def __init__(
        self,
        workers: int = 1,
        deadline: float = 30.0,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        slow_after: float = SLOW_AFTER,
    ) -> None:
        self.workers = max(workers, 0)
        self.deadline = deadline
        self.memory_limit = memory_limit
        self.slow_after = slow_after
        self._running = False
        self._thread_slot: asyncio.Semaphore | None = None
        self._context: BaseContext | None = None
        #: Every live lane; idle ones are also in `_idle`, lanes running a parse past
        #: `slow_after` in `_slow`. Parses wait for a lane in `_waiting`.
        self._lanes: set[_Lane] = set()
        self._idle: deque[_Lane] = deque()
        self._slow: set[_Lane] = set()
        self._waiting: deque[asyncio.Future[_Lane]] = deque()
        self._starting: set[asyncio.Task[None]] = set()
        #: Lanes being created in a thread; awaited at exit, so none outlives the pool.
        self._births: set[asyncio.Future[_Lane]] = set()

    async def __aenter__(self) -> ParsePool:
        self._thread_slot = asyncio.Semaphore(1)
        self._running = True
        if self.workers:
            # Off the loop: the first start launches the fork server, which imports feedparser.
            self._context = await asyncio.to_thread(_context)
            try:
                lanes = await asyncio.gather(*(self._new_lane() for _ in range(self.workers)))
            except BaseException as exc:
                await self.__aexit__(None, None, None)
                if isinstance(exc, _Broken | OSError | TimeoutError):
                    raise RuntimeError(f"parser workers did not start: {exc!r}") from exc
                raise
            self._idle.extend(lanes)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        for task in list(self._starting):
            task.cancel()
        if self._starting:
            await asyncio.wait(set(self._starting))
        # A start cancelled above still finishes in its thread: wait for it and kill the lane
        # (its done-callback would run too late once the loop is gone, leaking its socket).
        for born in await asyncio.gather(*self._births, return_exceptions=True):
            if isinstance(born, _Lane):
                born.kill()
        for waiter in self._waiting:
            waiter.cancel()
        self._waiting.clear()
        self._idle.clear()
        self._slow.clear()
        lanes, self._lanes = list(self._lanes), set()
        if lanes:
            await asyncio.to_thread(_stop, lanes)
        self._thread_slot = None

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
        if not self._running or self._thread_slot is None:
            raise RuntimeError("ParsePool is not running; use 'async with pool:'")
        args = (body, url, dict(headers), feed, now, max_items)
        if not self.workers:
            async with self._thread_slot:
                return await self._in_thread(args)
        return await self._in_lane(await self._acquire(), args)

    # --- one parse -----------------------------------------------------------------------------

    async def _in_lane(self, lane: _Lane, args: _Args) -> ParsedFeed:
        """Parse on `lane`; then hand the lane (or what replaced it) on, whatever happened."""
        call: asyncio.Task[ParsedFeed] | None = None
        try:
            if not lane.alive():  # its worker died while idle: not this feed's fault
                self._kill(lane)
                lane = await self._new_lane()
            call = asyncio.get_running_loop().create_task(lane.call(args))
            done, _ = await asyncio.wait({call}, timeout=min(self.slow_after, self.deadline))
            if not done:
                self._slow.add(lane)
                self._grow()  # a spare lane, so the other feeds do not wait on this one
                await asyncio.wait_for(call, max(self.deadline - self.slow_after, 0.0))
            return call.result()
        except TimeoutError as exc:
            self._kill(lane)
            raise ParseError(self._overrun()) from exc
        except _Broken as exc:  # this parse crashed (or exhausted) its worker
            self._kill(lane)
            raise ParseError("parser worker crashed; feed skipped") from exc
        except ParseError:
            raise
        except asyncio.CancelledError:
            if call is None or not call.done():
                self._kill(lane)  # nobody waits for that parse any more: free its worker
            raise
        except Exception as exc:  # e.g. a result that failed to pickle: still this feed's failure
            raise ParseError(f"parser worker failed: {type(exc).__name__}: {exc}"[:300]) from exc
        finally:
            if call is not None and not call.done():
                call.cancel()
            self._release(lane)
            while self._running and self._capacity() + len(self._starting) < self.workers:
                self._grow()  # a killed worker's replacement

    async def _in_thread(self, args: _Args) -> ParsedFeed:
        try:
            return await asyncio.wait_for(asyncio.to_thread(_run, *args), self.deadline)
        except TimeoutError as exc:
            raise ParseError(self._overrun()) from exc

    def _overrun(self) -> str:
        return f"parsing took longer than {self.deadline:g}s; feed skipped"

    # --- lanes ---------------------------------------------------------------------------------

    def _capacity(self) -> int:
        """Lanes that are not held by a slow parse."""
        return len(self._lanes) - len(self._slow)

    async def _new_lane(self) -> _Lane:
        """A started worker (up, so its start-up is charged to no parse's deadline)."""
        assert self._context is not None
        # Started in a thread (the fork server handshake blocks); if we are cancelled
        # meanwhile, the lane is killed as soon as it exists rather than left running.
        starting = asyncio.ensure_future(asyncio.to_thread(_Lane, self._context, self.memory_limit))
        self._births.add(starting)
        starting.add_done_callback(self._births.discard)
        try:
            lane = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_kill_started)
            raise
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await lane.ready()
        except BaseException:
            lane.kill()
            raise
        self._lanes.add(lane)
        return lane

    def _grow(self) -> None:
        """Start one more lane in the background (up to twice `workers` in all)."""
        if not self._running or len(self._lanes) + len(self._starting) >= 2 * self.workers:
            return
        task = asyncio.get_running_loop().create_task(self._add_lane())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _add_lane(self) -> None:
        try:
            lane = await self._new_lane()
        except (_Broken, OSError, TimeoutError):
            return  # the next parse that needs it tries again
        if self._running:
            self._release(lane)
        else:
            self._kill(lane)

    async def _acquire(self) -> _Lane:
        if self._idle:
            return self._idle.popleft()
        waiter: asyncio.Future[_Lane] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over just as we were cancelled
            raise

    def _release(self, lane: _Lane) -> None:
        """Hand `lane` to the next waiting parse or keep it idle; retire it instead when more
        than `workers` lanes are free for work (a slow parse ended, its spare took over)."""
        if lane not in self._lanes:
            return  # killed
        self._slow.discard(lane)
        if self._capacity() > self.workers or not self._running:
            self._lanes.discard(lane)
            lane.close()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(lane)
                return
        self._idle.append(lane)

    def _kill(self, lane: _Lane) -> None:
        """Kill `lane`'s worker (a stuck one never returns) and drop the lane."""
        self._lanes.discard(lane)
        self._slow.discard(lane)
        lane.kill()


_Args = tuple[bytes, str, dict[str, str], str, datetime, int]


def _kill_started(starting: asyncio.Future[_Lane]) -> None:
    if not starting.cancelled() and starting.exception() is None:
        starting.result().kill()


def _context() -> BaseContext:
    # forkserver/spawn: the daemon has threads (asyncio, sqlite), and fork() copies their
    # locks mid-use. forkserver forks from a clean single-threaded server process.
    if "forkserver" in multiprocessing.get_all_start_methods():
        forkserver = multiprocessing.get_context("forkserver")
        # Import the parser once in the server, so a fresh worker is a cheap fork of it.
        # Only takes effect before the server's first start; harmless afterwards.
        forkserver.set_forkserver_preload([__name__])
        return forkserver
    return multiprocessing.get_context("spawn")


# --- the worker side ---------------------------------------------------------------------------


def _serve(sock: socket.socket, memory_limit: int) -> None:
    """A worker's loop: read a request frame, parse, answer; until the parent hangs up."""
    # The daemon handles Ctrl-C (and stops its workers); a terminal's SIGINT reaches the
    # whole process group, and must not turn into a parse failure here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory(memory_limit)
    with contextlib.suppress(OSError):  # the parent closed its end: nothing left to do
        _send(sock, b"ready")
        while (request := _read(sock)) is not None:
            try:
                parsed = _parse_in_worker(*pickle.loads(request))
                reply = pickle.dumps(("ok", _pack(parsed)), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # every failure of a parse goes back to the parent
                reply = _error_reply(exc)
            _send(sock, reply)


# A ParsedFeed crosses as plain tuples: unpickling frozen slotted dataclasses goes through
# dataclasses' __setstate__, which took half the daemon's share of a parse.
_FEED_FIELDS = tuple(f.name for f in dataclasses.fields(ParsedFeed))
_ITEM_FIELDS = tuple(f.name for f in dataclasses.fields(Item))


def _pack(parsed: ParsedFeed) -> tuple[object, ...]:
    items = tuple(tuple(getattr(item, name) for name in _ITEM_FIELDS) for item in parsed.items)
    return tuple(items if name == "items" else getattr(parsed, name) for name in _FEED_FIELDS)


def _unpack(packed: tuple[object, ...]) -> ParsedFeed:
    values = dict(zip(_FEED_FIELDS, packed, strict=True))
    rows = values["items"]
    assert isinstance(rows, tuple)
    values["items"] = tuple(Item(*row) for row in rows)
    return ParsedFeed(**values)  # type: ignore[arg-type]


def _error_reply(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(("error", exc))
    except Exception:  # an exception that does not pickle: say what it was
        message = f"parser worker failed: {type(exc).__name__}: {exc}"[:300]
        return pickle.dumps(("error", ParseError(message)))


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(len(data).to_bytes(_HEADER, "big") + data)


def _read(sock: socket.socket) -> bytes | None:
    header = _read_exactly(sock, _HEADER)
    if header is None:
        return None
    return _read_exactly(sock, int.from_bytes(header, "big"))


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            return None
        got += n
    return bytes(buffer)


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
    """Worker start: cap the address space so a runaway parse fails with MemoryError."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _stop(lanes: list[_Lane]) -> None:
    for lane in lanes:
        lane.kill()
    for lane in lanes:
        lane.process.join(5)
