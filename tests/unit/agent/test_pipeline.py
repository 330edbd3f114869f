"""seal → open_sealed in memory: sizes, hash, and the reason for each kind of damage."""

from __future__ import annotations

import hashlib
import os

import pytest

from aegis.agent.compress import Compression
from aegis.agent.crypto import TAG_BYTES, IntegrityError
from aegis.agent.log import Progress
from aegis.agent.pipeline import Expected, open_sealed, seal

KEY = os.urandom(32)
PREFIX = os.urandom(7)
CHUNK = 4096


def sealed_payload(data: bytes, kind: Compression = "None") -> tuple[bytes, Expected]:
    out: list[bytes] = []
    result = seal(
        [data[i : i + 1000] for i in range(0, len(data), 1000)],
        out.append,
        KEY,
        PREFIX,
        CHUNK,
        kind,
        None,
        0,
        Progress("t", 0),
    )
    stored = b"".join(out)
    assert result.stored_bytes == len(stored)
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.size_bytes == len(data)
    return stored, Expected(len(stored), result.sha256, len(data))


def opened(stored: bytes, expected: Expected, kind: Compression = "None") -> bytes:
    out: list[bytes] = []
    open_sealed(
        [stored[i : i + 3000] for i in range(0, len(stored), 3000)],
        out.append,
        KEY,
        PREFIX,
        CHUNK,
        kind,
        expected,
        Progress("t", 0),
    )
    return b"".join(out)


@pytest.mark.parametrize("kind", ["Zstd", "Gzip", "None"])
def test_round_trip(kind: Compression) -> None:
    data = os.urandom(5000) + b"abc" * 10000
    stored, expected = sealed_payload(data, kind)
    assert opened(stored, expected, kind) == data


def test_truncated_object_says_truncated() -> None:
    stored, expected = sealed_payload(os.urandom(20000))
    with pytest.raises(IntegrityError, match=r"truncated: \d+ of \d+ bytes"):
        opened(stored[: -(CHUNK + TAG_BYTES)], expected)


def test_flipped_byte_names_the_chunk() -> None:
    stored, expected = sealed_payload(os.urandom(20000))
    damaged = bytearray(stored)
    damaged[CHUNK + TAG_BYTES + 5] ^= 1
    with pytest.raises(IntegrityError, match="chunk 1 failed authentication"):
        opened(bytes(damaged), expected)


def test_same_size_replacement_fails_the_hash_or_a_chunk() -> None:
    stored, expected = sealed_payload(os.urandom(20000))
    with pytest.raises(IntegrityError, match="chunk 0 failed"):
        opened(os.urandom(len(stored)), expected)


def test_wrong_hash_in_manifest_is_refused() -> None:
    stored, expected = sealed_payload(os.urandom(100))
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        opened(stored, Expected(expected.stored_bytes, "0" * 64, expected.size_bytes))


def test_longer_object_is_refused() -> None:
    stored, expected = sealed_payload(os.urandom(100))
    with pytest.raises(IntegrityError, match="longer than"):
        opened(stored + b"x", expected)


def test_nothing_reaches_the_sink_from_a_damaged_chunk() -> None:
    stored, expected = sealed_payload(os.urandom(3 * CHUNK))
    damaged = bytearray(stored)
    damaged[5] ^= 1
    out: list[bytes] = []
    with pytest.raises(IntegrityError):
        open_sealed(
            [bytes(damaged)], out.append, KEY, PREFIX, CHUNK, "None", expected, Progress("t", 0)
        )
    assert out == []
