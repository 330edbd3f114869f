"""Runs a transition's steps to the end, persisting status around every step.

    final = run_procedure(planned, transition, plan=name, namespace=ns,
                          from_site=spec.primary.name, to_site=spec.secondary.name,
                          ports=StepPorts(secrets, scaler, jobs), save=patch_status)

Guarantees (docs/failover.md):
- `save(transition)` is called with the step marked Running (start time, attempt) BEFORE the
  step runs, and again with its result after: a crash in between leaves the step Running.
- On entry, steps marked Running were interrupted (the caller runs one runner per plan):
  they run again — every executor is idempotent — unless they were already started
  `max_attempts` times, in which case they fail without being started.
- Succeeded steps never run again; a failed step without continueOnError stops the
  procedure (steps already running finish; the rest are Skipped).
- Steps whose dependencies are met start together (a wave), each bounded by its
  timeoutSeconds; a step that does not return in time is abandoned and reported failed.
If `save` raises, the runner stops and the exception propagates: what was saved is the
truth, and a later call resumes from it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial

from aegis.api.failoverplan import Transition
from aegis.reconcilers.failover import (
    PlannedStep,
    RestoreRoute53,
    exhausted,
    finish_transition,
    mark_finished,
    mark_running,
    mark_skipped,
    progress,
    save_outputs,
    step_status,
)
from aegis.steps.base import StepContext, StepPorts, StepResult
from aegis.steps.job import run_job
from aegis.steps.postgres import run_postgres_promote, run_postgres_switchover
from aegis.steps.redis import run_redis_promote, run_redis_switchover
from aegis.steps.route53 import run_route53, run_route53_restore
from aegis.steps.scale import run_scale
from aegis.steps.webhook import run_webhook

# Beyond its deadline, a step gets this long to report its own timeout before it is abandoned.
GRACE_SECONDS = 2.0

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def execute(planned: PlannedStep, ctx: StepContext, ports: StepPorts) -> StepResult:
    """Run one step with the executor its kind needs; never raises."""
    action = planned.action
    try:
        if isinstance(action, RestoreRoute53):
            return run_route53_restore(action, ctx, ports)
        if action.postgres_promote is not None:
            return run_postgres_promote(action.postgres_promote, ctx, ports.secrets)
        if action.postgres_switchover is not None:
            return run_postgres_switchover(action.postgres_switchover, ctx, ports.secrets)
        if action.redis_promote is not None:
            return run_redis_promote(action.redis_promote, ctx, ports.secrets)
        if action.redis_switchover is not None:
            return run_redis_switchover(action.redis_switchover, ctx, ports.secrets)
        if action.route53 is not None:
            return run_route53(action.route53, ctx, ports)
        if action.webhook is not None:
            return run_webhook(action.webhook, ctx, ports.secrets, ports.endpoints)
        if action.scale is not None:
            return run_scale(action.scale, ctx, ports.scaler)
        if action.job is not None:
            return run_job(action.job, ctx, ports.jobs)
    except Exception as exc:  # executors report their own errors; this is a last resort
        return StepResult(False, f"{type(exc).__name__} in step {planned.name}")
    return StepResult(False, f"step {planned.name} sets none of postgresPromote, "
                      "postgresSwitchover, redisPromote, redisSwitchover, scale, route53, "
                      "webhook, job")


class _Board:
    """The transition being driven: every change is applied under a lock and saved."""

    def __init__(self, transition: Transition, save: Callable[[Transition], None]) -> None:
        self._transition = transition
        self._save = save
        self._lock = threading.Lock()

    @property
    def transition(self) -> Transition:
        with self._lock:
            return self._transition

    def update(self, change: Callable[[Transition], Transition]) -> Transition:
        with self._lock:
            changed = change(self._transition)
            self._save(changed)
            self._transition = changed
            return changed


def _skip_reason(failed: Sequence[str], planned: Sequence[PlannedStep]) -> str:
    stoppers = [p.name for p in planned if p.name in failed and not p.continue_on_error]
    if stoppers:
        return f"not run: step {stoppers[0]} failed"
    return "not run: a step it depends on did not run"


def run_procedure(
    planned: Sequence[PlannedStep],
    transition: Transition,
    *,
    plan: str,
    namespace: str,
    from_site: str,
    to_site: str,
    ports: StepPorts,
    save: Callable[[Transition], None],
    clock: Clock = utcnow,
    max_lag_bytes: int | None = None,
) -> Transition:
    """Drive `transition` until every step is settled; returns it finished."""
    board = _Board(transition, save)
    by_name = {p.name: p for p in planned}
    for name in progress(planned, transition.steps).running:
        if exhausted(board.transition, by_name[name]):
            count = step_status(board.transition, name).attempts
            board.update(partial(
                mark_finished, name=name, ok=False, now=clock(),
                message=f"interrupted {count} times while running; not started again: check "
                "the operator's logs, then retry the transition"))
    while True:
        now = progress(planned, board.transition.steps)
        if now.skip:
            why = _skip_reason(now.failed, planned)
            board.update(partial(mark_skipped, names=now.skip, why=why))
            continue
        wave = [by_name[n] for n in (*now.running, *now.runnable)]
        if not wave:
            break
        board.update(partial(_all_running, wave=wave, now=clock()))
        for name, result in _run_wave(wave, board, plan, namespace, from_site, to_site, ports,
                                      max_lag_bytes):
            board.update(partial(
                mark_finished, name=name, ok=result.ok, message=result.message, now=clock(),
                outputs=result.outputs))
    final = progress(planned, board.transition.steps)
    return board.update(partial(finish_transition, result=final.result or "Failed", now=clock()))


def _all_running(transition: Transition, wave: Sequence[PlannedStep], now: dt.datetime
                 ) -> Transition:
    for step in wave:
        transition = mark_running(transition, step.name, now)
    return transition


def _run_wave(
    wave: Sequence[PlannedStep],
    board: _Board,
    plan: str,
    namespace: str,
    from_site: str,
    to_site: str,
    ports: StepPorts,
    max_lag_bytes: int | None = None,
) -> list[tuple[str, StepResult]]:
    snapshot = board.transition
    started = time.monotonic()
    contexts = []
    for step in wave:
        status = step_status(snapshot, step.name)

        def persist(outputs: Mapping[str, str], name: str = step.name) -> None:
            board.update(partial(save_outputs, name=name, outputs=outputs))

        contexts.append(StepContext(
            plan=plan, namespace=namespace, step=step.name, transition=snapshot,
            from_site=from_site, to_site=to_site, deadline=started + step.timeout_seconds,
            prior_outputs=dict(status.outputs or {}), save_outputs=persist,
            attempt=status.attempts or 1, max_lag_bytes=max_lag_bytes,
        ))
    pool = ThreadPoolExecutor(len(wave), thread_name_prefix="aegis-step")
    try:
        futures = [pool.submit(execute, step, ctx, ports) for step, ctx in zip(wave, contexts,
                                                                               strict=True)]
        results = []
        for step, ctx, future in zip(wave, contexts, futures, strict=True):
            try:
                result = future.result(timeout=max(0.0, ctx.remaining() + GRACE_SECONDS))
            except FutureTimeout:
                result = StepResult(False, f"no result within timeoutSeconds="
                                    f"{step.timeout_seconds}; abandoned")
            results.append((step.name, result))
        return results
    finally:
        pool.shutdown(wait=False)
