"""kopf handlers of DRDrill and of its drill Jobs: body → model → reconciler → status.

Runs are not kopf timers: a Scheduler (aegis.scheduler, the BackupPolicy's) wakes each drill
at its next due time. kopf tells it about drills (resume/create/update/delete) and about
drill Jobs that changed, so a finished run is folded in at once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from aegis import GROUP, VERSION
from aegis.api import DR_DRILL as KIND
from aegis.api.drdrill import DRDrillSpec
from aegis.handlers.common import (
    FAILOVER_RUNTIME,
    POLICY_RUNTIME,
    KopfLogger,
    accept,
    forget,
)
from aegis.k8s import objects
from aegis.labels import RUN_ANNOTATION
from aegis.reconcilers import drdrill as drills
from aegis.reconcilers import failover_drill, naming
from aegis.reconcilers import failoverplan as plans
from aegis.reconcilers.backuppolicy import PolicyRuntime
from aegis.scheduler import Scheduler, utcnow
from aegis.settings import Settings

CLOCK: drills.Clock = utcnow
"""The clock that decides when scheduled runs are due. Tests running the operator in their
own process replace it to reach a tick without waiting; measurements never use it."""


def _schedule_clock() -> dt.datetime:
    return CLOCK()


def failover_ports(memo: Any) -> drills.PortsOf:
    """Failover drills probe with the FailoverPlan runtime's prober and reach what a plan of
    the same namespace may reach (its endpoint rule, its reachable namespaces)."""
    settings: Settings = memo["settings"]

    def ports(namespace: str) -> failover_drill.DrillPorts:
        runtime: plans.FailoverRuntime = memo[FAILOVER_RUNTIME]
        route53 = plans.guarded_route53(runtime.route53, settings.endpoints)
        return failover_drill.cluster_ports(
            namespace, runtime.probes, settings.endpoints, settings.reachable_namespaces,
            route53,
        )

    return ports


def policy_drilled(memo: Any) -> drills.PolicyDrilled:
    """A drill run recorded on a policy: refresh the policy's status now (RecoveryTested)."""

    def tell(namespace: str, policy: str) -> None:
        runtime: PolicyRuntime | None = memo.get(POLICY_RUNTIME)
        if runtime is not None:
            runtime.request_status(namespace, policy)

    return tell


def scheduler_for(memo: Any) -> Scheduler:
    scheduler: Scheduler | None = memo.get("drill_scheduler")
    if scheduler is None:
        settings: Settings = memo["settings"]
        ports = failover_ports(memo)
        drilled = policy_drilled(memo)

        def act(namespace: str, name: str, at: dt.datetime) -> float | None:
            return drills.tick(namespace, name, settings, at, utcnow, ports, drilled)

        scheduler = Scheduler(act, workers=8, clock=_schedule_clock).start()
        memo["drill_scheduler"] = scheduler
    return scheduler


@kopf.on.cleanup(id="stop-drill-scheduler")
def stop_scheduler(memo: Any, **_: Any) -> None:
    scheduler: Scheduler | None = memo.get("drill_scheduler")
    if scheduler is not None:
        scheduler.stop()


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.update(GROUP, VERSION, KIND.plural, id="accept")
def reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, memo: kopf.Memo, **_: Any
) -> None:
    namespace, name = body.meta["namespace"], body.meta["name"]
    spec = accept(KIND, body, patch, logger, memo["settings"])
    scheduler = scheduler_for(memo)
    if spec is None:
        scheduler.forget(namespace, name)
        return
    assert isinstance(spec, DRDrillSpec)
    if not drills.admit(dict(body), spec, utcnow):
        scheduler.forget(namespace, name)
        return
    scheduler.wake(namespace, name)


def _run_requested(body: kopf.Body, **_: Any) -> bool:
    request = body.meta.get("annotations", {}).get(RUN_ANNOTATION)
    return bool(request) and request != body.status.get("lastRunRequest")


@kopf.on.event(GROUP, VERSION, KIND.plural, id="run-request", when=_run_requested)
def run_requested(body: kopf.Body, memo: Any, **_: Any) -> None:
    """`kubectl aegis drill run` set a new run annotation. kopf treats annotations under our
    prefix as its own and fires no update for them, hence an event handler."""
    scheduler_for(memo).wake(body.meta["namespace"], body.meta["name"])


@kopf.on.event(
    "batch",
    "v1",
    "jobs",
    id="drill-job",
    labels={naming.MANAGED_BY: naming.MANAGER, naming.COMPONENT: "drill"},
)
def drill_job_changed(
    body: kopf.Body, type: str | None, memo: Any, logger: KopfLogger, **_: Any
) -> None:
    """A drill Job changed: when it has ended, fold its outcome into its drill and let the
    scheduler plan the next run."""
    if type == "DELETED":
        return
    owners: list[dict[str, Any]] = list(body.metadata.get("ownerReferences") or [])
    owner = next((o for o in owners if o.get("kind") == KIND.kind), None)
    if owner is None:
        return
    namespace = body.metadata["namespace"]
    try:
        finished = drills.finish(
            namespace, owner["name"], memo["settings"], utcnow, policy_drilled(memo)
        )
    except (objects.NotFound, ApiException) as problem:
        logger.warning("Cannot finish drill %s yet: %s", owner["name"], problem)
        return
    if finished:
        scheduler_for(memo).wake(namespace, owner["name"])


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The drill's Jobs are owned by it and go with it."""
    namespace, name = body.meta["namespace"], body.meta["name"]
    scheduler_for(memo).forget(namespace, name)
    drills.forget_metrics(namespace, name)
    forget(KIND, body)
