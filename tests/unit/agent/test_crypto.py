"""The streaming AEAD format: round trips, and every kind of damage is detected."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.agent.crypto import (
    TAG_BYTES,
    IntegrityError,
    KeyringError,
    StreamDecryptor,
    StreamEncryptor,
    chunk_nonce,
    decode_key,
    load_keyring,
    load_keys_dir,
    load_keys_json,
    new_data_key,
    sealed_size,
    unwrap_data_key,
)
from aegis.agent.scrub import SCRUBBER

KEY = bytes(range(32))
PREFIX = b"\x01\x02\x03\x04\x05\x06\x07"


def seal_bytes(data: bytes, chunk: int, pieces: int = 1) -> bytes:
    out: list[bytes] = []
    enc = StreamEncryptor(KEY, PREFIX, chunk, out.append)
    step = max(1, len(data) // pieces) if data else 1
    for start in range(0, len(data), step):
        enc.write(data[start : start + step])
    enc.close()
    return b"".join(out)


def open_bytes(sealed: bytes, chunk: int, key: bytes = KEY, piece: int = 7) -> bytes:
    out: list[bytes] = []
    dec = StreamDecryptor(key, PREFIX, chunk, out.append)
    for start in range(0, len(sealed), piece):
        dec.write(sealed[start : start + piece])
    dec.close()
    return b"".join(out)


def split_chunks(sealed: bytes, chunk: int) -> list[bytes]:
    size = chunk + TAG_BYTES
    return [sealed[i : i + size] for i in range(0, len(sealed), size)]


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=2000),
    chunk=st.integers(1, 300),
    pieces=st.integers(1, 9),
    read_piece=st.integers(1, 500),
)
def test_round_trip_any_split(data: bytes, chunk: int, pieces: int, read_piece: int) -> None:
    sealed = seal_bytes(data, chunk, pieces)
    assert len(sealed) == sealed_size(len(data), chunk)
    assert open_bytes(sealed, chunk, piece=read_piece) == data


def test_empty_stream_is_one_final_chunk() -> None:
    sealed = seal_bytes(b"", 16)
    assert len(sealed) == TAG_BYTES
    assert open_bytes(sealed, 16) == b""


def test_exact_multiple_ends_with_a_full_final_chunk() -> None:
    sealed = seal_bytes(b"x" * 64, 16)
    assert len(sealed) == 4 * (16 + TAG_BYTES)
    # The last full chunk carries the final flag: it opens with final=True only.
    last = split_chunks(sealed, 16)[-1]
    assert AESGCM(KEY).decrypt(chunk_nonce(PREFIX, 3, True), last, None) == b"x" * 16


def test_matches_the_documented_construction() -> None:
    """docs/encryption-format.md: nonce = prefix || uint32_be(i) || final flag, no AAD."""
    data = os.urandom(40)
    sealed = seal_bytes(data, 16)
    chunks = split_chunks(sealed, 16)
    aead = AESGCM(KEY)
    plain = b"".join(
        aead.decrypt(PREFIX + i.to_bytes(4, "big") + bytes([i == len(chunks) - 1]), c, None)
        for i, c in enumerate(chunks)
    )
    assert plain == data


def test_flipped_byte_is_refused_naming_the_chunk() -> None:
    sealed = bytearray(seal_bytes(os.urandom(100), 16))
    sealed[40] ^= 0x01  # inside chunk 1
    with pytest.raises(IntegrityError, match="chunk 1 failed authentication"):
        open_bytes(bytes(sealed), 16)


def test_swapped_chunks_are_refused() -> None:
    chunks = split_chunks(seal_bytes(os.urandom(100), 16), 16)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(IntegrityError, match="chunk 1 failed authentication"):
        open_bytes(b"".join(chunks), 16)


def test_truncation_at_a_chunk_boundary_is_refused() -> None:
    chunks = split_chunks(seal_bytes(os.urandom(100), 16), 16)
    with pytest.raises(IntegrityError, match="last one"):
        open_bytes(b"".join(chunks[:-1]), 16)


def test_truncation_inside_a_tag_is_refused() -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        open_bytes(b"123", 16)


def test_data_after_the_final_chunk_is_refused() -> None:
    sealed = seal_bytes(os.urandom(10), 16)
    out: list[bytes] = []
    dec = StreamDecryptor(KEY, PREFIX, 16, out.append)
    dec.write(sealed)
    dec.close()
    with pytest.raises(IntegrityError, match="after the final chunk"):
        dec.write(b"more")


def test_a_wrong_data_key_fails_the_first_chunk() -> None:
    sealed = seal_bytes(os.urandom(100), 16)
    with pytest.raises(IntegrityError, match="chunk 0"):
        open_bytes(sealed, 16, key=bytes(32))


def test_nonce_layout() -> None:
    assert chunk_nonce(PREFIX, 0x01020304, True) == PREFIX + b"\x01\x02\x03\x04\x01"
    assert chunk_nonce(PREFIX, 5, False)[-1] == 0
    with pytest.raises(ValueError, match="out of range"):
        chunk_nonce(PREFIX, 1 << 32, False)


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k,
        lambda k: k.hex().encode(),
        lambda k: k.hex().encode() + b"\n",
        lambda k: base64.b64encode(k),
        lambda k: base64.b64encode(k) + b"\n",
    ],
)
def test_key_encodings(encode: object) -> None:
    key = os.urandom(32)
    assert decode_key(encode(key), "k") == key  # type: ignore[operator]


def test_bad_key_names_the_id_not_the_value() -> None:
    with pytest.raises(KeyringError) as caught:
        decode_key(b"too-short-secret", "2024-01")
    assert "2024-01" in str(caught.value)
    assert "too-short-secret" not in str(caught.value)


def test_keys_dir_skips_kubernetes_metadata_and_picks_the_greatest_id(tmp_path: Path) -> None:
    (tmp_path / "..data").mkdir()
    (tmp_path / "..2024_01_01").mkdir()
    (tmp_path / "2024-01").write_bytes(os.urandom(32).hex().encode())
    (tmp_path / "2025-06").write_bytes(base64.b64encode(os.urandom(32)))
    ring = load_keys_dir(tmp_path)
    assert sorted(ring.keys) == ["2024-01", "2025-06"]
    assert ring.newest_id == "2025-06"


def test_missing_keys_dir_says_what_to_mount(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="mount the policy's key Secret"):
        load_keys_dir(tmp_path / "nope")


def test_empty_keyring_has_no_newest(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="no keys"):
        _ = load_keys_dir(tmp_path).newest_id


def test_env_keys_win_and_are_scrubbed(tmp_path: Path) -> None:
    secret = os.urandom(32)
    text = f'{{"k9": "{secret.hex()}"}}'
    ring = load_keyring(str(tmp_path), {"AEGIS_KEYS": text})
    assert ring.keys == {"k9": secret}
    assert secret.hex() not in SCRUBBER.scrub(f"key is {secret.hex()}")


def test_env_keys_must_be_an_object() -> None:
    with pytest.raises(KeyringError, match="JSON object"):
        load_keys_json("[1]")


def test_wrap_unwrap_and_rotation(tmp_path: Path) -> None:
    (tmp_path / "k1").write_bytes(os.urandom(32))
    old = load_keys_dir(tmp_path)
    data_key = new_data_key(old)
    assert data_key.key_id == "k1" and len(data_key.wrapped) == 40
    assert data_key.key not in data_key.wrapped
    (tmp_path / "k2").write_bytes(os.urandom(32))
    rotated = load_keys_dir(tmp_path)
    assert new_data_key(rotated).key_id == "k2"
    assert unwrap_data_key(rotated, "k1", data_key.wrapped) == data_key.key


def test_unwrap_with_a_changed_key_says_wrong_key(tmp_path: Path) -> None:
    (tmp_path / "k1").write_bytes(os.urandom(32))
    data_key = new_data_key(load_keys_dir(tmp_path))
    (tmp_path / "k1").write_bytes(os.urandom(32))
    with pytest.raises(KeyringError, match=r"^wrong key"):
        unwrap_data_key(load_keys_dir(tmp_path), "k1", data_key.wrapped)


def test_unwrap_with_a_missing_id_lists_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "k2").write_bytes(os.urandom(32))
    with pytest.raises(KeyringError, match=r"'k1' is not in .*key ids present: k2"):
        unwrap_data_key(load_keys_dir(tmp_path), "k1", bytes(40))


def test_env_key_per_id_as_the_operator_passes_them(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    env = {
        "AEGIS_KEY_2024-01": base64.b64encode(old).decode(),
        "AEGIS_KEY_2025-01": new.hex(),
        "OTHER": "x",
    }
    ring = load_keyring(str(tmp_path / "absent"), env)
    assert ring.keys == {"2024-01": old, "2025-01": new}
    assert ring.newest_id == "2025-01"
    assert new.hex() not in SCRUBBER.scrub(new.hex())
