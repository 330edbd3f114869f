"""FailoverPlan (`fp`): health of two sites, when to fail over, and the steps that do it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from aegis.agent.wire import Port
from aegis.api.common import (
    MAX_COUNT,
    ApiModel,
    Condition,
    HasOneOf,
    NonNegativeInt,
    NonNegativeSeconds,
    ObjectName,
    PositiveSeconds,
    PostgresTarget,
    RedisTarget,
    SecretRef,
    StatusModel,
    cel,
)

StepName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


class HttpCheck(ApiModel):
    """An HTTP(S) GET whose status must be one of `expectStatus`."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    """URL to GET. Link-local and cloud metadata addresses are refused, loopback unless the
    operator allows it."""
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = [200]
    """Status codes counted as healthy."""
    headers_secret_ref: SecretRef | None = None
    """Secret whose keys and values are sent as request headers (e.g. Authorization)."""
    insecure_skip_verify: bool = False
    """Skip TLS certificate verification."""


class TcpCheck(ApiModel):
    """A TCP connect."""

    host: Annotated[str, Field(min_length=1)]
    """Host to connect to."""
    port: Port
    """Port to connect to."""


class PostgresCheck(PostgresTarget):
    """Connect and run SELECT 1; with `writable`, also require pg_is_in_recovery() = false."""

    writable: bool = False
    """Expect a primary that takes writes, not a standby."""


class RedisCheck(RedisTarget):
    """PING, and optionally the replication role."""

    role: Literal["master", "slave"] | None = None
    """Expected replication role (INFO replication)."""


class WorkloadCheck(ApiModel):
    """Ready replicas of a Deployment or StatefulSet, read through the Kubernetes API."""

    kind: Literal["Deployment", "StatefulSet"]
    """Kind of workload."""
    name: ObjectName
    """Name of the workload."""
    namespace: ObjectName | None = None
    """Namespace; absent is the plan's namespace. Another namespace is refused
    (NamespaceNotAllowed) unless the operator's AEGIS_REACHABLE_NAMESPACES lists it."""
    min_ready: NonNegativeInt = 1
    """Ready replicas needed to count as healthy."""


class HealthCheck(HasOneOf):
    """One health check of a site."""

    ONE_OF = ("http", "tcp", "postgres", "redis", "workload")

    name: StepName
    """Name of the check, shown in status."""
    weight: Annotated[int, Field(ge=1, le=100)] = 1
    """Weight of this check; the site is down when the failed weight reaches downWeight."""
    http: HttpCheck | None = None
    """HTTP check."""
    tcp: TcpCheck | None = None
    """TCP check."""
    postgres: PostgresCheck | None = None
    """PostgreSQL check."""
    redis: RedisCheck | None = None
    """Redis check."""
    workload: WorkloadCheck | None = None
    """Workload readiness check."""


class Site(ApiModel):
    """A site and how its health is judged, with Kubernetes probe semantics."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    """Name of the site, e.g. eu-west-1."""
    checks: Annotated[list[HealthCheck], Field(min_length=1)]
    """Health checks; all are probed every periodSeconds."""
    period_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    """Seconds between probes."""
    timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 3
    """Seconds after which a probe counts as failed."""
    failure_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    """Consecutive failed probes after which the site is down."""
    success_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    """Consecutive good probes after which a down site is up again."""
    down_weight: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    """A probe fails when the weight of failed checks reaches this; absent: any failed check."""


class PostgresPromoteStep(ApiModel):
    """Promote a streaming standby with pg_promote(), then check it takes writes."""

    target: PostgresTarget
    """The standby to promote."""
    fence_primary: PostgresTarget | None = None
    """The old primary: if reachable, set default_transaction_read_only=on and reload, so it
    takes no writes if it comes back (best effort)."""


class PostgresSwitchoverStep(ApiModel):
    """A planned switchover with zero data loss (the failback procedure): check that
    `target` is a standby streaming from `primary` on its timeline and caught up within the
    plan's lag limits; fence `primary` (read-only, client sessions ended); wait until
    `target` has replayed the fenced primary's final WAL position; promote `target` and check
    it takes writes. `primary` stays fenced. A failed precondition refuses the step before
    anything changes; a catch-up that does not finish in time unfences `primary` again."""

    target: PostgresTarget
    """The standby to promote (the old primary, re-attached by your tooling)."""
    primary: PostgresTarget
    """The current primary, fenced and left fenced."""


class RedisPromoteStep(ApiModel):
    """Promote a Redis replica with REPLICAOF NO ONE and verify its role and a write."""

    target: RedisTarget
    """The replica to promote."""
    fence_primary: RedisTarget | None = None
    """The old master: if reachable, make it refuse writes (min-replicas-to-write set beyond
    its replica count; best effort) and let the replica catch up to its final offset."""


class RedisSwitchoverStep(ApiModel):
    """A planned Redis switchover with zero data loss: check that `target` is a replica of
    `primary` (same replication id, link up) within the lag limits; fence `primary`; wait
    until `target` has processed its final offset; REPLICAOF NO ONE; verify. `primary`
    stays fenced; a catch-up that does not finish in time unfences it."""

    target: RedisTarget
    """The replica to promote (the old master, re-attached as a replica)."""
    primary: RedisTarget
    """The current master, fenced and left fenced."""


class ScaleStep(ApiModel):
    """Scale a workload and wait until its replicas are ready."""

    kind: Literal["Deployment", "StatefulSet"]
    """Kind of workload."""
    name: ObjectName
    """Name of the workload."""
    namespace: ObjectName | None = None
    """Namespace; absent is the plan's namespace. Another namespace is refused
    (NamespaceNotAllowed) unless the operator's AEGIS_REACHABLE_NAMESPACES lists it."""
    replicas: NonNegativeInt
    """Desired replicas."""
    wait_ready: bool = True
    """Wait until the ready replicas reach `replicas`."""


class AliasTarget(ApiModel):
    """A Route53 alias target."""

    hosted_zone_id: Annotated[str, Field(min_length=1)]
    """Hosted zone of the alias target (e.g. of the load balancer)."""
    dns_name: Annotated[str, Field(min_length=1)]
    """DNS name of the alias target."""
    evaluate_target_health: bool = False
    """Route53 EvaluateTargetHealth."""


class Route53Step(ApiModel):
    """UPSERT a Route53 record and wait until the change is INSYNC."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "has(self.values) != has(self.aliasTarget)",
                "message": "set exactly one of values, aliasTarget",
            }
        )
    )

    hosted_zone_id: Annotated[str, Field(min_length=1)]
    """Hosted zone id."""
    record_name: Annotated[str, Field(min_length=1, max_length=255)]
    """Record name, e.g. db.example.com."""
    type: Literal["A", "AAAA", "CNAME"]
    """Record type."""
    ttl: Annotated[int, Field(ge=0, le=86400)] = 60
    """TTL of the record (ignored for aliases)."""
    values: list[str] | None = None
    """Record values."""
    alias_target: AliasTarget | None = None
    """Alias target instead of values."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; absent uses ambient credentials."""
    region: str | None = None
    """AWS region for the client."""
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Endpoint URL of a Route53-compatible API."""

    @model_validator(mode="after")
    def _values_or_alias(self) -> Route53Step:
        if (self.values is None) == (self.alias_target is None):
            raise ValueError("set exactly one of values, aliasTarget")
        return self


class WebhookStep(ApiModel):
    """Send a JSON description of the transition."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    """URL to call."""
    method: Literal["POST", "PUT"] = "POST"
    """HTTP method."""
    headers_secret_ref: SecretRef | None = None
    """Secret whose keys and values are sent as headers."""


class JobStep(ApiModel):
    """Run a custom Job and wait for it."""

    template: Annotated[
        dict[str, Any],
        Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
    ]
    """A batch/v1 Job spec (as in Job.spec), created in the plan's namespace. Its images must
    be listed in the operator's AEGIS_ALLOWED_JOB_IMAGES and a serviceAccountName other than
    `default` in AEGIS_ALLOWED_SERVICE_ACCOUNTS."""


class Step(HasOneOf):
    """One step of a failover or failback procedure."""

    ONE_OF = (
        "postgres_promote", "postgres_switchover", "redis_promote", "redis_switchover", "scale",
        "route53", "webhook", "job",
    )

    name: StepName
    """Unique name of the step."""
    timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 300
    """Seconds after which the step fails."""
    continue_on_error: bool = False
    """Go on with later steps when this one fails."""
    depends_on: list[StepName] | None = None
    """Steps that must finish first; absent: the previous step in the list."""
    postgres_promote: PostgresPromoteStep | None = None
    """Promote a PostgreSQL standby."""
    postgres_switchover: PostgresSwitchoverStep | None = None
    """Switch over to a caught-up PostgreSQL standby with zero data loss (failback)."""
    redis_promote: RedisPromoteStep | None = None
    """Promote a Redis replica."""
    redis_switchover: RedisSwitchoverStep | None = None
    """Switch over to a caught-up Redis replica with zero data loss (failback)."""
    scale: ScaleStep | None = None
    """Scale a workload."""
    route53: Route53Step | None = None
    """UPSERT a Route53 record."""
    webhook: WebhookStep | None = None
    """Call a webhook."""
    job: JobStep | None = None
    """Run a Job."""


def check_steps(steps: list[Step] | None, where: str) -> None:
    names = [s.name for s in steps or []]
    seen: set[str] = set()
    for step in steps or []:
        if step.name in seen:
            raise ValueError(f"{where}: step name {step.name!r} is used twice")
        for dep in step.depends_on or []:
            if dep not in seen:
                hint = "is not defined" if dep not in names else "comes later (list steps in order)"
                raise ValueError(f"{where}.{step.name}.dependsOn: {dep!r} {hint}")
        seen.add(step.name)


class Approval(ApiModel):
    """Human approval."""

    required: bool = False
    """Wait for approval even in Automatic mode."""
    by: Literal["Annotation", "FailoverApproval"] = "Annotation"
    """How humans decide. Annotation: the dr.aegis.dev/* trigger annotations (anyone who may
    patch the plan). FailoverApproval: only FailoverApproval objects (a separate RBAC
    permission); the annotations are refused and no approval token is published."""


class PlanObjectives(ApiModel):
    """What the team promises for this service."""

    rpo_seconds: PositiveSeconds | None = None
    """The data-loss window promised; the default of maxLagSeconds."""


DEFAULT_MAX_LAG_SECONDS = 60
DEFAULT_MAX_LAG_BYTES = 1024 * 1024


class FailoverPlanSpec(ApiModel):
    """Two sites, the rules for leaving the primary, and the procedure."""

    mode: Literal["Automatic", "Manual"] = "Manual"
    """Automatic fails over by itself; Manual detects, recommends and waits for approval."""
    primary: Site
    """The site normally serving."""
    secondary: Site
    """The site to fail over to."""
    steps: Annotated[list[Step], Field(min_length=1)]
    """The failover procedure."""
    failback_steps: list[Step] | None = None
    """The failback procedure; absent: Route53 records are set back to their stored values."""
    cooldown_seconds: NonNegativeSeconds = 3600
    """No second failover within this many seconds of the last."""
    approval: Approval | None = None
    """Human approval."""
    history_limit: Annotated[int, Field(ge=0, le=100)] = 10
    """Transitions kept in status.history."""
    objectives: PlanObjectives | None = None
    """The RPO objective; maxLagSeconds defaults to it."""
    max_lag_seconds: NonNegativeSeconds | None = None
    """A replica whose newest data is older than this (relative to the source's last observed
    position) is stale: no automatic failover onto it, and a manual one needs the
    dr.aegis.dev/accept-data-loss annotation. Absent: objectives.rpoSeconds, else 60."""
    max_lag_bytes: Annotated[int, Field(ge=0, le=2**60)] = DEFAULT_MAX_LAG_BYTES
    """A replica lacking more than this many bytes of the source's WAL (PostgreSQL) or
    replication stream (Redis) is stale. Default 1 MiB, as Patroni's maximum_lag_on_failover."""

    @property
    def lag_seconds_limit(self) -> int:
        if self.max_lag_seconds is not None:
            return self.max_lag_seconds
        if self.objectives is not None and self.objectives.rpo_seconds is not None:
            return self.objectives.rpo_seconds
        return DEFAULT_MAX_LAG_SECONDS

    @model_validator(mode="after")
    def _steps_are_ordered(self) -> FailoverPlanSpec:
        check_steps(self.steps, "steps")
        check_steps(self.failback_steps, "failbackSteps")
        return self


class CheckStatus(StatusModel):
    """The latest result of one health check."""

    name: str
    """Name of the check."""
    ok: bool
    """Whether it passed."""
    latency_ms: float | None = None
    """Measured latency."""
    message: str | None = None
    """Why it failed."""


class SiteReplication(StatusModel):
    """Replication of a site's database as its first postgres/redis check saw it, and for the
    site that does not serve, how far behind the serving one it is."""

    kind: Literal["postgres", "redis"]
    """Which database the position belongs to."""
    role: Literal["primary", "replica"]
    """primary (takes writes, or fenced) or replica (PostgreSQL standby, Redis replica)."""
    position: int | None = None
    """Primary: current write position; replica: last received position (bytes: a
    PostgreSQL LSN as a number, a Redis replication offset)."""
    position_time: dt.datetime | None = None
    """When `position` was read."""
    streaming: bool | None = None
    """Replica: the link to its source is up."""
    last_message_age_seconds: float | None = None
    """Replica: seconds since the last message from its source."""
    read_only: bool | None = None
    """Primary: refuses writes (fenced)."""
    complete_as_of_time: dt.datetime | None = None
    """Replica: the newest time at which the serving site's position is known to have been
    received by this replica: every write before it is here."""
    lag_bytes: int | None = None
    """Replica: the serving site's last observed position minus this replica's position."""
    lag_seconds: float | None = None
    """Replica: the serving site's last observation time minus completeAsOfTime (0 when
    nothing is missing): the data-loss window a promotion now would have."""
    stale: bool | None = None
    """Replica: lag beyond maxLagBytes / maxLagSeconds, or unknown."""
    message: str | None = None
    """The lag in words."""


class SiteStatus(StatusModel):
    """Observed health of a site."""

    healthy: bool | None = None
    """Whether the site counts as up."""
    consecutive_failures: int = 0
    """Failed probes in a row."""
    consecutive_successes: int = 0
    """Good probes in a row."""
    first_failure_time: dt.datetime | None = None
    """Time of the first failed probe of the current failure run."""
    down_since: dt.datetime | None = None
    """First failed probe of the failure run that made the site down (kept until it is up)."""
    last_probe_time: dt.datetime | None = None
    """Time of the latest probe."""
    checks: list[CheckStatus] | None = None
    """Latest result of each check."""
    replication: SiteReplication | None = None
    """Replication of the site's database and, when it does not serve, its lag."""


class StepStatus(StatusModel):
    """Progress of one step."""

    name: str
    """Step name."""
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
    """State of the step."""
    start_time: dt.datetime | None = None
    """When it started."""
    completion_time: dt.datetime | None = None
    """When it ended."""
    message: str | None = None
    """Result or reason."""
    outputs: dict[str, str] | None = None
    """Values recorded by the step for later use (e.g. previous Route53 values)."""
    attempts: int | None = None
    """Times the step was started; more than 1 means it was resumed after an interruption."""


class Transition(StatusModel):
    """One failover or failback, with measured timings."""

    kind: Literal["Failover", "Failback"]
    """Failover or Failback."""
    id: str | None = None
    """Stable id of the transition: names its Jobs and is the webhook's idempotency key."""
    reason: str | None = None
    """Why it happened."""
    detected_time: dt.datetime | None = None
    """First failed probe of the failure run that crossed the threshold."""
    start_time: dt.datetime | None = None
    """When the first step started."""
    completion_time: dt.datetime | None = None
    """When the last step ended."""
    duration_seconds: float | None = None
    """completionTime - startTime."""
    rpo_seconds: float | None = None
    """Measured replay lag of the standby just before promotion (the data-loss window)."""
    lag_bytes: int | None = None
    """Measured WAL bytes not yet replayed just before promotion."""
    expected_lag_bytes: int | None = None
    """The target's lag when the transition was decided (from the probes)."""
    expected_lag_seconds: float | None = None
    """The target's data-loss window in seconds when the transition was decided."""
    data_loss_accepted: str | None = None
    """The dr.aegis.dev/accept-data-loss acknowledgement that let it run onto a stale target."""
    write_outage_seconds: float | None = None
    """Switchover: from fencing the old primary to the new one verified writable."""
    result: Literal["Running", "Succeeded", "Failed"] | None = None
    """Outcome."""
    steps: list[StepStatus] | None = None
    """Per-step progress."""


class FailoverPlanStatus(StatusModel):
    """Observed state of a FailoverPlan."""

    conditions: list[Condition] | None = None
    """Ready, PrimaryHealthy, SecondaryHealthy, FailoverRecommended."""
    observed_generation: int | None = None
    """The spec generation last processed."""
    active_site: Literal["primary", "secondary"] | None = None
    """Which site serves."""
    state: (
        Literal[
            "Monitoring", "AwaitingApproval", "Blocked", "FailingOver", "FailedOver",
            "FailingBack", "Failed",
        ]
        | None
    ) = None
    """Where the plan is in its lifecycle."""
    sites: dict[str, SiteStatus] | None = None
    """Health of `primary` and `secondary`."""
    approval_token: str | None = None
    """Token to approve a recommended failover with the dr.aegis.dev/approve annotation."""
    last_transition: Transition | None = None
    """The latest failover or failback."""
    history: list[Transition] | None = None
    """Earlier transitions, newest first."""
