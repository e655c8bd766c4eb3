"""Bounded decoding of HTTP bodies: the size cap applies to decoded bytes, as they are produced.

httpx decodes whole wire chunks at once (one 65 KB gzip chunk became 67 MB before the caller
could look), so the fetcher reads raw bytes and decodes them here, asking zlib for no more
output than the room left under the cap.
"""

from __future__ import annotations

import zlib

_KIB = 1024
_MIB = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class BodyTooLarge(Exception):
    """The decoded body grew past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"response body over {human_size(limit)} (limit)")


class BadEncoding(Exception):
    """The body cannot be decoded; the message is an operator-facing reason."""


def human_size(n: int) -> str:
    """`10485760` -> "10 MiB", `1572864` -> "1.5 MiB", `100` -> "100 bytes"."""
    for unit, name in ((_MIB, "MiB"), (_KIB, "KiB")):
        if n >= unit:
            return f"{n / unit:.1f}".removesuffix(".0") + f" {name}"
    return f"{n} bytes"


class BoundedDecoder:
    """Decodes one body with `Content-Encoding` gzip, deflate or identity, up to `limit` bytes.

    `feed()` raw chunks in order, then `finish()` for the body. Raises `BodyTooLarge` as soon
    as the decoded size passes the limit, `BadEncoding` for an unsupported or corrupt encoding.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise BadEncoding(f"unsupported content encoding {content_encoding.strip()!r}")
        #: "gzip", "deflate", or "" for identity.
        self._coding = {"x-gzip": "gzip"}.get(codings[0], codings[0]) if codings else ""
        self._limit = limit
        self._fed = False
        self._parts: list[bytes] = []
        self._size = 0
        self._zlib: zlib._Decompress | None = None
        # Deflate comes zlib-wrapped (as the RFC says) or raw (as some servers send it); the
        # first two bytes tell which, so hold them until both have arrived.
        self._head = b""
        if self._coding == "gzip":
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> None:
        self._fed = self._fed or bool(chunk)
        if not self._coding:
            self._append(chunk)
            return
        if self._zlib is None:
            self._head += chunk
            if len(self._head) < 2:
                return
            chunk, self._head = self._head, b""
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if _is_zlib(chunk) else -zlib.MAX_WBITS)
        self._inflate(chunk)

    def finish(self) -> bytes:
        if not self._fed:
            return b""  # an empty body with a Content-Encoding header is still just empty
        if self._coding and (self._zlib is None or not self._zlib.eof):
            raise BadEncoding(f"corrupt {self._coding} body (truncated)")
        return b"".join(self._parts)

    def _inflate(self, data: bytes) -> None:
        assert self._zlib is not None
        while data:
            if self._zlib.eof:
                # Another gzip member may follow (concatenated gzip is valid); anything else
                # after the end of the stream is padding that decoders conventionally ignore.
                if self._coding != "gzip" or not data.startswith(_GZIP_MAGIC):
                    return
                self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                # One byte more than the room left, so overflow shows without a separate probe.
                out = self._zlib.decompress(data, self._limit - self._size + 1)
            except zlib.error as exc:
                raise BadEncoding(f"corrupt {self._coding} body") from exc
            self._append(out)
            data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail

    def _append(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._parts.clear()
            raise BodyTooLarge(self._limit)
        if data:
            self._parts.append(data)


def _is_zlib(head: bytes) -> bool:
    """True when `head` starts with a valid zlib header (RFC 1950: CM=8, FCHECK)."""
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
