"""Streaming compression round trips with bounded output pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.agent.compress import (
    COMPRESSIONS,
    OUTPUT_PIECE,
    Compression,
    DecompressError,
    new_compressor,
    new_decompressor,
    parse_compression,
)


def compress(kind: Compression, data: bytes, pieces: int = 3, threads: int = 0) -> bytes:
    out: list[bytes] = []
    comp = new_compressor(kind, out.append, None, threads)
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        comp.write(data[start : start + step])
    comp.close()
    return b"".join(out)


def decompress(kind: Compression, data: bytes, piece: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    dec = new_decompressor(kind, out.append)
    for start in range(0, len(data), piece):
        dec.write(data[start : start + piece])
    dec.close()
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), kind=st.sampled_from(COMPRESSIONS), pieces=st.integers(1, 5))
def test_round_trip(data: bytes, kind: Compression, pieces: int) -> None:
    assert b"".join(decompress(kind, compress(kind, data, pieces))) == data


def test_zstd_with_threads_round_trips() -> None:
    data = b"".join(b"row %d value %d\n" % (i, i * 7) for i in range(200_000))
    packed = compress("Zstd", data, pieces=10, threads=2)
    assert len(packed) < len(data) // 5
    assert b"".join(decompress("Zstd", packed, piece=1 << 16)) == data


@pytest.mark.parametrize("kind", ["Zstd", "Gzip"])
def test_output_pieces_stay_bounded_on_extreme_ratios(kind: Compression) -> None:
    packed = compress(kind, bytes(40 * OUTPUT_PIECE), pieces=4)
    assert len(packed) < 200_000
    pieces = decompress(kind, packed, piece=len(packed))
    assert max(len(p) for p in pieces) <= OUTPUT_PIECE
    assert sum(len(p) for p in pieces) == 40 * OUTPUT_PIECE


def test_truncated_gzip_is_refused() -> None:
    packed = compress("Gzip", b"hello world" * 100)
    with pytest.raises(DecompressError, match="ended before"):
        decompress("Gzip", packed[:-5])


def test_corrupt_zstd_is_refused() -> None:
    packed = bytearray(compress("Zstd", b"hello world " * 1000))
    packed[20] ^= 0xFF
    with pytest.raises(DecompressError):
        decompress("Zstd", bytes(packed))


def test_parse_compression() -> None:
    assert parse_compression("zstd") == "Zstd"
    assert parse_compression("NONE") == "None"
    with pytest.raises(ValueError, match="use one of Zstd, Gzip, None"):
        parse_compression("lz4")
