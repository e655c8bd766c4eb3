"""HttpFetcher: the one guarded HTTP path for feeds (httpx, conditional GET, hard bounds).

Bounds httpx does not give by itself, each measured on httpx 0.28.1 (shared/BAD-INPUTS.md §5):
a whole-fetch deadline (its read timeout is per read, so a 1-byte-per-second drip never trips
it), a cap on *decoded* bytes (its decoders inflate a whole wire chunk at once), and redirects
followed by hand so that every hop is checked.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from monitor.errors import FetchError, HTTPStatusError
from monitor.models import CacheInfo, FeedSpec, Fetched, FetchLimits, PollPolicy
from monitor.sources.decode import BadEncoding, BodyTooLarge, BoundedDecoder, human_size

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
# Only what BoundedDecoder can inflate under the cap; br/zstd decoders cannot be bounded as easily.
ACCEPT_ENCODING = "gzip, deflate"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpFetcher:
    """Fetches feeds over HTTP(S); see `monitor.sources.protocol.Fetcher` for the contract."""

    def __init__(
        self,
        policy: PollPolicy,
        *,
        user_agent: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = policy
        self._user_agent = user_agent
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._host_slots: dict[str, asyncio.Semaphore] = {}

    async def __aenter__(self) -> HttpFetcher:
        limits = httpx.Limits(
            max_connections=self._policy.concurrency,
            max_keepalive_connections=self._policy.concurrency,
        )
        self._client = httpx.AsyncClient(
            transport=self._transport,
            limits=limits,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": self._user_agent, "Accept": ACCEPT},
            # Feeds are fetched anonymously: no cookie carried from one feed or poll to the next.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, feed: FeedSpec, cache: CacheInfo) -> Fetched:
        if self._client is None:
            raise RuntimeError("HttpFetcher used outside 'async with'")
        try:
            url = httpx.URL(feed.url)
        except httpx.InvalidURL:
            raise FetchError(_redact_text(feed.url), "invalid URL") from None
        async with self._slot(url.host):
            # The deadline starts once a slot is ours: queueing behind other feeds is not the
            # server's fault.
            deadline = asyncio.timeout(feed.limits.deadline)
            try:
                async with deadline:
                    return await self._follow(self._client, url, feed.limits, cache)
            except TimeoutError:
                reason = f"timed out after {feed.limits.deadline:g}s (whole-fetch deadline)"
                raise FetchError(redact(url), reason) from None

    @asynccontextmanager
    async def _slot(self, host: str) -> AsyncIterator[None]:
        # Host first, then global: a feed waiting on a busy host must not hold a global slot.
        host_slot = self._host_slots.get(host.lower())
        if host_slot is None:
            host_slot = self._host_slots[host.lower()] = asyncio.Semaphore(self._policy.per_host)
        async with host_slot, self._slots:
            yield

    async def _follow(
        self, client: httpx.AsyncClient, url: httpx.URL, limits: FetchLimits, cache: CacheInfo
    ) -> Fetched:
        headers = {"Accept-Encoding": ACCEPT_ENCODING}
        if cache.etag:
            headers["If-None-Match"] = cache.etag
        if cache.last_modified:
            headers["If-Modified-Since"] = cache.last_modified
        timeout = httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.read_timeout,
            write=limits.read_timeout,
            pool=limits.connect_timeout,
        )
        for _hop in range(limits.max_redirects + 1):
            check_url(url)
            try:
                request = client.build_request("GET", url, headers=headers, timeout=timeout)
                response = await client.send(request, stream=True)
                try:
                    if response.status_code not in REDIRECTS:
                        return await _result(response, redact(url), limits, cache)
                    url = _next_hop(url, response)
                finally:
                    await response.aclose()
            except FetchError:
                raise
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                raise FetchError(redact(url), describe(exc, limits, url)) from exc
            except Exception as exc:
                # The contract: a bad feed or server never escapes as anything but FetchError.
                # The chained cause keeps the traceback for the log if this is our own bug.
                reason = f"unexpected error: {type(exc).__name__}"
                raise FetchError(redact(url), reason) from exc
        raise FetchError(redact(url), f"too many redirects (more than {limits.max_redirects})")


async def _result(
    response: httpx.Response, url: str, limits: FetchLimits, cache: CacheInfo
) -> Fetched:
    status = response.status_code
    if status == 304:
        sent = CacheInfo(
            etag=response.headers.get("etag", cache.etag),
            last_modified=response.headers.get("last-modified", cache.last_modified),
        )
        return Fetched(url, 304, b"", _headers(response), sent)
    if status in (429, 503):
        raise HTTPStatusError(url, status, retry_after=parse_retry_after(response.headers))
    if status == 204:
        raise FetchError(url, "empty response (HTTP 204)")
    if not 200 <= status < 300:
        raise HTTPStatusError(url, status)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise FetchError(url, f"response body over {human_size(limits.max_bytes)} (limit)")
    try:
        decoder = BoundedDecoder(response.headers.get("content-encoding", ""), limits.max_bytes)
        async for chunk in response.aiter_raw():
            decoder.feed(chunk)
        body = decoder.finish()
    except (BodyTooLarge, BadEncoding) as exc:
        raise FetchError(url, str(exc)) from None
    if not body:
        raise FetchError(url, "empty response body")
    validators = CacheInfo(response.headers.get("etag"), response.headers.get("last-modified"))
    return Fetched(url, 200, body, _headers(response), validators)


def _headers(response: httpx.Response) -> dict[str, str]:
    return dict(response.headers.items())  # httpx lower-cases names and joins repeated ones


def _next_hop(url: httpx.URL, response: httpx.Response) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise FetchError(redact(url), f"redirect without a Location (HTTP {response.status_code})")
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


def parse_retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delay-seconds or an HTTP-date; None when invalid."""
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


def describe(exc: BaseException, limits: FetchLimits, url: httpx.URL) -> str:
    """A short operator-facing reason for a transport failure."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timed out after {limits.connect_timeout:g}s"
    if isinstance(exc, httpx.ReadTimeout):
        return f"read timed out after {limits.read_timeout:g}s"
    if isinstance(exc, httpx.WriteTimeout):
        return f"write timed out after {limits.read_timeout:g}s"
    if isinstance(exc, httpx.PoolTimeout):
        return f"no free connection after {limits.connect_timeout:g}s"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return f"invalid URL {redact(url)!r}"
    for cause in _causes(exc):
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
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"server protocol error: {exc}"
    detail = str(exc) or type(exc).__name__
    if url.userinfo:
        detail = detail.replace(url.userinfo.decode("ascii", "replace"), "***")
    return f"network error: {detail}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: httpx -> httpcore -> OSError, through exception groups."""
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
