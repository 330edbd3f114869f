"""The streaming stages, wired together: source → compress → encrypt → hash → upload, and
download → hash → authenticate → decrypt → decompress → sink. Nothing here holds more than a
few chunks and parts in memory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aegis.agent.compress import Compression, new_compressor, new_decompressor
from aegis.agent.crypto import IntegrityError, StreamDecryptor, StreamEncryptor
from aegis.agent.log import Progress

Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class Sealed:
    """What the backup pipeline measured."""

    size_bytes: int
    stored_bytes: int
    sha256: str


def seal(
    source: Iterable[bytes],
    store: Sink,
    key: bytes,
    nonce_prefix: bytes,
    chunk_size: int,
    compression: Compression,
    level: int | None,
    threads: int,
    progress: Progress,
) -> Sealed:
    """Compress, encrypt and hash `source` into `store` (e.g. a multipart upload's write)."""
    hasher = hashlib.sha256()

    def stored(data: bytes) -> None:
        hasher.update(data)
        progress.stored += len(data)
        store(data)

    encryptor = StreamEncryptor(key, nonce_prefix, chunk_size, stored)
    compressor = new_compressor(compression, encryptor.write, level, threads)
    for data in source:
        progress.read += len(data)
        compressor.write(data)
    compressor.close()
    encryptor.close()
    return Sealed(progress.read, progress.stored, hasher.hexdigest())


@dataclass(frozen=True)
class Expected:
    """What the manifest promises about the stored payload."""

    stored_bytes: int
    sha256: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class Opened:
    stored_bytes: int
    plain_bytes: int
    logical_bytes: int
    chunks: int


def open_sealed(
    stored: Iterable[bytes],
    sink: Sink | None,
    key: bytes,
    nonce_prefix: bytes,
    chunk_size: int,
    compression: Compression,
    expected: Expected,
    progress: Progress,
    decompress: bool = True,
) -> Opened:
    """Hash and authenticate every chunk of `stored`, handing authenticated, decompressed
    bytes to `sink` (None: discard). Raises IntegrityError saying what is wrong; the final
    chunk and the hash are checked before this returns, so a caller that commits only after
    it returns never commits a damaged payload."""
    hasher = hashlib.sha256()
    logical = 0

    def plain_out(data: bytes) -> None:
        nonlocal logical
        logical += len(data)
        progress.read = logical
        if sink is not None:
            sink(data)

    decompressor = new_decompressor(compression, plain_out) if decompress else None
    decryptor = StreamDecryptor(
        key, nonce_prefix, chunk_size, decompressor.write if decompressor else (lambda _d: None)
    )
    size = 0
    for data in stored:
        size += len(data)
        if size > expected.stored_bytes:
            raise IntegrityError(
                f"payload is longer than the manifest's storedBytes "
                f"({expected.stored_bytes}): it was replaced or appended to"
            )
        hasher.update(data)
        progress.stored = size
        decryptor.write(data)
        if not decompress:
            progress.read = decryptor.plain_bytes
    if size < expected.stored_bytes:
        raise IntegrityError(f"payload truncated: {size} of {expected.stored_bytes} bytes")
    digest = hasher.hexdigest()
    if digest != expected.sha256:
        raise IntegrityError(
            f"payload SHA-256 mismatch: stored bytes hash to {digest}, the "
            f"manifest says {expected.sha256}"
        )
    decryptor.close()
    if not decompress:
        progress.read = decryptor.plain_bytes
    if decompressor is not None:
        decompressor.close()
        if expected.size_bytes is not None and logical != expected.size_bytes:
            raise IntegrityError(
                f"payload decompresses to {logical} bytes, the manifest says {expected.size_bytes}"
            )
    return Opened(size, decryptor.plain_bytes, logical, decryptor.chunks)
