"""A loopback HTTP/1.1 feed server for tests, with ready-made hostile behaviours.

    with FeedServer() as server:
        server.set("/feed.xml", RSS)                    # 200 with ETag/Last-Modified, 304 on match
        server.handle("/drip", slow_drip(0.5, 100))     # custom raw behaviour
        url = server.url("/feed.xml")

Every handler watches the server's stop event, so `stop()` returns promptly even while a
handler is dripping bytes or holding a connection open.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast

Handler = Callable[[BaseHTTPRequestHandler], None]

#: Errors a handler sees when the client gave up on it; all mean "stop writing".
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True)
class _Static:
    body: bytes
    status: int
    headers: dict[str, str]
    etag: str | None
    last_modified: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver would join handler threads without a timeout; `FeedServer.stop` joins
    # them itself, with one, so a stuck custom handler cannot hang teardown.
    block_on_close = False

    def __init__(self, owner: FeedServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Like ThreadingMixIn's, but remembering each connection and thread so that `stop`
        # can wake the first and join the second.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self.lock:
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
            self.connections.add(request)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-response is the point of most tests here


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # A safety net only: handlers stop on the server's stop event long before this.
    timeout = 30

    def do_GET(self) -> None:
        self.server.owner._dispatch(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


def stopping(handler: BaseHTTPRequestHandler) -> threading.Event:
    """The event set when the handler's server stops; wait on it instead of sleeping."""
    return cast(_Server, handler.server).stopping


class FeedServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 at a free port; HTTPS when given an SSL context."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._static: dict[str, _Static] = {}
        self._custom: dict[str, Handler] = {}
        #: (request target, request headers with lower-cased names), in arrival order.
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def base(self) -> str:
        if self._server is None:
            raise RuntimeError("FeedServer not started")
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> FeedServer:
        server = _Server(self)
        if self._tls is not None:
            # Handshake in the handler thread, not in accept(): a client that never speaks
            # TLS must not block the accept loop.
            server.socket = self._tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        with server.lock:
            connections, threads = list(server.connections), list(server.threads)
        for sock in connections:
            # Wakes handlers blocked reading a keep-alive connection; they then close it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        give_up = time.monotonic() + 5
        for thread in threads:
            thread.join(timeout=max(0.0, give_up - time.monotonic()))

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set(
        self,
        path: str,
        body: bytes | str,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "application/rss+xml; charset=utf-8",
        validators: bool = True,
    ) -> None:
        """Serve `body` at `path`; with `validators`, send ETag/Last-Modified and honour them."""
        data = body.encode() if isinstance(body, str) else body
        all_headers = {"Content-Type": content_type, **(headers or {})}
        etag = last_modified = None
        if validators:
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            last_modified = email.utils.formatdate(time.time() - 60, usegmt=True)
        with self._lock:
            self._custom.pop(path, None)
            self._static[path] = _Static(data, status, all_headers, etag, last_modified)

    def handle(self, path: str, handler: Handler) -> None:
        """Let `handler` answer requests for `path` by writing to the raw request handler."""
        with self._lock:
            self._static.pop(path, None)
            self._custom[path] = handler

    def remove(self, path: str) -> None:
        with self._lock:
            self._static.pop(path, None)
            self._custom.pop(path, None)

    def hits(self, path: str) -> int:
        """Requests received for `path` (its query string ignored unless `path` has one)."""
        with self._lock:
            return sum(1 for p, _ in self.requests if p == path or p.split("?")[0] == path)

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        with self._lock:
            self.requests.append((h.path, {k.lower(): v for k, v in h.headers.items()}))
            custom = self._custom.get(path)
            static = self._static.get(path)
        if custom is not None:
            custom(h)
        elif static is not None:
            _serve_static(h, static)
        else:
            _send(h, 404, b"not found\n", {"Content-Type": "text/plain"})


def _serve_static(h: BaseHTTPRequestHandler, s: _Static) -> None:
    validators = {}
    if s.etag is not None and s.last_modified is not None:
        validators = {"ETag": s.etag, "Last-Modified": s.last_modified}
    if s.status == 200 and validators and _not_modified(h, s):
        h.send_response(304)
        for name, value in validators.items():
            h.send_header(name, value)
        h.end_headers()
        return
    _send(h, s.status, s.body, {**s.headers, **validators})


def _not_modified(h: BaseHTTPRequestHandler, s: _Static) -> bool:
    # RFC 9110 §13.2.2: If-None-Match wins; If-Modified-Since counts only without it.
    if_none_match = h.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or s.etag in tags
    since = h.headers.get("If-Modified-Since")
    if since is None or s.last_modified is None:
        return False
    try:
        return email.utils.parsedate_to_datetime(since) >= email.utils.parsedate_to_datetime(
            s.last_modified
        )
    except (TypeError, ValueError):
        return False


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name, value)
    if not any(name.lower() == "content-length" for name in headers):
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    try:
        h.wfile.write(body)
    except CLIENT_GONE:
        h.close_connection = True


# --- hostile handlers --------------------------------------------------------------------------


def slow_drip(byte_interval: float, total_bytes: int) -> Handler:
    """200 with a Content-Length of `total_bytes`, sent one byte every `byte_interval` seconds."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "application/rss+xml")
        h.send_header("Content-Length", str(total_bytes))
        h.end_headers()
        try:
            for _ in range(total_bytes):
                h.wfile.write(b"x")
                if stopping(h).wait(byte_interval):
                    return
        except CLIENT_GONE:
            return

    return handler


def never_answer() -> Handler:
    """Reads the request, then says nothing until the server stops."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        stopping(h).wait()

    return handler


def endless_body() -> Handler:
    """200 without a Content-Length, streaming 64 KiB chunks until the client hangs up."""
    chunk = b"<item>" + b"x" * (64 * 1024 - 13) + b"</item>"

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "application/rss+xml")
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            while not stopping(h).is_set():
                h.wfile.write(chunk)
        except CLIENT_GONE:
            return

    return handler


def gzip_bomb(decoded_size: int) -> Handler:
    """A gzip body (Content-Encoding: gzip) of `decoded_size` zero bytes, about 1000x smaller."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = []
    for offset in range(0, decoded_size, len(block)):
        parts.append(compressor.compress(block[: decoded_size - offset]))
    parts.append(compressor.flush())
    body = b"".join(parts)

    def handler(h: BaseHTTPRequestHandler) -> None:
        _send(h, 200, body, {"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"})

    return handler


def redirect_to(location: str, status: int = 302) -> Handler:
    """Redirects every request to `location`."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        _send(h, status, b"", {"Location": location})

    return handler


def redirect_loop() -> Handler:
    """Redirects every request back to itself."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        _send(h, 302, b"", {"Location": h.path})

    return handler


def raw_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Handler:
    """`status` and `body` with exactly `headers` (no Content-Type unless given) and a
    Content-Length; no validators, so every request gets the full answer."""
    fixed = dict(headers or {})

    def handler(h: BaseHTTPRequestHandler) -> None:
        _send(h, status, body, fixed)

    return handler


def truncated_body(body: bytes, declared: int) -> Handler:
    """200 declaring a Content-Length of `declared` bytes, sending only `body`, then hanging up."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "application/rss+xml")
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        with contextlib.suppress(*CLIENT_GONE):
            h.wfile.write(body)

    return handler


def connection_reset() -> Handler:
    """Reads the request, then resets the connection (RST, not FIN) without answering."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        # SO_LINGER 0 makes close() send RST instead of FIN.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()

    return handler


# --- TLS ---------------------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """A certificate and key for 127.0.0.1 made with the openssl CLI, or None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key
