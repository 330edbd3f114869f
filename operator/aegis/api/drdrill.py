"""DRDrill (`drill`): a rehearsal that measures RTO and RPO against objectives."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from aegis.api.backuppolicy import CronSchedule, TimeZoneName
from aegis.api.checks import CheckResult, VerifyCheck
from aegis.api.common import (
    ApiModel,
    Condition,
    Display,
    LocalObjectRef,
    PositiveSeconds,
    StatusModel,
    cel,
    exactly_one,
    one_of_rule,
)
from aegis.api.failoverplan import Route53Step, SiteStatus
from aegis.api.restore import RestoreTarget


class RestoreDrill(ApiModel):
    """Restore a point into a scratch (or given) database and verify it."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            one_of_rule(("policyRef", "recoveryPointRef"), "restore"),
        )
    )

    policy_ref: LocalObjectRef | None = None
    """Use the newest Completed point of this policy."""
    recovery_point_ref: LocalObjectRef | None = None
    """Use this point."""
    target: RestoreTarget | None = None
    """Where to restore; absent: a scratch database started inside the drill's Job."""
    verify: list[VerifyCheck] | None = None
    """Checks that must pass."""

    @model_validator(mode="after")
    def _one_point(self) -> RestoreDrill:
        exactly_one(self, ("policy_ref", "recovery_point_ref"))
        return self


class FailoverDrill(ApiModel):
    """Rehearse a FailoverPlan's procedure. DryRun changes nothing live: the plan's probes
    run now, every step's preconditions are checked against the real systems (standby in
    recovery and its lag, workloads scaled with a server-side dry run, webhooks called
    marked as a drill) and the Route53 change is made on `drillRecord` and removed again."""

    plan_ref: LocalObjectRef
    """The FailoverPlan, in the drill's namespace."""
    mode: Literal["DryRun", "Live"] = "DryRun"
    """DryRun: nothing live changes. Live: a real failover through the plan's manual trigger
    (the plan's own steps, e.g. a postgresSwitchover), its write outage and data lost read
    from the plan's transition, then a failback through the plan's failback trigger. A plan
    that needs approval (mode Manual, or approval.required) waits for the drill's
    dr.aegis.dev/approve annotation with the run's status.lastRun.approvalToken."""
    approval_timeout_seconds: PositiveSeconds = 900
    """Live: how long a run waits for approval before it fails (ApprovalTimeout)."""
    failback_ready_timeout_seconds: PositiveSeconds = 900
    """Live: after the failover, how long a run waits for the plan to be able to fail back
    (a switchover failback needs the old primary re-attached as a caught-up replica of the
    new one, which your tooling does) before it fails (FailbackFailed), leaving the plan
    failed over and saying so."""
    drill_record: Route53Step | None = None
    """A Route53 record changed instead of the live one (UPSERT, INSYNC, then put back as it
    was: deleted when it did not exist). Use a name nothing resolves, e.g.
    drill.db.example.com. Absent: the plan's route53 steps are reported as not exercised."""


class DrillObjectives(ApiModel):
    """What the team promises."""

    rto_seconds: PositiveSeconds | None = None
    """Longest acceptable time to recover."""
    rpo_seconds: PositiveSeconds | None = None
    """Longest acceptable data-loss window."""


class DRDrillSpec(ApiModel):
    """What to rehearse and when."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "self.type != 'Restore' || (has(self.restore) && !has(self.failover))",
                "message": "type Restore needs restore (and no failover)",
            },
            {
                "rule": "self.type != 'Failover' || (has(self.failover) && !has(self.restore))",
                "message": "type Failover needs failover (and no restore)",
            },
        )
    )

    schedule: CronSchedule | None = None
    """5-field cron; absent runs the drill once, now."""
    time_zone: TimeZoneName = "UTC"
    """IANA time zone of the schedule."""
    type: Literal["Restore", "Failover"]
    """What to rehearse."""
    restore: RestoreDrill | None = None
    """Restore drill settings."""
    failover: FailoverDrill | None = None
    """Failover drill settings."""
    objectives: DrillObjectives | None = None
    """RTO and RPO to meet."""
    history_limit: Annotated[int, Field(ge=0, le=100)] = 10
    """Runs kept in status.history."""

    @model_validator(mode="after")
    def _settings_match_type(self) -> DRDrillSpec:
        wanted, other = (
            ("restore", "failover") if self.type == "Restore" else ("failover", "restore")
        )
        if getattr(self, wanted) is None:
            raise ValueError(f"{wanted}: type {self.type} needs {wanted} settings")
        if getattr(self, other) is not None:
            raise ValueError(f"{other}: not allowed with type {self.type}")
        return self


class DrillPhases(StatusModel):
    """Where a run's time went, measured (seconds)."""

    queued_seconds: float | None = None
    """From the run's start (the operator decided to run) to the agent starting in its Job:
    Job creation, scheduling, image pull."""
    scratch_seconds: float | None = None
    """Starting the scratch server (0 with a target)."""
    download_authenticate_seconds: float | None = None
    """The verification pass: the payload downloaded, hashed and every chunk authenticated."""
    restore_seconds: float | None = None
    """The restore pass into the scratch server or target."""
    checks_seconds: float | None = None
    """Running the checks."""
    detection_seconds: float | None = None
    """Failover drill: the time the plan needs to call its primary down, periodSeconds x
    failureThreshold of the primary site (the first part of the predicted RTO)."""
    steps_seconds: float | None = None
    """Failover drill: the measured durations of the exercised steps along the procedure's
    longest dependency chain (the second part of the predicted RTO)."""
    approval_seconds: float | None = None
    """Live failover drill: waiting for approval (0 for an Automatic plan)."""
    failover_seconds: float | None = None
    """Live failover drill: from the failover trigger to the plan's failover transition
    settled."""
    failback_ready_seconds: float | None = None
    """Live failover drill: waiting until the plan could fail back (old primary re-attached
    and caught up)."""
    failback_seconds: float | None = None
    """Live failover drill: from the failback trigger to the failback transition settled."""


class DrillStep(StatusModel):
    """One step of a failover drill: what was exercised, and how long it took."""

    name: str
    """The plan's step name."""
    action: str
    """The step's kind: postgresPromote, postgresSwitchover, redisPromote, redisSwitchover,
    scale, route53, webhook, job."""
    result: Literal["Passed", "Failed", "NotExercised"]
    """Passed: its preconditions held and what a drill may do succeeded; NotExercised:
    nothing could be rehearsed without changing something live (the message says why)."""
    seconds: float | None = None
    """Measured duration of what the drill did (counted in the predicted RTO)."""
    message: str | None = None
    """What was checked or done, or why it failed or was not exercised."""
    outputs: dict[str, str] | None = None
    """Measurements and records (lag, Route53 change ids, HTTP status, ...)."""


class DrillRun(StatusModel):
    """One run of a drill, measured."""

    start_time: dt.datetime | None = None
    """When the run started: the operator decided to run it (the RTO clock starts here)."""
    scheduled_time: dt.datetime | None = None
    """The schedule tick the run belongs to (absent for a run on request)."""
    trigger: Literal["Scheduled", "Once", "Manual"] | None = None
    """Why it ran: a schedule tick, a drill without schedule, `kubectl aegis drill run`."""
    completion_time: dt.datetime | None = None
    """When the run ended."""
    result: Literal["Running", "Passed", "Failed"] | None = None
    """Outcome."""
    reason: str | None = None
    """CamelCase reason of the outcome (LastDrillPassed's reason)."""
    job_name: str | None = None
    """The drill's Job."""
    rto_seconds: float | None = None
    """Restore drill: measured time to recover, run start to the checks passing. Failover
    drill (rtoPredicted): detection plus the measured durations of the exercised steps."""
    rto_predicted: bool | None = None
    """True when rtoSeconds is a prediction (a failover DryRun), not a measured recovery."""
    rpo_seconds: float | None = None
    """Measured data-loss window: run start - source time of the restored point."""
    display: Display | None = None
    """rtoSeconds and rpoSeconds as people read them."""
    phases: DrillPhases | None = None
    """RTO broken down by phase."""
    recovery_point: str | None = None
    """The point restored."""
    source_time: dt.datetime | None = None
    """Source time of the restored point."""
    checks: list[CheckResult] | None = None
    """Check results."""
    plan: str | None = None
    """Failover drill: the FailoverPlan rehearsed."""
    sites: dict[str, SiteStatus] | None = None
    """Failover drill: the plan's probes evaluated at the run (`primary`, `secondary`)."""
    steps: list[DrillStep] | None = None
    """Failover drill: each step of the plan's procedure, exercised or not."""
    data_lost_bytes: int | None = None
    """Live failover drill: bytes of the old primary's WAL (or Redis stream) the new primary
    lacked when promoted, as the plan's switchover/promote step measured them (0 for a
    planned switchover); the larger of failover and failback."""
    write_outage_seconds: float | None = None
    """Live failover drill: the failover's write outage (also rtoSeconds); see
    writeOutageSource."""
    write_outage_source: str | None = None
    """Live failover drill: how the write outage was measured: `switchoverStep` (the plan's
    switchover step: fence of the old primary to the new one verified writable) or
    `promoteStepTimings` (the promote step's start, when it fences, to its completion, when
    the promoted server took a write: an upper bound)."""
    approval_token: str | None = None
    """Live failover drill awaiting approval: annotate the drill dr.aegis.dev/approve with
    this value to let it fail over."""
    transitions: list[str] | None = None
    """Live failover drill: the ids of the plan's transitions it caused."""
    evidence: str | None = None
    """s3:// URL of the run's evidence record (JSON) next to the policy's points."""
    message: str | None = None
    """Summary or failure reason."""


class DRDrillStatus(StatusModel):
    """Observed state of a DRDrill."""

    conditions: list[Condition] | None = None
    """Ready (spec valid and the drill type runs), LastDrillPassed (the last finished run)."""
    observed_generation: int | None = None
    """The spec generation last processed."""
    last_run: DrillRun | None = None
    """The latest run (Running while it runs)."""
    history: list[DrillRun] | None = None
    """Finished runs, newest first, at most spec.historyLimit."""
    next_run_time: dt.datetime | None = None
    """When the next scheduled run is due."""
    last_schedule_time: dt.datetime | None = None
    """Every schedule tick at or before this time has been handled (run or missed)."""
    missed_runs: int | None = None
    """Ticks that could not run (an earlier run still running, or the operator down)."""
    last_run_request: str | None = None
    """The last `dr.aegis.dev/run-now` annotation value acted on."""
