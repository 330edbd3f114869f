"""kopf handlers of BackupPolicy: thin adapters onto the policy runtime.

Ticks and the periodic work (references, status, catalog sync) are not kopf timers: two
Schedulers (aegis.scheduler) owned by the runtime wake each policy when it is due, with
periods from Settings read at start-up. kopf tells the runtime about policies
(resume/create/update/delete) and feeds the watch caches it reads.
"""

from __future__ import annotations

from typing import Any

import kopf

from aegis import GROUP, VERSION, metrics
from aegis.api import BACKUP_POLICY as KIND
from aegis.handlers.common import POLICY_RUNTIME, SECRETS, KopfLogger, accept, forget
from aegis.k8s.cache import PointCache, SecretCache
from aegis.reconcilers.backuppolicy import PolicyRuntime, make_runtime
from aegis.scheduler import Scheduler
from aegis.settings import Settings

CLOCK = "clock"
"""The memo key of an injected clock (an object with `now()`): an embedding application, or
a test driving the scheduler through time, may set it before start-up; absent, the system
clock."""


def runtime_of(memo: Any) -> PolicyRuntime:
    runtime: PolicyRuntime = memo[POLICY_RUNTIME]
    return runtime


@kopf.on.startup(id="policy-runtime")
def start_runtime(memo: kopf.Memo, logger: KopfLogger, **_: Any) -> None:
    """Make the policy runtime and start its two schedulers (after `aegis-configure`, which
    puts the settings into memo)."""
    settings: Settings = memo.get("settings") or Settings.from_env()
    runtime = make_runtime(
        settings,
        memo.get(CLOCK),
        objects_cache=PointCache(),
        secrets=memo.setdefault(SECRETS, SecretCache()),
    )
    ticks = Scheduler(
        runtime.tick, workers=settings.tick_workers, clock=runtime.now, name="aegis-tick"
    ).start()
    maintenance = Scheduler(
        runtime.maintain,
        workers=settings.maintenance_workers,
        clock=runtime.now,
        name="aegis-maintain",
    ).start()
    runtime.attach(ticks, maintenance)
    memo[POLICY_RUNTIME] = runtime
    logger.info(
        "Policy runtime started: %d tick workers, references re-checked every %ss",
        settings.tick_workers,
        settings.reference_check_seconds,
    )


@kopf.on.cleanup(id="stop-scheduler")
def stop_runtime(memo: Any, **_: Any) -> None:
    runtime: PolicyRuntime | None = memo.get(POLICY_RUNTIME)
    if runtime is not None:
        runtime.stop()


@kopf.on.event(GROUP, VERSION, KIND.plural, id="cache")
async def cache_policy(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """Keep the in-memory copy the scheduler reads (no API call)."""
    runtime_of(memo).objects_cache.policy_event(type, dict(body))


@kopf.on.event("", "v1", "secrets", id="secret-cache")
async def cache_secret(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """Keep the Secrets the operator reads current in memory (the SecretCache keeps only the
    resourceVersion of the others, never their values), so that re-checking references and
    probing plans cost no API call; and re-check a policy at once when a Secret it names
    changes or goes."""
    runtime: PolicyRuntime | None = memo.get(POLICY_RUNTIME)
    if runtime is not None:
        runtime.secret_changed(type, dict(body))
    else:
        secrets: SecretCache = memo.setdefault(SECRETS, SecretCache())
        secrets.event(type, dict(body))


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
    """Refuse an invalid spec (Ready=False naming the field); otherwise plan and check the
    policy now. A run prepared from the old spec is dropped either way."""
    assert namespace is not None  # every Aegis kind is namespaced
    metrics.policy_seen(body)  # before any outcome: even an invalid policy's RPO is watched
    accept(KIND, body, patch, logger, memo["settings"])
    runtime_of(memo).spec_changed(namespace, name)


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, memo: Any, namespace: str | None, name: str, **_: Any) -> None:
    """Deleting a policy keeps its RecoveryPoints (they are not owned by it)."""
    assert namespace is not None  # every Aegis kind is namespaced
    runtime_of(memo).forget(namespace, name)
    forget(KIND, body)
