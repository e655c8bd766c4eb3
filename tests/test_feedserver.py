"""The loopback FeedServer itself: routing, validators, bookkeeping, prompt shutdown."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from tests.feedserver import (
    FeedServer,
    Handler,
    endless_body,
    gzip_bomb,
    never_answer,
    redirect_loop,
    redirect_to,
    slow_drip,
)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5) as c:
        yield c


def test_set_serves_body_with_validators(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.set("/feed.xml", "<rss/>")

    r = client.get(feed_server.url("/feed.xml"))

    assert (r.status_code, r.content) == (200, b"<rss/>")
    assert r.headers["content-type"] == "application/rss+xml; charset=utf-8"
    assert r.headers["etag"].startswith('"')
    assert "last-modified" in r.headers


def test_matching_validators_get_304(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.set("/feed.xml", "<rss/>")
    first = client.get(feed_server.url("/feed.xml"))

    by_etag = client.get(
        feed_server.url("/feed.xml"), headers={"If-None-Match": first.headers["etag"]}
    )
    by_date = client.get(
        feed_server.url("/feed.xml"), headers={"If-Modified-Since": first.headers["last-modified"]}
    )
    stale = client.get(feed_server.url("/feed.xml"), headers={"If-None-Match": '"other"'})

    assert (by_etag.status_code, by_etag.content) == (304, b"")
    assert (by_date.status_code, by_date.content) == (304, b"")
    assert stale.status_code == 200


def test_without_validators(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.set("/feed.xml", "<rss/>", validators=False, headers={"X-Extra": "1"})

    r = client.get(feed_server.url("/feed.xml"), headers={"If-None-Match": "*"})

    assert r.status_code == 200
    assert "etag" not in r.headers
    assert r.headers["x-extra"] == "1"


def test_status_remove_and_404(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.set("/gone", b"bye", status=410)
    assert client.get(feed_server.url("/gone")).status_code == 410

    feed_server.remove("/gone")

    assert client.get(feed_server.url("/gone")).status_code == 404
    assert client.get(feed_server.url("/never-set")).status_code == 404


def test_requests_and_hits(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.set("/a", b"a")

    client.get(feed_server.url("/a"), headers={"X-Probe": "yes"})
    client.get(feed_server.url("/a?page=2"))
    client.get(feed_server.url("/b"))

    assert [p for p, _ in feed_server.requests] == ["/a", "/a?page=2", "/b"]
    assert feed_server.requests[0][1]["x-probe"] == "yes"
    assert (feed_server.hits("/a"), feed_server.hits("/a?page=2"), feed_server.hits("/b")) == (
        2,
        1,
        1,
    )


def test_custom_handler_and_redirects(feed_server: FeedServer, client: httpx.Client) -> None:
    def teapot(h: BaseHTTPRequestHandler) -> None:
        h.send_response(418)
        h.send_header("Content-Length", "0")
        h.end_headers()

    feed_server.handle("/tea", teapot)
    feed_server.handle("/to-tea", redirect_to("/tea", 301))
    feed_server.handle("/loop", redirect_loop())

    assert client.get(feed_server.url("/tea")).status_code == 418
    moved = client.get(feed_server.url("/to-tea"))
    assert (moved.status_code, moved.headers["location"]) == (301, "/tea")
    assert client.get(feed_server.url("/loop")).headers["location"] == "/loop"


def test_gzip_bomb_is_small_on_the_wire(feed_server: FeedServer) -> None:
    feed_server.handle("/bomb", gzip_bomb(16 * 1024 * 1024))

    with socket.create_connection(("127.0.0.1", int(feed_server.base.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GET /bomb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk

    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    assert len(body) < 64 * 1024


@pytest.mark.parametrize(
    "handler",
    [never_answer(), slow_drip(0.5, 1000), endless_body()],
    ids=["never_answer", "slow_drip", "endless_body"],
)
def test_stop_is_prompt_while_handlers_are_busy(handler: Handler) -> None:
    before = set(threading.enumerate())
    server = FeedServer().start()
    server.handle("/x", handler)
    port = int(server.base.rsplit(":", 1)[1])
    idle = socket.create_connection(("127.0.0.1", port))  # a connection that never sends
    busy = socket.create_connection(("127.0.0.1", port))
    busy.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    while server.hits("/x") < 1:
        time.sleep(0.01)

    started = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - started

    idle.close()
    busy.close()
    assert elapsed < 2
    assert [t for t in threading.enumerate() if t not in before] == []


def test_context_manager_and_base() -> None:
    server = FeedServer()
    with pytest.raises(RuntimeError):
        _ = server.base
    with server:
        assert server.base.startswith("http://127.0.0.1:")
        assert server.url("/x") == server.base + "/x"
    server.stop()  # idempotent
