"""Step executors of FailoverPlan procedures, and the runner that drives them.

Every executor is a sync function `(spec, StepContext, port) -> StepResult(ok, message,
outputs)` bounded by `ctx.deadline`, idempotent (it may run again after an operator
restart), and never raises:

- `run_postgres_promote` (steps.postgres): fence the old primary (best effort), measure the
  standby's replay lag (outputs lagBytes/lagSeconds), pg_promote(), verify writes;
- `run_route53` / `run_route53_restore` (steps.route53): UPSERT + INSYNC, previous record in
  outputs["previous"] saved before the change; failback puts it back;
- `run_webhook` (steps.webhook), `run_scale` (steps.scale, through `WorkloadScaler`),
  `run_job` (steps.job, through `JobLauncher`).

`run_procedure` (steps.runner) drives a whole transition; the pure ordering rules it follows
live in `aegis.reconcilers.failover`.
"""

from aegis.k8s.jobs import JobState
from aegis.steps.base import (
    JobLauncher,
    StepContext,
    StepPorts,
    StepResult,
    WorkloadScaler,
)
from aegis.steps.runner import execute, run_procedure

__all__ = [
    "JobLauncher",
    "JobState",
    "StepContext",
    "StepPorts",
    "StepResult",
    "WorkloadScaler",
    "execute",
    "run_procedure",
]
