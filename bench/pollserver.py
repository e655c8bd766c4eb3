"""The poll benchmark's feed server: a small asyncio HTTP/1.1 server, run as its own process.

    python bench/pollserver.py --feeds 10000      # prints "PORT <n>" once listening

GET /f<n>.xml serves feed n (see `feedgen`) with an ETag and a Last-Modified; a matching
If-None-Match (or, without one, If-Modified-Since) gets a 304. Keep-alive, no chunking, no
compression. Control requests (never counted in the stats):

- /_ctl/change?start=&stop=&step=  moves those feeds to their next generation (one new item
  each) and renders their new bodies, so the timed pass never waits on rendering;
- /_ctl/render?start=&stop=        renders (and caches) current bodies ahead of a timed pass;
- /_ctl/stats                      JSON: requests, 200s, 304s, most connections open at once;
- /_ctl/reset                      zeroes the stats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedgen import EPOCH, render


class Feeds:
    def __init__(self, count: int) -> None:
        self.count = count
        self.generation = [0] * count
        self.bodies: dict[int, bytes] = {}
        self.stats = {"requests": 0, "ok": 0, "not_modified": 0, "open": 0, "max_open": 0}

    def etag(self, n: int) -> bytes:
        return f'"b{n}.{self.generation[n]}"'.encode()

    def last_modified(self, n: int) -> bytes:
        when = EPOCH + timedelta(minutes=self.generation[n])
        return format_datetime(when, usegmt=True).encode()

    def body(self, n: int) -> bytes:
        body = self.bodies.get(n)
        if body is None:
            body = self.bodies[n] = render(n, self.generation[n])
        return body

    def change(self, feeds: range) -> int:
        for n in feeds:
            self.generation[n] += 1
            self.bodies.pop(n, None)
            self.body(n)
        return len(feeds)


def _range(query: dict[str, list[str]], count: int) -> range:
    def get(name: str, default: int) -> int:
        return int(query.get(name, [str(default)])[0])

    return range(get("start", 0), min(get("stop", count), count), get("step", 1))


class Http(asyncio.Protocol):
    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        stats = self.feeds.stats
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])

    def connection_lost(self, exc: Exception | None) -> None:
        self.feeds.stats["open"] -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self.answer(head)

    def answer(self, head: bytes) -> None:
        assert self.transport is not None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        target = parts[1].decode("latin-1") if len(parts) > 1 else "/"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        close = headers.get(b"connection", b"").lower() == b"close"
        if target.startswith("/_ctl/"):
            self.send(200, self.control(target), b"application/json", close=close)
            return
        feeds = self.feeds
        feeds.stats["requests"] += 1
        name = target.rpartition("/")[2]
        if not (name.startswith("f") and name.endswith(".xml") and name[1:-4].isdigit()):
            self.send(404, b"not found\n", b"text/plain", close=close)
            return
        n = int(name[1:-4])
        if n >= feeds.count:
            self.send(404, b"not found\n", b"text/plain", close=close)
            return
        etag, modified = feeds.etag(n), feeds.last_modified(n)
        validators = b"ETag: " + etag + b"\r\nLast-Modified: " + modified + b"\r\n"
        match = headers.get(b"if-none-match")
        since = headers.get(b"if-modified-since")
        if (match is not None and etag in match.split(b", ")) or (
            match is None and since == modified
        ):
            feeds.stats["not_modified"] += 1
            self.send(304, b"", None, extra=validators, close=close)
            return
        feeds.stats["ok"] += 1
        self.send(200, feeds.body(n), b"application/rss+xml", extra=validators, close=close)

    def control(self, target: str) -> bytes:
        url = urlsplit(target)
        query = parse_qs(url.query)
        feeds = self.feeds
        if url.path == "/_ctl/change":
            return json.dumps({"changed": feeds.change(_range(query, feeds.count))}).encode()
        if url.path == "/_ctl/render":
            rendered = _range(query, feeds.count)
            for n in rendered:
                feeds.body(n)
            return json.dumps({"rendered": len(rendered)}).encode()
        if url.path == "/_ctl/reset":
            feeds.stats.update(requests=0, ok=0, not_modified=0, max_open=feeds.stats["open"])
        return json.dumps({**feeds.stats, "cpu": round(time.process_time(), 3)}).encode()

    def send(
        self,
        status: int,
        body: bytes,
        content_type: bytes | None,
        *,
        extra: bytes = b"",
        close: bool = False,
    ) -> None:
        assert self.transport is not None
        reason = {200: b"OK", 304: b"Not Modified", 404: b"Not Found"}[status]
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason) + extra
        if content_type is not None:
            head += b"Content-Type: " + content_type + b"\r\n"
        if status != 304:
            head += b"Content-Length: %d\r\n" % len(body)
        if close:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if close:
            self.transport.close()


async def serve(count: int, port: int) -> None:
    feeds = Feeds(count)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(feeds), "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.feeds, args.port))


if __name__ == "__main__":
    main()
