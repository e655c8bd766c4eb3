"""HttpFetcher against a real loopback server: bounds, statuses, redirects, concurrency."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import itertools
import socket
import ssl
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.errors import FetchError, HTTPStatusError
from monitor.models import CacheInfo, FeedSpec, FetchLimits, PollPolicy
from monitor.sources import http as http_module
from monitor.sources.guard import AddressGuard, system_resolve
from monitor.sources.http import HttpFetcher, parse_retry_after
from tests.feedserver import (
    FeedServer,
    endless_body,
    gzip_bomb,
    never_answer,
    redirect_loop,
    redirect_to,
    self_signed_cert,
    slow_drip,
    stopping,
)

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
UA = "monitor-test/1.0 (+https://example.invalid/bot)"
CAP = 64 * 1024
# Generous, so a loaded machine never trips them; tests of the time bounds pass their own.
LIMITS = FetchLimits(connect_timeout=10.0, read_timeout=10.0, deadline=20.0, max_bytes=CAP)


def spec(url: str, **limits: Any) -> FeedSpec:
    return FeedSpec("test", url, timedelta(minutes=5), limits=replace(LIMITS, **limits))


@pytest.fixture
async def fetcher() -> AsyncIterator[HttpFetcher]:
    policy = PollPolicy(concurrency=10, per_host=10, host_interval=timedelta(0))
    async with HttpFetcher(policy, user_agent=UA) as f:
        yield f


async def failure(fetcher: HttpFetcher, url: str, **limits: Any) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(spec(url, **limits), CacheInfo())
    return info.value


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- 200 and conditional GET -------------------------------------------------------------------


async def test_200_returns_body_headers_and_validators(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    feed_server.set("/feed", RSS)

    got = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    assert (got.status, got.body, got.url) == (200, RSS, feed_server.url("/feed"))
    assert not got.not_modified
    assert got.headers["content-type"] == "application/rss+xml; charset=utf-8"
    assert got.cache.etag == got.headers["etag"]
    assert got.cache.last_modified == got.headers["last-modified"]
    sent = feed_server.requests[0][1]
    assert sent["user-agent"] == UA
    assert sent["accept"].startswith("application/rss+xml, application/atom+xml")
    assert sent["accept-encoding"] == "gzip, deflate"
    assert "if-none-match" not in sent
    assert "if-modified-since" not in sent


async def test_validators_absent_are_none(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", RSS, validators=False)

    got = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo("old", "old"))

    assert got.cache == CacheInfo(None, None)


async def test_conditional_get_and_304(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", RSS)
    first = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    second = await fetcher.fetch(spec(feed_server.url("/feed")), first.cache)

    sent = feed_server.requests[1][1]
    assert sent["if-none-match"] == first.cache.etag
    assert sent["if-modified-since"] == first.cache.last_modified
    assert second.not_modified
    assert (second.status, second.body) == (304, b"")
    assert second.cache == first.cache


async def test_304_on_last_modified_alone(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", RSS)
    first = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    second = await fetcher.fetch(
        spec(feed_server.url("/feed")), CacheInfo(last_modified=first.cache.last_modified)
    )

    assert second.not_modified
    assert "if-none-match" not in feed_server.requests[1][1]
    # The server sent its ETag with the 304: keep it for next time.
    assert second.cache == first.cache


async def test_changed_body_is_a_fresh_200(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", RSS)
    first = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())
    feed_server.set("/feed", RSS.replace(b"<title>t", b"<title>u"))

    second = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo(etag=first.cache.etag))

    assert second.status == 200
    assert second.cache.etag != first.cache.etag


async def test_cookies_are_not_carried_between_fetches(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    feed_server.set("/feed", RSS, headers={"Set-Cookie": "session=abc; Path=/"})

    await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())
    await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    assert "cookie" not in feed_server.requests[1][1]


# --- encodings and size caps -------------------------------------------------------------------


async def test_gzip_body_decoded(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", gzip.compress(RSS), headers={"Content-Encoding": "gzip"})

    got = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    assert got.body == RSS


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_deflate_body_decoded(
    feed_server: FeedServer, fetcher: HttpFetcher, wbits: int
) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = compressor.compress(RSS) + compressor.flush()
    feed_server.set("/feed", body, headers={"Content-Encoding": "deflate"})

    got = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    assert got.body == RSS


async def test_body_at_the_cap_is_accepted(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", b"x" * CAP)

    got = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    assert len(got.body) == CAP


async def test_content_length_over_cap(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", b"x" * (CAP + 1))

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason == "response body over 64 KiB (limit)"


async def test_endless_body_aborted_at_cap(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.handle("/feed", endless_body())

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason == "response body over 64 KiB (limit)"


async def test_gzip_bomb_aborted_with_bounded_memory(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    cap = 256 * 1024
    feed_server.handle("/feed", gzip_bomb(64 * 1024 * 1024))  # about 64 KB on the wire

    tracemalloc.start()
    try:
        error = await failure(fetcher, feed_server.url("/feed"), max_bytes=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert error.reason == "response body over 256 KiB (limit)"
    assert peak < 10 * cap, f"peak {peak} bytes"


async def test_unsupported_encoding(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", b"\x0b\x02\x80hello\x03", headers={"Content-Encoding": "br"})

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason == "unsupported content encoding 'br'"


async def test_corrupt_gzip(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set(
        "/feed", b"\x1f\x8b\x08\x00garbage-garbage", headers={"Content-Encoding": "gzip"}
    )

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason.startswith("corrupt gzip body")


async def test_body_cut_short_is_an_error(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    def short(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(RSS[:50])

    feed_server.handle("/feed", short)

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason.startswith("server protocol error: peer closed connection")


async def test_connection_reset(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    def reset(h: BaseHTTPRequestHandler) -> None:
        # SO_LINGER 0 makes close() send RST instead of FIN.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True

    feed_server.handle("/feed", reset)

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason == "connection reset by peer"


@pytest.mark.parametrize("status", [200, 204])
async def test_empty_response(feed_server: FeedServer, fetcher: HttpFetcher, status: int) -> None:
    feed_server.set("/feed", b"", status=status)

    error = await failure(fetcher, feed_server.url("/feed"))

    assert not isinstance(error, HTTPStatusError)
    assert error.reason == ("empty response body" if status == 200 else "empty response (HTTP 204)")


async def test_other_2xx_is_a_200(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", RSS, status=203)

    got = await fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo())

    assert (got.status, got.body) == (200, RSS)


# --- time bounds -------------------------------------------------------------------------------


async def test_slow_drip_killed_by_deadline(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    # Every read makes progress well within the read timeout: only the deadline can stop it.
    feed_server.handle("/feed", slow_drip(0.05, 10_000))

    error = await failure(fetcher, feed_server.url("/feed"), deadline=0.5)

    assert error.reason == "timed out after 0.5s (whole-fetch deadline)"


async def test_never_answering_server_read_timeout(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    feed_server.handle("/feed", never_answer())

    error = await failure(fetcher, feed_server.url("/feed"), read_timeout=0.3)

    assert error.reason == "read timed out after 0.3s"


async def test_never_answering_server_deadline(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    feed_server.handle("/feed", never_answer())

    error = await failure(fetcher, feed_server.url("/feed"), read_timeout=5, deadline=0.3)

    assert error.reason == "timed out after 0.3s (whole-fetch deadline)"


async def test_cancellation_propagates(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.handle("/feed", never_answer())
    task = asyncio.create_task(fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo()))
    await asyncio.sleep(0.1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


# --- network errors ----------------------------------------------------------------------------


async def test_connection_refused(fetcher: HttpFetcher) -> None:
    error = await failure(fetcher, f"http://127.0.0.1:{unused_port()}/feed")

    assert error.reason == "connection refused"


async def test_dns_failure(fetcher: HttpFetcher) -> None:
    # .invalid never resolves (RFC 6761).
    error = await failure(fetcher, "http://no-such-host.invalid/feed")

    assert error.reason == "DNS lookup failed for host no-such-host.invalid"


async def test_used_outside_async_with() -> None:
    fetcher = HttpFetcher(PollPolicy(), user_agent=UA)

    with pytest.raises(RuntimeError):
        await fetcher.fetch(spec("http://127.0.0.1/"), CacheInfo())


# --- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404, 410, 500, 502])
async def test_error_status(feed_server: FeedServer, fetcher: HttpFetcher, status: int) -> None:
    feed_server.set("/feed", b"nope", status=status)

    error = await failure(fetcher, feed_server.url("/feed"))

    assert isinstance(error, HTTPStatusError)
    assert (error.status, error.reason, error.retry_after) == (status, f"HTTP {status}", None)


async def test_missing_path_is_404(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    error = await failure(fetcher, feed_server.url("/nothing-here"))

    assert isinstance(error, HTTPStatusError)
    assert error.status == 404


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds(
    feed_server: FeedServer, fetcher: HttpFetcher, status: int
) -> None:
    feed_server.set("/feed", b"slow down", status=status, headers={"Retry-After": "120"})

    error = await failure(fetcher, feed_server.url("/feed"))

    assert isinstance(error, HTTPStatusError)
    assert (error.status, error.retry_after) == (status, 120.0)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_http_date(
    feed_server: FeedServer, fetcher: HttpFetcher, status: int
) -> None:
    when = email.utils.formatdate(time.time() + 600, usegmt=True)
    feed_server.set("/feed", b"slow down", status=status, headers={"Retry-After": when})

    error = await failure(fetcher, feed_server.url("/feed"))

    assert isinstance(error, HTTPStatusError)
    assert error.retry_after is not None
    assert 590 <= error.retry_after <= 601


async def test_retry_after_invalid(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", b"", status=429, headers={"Retry-After": "soon-ish"})

    error = await failure(fetcher, feed_server.url("/feed"))

    assert isinstance(error, HTTPStatusError)
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("3600", 3600.0),
        ("Sat, 28 Nov 2026 10:00:00 GMT", 7200.0),
        ("Sat, 28 Nov 2026 07:00:00 GMT", 0.0),  # in the past: retry now
        ("-5", None),
        ("1.5", None),
        ("", None),
        ("tomorrow", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    now = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)

    assert parse_retry_after(httpx.Headers({"Retry-After": value}), now=now) == expected


# --- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_followed(
    feed_server: FeedServer, fetcher: HttpFetcher, status: int
) -> None:
    feed_server.set("/new", RSS)
    feed_server.handle("/old", redirect_to(feed_server.url("/new"), status))

    got = await fetcher.fetch(spec(feed_server.url("/old")), CacheInfo())

    assert (got.status, got.body, got.url) == (200, RSS, feed_server.url("/new"))


async def test_relative_redirect_resolved(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feeds/new.xml", RSS)
    feed_server.handle("/feeds/old/index.xml", redirect_to("../new.xml"))

    got = await fetcher.fetch(spec(feed_server.url("/feeds/old/index.xml")), CacheInfo())

    assert got.url == feed_server.url("/feeds/new.xml")


async def test_redirect_chain_up_to_the_limit(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    for hop in range(5):
        feed_server.handle(f"/r{hop}", redirect_to(f"/r{hop + 1}"))
    feed_server.set("/r5", RSS)

    got = await fetcher.fetch(spec(feed_server.url("/r0")), CacheInfo())

    assert got.url == feed_server.url("/r5")


async def test_redirect_loop(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.handle("/loop", redirect_loop())

    error = await failure(fetcher, feed_server.url("/loop"))

    assert error.reason == "too many redirects (more than 5)"
    assert feed_server.hits("/loop") == 6


async def test_redirect_to_ftp_refused(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.handle("/feed", redirect_to("ftp://127.0.0.1/feed.xml"))

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason == "redirect to unsupported scheme 'ftp'"


async def test_redirect_without_location(feed_server: FeedServer, fetcher: HttpFetcher) -> None:
    feed_server.set("/feed", b"", status=302)

    error = await failure(fetcher, feed_server.url("/feed"))

    assert error.reason == "redirect without a Location (HTTP 302)"


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = self_signed_cert(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("openssl CLI not available")
    return made


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[FeedServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with FeedServer(tls=context) as server:
        yield server


async def test_tls_verification_failure(tls_server: FeedServer, fetcher: HttpFetcher) -> None:
    tls_server.set("/feed", RSS)

    error = await failure(fetcher, tls_server.url("/feed"))

    assert error.reason.startswith("TLS certificate verification failed: self")
    assert tls_server.hits("/feed") == 0


async def test_https_to_http_redirect_refused(
    tls_server: FeedServer, feed_server: FeedServer, certificate: tuple[Path, Path]
) -> None:
    feed_server.set("/feed", RSS)
    tls_server.set("/feed", RSS)
    tls_server.handle("/old", redirect_to(feed_server.url("/feed")))
    trusting = ssl.create_default_context(cafile=certificate[0])

    async with HttpFetcher(PollPolicy(), user_agent=UA, ssl_context=trusting) as fetcher:
        ok = await fetcher.fetch(spec(tls_server.url("/feed")), CacheInfo())
        error = await failure(fetcher, tls_server.url("/old"))

    assert ok.body == RSS
    assert error.reason == "redirect from https to http refused"
    assert feed_server.hits("/feed") == 0


# --- concurrency -------------------------------------------------------------------------------


class Gauge:
    """A handler that holds each request briefly and records the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        stopping(h).wait(0.15)
        with self.lock:
            self.now -= 1
        h.send_response(200)
        h.send_header("Content-Length", str(len(RSS)))
        h.end_headers()
        h.wfile.write(RSS)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (PollPolicy(concurrency=10, per_host=2, host_interval=timedelta(0)), 2),
        (PollPolicy(concurrency=3, per_host=10, host_interval=timedelta(0)), 3),
    ],
    ids=["per-host", "global"],
)
async def test_concurrency_limits(
    feed_server: FeedServer, policy: PollPolicy, expected: int
) -> None:
    gauge = Gauge()
    feed_server.handle("/feed", gauge)

    async with HttpFetcher(policy, user_agent=UA) as fetcher:
        results = await asyncio.gather(
            *(fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo()) for _ in range(8))
        )

    assert all(r.body == RSS for r in results)
    assert gauge.peak == expected


# --- credentials -------------------------------------------------------------------------------


async def test_credentials_never_in_errors_or_results(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    feed_server.set("/feed", RSS)
    feed_server.handle("/loop", redirect_loop())
    secret_base = feed_server.base.replace("http://", "http://reader:s3cr3t@")
    refused = f"http://reader:s3cr3t@127.0.0.1:{unused_port()}/feed"

    got = await fetcher.fetch(spec(secret_base + "/feed"), CacheInfo())
    errors = [
        await failure(fetcher, secret_base + "/missing"),
        await failure(fetcher, secret_base + "/loop"),
        await failure(fetcher, refused),
        await failure(fetcher, "http://reader:s3cr3t@[::1"),
    ]

    assert got.url == feed_server.url("/feed")
    for error in errors:
        assert "s3cr3t" not in f"{error} {error.reason} {error.url}"
        assert "reader" not in error.url


async def test_credentials_not_forwarded_to_another_host(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    other_host = feed_server.url("/feed").replace("127.0.0.1", "localhost")
    feed_server.set("/feed", RSS)
    feed_server.handle("/old", redirect_to(other_host))
    secret_base = feed_server.base.replace("http://", "http://reader:s3cr3t@")

    got = await fetcher.fetch(spec(secret_base + "/old"), CacheInfo())

    assert got.url == other_host
    first, second = (headers for _, headers in feed_server.requests)
    assert first["authorization"].startswith("Basic ")
    assert "authorization" not in second


# --- politeness floor --------------------------------------------------------------------------


class Arrivals:
    """A handler that records when each request arrived (monotonic clock) and answers RSS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, float]] = []

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.seen.append((h.headers.get("Host", ""), time.monotonic()))
        h.send_response(200)
        h.send_header("Content-Length", str(len(RSS)))
        h.end_headers()
        h.wfile.write(RSS)

    def times(self, host: str) -> list[float]:
        return [t for h, t in self.seen if h.startswith(host)]


# The fetcher spaces request starts by FLOOR; the server sees them after a loopback hop whose
# latency varies a little, so the gaps it sees are checked against a bound with 50 ms to spare.
FLOOR = timedelta(milliseconds=300)
SEEN_FLOOR = 0.25


async def test_host_interval_spaces_fetch_starts_to_one_host(feed_server: FeedServer) -> None:
    arrivals = Arrivals()
    feed_server.handle("/feed", arrivals)
    policy = PollPolicy(concurrency=10, per_host=10, host_interval=FLOOR)

    async with HttpFetcher(policy, user_agent=UA) as fetcher:
        results = await asyncio.gather(
            *(fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo()) for _ in range(4))
        )

    assert all(r.body == RSS for r in results)
    times = arrivals.times("127.0.0.1")
    assert len(times) == 4
    assert all(later - earlier >= SEEN_FLOOR for earlier, later in itertools.pairwise(times))


async def test_a_fetch_waiting_for_its_host_holds_no_global_slot(feed_server: FeedServer) -> None:
    arrivals = Arrivals()
    feed_server.handle("/feed", arrivals)
    here = feed_server.url("/feed")
    other = here.replace("127.0.0.1", "localhost")  # same server, another host
    policy = PollPolicy(concurrency=1, per_host=10, host_interval=FLOOR)

    async with HttpFetcher(policy, user_agent=UA) as fetcher:
        await asyncio.gather(
            fetcher.fetch(spec(here), CacheInfo()),
            fetcher.fetch(spec(here), CacheInfo()),
            fetcher.fetch(spec(other), CacheInfo()),
        )

    # The second fetch to 127.0.0.1 waits out the floor; with the only global slot free
    # meanwhile, the fetch to localhost goes first. The floor is per host.
    assert [host.partition(":")[0] for host, _ in arrivals.seen] == [
        "127.0.0.1",
        "localhost",
        "127.0.0.1",
    ]
    first, second = arrivals.times("127.0.0.1")
    assert second - first >= SEEN_FLOOR


async def test_host_interval_zero_disables_the_floor(feed_server: FeedServer) -> None:
    gauge = Gauge()
    feed_server.handle("/feed", gauge)
    policy = PollPolicy(concurrency=10, per_host=3, host_interval=timedelta(0))

    async with HttpFetcher(policy, user_agent=UA) as fetcher:
        await asyncio.gather(
            *(fetcher.fetch(spec(feed_server.url("/feed")), CacheInfo()) for _ in range(6))
        )

    assert gauge.peak == 3  # held 150 ms each: three at once only without a floor


# --- keep-alive --------------------------------------------------------------------------------


class KeepAliveServer:
    """A minimal HTTP/1.1 server on the test's own loop: counts connections and requests, and
    can drop each connection right after its response (without saying so first)."""

    def __init__(self, *, drop_after_response: bool = False, junk: bytes = b"") -> None:
        self.drop = drop_after_response
        self.junk = junk
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str = "/feed") -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(RSS)
                writer.write(head + RSS + self.junk)
                await writer.drain()
                if self.drop:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_connections_are_kept_alive_between_fetches(fetcher: HttpFetcher) -> None:
    async with KeepAliveServer() as server:
        for _ in range(3):
            assert (await fetcher.fetch(spec(server.url()), CacheInfo())).body == RSS

    assert (server.requests, server.connections) == (3, 1)


async def test_a_kept_alive_connection_the_server_dropped_is_not_an_error(
    fetcher: HttpFetcher,
) -> None:
    async with KeepAliveServer(drop_after_response=True) as server:
        for _ in range(3):
            # Whether the drop is seen before the next request or only when it fails, the
            # fetch goes over a new connection and succeeds.
            assert (await fetcher.fetch(spec(server.url()), CacheInfo())).body == RSS
            await asyncio.sleep(0)

    assert (server.requests, server.connections) == (3, 3)


async def test_a_request_on_a_stale_connection_is_retried_once_on_a_new_one(
    fetcher: HttpFetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the server's close had not arrived yet when the connection was taken from the pool.
    monkeypatch.setattr(http_module._Connection, "reusable", lambda self: True)
    async with KeepAliveServer(drop_after_response=True) as server:
        for _ in range(3):
            assert (await fetcher.fetch(spec(server.url()), CacheInfo())).body == RSS
            await asyncio.sleep(0.05)  # the drop has surely happened

    assert (server.requests, server.connections) == (3, 3)


async def test_a_connection_with_bytes_after_its_response_is_not_reused(
    fetcher: HttpFetcher,
) -> None:
    # Read as the next response, they would fail the next feed fetched over this connection.
    async with KeepAliveServer(junk=b"HTTP/1.1 200 OK\r\n") as server:
        for _ in range(2):
            assert (await fetcher.fetch(spec(server.url()), CacheInfo())).body == RSS
            await asyncio.sleep(0.05)

    assert (server.requests, server.connections) == (2, 2)


# --- address guard (F02-F05) -------------------------------------------------------------------


def _names(table: dict[str, list[str]]) -> AddressGuard:
    async def resolve(host: str, port: int) -> list[str]:
        return table[host] if host in table else await system_resolve(host, port)

    return AddressGuard(resolve)


async def test_guard_blocks_a_name_resolving_to_loopback(feed_server: FeedServer) -> None:
    feed_server.set("/feed", RSS)
    url = feed_server.url("/feed").replace("127.0.0.1", "evil.example")
    guard = _names({"evil.example": ["127.0.0.1"]})

    async with HttpFetcher(PollPolicy(), user_agent=UA, guard=guard) as fetcher:
        error = await failure(fetcher, url)
        allowed = await fetcher.fetch(replace(spec(url), allow_private=True), CacheInfo())
        # The idle connection from the allowed fetch is not lent to a fetch that may not.
        again = await failure(fetcher, url)

    expected = (
        "blocked address 127.0.0.1 (loopback) for evil.example: "
        "set allow_private: true on this feed to fetch it"
    )
    assert error.reason == expected
    assert again.reason == expected
    assert allowed.body == RSS
    assert feed_server.hits("/feed") == 1


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"])
async def test_guard_blocks_ip_literal_tricks(
    feed_server: FeedServer, fetcher: HttpFetcher, host: str
) -> None:
    feed_server.set("/feed", RSS)
    error = await failure(fetcher, feed_server.url("/feed").replace("127.0.0.1", host))
    assert error.reason.startswith("blocked address 127.0.0.1 (loopback) for ")
    assert feed_server.hits("/feed") == 0


async def test_explicit_allow_private_false_overrides_a_typed_literal(
    feed_server: FeedServer, fetcher: HttpFetcher
) -> None:
    feed_server.set("/feed", RSS)
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(
            replace(spec(feed_server.url("/feed")), allow_private=False), CacheInfo()
        )
    assert info.value.reason == (
        "blocked address 127.0.0.1 (loopback): set allow_private: true on this feed to fetch it"
    )
    assert feed_server.hits("/feed") == 0
