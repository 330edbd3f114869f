"""What every kind's handler does first: parse the spec into its model and say so in a
condition. Handlers stay thin: a guard, a call into plain code, a status patch."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel

from aegis import metrics
from aegis.api import Kind
from aegis.reconcilers import tenancy
from aegis.reconcilers.conditions import ConditionUpdate, find, set_conditions
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.settings import Settings

M = TypeVar("M", bound=BaseModel)

SECRETS = "secrets"
"""The memo key of the operator's one SecretCache (aegis.k8s.cache), fed by the Secret watch
(handlers.backuppolicy `cache_secret`) and read by the policies' reference checks and the
plans' probes."""
# The memo keys of the runtimes created at start-up: one home for every handler module (a
# handler module never imports another one for them).
POLICY_RUNTIME = "policies"
FAILOVER_RUNTIME = "failover-runtime"
# What kopf passes as `logger`.
KopfLogger = logging.Logger | logging.LoggerAdapter[Any]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def patch_conditions(
    body: kopf.Body,
    patch: kopf.Patch,
    updates: list[ConditionUpdate],
    *,
    at: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Apply condition updates to the status patch, keeping transition times."""
    current = patch.status.get("conditions") or body.status.get("conditions")
    conditions = set_conditions(
        current, updates, generation=body.meta.get("generation"), now=at or now()
    )
    patch.status["conditions"] = conditions
    patch.status["observedGeneration"] = body.meta.get("generation")
    return conditions


def accept(
    kind: Kind, body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, settings: Settings
) -> BaseModel | None:
    """Parse the spec and check that it reaches nothing outside its namespace that the
    operator's settings do not open (`aegis.reconcilers.tenancy`). On success set the
    acceptance condition True and return the model; on failure set it False with a reason
    naming the field, post a Warning event once per generation and problem, and return
    None. Never raises for bad input."""
    namespace, name = body.meta.get("namespace") or "", body.meta.get("name") or ""
    result = parse_spec(kind.spec, body.get("spec"))
    if not isinstance(result, SpecError):
        result = tenancy.refusal(result, namespace, settings) or result
    condition = kind.acceptance_condition
    if isinstance(result, SpecError):
        previous = find(body.status.get("conditions"), condition)
        already_reported = (
            previous is not None
            and previous.get("status") == "False"
            and previous.get("reason") == result.reason
            and previous.get("message") == result.message
            and previous.get("observedGeneration") == body.meta.get("generation")
        )
        patch_conditions(
            body, patch, [ConditionUpdate(condition, "False", result.reason, result.message)]
        )
        if not already_reported:
            kopf.warn(body, reason=result.reason, message=result.message)
            metrics.INVALID_SPECS.labels(kind.kind, namespace).inc()
            logger.warning("Refused %s %s/%s: %s", kind.kind, namespace, name, result.message)
        metrics.RESOURCE_READY.labels(kind.kind, namespace, name).set(0)
        return None
    return result


def accepted(kind: Kind, body: kopf.Body, patch: kopf.Patch, message: str) -> None:
    """Mark the spec as accepted (the outcome conditions are the reconciler's)."""
    patch_conditions(
        body, patch, [ConditionUpdate(kind.acceptance_condition, "True", "Accepted", message)]
    )
    metrics.RESOURCE_READY.labels(
        kind.kind, body.meta.get("namespace") or "", body.meta.get("name") or ""
    ).set(1)


def forget(kind: Kind, body: kopf.Body) -> None:
    """Drop per-object metric series when the object goes away."""
    with contextlib.suppress(KeyError):
        metrics.RESOURCE_READY.remove(
            kind.kind, body.meta.get("namespace") or "", body.meta.get("name") or ""
        )


def spec_of(model: type[M], body: kopf.Body, settings: Settings) -> M | None:
    """The parsed spec for handlers that run after acceptance (timers, daemons); None when
    the spec is invalid or reaches outside its namespace, which `accept` has reported."""
    result = parse_spec(model, body.get("spec"))
    if isinstance(result, SpecError):
        return None
    if tenancy.refusal(result, body.meta.get("namespace") or "", settings) is not None:
        return None
    return result


async def repeat_in_pool(
    pool: Executor,
    work: Callable[[], float | None],
    stopped: kopf.DaemonStopped,
    wakeup: asyncio.Event,
    *,
    finished: tuple[type[BaseException], ...],
    on_error: Callable[[Exception], float],
) -> None:
    """A daemon's loop: run the blocking `work` in `pool` (never in kopf's handler threads),
    then sleep the seconds it returns, or until `wakeup` is set, and again, until it returns
    None, raises one of `finished`, or the daemon is stopped (which does not wait for a run
    in progress: the caller halts it). Any other error is `on_error`'s: it returns the delay
    before the next try."""
    loop = asyncio.get_running_loop()
    stop_task: asyncio.Future[Any] = asyncio.create_task(_until_stopped(stopped))
    try:
        while not stopped:
            wakeup.clear()
            run: asyncio.Future[float | None] = loop.run_in_executor(pool, work)
            await asyncio.wait({run, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if stopped:
                return
            try:
                delay = run.result()
            except finished:
                return
            except Exception as error:
                delay = on_error(error)
            if delay is None:
                return
            wake_task: asyncio.Future[Any] = asyncio.create_task(wakeup.wait())
            await asyncio.wait(
                {wake_task, stop_task}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
            )
            wake_task.cancel()
    finally:
        stop_task.cancel()


async def _until_stopped(stopped: kopf.DaemonStopped) -> None:
    await stopped.wait()
