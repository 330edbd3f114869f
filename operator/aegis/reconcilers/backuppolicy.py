"""The BackupPolicy against the cluster and the bucket: are its references usable, what is
its status (RPO included), which points to prune, what to run at a tick, and which backups
in the bucket the cluster does not know yet. No kopf import: handlers and the scheduler call
these functions."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aegis import metrics
from aegis.agent.crypto import KeyringError, decode_key
from aegis.agent.manifest import ManifestError
from aegis.api import BACKUP_POLICY, RECOVERY_POINT
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.cloud import s3
from aegis.k8s import objects
from aegis.k8s.cache import CACHE
from aegis.k8s.jobs import job_outcome
from aegis.labels import PRUNED_ANNOTATION
from aegis.reconcilers import naming, retention, schedule, tenancy
from aegis.reconcilers.backup import parse_time
from aegis.reconcilers.conditions import ConditionUpdate, is_true, iso, set_conditions
from aegis.reconcilers.recoverypoint import (
    TERMINAL,
    PointBlocked,
    PolicyContext,
    backup_job,
    finish,
    load_policy,
    mark_running,
    s3_client_for,
    start,
)
from aegis.settings import Settings

logger = logging.getLogger("aegis.backuppolicy")
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


# Many policies share a key Secret, a credentials Secret and a bucket. A reference that was
# found usable is not re-read for this long, so that a start-up with a thousand policies
# costs a few reads instead of thousands. Only passing verdicts are kept (never values): a
# problem is checked again every time, so a fix is seen at once.
VERDICT_TTL_SECONDS = 30.0
_passed: dict[tuple[Any, ...], float] = {}
_passed_lock = threading.Lock()


def _checked(key: tuple[Any, ...], check: Callable[[], Problem | None]) -> Problem | None:
    now = time.monotonic()
    with _passed_lock:
        if now - _passed.get(key, -VERDICT_TTL_SECONDS) < VERDICT_TTL_SECONDS:
            return None
    problem = check()
    if problem is None:
        with _passed_lock:
            _passed[key] = now
    return problem


def _check_keys(namespace: str, secret: str) -> Problem | None:
    try:
        keys = objects.read_secret(namespace, secret)
    except objects.NotFound as error:
        return Problem("KeySecretNotFound", f"spec.encryption.keySecretRef: {error}; create it")
    if not keys:
        return Problem(
            "EncryptionKeyMissing", "spec.encryption.keySecretRef: the Secret holds no keys"
        )
    for key_id, value in keys.items():
        try:
            decode_key(value, key_id)
        except KeyringError as error:
            return Problem("EncryptionKeyInvalid", f"spec.encryption.keySecretRef: {error}")
    return None


def _check_secret_key(namespace: str, secret: str, key: str) -> Problem | None:
    try:
        data = objects.read_secret(namespace, secret)
    except objects.NotFound as error:
        return Problem("SecretNotFound", f"{error}: create it or fix the source's secret refs")
    if key not in data:
        return Problem("SecretKeyMissing", f"Secret {secret} has no key {key!r}")
    return None


def _check_bucket(spec: BackupPolicySpec, namespace: str, settings: Settings) -> Problem | None:
    try:
        client = s3_client_for(spec.storage, namespace, settings)
        s3.head_bucket(client, spec.storage.bucket)
    except PointBlocked as blocked:
        return Problem(blocked.reason, blocked.message)
    except s3.S3Problem as problem:
        return Problem(problem.reason, f"spec.storage: {problem}")
    return None


def _check_reachable(kind: str, host: str, port: int) -> Problem | None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as error:
        return Problem(
            "SourceUnreachable",
            f"spec.source: cannot reach {kind} at {host}:{port} ({error.strerror or error})",
        )
    return None


def check_references(spec: BackupPolicySpec, namespace: str, settings: Settings) -> Problem | None:
    """The first reason the policy cannot back up now, or None when it can."""
    try:
        schedule.next_tick(spec.schedule, spec.time_zone, dt.datetime.now(dt.UTC))
    except schedule.ScheduleError as error:
        return Problem("InvalidSchedule", str(error))
    key_secret = spec.encryption.key_secret_ref.name
    problem = _checked(("keys", namespace, key_secret), lambda: _check_keys(namespace, key_secret))
    if problem:
        return problem
    refs = []
    if spec.source.postgres is not None:
        refs = [spec.source.postgres.user_secret_ref, spec.source.postgres.password_secret_ref]
    elif spec.source.redis is not None:
        refs = [
            r
            for r in (spec.source.redis.password_secret_ref, spec.source.redis.username_secret_ref)
            if r
        ]
    for ref in refs:
        problem = _checked(
            ("secret", namespace, ref.name, ref.key),
            functools.partial(_check_secret_key, namespace, ref.name, ref.key),
        )
        if problem:
            return problem
    storage = spec.storage
    credentials = storage.credentials_secret_ref.name if storage.credentials_secret_ref else None
    bucket_key = ("bucket", namespace, storage.bucket, storage.endpoint, credentials)
    problem = _checked(bucket_key, lambda: _check_bucket(spec, namespace, settings))
    if problem:
        return problem
    source = spec.source.postgres or spec.source.redis
    assert source is not None
    kind = "PostgreSQL" if spec.source.postgres is not None else "Redis"
    return _checked(
        ("tcp", source.host, source.port),
        lambda: _check_reachable(kind, source.host, source.port),
    )


def ready_condition(problem: Problem | None, spec: BackupPolicySpec) -> ConditionUpdate:
    if problem is not None:
        return ConditionUpdate("Ready", "False", problem.reason, problem.message)
    if spec.suspend:
        return ConditionUpdate(
            "Ready", "True", "Suspended", "References resolve; scheduling is suspended"
        )
    return ConditionUpdate(
        "Ready", "True", "Scheduled", f"Backups run on '{spec.schedule}' ({spec.time_zone})"
    )


# --- status, RPO and retention ---------------------------------------------------------------


def policy_points(namespace: str, policy: str, *, cached: bool = False) -> list[dict[str, Any]]:
    """The policy's RecoveryPoints: from the watch cache when `cached`, else listed."""
    if cached:
        return CACHE.points(namespace, policy)
    selector = f"{naming.POLICY_LABEL}={naming.label_value(policy)}"
    return [
        p
        for p in objects.list_custom(RECOVERY_POINT, namespace, selector)
        if p.get("spec", {}).get("policyRef", {}).get("name") == policy
    ]


def point_info(point: dict[str, Any]) -> retention.PointInfo:
    status = point.get("status") or {}
    return retention.PointInfo(
        name=point["metadata"]["name"],
        phase=status.get("phase"),
        source_time=parse_time(status.get("sourceTime")),
        verified=is_true(status.get("conditions"), "Verified"),
        locked_until=parse_time(status.get("lockedUntil")),
        created=parse_time(point["metadata"].get("creationTimestamp")),
    )


def summarize(
    points: list[dict[str, Any]], spec: BackupPolicySpec, now: dt.datetime
) -> tuple[dict[str, Any], ConditionUpdate]:
    """Status fields and the RPOMet condition from the policy's points."""
    completed = [p for p in points if (p.get("status") or {}).get("phase") == "Completed"]
    failed = [p for p in points if (p.get("status") or {}).get("phase") in ("Failed", "Corrupted")]

    def newest(items: list[dict[str, Any]], field: str) -> dict[str, Any] | None:
        dated = [
            (when, p) for p in items if (when := parse_time((p.get("status") or {}).get(field)))
        ]
        return max(dated, key=lambda tp: tp[0])[1] if dated else None

    # Every field is written (None clears it): a summary is complete on its own.
    status: dict[str, Any] = {
        "recoveryPoints": len(points),
        "lastRecoveryPoint": None,
        "lastSuccessfulTime": None,
        "lastFailureTime": None,
    }
    newest_source = newest(completed, "sourceTime")
    newest_done = newest(completed, "completionTime")
    newest_failed = newest(failed, "completionTime")
    created = [(parse_time(p["metadata"].get("creationTimestamp")), p) for p in points]
    latest = max(((t, p) for t, p in created if t), key=lambda tp: tp[0], default=None)
    if latest:
        status["lastRecoveryPoint"] = latest[1]["metadata"]["name"]
    if newest_done:
        status["lastSuccessfulTime"] = newest_done["status"]["completionTime"]
    if newest_failed:
        status["lastFailureTime"] = newest_failed["status"]["completionTime"]
    objective = spec.objectives.rpo_seconds if spec.objectives else None
    if newest_source is None:
        status["currentRPOSeconds"] = None
        condition = ConditionUpdate(
            "RPOMet",
            "False" if objective else "Unknown",
            "NoRecoveryPoint",
            "No Completed recovery point yet",
        )
        return status, condition
    source_time = parse_time(newest_source["status"]["sourceTime"])
    assert source_time is not None
    rpo = max(0, int((now - source_time).total_seconds()))
    status["currentRPOSeconds"] = rpo
    if objective is None:
        condition = ConditionUpdate(
            "RPOMet",
            "Unknown",
            "NoObjective",
            f"Current RPO {rpo}s; set spec.objectives.rpoSeconds",
        )
    elif rpo <= objective:
        condition = ConditionUpdate(
            "RPOMet", "True", "WithinObjective", f"Current RPO {rpo}s ≤ objective {objective}s"
        )
    else:
        condition = ConditionUpdate(
            "RPOMet",
            "False",
            "RPOBreached",
            f"Current RPO {rpo}s exceeds the objective {objective}s: the newest Completed point "
            f"{newest_source['metadata']['name']} is from {newest_source['status']['sourceTime']}",
        )
    return status, condition


def prune(
    namespace: str,
    policy: str,
    spec: BackupPolicySpec,
    points: list[dict[str, Any]],
    now: dt.datetime,
) -> list[str]:
    """Delete the points retention gives up; their finalizer removes the bucket objects."""
    pruned = []
    by_name = {p["metadata"]["name"]: p for p in points}
    for name in retention.select_prunable(
        [point_info(p) for p in points], spec.retention, spec.time_zone, now
    ):
        if by_name[name]["metadata"].get("deletionTimestamp"):
            continue
        objects.annotate_custom(RECOVERY_POINT, namespace, name, {PRUNED_ANNOTATION: "retention"})
        objects.patch_custom_status(
            RECOVERY_POINT, namespace, name, {"phase": "Expired", "message": "pruned by retention"}
        )
        objects.delete_custom(RECOVERY_POINT, namespace, name)
        pruned.append(name)
    return pruned


_refresh_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def refresh(namespace: str, policy: str, settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """Recompute the policy's status from its points, prune, export metrics. Serialized per
    policy: the timer and a finishing backup may both refresh, and a stale summary must not
    land after a fresh one."""
    with _refresh_locks[(namespace, policy)]:
        return _refresh(
            namespace, policy, settings, dt.datetime.now(dt.UTC) if now is None else now
        )


def _refresh(namespace: str, policy: str, settings: Settings, now: dt.datetime) -> dict[str, Any]:
    warm = (namespace, policy) in _warm
    context = load_policy(namespace, policy, cached=warm)
    points = policy_points(namespace, policy, cached=warm)
    pruned = prune(namespace, policy, context.spec, points, now)
    if pruned:
        objects.post_event(
            context.body,
            "Normal",
            "Pruned",
            f"Retention pruned {len(pruned)} point(s): {', '.join(pruned)}",
        )
        points = [p for p in points if p["metadata"]["name"] not in pruned]
    status, rpo = summarize(points, context.spec, now)
    previous = context.body.get("status") or {}
    status["conditions"] = set_conditions(
        previous.get("conditions"),
        [rpo],
        generation=context.body["metadata"].get("generation"),
        now=now,
    )
    objects.patch_custom_status(BACKUP_POLICY, namespace, policy, status)
    metrics.export_policy(context.body, points)
    was = next((c for c in previous.get("conditions") or [] if c.get("type") == "RPOMet"), None)
    if rpo.reason == "RPOBreached" and (was is None or was.get("status") != "False"):
        objects.post_event(context.body, "Warning", "RPOBreached", rpo.message)
    return status


# --- scheduling ------------------------------------------------------------------------------


# A tick is prepared this long before it is due (its point created, its Job built), so that at
# the tick itself a single request starts the run, even when many policies share the minute.
PREPARE_SECONDS = 30.0


@dataclass
class Prepared:
    """A run made ready ahead of its due time."""

    due: dt.datetime
    scheduled: dt.datetime
    point: dict[str, Any]
    job: dict[str, Any]
    status_update: dict[str, Any]


_prepared: dict[tuple[str, str], Prepared] = {}
# What this process last wrote as a policy's status.handledUntil: the cache may lag behind
# our own write by a watch event, and a stale cursor would count missed runs twice.
_cursor: dict[tuple[str, str], dt.datetime] = {}
_warm: set[tuple[str, str]] = set()
_prepared_lock = threading.Lock()
# Status writes that follow a run's start wait until no run is being fired, so that at a busy
# tick (a thousand policies on one schedule) they queue behind the Jobs instead of competing
# with them for the API server and this process's interpreter.
_followups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aegis-followup")
_firing = 0
_firing_done = threading.Condition()


def tick(namespace: str, policy: str, settings: Settings, now: dt.datetime) -> float | None:
    """Do what the schedule says at `now`; return seconds until the next look (None: wait
    for a change of the spec)."""
    key = (namespace, policy)
    with _prepared_lock:
        ready = _prepared.pop(key, None)
    if ready is not None:
        if now < ready.due:
            with _prepared_lock:
                _prepared.setdefault(key, ready)
            return (ready.due - now).total_seconds()
        _fire(ready, settings)
        return 0.0  # plan the next tick right away

    # The first look at a policy after start-up reads the API server; later ones read the
    # watch cache, which by then holds everything kopf has listed.
    warm = key in _warm
    context = load_policy(namespace, policy, cached=warm)
    spec = context.spec
    status = context.body.get("status") or {}
    since = max(
        t
        for t in (
            parse_time(status.get("handledUntil"))
            or parse_time(context.body["metadata"].get("creationTimestamp"))
            or now,
            _cursor.get(key),
        )
        if t is not None
    )
    points = policy_points(namespace, policy, cached=warm)
    _warm.add(key)
    active = [
        p["metadata"]["name"]
        for p in points
        if (p.get("status") or {}).get("phase") not in TERMINAL
    ]
    policy_key = schedule.PolicyKey(namespace, policy)
    plan = schedule.plan_runs(spec, policy_key, since=since, now=now, active=active)
    for name in plan.stop:
        _replace(namespace, name)
    update: dict[str, Any] = {"handledUntil": iso(plan.handled_until)}
    _cursor[key] = plan.handled_until
    update["nextScheduleTime"] = iso(plan.next_run_time) if plan.next_run_time else None
    if plan.missed.count:
        update["missedRuns"] = int(status.get("missedRuns") or 0) + plan.missed.count
        objects.post_event(
            context.body,
            "Warning",
            "MissedRuns",
            f"{plan.missed.count} scheduled run(s) were skipped "
            f"(last {iso(plan.missed.last) if plan.missed.last else '?'}): "
            "they could not start within startingDeadlineSeconds or a newer run superseded them",
        )
    if plan.run is not None and plan.run_name is not None:
        # Due now (first run after a restart, or a tick held back by Forbid): start at once.
        point = _create_point(context.body, plan.run_name, plan.run)
        update["lastScheduleTime"] = iso(plan.run)
        update["lastRecoveryPoint"] = plan.run_name
        try:
            start(point, settings)
        except PointBlocked:
            pass  # the point's own handler reports why and retries
        objects.patch_custom_status(BACKUP_POLICY, namespace, policy, update)
        return plan.requeue_after
    if plan.next_run_time is not None and plan.requeue_after is not None:
        lead = plan.requeue_after - PREPARE_SECONDS
        if lead <= 0 and _prepare(context, policy_key, plan, active, update, settings):
            return max(0.0, plan.requeue_after)
        objects.patch_custom_status(BACKUP_POLICY, namespace, policy, update)
        return max(0.0, lead)
    objects.patch_custom_status(BACKUP_POLICY, namespace, policy, update)
    return plan.requeue_after


def _prepare(
    context: PolicyContext,
    key: schedule.PolicyKey,
    plan: schedule.Plan,
    active: list[str],
    update: dict[str, Any],
    settings: Settings,
) -> bool:
    """Make the upcoming tick ready: plan it as of its due time, create its point, build its
    Job. False when it should rather be planned at the tick (it would stop or wait for others)."""
    assert plan.next_run_time is not None
    body, spec = context.body, context.spec
    upcoming = schedule.plan_runs(
        spec, key, since=plan.handled_until, now=plan.next_run_time, active=active
    )
    if upcoming.run is None or upcoming.run_name is None or upcoming.stop:
        return False
    point = _create_point(body, upcoming.run_name, upcoming.run)
    try:
        job = backup_job(point, settings, context)
    except PointBlocked:
        return False
    fired_update = {
        **update,
        "handledUntil": iso(upcoming.handled_until),
        "lastScheduleTime": iso(upcoming.run),
        "lastRecoveryPoint": upcoming.run_name,
        "nextScheduleTime": iso(upcoming.next_run_time) if upcoming.next_run_time else None,
    }
    if upcoming.missed.count:
        fired_update["missedRuns"] = update.get("missedRuns", 0) + upcoming.missed.count
    prepared = Prepared(plan.next_run_time, upcoming.run, point, job, fired_update)
    with _prepared_lock:
        _prepared[(key.namespace, key.name)] = prepared
    return True


def _fire(ready: Prepared, settings: Settings) -> None:
    """Start a prepared run: one request at the tick, status writes after."""
    global _firing
    meta = ready.point["metadata"]
    namespace, name = meta["namespace"], ready.job["metadata"]["name"]
    with _firing_done:
        _firing += 1
    try:
        job, _ = objects.create_job(namespace, ready.job)
    finally:
        with _firing_done:
            _firing -= 1
            _firing_done.notify_all()
    policy = ready.point["spec"]["policyRef"]["name"]
    # Only now is the tick handled: a prepared run that never fired is planned again.
    _cursor[(namespace, policy)] = ready.scheduled
    late = (dt.datetime.now(dt.UTC) - ready.due).total_seconds()
    logger.info("Started backup Job %s/%s %.3fs after its due time", namespace, name, late)

    def record() -> None:
        with _firing_done:
            _firing_done.wait_for(lambda: _firing == 0, timeout=30)
        try:
            mark_running(ready.point, name)
            objects.patch_custom_status(BACKUP_POLICY, namespace, policy, ready.status_update)
            if job_outcome(job) != "Running":
                finish(namespace, meta["name"], settings)
        except Exception as error:  # logged; the status timer and the Job handler catch up
            logger.warning("Recording the start of %s/%s failed: %s", namespace, name, error)

    _followups.submit(record)


def forget_prepared(namespace: str, policy: str) -> None:
    """The policy changed or went away: drop a run prepared from its old spec."""
    with _prepared_lock:
        _prepared.pop((namespace, policy), None)
    _warm.discard((namespace, policy))
    _cursor.pop((namespace, policy), None)


def _create_point(policy: dict[str, Any], name: str, scheduled: dt.datetime) -> dict[str, Any]:
    meta = policy["metadata"]
    body = {
        "apiVersion": RECOVERY_POINT.api_version,
        "kind": RECOVERY_POINT.kind,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": naming.recovery_point_labels(meta["name"]),
        },
        "spec": {
            "policyRef": {"name": meta["name"]},
            "trigger": "Scheduled",
            "scheduledTime": iso(scheduled),
        },
    }
    point, _ = objects.create_custom(RECOVERY_POINT, meta["namespace"], body)
    point.setdefault("apiVersion", RECOVERY_POINT.api_version)
    point.setdefault("kind", RECOVERY_POINT.kind)
    return point


def _replace(namespace: str, name: str) -> None:
    """concurrencyPolicy Replace: stop an active run; its point ends Failed."""
    try:
        point = objects.get_custom(RECOVERY_POINT, namespace, name)
    except objects.NotFound:
        return
    job = (point.get("status") or {}).get("jobName")
    if job:
        objects.delete_job(namespace, job)
    message = "replaced by a newer scheduled run (concurrencyPolicy Replace)"
    conditions = set_conditions(
        (point.get("status") or {}).get("conditions"),
        [ConditionUpdate("Complete", "False", "Replaced", message)],
        generation=point["metadata"].get("generation"),
        now=dt.datetime.now(dt.UTC),
    )
    objects.patch_custom_status(
        RECOVERY_POINT,
        namespace,
        name,
        {"phase": "Failed", "message": message, "conditions": conditions},
    )


# --- catalog sync ----------------------------------------------------------------------------


def catalog_sync(namespace: str, policy: str, settings: Settings) -> list[str]:
    """Create an Imported RecoveryPoint for every manifest of this policy in the bucket that
    the cluster does not know (a new cluster pointed at an old bucket)."""
    context = load_policy(namespace, policy)
    spec = context.spec
    client = s3_client_for(spec.storage, namespace, settings)
    known = {p["metadata"]["name"] for p in policy_points(namespace, policy)}
    imported = []
    # Not a point its user deleted while the policy retains objects (tombstoned).
    for key in s3.importable_manifest_keys(
        client, spec.storage.bucket, spec.storage.prefix, namespace, policy
    ):
        name = key.rsplit("/", 2)[-2]
        if name in known:
            continue
        try:
            manifest = s3.read_manifest(client, spec.storage.bucket, key)
        except (s3.S3Problem, ManifestError):
            continue
        if not tenancy.manifest_belongs(manifest, namespace, policy):
            continue
        body = {
            "apiVersion": RECOVERY_POINT.api_version,
            "kind": RECOVERY_POINT.kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": naming.recovery_point_labels(policy),
            },
            "spec": {"policyRef": {"name": policy}, "trigger": "Imported"},
        }
        point, created = objects.create_custom(RECOVERY_POINT, namespace, body)
        if not created:
            continue
        message = f"imported from {manifest.manifest}"
        status = {**manifest.recovery_point_status(), "phase": "Completed", "message": message}
        status["conditions"] = set_conditions(
            None,
            [
                ConditionUpdate("Accepted", "True", "Imported", message),
                ConditionUpdate("Complete", "True", "Imported", message),
            ],
            generation=point["metadata"].get("generation"),
            now=dt.datetime.now(dt.UTC),
        )
        objects.patch_custom_status(RECOVERY_POINT, namespace, name, status)
        imported.append(name)
    return imported
