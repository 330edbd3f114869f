"""The RecoveryPoint lifecycle against the cluster and the bucket: start the backup Job once,
and when it ends, prove the result from the manifest. No kopf import: handlers call these.

Every step is idempotent and keyed by deterministic names, so a restart at any moment neither
creates a second Job nor loses one: a point with no terminal phase is always driven to its Job,
and a Job that ended is always folded back into its point.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aegis import metrics
from aegis.agent.manifest import ManifestError
from aegis.api import BACKUP_POLICY, RECOVERY_POINT
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.common import S3Location
from aegis.cloud import s3
from aegis.k8s import objects
from aegis.k8s.cache import CACHE
from aegis.k8s.jobs import build_job, job_outcome
from aegis.reach import EndpointRefused
from aegis.reconcilers import backup, tenancy
from aegis.reconcilers.conditions import ConditionUpdate, iso, set_conditions
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.settings import Settings

TERMINAL = ("Completed", "Failed", "Corrupted", "Expired")

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


class PointBlocked(Exception):
    """The point cannot progress yet (its policy or a Secret is missing); retried later."""

    def __init__(self, reason: str, message: str, retry_seconds: float = 60) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_seconds = retry_seconds


@dataclass(frozen=True)
class PolicyContext:
    """A point's policy, parsed, with what is needed to talk to its bucket."""

    name: str
    namespace: str
    spec: BackupPolicySpec
    body: dict[str, Any]


def load_policy(namespace: str, name: str, *, cached: bool = False) -> PolicyContext:
    """The policy, parsed; from the watch cache when `cached` and it is there."""
    body = CACHE.policy(namespace, name) if cached else None
    try:
        body = body or objects.get_custom(BACKUP_POLICY, namespace, name)
    except objects.NotFound:
        raise PointBlocked(
            "PolicyNotFound",
            f"BackupPolicy {name} does not exist in {namespace}: create it or fix spec.policyRef",
        ) from None
    spec = parse_spec(BACKUP_POLICY.spec, body.get("spec"))
    if isinstance(spec, SpecError):
        raise PointBlocked("PolicyInvalid", f"BackupPolicy {name} is invalid: {spec.message}")
    assert isinstance(spec, BackupPolicySpec)
    return PolicyContext(name, namespace, spec, body)


def key_ids(policy: PolicyContext) -> list[str]:
    """Key ids of the policy's key Secret (names only: values stay in the Secret)."""
    secret = policy.spec.encryption.key_secret_ref.name
    try:
        data = objects.read_secret(policy.namespace, secret)
    except objects.NotFound:
        raise PointBlocked(
            "KeySecretNotFound",
            f"encryption key Secret {secret} does not exist: "
            "create it with at least one 32-byte key",
        ) from None
    if not data:
        raise PointBlocked("EncryptionKeyMissing", f"encryption key Secret {secret} holds no keys")
    return sorted(data)


def admit_policy(policy: PolicyContext, settings: Settings) -> None:
    """Raise PointBlocked when the policy reaches outside its namespace (an image, a
    ServiceAccount or an endpoint the settings do not allow): no Job is built from it. The
    agent connects to the endpoints by itself, so their names are resolved and checked here,
    just before its Job is made."""
    error = tenancy.refusal(policy.spec, policy.namespace, settings)
    if error is not None:
        raise PointBlocked(error.reason, f"BackupPolicy {policy.name}: {error.message}")
    for location in [policy.spec.storage, *(policy.spec.copies or [])]:
        admit_endpoint(location, settings)


def admit_endpoint(location: S3Location, settings: Settings) -> None:
    """Raise PointBlocked when the location's endpoint resolves to an address the settings
    refuse; checked before boto3 (which resolves by itself) gets the URL."""
    if not location.endpoint:
        return  # AWS, or the operator's own AEGIS_S3_ENDPOINT
    try:
        settings.endpoints.check_resolved_url("S3 endpoint", location.endpoint)
    except EndpointRefused as refused:
        raise PointBlocked(EndpointRefused.REASON, str(refused)) from None
    except OSError as error:
        raise PointBlocked(
            "S3Unreachable", f"S3 endpoint {location.endpoint}: cannot resolve it ({error})"
        ) from None


def s3_client_for(location: S3Location, namespace: str, settings: Settings) -> Any:
    admit_endpoint(location, settings)
    credentials = None
    ref = location.credentials_secret_ref
    if ref is not None:
        try:
            data = objects.read_secret(namespace, ref.name)
        except objects.NotFound:
            raise PointBlocked(
                "S3CredentialsNotFound", f"S3 credentials Secret {ref.name} does not exist"
            ) from None
        try:
            credentials = s3.Credentials(
                data[s3.ACCESS_KEY].decode().strip(), data[s3.SECRET_KEY].decode().strip()
            )
        except KeyError as missing:
            raise PointBlocked(
                "S3CredentialsInvalid",
                f"S3 credentials Secret {ref.name} lacks key {missing.args[0]}",
            ) from None
    return s3.client(location, credentials, settings.s3_endpoint)


def _patch_point(
    point: dict[str, Any], status: dict[str, Any], updates: list[ConditionUpdate]
) -> None:
    meta = point["metadata"]
    now = dt.datetime.now(dt.UTC)
    current = (point.get("status") or {}).get("conditions")
    status = dict(status)
    if updates:
        status["conditions"] = set_conditions(
            current, updates, generation=meta.get("generation"), now=now
        )
    objects.patch_custom_status(RECOVERY_POINT, meta["namespace"], meta["name"], status)


def backup_job(
    point: dict[str, Any], settings: Settings, policy: PolicyContext | None = None
) -> dict[str, Any]:
    """The Job object that takes the point's backup (reads the policy unless given, and the
    ids of its keys)."""
    namespace = point["metadata"]["namespace"]
    policy = policy or load_policy(namespace, point["spec"]["policyRef"]["name"])
    admit_policy(policy, settings)
    return build_job(backup.backup_job_request(point, policy.spec, key_ids(policy), settings))


def start(point: dict[str, Any], settings: Settings) -> tuple[str, bool]:
    """Make sure the point's backup Job exists. Returns (job name, created now)."""
    return launch(point, backup_job(point, settings), settings)


def launch(point: dict[str, Any], job: dict[str, Any], settings: Settings) -> tuple[str, bool]:
    """Create the prepared Job (or find it) and record it in the point's status."""
    meta = point["metadata"]
    namespace, name = meta["namespace"], job["metadata"]["name"]
    existing, created = objects.create_job(namespace, job)
    status = point.get("status") or {}
    if created or status.get("jobName") != name:
        mark_running(point, name)
    if job_outcome(existing) != "Running":
        finish(namespace, meta["name"], settings)
    return name, created


def mark_running(point: dict[str, Any], job_name: str) -> None:
    status = point.get("status") or {}
    _patch_point(
        point,
        {
            "phase": "Running",
            "jobName": job_name,
            "startTime": status.get("startTime") or iso(dt.datetime.now(dt.UTC)),
            "message": f"backup Job {job_name} is running",
        },
        [ConditionUpdate("Complete", "Unknown", "BackupRunning", f"Job {job_name} is running")],
    )


@dataclass(frozen=True)
class Finished:
    point: dict[str, Any]
    policy: str
    outcome: backup.PointOutcome


def finish(namespace: str, name: str, settings: Settings) -> Finished | None:
    """Fold an ended Job into its point. None when there is nothing (more) to do."""
    with _locks[(namespace, name)]:
        try:
            point = objects.get_custom(RECOVERY_POINT, namespace, name)
        except objects.NotFound:
            return None
        status = point.get("status") or {}
        if status.get("phase") in TERMINAL or not status.get("jobName"):
            return None
        job = objects.get_job(namespace, status["jobName"])
        state = job_outcome(job)
        if state == "Running":
            return None
        policy_name = point["spec"]["policyRef"]["name"]
        if state == "Missing":
            outcome = backup.failed(
                None, f"backup Job {status['jobName']} disappeared before it ended"
            )
        elif state == "Failed":
            reason_line = objects.job_failure_message(namespace, status["jobName"])
            condition: dict[str, Any] = next(
                (
                    c
                    for c in (job or {}).get("status", {}).get("conditions") or []
                    if c.get("type") == "Failed"
                ),
                {},
            )
            outcome = backup.failed(reason_line, condition.get("message"))
        else:
            outcome = _prove(namespace, policy_name, name, settings)
        _patch_point(
            point,
            {
                **outcome.status,
                "completionTime": outcome.status.get("completionTime")
                or iso(dt.datetime.now(dt.UTC)),
            },
            [ConditionUpdate(t, s, r, m) for t, s, r, m in outcome.conditions],
        )
        _record_metrics(namespace, policy_name, point, outcome)
        point["status"] = {**status, **outcome.status}
        return Finished(point, policy_name, outcome)


def _prove(namespace: str, policy_name: str, name: str, settings: Settings) -> backup.PointOutcome:
    policy = load_policy(namespace, policy_name)
    ref = backup.point_ref(policy.spec, namespace, policy_name, name)
    client = s3_client_for(policy.spec.storage, namespace, settings)
    try:
        manifest = s3.read_manifest(client, ref.bucket, ref.manifest_key)
    except (s3.S3Problem, ManifestError) as error:
        return backup.missing_manifest(str(error))
    return backup.completed(manifest, s3.check_payload(client, manifest, ref))


def _record_metrics(
    namespace: str, policy: str, point: dict[str, Any], outcome: backup.PointOutcome
) -> None:
    metrics.copies_ended(namespace, policy, outcome.status.get("copies"))
    if outcome.phase == "Completed":
        started = backup.parse_time(outcome.status.get("startTime"))
        ended = backup.parse_time(outcome.status.get("completionTime"))
        if started and ended:
            metrics.BACKUP_DURATION.labels(namespace, policy).observe(
                (ended - started).total_seconds()
            )
    else:
        metrics.BACKUP_FAILURES.labels(namespace, policy).inc()


def block(point: dict[str, Any], blocked: PointBlocked) -> None:
    """Report why the point cannot start, without failing it: the cause may be fixed."""
    _patch_point(
        point,
        {"phase": "Pending", "message": blocked.message},
        [ConditionUpdate("Accepted", "False", blocked.reason, blocked.message)],
    )


def delete_objects(
    point: dict[str, Any], settings: Settings, *, pruned: bool
) -> dt.datetime | None:
    """Remove the point's payload, manifest and copies when its policy says so. Returns the
    Object Lock end when objects are locked (the point must be kept until then)."""
    meta = point["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        policy = load_policy(namespace, point["spec"]["policyRef"]["name"])
    except PointBlocked:
        # Without its policy the point's bucket is unknown; deleting the policy keeps points
        # and their objects, by design.
        return None
    if not pruned and policy.spec.deletion_policy == "Retain":
        return None
    ref = backup.point_ref(policy.spec, namespace, policy.name, name)
    now = dt.datetime.now(dt.UTC)
    locations = [(policy.spec.storage, ref)] + [
        (copy, ref.in_bucket(copy.bucket, copy.prefix)) for copy in policy.spec.copies or []
    ]
    latest_lock: dt.datetime | None = None
    for location, where in locations:
        client = s3_client_for(location, namespace, settings)
        until = s3.delete_point_objects(client, where.bucket, where.directory, now)
        if until is not None:
            latest_lock = max(latest_lock or until, until)
    return latest_lock
