"""Failover drills in DryRun mode: rehearse a FailoverPlan's procedure without changing
anything live, and predict its RTO from what could be measured.

What a DryRun does, step by step of the plan's `steps` (the failover procedure):

- the plan's probes of both sites, evaluated now with the plan's own prober and rules;
- `postgresPromote` / `postgresSwitchover`: the standby is reachable and in recovery
  (pg_is_in_recovery), and its lag behind the primary (read-only: pg_current_wal_lsn, never
  fenced) is within the plan's maxLagBytes / maxLagSeconds. Nothing is promoted;
- `redisPromote` / `redisSwitchover`: the replica is a replica of the master (role, link,
  replication id) within maxLagBytes. Nothing is promoted;
- `scale`: the change is sent with `dryRun=All`: the API server authorizes, admits and
  validates it, and stores nothing;
- `route53`: the change is made on the drill's `drillRecord` (UPSERT, wait INSYNC), never
  on the live record; after the last step the drill record is put back as it was (deleted
  when it did not exist). Without `drillRecord` the step is NotExercised;
- `webhook`: called with the transition's JSON, `"drill": true` in it and the header
  `X-Aegis-Drill: true`, so receivers can tell a rehearsal from a failover;
- `job`: NotExercised (it runs the user's code, whose effects a drill cannot contain).

Predicted RTO = detection (the primary's periodSeconds x failureThreshold) + the measured
durations of the exercised steps along the procedure's longest dependsOn chain. It is a
prediction and says so (`rtoPredicted`): a promotion, a pod becoming ready and a Job are
not exercised, and a Manual plan's wait for approval is not counted.

`rehearse` does the I/O through `DrillPorts` (the operator passes Kubernetes- and
boto3-backed ones, a test may pass fakes); `verdict` and `predicted_rto` are pure.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import psycopg

from aegis import display
from aegis.api.drdrill import DrillObjectives, FailoverDrill
from aegis.api.failoverplan import (
    CheckStatus,
    FailoverPlanSpec,
    PostgresPromoteStep,
    PostgresSwitchoverStep,
    RedisPromoteStep,
    RedisSwitchoverStep,
    Route53Step,
    ScaleStep,
    SiteStatus,
    Step,
    Transition,
    WebhookStep,
)
from aegis.cloud.route53 import RecordSnapshot, Route53Records
from aegis.k8s.workloads import SecretsOfNamespace, Workloads
from aegis.probes.base import SecretReader, scrub
from aegis.probes.postgres import PgEndpoint, in_recovery, pg_connect
from aegis.probes.prober import ProbeContext
from aegis.probes.redis import redis_client
from aegis.probes.workload import WorkloadKind, WorkloadReader
from aegis.reach import EndpointRule
from aegis.reconcilers import failover
from aegis.reconcilers.failoverplan import SiteProber
from aegis.steps.base import Route53ClientFactory, StepContext
from aegis.steps.postgres import catch_up, measure_lag
from aegis.steps.redis import _redis_preconditions
from aegis.steps.route53 import desired_record
from aegis.steps.webhook import send_json, transition_payload

DRILL_HEADER = "X-Aegis-Drill"
"""Header on every webhook call of a drill (value `true`)."""
CATCH_UP_BUDGET_SECONDS = 1.0
"""A standby found behind is given this long to replay up to the primary's position read
just before; the time it took is its lag in seconds (see `_postgres`)."""
RESTORE_TIMEOUT_SECONDS = 60.0
"""Putting the drill record back as it was gets at least this long."""

StepResultKind = Literal["Passed", "Failed", "NotExercised"]


class DryRunScaler(WorkloadReader, Protocol):
    def dry_run_replicas(
        self, kind: WorkloadKind, namespace: str, name: str, replicas: int
    ) -> int:
        """Send the replica change with dryRun=All; returns the replicas the server
        answered; raises when it refuses."""
        ...


@dataclass(frozen=True)
class DrillPorts:
    """The outside world as a failover drill sees it."""

    prober: SiteProber
    """The FailoverPlan reconciler's prober (one per operator process)."""
    secrets: SecretReader
    workloads: DryRunScaler
    route53: Route53ClientFactory
    """Builds a Route53 client (the operator's refuses endpoints its rule refuses)."""
    endpoints: EndpointRule = field(default_factory=EndpointRule)
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


@dataclass
class StepOutcome:
    """One step of the drill (the wire form is `DrillStep`)."""

    name: str
    action: str
    result: StepResultKind
    message: str
    seconds: float | None = None
    reason: str | None = None
    """CamelCase reason when Failed (the drill's reason if it is the first failure)."""
    outputs: dict[str, str] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name, "action": self.action, "result": self.result,
            "message": self.message,
        }
        if self.seconds is not None:
            body["seconds"] = round(self.seconds, 3)
        if self.outputs:
            body["outputs"] = dict(self.outputs)
        return body


@dataclass
class Rehearsal:
    """What a DryRun found."""

    sites: dict[str, SiteStatus]
    steps: list[StepOutcome]
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) of what failed outside the steps (the probes)."""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str
    message: str
    record: dict[str, Any]


# --------------------------------------------------------------------------- pure


def step_action(step: Step) -> str:
    for name in Step.ONE_OF:
        if getattr(step, name) is not None:
            return "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
    return "unknown"


def detection_seconds(plan: FailoverPlanSpec) -> float:
    """How long the plan needs to call its primary down: periodSeconds x failureThreshold."""
    return float(plan.primary.period_seconds * plan.primary.failure_threshold)


def critical_path_seconds(plan: FailoverPlanSpec, seconds: Mapping[str, float]) -> float:
    """The longest chain of the procedure's dependsOn graph, each step counting its measured
    seconds (0 when it was not measured): steps without a dependency between them run in
    parallel in a real failover, so their times do not add up."""
    finish: dict[str, float] = {}
    for planned in failover.plan_steps(plan.steps):
        start = max((finish.get(d, 0.0) for d in planned.depends_on), default=0.0)
        finish[planned.name] = start + seconds.get(planned.name, 0.0)
    return max(finish.values(), default=0.0)


def predicted_rto(plan: FailoverPlanSpec, steps: Sequence[StepOutcome]) -> tuple[float, float]:
    """(predicted RTO, the steps' part of it), in seconds, rounded to ms."""
    measured = {s.name: s.seconds for s in steps if s.seconds is not None}
    path = round(critical_path_seconds(plan, measured), 3)
    return round(detection_seconds(plan) + path, 3), path


def verdict(
    run: Mapping[str, Any],
    plan: FailoverPlanSpec,
    rehearsal: Rehearsal,
    objectives: DrillObjectives | None,
    ended: dt.datetime,
) -> Outcome:
    """The run's record and outcome: Failed with the first problem's reason (probes, then
    steps in order, then the RTO objective), else Passed. NotExercised steps do not fail a
    drill; the message names them, so a pass never claims them."""
    record = dict(run)
    record["completionTime"] = ended.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    rto, path = predicted_rto(plan, rehearsal.steps)
    record["rtoSeconds"] = rto
    record["rtoPredicted"] = True
    record["display"] = display.fields(rto=display.duration(rto))
    record["phases"] = {"detectionSeconds": detection_seconds(plan), "stepsSeconds": path}
    record["sites"] = {k: v.to_api() for k, v in rehearsal.sites.items()}
    record["steps"] = [s.to_api() for s in rehearsal.steps]
    skipped = [s.name for s in rehearsal.steps if s.result == "NotExercised"]
    not_exercised = f"; not exercised: {', '.join(skipped)}" if skipped else ""
    problems = list(rehearsal.problems)
    problems += [
        (s.reason or "StepFailed", f"step {s.name}: {s.message}")
        for s in rehearsal.steps
        if s.result == "Failed"
    ]
    objective = objectives.rto_seconds if objectives is not None else None
    if objective is not None and rto > objective:
        problems.append((
            "RTOObjectiveMissed",
            f"predicted RTO {rto:.1f}s (detection {detection_seconds(plan):g}s + steps "
            f"{path:.1f}s) > objective {objective}s",
        ))
    if problems:
        reason = problems[0][0]
        message = "DryRun failover drill failed: " + "; ".join(m for _, m in problems)
        message = (message + not_exercised)[:1024]
        record.update(result="Failed", reason=reason, message=message)
        return Outcome(False, reason, message, record)
    passed = [s.name for s in rehearsal.steps if s.result == "Passed"]
    message = (
        f"DryRun of plan {run.get('plan')}: probes passed, {len(passed)} step(s) exercised "
        f"({', '.join(passed) or 'none'}), nothing live changed; predicted RTO {rto:.1f}s "
        f"(detection {detection_seconds(plan):g}s + steps {path:.1f}s){not_exercised}"
    )
    if plan.mode == "Manual":
        message += "; a Manual plan also waits for approval, not counted"
    message = message[:1024]
    record.update(result="Passed", reason="DrillPassed", message=message)
    return Outcome(True, "DrillPassed", message, record)


# --------------------------------------------------------------------------- the probes


def probe_sites(
    plan: FailoverPlanSpec, namespace: str, ports: DrillPorts
) -> tuple[dict[str, SiteStatus], list[tuple[str, str]]]:
    """Both sites probed once, now, with the plan's checks and rules; the secondary's
    replication lag from the probes as the plan computes it."""
    context = ProbeContext(
        namespace, secrets=ports.secrets, workloads=ports.workloads, endpoints=ports.endpoints
    )
    sites_spec = {"primary": plan.primary, "secondary": plan.secondary}
    probes = ports.prober.probe_sites(sites_spec, context)
    sites: dict[str, SiteStatus] = {}
    for key, probe in probes.items():
        site = sites_spec[key]
        sites[key] = SiteStatus(
            healthy=not failover.attempt_failed(site, probe.results),
            last_probe_time=probe.time,
            checks=[
                CheckStatus(name=r.name, ok=r.ok, latency_ms=r.latency_ms, message=r.message)
                for r in probe.results
            ],
        )
    sites = failover.next_replication(plan, "primary", {}, sites, probes)
    problems: list[tuple[str, str]] = []
    secondary = sites.get("secondary")
    if secondary is not None and not secondary.healthy:
        problems.append((
            "SecondaryUnhealthy",
            f"the secondary site {plan.secondary.name} fails its probes: "
            f"{failover.failing_checks(secondary)}",
        ))
    return sites, problems


# --------------------------------------------------------------------------- the steps


@dataclass
class DrillContext:
    """One run: the plan, the drill, its ports, and what must be undone at the end."""

    namespace: str
    plan_name: str
    drill_name: str
    plan: FailoverPlanSpec
    drill: FailoverDrill
    ports: DrillPorts
    transition: Transition
    undo: list[Callable[[], StepOutcome | None]] = field(default_factory=list)
    finished: list[StepOutcome] = field(default_factory=list)


def _deadline(ctx: DrillContext, step: Step) -> float:
    return ctx.ports.monotonic() + float(step.timeout_seconds)


def _lag_check(plan: FailoverPlanSpec, lag_bytes: int | None, lag_seconds: float | None,
               where: str) -> str | None:
    limit_b, limit_s = plan.max_lag_bytes, plan.lag_seconds_limit
    if lag_bytes is None:
        return f"{where}: lag unknown (a position could not be read)"
    if lag_bytes > limit_b:
        return f"{where} is {lag_bytes} bytes behind (maxLagBytes {limit_b})"
    if lag_seconds is None:
        return f"{where} is {lag_bytes} bytes behind and its lag in seconds is unknown"
    if lag_seconds > limit_s:
        return f"{where} is {lag_seconds:.1f}s behind (limit {limit_s}s)"
    return None


def _postgres(
    ctx: DrillContext, name: str, step: PostgresPromoteStep | PostgresSwitchoverStep,
    deadline: float,
) -> StepOutcome:
    action = "postgresPromote" if isinstance(step, PostgresPromoteStep) else "postgresSwitchover"
    primary_target = (
        step.fence_primary if isinstance(step, PostgresPromoteStep) else step.primary
    )
    known: list[str] = []
    ports = ctx.ports
    started = ports.monotonic()
    outputs: dict[str, str] = {}

    def remaining() -> float:
        return max(0.1, deadline - ports.monotonic())

    def failed(reason: str, message: str) -> StepOutcome:
        return StepOutcome(name, action, "Failed", scrub(message, known),
                           round(ports.monotonic() - started, 3), reason, outputs)

    try:
        standby = PgEndpoint.resolve(step.target, ports.secrets)
        known.append(standby.password)
        primary_lsn: str | None = None
        notes: list[str] = []
        if primary_target is not None:
            primary = PgEndpoint.resolve(primary_target, ports.secrets)
            known.append(primary.password)
            try:
                with pg_connect(primary, remaining()) as conn:
                    if in_recovery(conn):
                        return failed("PrimaryInRecovery",
                                      f"{primary.where} (the primary) is itself in recovery")
                    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    primary_lsn = str(row[0]) if row else None
            except psycopg.Error as exc:
                if isinstance(step, PostgresSwitchoverStep):
                    return failed("PrimaryUnreachable",
                                  f"{primary.where} (the primary) is unreachable: "
                                  f"{_first_line(exc)}")
                notes.append(f"the primary {primary.where} is unreachable (a failover would "
                             "skip its fence)")
        try:
            conn = pg_connect(standby, remaining())
        except psycopg.Error as exc:
            return failed("StandbyUnreachable",
                          f"the standby {standby.where} is unreachable: {_first_line(exc)}")
        with conn:
            if not in_recovery(conn):
                return failed("StandbyNotInRecovery",
                              f"{standby.where} is not in recovery (pg_is_in_recovery() = "
                              "false): it is no standby to promote")
            lag = measure_lag(conn, primary_lsn)
            lag_seconds = lag.seconds
            if lag.bytes and primary_lsn is not None:
                waited = ports.monotonic()
                if catch_up(conn, primary_lsn, min(CATCH_UP_BUDGET_SECONDS, remaining())):
                    # It held everything the primary had at the read within this long.
                    lag_seconds = round(ports.monotonic() - waited, 3)
            outputs.update(lag.outputs())
            if lag_seconds is not None:
                outputs[failover.LAG_SECONDS] = f"{lag_seconds:.3f}"
        problem = _lag_check(ctx.plan, lag.bytes, lag_seconds, standby.where)
        if problem is not None:
            return failed("StandbyLagTooHigh", problem)
        took = round(ports.monotonic() - started, 3)
        text = (f"{standby.where} is in recovery, {lag.bytes} bytes / "
                f"{lag_seconds or 0:g}s behind (limits {ctx.plan.max_lag_bytes} bytes / "
                f"{ctx.plan.lag_seconds_limit}s); not promoted (DryRun)")
        if notes:
            text += "; " + "; ".join(notes)
        return StepOutcome(name, action, "Passed", scrub(text, known), took, None, outputs)
    except Exception as exc:  # a drill step reports, it never raises
        return failed("StepCheckFailed", f"{action}: {type(exc).__name__}: {_first_line(exc)}")


def _redis(
    ctx: DrillContext, name: str, step: RedisPromoteStep | RedisSwitchoverStep, deadline: float
) -> StepOutcome:
    action = "redisPromote" if isinstance(step, RedisPromoteStep) else "redisSwitchover"
    master_target = step.fence_primary if isinstance(step, RedisPromoteStep) else step.primary
    known: list[str] = []
    ports = ctx.ports
    started = ports.monotonic()
    timeout = max(0.1, min(2.0, deadline - ports.monotonic()))
    where = f"{step.target.host}:{step.target.port}"

    def outcome(result: StepResultKind, message: str, reason: str | None = None) -> StepOutcome:
        return StepOutcome(name, action, result, scrub(message, known),
                           round(ports.monotonic() - started, 3), reason)

    try:
        replica = redis_client(step.target, ports.secrets, timeout, known)
        try:
            r_info = dict(replica.info("replication"))
        except Exception as exc:
            return outcome("Failed", f"the replica {where} is unreachable: {exc}",
                           "StandbyUnreachable")
        if r_info.get("role") != "slave":
            return outcome("Failed", f"{where} is a {r_info.get('role')}, not a replica",
                           "StandbyNotReplica")
        if master_target is None:
            link = r_info.get("master_link_status")
            if link != "up":
                return outcome("Failed", f"{where}'s link to its master is {link}",
                               "StandbyNotStreaming")
            return outcome("Passed", f"{where} is a replica, link up; not promoted (DryRun)")
        master = redis_client(master_target, ports.secrets, timeout, known)
        m_info = dict(master.info("replication"))
        source = f"{master_target.host}:{master_target.port}"
        problem = _redis_preconditions(r_info, m_info, where, source, ctx.plan.max_lag_bytes)
        if problem is not None:
            reason = "StandbyLagTooHigh" if "behind" in problem else "StandbyNotReplica"
            return outcome("Failed", problem, reason)
        return outcome("Passed", f"{where} replicates from {source} within maxLagBytes "
                       f"{ctx.plan.max_lag_bytes}; not promoted (DryRun)")
    except Exception as exc:  # a drill step reports, it never raises
        return outcome("Failed", f"{action}: {type(exc).__name__}: {exc}", "StepCheckFailed")


def _scale(ctx: DrillContext, name: str, step: ScaleStep) -> StepOutcome:
    ports = ctx.ports
    namespace = step.namespace or ctx.namespace
    where = f"{step.kind} {namespace}/{step.name}"
    started = ports.monotonic()
    try:
        before = ports.workloads.read_replicas(step.kind, namespace, step.name)
        answered = ports.workloads.dry_run_replicas(step.kind, namespace, step.name,
                                                    step.replicas)
    except Exception as exc:  # the server refused: RBAC, admission, a missing workload
        return StepOutcome(name, "scale", "Failed",
                           scrub(f"scale {where} (dryRun=All): {type(exc).__name__}: {exc}", []),
                           round(ports.monotonic() - started, 3), "ScaleDryRunFailed")
    took = round(ports.monotonic() - started, 3)
    outputs = {"previousReplicas": str(before.desired), "dryRunReplicas": str(answered)}
    if answered != step.replicas:
        return StepOutcome(name, "scale", "Failed",
                           f"{where}: the dry run answered {answered} replicas, not "
                           f"{step.replicas}", took, "ScaleDryRunFailed", outputs)
    waiting = "; pods becoming ready not exercised" if step.wait_ready else ""
    return StepOutcome(
        name, "scale", "Passed",
        f"{where} {before.desired} -> {step.replicas} accepted by the API server with "
        f"dryRun=All, nothing stored{waiting}", took, None, outputs,
    )


def _route53(ctx: DrillContext, name: str, step: Route53Step, deadline: float) -> StepOutcome:
    ports = ctx.ports
    record = ctx.drill.drill_record
    if record is None:
        return StepOutcome(
            name, "route53", "NotExercised",
            f"no spec.failover.drillRecord: a drill never changes the live record "
            f"{step.record_name} {step.type}; set drillRecord to rehearse this change",
        )
    known: list[str] = []
    started = ports.monotonic()
    outputs: dict[str, str] = {}
    try:
        credentials = None
        if record.credentials_secret_ref is not None:
            credentials = ports.secrets.data(record.credentials_secret_ref)
            known.extend(credentials.values())
        records = Route53Records(ports.route53(record, credentials))
        before = records.read(record.hosted_zone_id, record.record_name, record.type, deadline)
        desired = desired_record(record)
        comment = f"aegis drill {ctx.namespace}/{ctx.drill_name} step {name}"
        # Register the undo before the change: whatever happens next, it is put back.
        if not any(getattr(u, "record_key", None) == _key(record) for u in ctx.undo):
            ctx.undo.append(_Restore(ctx, record, before, credentials))
        change_id, status = records.upsert(record.hosted_zone_id, desired, deadline, comment)
        outputs["changeId"] = change_id
        outputs["drillRecord"] = desired.describe()
        outputs["before"] = before.describe() if before is not None else "absent"
        records.wait_insync(change_id, deadline, status)
        took = round(ports.monotonic() - started, 3)
        outputs["insyncSeconds"] = f"{took:.3f}"
        return StepOutcome(
            name, "route53", "Passed",
            f"{desired.describe()} is INSYNC ({change_id}) on the drill record, instead of "
            f"{step.record_name} {step.type} (live, untouched); put back after the last step",
            took, None, outputs,
        )
    except Exception as exc:
        return StepOutcome(
            name, "route53", "Failed",
            scrub(f"drill record {record.record_name} {record.type}: {type(exc).__name__}: "
                  f"{exc}", known),
            round(ports.monotonic() - started, 3), "DrillRecordChangeFailed", outputs,
        )


def _key(record: Route53Step) -> tuple[str, str, str]:
    return (record.hosted_zone_id, record.record_name.rstrip(".").lower(), record.type)


@dataclass
class _Restore:
    """Put the drill record back as the drill found it (delete it when it was absent)."""

    ctx: DrillContext
    record: Route53Step
    before: RecordSnapshot | None
    credentials: Mapping[str, str] | None

    @property
    def record_key(self) -> tuple[str, str, str]:
        return _key(self.record)

    def __call__(self) -> StepOutcome | None:
        ports = self.ctx.ports
        record = self.record
        known = list(self.credentials.values()) if self.credentials else []
        started = ports.monotonic()
        deadline = started + RESTORE_TIMEOUT_SECONDS
        name = "drill-record-cleanup"
        try:
            records = Route53Records(ports.route53(record, self.credentials))
            current = records.read(record.hosted_zone_id, record.record_name, record.type,
                                   deadline)
            comment = f"aegis drill {self.ctx.namespace}/{self.ctx.drill_name} cleanup"
            if self.before is None:
                if current is None:
                    return StepOutcome(name, "route53", "Passed",
                                       f"{record.record_name} {record.type} already absent")
                change_id, status = records.delete(record.hosted_zone_id, current, deadline,
                                                   comment)
                done = f"deleted {current.describe()} (absent before the drill)"
            else:
                change_id, status = records.upsert(record.hosted_zone_id, self.before,
                                                   deadline, comment)
                done = f"restored {self.before.describe()}"
            records.wait_insync(change_id, deadline, status)
            after = records.read(record.hosted_zone_id, record.record_name, record.type,
                                 deadline)
            if after != self.before:
                return StepOutcome(name, "route53", "Failed",
                                   f"{record.record_name} {record.type} reads "
                                   f"{after.describe() if after else 'absent'} after the "
                                   "cleanup, not as before the drill", None,
                                   "DrillRecordChangeFailed")
            return StepOutcome(name, "route53", "Passed", f"{done}, INSYNC ({change_id})",
                               round(ports.monotonic() - started, 3), None,
                               {"changeId": change_id})
        except Exception as exc:
            return StepOutcome(
                name, "route53", "Failed",
                scrub(f"putting back {record.record_name} {record.type} failed: "
                      f"{type(exc).__name__}: {exc}; remove it by hand", known),
                None, "DrillRecordChangeFailed",
            )


def _webhook(ctx: DrillContext, name: str, step: WebhookStep, deadline: float) -> StepOutcome:
    ports = ctx.ports
    known: list[str] = []
    started = ports.monotonic()
    try:
        headers: dict[str, str] = {}
        if step.headers_secret_ref is not None:
            headers = ports.secrets.data(step.headers_secret_ref)
            known.extend(headers.values())
        step_ctx = StepContext(
            plan=ctx.plan_name, namespace=ctx.namespace, step=name,
            transition=ctx.transition.model_copy(update={"steps": None}),
            from_site=ctx.plan.primary.name, to_site=ctx.plan.secondary.name,
            deadline=deadline,
        )
        payload = transition_payload(step_ctx, ports.wall())
        payload["drill"] = True
        payload["drillName"] = ctx.drill_name
        payload["steps"] = [
            {"name": s.name, "state": s.result, "message": s.message} for s in ctx.finished
        ]
        headers["Idempotency-Key"] = payload["id"]
        headers[DRILL_HEADER] = "true"
        status = send_json(step.url, step.method, payload, headers,
                           max(0.1, deadline - ports.monotonic()), ports.endpoints)
    except Exception as exc:
        reason = getattr(exc, "reason", None) or exc
        return StepOutcome(name, "webhook", "Failed",
                           scrub(f"{step.method} {step.url}: {reason}", known),
                           round(ports.monotonic() - started, 3), "WebhookFailed")
    took = round(ports.monotonic() - started, 3)
    outputs = {"httpStatus": str(status)}
    if 200 <= status < 300:
        return StepOutcome(name, "webhook", "Passed",
                           f"{step.method} {step.url} ({DRILL_HEADER}: true): HTTP {status}",
                           took, None, outputs)
    return StepOutcome(name, "webhook", "Failed",
                       f"{step.method} {step.url} ({DRILL_HEADER}: true): HTTP {status}, "
                       "expected 2xx", took, "WebhookFailed", outputs)


def exercise(ctx: DrillContext, step: Step) -> StepOutcome:
    """One step as a drill may do it; never raises."""
    deadline = _deadline(ctx, step)
    action = step_action(step)
    if step.postgres_promote is not None:
        return _postgres(ctx, step.name, step.postgres_promote, deadline)
    if step.postgres_switchover is not None:
        return _postgres(ctx, step.name, step.postgres_switchover, deadline)
    if step.redis_promote is not None:
        return _redis(ctx, step.name, step.redis_promote, deadline)
    if step.redis_switchover is not None:
        return _redis(ctx, step.name, step.redis_switchover, deadline)
    if step.scale is not None:
        return _scale(ctx, step.name, step.scale)
    if step.route53 is not None:
        return _route53(ctx, step.name, step.route53, deadline)
    if step.webhook is not None:
        return _webhook(ctx, step.name, step.webhook, deadline)
    return StepOutcome(
        step.name, action, "NotExercised",
        "a job step runs your code, whose effects a drill cannot contain; not run",
    )


def rehearse(
    plan: FailoverPlanSpec,
    drill: FailoverDrill,
    namespace: str,
    plan_name: str,
    drill_name: str,
    ports: DrillPorts,
    *,
    on_step: Callable[[list[StepOutcome]], None] = lambda _steps: None,
) -> Rehearsal:
    """Probe, exercise every step in the procedure's order, then undo what the drill
    changed (the drill record). `on_step` sees the steps finished so far (for progress)."""
    now = ports.wall()
    transition = Transition(
        kind="Failover", id=f"drill-{now.strftime('%Y%m%dt%H%M%S')}",
        reason=f"DryRun failover drill {drill_name}", start_time=now,
    )
    sites, problems = probe_sites(plan, namespace, ports)
    ctx = DrillContext(namespace, plan_name, drill_name, plan, drill, ports, transition)
    try:
        for step in plan.steps:
            outcome = exercise(ctx, step)
            ctx.finished.append(outcome)
            on_step(list(ctx.finished))
    finally:
        for undo in reversed(ctx.undo):
            cleanup = undo()
            if cleanup is not None:
                ctx.finished.append(cleanup)
    return Rehearsal(sites, ctx.finished, problems)


def refused(run: Mapping[str, Any], reason: str, message: str, ended: dt.datetime) -> Outcome:
    """A run that could not rehearse (plan missing, invalid or not allowed)."""
    record = dict(run)
    record.update(completionTime=iso_ms(ended), result="Failed", reason=reason,
                  message=message[:1024])
    return Outcome(False, reason, message[:1024], record)


def interrupted(run: Mapping[str, Any], ended: dt.datetime) -> Outcome:
    return refused(
        run, "DrillInterrupted",
        "the operator stopped during this DryRun (its drill record, if any, is put back "
        "when found changed); the next run starts afresh", ended,
    )


def iso_ms(time_: dt.datetime) -> str:
    return time_.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def clean_drill_record(drill: FailoverDrill, ports: DrillPorts) -> str | None:
    """After an interrupted run: delete the drill record if it holds the drill's own values
    (an earlier run of this drill left it). Returns what was done, or None."""
    record = drill.drill_record
    if record is None:
        return None
    credentials = None
    try:
        if record.credentials_secret_ref is not None:
            credentials = ports.secrets.data(record.credentials_secret_ref)
        records = Route53Records(ports.route53(record, credentials))
        deadline = ports.monotonic() + RESTORE_TIMEOUT_SECONDS
        current = records.read(record.hosted_zone_id, record.record_name, record.type, deadline)
        if current is None or current != desired_record(record):
            return None
        change_id, status = records.delete(record.hosted_zone_id, current, deadline,
                                           "aegis drill cleanup after an interrupted run")
        records.wait_insync(change_id, deadline, status)
        return f"deleted {current.describe()} left by the interrupted run"
    except Exception as exc:
        known = list(credentials.values()) if credentials else []
        return scrub(f"could not clean the drill record: {type(exc).__name__}: {exc}", known)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def cluster_ports(
    namespace: str,
    prober: SiteProber,
    endpoints: EndpointRule,
    reachable: Sequence[str],
    route53: Route53ClientFactory,
) -> DrillPorts:
    """The operator's ports for a drill of `namespace`: Secrets and workloads through the
    Kubernetes API (bound to the namespace, as a FailoverPlan's are)."""
    return DrillPorts(
        prober=prober,
        secrets=SecretsOfNamespace(namespace),
        workloads=Workloads(namespace, reachable),
        route53=route53,
        endpoints=endpoints,
    )


__all__ = [
    "DRILL_HEADER",
    "DrillPorts",
    "Outcome",
    "Rehearsal",
    "StepOutcome",
    "clean_drill_record",
    "cluster_ports",
    "critical_path_seconds",
    "detection_seconds",
    "interrupted",
    "predicted_rto",
    "refused",
    "rehearse",
    "verdict",
]
