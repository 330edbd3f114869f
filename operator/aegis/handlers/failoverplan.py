"""kopf handlers of FailoverPlan: accept the spec, and run one probing daemon per plan.

Why an async daemon per plan rather than a timer or a sync daemon: a tick blocks (probes
wait up to timeoutSeconds, a procedure runs for minutes), and kopf runs sync handlers in a
pool capped at settings.execution.max_workers, shared by every kind. The async daemon only
awaits; the blocking tick runs in the failover runtime's own thread pool and the checks in
the shared, bounded `Prober`. So one plan with a hung server or a long procedure holds one
of those threads and never delays another plan's probes, nor a backup's handler. A daemon
(rather than a timer) also sleeps exactly until the next site is due and can be woken at
once by a trigger annotation.

Stopping (operator shutdown, plan deleted) flags the tick as halted: it writes nothing more,
exactly as if the process had died there. The next operator finds the step it was running
still `Running` in status and resumes it.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import Any

import kopf

from aegis import GROUP, VERSION
from aegis.api import FAILOVER_PLAN as KIND
from aegis.handlers.common import (
    FAILOVER_RUNTIME,
    SECRETS,
    KopfLogger,
    accept,
    accepted,
    forget,
    repeat_in_pool,
)
from aegis.k8s.adapters import ApiCluster
from aegis.k8s.cache import PlanCache, SecretCache
from aegis.reconcilers import failoverplan as plans
from aegis.settings import Settings
from aegis.steps.route53 import default_route53_client

WAKEUPS = "failover-wakeups"
PLANS = "failover-plans"
# Ticks that fail for a passing reason (API server unreachable) are retried this soon.
ERROR_RETRY_SECONDS = 5.0


@kopf.on.startup(id="failover-runtime")
async def start_runtime(memo: kopf.Memo, **_: Any) -> None:
    # aegis-configure (registered first) normally has put the settings in memo already.
    settings = memo.get("settings") or Settings.from_env()
    secrets = memo.setdefault(SECRETS, SecretCache())  # shared with the policies
    memo[PLANS] = PlanCache()
    memo[FAILOVER_RUNTIME] = plans.FailoverRuntime(
        ApiCluster(secrets, memo[PLANS]), default_route53_client, settings
    )
    memo[WAKEUPS] = {}
    # sync handlers (in threads) wake a plan's daemon through its event loop
    memo["failover-loop"] = asyncio.get_running_loop()


@kopf.on.cleanup(id="failover-runtime")
def stop_runtime(memo: kopf.Memo, **_: Any) -> None:
    runtime: plans.FailoverRuntime | None = memo.get(FAILOVER_RUNTIME)
    if runtime is not None:
        runtime.close()


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.update(GROUP, VERSION, KIND.plural, id="accept")
def reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, memo: kopf.Memo, **_: Any
) -> None:
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        return
    accepted(KIND, body, patch, "The plan is accepted; its sites are being probed.")


@kopf.on.event(GROUP, VERSION, KIND.plural, id="wake-on-trigger")
async def wake_on_trigger(
    event: kopf.RawEvent,
    annotations: kopf.Annotations,
    memo: kopf.Memo,
    namespace: str | None,
    name: str,
    **_: Any,
) -> None:
    """Keeps the plan's copy that its ticks read (no GET per probe round), then acts on a
    trigger annotation now, not at the next probe — in that order, so the woken tick sees
    the annotation."""
    cache: PlanCache | None = memo.get(PLANS)
    if cache is not None:
        cache.event(event.get("type"), dict(event["object"]))
    if not any(key in annotations for key in plans.TRIGGERS):
        return
    wakeup: asyncio.Event | None = memo.get(WAKEUPS, {}).get((namespace, name))
    if wakeup is not None:
        wakeup.set()


@kopf.daemon(GROUP, VERSION, KIND.plural, id="failover-loop", cancellation_timeout=5.0)
async def failover_loop(
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: KopfLogger,
    namespace: str | None,
    name: str,
    **_: Any,
) -> None:
    assert namespace is not None  # every Aegis kind is namespaced
    runtime: plans.FailoverRuntime = memo[FAILOVER_RUNTIME]
    wakeups: dict[tuple[str, str], asyncio.Event] = memo[WAKEUPS]
    wakeup = wakeups.setdefault((namespace, name), asyncio.Event())
    halted = threading.Event()

    def failed(error: Exception) -> float:  # the API server or a port failed; try again soon
        logger.warning(
            "FailoverPlan %s/%s: tick failed: %s: %s",
            namespace,
            name,
            type(error).__name__,
            error,
        )
        return ERROR_RETRY_SECONDS

    try:
        await repeat_in_pool(
            runtime.pool,
            partial(plans.tick, namespace, name, runtime, halted=halted.is_set),
            stopped,
            wakeup,
            finished=(plans.Halted,),
            on_error=failed,
        )
    finally:
        # A tick still running in its thread must not write after this point.
        halted.set()
        if wakeups.get((namespace, name)) is wakeup:
            del wakeups[(namespace, name)]


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    forget(KIND, body)
    plans.forget_metrics(namespace or "", name)
