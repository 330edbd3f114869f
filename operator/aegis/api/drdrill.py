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
    LocalObjectRef,
    PositiveSeconds,
    StatusModel,
    cel,
    exactly_one,
    one_of_rule,
)
from aegis.api.failoverplan import Route53Step
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
    """Run a FailoverPlan's procedure in drill mode."""

    plan_ref: LocalObjectRef
    """The FailoverPlan."""
    drill_record: Route53Step | None = None
    """A Route53 record flipped instead of the live one."""


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


class DrillRun(StatusModel):
    """One run of a drill, measured."""

    start_time: dt.datetime | None = None
    """When the run started."""
    completion_time: dt.datetime | None = None
    """When the run ended."""
    result: Literal["Running", "Passed", "Failed"] | None = None
    """Outcome."""
    rto_seconds: float | None = None
    """Measured time to recover."""
    rpo_seconds: float | None = None
    """Measured data-loss window: run start - source time of the restored point."""
    recovery_point: str | None = None
    """The point restored."""
    checks: list[CheckResult] | None = None
    """Check results."""
    message: str | None = None
    """Summary or failure reason."""


class DRDrillStatus(StatusModel):
    """Observed state of a DRDrill."""

    conditions: list[Condition] | None = None
    """Ready, LastDrillPassed."""
    observed_generation: int | None = None
    """The spec generation last processed."""
    last_run: DrillRun | None = None
    """The latest run."""
    history: list[DrillRun] | None = None
    """Earlier runs, newest first."""
    next_run_time: dt.datetime | None = None
    """When the next scheduled run is due."""
