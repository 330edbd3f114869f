"""Streaming compression: zstd (default), gzip or none, with bounded output per call."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Literal, Protocol

import zstandard

Compression = Literal["Zstd", "Gzip", "None"]
COMPRESSIONS: tuple[Compression, ...] = ("Zstd", "Gzip", "None")
# zstd 1 rather than 3: on dump-like data it keeps ~97% of level 3's ratio at ~1.5x the
# speed, which keeps the agent at the source's own dump rate (bench/RESULTS.md).
DEFAULT_LEVEL: dict[Compression, int] = {"Zstd": 1, "Gzip": 6, "None": 0}
Sink = Callable[[bytes], None]
# Largest piece handed to the sink while decompressing: keeps memory bounded even for
# highly compressible data.
OUTPUT_PIECE = 1 << 20


def parse_compression(value: str) -> Compression:
    """`zstd`, `ZSTD`, `Zstd` → `Zstd`."""
    for name in COMPRESSIONS:
        if value.lower() == name.lower():
            return name
    raise ValueError(f"compression {value!r} is unknown: use one of {', '.join(COMPRESSIONS)}")


class Compressor(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def close(self) -> None: ...


class _Passthrough:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview) -> None:
        if data:
            self._sink(bytes(data))

    def close(self) -> None:
        return None


class _Zstd:
    def __init__(self, sink: Sink, level: int, threads: int) -> None:
        self._sink = sink
        self._obj = zstandard.ZstdCompressor(
            level=level, threads=threads, write_checksum=True
        ).compressobj()

    def write(self, data: bytes | memoryview) -> None:
        out = self._obj.compress(data)
        if out:
            self._sink(out)

    def close(self) -> None:
        out = self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        if out:
            self._sink(out)


class _Gzip:
    def __init__(self, sink: Sink, level: int) -> None:
        self._sink = sink
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, data: bytes | memoryview) -> None:
        out = self._obj.compress(data)
        if out:
            self._sink(out)

    def close(self) -> None:
        self._sink(self._obj.flush())


def new_compressor(
    kind: Compression, sink: Sink, level: int | None = None, threads: int = 0
) -> Compressor:
    """A streaming compressor writing to `sink`. zstd `threads` > 0 (or -1: one per core)
    compresses in background C threads, off the GIL."""
    chosen = DEFAULT_LEVEL[kind] if level is None else level
    if kind == "Zstd":
        return _Zstd(sink, chosen, threads)
    if kind == "Gzip":
        return _Gzip(sink, chosen)
    return _Passthrough(sink)


class DecompressError(Exception):
    """The authenticated plaintext does not decompress: a bug or a mislabeled manifest."""


class _SinkWriter:
    """The file-like end zstandard's stream writer hands its output to."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)


class _ZstdDecompressor:
    def __init__(self, sink: Sink) -> None:
        # A stream writer hands output on in pieces of at most OUTPUT_PIECE bytes, whatever the
        # compression ratio; decompressobj() would return it all at once.
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            _SinkWriter(sink),  # type: ignore[arg-type]  # duck-typed: only write() is used
            write_size=OUTPUT_PIECE,
            closefd=False,
        )

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._writer.write(data)
        except zstandard.ZstdError as error:
            raise DecompressError(f"zstd: {error}") from None

    def close(self) -> None:
        # The end of the stream is proven by the final flag of the encrypted stream (and the
        # frame's content checksum is verified as it is read).
        try:
            self._writer.flush()  # type: ignore[no-untyped-call]
        except zstandard.ZstdError as error:
            raise DecompressError(f"zstd: {error}") from None


class _GzipDecompressor:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._obj = zlib.decompressobj(31)

    def write(self, data: bytes | memoryview) -> None:
        pending = bytes(data)
        try:
            while pending:
                out = self._obj.decompress(pending, OUTPUT_PIECE)
                if out:
                    self._sink(out)
                pending = self._obj.unconsumed_tail
            while not self._obj.eof:
                out = self._obj.decompress(b"", OUTPUT_PIECE)
                if not out:
                    break
                self._sink(out)
        except zlib.error as error:
            raise DecompressError(f"gzip: {error}") from None
        if self._obj.unused_data:
            raise DecompressError("gzip: data after the end of the compressed stream")

    def close(self) -> None:
        if not self._obj.eof:
            raise DecompressError("gzip: the compressed stream ended before its end mark")


class _PassthroughDecompressor(_Passthrough):
    pass


def new_decompressor(kind: Compression, sink: Sink) -> Compressor:
    if kind == "Zstd":
        return _ZstdDecompressor(sink)
    if kind == "Gzip":
        return _GzipDecompressor(sink)
    return _PassthroughDecompressor(sink)
