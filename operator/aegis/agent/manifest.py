"""The manifest: the durable record of one backup, written next to its payload after it.

It holds everything RecoveryPoint status shows plus what decryption needs (the wrapped data
key, its key id, the chunk size and nonce prefix), and never key material in the clear. A new
cluster rebuilds its RecoveryPoints from manifests alone (`aegis agent catalog`).

Wire form: camelCase JSON. `formatVersion` is bumped on any change a reader must understand;
readers refuse versions newer than they know and ignore unknown fields.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any, Literal

from pydantic import Field, ValidationError

from aegis.agent.compress import Compression
from aegis.agent.wire import SourceInfo, WireRecord

FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest that cannot be read or is of an unknown format."""


class TableRows(WireRecord):
    """Rows of one table, counted in the dump's own snapshot."""

    schema_: str = Field(alias="schema")
    """Schema name."""
    name: str
    """Table name."""
    rows: int
    """Row count."""

    @property
    def qualified(self) -> str:
        return f"{self.schema_}.{self.name}"


class SourceRecord(SourceInfo):
    """What was backed up: RecoveryPoint status.source (`SourceInfo`), plus details."""

    method: str | None = None
    """How the dump was taken: pg_dump, Sync, Bgsave or command."""
    command: list[str] | None = None
    """The dump command (argument vector) of a command source."""
    dump_tool_version: str | None = None
    """Version of pg_dump that wrote the payload (pg_restore must be at least as new)."""
    table_rows: list[TableRows] | None = None
    """Per-table row counts (PostgreSQL), for `matchesBackup` checks."""


class KeyWrap(WireRecord):
    """One wrapped copy of the data key: any one of them opens the backup."""

    key_wrap: str
    """AES-KW (RFC 3394, by a key of the policy's key Secret) or AWS-KMS (KMS Encrypt)."""
    key_id: str
    """AES-KW: the Secret's key id. AWS-KMS: the key ARN KMS reported at Encrypt."""
    wrapped_key: str
    """The wrapped data key (AES-KW output or the KMS CiphertextBlob), base64."""
    region: str | None = None
    """AWS-KMS: region of the key."""
    encryption_context: dict[str, str] | None = None
    """AWS-KMS: the encryption context of Encrypt (the manifest's namespace, policy and
    recoveryPoint); Decrypt needs exactly this."""

    def wrapped_key_bytes(self) -> bytes:
        return base64.b64decode(self.wrapped_key)


class EncryptionRecord(WireRecord):
    """How the payload is encrypted; see docs/encryption-format.md."""

    algorithm: str
    """AES-256-GCM-STREAM."""
    key_id: str
    """Key id of the first wrap (kept for readers that know only one wrap)."""
    key_wrap: str
    """How the first wrap was made: AES-KW (RFC 3394) by the policy key, or AWS-KMS."""
    wrapped_key: str
    """The first wrap's wrapped data key, base64."""
    wraps: list[KeyWrap] | None = None
    """Every wrapped copy of the data key, the first one included; absent in manifests
    written before multi-wrap (then the fields above are the only wrap)."""
    chunk_size: int
    """Plaintext bytes per sealed chunk (the last may be shorter)."""
    nonce_prefix: str
    """7-byte nonce prefix, hex."""
    tag_bytes: int = 16
    """GCM tag bytes after each chunk's ciphertext."""

    def wrapped_key_bytes(self) -> bytes:
        return base64.b64decode(self.wrapped_key)

    def all_wraps(self) -> list[KeyWrap]:
        if self.wraps:
            return list(self.wraps)
        return [KeyWrap(key_wrap=self.key_wrap, key_id=self.key_id, wrapped_key=self.wrapped_key)]

    def nonce_prefix_bytes(self) -> bytes:
        return bytes.fromhex(self.nonce_prefix)


class StorageRecord(WireRecord):
    """How the objects were stored."""

    storage_class: str | None = None
    """S3 storage class."""
    server_side_encryption: str | None = None
    """AES256 or aws:kms."""
    kms_key_id: str | None = None
    """KMS key of SSE-KMS."""
    object_lock_mode: str | None = None
    """GOVERNANCE or COMPLIANCE."""


class CopyRecord(WireRecord):
    """A copy of the payload in another bucket."""

    location: str
    """s3://bucket/key of the copy's payload."""
    state: Literal["Completed", "Failed"]
    """Outcome of the copy."""
    time: dt.datetime
    """When the copy reached its state."""
    method: str | None = None
    """ServerSideCopy or Streamed."""
    message: str | None = None
    """Why it failed."""


class Manifest(WireRecord):
    """One backup."""

    format_version: int = FORMAT_VERSION
    """Version of this manifest format."""
    namespace: str
    """Namespace of the BackupPolicy."""
    policy: str
    """Name of the BackupPolicy."""
    recovery_point: str
    """Name of the RecoveryPoint."""
    location: str
    """s3://bucket/key of the payload this manifest describes."""
    manifest: str
    """Key of this manifest."""
    payload_format: Literal["pg_dump-custom", "redis-rdb", "command-stdout"]
    """What the decrypted, decompressed payload is (command-stdout: whatever the source's
    dump command wrote, for its matching restore command)."""
    start_time: dt.datetime
    """When the backup started."""
    completion_time: dt.datetime
    """When the payload was complete."""
    source_time: dt.datetime
    """When the source snapshot was taken: the point in time this backup restores to."""
    source: SourceRecord
    """What was backed up."""
    size_bytes: int
    """Logical size of the dump before compression and encryption."""
    stored_bytes: int
    """Size of the stored payload."""
    sha256: str
    """SHA-256 of the stored payload, hex."""
    compression: Compression
    """Compression of the payload before encryption."""
    compression_level: int | None = None
    """Compression level used."""
    encryption: EncryptionRecord
    """Encryption scheme and the wrapped data key."""
    storage: StorageRecord | None = None
    """S3 storage options of the objects."""
    locked_until: dt.datetime | None = None
    """Object Lock retention end of the payload."""
    copies: list[CopyRecord] | None = None
    """Copies in further buckets."""
    agent_version: str | None = None
    """Version of the agent that wrote it."""

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"), sort_keys=True)

    def table_rows(self) -> dict[str, int]:
        """`schema.table` → rows."""
        return {t.qualified: t.rows for t in self.source.table_rows or []}

    def recovery_point_status(self) -> dict[str, Any]:
        """The RecoveryPoint status fields this manifest proves, in wire (camelCase) form."""
        source = self.source.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            include=set(SourceInfo.model_fields),
        )
        status: dict[str, Any] = {
            "startTime": _wire_time(self.start_time),
            "completionTime": _wire_time(self.completion_time),
            "sourceTime": _wire_time(self.source_time),
            "source": source,
            "location": self.location,
            "manifest": self.manifest,
            "sizeBytes": self.size_bytes,
            "storedBytes": self.stored_bytes,
            "sha256": self.sha256,
            "encryption": {"algorithm": self.encryption.algorithm, "keyId": self.encryption.key_id},
            "compression": self.compression,
        }
        if self.locked_until is not None:
            status["lockedUntil"] = _wire_time(self.locked_until)
        if self.copies:
            status["copies"] = [
                c.model_dump(
                    mode="json",
                    by_alias=True,
                    exclude_none=True,
                    include={"location", "state", "time", "message"},
                )
                for c in self.copies
            ]
        return status


def _wire_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_manifest(raw: bytes | str, where: str) -> Manifest:
    """Read a manifest, refusing unknown format versions with a clear reason."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ManifestError(f"manifest {where} is not JSON") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {where} is not a JSON object")
    version = data.get("formatVersion")
    if not isinstance(version, int) or version < 1:
        raise ManifestError(f"manifest {where} has no valid formatVersion")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"manifest {where} has formatVersion {version}; this agent reads up to "
            f"{FORMAT_VERSION}: use a newer Aegis image"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"manifest {where}: {field}: {first['msg']}") from None
