"""The bucket layout, defined once: the agent writes it and the operator reads it.

    <prefix>/<namespace>/<policy>/<recoverypoint>/payload         compressed, encrypted dump
    <prefix>/<namespace>/<policy>/<recoverypoint>/manifest.json   written last

A payload without a manifest is an incomplete backup. Pure functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PAYLOAD_NAME = "payload"
# Written by the operator next to the manifest when a user deletes a point whose policy keeps
# its objects (deletionPolicy Retain): catalog sync does not import a tombstoned point again.
# Deleting this object re-imports the point on purpose (docs/restore.md).
TOMBSTONE_NAME = "deleted-by-user.json"
MANIFEST_NAME = "manifest.json"
_SEGMENT = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")


class LayoutError(ValueError):
    """A name or URL that does not fit the bucket layout."""


@dataclass(frozen=True)
class PointRef:
    """Where one recovery point lives in a bucket."""

    bucket: str
    prefix: str
    namespace: str
    policy: str
    point: str

    @property
    def directory(self) -> str:
        return point_directory(self.prefix, self.namespace, self.policy, self.point)

    @property
    def payload_key(self) -> str:
        return f"{self.directory}/{PAYLOAD_NAME}"

    @property
    def manifest_key(self) -> str:
        return f"{self.directory}/{MANIFEST_NAME}"

    @property
    def payload_url(self) -> str:
        return s3_url(self.bucket, self.payload_key)

    @property
    def tombstone_key(self) -> str:
        return f"{self.directory}/{TOMBSTONE_NAME}"

    @property
    def manifest_url(self) -> str:
        return s3_url(self.bucket, self.manifest_key)

    def in_bucket(self, bucket: str, prefix: str) -> PointRef:
        """The same point in another bucket (a copy)."""
        return PointRef(bucket, normalize_prefix(prefix), self.namespace, self.policy, self.point)


def normalize_prefix(prefix: str) -> str:
    """`/a/b/` → `a/b`; empty stays empty."""
    return "/".join(part for part in prefix.split("/") if part)


def _check_segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value):
        raise LayoutError(
            f"{what} {value!r} is not a valid path segment: use letters, digits, '-', '_' or '.'"
        )
    return value


def _checked_prefix(prefix: str) -> str:
    normalized = normalize_prefix(prefix)
    if any(part in (".", "..") for part in normalized.split("/")):
        raise LayoutError(
            f"prefix {prefix!r} has a '.' or '..' segment: S3 keys are literal, so it would not "
            "mean a parent directory; write the prefix without them"
        )
    return normalized


def point_directory(prefix: str, namespace: str, policy: str, point: str) -> str:
    """The key prefix (no trailing slash) holding one recovery point's objects."""
    parts = [
        _checked_prefix(prefix),
        _check_segment(namespace, "namespace"),
        _check_segment(policy, "policy"),
        _check_segment(point, "recovery point"),
    ]
    return "/".join(p for p in parts if p)


def policy_directory(prefix: str, namespace: str, policy: str) -> str:
    """The key prefix (no trailing slash) holding every point of one policy."""
    parts = [
        _checked_prefix(prefix),
        _check_segment(namespace, "namespace"),
        _check_segment(policy, "policy"),
    ]
    return "/".join(p for p in parts if p)


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` → (`bucket`, `some/key`); the key may be empty."""
    if not url.startswith("s3://"):
        raise LayoutError(f"{url!r} is not an s3:// URL, e.g. s3://my-bucket/backups")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise LayoutError(f"{url!r} has no bucket name, e.g. s3://my-bucket/backups")
    return bucket, key.strip("/")


def manifest_key_for(key: str) -> str:
    """The manifest key for a manifest key, a payload key or a point directory."""
    key = key.strip("/")
    if key.endswith("/" + MANIFEST_NAME) or key == MANIFEST_NAME:
        return key
    if key.endswith("/" + PAYLOAD_NAME):
        key = key[: -len(PAYLOAD_NAME) - 1]
    return f"{key}/{MANIFEST_NAME}" if key else MANIFEST_NAME


def is_manifest_key(key: str) -> bool:
    return key.endswith("/" + MANIFEST_NAME)


def parse_point_key(bucket: str, prefix: str, key: str) -> PointRef:
    """The point a manifest or payload key under `prefix` belongs to."""
    prefix = normalize_prefix(prefix)
    rest = key
    if prefix:
        if not key.startswith(prefix + "/"):
            raise LayoutError(f"key {key!r} is not under prefix {prefix!r}")
        rest = key[len(prefix) + 1 :]
    parts = rest.split("/")
    if len(parts) != 4 or parts[3] not in (MANIFEST_NAME, PAYLOAD_NAME):
        raise LayoutError(
            f"key {key!r} does not match <prefix>/<namespace>/<policy>/<point>/"
            f"{{{PAYLOAD_NAME}|{MANIFEST_NAME}}}"
        )
    namespace, policy, point = (
        _check_segment(v, w)
        for v, w in zip(parts[:3], ("namespace", "policy", "recovery point"), strict=True)
    )
    return PointRef(bucket, prefix, namespace, policy, point)


DRILLS_DIRECTORY = "_drills"
"""Beside a policy's point directories: `_` is never the start of a Kubernetes name, so no
RecoveryPoint's directory (and no point's deletion) can reach the drills' evidence."""


def drill_evidence_key(prefix: str, namespace: str, policy: str, drill: str, run: str) -> str:
    """`<prefix>/<namespace>/<policy>/_drills/<drill>/<run>.json`: the evidence record of one
    drill run (`run` is its start, `yyyymmddhhmmss` UTC) next to the points it restored."""
    directory = policy_directory(prefix, namespace, policy)
    return f"{directory}/{DRILLS_DIRECTORY}/{_check_segment(drill, 'drill')}/{run}.json"
