"""Restores: from a Restore to the RecoveryPoint it names (or its policy's best one), to one
restore Job, and from the Job's outcome and the agent's result to the Restore's status.

The first half is pure (point choice, the agent's `RestoreConfig`, the Job request, the
outcome); the second half talks to the cluster through the `Cluster` port (the handlers pass
`aegis.k8s.adapters.ApiCluster`, unit tests an in-memory one) and takes the time.

A Restore restores at most once. The Job name is a function of the Restore's name, so a
retried create after a crash or an operator restart gets the existing Job back; once a Job
has been recorded in status, a missing Job fails the Restore instead of making a new one;
and a Restore with a terminal phase is never started again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aegis import display, metrics
from aegis.agent.config import (
    CommandTargetConfig,
    PostgresTargetConfig,
    RedisTargetConfig,
    RestoreConfig,
)
from aegis.agent.layout import manifest_key_for, parse_s3_url
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.checks import VerifyCheck
from aegis.api.common import JobOptions, LocalObjectRef, S3Location
from aegis.api.restore import RestoreSpec, RestoreTarget
from aegis.k8s.jobs import JobRequest, SecretEnv, build_job, job_outcome
from aegis.labels import RECOVERY_POINT_ANNOTATION
from aegis.locks import KeyedLocks
from aegis.reconcilers import backup, keys, naming
from aegis.reconcilers import recoverypoint as points
from aegis.reconcilers.conditions import ConditionUpdate, find, iso, set_conditions
from aegis.reconcilers.recoverypoint import PointBlocked, admit_policy, key_ids, load_policy
from aegis.settings import Settings

TERMINAL = ("Completed", "Failed")
UNUSABLE_POINT_PHASES = ("Failed", "Corrupted", "Expired")
"""On the restore Job: the full name of the point it restores (labels may be hashed)."""

# --- choosing the point (pure) ----------------------------------------------------------------


class RestoreRefused(Exception):
    """The Restore can never succeed as written (its spec is immutable): it ends Failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def is_verified(point: dict[str, Any]) -> bool:
    status = point.get("status") or {}
    condition = find(status.get("conditions"), "Verified")
    if condition is not None:
        return condition.get("status") == "True"
    return (status.get("verification") or {}).get("result") == "Passed"


def _source_time(point: dict[str, Any]) -> str:
    status = point.get("status") or {}
    # RFC 3339 UTC times with a Z sort as text; a point without sourceTime sorts first.
    return str(status.get("sourceTime") or status.get("completionTime") or "")


def is_corrupted(point: dict[str, Any]) -> bool:
    """A check proved the point damaged (whatever its phase says)."""
    status = point.get("status") or {}
    corrupted = find(status.get("conditions"), "Corrupted")
    return status.get("phase") == "Corrupted" or (
        corrupted is not None and corrupted.get("status") == "True"
    )


def choose_point(candidates: list[dict[str, Any]], policy: str) -> dict[str, Any] | None:
    """The newest Completed point of `policy` by sourceTime, a Verified one if any exists;
    never one a check proved damaged."""
    completed = [
        p
        for p in candidates
        if ((p.get("spec") or {}).get("policyRef") or {}).get("name") == policy
        and (p.get("status") or {}).get("phase") == "Completed"
        and not is_corrupted(p)
    ]
    verified = [p for p in completed if is_verified(p)]
    candidates = verified or completed
    if not candidates:
        return None
    return max(candidates, key=lambda p: (_source_time(p), p["metadata"]["name"]))


def check_point(point: dict[str, Any]) -> None:
    """Refuse a point that will never restore; block one that is not finished yet."""
    name = point["metadata"]["name"]
    status = point.get("status") or {}
    phase = status.get("phase")
    if phase in UNUSABLE_POINT_PHASES:
        why = f": {status['message']}" if status.get("message") else ""
        raise RestoreRefused(
            f"RecoveryPoint{phase}",
            f"RecoveryPoint {name} is {phase}{why}; restore another point "
            "(spec.recoveryPointRef) or the policy's newest good one (spec.policyRef)",
        )
    if phase != "Completed":
        raise PointBlocked(
            "RecoveryPointNotReady",
            f"RecoveryPoint {name} is {phase or 'Pending'}; the restore starts when it is "
            "Completed",
            retry_seconds=15,
        )
    if not status.get("location"):
        raise RestoreRefused(
            "RecoveryPointIncomplete",
            f"RecoveryPoint {name} is Completed but its status has no location",
        )


def manifest_url(point_status: dict[str, Any]) -> str | None:
    """s3:// URL of the point's manifest: its key (status.manifest) in the payload's bucket."""
    location, key = point_status.get("location"), point_status.get("manifest")
    if not location or not key or not str(location).startswith("s3://"):
        return None
    bucket = str(location).removeprefix("s3://").split("/", 1)[0]
    return f"s3://{bucket}/{key}"


# --- the Job (pure) ---------------------------------------------------------------------------


def target_config(
    target: RestoreTarget,
) -> tuple[PostgresTargetConfig | None, RedisTargetConfig | None]:
    if target.postgres is not None:
        pg = target.postgres
        return (
            PostgresTargetConfig(
                host=pg.host,
                port=pg.port,
                database=pg.database,
                ssl_mode=pg.ssl_mode,
                create_database=pg.create_database,
            ),
            None,
        )
    if target.redis is None:  # a command target: command_target_config
        return None, None
    rd = target.redis
    return None, RedisTargetConfig(host=rd.host, port=rd.port, tls=rd.tls, db=rd.db or 0)


def command_target_config(
    target: RestoreTarget, policy: BackupPolicySpec, point: str
) -> CommandTargetConfig | None:
    """A command target, its absent fields taken from the policy's source.command. Raises
    RestoreRefused when the point is not of a command source or no restore command is given."""
    if target.command is None:
        return None
    source = policy.source.command
    if source is None:
        raise RestoreRefused(
            "TargetKindMismatch",
            f"spec.target.command: RecoveryPoint {point} belongs to a policy without a command "
            "source; restore it into a postgres or redis target",
        )
    restore = target.command.restore or source.restore
    if not restore:
        raise RestoreRefused(
            "RestoreCommandMissing",
            "spec.target.command.restore: no restore command; set it here or in the "
            "BackupPolicy's spec.source.command.restore",
        )
    env = target.command.env if target.command.env is not None else source.env
    return CommandTargetConfig(
        restore=restore,
        empty_check=target.command.empty_check or source.empty_check,
        env=[var.name for var in env or []],
    )


def command_env_vars(target: RestoreTarget, policy: BackupPolicySpec) -> list[SecretEnv]:
    """The Secret-backed variables of a command target (the target's, else the policy's)."""
    if target.command is None:
        return []
    source = policy.source.command
    env = target.command.env if target.command.env is not None else (source.env if source else None)
    return backup.command_secret_env(env)


def source_location(
    point: dict[str, Any], policy: BackupPolicySpec, copy: str | None
) -> tuple[S3Location, str | None]:
    """Where the restore reads: the policy's storage and the point's manifest URL, or with
    `copy` (a bucket) that copy's location and the manifest the agent wrote next to the
    copied payload. Raises RestoreRefused when the point has no Completed copy there."""
    status = point.get("status") or {}
    if copy is None:
        return policy.storage, manifest_url(status)
    name = point["metadata"]["name"]
    location = next((c for c in policy.copies or [] if c.bucket == copy), None)
    if location is None:
        raise RestoreRefused(
            "CopyNotFound",
            f"spec.source.copy: the BackupPolicy of {name} has no copy in bucket {copy}; "
            "name the bucket of one of its spec.copies",
        )
    recorded = next(
        (
            c
            for c in status.get("copies") or []
            if str(c.get("location", "")).startswith(f"s3://{copy}/")
        ),
        None,
    )
    if recorded is None or recorded.get("state") != "Completed":
        state = recorded.get("state") if recorded else "missing"
        raise RestoreRefused(
            "CopyNotCompleted",
            f"spec.source.copy: RecoveryPoint {name} has no Completed copy in bucket {copy} "
            f"(state: {state}); restore from the primary or another copy",
        )
    bucket, key = parse_s3_url(str(recorded["location"]))
    return location, f"s3://{bucket}/{manifest_key_for(key)}"


def restore_config(
    point: dict[str, Any],
    policy: BackupPolicySpec,
    target: RestoreTarget,
    allow_overwrite: bool,
    checks: list[VerifyCheck] | None,
    settings: Settings,
    copy: str | None = None,
) -> RestoreConfig:
    """The agent's configuration: the point's manifest in its policy's bucket (or in the
    named copy's), the target, and the checks. No secrets: those are env vars from Secrets."""
    meta = point["metadata"]
    postgres, redis = target_config(target)
    command = command_target_config(target, policy, meta["name"])
    storage, url = source_location(point, policy, copy)
    return RestoreConfig(
        manifest=url,
        # Without a recorded manifest key the layout finds it from the names.
        namespace=None if url else meta["namespace"],
        policy=None if url else point["spec"]["policyRef"]["name"],
        recovery_point=None if url else meta["name"],
        storage=backup.store_config(storage, "", settings.s3_endpoint),
        kms_keys=keys.kms_key_configs(policy, settings.kms_endpoint),
        postgres=postgres,
        redis=redis,
        command=command,
        allow_overwrite=allow_overwrite,
        checks=[c.to_api() for c in checks] if checks else None,
    )


def target_secret_env(target: RestoreTarget) -> list[SecretEnv]:
    if target.command is not None:
        return []  # command_env_vars: they depend on the policy
    if target.postgres is not None:
        return [
            SecretEnv("AEGIS_PG_USER", target.postgres.user_secret_ref),
            SecretEnv("AEGIS_PG_PASSWORD", target.postgres.password_secret_ref),
        ]
    assert target.redis is not None
    env = []
    if target.redis.username_secret_ref is not None:
        env.append(SecretEnv("AEGIS_REDIS_USER", target.redis.username_secret_ref))
    if target.redis.password_secret_ref is not None:
        env.append(SecretEnv("AEGIS_REDIS_PASSWORD", target.redis.password_secret_ref))
    return env


def restore_secret_env(
    target: RestoreTarget,
    policy: BackupPolicySpec,
    key_ids: list[str],
    storage: S3Location | None = None,
) -> list[SecretEnv]:
    """The target's credentials, the bucket's (the storage read: the policy's, or a copy's),
    every key of the policy's key Secret and the credentials of its KMS keys."""
    return [
        *target_secret_env(target),
        *command_env_vars(target, policy),
        *backup.s3_secret_env(storage or policy.storage, ""),
        *keys.key_secret_env(policy, key_ids, backup.KEY_ENV_PREFIX),
        *keys.kms_secret_env(policy),
    ]


def restore_job_options(options: JobOptions | None) -> JobOptions:
    """The Restore's Job options; a restore is not retried unless the user asked for it,
    because a retry would meet a target the first attempt already changed and report that
    instead of the real failure."""
    options = options or JobOptions()
    if "backoff_limit" not in options.model_fields_set:
        options = options.model_copy(update={"backoff_limit": 0})
    return options


def restore_job_request(
    restore: dict[str, Any],
    spec: RestoreSpec,
    point: dict[str, Any],
    policy: BackupPolicySpec,
    key_ids: list[str],
    settings: Settings,
) -> JobRequest:
    """The Job that restores `point` (a Completed RecoveryPoint) for `restore`."""
    meta = restore["metadata"]
    name, point_name = meta["name"], point["metadata"]["name"]
    copy = spec.source.copy_ if spec.source else None
    config = restore_config(
        point, policy, spec.target, spec.allow_overwrite, spec.verify, settings, copy
    )
    storage, _ = source_location(point, policy, copy)
    options = restore_job_options(spec.job)
    return JobRequest(
        name=naming.restore_job_name(name),
        namespace=meta["namespace"],
        labels=naming.restore_job_labels(name, point_name),
        annotations={RECOVERY_POINT_ANNOTATION: point_name},
        owner=restore,
        command=[*settings.agent_command, "restore"],
        args=["--config-json", config.model_dump_json(by_alias=True, exclude_none=True)],
        image=restore_image(spec, policy) or settings.agent_image,
        options=options,
        secret_env=restore_secret_env(spec.target, policy, key_ids, storage),
    )


def restore_image(spec: RestoreSpec, policy: BackupPolicySpec) -> str | None:
    """The Restore's own job.image; a command target defaults to the policy's image, which
    holds the tools its dump needed (and so, usually, the restore tool)."""
    if spec.job is not None and spec.job.image:
        return spec.job.image
    if spec.target.command is not None:
        return policy.job_image()
    return None


def describe_target(target: RestoreTarget) -> str:
    if target.command is not None:
        argv = target.command.restore
        return f"command {argv[0].rsplit('/', 1)[-1]}" if argv else "command (the policy's)"
    if target.postgres is not None:
        pg = target.postgres
        return f"postgres {pg.host}:{pg.port}/{pg.database}"
    assert target.redis is not None
    return f"redis {target.redis.host}:{target.redis.port}"


# --- the outcome (pure) -----------------------------------------------------------------------

Phase = Literal["Completed", "Failed"]


@dataclass
class RestoreOutcome:
    """What the Restore's status becomes once its Job has ended (or it was refused)."""

    phase: Phase
    reason: str
    message: str
    status: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def conditions(self) -> list[ConditionUpdate]:
        done = self.phase == "Completed"
        return [
            ConditionUpdate("Complete", "True" if done else "False", self.reason, self.message),
            ConditionUpdate("Failed", "False" if done else "True", self.reason, self.message),
        ]


def parse_result(termination_message: str | None) -> dict[str, Any] | None:
    """The agent's final one-line JSON result, from the pod's termination message."""
    if not termination_message:
        return None
    for line in reversed(termination_message.strip().splitlines()):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        return result if isinstance(result, dict) else None
    return None


def _reason(kind: Any, default: str) -> str:
    # The agent's error kinds are CamelCase words: usable as condition and event reasons.
    if isinstance(kind, str) and kind.isalnum() and kind[:1].isupper():
        return kind
    return default


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def job_times(job: dict[str, Any] | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the Job's pod started and when the Job ended (completionTime, or the time of its
    Failed condition: Kubernetes sets completionTime only on success)."""
    status = (job or {}).get("status") or {}
    started = backup.parse_time(status.get("startTime"))
    ended = backup.parse_time(status.get("completionTime"))
    if ended is None:
        failed = find(status.get("conditions"), "Failed")
        ended = backup.parse_time((failed or {}).get("lastTransitionTime"))
    return started, ended


def measured_duration(
    result: dict[str, Any] | None, started: dt.datetime | None, ended: dt.datetime | None
) -> float | None:
    """The agent's own measurement (download, verification pass, restore and checks), else
    the Job's start to end."""
    reported = _number((result or {}).get("durationSeconds"))
    if reported is not None:
        return round(reported, 3)
    if started and ended:
        return round((ended - started).total_seconds(), 3)
    return None


def restore_outcome(
    job_state: str,
    result: dict[str, Any] | None,
    job_message: str | None,
    point: str | None,
    target: str,
) -> RestoreOutcome:
    """Fold an ended Job (`Complete`, `Failed` or `Missing`) and the agent's result into the
    Restore's outcome. A failed check fails the Restore, naming the check."""
    result = result or {}
    checks = [c for c in result.get("checks") or [] if isinstance(c, dict) and c.get("name")]
    status: dict[str, Any] = {}
    restored = result.get("restoredBytes")
    if isinstance(restored, int) and not isinstance(restored, bool):
        status["restoredBytes"] = restored
    if checks:
        status["checks"] = [
            {k: str(v) if k == "value" else v for k, v in c.items() if v is not None}
            for c in checks
        ]
    bad = [c for c in checks if c.get("result") != "Passed"]
    if job_state == "Complete" and result.get("ok") is True and not bad:
        passed = f"; {len(checks)} check(s) passed" if checks else ""
        size = f"{display.size(restored)} " if isinstance(restored, int) else ""
        message = f"restored {size}from {point or 'the recovery point'} into {target}{passed}"
        return RestoreOutcome("Completed", "RestoreCompleted", message, status, checks)
    if bad:
        reason = "ChecksFailed"
        named = "; ".join(
            f"check {c['name']} {str(c.get('result', 'Failed')).lower()}"
            + (f": {c['message']}" if c.get("message") else "")
            for c in bad
        )
        message = f"verification failed: {named}"
    elif job_state == "Missing":
        reason, message = "JobMissing", job_message or "the restore Job disappeared"
    elif job_state == "Complete":
        # The Job succeeded without a result saying so: do not claim a restore.
        reason = "ResultMissing"
        message = (
            "the restore Job succeeded but its result (the pod's termination message) is "
            "missing or unreadable; see the Job's log"
        )
    else:
        reason = _reason(result.get("kind"), "RestoreFailed")
        message = (
            str(result["reason"])
            if isinstance(result.get("reason"), str)
            else backup.agent_reason(job_message) or "the restore Job failed"
        )
    return RestoreOutcome("Failed", reason, message[:1024], status, checks)


def refused(error: RestoreRefused) -> RestoreOutcome:
    return RestoreOutcome("Failed", error.reason, error.message)


def verification_of(
    restore_name: str, outcome: RestoreOutcome, now: dt.datetime
) -> dict[str, Any] | None:
    """The point's `status.verification` that a Restore with passed checks proves."""
    if outcome.phase != "Completed" or not outcome.checks:
        return None
    verification: dict[str, Any] = {
        "time": iso(now),
        "result": "Passed",
        "checks": outcome.status.get("checks"),
        "by": f"restore/{restore_name}",
    }
    if "durationSeconds" in outcome.status:
        verification["restoreSeconds"] = outcome.status["durationSeconds"]
    return verification


# --- against the cluster ----------------------------------------------------------------------

_locks = KeyedLocks()  # per object: this process's writers of one object take turns


class Cluster(points.Cluster, Protocol):
    """What a Restore needs of the API server: its point and that point's policy, Secrets
    and Jobs (`points.Cluster`), and the Restore itself."""

    def get_restore(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Restore, or None when it does not exist."""

    def patch_restore_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def list_points(self, namespace: str) -> list[dict[str, Any]]: ...

    def termination_message(self, namespace: str, job_name: str) -> str | None:
        """The termination message of the Job's newest pod (the agent's JSON result)."""


class RestoreGone(LookupError):
    """The Restore was deleted meanwhile (its Job goes with it)."""


def _patch(
    cluster: Cluster,
    namespace: str,
    name: str,
    status: dict[str, Any],
    updates: list[ConditionUpdate],
    now: dt.datetime,
) -> dict[str, Any]:
    """Merge-patch the status; conditions are recomputed from the current object (the body a
    handler got may be stale) so that no condition is lost."""
    current = cluster.get_restore(namespace, name)
    if current is None:
        raise RestoreGone(f"Restore {namespace}/{name} not found")
    status = dict(status)
    if updates:
        status["conditions"] = set_conditions(
            (current.get("status") or {}).get("conditions"),
            updates,
            generation=current["metadata"].get("generation"),
            now=now,
        )
    status["observedGeneration"] = current["metadata"].get("generation")
    cluster.patch_restore_status(namespace, name, status)
    current["status"] = {**(current.get("status") or {}), **status}
    return current


class PointSelection(Protocol):
    """What names a point to restore: a Restore's spec, or a restore drill's settings."""

    @property
    def recovery_point_ref(self) -> LocalObjectRef | None: ...

    @property
    def policy_ref(self) -> LocalObjectRef | None: ...


def resolve_point(cluster: Cluster, namespace: str, spec: PointSelection) -> dict[str, Any]:
    """The RecoveryPoint to restore: named, or the policy's best. Raises PointBlocked (may
    resolve later) or RestoreRefused (never will)."""
    if spec.recovery_point_ref is not None:
        name = spec.recovery_point_ref.name
        named = cluster.get_point(namespace, name)
        if named is None:
            raise PointBlocked(
                "RecoveryPointNotFound",
                f"RecoveryPoint {name} does not exist in {namespace}: fix spec.recoveryPointRef "
                "(kubectl get recoverypoints)",
                retry_seconds=30,
            )
        point = named
    else:
        assert spec.policy_ref is not None
        policy = spec.policy_ref.name
        found = choose_point(cluster.list_points(namespace), policy)
        if found is None:
            raise PointBlocked(
                "NoCompletedRecoveryPoint",
                f"BackupPolicy {policy} has no Completed RecoveryPoint in {namespace} yet; "
                f"run `kubectl aegis backup {policy}` or wait for its schedule",
                retry_seconds=30,
            )
        point = found
    check_point(point)
    return point


@dataclass(frozen=True)
class Started:
    job_name: str | None
    created: bool
    point: str | None


def start(
    cluster: Cluster,
    restore: dict[str, Any],
    spec: RestoreSpec,
    settings: Settings,
    now: dt.datetime,
) -> Started:
    """Make sure the Restore's one Job exists (or fold it in when it has already ended).
    Raises PointBlocked when it cannot start yet, RestoreRefused when it never can."""
    meta = restore["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = restore.get("status") or {}
    if status.get("phase") in TERMINAL:
        return Started(status.get("jobName"), False, status.get("recoveryPoint"))
    if status.get("jobName"):
        # The Job was made before (an operator restart): never make another one.
        return Started(status["jobName"], False, status.get("recoveryPoint"))
    point = resolve_point(cluster, namespace, spec)
    policy = load_policy(cluster, namespace, point["spec"]["policyRef"]["name"])
    admit_policy(policy, settings)
    request = restore_job_request(
        restore, spec, point, policy.spec, key_ids(cluster, policy), settings
    )
    job, created = cluster.create_job(namespace, build_job(request))
    # An existing Job (created before a crash, its status never written) restores the point
    # it was made for, which a policyRef may no longer resolve to.
    point_name = (job.get("metadata", {}).get("annotations") or {}).get(
        RECOVERY_POINT_ANNOTATION
    ) or point["metadata"]["name"]
    if created:
        cluster.post_event(
            restore,
            "Normal",
            "RestoreStarted",
            f"Started restore Job {request.name} for RecoveryPoint {point_name}",
        )
    chosen = "" if spec.recovery_point_ref else " (the policy's newest good point)"
    message = (
        f"restore Job {request.name} restores {point_name}{chosen} into "
        f"{describe_target(spec.target)}"
    )
    with _locks.hold((namespace, name)):
        _patch(
            cluster,
            namespace,
            name,
            {
                "phase": "Running",
                "recoveryPoint": point_name,
                "jobName": request.name,
                "startTime": status.get("startTime") or iso(now),
                "message": message,
            },
            [
                ConditionUpdate("Accepted", "True", "Accepted", message),
                ConditionUpdate("Complete", "Unknown", "RestoreRunning", message),
                ConditionUpdate("Failed", "False", "RestoreRunning", message),
            ],
            now,
        )
    return Started(request.name, created, point_name)


def block(
    cluster: Cluster, restore: dict[str, Any], blocked: PointBlocked, now: dt.datetime
) -> None:
    """Say why the Restore cannot start yet, without failing it: the cause may be fixed."""
    meta = restore["metadata"]
    with _locks.hold((meta["namespace"], meta["name"])):
        _patch(
            cluster,
            meta["namespace"],
            meta["name"],
            {"phase": "Pending", "message": blocked.message},
            [ConditionUpdate("Accepted", "False", blocked.reason, blocked.message)],
            now,
        )


@dataclass(frozen=True)
class Finished:
    restore: dict[str, Any]
    outcome: RestoreOutcome


def refuse(
    cluster: Cluster, restore: dict[str, Any], error: RestoreRefused, now: dt.datetime
) -> Finished:
    """End the Restore Failed before any Job: its spec names a point that will not restore."""
    meta = restore["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    outcome = refused(error)
    with _locks.hold((namespace, name)):
        current = _patch(
            cluster,
            namespace,
            name,
            {
                "phase": "Failed",
                "message": outcome.message,
                "completionTime": iso(now),
            },
            [
                ConditionUpdate("Accepted", "False", error.reason, error.message),
                *outcome.conditions(),
            ],
            now,
        )
    return Finished(current, outcome)


def finish(namespace: str, name: str, cluster: Cluster, now: dt.datetime) -> Finished | None:
    """Fold the ended Job into the Restore. None when there is nothing (more) to do."""
    with _locks.hold((namespace, name)):
        restore = cluster.get_restore(namespace, name)
        if restore is None:
            return None
        status = restore.get("status") or {}
        job_name = status.get("jobName")
        if status.get("phase") in TERMINAL or not job_name:
            return None
        job = cluster.get_job(namespace, job_name)
        state = job_outcome(job)
        if state == "Running":
            return None
        started, ended = job_times(job)
        result = None
        job_message = None
        if state == "Missing":
            job_message = f"restore Job {job_name} disappeared before the operator saw it end"
        else:
            termination = cluster.termination_message(namespace, job_name)
            result = parse_result(termination)
            failed = find(((job or {}).get("status") or {}).get("conditions"), "Failed")
            job_message = termination or (failed or {}).get("message")
        spec = RestoreSpec.model_validate(restore["spec"])
        outcome = restore_outcome(
            state, result, job_message, status.get("recoveryPoint"), describe_target(spec.target)
        )
        duration = measured_duration(result, started, ended)
        if duration is not None:
            outcome.status["durationSeconds"] = duration
            if outcome.phase == "Completed":
                outcome.message += f" in {display.duration(duration)}"
        outcome.status["display"] = display.fields(
            duration=display.duration(duration),
            restored=display.size(outcome.status.get("restoredBytes")),
        )
        outcome.status.update(
            {
                "phase": outcome.phase,
                "message": outcome.message,
                "startTime": iso(started) if started else status.get("startTime"),
                "completionTime": iso(ended or now),
            }
        )
        current = _patch(cluster, namespace, name, outcome.status, outcome.conditions(), now)
        return Finished(current, outcome)


def announce(cluster: Cluster, finished: Finished, now: dt.datetime) -> list[tuple[int, str]]:
    """The one place a Restore's end is told: its event, its metrics, and what it proves of
    its point (Verified, or Corrupted for an integrity failure). Returns (logging level, line)
    pairs for the handler's logger (kopf posts its warnings as events too)."""
    outcome = finished.outcome
    restore = finished.restore
    namespace, name = restore["metadata"]["namespace"], restore["metadata"]["name"]
    completed = outcome.phase == "Completed"
    cluster.post_event(
        restore, "Normal" if completed else "Warning", outcome.reason, outcome.message
    )
    lines: list[tuple[int, str]] = []
    if completed:
        duration = _number(outcome.status.get("durationSeconds"))
        if duration is not None:
            metrics.RESTORE_DURATION.labels(namespace).observe(duration)
        lines.append((logging.INFO, f"Restore {name} completed: {outcome.message}"))
        try:
            mark_point_verified(cluster, finished, now)
        except Exception as error:  # best effort: the Restore's own result stands
            lines.append((
                logging.WARNING,
                f"Could not record the verification on the point: {_why(error)}",
            ))
        return lines
    metrics.RESTORE_FAILURES.labels(namespace).inc()
    lines.append((logging.WARNING, f"Restore {name} failed: {outcome.message}"))
    try:
        if judge_point(finished, cluster, now):
            point = (restore.get("status") or {}).get("recoveryPoint")
            lines.append((logging.WARNING, f"RecoveryPoint {point} is Corrupted"))
    except Exception as error:  # best effort, as above
        lines.append((logging.WARNING, f"Could not mark the point Corrupted: {_why(error)}"))
    return lines


def _why(error: Exception) -> str:
    """An API error's reason (its body may be long), else its type and message."""
    reason = getattr(error, "reason", None)
    return str(reason) if reason else f"{type(error).__name__}: {error}"


def judge_point(finished: Finished, cluster: points.Cluster, now: dt.datetime) -> bool:
    """A restore the agent refused for an integrity reason (a damaged or truncated payload,
    a key that does not open it, a broken manifest) proves its point damaged: mark it
    Corrupted, so that no restore by policy chooses it again. True when marked."""
    outcome = finished.outcome
    restore = finished.restore
    point_name = (restore.get("status") or {}).get("recoveryPoint")
    if outcome.phase != "Failed" or outcome.reason not in points.INTEGRITY_KINDS or not point_name:
        return False
    if ((restore.get("spec") or {}).get("source") or {}).get("copy"):
        return False  # a damaged copy says nothing of the primary objects
    message = f"restore/{restore['metadata']['name']} refused it: {outcome.message}"
    namespace = restore["metadata"]["namespace"]
    marked = points.mark_corrupted(cluster, namespace, point_name, outcome.reason, message, now)
    if marked:
        policy = ((restore.get("spec") or {}).get("policyRef") or {}).get("name")
        point = cluster.get_point(namespace, point_name) if not policy else None
        policy = policy or ((point or {}).get("spec") or {}).get("policyRef", {}).get("name")
        metrics.verification_ended(namespace, str(policy or ""), passed=False)
    return marked


def mark_point_verified(cluster: points.Cluster, finished: Finished, now: dt.datetime) -> bool:
    """A Restore whose checks all passed proves its point restores: record it on the point
    (`status.verification`, condition Verified), so a policyRef prefers it. Best effort."""
    restore = finished.restore
    meta = restore["metadata"]
    point_name = (restore.get("status") or {}).get("recoveryPoint")
    verification = verification_of(meta["name"], finished.outcome, now)
    if verification is None or not point_name:
        return False
    point = cluster.get_point(meta["namespace"], point_name)
    if point is None:
        return False
    message = (
        f"restore/{meta['name']} restored it and {len(finished.outcome.checks)} check(s) passed"
    )
    conditions = set_conditions(
        (point.get("status") or {}).get("conditions"),
        [ConditionUpdate("Verified", "True", "RestoreVerified", message)],
        generation=point["metadata"].get("generation"),
        now=now,
    )
    cluster.patch_point_status(
        meta["namespace"],
        point_name,
        {"verification": verification, "conditions": conditions},
    )
    policy = ((point.get("spec") or {}).get("policyRef") or {}).get("name") or ""
    metrics.verification_ended(meta["namespace"], policy, passed=True)
    return True
