"""kopf handlers of BackupPolicy: body → model → reconciler → status patch.

Ticks are not kopf timers: the process-wide Scheduler (aegis.scheduler) wakes each policy at
its next due time. kopf tells it about policies (resume/create/update/delete) and runs two
slow timers per policy: status + RPO + retention, and catalog sync.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf

from aegis import GROUP, VERSION, metrics
from aegis.api import BACKUP_POLICY as KIND
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.cloud.s3 import S3Problem
from aegis.handlers.common import KopfLogger, accept, forget, now, patch_conditions
from aegis.k8s.cache import CACHE
from aegis.reconcilers import backuppolicy as policies
from aegis.reconcilers.recoverypoint import PointBlocked
from aegis.scheduler import Scheduler
from aegis.settings import Settings

# Timer intervals are read once at import: kopf fixes them when handlers are registered.
_SETTINGS = Settings.from_env()


def scheduler_for(memo: Any) -> Scheduler:
    scheduler: Scheduler | None = memo.get("scheduler")
    if scheduler is None:
        settings: Settings = memo["settings"]

        def act(namespace: str, name: str, at: dt.datetime) -> float | None:
            try:
                return policies.tick(namespace, name, settings, at)
            except PointBlocked as blocked:
                if blocked.reason in ("PolicyNotFound", "PolicyInvalid"):
                    return None  # deleted or refused: its handler reports it
                raise

        scheduler = memo["scheduler"] = Scheduler(act, workers=32).start()
    return scheduler


@kopf.on.event(GROUP, VERSION, KIND.plural, id="cache")
async def cache_policy(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the in-memory copy the scheduler reads (no API call)."""
    CACHE.policy_event(type, dict(body))


@kopf.on.cleanup(id="stop-scheduler")
def stop_scheduler(memo: Any, **_: Any) -> None:
    scheduler: Scheduler | None = memo.get("scheduler")
    if scheduler is not None:
        scheduler.stop()


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="reconcile")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="reconcile")
@kopf.on.update(GROUP, VERSION, KIND.plural, id="reconcile")
def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: KopfLogger,
    memo: Any,
    namespace: str | None,
    name: str,
    **_: Any,
) -> None:
    assert namespace is not None  # every Aegis kind is namespaced
    metrics.policy_seen(body)  # before any outcome: even an invalid policy's RPO is watched
    spec = accept(KIND, body, patch, logger, memo["settings"])
    scheduler = scheduler_for(memo)
    if spec is None:
        scheduler.forget(namespace, name)
        policies.forget_prepared(namespace, name)
        return
    assert isinstance(spec, BackupPolicySpec)
    _check(spec, body, patch, memo["settings"])
    policies.forget_prepared(namespace, name)  # a run prepared from the old spec is stale
    scheduler.wake(namespace, name)


def _check(spec: BackupPolicySpec, body: kopf.Body, patch: kopf.Patch, settings: Settings) -> None:
    problem = policies.check_references(spec, body.meta["namespace"], settings)
    previous = next(
        (c for c in body.status.get("conditions") or [] if c.get("type") == "Ready"), None
    )
    patch_conditions(body, patch, [policies.ready_condition(problem, spec)])
    if problem is not None and (previous is None or previous.get("reason") != problem.reason):
        kopf.warn(body, reason=problem.reason, message=problem.message)


@kopf.timer(
    GROUP, VERSION, KIND.plural, id="status", interval=_SETTINGS.status_seconds, initial_delay=5
)
def status_timer(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: KopfLogger,
    memo: Any,
    namespace: str | None,
    name: str,
    **_: Any,
) -> None:
    """Keep RPO, counts and retention current; re-check references while not Ready (so a
    fixed Secret or bucket is noticed without an edit)."""
    assert namespace is not None  # every Aegis kind is namespaced
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        return
    assert isinstance(spec, BackupPolicySpec)
    settings: Settings = memo["settings"]
    ready = next((c for c in body.status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        _check(spec, body, patch, settings)
    try:
        policies.refresh(namespace, name, settings, now())
    except (PointBlocked, S3Problem) as problem:
        logger.warning("Status refresh of %s/%s postponed: %s", namespace, name, problem)


@kopf.timer(
    GROUP,
    VERSION,
    KIND.plural,
    id="catalog-sync",
    interval=_SETTINGS.catalog_sync_seconds,
    initial_delay=min(10, _SETTINGS.catalog_sync_seconds),
)
def catalog_timer(
    logger: KopfLogger, memo: Any, namespace: str | None, name: str, **_: Any
) -> None:
    """Import backups found in the bucket that this cluster does not know, suspended
    policies included (a DR cluster applied from the same Git repository)."""
    assert namespace is not None  # every Aegis kind is namespaced
    try:
        imported = policies.catalog_sync(namespace, name, memo["settings"])
    except (PointBlocked, S3Problem) as problem:
        logger.warning("Catalog sync of %s/%s postponed: %s", namespace, name, problem)
        return
    if imported:
        logger.info(
            "Imported %d recovery point(s) from the bucket: %s", len(imported), ", ".join(imported)
        )


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, memo: Any, namespace: str | None, name: str, **_: Any) -> None:
    """Deleting a policy keeps its RecoveryPoints (they are not owned by it)."""
    assert namespace is not None  # every Aegis kind is namespaced
    scheduler_for(memo).forget(namespace, name)
    policies.forget_prepared(namespace, name)
    metrics.forget_policy(namespace, name)
    forget(KIND, body)
