"""The HTTP server of `monitor run`'s endpoint: plumbing only, what it serves is an `App`.

A small HTTP/1.1 server on the daemon's event loop: asyncio streams, h11 (already used by the
fetcher) for the protocol, one request per connection (`Connection: close`). Requests are
bounded in size (MAX_REQUEST) and in time (HEAD_TIMEOUT to send the request, IO_TIMEOUT to
take the answer), and connections in number: past `max_connections`, the oldest connection
still sending its request is dropped for the new one, so idle or slow clients can never keep
a liveness probe out. An app that raises answers 500.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlsplit

import h11

from monitor.config.schema import listen_host
from monitor.errors import ConfigError, ConfigProblem
from monitor.models import HttpSettings

log = logging.getLogger("monitor.web")

#: Largest request head (request line and headers) accepted.
MAX_REQUEST = 16 * 1024
#: Seconds a client gets to send its request head (a probe sends it at once).
HEAD_TIMEOUT = 3.0
#: Seconds a client gets to take the response.
IO_TIMEOUT = 10.0
#: After answering, how long (seconds) and how much (bytes) of what the client still sends is
#: read and dropped before closing (see `_linger`).
LINGER = 2.0
MAX_LINGER = 1024 * 1024
#: Connections served at once; past it, the oldest one still sending its request is dropped.
MAX_CONNECTIONS = 256

_TEXT = "text/plain; charset=utf-8"


def parse_address(text: str) -> HttpSettings:
    """`HOST:PORT`, `[IPv6]:PORT`, or `:PORT` (127.0.0.1) as given to `--http`; ValueError
    with the reason when it is none of these."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {text!r}")
    return HttpSettings(listen_host(host) if host else HttpSettings().host, int(port))


def address_argument(text: str) -> HttpSettings:
    """`parse_address` for argparse (`monitor run --http`): a bad value exits 2 with usage."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Response:
    """What an app answers: status, body, its type, and any further headers."""

    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


class App(Protocol):
    """What the server serves (`monitor.web.site.Site`)."""

    async def respond(self, method: str, path: str) -> Response:
        """The answer to `method` on `path` (the query string removed)."""
        ...


@dataclass(slots=True)
class _Connection:
    """A connection being served: when it came, and whether its request is still awaited."""

    task: asyncio.Task[None]
    opened: float = field(default_factory=time.monotonic)
    reading: bool = True


class WebServer:
    """Serves `app` on `settings` until `close()`; use as `async with WebServer(...)`."""

    def __init__(
        self,
        settings: HttpSettings,
        app: App,
        *,
        origin: str = "http",
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.app = app
        #: Where the address came from, for errors: "http" (the config key) or "--http".
        self._origin = origin
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        #: Connections dropped (the cap reached) or refused, for tests and logs.
        self.dropped = 0
        #: The port bound (the one picked when the setting is 0); 0 before `start`.
        self.port = 0

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    async def __aenter__(self) -> WebServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; ConfigError (exit 2 at start) when the address cannot be used."""
        host, port = self.settings.host, self.settings.port
        try:
            self._server = await asyncio.start_server(
                self._connected, host, port, limit=MAX_REQUEST, reuse_address=True
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "address already in use (another process listens there)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "no such address on this machine"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges)"
            else:
                why = exc.strerror or str(exc)
            where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            problem = ConfigProblem("", 0, self._origin, f"cannot listen on {where}: {why}")
            raise ConfigError([problem]) from None
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        shown = host if ":" not in host else f"[{host}]"
        log.info("serving HTTP on http://%s:%d", shown, self.port)

    async def close(self) -> None:
        """Stop listening and end the requests being served."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def _make_room(self) -> bool:
        """At the cap, drop the oldest connection still sending its request; False when every
        connection is being answered (the new one is refused then)."""
        if len(self._connections) < self.max_connections:
            return True
        waiting = [c for c in self._connections.values() if c.reading]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.opened)
        del self._connections[oldest.task]
        oldest.task.cancel()
        self.dropped += 1
        return True

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or not self._make_room():
            self.dropped += 1
            writer.transport.abort()
            return
        connection = self._connections[task] = _Connection(task)
        answered = False
        try:
            answered = await self._serve(reader, writer, connection)
            # Lingering holds the connection up to LINGER seconds: not when others queue.
            if answered and len(self._connections) < self.max_connections // 2:
                await _linger(reader, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            pass  # the client went away or stalled: nothing more to say
        except asyncio.CancelledError:
            # `close()` or `_make_room` cancelled it; ending quietly spares the streams' done
            # callback, which would report a cancelled handler as an error.
            answered = False
        except Exception:
            log.exception("serving an HTTP request failed")
        finally:
            self._connections.pop(task, None)
            if answered:
                writer.close()  # after the response, which drain() handed to the kernel
            else:
                writer.transport.abort()  # never wait on a client that does not read

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> bool:
        """Answer one request; True once the answer is written out."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            async with asyncio.timeout(self.head_timeout):
                request = await _read_request(conn, reader)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            body = HTTPStatus(status).phrase.lower().encode() + b"\n"
            return await _send(writer, conn, Response(status, body), head=False)
        except TimeoutError:
            return False  # a client that never finished its request gets nothing
        finally:
            connection.reading = False
        if request is None:
            return False
        method = request.method.decode("ascii", "replace").upper()
        path = urlsplit(request.target.decode("ascii", "replace")).path
        try:
            response = await self.app.respond(method, path)
        except Exception:
            log.exception("answering %s %s failed", method, path)
            response = Response(500, b"internal error\n")
        log.debug("%s %s %d", method, path, response.status)
        return await _send(writer, conn, response, head=method == "HEAD")


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the client still sends (a body nobody asked for,
    the rest of an oversized request) until it closes, for at most LINGER seconds and
    MAX_LINGER bytes: closing with unread input makes the kernel reset the connection, and the
    client could lose the response."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    left = MAX_LINGER
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER):
            while left > 0 and (data := await reader.read(min(left, 65536))):
                left -= len(data)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request's head, or None when the client closed without sending one."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(4096))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed


async def _send(
    writer: asyncio.StreamWriter, conn: h11.Connection, response: Response, *, head: bool
) -> bool:
    """Write the response; False when the request was too broken to answer at all."""
    body = response.body
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Connection", "close"),
        *response.headers,
    ]
    status = response.status
    reason = HTTPStatus(status).phrase.encode()
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
    except h11.LocalProtocolError:
        return False
    if not head:
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
    data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    writer.write(data)
    async with asyncio.timeout(IO_TIMEOUT):
        await writer.drain()
    return True
