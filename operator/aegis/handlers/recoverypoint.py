"""kopf handlers of RecoveryPoint and of its backup and verify Jobs: body → model →
reconciler → status."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import kopf

from aegis import GROUP, VERSION
from aegis.api import RECOVERY_POINT as KIND
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.recoverypoint import RecoveryPointSpec
from aegis.cloud.s3 import StorageError
from aegis.handlers.common import (
    POLICY_RUNTIME,
    KopfLogger,
    accept,
    forget,
    now,
    patch_conditions,
    spec_of,
)
from aegis.k8s import objects
from aegis.k8s.adapters import ApiCluster
from aegis.k8s.jobs import job_outcome
from aegis.labels import PRUNED_ANNOTATION
from aegis.reconcilers import naming, ownership, verification
from aegis.reconcilers import recoverypoint as points
from aegis.reconcilers.backuppolicy import PolicyRuntime
from aegis.reconcilers.conditions import ConditionUpdate, find
from aegis.settings import Settings


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="backup")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="backup")
def reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, memo: Any, **_: Any
) -> None:
    """Guard, then the one writer. kopf's own patch carries only the label (and a refusal):
    every other status write goes through `points` against the point as it is now, never this
    body, which may be stale (a status computed from it would drop a condition written
    meanwhile)."""
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        return
    assert isinstance(spec, RecoveryPointSpec)
    refused = ownership.refusal(dict(body))
    if refused is not None:
        _refuse(body, patch, refused)
        return
    namespace, name = body.metadata["namespace"], body.metadata["name"]
    cluster = ApiCluster()
    settings: Settings = memo["settings"]
    store = points.BucketStore(cluster, settings)
    phase = body.status.get("phase")
    if spec.trigger == "Imported" or phase in points.TERMINAL:
        points.accept(
            cluster, namespace, name, f"The recovery point is {phase or 'imported'}.", now()
        )
        points.sync(cluster, store, namespace, name, now())  # retells a lost completion event
        return
    # A user's on-demand point carries only spec.policyRef: label it, as the operator's own
    # points are, so that the policy's status, retention and `kubectl get -l` include it.
    policy_label = naming.label_value(spec.policy_ref.name)
    if body.metadata.labels.get(naming.POLICY_LABEL) != policy_label:
        patch.metadata.setdefault("labels", {})[naming.POLICY_LABEL] = policy_label
    if spec.trigger == "Scheduled":
        # The scheduler's own point: it starts the Job at the tick, or removes the point if
        # the tick no longer fires (after a restart too), so nothing starts it here.
        points.accept(cluster, namespace, name, "The scheduler starts this run at its tick.", now())
        return
    point = dict(body)
    try:
        job_name, _created = points.start(cluster, store, point, settings, now())
    except points.PointBlocked as blocked:
        points.block(cluster, point, blocked, now())
        kopf.warn(body, reason=blocked.reason, message=blocked.message)
        raise kopf.TemporaryError(blocked.message, delay=blocked.retry_seconds) from None
    logger.info("Backup Job %s runs the backup of %s", job_name, name)
    finished = points.sync(cluster, store, namespace, name, now())
    if finished is not None:
        _replan(memo, finished)


@kopf.on.event(GROUP, VERSION, KIND.plural, id="cache")
async def cache_point(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """Keep the in-memory copy the scheduler and status refresh read (no API call)."""
    runtime: PolicyRuntime = memo[POLICY_RUNTIME]
    previous = runtime.objects_cache.point_event(type, dict(body))
    # A run's end reaches the cache a moment after `run_ended` may have asked for the
    # policy's status (which reads this cache): ask again when the cache sees it end.
    phase = (body.get("status") or {}).get("phase")
    ended = previous is not None and (previous.get("status") or {}).get("phase") != phase
    if type == "MODIFIED" and ended and phase in points.TERMINAL:
        runtime.request_status(body.metadata["namespace"], body.spec["policyRef"]["name"])


@kopf.on.event(
    "batch",
    "v1",
    "jobs",
    id="backup-job",
    labels={naming.MANAGED_BY: naming.MANAGER, naming.COMPONENT: "backup"},
)
async def backup_job_changed(
    body: kopf.Body, type: str | None, memo: Any, logger: KopfLogger, **_: Any
) -> None:
    """A backup Job changed: when it has ended, fold its outcome into its RecoveryPoint.
    Async so that the many events of running Jobs cost no thread hop; the work of an ended
    Job (API and S3 calls) runs in a worker thread."""
    if type == "DELETED" or job_outcome(dict(body)) == "Running":
        return  # nothing to fold in yet, and no API call spent finding that out
    owners: list[dict[str, Any]] = list(body.metadata.get("ownerReferences") or [])
    owner = next((o for o in owners if o.get("kind") == KIND.kind), None)
    if owner is None:
        return
    await asyncio.to_thread(
        _finish_from_job, body.metadata["namespace"], owner["name"], memo, logger
    )


def _finish_from_job(namespace: str, point: str, memo: Any, logger: KopfLogger) -> None:
    settings: Settings = memo["settings"]
    cluster = ApiCluster()
    try:
        finished = points.sync(
            cluster, points.BucketStore(cluster, settings), namespace, point, now()
        )
    except (points.PointBlocked, StorageError) as problem:
        logger.warning("Cannot finish RecoveryPoint %s yet: %s", point, problem)
        return
    if finished is not None:
        _replan(memo, finished)


def _replan(memo: Any, finished: points.Finished) -> None:
    """A run ended (its event was told by the writer): the policy's status is refreshed, and
    a tick held back by concurrencyPolicy Forbid may start now."""
    runtime: PolicyRuntime = memo[POLICY_RUNTIME]
    runtime.run_ended(finished.point["metadata"]["namespace"], finished.policy)


def _refuse(body: kopf.Body, patch: kopf.Patch, refused: ownership.Refusal) -> None:
    """A point with a trigger only the operator may set: refused, never run, never counted
    as a run of its policy."""
    patch_conditions(
        body,
        patch,
        [
            ConditionUpdate("Accepted", "False", refused.reason, refused.message),
            ConditionUpdate("Complete", "False", refused.reason, refused.message),
        ],
    )
    patch.status["phase"] = "Failed"
    patch.status["message"] = refused.message
    if find(body.status.get("conditions"), "Accepted") is None:
        kopf.warn(body, reason=refused.reason, message=refused.message)


# --- verification ------------------------------------------------------------------------

VERIFY_FILTER: dict[str, Any] = {verification.VERIFY_ANNOTATION: kopf.PRESENT}
VERIFICATION_TICK_SECONDS = 60
"""How often a policy's verification schedule is looked at (its cron has minute precision)."""


@kopf.on.event(GROUP, VERSION, KIND.plural, id="verify-request", annotations=VERIFY_FILTER)
async def verify_requested(
    body: kopf.Body, type: str | None, memo: Any, logger: KopfLogger, **_: Any
) -> None:
    """`kubectl aegis verify` set (or changed) the point's verify annotation. A watch event,
    not an update handler: kopf leaves annotations under its own storage prefix (ours,
    dr.aegis.dev) out of the diff that update handlers see. Every event of an annotated point
    comes here; a request already answered costs no API call."""
    if type == "DELETED":
        return
    request = f"request-{body.metadata.annotations[verification.VERIFY_ANNOTATION]}"
    point = dict(body)
    if verification.answered(point, request):
        return
    try:
        await asyncio.to_thread(_start_verify, point, request, memo["settings"], logger)
    except kopf.TemporaryError:
        pass  # told in a Warning event; the next event of the point retries


def _start_verify(
    point: dict[str, Any], request: str, settings: Settings, logger: KopfLogger
) -> None:
    try:
        started = verification.start(ApiCluster(), point, request, settings)
    except points.PointBlocked as blocked:
        ApiCluster().post_event(
            point, "Warning", blocked.reason, blocked.message, key=f"verify-{blocked.reason}"
        )
        raise kopf.TemporaryError(blocked.message, delay=blocked.retry_seconds) from None
    if started is not None and started[1]:
        logger.info("Started verify Job %s (%s)", started[0], request)


@kopf.timer(
    GROUP,
    VERSION,
    "backuppolicies",
    id="verification-schedule",
    interval=VERIFICATION_TICK_SECONDS,
    initial_delay=5,
    when=lambda spec, **_: bool(spec.get("verification")),
)
def verification_schedule(body: kopf.Body, memo: Any, logger: KopfLogger, **_: Any) -> None:
    """A policy's spec.verification tick: verify its newest Completed points once per tick.
    Here, with the other verification handlers, rather than among the policy's handlers: it
    acts on points, and each request runs once (the Job name and status.verification.request
    key it), so a tick seen twice or after a restart starts nothing new."""
    spec = spec_of(BackupPolicySpec, body, memo["settings"])
    if spec is None or spec.verification is None:
        return
    created = dt.datetime.fromisoformat(
        str(body.metadata.get("creationTimestamp") or now().isoformat()).replace("Z", "+00:00")
    )
    request = verification.due_request(spec, created, now())
    if request is None:
        return
    namespace, policy = body.metadata["namespace"], body.metadata["name"]
    candidates = [
        p
        for p in objects.list_custom(KIND, namespace)
        if ((p.get("spec") or {}).get("policyRef") or {}).get("name") == policy
    ]
    for point in verification.newest_completed(candidates, spec.verification.newest):
        _start_verify(point, request, memo["settings"], logger)


@kopf.on.event(
    "batch",
    "v1",
    "jobs",
    id="verify-job",
    labels={naming.MANAGED_BY: naming.MANAGER, naming.COMPONENT: "verify"},
)
async def verify_job_changed(
    body: kopf.Body, type: str | None, logger: KopfLogger, **_: Any
) -> None:
    """A verify Job changed: when it has ended, its verdict goes to its point."""
    if type == "DELETED" or job_outcome(dict(body)) == "Running":
        return
    found = await asyncio.to_thread(
        verification.finish, ApiCluster(), body.metadata["namespace"], dict(body), now()
    )
    if found is not None:
        logger.info("Verify Job %s: %s (%s)", body.metadata["name"], found.result, found.message)


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="delete-objects")
def on_delete(body: kopf.Body, memo: Any, logger: KopfLogger, **_: Any) -> None:
    """Remove the point's bucket objects per its policy's deletionPolicy (always when pruned
    by retention); keep a point whose objects are Object-Locked until the lock ends."""
    settings: Settings = memo["settings"]
    pruned = bool(body.metadata.annotations.get(PRUNED_ANNOTATION))
    try:
        cluster = ApiCluster()
        locked_until = points.delete_objects(
            cluster, points.BucketStore(cluster, settings), dict(body), now(), pruned=pruned
        )
    except (points.PointBlocked, StorageError) as problem:
        raise kopf.TemporaryError(
            f"cannot delete the bucket objects yet: {problem}", delay=300
        ) from None
    if locked_until is not None:
        wait = (locked_until - dt.datetime.now(dt.UTC)).total_seconds()
        message = (
            f"bucket objects are Object-Locked until {locked_until.isoformat()}; the point is kept"
        )
        raise kopf.TemporaryError(message, delay=max(60.0, min(wait, 3600.0)))
    forget(KIND, body)
