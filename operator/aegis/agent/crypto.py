"""Client-side encryption: AES-256-GCM as a streaming AEAD (the STREAM construction).

The payload is the concatenation of sealed chunks. Plaintext is cut into chunks of
`chunk_size` bytes (the last one may be shorter, even empty); chunk i is sealed with

    nonce_i = nonce_prefix (7 random bytes) || uint32_be(i) || final_flag (0x01 last, else 0x00)
    sealed_i = AES-256-GCM(data_key, nonce_i, plaintext_i, aad=b"")   # ciphertext || 16-byte tag

Because the nonce binds the position and the final flag, a reordered, dropped, duplicated or
truncated chunk fails authentication. The 32-byte data key is random per backup and stored in
the manifest wrapped (RFC 3394 AES key wrap) by a policy key. docs/encryption-format.md has the
format with a decryption recipe that needs no Aegis code.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from aegis.agent.scrub import SCRUBBER

ALGORITHM = "AES-256-GCM-STREAM"
KEY_WRAP = "AES-KW"
KEY_BYTES = 32
NONCE_PREFIX_BYTES = 7
TAG_BYTES = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNKS = 1 << 32
_KEY_ID = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")

Sink = Callable[[bytes], None]


class KeyringError(Exception):
    """A key that is missing, malformed or wrong. The message never holds key material."""


class IntegrityError(Exception):
    """The stored payload does not authenticate: tampered, reordered, truncated, wrong key."""


def chunk_nonce(prefix: bytes, index: int, final: bool) -> bytes:
    """The 12-byte GCM nonce of chunk `index`."""
    if len(prefix) != NONCE_PREFIX_BYTES:
        raise ValueError(f"nonce prefix must be {NONCE_PREFIX_BYTES} bytes, got {len(prefix)}")
    if not 0 <= index < MAX_CHUNKS:
        raise ValueError(f"chunk index {index} out of range: the stream is too long")
    return prefix + struct.pack(">IB", index, 1 if final else 0)


def sealed_size(plain_size: int, chunk_size: int) -> int:
    """Stored size of a payload of `plain_size` bytes (handy for checks and docs)."""
    chunks = max(1, -(-plain_size // chunk_size))
    return plain_size + chunks * TAG_BYTES


class StreamEncryptor:
    """Seals a byte stream chunk by chunk; the last chunk carries the final flag.

    A full chunk is held back until more data arrives, because only then is it known not to be
    the last one."""

    def __init__(self, key: bytes, nonce_prefix: bytes, chunk_size: int, sink: Sink) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("data key must be 32 bytes")
        if chunk_size < 1:
            raise ValueError("chunk size must be positive")
        self._aead = AESGCM(key)
        self._prefix = nonce_prefix
        self._chunk_size = chunk_size
        self._sink = sink
        self._buffer = bytearray()
        self._index = 0
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write after close")
        self._buffer += data
        size = self._chunk_size
        if len(self._buffer) <= size:
            return
        # Seal every full chunk except a trailing full one, which might be the last.
        full = (len(self._buffer) - 1) // size
        view = memoryview(self._buffer)
        try:
            for n in range(full):
                self._seal(view[n * size : (n + 1) * size], final=False)
        finally:
            view.release()
        del self._buffer[: full * size]

    def close(self) -> None:
        if self._closed:
            return
        self._seal(bytes(self._buffer), final=True)
        self._buffer = bytearray()
        self._closed = True

    def _seal(self, plain: bytes | memoryview, final: bool) -> None:
        nonce = chunk_nonce(self._prefix, self._index, final)
        self._sink(self._aead.encrypt(nonce, plain, None))
        self._index += 1


class StreamDecryptor:
    """Opens a sealed stream chunk by chunk, emitting only authenticated plaintext.

    Raises IntegrityError naming the chunk on a tampered or reordered chunk, and on `close`
    when the stream ended without a final chunk (truncation)."""

    def __init__(self, key: bytes, nonce_prefix: bytes, chunk_size: int, sink: Sink) -> None:
        self._aead = AESGCM(key)
        self._prefix = nonce_prefix
        self._sealed = chunk_size + TAG_BYTES
        self._sink = sink
        self._buffer = bytearray()
        self._index = 0
        self._done = False
        self.plain_bytes = 0

    @property
    def chunks(self) -> int:
        return self._index

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            if data:
                raise IntegrityError(
                    f"data after the final chunk {self._index - 1}: the payload was extended"
                )
            return
        self._buffer += data
        size = self._sealed
        if len(self._buffer) <= size:
            return
        full = (len(self._buffer) - 1) // size
        view = memoryview(self._buffer)
        try:
            for n in range(full):
                self._open(view[n * size : (n + 1) * size], final=False)
        finally:
            view.release()
        del self._buffer[: full * size]

    def close(self) -> None:
        if self._done:
            return
        if len(self._buffer) < TAG_BYTES:
            raise IntegrityError(
                f"payload truncated: it ends inside chunk {self._index} without a final chunk"
            )
        self._open(bytes(self._buffer), final=True)
        self._buffer = bytearray()
        self._done = True

    def _open(self, sealed: bytes | memoryview, final: bool) -> None:
        nonce = chunk_nonce(self._prefix, self._index, final)
        try:
            plain = self._aead.decrypt(nonce, sealed, None)
        except InvalidTag:
            if final:
                raise IntegrityError(
                    f"chunk {self._index} (the last one) failed authentication: the payload "
                    "was truncated, modified or its chunks reordered"
                ) from None
            raise IntegrityError(
                f"chunk {self._index} failed authentication: the payload was modified or its "
                "chunks reordered"
            ) from None
        self._index += 1
        self.plain_bytes += len(plain)
        self._sink(plain)


# --- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """The policy's keys by id. The greatest id (sorted as text) encrypts; every id decrypts."""

    keys: dict[str, bytes]
    origin: str

    @property
    def newest_id(self) -> str:
        if not self.keys:
            raise KeyringError(f"no keys in {self.origin}: add a 32-byte key under a key id")
        return max(self.keys)

    def get(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            have = ", ".join(sorted(self.keys)) or "none"
            raise KeyringError(
                f"key id {key_id!r} is not in {self.origin} (key ids present: {have}); "
                "add the key that encrypted this backup back to the key Secret"
            ) from None


def decode_key(raw: bytes, key_id: str) -> bytes:
    """A 32-byte key given as raw bytes, hex (64 digits) or base64 (44 characters)."""
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == KEY_BYTES:
        return text
    try:
        as_text = text.decode("ascii")
    except UnicodeDecodeError:
        as_text = ""
    if _HEX_KEY.match(as_text):
        return bytes.fromhex(as_text)
    try:
        decoded = base64.b64decode(as_text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise KeyringError(
        f"key {key_id!r} is not a 32-byte key: give 32 raw bytes, 64 hex digits or base64 of "
        f"32 bytes (got {len(raw)} bytes); e.g. `openssl rand -base64 32`"
    )


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise KeyringError(f"key id {key_id!r} is invalid: use letters, digits, '-', '_' or '.'")
    return key_id


def load_keys_dir(path: str | Path) -> Keyring:
    """Keys mounted from a Secret: one file per key id. Kubernetes' `..data` entries are skipped."""
    directory = Path(path)
    if not directory.is_dir():
        raise KeyringError(
            f"keys directory {str(directory)!r} does not exist: mount the policy's key Secret "
            "there, or set --keys-dir / AEGIS_KEYS_DIR"
        )
    keys: dict[str, bytes] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        key = decode_key(entry.read_bytes(), check_key_id(entry.name))
        SCRUBBER.add(key)
        keys[entry.name] = key
    return Keyring(keys, f"keys directory {str(directory)!r}")


def load_keys_json(text: str, origin: str = "AEGIS_KEYS") -> Keyring:
    """Keys as a JSON object {key id: hex or base64 key}, e.g. from env AEGIS_KEYS."""
    SCRUBBER.add(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise KeyringError(f"{origin} is not a JSON object of key id → key") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise KeyringError(f"{origin} is not a JSON object of key id → key (hex or base64)")
    keys: dict[str, bytes] = {}
    for key_id, value in data.items():
        SCRUBBER.add(value)
        key = decode_key(value.encode(), check_key_id(key_id))
        SCRUBBER.add(key)
        keys[key_id] = key
    return Keyring(keys, origin)


KEY_ENV_PREFIX = "AEGIS_KEY_"


def load_keys_env(env: dict[str, str]) -> Keyring | None:
    """Keys as one env var per key id, `AEGIS_KEY_<key id>`: how the operator hands a key
    Secret to a Job (each through a secretKeyRef, so no key is in the Job's spec)."""
    keys: dict[str, bytes] = {}
    for name, value in env.items():
        if not name.startswith(KEY_ENV_PREFIX) or not value:
            continue
        SCRUBBER.add(value)
        key_id = check_key_id(name[len(KEY_ENV_PREFIX) :])
        key = decode_key(value.encode(), key_id)
        SCRUBBER.add(key)
        keys[key_id] = key
    return Keyring(keys, "the AEGIS_KEY_* environment variables") if keys else None


def load_keyring(keys_dir: str | None, env: dict[str, str]) -> Keyring:
    """AEGIS_KEYS (JSON) wins, then AEGIS_KEY_<id> variables, then the keys directory."""
    if env.get("AEGIS_KEYS"):
        return load_keys_json(env["AEGIS_KEYS"])
    from_env = load_keys_env(env)
    if from_env is not None:
        return from_env
    return load_keys_dir(keys_dir or env.get("AEGIS_KEYS_DIR") or "/etc/aegis/keys")


@dataclass(frozen=True)
class DataKey:
    """A fresh data key and what the manifest records about it."""

    key: bytes
    key_id: str
    wrapped: bytes
    nonce_prefix: bytes


def new_data_key(keyring: Keyring) -> DataKey:
    key_id = keyring.newest_id
    data_key = secrets.token_bytes(KEY_BYTES)
    SCRUBBER.add(data_key)
    wrapped = aes_key_wrap(keyring.get(key_id), data_key)
    return DataKey(data_key, key_id, wrapped, os.urandom(NONCE_PREFIX_BYTES))


def unwrap_data_key(keyring: Keyring, key_id: str, wrapped: bytes) -> bytes:
    try:
        data_key = aes_key_unwrap(keyring.get(key_id), wrapped)
    except InvalidUnwrap:
        raise KeyringError(
            f"wrong key: key {key_id!r} in {keyring.origin} does not unwrap this backup's data "
            "key (the key under that id was changed); restore the original key"
        ) from None
    SCRUBBER.add(data_key)
    return data_key
