"""What the operator itself does in S3: read manifests, check payloads, delete a point's
objects (respecting Object Lock), and list a policy's manifests for catalog sync. Bulk data
never passes through here; that is the agent's job.

The client configuration, the error type (`StorageError`) and the reasons of S3's answers are
the agent's (`aegis.agent.s3`): one home for both sides."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aegis.agent.layout import (
    MANIFEST_NAME,
    TOMBSTONE_NAME,
    PointRef,
    is_manifest_key,
    policy_directory,
)
from aegis.agent.manifest import Manifest, ManifestError, parse_manifest
from aegis.agent.s3 import StorageError, abort_stale_uploads, error_code, new_client, reason_of
from aegis.api.common import S3Location

ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


def credentials_from_secret(secret_name: str, data: dict[str, bytes]) -> Credentials:
    """The S3 credentials held by a Secret's data; StorageError `S3CredentialsInvalid` naming
    the missing key (never a value)."""
    try:
        return Credentials(data[ACCESS_KEY].decode().strip(), data[SECRET_KEY].decode().strip())
    except KeyError as missing:
        raise StorageError(
            f"S3 credentials Secret {secret_name} lacks key {missing.args[0]}",
            "S3CredentialsInvalid",
        ) from None


_clients: dict[tuple[str | None, str, Credentials | None], Any] = {}
_clients_lock = threading.Lock()


OPERATOR_POOL = 64
"""Connections of a shared operator-side S3 client (the threads that use it at once)."""


def client(
    location: S3Location, credentials: Credentials | None, default_endpoint: str | None
) -> Any:
    """A boto3 client, shared per endpoint, region and credentials: clients are thread-safe,
    and building one loads the S3 service model (slow, and megabytes each)."""
    endpoint = location.endpoint or default_endpoint
    key = (endpoint, location.region or "us-east-1", credentials)
    with _clients_lock:
        cached = _clients.get(key)
        if cached is None:
            cached = _clients[key] = _new_client(location, credentials, endpoint)
        return cached


def _new_client(location: S3Location, credentials: Credentials | None, endpoint: str | None) -> Any:
    # The operator's calls are small and a reconcile should not hang on a dead store: fewer
    # attempts and shorter timeouts than the agent's bulk transfers.
    keys: dict[str, str | None] = {}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials.access_key_id,
            "aws_secret_access_key": credentials.secret_access_key,
        }
    # One client serves every thread of the process (tick, handler and follow-up pools):
    # botocore's default pool of 10 connections made a 5,000-policy start-up open and
    # discard connections ("Connection pool is full").
    return new_client(
        endpoint,
        location.region,
        keys,
        pool=OPERATOR_POOL,
        max_attempts=5,
        connect_timeout=5,
        read_timeout=30,
    )


def _problem(error: Exception, what: str) -> StorageError:
    code = error_code(error)
    if code is not None:
        return StorageError(f"{what}: S3 answered {code}", reason_of(error))
    return StorageError(f"{what}: {type(error).__name__}: {error}", reason_of(error))


def read_manifest(s3: Any, bucket: str, key: str) -> Manifest:
    """The manifest at `key`; StorageError when unreadable, ManifestError when malformed."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as error:
        raise _problem(error, f"reading s3://{bucket}/{key}") from None
    return parse_manifest(body, f"s3://{bucket}/{key}")


def check_payload(s3: Any, manifest: Manifest, point: PointRef) -> list[str]:
    """Problems that make a point Corrupted: a manifest that does not describe this point,
    or a payload whose stored size differs from what the manifest proves."""
    problems: list[str] = []
    if manifest.location != point.payload_url:
        problems.append(f"manifest describes {manifest.location}, not {point.payload_url}")
    if len(manifest.sha256) != 64:
        problems.append("manifest has no valid sha256")
    try:
        head = s3.head_object(Bucket=point.bucket, Key=point.payload_key)
    except (ClientError, BotoCoreError) as error:
        problem = _problem(error, f"payload {point.payload_url}")
        problems.append(
            str(problem) if problem.reason != "ObjectNotFound" else "payload is missing"
        )
        return problems
    if head["ContentLength"] != manifest.stored_bytes:
        problems.append(
            f"payload holds {head['ContentLength']} bytes, "
            f"the manifest says {manifest.stored_bytes}"
        )
    return problems


def locked_until(s3: Any, bucket: str, key: str) -> dt.datetime | None:
    """Object Lock retention end of an object (read from HEAD: some stores, moto among
    them, fail GetObjectRetention)."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise _problem(error, f"s3://{bucket}/{key}") from None
    except BotoCoreError as error:
        raise _problem(error, f"s3://{bucket}/{key}") from None
    until = head.get("ObjectLockRetainUntilDate")
    hold = head.get("ObjectLockLegalHoldStatus") == "ON"
    if hold:
        return dt.datetime.max.replace(tzinfo=dt.UTC)
    return until if isinstance(until, dt.datetime) else None


def delete_point_objects(
    s3: Any, bucket: str, directory: str, now: dt.datetime
) -> dt.datetime | None:
    """Delete every object (all versions) under a point's directory. When some object is
    still locked, delete nothing and return the lock's end, so the caller keeps the point
    and retries then instead of failing in a loop."""
    prefix = directory.rstrip("/") + "/"
    try:
        versions: list[dict[str, str]] = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                versions.append({"Key": entry["Key"], "VersionId": entry["VersionId"]})
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return None
        raise _problem(error, f"listing s3://{bucket}/{prefix}") from None
    except BotoCoreError as error:
        raise _problem(error, f"listing s3://{bucket}/{prefix}") from None
    latest_lock: dt.datetime | None = None
    for key in {v["Key"] for v in versions}:
        until = locked_until(s3, bucket, key)
        if until is not None and until > now:
            latest_lock = max(latest_lock or until, until)
    if latest_lock is not None:
        return latest_lock
    for start in range(0, len(versions), 1000):
        batch = versions[start : start + 1000]
        try:
            result = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        except (ClientError, BotoCoreError) as error:
            raise _problem(error, f"deleting s3://{bucket}/{prefix}") from None
        if result.get("Errors"):
            first = result["Errors"][0]
            raise StorageError(f"deleting {first['Key']}: {first.get('Code')}", "S3DeleteFailed")
    return None


def list_manifest_keys(s3: Any, bucket: str, prefix: str, namespace: str, policy: str) -> list[str]:
    """Every manifest key of one policy's points."""
    directory = policy_directory(prefix, namespace, policy) + "/"
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=directory):
            keys += [o["Key"] for o in page.get("Contents", []) if is_manifest_key(o["Key"])]
    except (ClientError, BotoCoreError) as error:
        raise _problem(error, f"listing s3://{bucket}/{directory}") from None
    return sorted(keys)


def importable_manifest_keys(
    s3: Any, bucket: str, prefix: str, namespace: str, policy: str
) -> list[str]:
    """The policy's manifest keys that catalog sync may import: those without a tombstone
    (a point its user deleted while its policy retains objects). One listing."""
    directory = policy_directory(prefix, namespace, policy) + "/"
    keys: set[str] = set()
    tombstoned: set[str] = set()
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=directory):
            for entry in page.get("Contents", []):
                key = entry["Key"]
                if is_manifest_key(key):
                    keys.add(key)
                elif key.endswith("/" + TOMBSTONE_NAME):
                    tombstoned.add(key[: -len(TOMBSTONE_NAME)] + MANIFEST_NAME)
    except (ClientError, BotoCoreError) as error:
        raise _problem(error, f"listing s3://{bucket}/{directory}") from None
    return sorted(keys - tombstoned)


def write_tombstone(s3: Any, point: PointRef, body: bytes) -> None:
    """Mark a retained point as deleted by its user, next to its manifest."""
    try:
        s3.put_object(
            Bucket=point.bucket,
            Key=point.tombstone_key,
            Body=body,
            ContentType="application/json",
        )
    except (ClientError, BotoCoreError) as error:
        raise _problem(error, f"writing s3://{point.bucket}/{point.tombstone_key}") from None


def abort_uploads(s3: Any, bucket: str, directory: str) -> int:
    """Abort every unfinished multipart upload under a point's directory (the parts of a
    failed or killed attempt otherwise stay in the bucket, billed, for good). Returns how
    many were aborted."""
    prefix = directory.rstrip("/") + "/"
    return abort_stale_uploads(s3, bucket, prefix, missing_ok=True, told=None)


def head_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket"):
            raise StorageError(f"bucket {bucket} does not exist", "BucketNotFound") from None
        if code in ("403", "AccessDenied"):
            raise StorageError(f"access to bucket {bucket} is denied", "S3AccessDenied") from None
        raise _problem(error, f"bucket {bucket}") from None
    except BotoCoreError as error:
        raise _problem(error, f"bucket {bucket}") from None


__all__ = [
    "MANIFEST_NAME",
    "Credentials",
    "ManifestError",
    "StorageError",
    "check_payload",
    "client",
    "delete_point_objects",
    "head_bucket",
    "list_manifest_keys",
    "locked_until",
    "read_manifest",
]
