"""Re-wrap existing backups for a new KMS key without touching their payloads.

For each manifest under a location: open the data key with any wrap this agent can use,
wrap it for the new KMS key, and PUT the manifest again with the wrap added. The payload,
its SHA-256 and sizes do not change, so every status field the manifest proves stays true.

Object Lock: a locked manifest cannot be overwritten or deleted, but a versioned bucket (every
Object Lock bucket is) accepts a new version, which readers then get. The new version is
written with the same lock mode and retain-until date, so it is protected as long as the
original; the locked original stays as it was (without the new wrap) until its lock ends,
and the report says so for each such manifest. A PUT the bucket refuses is reported as
Failed, never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aegis.agent.config import KmsKeyConfig
from aegis.agent.errors import AgentError
from aegis.agent.keys import KeyringLoader, add_kms_wrap, open_data_key
from aegis.agent.layout import is_manifest_key, s3_url
from aegis.agent.manifest import ManifestError, parse_manifest
from aegis.agent.s3 import S3Client, StorageError, describe_error, get_bytes, list_keys, put_bytes


@dataclass
class RewrapOutcome:
    manifest: str
    state: str
    """Rewrapped, AlreadyWrapped or Failed."""
    message: str
    locked_until: str | None = None
    """Retain-until date of the locked original version, when there is one."""
    version_id: str | None = None
    """Version id of the new manifest version."""

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "manifest": self.manifest,
            "state": self.state,
            "message": self.message,
            "lockedUntil": self.locked_until,
            "versionId": self.version_id,
        }
        return {k: v for k, v in wire.items() if v is not None}


def _lock_of(client: S3Client, bucket: str, key: str) -> dict[str, Any]:
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as error:
        raise StorageError(f"cannot read s3://{bucket}/{key}: {describe_error(error)}") from None
    # head_object, not get_object_retention (moto answers 500 there; see ENVIRONMENT.md).
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    if mode and until:
        return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}
    return {}


def rewrap_manifest(
    client: S3Client,
    bucket: str,
    key: str,
    keyring_loader: KeyringLoader,
    new_key: KmsKeyConfig,
    kms_keys: list[KmsKeyConfig],
    env: dict[str, str],
) -> RewrapOutcome:
    url = s3_url(bucket, key)
    try:
        manifest = parse_manifest(get_bytes(client, bucket, key), url)
        data_key, _ = open_data_key(manifest, keyring_loader, kms_keys, env)
        updated, added = add_kms_wrap(manifest, data_key, new_key, env)
        if not added:
            return RewrapOutcome(url, "AlreadyWrapped", f"already has a wrap for {new_key.key_id}")
        lock = _lock_of(client, bucket, key)
        put_bytes(client, bucket, key, updated.to_json().encode(), lock)
        version = client.head_object(Bucket=bucket, Key=key).get("VersionId")
    except (StorageError, ManifestError, AgentError) as error:
        reason = error.reason if isinstance(error, AgentError) else str(error)
        return RewrapOutcome(url, "Failed", reason)
    if lock:
        until = lock["ObjectLockRetainUntilDate"]
        until_text = until.isoformat() if hasattr(until, "isoformat") else str(until)
        return RewrapOutcome(
            url,
            "Rewrapped",
            f"manifest is locked ({lock['ObjectLockMode']}) until {until_text}: wrote a new "
            "version with the wrap and the same lock; the locked original version stays "
            "without the new wrap until then",
            locked_until=until_text,
            version_id=version,
        )
    return RewrapOutcome(url, "Rewrapped", f"added a wrap for {new_key.key_id}", version_id=version)


def rewrap_location(
    client: S3Client,
    bucket: str,
    prefix: str,
    keyring_loader: KeyringLoader,
    new_key: KmsKeyConfig,
    kms_keys: list[KmsKeyConfig],
    env: dict[str, str],
) -> list[RewrapOutcome]:
    """Every manifest under s3://bucket/prefix/, each with its outcome."""
    listing = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    keys = list(list_keys(client, bucket, listing, is_manifest_key))
    return [
        rewrap_manifest(client, bucket, key, keyring_loader, new_key, kms_keys, env) for key in keys
    ]
