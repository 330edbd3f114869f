"""Restore (`rst`): put one RecoveryPoint back into a database."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from aegis.api.checks import CheckResult, VerifyCheck
from aegis.api.common import (
    BUCKET_PATTERN,
    ApiModel,
    Argv,
    Condition,
    Display,
    HasOneOf,
    JobOptions,
    LocalObjectRef,
    PostgresTarget,
    RedisTarget,
    SecretEnvVar,
    StatusModel,
    cel,
    exactly_one,
    one_of_rule,
)
from aegis.api.recoverypoint import IMMUTABLE_SPEC


class PostgresRestoreTarget(PostgresTarget):
    """A PostgreSQL database to restore into."""

    create_database: bool = False
    """Create the database when it does not exist."""
    clean: bool = False
    """Drop the restored objects before recreating them (pg_restore --clean --if-exists);
    needs allowOverwrite."""


class CommandRestoreTarget(ApiModel):
    """Restore a point of a `command` source by running a restore command with the
    decrypted dump on stdin. Fields left out come from the policy's spec.source.command."""

    restore: Argv | None = None
    """The restore command, reading the dump on stdin; absent uses the policy's
    spec.source.command.restore. E.g. `[mariadb, -h, db.shop.svc, -u, restore, shop_copy]`."""
    empty_check: Argv | None = None
    """A command printing the number of objects in the target (last line of stdout, an
    integer; 0 means empty), run before anything is written; a non-empty target is refused
    without allowOverwrite. Absent uses the policy's spec.source.command.emptyCheck; with
    neither, the Restore needs allowOverwrite."""
    env: Annotated[list[SecretEnvVar], Field(max_length=32)] | None = None
    """Environment of the restore, emptyCheck and check commands, values from Secret keys;
    absent uses the policy's spec.source.command.env."""


class RestoreTarget(HasOneOf):
    """Exactly one target."""

    ONE_OF = ("postgres", "redis", "command")

    postgres: PostgresRestoreTarget | None = None
    """A PostgreSQL database."""
    redis: RedisTarget | None = None
    """A Redis server; keys are replayed online with their TTLs."""
    command: CommandRestoreTarget | None = None
    """A restore command (points of a `command` source)."""


class RestoreSource(ApiModel):
    """Where the payload is read from; absent reads the policy's primary storage."""

    copy_: Annotated[str, Field(alias="copy", min_length=3, max_length=63, pattern=BUCKET_PATTERN)]
    """Read the point's copy in this bucket (the `bucket` of one of the policy's
    spec.copies) instead of the primary storage, e.g. when the primary region is down. The
    copy must be Completed in the point's status.copies."""


class RestoreSpec(ApiModel):
    """What to restore, where to, and how to prove it worked. Immutable."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            IMMUTABLE_SPEC,
            one_of_rule(("recoveryPointRef", "policyRef"), "RestoreSpec"),
        )
    )

    recovery_point_ref: LocalObjectRef | None = None
    """The RecoveryPoint to restore."""
    policy_ref: LocalObjectRef | None = None
    """Restore the newest Completed point of this BackupPolicy, preferring a Verified one."""
    source: RestoreSource | None = None
    """Read from a copy rather than the primary storage (source.copy)."""
    target: RestoreTarget
    """Where to restore."""
    allow_overwrite: bool = False
    """Allow restoring into a non-empty target. Without it a non-empty target is refused and
    left untouched."""
    verify: list[VerifyCheck] | None = None
    """Checks run after the restore; any failure fails the Restore."""
    job: JobOptions | None = None
    """Options of the restore Job."""

    @model_validator(mode="after")
    def _one_point(self) -> RestoreSpec:
        exactly_one(self, ("recovery_point_ref", "policy_ref"), "recoveryPointRef")
        if (
            self.target.postgres is not None
            and self.target.postgres.clean
            and not self.allow_overwrite
        ):
            raise ValueError("target.postgres.clean: needs allowOverwrite: true")
        return self


class RestoreStatus(StatusModel):
    """Observed state of a Restore."""

    conditions: list[Condition] | None = None
    """Accepted, Complete/Failed."""
    observed_generation: int | None = None
    """The spec generation last processed."""
    phase: Literal["Pending", "Running", "Completed", "Failed"] | None = None
    """Summary for printer columns; conditions are authoritative."""
    recovery_point: str | None = None
    """The RecoveryPoint resolved and restored."""
    job_name: str | None = None
    """The restore Job."""
    start_time: dt.datetime | None = None
    """When the restore started."""
    completion_time: dt.datetime | None = None
    """When the restore ended."""
    duration_seconds: float | None = None
    """Measured duration of the restore."""
    restored_bytes: int | None = None
    """Logical bytes restored."""
    display: Display | None = None
    """durationSeconds and restoredBytes as people read them."""
    checks: list[CheckResult] | None = None
    """Results of the verification checks."""
    message: str | None = None
    """Human-readable summary, or the failure reason."""
