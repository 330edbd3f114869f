"""job: create a Job from the step's template and wait for it, through a `JobLauncher` the
operator implements. The Job's name is derived from plan, transition and step, so a resumed
step finds the Job it created before instead of starting a second one."""

from __future__ import annotations

import hashlib
import re
import time

from aegis.api.failoverplan import JobStep
from aegis.steps.base import JobLauncher, StepContext, StepResult, backoff


def job_name(plan: str, transition_id: str | None, step: str) -> str:
    """A DNS-label name (≤ 63) unique per plan, transition and step."""
    digest = hashlib.sha256(f"{plan}/{transition_id}/{step}".encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]", "-", f"{plan}-{step}".lower())[: 63 - 9].strip("-")
    return f"{stem}-{digest}"


def run_job(step: JobStep, ctx: StepContext, jobs: JobLauncher | None) -> StepResult:
    if jobs is None:
        return StepResult(False, "job: no Job launcher was given")
    name = job_name(ctx.plan, ctx.transition.id, ctx.step)
    outputs = {"jobName": name}
    try:
        jobs.ensure_job(ctx.namespace, name, step.template)
        delay = 0.2
        while True:
            state = jobs.job_state(ctx.namespace, name)
            if state.phase == "Succeeded":
                return StepResult(True, f"Job {name} succeeded", outputs)
            if state.phase == "Failed":
                return StepResult(False, f"Job {name} failed: {state.message}", outputs)
            remaining = ctx.remaining()
            if remaining <= 0:
                return StepResult(False, f"Job {name} still running at timeoutSeconds", outputs)
            time.sleep(min(delay, remaining))
            delay = backoff(delay, cap=5.0)
    except Exception as exc:  # an executor reports, it never raises
        return StepResult(False, f"Job {name}: {type(exc).__name__}: {exc}", outputs)
