"""The RecoveryPoint lifecycle against the cluster and the bucket: start the backup Job once,
and when it ends, prove the result from the manifest. No kopf import: handlers call these.

One writer: `sync` is the only code that writes a point's phase, its Complete condition and
its completion event. It reads the point, its Job (by its deterministic name) and, once the
Job has ended, the evidence (the pod's termination state, the manifest in the bucket), derives
the status with the pure `derive`, and writes only what differs. The completion event has a
deterministic name, so telling it again after a restart is a no-op. Whoever calls `sync`,
however often, whenever the operator was killed, the point ends with one Job, one Complete
condition and one completion event.

Ports: `Cluster` (the API server) and `Store` (the bucket) are Protocols, and the time is
passed in; the handlers pass `aegis.k8s.adapters.ApiCluster` and `BucketStore`, tests pass
in-memory ones.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from aegis import metrics
from aegis.agent.manifest import Manifest, ManifestError
from aegis.api import BACKUP_POLICY
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.common import S3Location
from aegis.cloud import s3
from aegis.k8s.jobs import Termination, build_job, job_outcome, killed_reason
from aegis.locks import KeyedLocks
from aegis.reach import EndpointRefused
from aegis.reconcilers import backup, naming, tenancy
from aegis.reconcilers.conditions import ConditionUpdate, find, iso, set_conditions
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.settings import Settings

TERMINAL = ("Completed", "Failed", "Corrupted", "Expired")

_locks = KeyedLocks()  # per object: this process's writers of one object take turns


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


def load_policy(cluster: PolicyReader, namespace: str, name: str) -> PolicyContext:
    """The policy, parsed."""
    body = cluster.get_policy(namespace, name)
    if body is None:
        raise PointBlocked(
            "PolicyNotFound",
            f"BackupPolicy {name} does not exist in {namespace}: create it or fix spec.policyRef",
        )
    spec = parse_spec(BACKUP_POLICY.spec, body.get("spec"))
    if isinstance(spec, SpecError):
        raise PointBlocked("PolicyInvalid", f"BackupPolicy {name} is invalid: {spec.message}")
    assert isinstance(spec, BackupPolicySpec)
    return PolicyContext(name, namespace, spec, body)


def key_ids(cluster: PolicyReader, policy: PolicyContext) -> list[str]:
    """Key ids of the policy's key Secret (names only: values stay in the Secret)."""
    ref = policy.spec.encryption.key_secret_ref
    if ref is None:
        return []  # KMS keys only: the Job wraps and unwraps with KMS
    secret = ref.name
    data = cluster.read_secret(policy.namespace, secret)
    if data is None:
        raise PointBlocked(
            "KeySecretNotFound",
            f"encryption key Secret {secret} does not exist: "
            "create it with at least one 32-byte key",
        )
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
    for kms_key in policy.spec.encryption.kms_keys or []:
        if kms_key.endpoint:
            try:
                settings.endpoints.check_resolved_url("KMS endpoint", kms_key.endpoint)
            except EndpointRefused as refused:
                raise PointBlocked(EndpointRefused.REASON, str(refused)) from None
            except OSError as error:
                raise PointBlocked(
                    "KmsUnreachable",
                    f"KMS endpoint {kms_key.endpoint}: cannot resolve it ({error})",
                ) from None


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


def s3_client_for(
    cluster: PolicyReader, location: S3Location, namespace: str, settings: Settings
) -> Any:
    admit_endpoint(location, settings)
    credentials = None
    ref = location.credentials_secret_ref
    if ref is not None:
        data = cluster.read_secret(namespace, ref.name)
        if data is None:
            raise PointBlocked(
                "S3CredentialsNotFound", f"S3 credentials Secret {ref.name} does not exist"
            )
        try:
            credentials = s3.credentials_from_secret(ref.name, data)
        except s3.StorageError as problem:
            raise PointBlocked(problem.reason, str(problem)) from None
    return s3.client(location, credentials, settings.s3_endpoint)


# --- ports --------------------------------------------------------------------------------


class PolicyReader(Protocol):
    """What finding a point's policy, its keys and its bucket credentials needs."""

    def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The BackupPolicy, or None when it does not exist."""

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's data, or None when it does not exist. Values are secrets."""


class Cluster(PolicyReader, Protocol):
    """What the point lifecycle needs of the API server."""

    def get_point(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_point_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_job(self, namespace: str, job: dict[str, Any]) -> tuple[dict[str, Any], bool]: ...

    def termination(self, namespace: str, job_name: str) -> Termination | None: ...

    def post_event(
        self,
        involved: dict[str, Any],
        event_type: str,
        reason: str,
        message: str,
        key: str | None = None,
    ) -> None:
        """Post an event (best effort); with `key`, told once per object and key (a repeat
        is a no-op)."""


@dataclass(frozen=True)
class Evidence:
    """What the bucket says about an ended backup: its manifest and the problems found, or
    why the manifest could not be read."""

    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)
    unreadable: str | None = None


class Store(Protocol):
    """What the point lifecycle needs of the point's bucket (its policy's storage)."""

    def evidence(self, point: dict[str, Any]) -> Evidence: ...

    def abort_uploads(self, point: dict[str, Any]) -> int:
        """Abort the point's unfinished multipart uploads; how many there were."""

    def write_tombstone(self, point: dict[str, Any], body: bytes) -> None:
        """Put the tombstone next to the point's manifest (its objects are kept)."""

    def delete_objects(self, point: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
        """Delete the point's payload, manifest and copies; the latest Object Lock end of
        objects that are locked (and so kept), or None."""


class BucketStore:
    """The point's bucket through boto3, found through its policy (read through `cluster`)."""

    def __init__(self, cluster: PolicyReader, settings: Settings) -> None:
        self.cluster = cluster
        self.settings = settings

    def _where(self, point: dict[str, Any]) -> tuple[PolicyContext, Any, Any]:
        namespace, name = point["metadata"]["namespace"], point["metadata"]["name"]
        policy = load_policy(self.cluster, namespace, point["spec"]["policyRef"]["name"])
        ref = backup.point_ref(policy.spec, namespace, policy.name, name)
        client = s3_client_for(self.cluster, policy.spec.storage, namespace, self.settings)
        return policy, ref, client

    def evidence(self, point: dict[str, Any]) -> Evidence:
        _, ref, client = self._where(point)
        try:
            manifest = s3.read_manifest(client, ref.bucket, ref.manifest_key)
        except (s3.StorageError, ManifestError) as error:
            return Evidence(None, unreadable=str(error))
        return Evidence(manifest, s3.check_payload(client, manifest, ref))

    def abort_uploads(self, point: dict[str, Any]) -> int:
        policy, ref, client = self._where(point)
        aborted = s3.abort_uploads(client, ref.bucket, ref.directory)
        for copy in policy.spec.copies or []:
            where = ref.in_bucket(copy.bucket, copy.prefix)
            copy_client = s3_client_for(self.cluster, copy, policy.namespace, self.settings)
            aborted += s3.abort_uploads(copy_client, where.bucket, where.directory)
        return aborted

    def write_tombstone(self, point: dict[str, Any], body: bytes) -> None:
        _, ref, client = self._where(point)
        s3.write_tombstone(client, ref, body)

    def delete_objects(self, point: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
        policy, ref, _ = self._where(point)
        locations = [(policy.spec.storage, ref)] + [
            (copy, ref.in_bucket(copy.bucket, copy.prefix)) for copy in policy.spec.copies or []
        ]
        latest_lock: dt.datetime | None = None
        for location, where in locations:
            client = s3_client_for(self.cluster, location, policy.namespace, self.settings)
            until = s3.delete_point_objects(client, where.bucket, where.directory, now)
            if until is not None:
                latest_lock = max(latest_lock or until, until)
        return latest_lock


# --- the pure derivation -------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A point's status as its evidence shows it: fields, condition updates, and the event
    that tells the state (posted once, under `event_key`)."""

    status: dict[str, Any]
    conditions: list[ConditionUpdate]
    event: tuple[str, str, str] | None = None
    """(type, reason, message)"""
    event_key: str | None = None
    outcome: backup.PointOutcome | None = None
    """Set when the Job has ended: the point is terminal now."""


def job_start_time(job: dict[str, Any]) -> str | None:
    status = job.get("status") or {}
    started = status.get("startTime") or (job.get("metadata") or {}).get("creationTimestamp")
    return str(started) if started else None


def failed_outcome(
    job: dict[str, Any] | None, termination: Termination | None, job_name: str
) -> backup.PointOutcome:
    """A Job that failed or vanished. A kill or an OOM (the pod's terminated state) is told
    apart from an agent error, whose reason is the agent's own one-line message."""
    if job is None:
        return backup.failed(None, f"backup Job {job_name} disappeared before it ended")
    failed_condition = find(((job.get("status") or {}).get("conditions")), "Failed") or {}
    killed = killed_reason(termination)
    if killed is not None:
        reason, message = killed
        return backup.failed(None, message, reason=reason)
    if failed_condition.get("reason") == "DeadlineExceeded":
        message = (
            "the backup Job exceeded its activeDeadlineSeconds and was stopped; raise "
            "spec.job.activeDeadlineSeconds or make the backup faster"
        )
        return backup.failed(None, message, reason="DeadlineExceeded")
    return backup.failed(
        termination.message if termination else None, failed_condition.get("message")
    )


def derive(
    point: dict[str, Any],
    job: dict[str, Any] | None,
    termination: Termination | None,
    evidence: Evidence | None,
    now: dt.datetime,
) -> Derived | None:
    """The status a non-terminal point's evidence proves; None when there is nothing to say
    (no Job was ever made for it). `evidence` is read only for a Job that completed."""
    status = point.get("status") or {}
    name = point["metadata"]["name"]
    job_name = status.get("jobName") or naming.backup_job_name(name)
    state = job_outcome(job)
    if state == "Missing" and not status.get("jobName"):
        return None
    start = status.get("startTime") or (job_start_time(job) if job else None) or iso(now)
    if state == "Running":
        message = f"backup Job {job_name} is running"
        return Derived(
            {"phase": "Running", "jobName": job_name, "startTime": start, "message": message},
            [
                ConditionUpdate(
                    "Accepted", "True", "Accepted", f"Backup Job {job_name} runs the backup."
                ),
                ConditionUpdate(
                    "Complete", "Unknown", "BackupRunning", f"Job {job_name} is running"
                ),
            ],
            event=("Normal", "BackupStarted", f"Started backup Job {job_name}"),
            event_key="started",
        )
    if state == "Complete":
        assert evidence is not None, "a completed Job is judged by the bucket's evidence"
        if evidence.manifest is None:
            outcome = backup.missing_manifest(evidence.unreadable or "not found")
        else:
            outcome = backup.completed(evidence.manifest, evidence.problems)
    else:
        outcome = failed_outcome(job, termination, job_name)
    fields = {
        "jobName": job_name,
        "startTime": start,
        **outcome.status,
        "completionTime": outcome.status.get("completionTime") or iso(now),
    }
    kind = "Normal" if outcome.phase == "Completed" else "Warning"
    corrupted = (
        [ConditionUpdate("Corrupted", "True", outcome.reason, outcome.message)]
        if outcome.phase == "Corrupted"
        else []
    )
    return Derived(
        fields,
        [ConditionUpdate("Accepted", "True", "Accepted", f"The recovery point is {outcome.phase}.")]
        + [ConditionUpdate(t, s, r, m) for t, s, r, m in outcome.conditions]
        + corrupted,
        event=(kind, outcome.reason, outcome.message),
        event_key="ended",
        outcome=outcome,
    )


def merged_status(
    point: dict[str, Any], fields: dict[str, Any], updates: list[ConditionUpdate], now: dt.datetime
) -> dict[str, Any]:
    """The status patch: `fields` plus the conditions recomputed from the point as it is."""
    meta = point["metadata"]
    status = dict(fields)
    if updates:
        status["conditions"] = set_conditions(
            (point.get("status") or {}).get("conditions"),
            updates,
            generation=meta.get("generation"),
            now=now,
        )
        if meta.get("generation") is not None:
            status["observedGeneration"] = meta["generation"]
    return status


def changes(point: dict[str, Any], patch: dict[str, Any]) -> bool:
    current = point.get("status") or {}
    return any(current.get(k) != v for k, v in patch.items())


# --- the one writer ------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    point: dict[str, Any]
    policy: str
    outcome: backup.PointOutcome


def sync(
    cluster: Cluster, store: Store, namespace: str, name: str, now: dt.datetime
) -> Finished | None:
    """Bring the point's status in line with its evidence. Returns Finished when this call
    moved it to a terminal phase (the caller then refreshes the policy); None otherwise."""
    with _locks.hold((namespace, name)):
        point = cluster.get_point(namespace, name)
        if point is None:
            return None
        status = point.get("status") or {}
        if status.get("phase") in TERMINAL:
            _retell(cluster, point)
            return None
        job_name = status.get("jobName") or naming.backup_job_name(name)
        job = cluster.get_job(namespace, job_name)
        state = job_outcome(job)
        termination = cluster.termination(namespace, job_name) if state == "Failed" else None
        evidence = store.evidence(point) if state == "Complete" else None
        derived = derive(point, job, termination, evidence, now)
        if derived is None:
            return None
        patch = merged_status(point, derived.status, derived.conditions, now)
        if changes(point, patch):
            cluster.patch_point_status(namespace, name, patch)
        point["status"] = {**status, **patch}
        if derived.event is not None and derived.event_key is not None:
            # Written state first, then the event: a kill in between is retold on resume.
            cluster.post_event(point, *derived.event, key=derived.event_key)
        if derived.outcome is None:
            return None
        policy = point["spec"]["policyRef"]["name"]
        if derived.outcome.phase != "Completed":
            _abort_uploads(store, point)
        _record_metrics(namespace, policy, point, derived.outcome)
        return Finished(point, policy, derived.outcome)


def _retell(cluster: Cluster, point: dict[str, Any]) -> None:
    """A terminal point whose event may have been lost in a kill: tell it (a no-op when it
    was told). Only for phases this writer sets from a Job."""
    status = point.get("status") or {}
    complete = find(status.get("conditions"), "Complete")
    if not status.get("jobName") or complete is None or complete.get("status") == "Unknown":
        return
    kind = "Normal" if complete.get("status") == "True" else "Warning"
    cluster.post_event(
        point, kind, str(complete.get("reason")), str(complete.get("message") or ""), key="ended"
    )


def _abort_uploads(store: Store, point: dict[str, Any]) -> None:
    # Best effort: the next attempt's agent aborts them too.
    try:
        store.abort_uploads(point)
    except (PointBlocked, s3.StorageError):
        pass


def write_conditions(
    cluster: Cluster,
    namespace: str,
    name: str,
    fields: dict[str, Any],
    updates: list[ConditionUpdate],
    now: dt.datetime,
    *,
    unless_terminal: bool = True,
    only_if_new: bool = False,
) -> bool:
    """Merge fields and conditions into a point read now, under the point's lock (never a
    handler's stale body). False when the point is gone or (by default) terminal."""
    with _locks.hold((namespace, name)):
        point = cluster.get_point(namespace, name)
        if point is None:
            return False
        if only_if_new:
            status = point.get("status") or {}
            existing = find(status.get("conditions"), updates[0].type)
            if existing is not None and existing.get("status") == updates[0].status:
                generation = point["metadata"].get("generation")
                if generation is not None and status.get("observedGeneration") != generation:
                    # Conditions written elsewhere (catalog sync) without it: this handler
                    # has processed this generation.
                    cluster.patch_point_status(namespace, name, {"observedGeneration": generation})
                return False
        if unless_terminal and (point.get("status") or {}).get("phase") in TERMINAL:
            return False
        patch = merged_status(point, fields, updates, now)
        if changes(point, patch):
            cluster.patch_point_status(namespace, name, patch)
        return True


def accept(cluster: Cluster, namespace: str, name: str, message: str, now: dt.datetime) -> None:
    """The spec is accepted (the point's state conditions are `sync`'s)."""
    write_conditions(
        cluster,
        namespace,
        name,
        {},
        [ConditionUpdate("Accepted", "True", "Accepted", message)],
        now,
        unless_terminal=False,
        only_if_new=True,
    )


INTEGRITY_KINDS = frozenset({"Corrupted", "WrongKey", "ManifestInvalid", "ManifestNotFound"})
"""Agent error kinds that prove a point cannot be restored (not a passing outage)."""


def mark_corrupted(
    cluster: Cluster, namespace: str, name: str, reason: str, message: str, now: dt.datetime
) -> bool:
    """A check proved the point damaged (a restore or a verification refused it): phase
    Corrupted, Verified=False, and never again chosen by a restore by policy."""
    with _locks.hold((namespace, name)):
        point = cluster.get_point(namespace, name)
        if point is None:
            return False
        status = point.get("status") or {}
        fields: dict[str, Any] = {"phase": "Corrupted", "message": message}
        verification = status.get("verification") or {}
        fields["verification"] = {
            **{k: v for k, v in verification.items() if k in ("restoreSeconds",)},
            "time": iso(now),
            "result": "Failed",
            "message": message[:1024],
        }
        updates = [
            ConditionUpdate("Corrupted", "True", reason, message),
            ConditionUpdate("Verified", "False", reason, message),
        ]
        patch = merged_status(point, fields, updates, now)
        if changes(point, patch):
            cluster.patch_point_status(namespace, name, patch)
        point["status"] = {**status, **patch}
    cluster.post_event(point, "Warning", "RecoveryPointCorrupted", message, key="corrupted")
    return True


# --- entry points the handlers and the scheduler call ---------------------------------------


def backup_job(
    cluster: PolicyReader,
    point: dict[str, Any],
    settings: Settings,
    policy: PolicyContext | None = None,
) -> dict[str, Any]:
    """The Job object that takes the point's backup (reads the policy unless given, and the
    ids of its keys)."""
    namespace = point["metadata"]["namespace"]
    policy = policy or load_policy(cluster, namespace, point["spec"]["policyRef"]["name"])
    admit_policy(policy, settings)
    return build_job(
        backup.backup_job_request(point, policy.spec, key_ids(cluster, policy), settings)
    )


POLICY_NOT_READY_RETRY_SECONDS = 15


def refuse_unless_policy_ready(policy: PolicyContext) -> None:
    """An on-demand backup of a policy the operator found unable to back up (Ready=False: a
    missing key Secret, bucket or source) would start a Job doomed to fail: say why instead,
    and start once the policy is Ready again."""
    ready = find((policy.body.get("status") or {}).get("conditions"), "Ready")
    if ready is not None and ready.get("status") == "False":
        raise PointBlocked(
            "PolicyNotReady",
            f"BackupPolicy {policy.name} is not Ready ({ready.get('reason')}: "
            f"{ready.get('message')}); the backup starts once the policy is Ready",
            POLICY_NOT_READY_RETRY_SECONDS,
        )


def start(
    cluster: Cluster, store: Store, point: dict[str, Any], settings: Settings, now: dt.datetime
) -> tuple[str, bool]:
    """Make sure the point's backup Job exists (unless its policy cannot back up). Returns
    (job name, created now)."""
    namespace = point["metadata"]["namespace"]
    policy = load_policy(cluster, namespace, point["spec"]["policyRef"]["name"])
    if not point.get("status", {}).get("jobName"):  # a Job already made is followed, not gated
        refuse_unless_policy_ready(policy)
    return launch(cluster, store, point, backup_job(cluster, point, settings, policy), now)


def launch(
    cluster: Cluster, store: Store, point: dict[str, Any], job: dict[str, Any], now: dt.datetime
) -> tuple[str, bool]:
    """Create the prepared Job (or find it) and let the writer record it (and its end, if
    it has ended already)."""
    meta = point["metadata"]
    _, created = cluster.create_job(meta["namespace"], job)
    sync(cluster, store, meta["namespace"], meta["name"], now)
    return job["metadata"]["name"], created


def mark_running(cluster: Cluster, point: dict[str, Any], now: dt.datetime) -> None:
    """The Job was created: record it. Kept for the scheduler; the writer derives Running from
    the Job itself, so this is `sync` (which needs the bucket only after the Job ended)."""
    meta = point["metadata"]
    try:
        sync(cluster, _NoStore(), meta["namespace"], meta["name"], now)
    except PointBlocked:
        pass  # ended already: its Job event (or the resume handler) folds it in with evidence


class _NoStore:
    """For `mark_running`: a Job just created has not ended, so no bucket is read; if it had,
    the evidence is left to the next `sync` (its Job event or the resume handler)."""

    def evidence(self, point: dict[str, Any]) -> Evidence:
        raise PointBlocked("EvidencePending", "the bucket is read when the Job has ended", 1)

    def abort_uploads(self, point: dict[str, Any]) -> int:
        return 0

    def write_tombstone(self, point: dict[str, Any], body: bytes) -> None:
        raise PointBlocked("EvidencePending", "no bucket here", 1)

    def delete_objects(self, point: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
        raise PointBlocked("EvidencePending", "no bucket here", 1)


def _record_metrics(
    namespace: str, policy: str, point: dict[str, Any], outcome: backup.PointOutcome
) -> None:
    metrics.copies_ended(namespace, policy, outcome.status.get("copies"))
    if outcome.phase == "Completed":
        started = backup.parse_time(
            outcome.status.get("startTime") or (point.get("status") or {}).get("startTime")
        )
        ended = backup.parse_time((point.get("status") or {}).get("completionTime"))
        if started and ended:
            metrics.BACKUP_DURATION.labels(namespace, policy).observe(
                (ended - started).total_seconds()
            )
    else:
        metrics.BACKUP_FAILURES.labels(namespace, policy).inc()


def block(cluster: Cluster, point: dict[str, Any], blocked: PointBlocked, now: dt.datetime) -> None:
    """Report why the point cannot start, without failing it: the cause may be fixed."""
    meta = point["metadata"]
    write_conditions(
        cluster,
        meta["namespace"],
        meta["name"],
        {"phase": "Pending", "message": blocked.message},
        [ConditionUpdate("Accepted", "False", blocked.reason, blocked.message)],
        now,
    )


def delete_objects(
    cluster: PolicyReader,
    store: Store,
    point: dict[str, Any],
    now: dt.datetime,
    *,
    pruned: bool,
) -> dt.datetime | None:
    """Remove the point's payload, manifest and copies when its policy says so. Returns the
    Object Lock end when objects are locked (the point must be kept until then)."""
    namespace = point["metadata"]["namespace"]
    try:
        policy = load_policy(cluster, namespace, point["spec"]["policyRef"]["name"])
    except PointBlocked:
        # Without its policy the point's bucket is unknown; deleting the policy keeps points
        # and their objects, by design.
        return None
    if not pruned and policy.spec.deletion_policy == "Retain":
        # The objects stay; a tombstone next to the manifest keeps catalog sync from importing
        # the point again. Only a point with a manifest can be re-imported, so only it needs one.
        if (point.get("status") or {}).get("manifest"):
            store.write_tombstone(point, tombstone_body(point, now))
        return None
    return store.delete_objects(point, now)


def tombstone_body(point: dict[str, Any], now: dt.datetime) -> bytes:
    """What the tombstone says: who was deleted, when, and how to undo it."""
    meta = point["metadata"]
    return json.dumps(
        {
            "recoveryPoint": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "deletedTime": iso(now),
            "note": "deleted by its user under deletionPolicy Retain; delete this object "
            "to let catalog sync import the point again",
        },
        indent=2,
    ).encode()
