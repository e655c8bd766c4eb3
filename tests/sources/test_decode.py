"""BoundedDecoder: decoded-size cap, gzip/deflate variants, corrupt and unsupported input."""

from __future__ import annotations

import gzip
import zlib

import pytest

from monitor.sources.decode import BadEncoding, BodyTooLarge, BoundedDecoder, human_size

TEXT = b"<rss>" + b"news " * 2000 + b"</rss>"


def decode(encoding: str, data: bytes, limit: int = 1 << 20, chunk: int = 7) -> bytes:
    decoder = BoundedDecoder(encoding, limit)
    for i in range(0, len(data), chunk):
        decoder.feed(data[i : i + chunk])
    return decoder.finish()


def deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("encoding", ["", "identity", " Identity "])
def test_identity(encoding: str) -> None:
    assert decode(encoding, TEXT) == TEXT


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", "gzip, identity"])
@pytest.mark.parametrize("chunk", [1, 2, 100, 1 << 20])
def test_gzip(encoding: str, chunk: int) -> None:
    assert decode(encoding, gzip.compress(TEXT), chunk=chunk) == TEXT


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
@pytest.mark.parametrize("chunk", [1, 2, 100, 1 << 20])
def test_deflate(wbits: int, chunk: int) -> None:
    assert decode("deflate", deflate(TEXT, wbits), chunk=chunk) == TEXT


def test_concatenated_gzip_members() -> None:
    assert decode("gzip", gzip.compress(b"one ") + gzip.compress(b"two")) == b"one two"


def test_padding_after_gzip_ignored() -> None:
    assert decode("gzip", gzip.compress(TEXT) + b"\x00" * 10) == TEXT


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
def test_empty_body_is_empty(encoding: str) -> None:
    assert decode(encoding, b"") == b""


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
def test_limit_is_inclusive(encoding: str) -> None:
    data = {"": TEXT, "gzip": gzip.compress(TEXT), "deflate": deflate(TEXT, zlib.MAX_WBITS)}
    assert decode(encoding, data[encoding], limit=len(TEXT)) == TEXT
    with pytest.raises(BodyTooLarge) as info:
        decode(encoding, data[encoding], limit=len(TEXT) - 1)
    assert str(info.value) == "response body over 9.8 KiB (limit)"


def test_bomb_never_decodes_far_past_the_limit() -> None:
    bomb = gzip.compress(bytes(50 * 1024 * 1024))
    decoder = BoundedDecoder("gzip", 1024)
    with pytest.raises(BodyTooLarge):
        decoder.feed(bomb)  # one big chunk: zlib is asked for at most limit + 1 bytes
    assert decoder._size <= 1025


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "deflate, br"])
def test_unsupported(encoding: str) -> None:
    with pytest.raises(BadEncoding, match="unsupported content encoding"):
        BoundedDecoder(encoding, 100)


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", b"\x1f\x8b\x08\x00not really gzip at all"),
        ("gzip", b"plain text, not gzip"),
        ("gzip", gzip.compress(TEXT)[:-20]),
        ("deflate", b"\xff\xff\xff\xff\xff"),
        ("deflate", deflate(TEXT, zlib.MAX_WBITS)[:-10]),
        ("deflate", b"x"),
    ],
    ids=["bad-gzip", "not-gzip", "truncated-gzip", "bad-deflate", "truncated-deflate", "1-byte"],
)
def test_corrupt(encoding: str, data: bytes) -> None:
    with pytest.raises(BadEncoding, match=f"corrupt {encoding} body"):
        decode(encoding, data)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (100, "100 bytes"),
        (1024, "1 KiB"),
        (65536, "64 KiB"),
        (10 << 20, "10 MiB"),
        (1536 << 10, "1.5 MiB"),
        (10010, "9.8 KiB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text
