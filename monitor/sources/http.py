"""HttpFetcher: the one guarded HTTP path for feeds (HTTP/1.1, conditional GET, hard bounds).

Requests go over a small keep-alive connection pool of our own: asyncio transports for the
sockets and TLS, h11 (the HTTP/1.1 state machine httpx itself uses) for the protocol. httpx's
client stack cost ~2.5 ms of CPU per request on a 2-core machine, several times the rest of a
not-modified poll; this path costs under a tenth of that. httpx is still used for URLs
(parsing, IDNA, joining redirects). A connection goes back to the pool only when its response
was read to the end and nothing else arrived; a request that finds a pooled connection closed
by the server before any byte of the response is sent again once, on a new connection.

Bounds, each measured on httpx 0.28.1 (shared/BAD-INPUTS.md §5) and kept here: a whole-fetch
deadline (a read timeout is per read, so a 1-byte-per-second drip never trips it), a cap on
*decoded* bytes (decoders inflate a whole wire chunk at once), redirects followed by hand so
that every hop is checked, no cookies ever, and no credentials sent to another host.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import h11
import httpx

from monitor.errors import FetchError, HTTPStatusError
from monitor.models import CacheInfo, FeedSpec, Fetched, FetchLimits, PollPolicy
from monitor.sources.decode import BadEncoding, BodyTooLarge, BoundedDecoder, human_size
from monitor.sources.guard import (
    AddressGuard,
    BlockedAddress,
    allowing_private,
    host_allows_private,
    permitted,
)

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
# Only what BoundedDecoder can inflate under the cap; br/zstd decoders cannot be bounded as easily.
ACCEPT_ENCODING = "gzip, deflate"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Largest response head (status line and headers) accepted, as httpcore allows.
MAX_HEAD = 100 * 1024
#: An idle keep-alive connection is closed after this many seconds unused.
KEEPALIVE = 15.0
#: Parsed URLs kept (one per feed); the cache starts over when it is full.
_URL_CACHE = 100_000


class HttpFetcher:
    """Fetches feeds over HTTP(S); see `monitor.sources.protocol.Fetcher` for the contract.

    At most `policy.concurrency` fetches run at once, at most `policy.per_host` of them
    against one host, and the starts of two fetches to one host are at least
    `policy.host_interval` apart (0 disables that floor). The floor spaces the first request
    of each fetch; the redirect hops of a fetch follow at once (the server asked for them, and
    waiting would hold a slot). A fetch waiting for its host's turn holds neither a global
    slot nor its deadline: the deadline starts once the request may go.

    `ssl_context` replaces the default TLS settings (certifi's CA bundle, hostname checks).

    Every connection goes through `guard` (monitor.sources.guard): to loopback, private and
    other non-public addresses only for a feed with `allow_private: true`, or, when unset,
    one whose URL names such an address itself; redirect hops included.
    """

    def __init__(
        self,
        policy: PollPolicy,
        *,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
        guard: AddressGuard | None = None,
    ) -> None:
        self._policy = policy
        self._guard = guard or AddressGuard()
        self._user_agent = user_agent
        self._ssl_context = ssl_context
        self._pool: _Pool | None = None
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._hosts: dict[str, _Host] = {}
        self._interval = max(policy.host_interval.total_seconds(), 0.0)
        #: Feed URLs, parsed and checked: the same few thousand come back on every poll.
        self._targets: dict[str, _Target] = {}
        self._headers = [
            (b"Accept", ACCEPT.encode()),
            (b"Accept-Encoding", ACCEPT_ENCODING.encode()),
            (b"User-Agent", user_agent.encode()),
        ]

    async def __aenter__(self) -> HttpFetcher:
        context = self._ssl_context
        if context is None:  # loading the CA bundle reads a file: off the loop
            context = await asyncio.to_thread(_default_ssl_context)
        self._pool = _Pool(context, max_idle=self._policy.concurrency, guard=self._guard)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.aclose()

    async def fetch(self, feed: FeedSpec, cache: CacheInfo) -> Fetched:
        pool = self._pool
        if pool is None:
            raise RuntimeError("HttpFetcher used outside 'async with'")
        target = self._targets.get(feed.url)
        if target is None:
            try:
                url = httpx.URL(feed.url)
            except httpx.InvalidURL:
                raise FetchError(_redact_text(feed.url), "invalid URL") from None
            target = _target(url)
            if len(self._targets) >= _URL_CACHE:
                self._targets.clear()
            self._targets[feed.url] = target
        allow = feed.allow_private
        if allow is None:
            allow = host_allows_private(target.host)
        async with self._slot(target.host):
            # The deadline starts once a slot is ours: queueing behind other feeds is not the
            # server's fault.
            try:
                with allowing_private(allow):  # read by the guard as each hop connects
                    async with asyncio.timeout(feed.limits.deadline):
                        return await self._follow(pool, target, feed.limits, cache)
            except TimeoutError:
                reason = f"timed out after {feed.limits.deadline:g}s (whole-fetch deadline)"
                raise FetchError(target.text, reason) from None

    @asynccontextmanager
    async def _slot(self, host: str) -> AsyncIterator[None]:
        # Host first, then global: a feed waiting on a busy host must not hold a global slot.
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(asyncio.Semaphore(self._policy.per_host))
        async with state.slots:
            while True:
                # The floor is between actual starts: look again after waiting for a global
                # slot, since another fetch to this host may have started meanwhile.
                wait = state.last_start + self._interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # holding no global slot
                    continue
                await self._slots.acquire()
                if state.last_start + self._interval <= time.monotonic():
                    break
                self._slots.release()
            try:
                state.last_start = time.monotonic()
                yield
            finally:
                self._slots.release()

    async def _follow(
        self, pool: _Pool, target: _Target, limits: FetchLimits, cache: CacheInfo
    ) -> Fetched:
        headers = self._headers.copy()
        # Validators go back as the bytes they came as (UTF-8 when they were not ASCII).
        if cache.etag:
            headers.append((b"If-None-Match", cache.etag.encode()))
        if cache.last_modified:
            headers.append((b"If-Modified-Since", cache.last_modified.encode()))
        for _hop in range(limits.max_redirects + 1):
            try:
                async with pool.request(target, headers, limits) as response:
                    if response.status not in REDIRECTS:
                        return await _result(response, target.text, limits, cache)
                    url = _next_hop(target.url, response)
                target = _target(url)
            except FetchError:
                raise
            except (
                _Timeout,
                h11.ProtocolError,
                httpx.InvalidURL,
                OSError,
                ssl.SSLError,
                BlockedAddress,
            ) as exc:
                raise FetchError(target.text, describe(exc, limits, target.url)) from exc
            except Exception as exc:
                # The contract: a bad feed or server never escapes as anything but FetchError.
                # The chained cause keeps the traceback for the log if this is our own bug.
                reason = f"unexpected error: {type(exc).__name__}"
                raise FetchError(target.text, reason) from exc
        reason = f"too many redirects (more than {limits.max_redirects})"
        raise FetchError(target.text, reason)


_Origin = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL, checked and taken apart once for every request to it."""

    url: httpx.URL
    #: The URL without credentials, for messages.
    text: str
    #: Lower-case host, the key of the per-host limits.
    host: str
    origin: _Origin
    #: Host header and request target.
    netloc: bytes
    path: bytes
    #: Basic credentials from the URL's userinfo, sent to this URL's host only.
    authorization: bytes | None


def _target(url: httpx.URL) -> _Target:
    """Raises FetchError for what is not an http(s) URL with a host."""
    check_url(url)
    try:
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port or _PORTS[url.scheme])
        authorization = None
        if url.userinfo:
            token = f"{url.username}:{url.password}".encode()
            authorization = b"Basic " + base64.b64encode(token)
        return _Target(
            url, redact(url), url.host.lower(), origin, url.netloc, url.raw_path, authorization
        )
    except (ValueError, KeyError):
        raise FetchError(redact(url), f"invalid URL {redact(url)!r}") from None


@dataclass
class _Host:
    slots: asyncio.Semaphore
    #: time.monotonic() of the last fetch start to this host.
    last_start: float = float("-inf")


# --- the connection pool -----------------------------------------------------------------------


class _Timeout(Exception):
    """A connect, read or write took longer than its timeout."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"{kind} timeout")
        self.kind = kind


@dataclass
class _Response:
    status: int
    #: Names lower-cased, repeated headers joined with ", " (as httpx's `headers.items()`).
    headers: dict[str, str]
    connection: _Connection
    limits: FetchLimits

    async def body(self) -> AsyncIterator[bytes]:
        """The raw (still content-encoded) body, chunk by chunk, each read under the timeout."""
        async for chunk in self.connection.body(self.limits):
            yield chunk


class _Wire(asyncio.Protocol):
    """The bytes a connection received, as a queue the fetch reads with a per-read timeout.

    Our own protocol rather than asyncio streams: an idle connection is reusable only if
    nothing at all arrived since its last response (no EOF, no stray bytes, which would be
    read as the next response), and that is plain to see here.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: Exception | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True  # the reader is behind: stop taking more from the socket
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, patience: float) -> bytes:
        """The next bytes received, or b"" at EOF; _Timeout when none come in `patience`
        seconds. (A timer on the waiter, which costs a fraction of `asyncio.timeout`.)"""
        if not self.chunks and not self.eof:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            expiry = loop.call_later(patience, _expire, waiter)
            try:
                await waiter
            finally:
                expiry.cancel()
                self._waiter = None
        if self.chunks:
            data = self.chunks.popleft()
            self.buffered -= len(data)
            if self._paused and self.buffered <= _PAUSE_AT // 2 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self.error is not None:
            raise self.error
        return b""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_Timeout("read"))


#: Bytes held for a slow reader before the socket is no longer read (flow control).
_PAUSE_AT = 1024 * 1024


class _Connection:
    """One HTTP/1.1 connection: a transport, what it received, and its h11 state machine."""

    def __init__(self, origin: _Origin, transport: asyncio.Transport, wire: _Wire) -> None:
        self.origin = origin
        self.transport = transport
        self.wire = wire
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        #: The address connected to, checked again before each reuse.
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.idle_since = time.monotonic()
        #: Bytes of the current response received so far (0: a stale reused socket may retry).
        self.received = 0

    def reusable(self) -> bool:
        """Idle, nothing received since (no EOF, no stray bytes), and not too old."""
        return (
            self.h11.our_state is h11.IDLE
            and not self.wire.chunks
            and not self.wire.eof
            and not self.h11.trailing_data[0]
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < KEEPALIVE
        )

    def send(self, request: h11.Request) -> None:
        self.received = 0
        data = self.h11.send(request) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        # A request is a few hundred bytes: the socket takes it at once, or the connection is
        # dead and reading the response says so.
        self.transport.write(data)

    async def next_event(self, limits: FetchLimits) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # only after a complete response: nothing more to read
                raise h11.RemoteProtocolError("unexpected data after the response")
            data = await self.wire.read(limits.read_timeout)
            self.received += len(data)
            self.h11.receive_data(data)  # b"" at EOF: h11 decides whether that is complete

    async def response(self, limits: FetchLimits) -> h11.Response:
        while True:
            event = await self.next_event(limits)
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("server disconnected without sending a response")
            # InformationalResponse (1xx): keep reading.

    async def body(self, limits: FetchLimits) -> AsyncIterator[bytes]:
        while True:
            event = await self.next_event(limits)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("server disconnected mid-response")

    def finished(self) -> bool:
        """The exchange is over and the connection can carry another request."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            try:
                self.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return False
            self.idle_since = time.monotonic()
            return True
        return False

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


class _Pool:
    """Idle keep-alive connections by origin, at most `max_idle` in all (oldest closed first).

    A connection is lent to one request at a time and comes back only when its response was
    read to the end; anything else (an error, a redirect, a status we do not read, a cancel)
    closes it. A request that fails on a reused connection before a byte of the response
    arrived (the server closed it while idle) is retried once on a new connection.
    """

    def __init__(self, context: ssl.SSLContext, *, max_idle: int, guard: AddressGuard) -> None:
        self._context = context
        self._guard = guard
        self._max_idle = max(max_idle, 1)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._count = 0
        #: Connections closing (a TLS goodbye may take a moment), so shutdown can wait.
        self._closing: set[_Connection] = set()

    @asynccontextmanager
    async def request(
        self, target: _Target, headers: list[tuple[bytes, bytes]], limits: FetchLimits
    ) -> AsyncIterator[_Response]:
        all_headers = [(b"Host", target.netloc), *headers]
        if target.authorization is not None:  # only ever to the host they are written for
            all_headers.append((b"Authorization", target.authorization))
        request = h11.Request(method="GET", target=target.path, headers=all_headers)
        connection, response = await self._exchange(target.origin, request, limits)
        done = False
        try:
            decoded = _decode_headers(list(response.headers))
            yield _Response(response.status_code, decoded, connection, limits)
            done = connection.finished()
        finally:
            if done:
                self._release(connection)
            else:
                self._close(connection)

    async def _exchange(
        self, origin: _Origin, request: h11.Request, limits: FetchLimits
    ) -> tuple[_Connection, h11.Response]:
        reused = self._take(origin)
        if reused is not None:
            try:
                reused.send(request)
                return reused, await reused.response(limits)
            except (OSError, h11.RemoteProtocolError):
                self._close(reused)
                if reused.received:
                    raise
            except BaseException:
                self._close(reused)
                raise
        connection = await self._connect(origin, limits)
        try:
            connection.send(request)
            return connection, await connection.response(limits)
        except BaseException:
            self._close(connection)
            raise

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            self._count -= 1
            # A connection opened for a feed that may reach internal addresses is not lent to
            # one that may not.
            if connection.reusable() and permitted(connection.address):
                return connection
            self._close(connection)
        return None

    def _release(self, connection: _Connection) -> None:
        self._idle.setdefault(connection.origin, []).append(connection)
        self._count += 1
        if self._count > self._max_idle:
            self._evict()

    def _evict(self) -> None:
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            self._count -= 1
            self._close(oldest)
        self._idle = {origin: idle for origin, idle in self._idle.items() if idle}

    async def _connect(self, origin: _Origin, limits: FetchLimits) -> _Connection:
        scheme, host, port = origin
        tls = self._context if scheme == "https" else None
        try:
            async with asyncio.timeout(limits.connect_timeout):
                # Resolved once; connected to a checked address; TLS verifies `host`.
                transport, wire = await self._guard.create_connection(
                    _Wire, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise _Timeout("connect") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert isinstance(transport, asyncio.Transport)
        return _Connection(origin, transport, wire)

    def _close(self, connection: _Connection) -> None:
        connection.close()
        if not connection.wire.closed.done():
            self._closing.add(connection)
            connection.wire.closed.add_done_callback(lambda _: self._closing.discard(connection))

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                self._close(connection)
        self._idle.clear()
        self._count = 0
        if not self._closing:
            return
        closing = list(self._closing)
        _, late = await asyncio.wait([c.wire.closed for c in closing], timeout=1.0)
        if late:  # a TLS peer slow to say goodbye: drop the socket
            for connection in closing:
                if not connection.wire.closed.done():
                    connection.abort()
            await asyncio.wait([c.wire.closed for c in closing], timeout=1.0)


_PORTS = {"http": 80, "https": 443}


def _default_ssl_context() -> ssl.SSLContext:
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    # Like httpx: the whole set decoded as ASCII, else UTF-8, else Latin-1.
    joined = b"".join(name + value for name, value in raw)
    encoding = "latin-1"
    for candidate in ("ascii", "utf-8"):
        try:
            joined.decode(candidate)
        except UnicodeDecodeError:
            continue
        encoding = candidate
        break
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode(encoding).lower()
        text = value.decode(encoding)
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


# --- responses ---------------------------------------------------------------------------------


async def _result(response: _Response, url: str, limits: FetchLimits, cache: CacheInfo) -> Fetched:
    status = response.status
    headers = response.headers
    if status == 304:
        async for _ in response.body():  # nothing, but it frees the connection for reuse
            pass
        sent = CacheInfo(
            etag=headers.get("etag", cache.etag),
            last_modified=headers.get("last-modified", cache.last_modified),
        )
        return Fetched(url, 304, b"", headers, sent)
    if status in (429, 503):
        raise HTTPStatusError(url, status, retry_after=parse_retry_after(headers))
    if status == 204:
        raise FetchError(url, "empty response (HTTP 204)", status=status)
    if not 200 <= status < 300:
        raise HTTPStatusError(url, status)
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise FetchError(
            url, f"response body over {human_size(limits.max_bytes)} (limit)", status=status
        )
    try:
        decoder = BoundedDecoder(headers.get("content-encoding", ""), limits.max_bytes)
        async for chunk in response.body():
            decoder.feed(chunk)
        body = decoder.finish()
    except (BodyTooLarge, BadEncoding) as exc:
        raise FetchError(url, str(exc), status=status) from None
    if not body:
        raise FetchError(url, "empty response body", status=status)
    validators = CacheInfo(headers.get("etag"), headers.get("last-modified"))
    return Fetched(url, 200, body, headers, validators)


def _next_hop(url: httpx.URL, response: _Response) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise FetchError(redact(url), f"redirect without a Location (HTTP {response.status})")
    try:
        target = url.join(location)
    except httpx.InvalidURL:
        raise FetchError(redact(url), "redirect to an invalid Location") from None
    if target.scheme not in ("http", "https"):
        raise FetchError(redact(url), f"redirect to unsupported scheme {target.scheme!r}")
    if url.scheme == "https" and target.scheme == "http":
        raise FetchError(redact(url), "redirect from https to http refused")
    return target


def check_url(url: httpx.URL) -> None:
    """Refuse anything but http(s); the config should have caught it, this makes it certain."""
    if url.scheme not in ("http", "https") or not url.host:
        raise FetchError(redact(url), f"unsupported URL {redact(url)!r}")


def redact(url: httpx.URL) -> str:
    """The URL without its userinfo, so no credential reaches a message or a log."""
    return str(url.copy_with(userinfo=b"")) if url.userinfo else str(url)


def _redact_text(url: str) -> str:
    # For strings httpx cannot parse: drop everything between "//" and the last "@".
    scheme, sep, rest = url.partition("//")
    authority, slash, path = rest.partition("/")
    return scheme + sep + authority.rpartition("@")[2] + slash + path


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delay-seconds or an HTTP-date; None when invalid.

    `headers` is looked up with the lower-case name (a dict from a response, or httpx.Headers).
    """
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_ERRNO = re.compile(r"\[Errno (\d+)\]")


def describe(exc: BaseException, limits: FetchLimits, url: httpx.URL) -> str:
    """A short operator-facing reason for a transport failure."""
    if isinstance(exc, _Timeout):
        if exc.kind == "connect":
            return f"connect timed out after {limits.connect_timeout:g}s"
        return f"{exc.kind} timed out after {limits.read_timeout:g}s"
    if isinstance(exc, httpx.InvalidURL):
        return f"invalid URL {redact(url)!r}"
    for cause in _causes(exc):
        if isinstance(cause, BlockedAddress):
            return str(cause)
        if isinstance(cause, BlockedAddress):
            return str(cause)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed for host {url.host}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
    if isinstance(exc, h11.ProtocolError):
        return f"server protocol error: {exc}"
    # asyncio tried every address of the host: "Multiple exceptions: [Errno 111] ...".
    codes = set(_ERRNO.findall(str(exc)))
    if isinstance(exc, OSError) and codes == {"111"}:
        return "connection refused"
    detail = str(exc) or type(exc).__name__
    if url.userinfo:
        detail = detail.replace(url.userinfo.decode("ascii", "replace"), "***")
    return f"network error: {detail}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps, through exception groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)
