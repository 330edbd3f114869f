"""BackupPolicy (`bp`): what to back up, when, where, how, for how long, and the RPO promise."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Literal

from croniter import croniter
from pydantic import AfterValidator, ConfigDict, Field, model_validator

from aegis.api.common import (
    MAX_SECONDS,
    ApiModel,
    Argv,
    Condition,
    Display,
    HasOneOf,
    JobOptions,
    LocalObjectRef,
    NonNegativeInt,
    PositiveSeconds,
    PostgresTarget,
    RedisTarget,
    S3Location,
    SecretEnvVar,
    SecretRef,
    StatusModel,
    cel,
)

# Five whitespace-separated fields; the full check is croniter's, in the model.
CRON_SHAPE = r"^\S+(\s+\S+){4}$"


def check_cron(value: str) -> str:
    if not croniter.is_valid(value) or len(value.split()) != 5:
        raise ValueError(
            f"{value!r} is not a valid 5-field cron expression "
            "(minute hour day-of-month month day-of-week), e.g. '0 */6 * * *'"
        )
    return value


def check_time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone name, e.g. 'UTC' or 'Europe/Berlin'"
        ) from None
    return value


CronSchedule = Annotated[str, Field(pattern=CRON_SHAPE, max_length=128), AfterValidator(check_cron)]
TimeZoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check_time_zone)]


class PostgresDumpOptions(ApiModel):
    """Which parts of the database go into the dump."""

    schemas: list[str] | None = None
    """Dump only these schemas (pg_dump --schema)."""
    exclude_tables: list[str] | None = None
    """Leave out these tables entirely (pg_dump --exclude-table)."""
    exclude_table_data: list[str] | None = None
    """Keep the definition but not the rows of these tables (pg_dump --exclude-table-data)."""


class PostgresSource(PostgresTarget):
    """A PostgreSQL database to back up with pg_dump."""

    dump_options: PostgresDumpOptions | None = None
    """Which parts of the database go into the dump."""


BGSAVE_NEEDS_VOLUME = {
    "rule": "!has(self.method) || self.method != 'Bgsave' || has(self.rdbVolume)",
    "message": "rdbVolume: method Bgsave reads dump.rdb from the server's volume: name its "
    "PersistentVolumeClaim in rdbVolume, or use method Sync",
}


class RedisSource(RedisTarget):
    """A Redis server to back up as an RDB snapshot."""

    model_config = ConfigDict(json_schema_extra=cel(BGSAVE_NEEDS_VOLUME))

    method: Literal["Sync", "Bgsave"] = "Sync"
    """Sync: take the snapshot a replica would receive, over the network. Bgsave: run BGSAVE
    and read dump.rdb from `rdbVolume` (for servers that forbid SYNC)."""
    rdb_volume: LocalObjectRef | None = None
    """PersistentVolumeClaim holding the server's dump.rdb at its root, mounted read-only
    into the backup Job at /var/lib/aegis/rdb; required by Bgsave. A ReadWriteOnce claim
    needs the Job on the server's node (spec.job.nodeSelector)."""

    @model_validator(mode="after")
    def _bgsave_volume(self) -> RedisSource:
        if self.method == "Bgsave" and self.rdb_volume is None:
            raise ValueError(BGSAVE_NEEDS_VOLUME["message"])
        return self


class CommandSource(ApiModel):
    """Any database with a dump tool that writes to stdout (MariaDB/MySQL, MongoDB, Neo4j,
    etcd, ...): the agent runs `dump` as a child process in its own container and sends its
    stdout through the same pipeline as pg_dump's (compress, encrypt, hash, multipart
    upload, manifest). So the Job's image must hold both the agent and the tool: build one
    `FROM` the agent image (docs/command-source.md)."""

    image: str | None = None
    """Image of the backup and restore Jobs (the agent plus your tools); absent uses
    spec.job.image, else the operator's agent image. Refused (ImageNotAllowed) unless it is
    the agent image or listed in the operator's AEGIS_ALLOWED_JOB_IMAGES."""
    dump: Argv
    """The dump command as an argument vector; it must write the whole backup to stdout and
    exit 0 (anything else fails the backup). E.g. `[mariadb-dump, --single-transaction,
    -h, db.shop.svc, -u, backup, shop]`."""
    restore: Argv | None = None
    """The matching restore command, which reads the dump on stdin: the default of a
    Restore's `target.command.restore`."""
    empty_check: Argv | None = None
    """A command that prints the number of objects in the restore target (last line of
    stdout, an integer; 0 means empty) and exits 0: the default of a Restore's
    `target.command.emptyCheck`. Without one, a Restore needs allowOverwrite."""
    env: Annotated[list[SecretEnvVar], Field(max_length=32)] | None = None
    """Environment of the commands, each value from a Secret key (e.g. MYSQL_PWD). Nothing
    else of the Job's environment reaches them: not the bucket credentials, not the keys."""
    database: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """What is dumped, as shown in RecoveryPoint status.source.database (a label only)."""


class BackupSource(HasOneOf):
    """Exactly one data source."""

    ONE_OF = ("postgres", "redis", "command")

    postgres: PostgresSource | None = None
    """A PostgreSQL database."""
    redis: RedisSource | None = None
    """A Redis server."""
    command: CommandSource | None = None
    """Any database, through a dump command whose stdout is the backup."""


# Key id (uuid or multi-Region mrk-), key ARN, alias ARN, or alias/name.
KMS_KEY_ID = (
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/[-a-zA-Z0-9]+|alias/[-a-zA-Z0-9/_]+)"
    r"|alias/[-a-zA-Z0-9/_]+|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)


class KmsKey(ApiModel):
    """An AWS KMS key that wraps each backup's data key (KMS Encrypt with an encryption
    context naming the point), so the backups open without this cluster's Secrets."""

    key_id: Annotated[str, Field(max_length=2048, pattern=KMS_KEY_ID)]
    """Key id, key ARN or alias ARN (`arn:aws:kms:eu-west-1:111122223333:alias/aegis`). An
    alias is resolved at each backup; the manifest records the key ARN it named."""
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$")] | None = None
    """Region of the key; absent: the ARN's region, else the Job's AWS_REGION."""
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """KMS endpoint URL (VPC endpoint, or an emulator in tests); absent means AWS. The same
    address rules as the S3 endpoint apply."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; absent uses the Job's
    ambient credentials (IRSA web identity, instance profile)."""


ENCRYPTION_RULE = {
    "rule": "has(self.keySecretRef) || (has(self.kmsKeys) && size(self.kmsKeys) > 0)",
    "message": "encryption: set keySecretRef, kmsKeys, or both (at least one wrapping key)",
}


class Encryption(ApiModel):
    """Client-side encryption: every backup is encrypted before it leaves the Job, with a
    fresh data key wrapped once for each wrapping key (the Secret's newest key and every KMS
    key); any one wrap opens the backup."""

    model_config = ConfigDict(json_schema_extra=cel(ENCRYPTION_RULE))

    key_secret_ref: LocalObjectRef | None = None
    """Secret whose keys are key ids and whose values are 32-byte keys (raw, base64 or hex).
    The greatest key id (sorted as text) encrypts new backups; every key id decrypts. A
    Secret of this cluster is lost with it: add kmsKeys, or export the keys
    (`kubectl aegis keys export`) and keep them offline."""
    kms_keys: Annotated[list[KmsKey], Field(max_length=8)] | None = None
    """AWS KMS keys that also wrap each backup's data key. New keys apply to new backups;
    `kubectl aegis keys rewrap` adds one to existing backups."""

    @model_validator(mode="after")
    def _some_key(self) -> Encryption:
        if self.key_secret_ref is None and not self.kms_keys:
            raise ValueError(ENCRYPTION_RULE["message"])
        return self


class Retention(ApiModel):
    """Which recovery points to keep: the newest `keepLast`, plus grandfather-father-son
    buckets over the source time in the policy's time zone. The newest Completed and the
    newest Verified point are always kept."""

    keep_last: NonNegativeInt | None = None
    """Keep this many newest points."""
    keep_hourly: NonNegativeInt | None = None
    """Keep the newest point of each of this many most recent hours."""
    keep_daily: NonNegativeInt | None = None
    """Keep the newest point of each of this many most recent days."""
    keep_weekly: NonNegativeInt | None = None
    """Keep the newest point of each of this many most recent ISO weeks."""
    keep_monthly: NonNegativeInt | None = None
    """Keep the newest point of each of this many most recent months."""
    keep_yearly: NonNegativeInt | None = None
    """Keep the newest point of each of this many most recent years."""


class BackupObjectives(ApiModel):
    """What the team promises."""

    rpo_seconds: Annotated[int, Field(ge=60, le=MAX_SECONDS)]
    """The longest acceptable data-loss window: the age of the newest Completed point must
    stay below it. Drives the RPOMet condition and the AegisRPOBreached alert."""


def _same_place(a: str, b: str) -> str:
    return f"(has({a}) ? {a} : '') == (has({b}) ? {b} : '')"


COPY_NOT_PRIMARY = {
    "rule": "!has(self.copies) || self.copies.all(c, !(c.bucket == self.storage.bucket && "
    + _same_place("c.prefix", "self.storage.prefix")
    + " && "
    + _same_place("c.endpoint", "self.storage.endpoint")
    + "))",
    "message": "copies: a copy must not be the primary location (same bucket, prefix and "
    "endpoint as storage): it would copy each backup onto itself",
}


def check_copies(spec: BackupPolicySpec) -> BackupPolicySpec:
    """The CEL rule COPY_NOT_PRIMARY again, for servers that skip CEL."""
    primary = spec.storage
    for i, copy in enumerate(spec.copies or []):
        if (copy.bucket, copy.prefix, copy.endpoint) == (
            primary.bucket,
            primary.prefix,
            primary.endpoint,
        ):
            raise ValueError(f"copies[{i}]: {COPY_NOT_PRIMARY['message'].split(': ', 1)[1]}")
    return spec


class VerificationSchedule(ApiModel):
    """Periodic verification: a Job downloads, hashes and authenticates every chunk of the
    newest points, without restoring them."""

    schedule: CronSchedule
    """5-field cron expression, evaluated in the policy's `timeZone`."""
    newest: Annotated[int, Field(ge=1, le=100)] = 1
    """How many of the newest Completed points each run verifies."""


COMMAND_IMAGE_IS_JOB_IMAGE = {
    "rule": "!has(self.source.command) || !has(self.source.command.image) || !has(self.job) "
    "|| !has(self.job.image) || self.source.command.image == self.job.image",
    "message": "source.command.image: the dump runs in the Job's own container, so it and "
    "job.image name the same image; set one of them",
}


def check_command_image(spec: BackupPolicySpec) -> BackupPolicySpec:
    """The CEL rule COMMAND_IMAGE_IS_JOB_IMAGE again, for servers that skip CEL."""
    command = spec.source.command
    job_image = spec.job.image if spec.job else None
    if command and command.image and job_image and command.image != job_image:
        raise ValueError(COMMAND_IMAGE_IS_JOB_IMAGE["message"])
    return spec


class BackupPolicySpec(ApiModel):
    """What to back up, when, where, how and for how long."""

    model_config = ConfigDict(json_schema_extra=cel(COPY_NOT_PRIMARY, COMMAND_IMAGE_IS_JOB_IMAGE))

    schedule: CronSchedule
    """5-field cron expression, evaluated in `timeZone`."""
    time_zone: TimeZoneName = "UTC"
    """IANA time zone of the schedule, e.g. Europe/Berlin."""
    jitter_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    """Upper bound of a stable per-policy delay in [0, jitterSeconds) so that many
    policies on the same schedule do not start together."""
    suspend: bool = False
    """Stop scheduling new runs. Catalog sync and retention continue."""
    concurrency_policy: Literal["Forbid", "Replace", "Allow"] = "Forbid"
    """What to do when a run is due while the previous one is still running."""
    starting_deadline_seconds: PositiveSeconds | None = None
    """A run that could not start within this many seconds of its time is skipped and
    counted in status.missedRuns."""
    source: BackupSource
    """The database to back up."""
    storage: S3Location
    """Where backups are written."""
    copies: list[S3Location] | None = None
    """Further buckets or regions every backup is copied to."""
    encryption: Encryption
    """Encryption key Secret."""
    compression: Literal["Zstd", "Gzip", "None"] = "Zstd"
    """Compression of the payload before encryption."""
    retention: Retention | None = None
    """How many points to keep; absent keeps all."""
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    """When a user deletes a RecoveryPoint: Retain keeps the bucket objects, Delete removes
    them. Retention pruning always deletes (unless Object-Locked)."""
    objectives: BackupObjectives | None = None
    """The RPO the team promises."""
    job: JobOptions | None = None
    """Options of the backup Jobs."""
    verification: VerificationSchedule | None = None
    """Verify the newest points on a schedule (`kubectl aegis verify` runs it on demand)."""
    recovery_test_window_seconds: Annotated[int, Field(ge=3600, le=MAX_SECONDS)] = 604800
    """RecoveryTested is True while a DRDrill restored one of this policy's points and
    passed within this many seconds (default 7 days), False after."""

    _copies_not_primary = model_validator(mode="after")(check_copies)
    _command_image = model_validator(mode="after")(check_command_image)

    def job_image(self) -> str | None:
        """The image the policy's Jobs run, when it names one (else the agent image)."""
        if self.source.command is not None and self.source.command.image:
            return self.source.command.image
        return self.job.image if self.job else None


class PolicyDrill(StatusModel):
    """The latest finished drill run that restored one of the policy's points."""

    drill: str | None = None
    """The DRDrill."""
    time: dt.datetime | None = None
    """When the run ended."""
    result: Literal["Passed", "Failed"] | None = None
    """Its outcome."""
    reason: str | None = None
    """Why (the drill's LastDrillPassed reason)."""
    rto_seconds: float | None = None
    """Measured RTO of that run: the policy's proven time to recover."""
    rpo_seconds: float | None = None
    """Measured RPO of that run."""
    recovery_point: str | None = None
    """The point it restored."""
    display: Display | None = None
    """rtoSeconds and rpoSeconds as people read them."""
    last_passed_time: dt.datetime | None = None
    """When the latest passed drill run of the policy's points ended (kept when a later run
    fails): what RecoveryTested is derived from."""
    last_passed_drill: str | None = None
    """The DRDrill of that passed run."""


class BackupPolicyStatus(StatusModel):
    """Observed state of a BackupPolicy."""

    conditions: list[Condition] | None = None
    """Ready (the spec is valid and its references resolve), RPOMet and RecoveryTested
    (informational, like RPOMet: a drill passed within recoveryTestWindowSeconds)."""
    observed_generation: int | None = None
    """The spec generation last processed."""
    handled_until: dt.datetime | None = None
    """Every tick at or before this time has been handled (run, skipped or suspended): the
    scheduler's cursor, so a restart neither repeats nor forgets a tick."""
    last_schedule_time: dt.datetime | None = None
    """Scheduled time of the latest run."""
    next_schedule_time: dt.datetime | None = None
    """When the next run is due (jitter included)."""
    last_successful_time: dt.datetime | None = None
    """Completion time of the latest Completed point."""
    last_failure_time: dt.datetime | None = None
    """Completion time of the latest Failed point."""
    last_recovery_point: str | None = None
    """Name of the latest RecoveryPoint."""
    recovery_points: int | None = None
    """Number of RecoveryPoints of this policy."""
    missed_runs: int | None = None
    """Scheduled runs that did not happen: they could not start within
    startingDeadlineSeconds, a newer tick superseded them, or the policy was not Ready at
    the tick (a RunSkipped event names why)."""
    current_rpo_seconds: int | None = Field(default=None, alias="currentRPOSeconds")
    """Now minus the source time of the newest Completed point."""
    display: Display | None = None
    """currentRPOSeconds as people read it (`rpo`)."""
    last_drill: PolicyDrill | None = None
    """The latest finished drill of this policy's points (written by the DRDrill's run)."""
