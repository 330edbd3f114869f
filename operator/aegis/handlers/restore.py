"""kopf handlers of Restore and of its restore Jobs: body → model → reconciler → status."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from aegis import GROUP, VERSION, metrics
from aegis.api import RESTORE as KIND
from aegis.api.restore import RestoreSpec
from aegis.handlers.common import KopfLogger, accept, forget, now, patch_conditions
from aegis.k8s.adapters import ApiCluster
from aegis.reconcilers import naming
from aegis.reconcilers import restore as restores
from aegis.reconcilers.conditions import ConditionUpdate, find
from aegis.reconcilers.recoverypoint import PointBlocked
from aegis.settings import Settings


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="restore")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="restore")
def reconcile(body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, memo: Any, **_: Any) -> None:
    namespace, name = body.metadata["namespace"], body.metadata["name"]
    if body.status.get("phase") in restores.TERMINAL:
        return  # a finished Restore is never run again, operator restarts included
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        # The spec is immutable, so a spec the operator refuses can never run: end it.
        refused = find(patch.status.get("conditions"), KIND.acceptance_condition) or {}
        message = refused.get("message") or "the spec is invalid"
        patch.status["phase"] = "Failed"
        patch.status["message"] = message
        patch_conditions(body, patch, [ConditionUpdate("Failed", "True", "InvalidSpec", message)])
        metrics.RESTORE_FAILURES.labels(namespace).inc()
        return
    assert isinstance(spec, RestoreSpec)
    metrics.RESOURCE_READY.labels(KIND.kind, namespace, name).set(1)
    settings: Settings = memo["settings"]
    restore = dict(body)
    cluster = ApiCluster()
    try:
        started = restores.start(cluster, restore, spec, settings, now())
    except restores.RestoreRefused as error:
        _announce(cluster, restores.refuse(cluster, restore, error, now()), logger)
        return
    except PointBlocked as blocked:
        restores.block(cluster, restore, blocked, now())
        kopf.warn(body, reason=blocked.reason, message=blocked.message)
        raise kopf.TemporaryError(blocked.message, delay=blocked.retry_seconds) from None
    if started.created:
        logger.info("Started restore Job %s (RecoveryPoint %s)", started.job_name, started.point)
    finished = restores.finish(namespace, name, cluster, now())
    if finished is not None:
        _announce(cluster, finished, logger)


@kopf.on.event(
    "batch",
    "v1",
    "jobs",
    id="restore-job",
    labels={naming.MANAGED_BY: naming.MANAGER, naming.COMPONENT: "restore"},
)
def restore_job_changed(body: kopf.Body, type: str | None, logger: KopfLogger, **_: Any) -> None:
    """A restore Job changed: when it has ended, fold its outcome into its Restore."""
    if type == "DELETED":
        return
    owners: list[dict[str, Any]] = list(body.metadata.get("ownerReferences") or [])
    owner = next((o for o in owners if o.get("kind") == KIND.kind), None)
    if owner is None:
        return
    cluster = ApiCluster()
    try:
        finished = restores.finish(body.metadata["namespace"], owner["name"], cluster, now())
    except (restores.RestoreGone, ApiException) as problem:
        # The Restore went away (its Job goes with it) or the API hiccuped: the next event of
        # the Job, or the resume handler after a restart, folds it in.
        logger.warning("Cannot finish Restore %s yet: %s", owner["name"], problem)
        return
    if finished is not None:
        _announce(cluster, finished, logger)


def _announce(cluster: ApiCluster, finished: restores.Finished, logger: KopfLogger) -> None:
    for level, line in restores.announce(cluster, finished, now()):
        logger.log(level, "%s", line)


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    """The restore Job is owned by the Restore: deleting a running Restore deletes its Job
    (garbage collection), which stops the restore."""
    forget(KIND, body)
