"""RecoveryPoint (`rp`): one backup, and the evidence that it is good."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import ConfigDict

from aegis.agent.wire import SourceInfo
from aegis.api.checks import CheckResult
from aegis.api.common import ApiModel, Condition, Display, LocalObjectRef, StatusModel, cel

IMMUTABLE_SPEC = {"rule": "self == oldSelf", "message": "spec is immutable once set"}

Phase = Literal["Pending", "Running", "Completed", "Failed", "Corrupted", "Expired"]


class RecoveryPointSpec(ApiModel):
    """Which policy this backup belongs to and why it was taken. Immutable."""

    model_config = ConfigDict(json_schema_extra=cel(IMMUTABLE_SPEC))

    policy_ref: LocalObjectRef
    """The BackupPolicy whose source, storage and encryption this backup uses."""
    trigger: Literal["Scheduled", "Manual", "Imported"] = "Manual"
    """Scheduled (made by the operator at a tick), Manual (made by a user: runs once, now)
    or Imported (rebuilt by catalog sync from a manifest in the bucket)."""
    scheduled_time: dt.datetime | None = None
    """The tick this point was made for (Scheduled only)."""


class CopyStatus(StatusModel):
    """One copy of the backup in another bucket."""

    location: str
    """s3://bucket/key of the copy's payload."""
    state: Literal["Pending", "Completed", "Failed"]
    """State of the copy."""
    time: dt.datetime | None = None
    """When the copy reached its state."""
    message: str | None = None
    """Why the copy failed."""


class EncryptionInfo(StatusModel):
    """How the payload is encrypted."""

    algorithm: str
    """Encryption scheme, e.g. AES-256-GCM-STREAM."""
    key_id: str
    """Id of the policy key that wraps the data key."""


class VerificationInfo(StatusModel):
    """The latest proof that the backup restores."""

    time: dt.datetime
    """When it was verified."""
    result: Literal["Passed", "Failed"]
    """Whether the verification passed."""
    restore_seconds: float | None = None
    """Measured duration of the test restore."""
    checks: list[CheckResult] | None = None
    """Results of the checks."""
    by: str | None = None
    """What verified it, e.g. drill/<name>, restore/<name> or verify/<job>."""
    request: str | None = None
    """The verification request this answers (`dr.aegis.dev/verify` annotation value or the
    policy's verification tick), so a request runs once."""
    chunks: int | None = None
    """Encrypted chunks downloaded, hashed and authenticated (verify Jobs)."""
    message: str | None = None
    """What was proven, or why it failed."""


class RecoveryPointStatus(StatusModel):
    """The evidence: where the backup is and proof of what it holds."""

    conditions: list[Condition] | None = None
    """Accepted, Complete/Failed, Verified."""
    observed_generation: int | None = None
    """The spec generation last processed."""
    phase: Phase | None = None
    """Summary for printer columns; conditions are authoritative."""
    job_name: str | None = None
    """The backup Job."""
    start_time: dt.datetime | None = None
    """When the backup started."""
    completion_time: dt.datetime | None = None
    """When the backup ended."""
    source_time: dt.datetime | None = None
    """When the source snapshot was taken: the point in time this backup restores to."""
    source: SourceInfo | None = None
    """What was backed up."""
    location: str | None = None
    """s3://bucket/key of the payload."""
    manifest: str | None = None
    """Key of the manifest next to the payload."""
    copies: list[CopyStatus] | None = None
    """Copies in further buckets."""
    size_bytes: int | None = None
    """Logical size of the dump before compression and encryption."""
    stored_bytes: int | None = None
    """Size of the stored (compressed, encrypted) payload."""
    display: Display | None = None
    """storedBytes, sizeBytes and the backup's duration as people read them."""
    sha256: str | None = None
    """SHA-256 of the stored payload bytes, hex."""
    encryption: EncryptionInfo | None = None
    """Encryption scheme and key id."""
    compression: str | None = None
    """Compression of the payload."""
    locked_until: dt.datetime | None = None
    """Object Lock retention end: the point is kept at least until then."""
    verification: VerificationInfo | None = None
    """Latest verification."""
    message: str | None = None
    """Human-readable summary, or the failure reason."""
