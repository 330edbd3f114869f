"""Restore drills: when a DRDrill runs (its schedule, once, or on request), the Job that
restores its point into a scratch server and checks it, and from the Job's measurements to
the run's verdict (RTO, RPO, objectives), the point's Verified mark and the evidence record.

The first half is pure (deciding, the Job request, the verdict); the second half talks to
the cluster and the bucket and is what the kopf handlers and the drill scheduler call.

Two clocks: `now` decides when scheduled runs are due (injectable, so a test reaches a tick
without waiting); `wall` measures (a run's start, compared with the Job's and the agent's
real timestamps), and is always the real clock in the operator.

One scheduler: the ticks, the catch-up rule and the missed-run count are
`reconcilers.schedule.plan_runs`, the BackupPolicy's own code. A drill never overlaps
itself (a tick that falls due while a run is still going waits for it, like Forbid).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aegis import display, metrics
from aegis.agent.drill import DrillConfig
from aegis.agent.layout import PointRef, drill_evidence_key, normalize_prefix, s3_url
from aegis.api import BACKUP_POLICY, DR_DRILL, FAILOVER_PLAN, RECOVERY_POINT
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.drdrill import DRDrillSpec, DrillObjectives, RestoreDrill
from aegis.api.failoverplan import FailoverPlanSpec
from aegis.k8s import objects
from aegis.k8s.adapters import ApiCluster
from aegis.k8s.jobs import JobRequest, build_job, job_outcome
from aegis.labels import RECOVERY_POINT_ANNOTATION, RUN_ANNOTATION, RUN_START_ANNOTATION
from aegis.locks import KeyedLocks
from aegis.reconcilers import backup, failover_drill, failover_live, naming, schedule, tenancy
from aegis.reconcilers import keys as wrapping
from aegis.reconcilers import restore as restores
from aegis.reconcilers.conditions import ConditionUpdate, find, set_conditions
from aegis.reconcilers.recoverypoint import (
    PointBlocked,
    PolicyContext,
    key_ids,
    load_policy,
    mark_corrupted,
    s3_client_for,
)
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.settings import Settings

logger = logging.getLogger("aegis.drill")

PASSED_CONDITION = "LastDrillPassed"
Trigger = Literal["Scheduled", "Once", "Manual"]
POLL_SECONDS = 30.0
"""While a run is going, ask again this often (the Job's events usually come first)."""


def wire_time(time: dt.datetime) -> str:
    """RFC 3339 UTC keeping sub-second digits: RTO and RPO are differences of these."""
    return time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> dt.datetime | None:
    return backup.parse_time(value) if isinstance(value, str) else None


# --- deciding (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What a drill does now."""

    trigger: Trigger | None = None
    """Start a run now, and why; None: nothing to start."""
    scheduled: dt.datetime | None = None
    """The tick the run belongs to."""
    request: str | None = None
    """The run annotation's value a Manual run answers."""
    handled_until: dt.datetime | None = None
    """New schedule cursor (status.lastScheduleTime)."""
    missed: int = 0
    """Ticks newly given up."""
    next_run_time: dt.datetime | None = None
    """status.nextRunTime."""
    requeue_after: float | None = None
    """Seconds until the clock alone can change the decision; None: only on a change."""


def decide(
    spec: DRDrillSpec,
    namespace: str,
    name: str,
    status: dict[str, Any],
    created: dt.datetime,
    request: str | None,
    now: dt.datetime,
) -> Decision:
    """Whether to start a run at `now` (no run is going). A request (the run annotation with
    a value not acted on yet) runs now; a drill without schedule runs once; a scheduled one
    runs at its ticks after its creation."""
    timing = Decision()
    if spec.schedule is not None:
        since = parse_time(status.get("lastScheduleTime")) or created
        timing = scheduled_decision(spec.schedule, spec.time_zone, since, now)
    if request and request != status.get("lastRunRequest"):
        # A request runs now; a tick due at the same moment is handled by this run too.
        return Decision(
            trigger="Manual",
            scheduled=timing.scheduled,
            request=request,
            handled_until=timing.handled_until,
            missed=timing.missed,
            next_run_time=timing.next_run_time,
            requeue_after=timing.requeue_after,
        )
    if spec.schedule is None and status.get("lastRun") is None:
        return Decision(trigger="Once")
    return timing


def scheduled_decision(
    expression: str, time_zone: str, since: dt.datetime, now: dt.datetime
) -> Decision:
    """The BackupPolicy's rules with no jitter and no starting deadline: of the ticks in
    (since, now] only the latest runs, earlier ones are missed (like a CronJob after an
    outage). The ticks come from `schedule.compile_schedule`, the policies' code, so cron,
    time zones and daylight-saving days behave the same for both kinds."""
    ticks = schedule.compile_schedule(expression, time_zone)
    latest = ticks.previous_tick(now)
    upcoming = ticks.next_tick(now)
    requeue = max(0.0, (upcoming - now).total_seconds())
    if latest <= since:
        return Decision(handled_until=since, next_run_time=upcoming, requeue_after=requeue)
    missed = 0
    for tick in ticks.ticks_after(since):
        if tick >= latest or missed >= schedule.MISSED_COUNT_LIMIT:
            break
        missed += 1
    return Decision(
        trigger="Scheduled",
        scheduled=latest,
        handled_until=latest,
        missed=missed,
        next_run_time=upcoming,
        requeue_after=requeue,
    )


# --- the Job (pure) ---------------------------------------------------------------------------


def point_kind(point: dict[str, Any], policy: BackupPolicySpec) -> Literal["postgres", "redis"]:
    kind = str(((point.get("status") or {}).get("source") or {}).get("kind") or "").lower()
    if kind in ("postgres", "redis"):
        return "postgres" if kind == "postgres" else "redis"
    return "postgres" if policy.source.postgres is not None else "redis"


def command_point_refusal(
    settings: RestoreDrill, point: dict[str, Any], policy: BackupPolicySpec, policy_name: str
) -> tuple[str, str] | None:
    """(reason, message) when the point comes from a `command` source: the drill's agent
    starts scratch PostgreSQL/Redis only, and does not run restore commands yet."""
    kind = str(((point.get("status") or {}).get("source") or {}).get("kind") or "")
    if kind.lower() != "command" and policy.source.command is None:
        return None
    name = point["metadata"]["name"]
    if settings.target is None:
        return (
            "ScratchUnsupported",
            f"RecoveryPoint {name} of policy {policy_name} comes from a command source: a drill "
            "cannot start a scratch server for an arbitrary database (spec.restore has no "
            "target), and drills into a command target are not implemented yet. Prove this "
            "point with a Restore into a spare database (spec.target.command, with verify "
            "commands): docs/command-source.md",
        )
    return (
        "CommandTargetUnsupported",
        f"RecoveryPoint {name} of policy {policy_name} comes from a command source: drills "
        "into spec.restore.target are not implemented for it yet (the drill's agent restores "
        "PostgreSQL and Redis only). Prove this point with a Restore into a spare database "
        "(spec.target.command, with verify commands): docs/command-source.md",
    )


def postgres_major(point: dict[str, Any]) -> int:
    version = str(((point.get("status") or {}).get("source") or {}).get("serverVersion") or "")
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def point_manifest_url(point: dict[str, Any], policy: BackupPolicySpec) -> str:
    """The manifest the point's status records, else where the layout puts it."""
    recorded = restores.manifest_url(point.get("status") or {})
    if recorded:
        return recorded
    meta = point["metadata"]
    ref = PointRef(
        policy.storage.bucket,
        normalize_prefix(policy.storage.prefix),
        meta["namespace"],
        point["spec"]["policyRef"]["name"],
        meta["name"],
    )
    return ref.manifest_url


def drill_config(
    point: dict[str, Any], policy: BackupPolicySpec, settings: RestoreDrill, app: Settings
) -> DrillConfig:
    """The agent's configuration: no secrets (those are env vars from Secrets)."""
    postgres = redis = None
    if settings.target is not None:
        postgres, redis = restores.target_config(settings.target)
    return DrillConfig(
        manifest=point_manifest_url(point, policy),
        storage=backup.store_config(policy.storage, "", app.s3_endpoint),
        kms_keys=wrapping.kms_key_configs(policy, app.kms_endpoint),
        kind=point_kind(point, policy),
        postgres_major=postgres_major(point),
        postgres=postgres,
        redis=redis,
        checks=[c.to_api() for c in settings.verify] if settings.verify else None,
    )


def drill_job_request(
    drill: dict[str, Any],
    spec: RestoreDrill,
    point: dict[str, Any],
    policy: BackupPolicySpec,
    keys: list[str],
    app: Settings,
    job_name: str,
    started: dt.datetime,
) -> JobRequest:
    meta = drill["metadata"]
    point_name = point["metadata"]["name"]
    config = drill_config(point, policy, spec, app)
    secret_env = [
        *backup.s3_secret_env(policy.storage, ""),
        *wrapping.key_secret_env(policy, keys, backup.KEY_ENV_PREFIX),
        *wrapping.kms_secret_env(policy),
    ]
    if spec.target is not None:
        secret_env = [*restores.target_secret_env(spec.target), *secret_env]
    options = restores.restore_job_options(None)
    return JobRequest(
        name=job_name,
        namespace=meta["namespace"],
        labels=naming.drill_job_labels(meta["name"], point_name),
        annotations={
            RECOVERY_POINT_ANNOTATION: point_name,
            RUN_START_ANNOTATION: wire_time(started),
        },
        owner=drill,
        command=[*app.agent_command, "drill"],
        args=["--config-json", config.model_dump_json(by_alias=True, exclude_none=True)],
        image=app.agent_image,
        options=options,
        secret_env=secret_env,
    )


# --- the verdict (pure) -----------------------------------------------------------------------


@dataclass
class Verdict:
    """A finished run: its status record and what it means."""

    passed: bool
    reason: str
    message: str
    run: dict[str, Any] = field(default_factory=dict)

    def condition(self) -> ConditionUpdate:
        return ConditionUpdate(
            PASSED_CONDITION, "True" if self.passed else "False", self.reason, self.message
        )


def _seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds(), 3)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _agent_reason(kind: Any) -> str:
    if kind == "Corrupted":
        return "PointCorrupted"
    if kind in ("CheckFailed", "ChecksFailed"):
        return "CheckFailed"
    if isinstance(kind, str) and kind.isalnum() and kind[:1].isupper():
        return kind
    return "DrillFailed"


def judge(
    run: dict[str, Any],
    job_state: str,
    result: dict[str, Any] | None,
    job_message: str | None,
    objectives: DrillObjectives | None,
    ended: dt.datetime,
) -> Verdict:
    """Fold the ended Job and the agent's result into the run. RTO: the run's start to the
    checks passing (agent's wall clock). RPO: the run's start minus the point's source
    time. Passed only when the Job succeeded, the agent said ok, every check passed and
    both objectives were met."""
    result = result or {}
    point = run.get("recoveryPoint") or "the recovery point"
    start = parse_time(run.get("startTime"))
    record = dict(run)
    record["completionTime"] = wire_time(ended)
    source = parse_time(run.get("sourceTime")) or parse_time(result.get("sourceTime"))
    if source is not None and run.get("sourceTime") is None:
        record["sourceTime"] = wire_time(source)
    rpo = _seconds(start, source)
    if rpo is not None:
        record["rpoSeconds"] = rpo
    checks = [c for c in result.get("checks") or [] if isinstance(c, dict) and c.get("name")]
    if checks:
        record["checks"] = [
            {k: str(v) if k == "value" else v for k, v in c.items() if v is not None}
            for c in checks
        ]
    agent_start = parse_time(result.get("agentStartTime"))
    checks_end = parse_time(result.get("checksEndTime"))
    raw_phases = result.get("phases")
    phases: dict[str, Any] = raw_phases if isinstance(raw_phases, dict) else {}
    breakdown = {
        "queuedSeconds": _seconds(agent_start, start),
        "scratchSeconds": _number(phases.get("scratchSeconds")),
        "downloadAuthenticateSeconds": _number(phases.get("downloadAuthenticateSeconds")),
        "restoreSeconds": _number(phases.get("restoreSeconds")),
        "checksSeconds": _number(phases.get("checksSeconds")),
    }
    if any(v is not None for v in breakdown.values()):
        record["phases"] = {k: v for k, v in breakdown.items() if v is not None}
    rto = _seconds(checks_end, start)
    if rto is not None:
        record["rtoSeconds"] = rto
    record["display"] = display.fields(
        rto=display.duration(rto), rpo=display.duration(record.get("rpoSeconds"))
    )

    def failed(reason: str, message: str) -> Verdict:
        record.update(result="Failed", reason=reason, message=message[:1024])
        return Verdict(False, reason, message[:1024], record)

    bad = [c for c in checks if c.get("result") != "Passed"]
    if job_state == "Missing":
        return failed("JobMissing", job_message or "the drill Job disappeared before it ended")
    if bad:
        named = "; ".join(
            f"check {c['name']} {str(c.get('result', 'Failed')).lower()}"
            + (f": {c['message']}" if c.get("message") else "")
            for c in bad
        )
        return failed("CheckFailed", f"restored {point} but {named}")
    if job_state == "Complete" and "ok" not in result:
        return failed(
            "ResultMissing",
            "the drill Job succeeded but its result (the pod's termination message) is "
            "missing or unreadable; nothing is claimed",
        )
    if job_state != "Complete" or result.get("ok") is not True:
        reason = _agent_reason(result.get("kind"))
        why = (
            str(result["reason"])
            if isinstance(result.get("reason"), str)
            else backup.agent_reason(job_message) or "the drill Job failed"
        )
        if reason == "PointCorrupted":
            return failed(reason, f"RecoveryPoint {point} is corrupted: {why}")
        return failed(reason, f"drill of {point} failed: {why}")
    if rto is None:
        return failed(
            "ResultMissing",
            "the drill Job succeeded but its measurements (the pod's termination message) "
            "are missing; nothing is claimed",
        )
    missed = []
    if (
        objectives is not None
        and objectives.rto_seconds is not None
        and rto > objectives.rto_seconds
    ):
        missed.append(
            ("RTOObjectiveMissed", f"RTO {rto:.1f}s > objective {objectives.rto_seconds}s")
        )
    if (
        objectives is not None
        and objectives.rpo_seconds is not None
        and rpo is not None
        and rpo > objectives.rpo_seconds
    ):
        missed.append(
            ("RPOObjectiveMissed", f"RPO {rpo:.1f}s > objective {objectives.rpo_seconds}s")
        )
    if missed:
        return failed(
            missed[0][0],
            f"restored {point} and its checks passed, but " + "; ".join(m for _, m in missed),
        )
    rpo_text = f", RPO {rpo:.1f}s" if rpo is not None else ""
    message = f"restored {point}, {len(checks)} check(s) passed; RTO {rto:.1f}s{rpo_text}"
    record.update(result="Passed", reason="DrillPassed", message=message)
    return Verdict(True, "DrillPassed", message, record)


def point_verified(verdict: Verdict, agent_ran: bool) -> bool | None:
    """What the run proved about its point: True when it restored and every check passed
    (objectives are the drill's business, not the point's), False when the point's bytes or
    its checks failed, None when nothing was verified (no Job, no scratch server, ...)."""
    if verdict.passed or verdict.reason in ("RTOObjectiveMissed", "RPOObjectiveMissed"):
        return True
    if agent_ran and verdict.reason in ("PointCorrupted", "CheckFailed"):
        return False
    return None


def refused_run(run: dict[str, Any], reason: str, message: str, ended: dt.datetime) -> Verdict:
    """A run that could not start: no usable point, its policy or keys missing."""
    if reason == "RecoveryPointCorrupted":
        reason = "PointCorrupted"
    record = {**run, "completionTime": wire_time(ended), "result": "Failed", "reason": reason}
    record["message"] = message[:1024]
    return Verdict(False, reason, message[:1024], record)


def with_history(
    history: list[dict[str, Any]] | None, run: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    """Finished runs, newest first, at most `limit` (the same run never twice)."""
    kept = [r for r in history or [] if r.get("startTime") != run.get("startTime")]
    return [run, *kept][: max(limit, 0)]


def evidence_record(
    drill: dict[str, Any], spec: DRDrillSpec, policy: str, run: dict[str, Any]
) -> dict[str, Any]:
    """The run as a self-contained JSON document: enough to rebuild the drill's report from
    the bucket alone, in another cluster."""
    meta = drill["metadata"]
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1",
        "kind": "DrillEvidence",
        "namespace": meta["namespace"],
        "drill": meta["name"],
        "policy": policy,
        "type": spec.type,
        "objectives": spec.objectives.to_api() if spec.objectives else {},
        "run": run,
    }


# --- against the cluster ----------------------------------------------------------------------

_locks = KeyedLocks()  # per object: this process's writers of one object take turns
Clock = Callable[[], dt.datetime]


def _patch(
    namespace: str,
    name: str,
    status: dict[str, Any],
    updates: list[ConditionUpdate],
    now: dt.datetime,
) -> dict[str, Any]:
    """Merge-patch the status, conditions recomputed from the current object so that no
    condition written by another path is lost."""
    current = objects.get_custom(DR_DRILL, namespace, name)
    status = dict(status)
    if updates:
        status["conditions"] = set_conditions(
            (current.get("status") or {}).get("conditions"),
            updates,
            generation=current["metadata"].get("generation"),
            now=now,
        )
    status["observedGeneration"] = current["metadata"].get("generation")
    objects.patch_custom_status(DR_DRILL, namespace, name, status)
    current["status"] = {**(current.get("status") or {}), **status}
    return current


def set_ready(namespace: str, name: str, update: ConditionUpdate, wall: Clock) -> None:
    """The Ready condition, written through the same read-modify-write as the runs."""
    with _locks.hold((namespace, name)):
        _patch(namespace, name, {}, [update], wall())


def admit(drill: dict[str, Any], spec: DRDrillSpec, wall: Clock) -> bool:
    """Ready from what the drill's type can do, and the drill's series. True when the
    scheduler should run it."""
    meta = drill["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    when = f"on schedule {spec.schedule} ({spec.time_zone})" if spec.schedule else "once"
    if spec.failover is not None and spec.failover.mode == "Live":
        message = (
            f"Live failover drill of FailoverPlan {spec.failover.plan_ref.name} accepted; runs "
            f"{when}: it really fails over through the plan and back"
        )
    elif spec.failover is not None:
        message = (
            f"DryRun failover drill of FailoverPlan {spec.failover.plan_ref.name} accepted; "
            f"runs {when}"
        )
    else:
        message = f"restore drill accepted; runs {when}"
    set_ready(namespace, name, ConditionUpdate("Ready", "True", "Accepted", message), wall)
    export_objectives(namespace, name, spec)
    export_status(namespace, name, drill.get("status") or {})
    export_schedule(namespace, name, spec, parse_time(meta.get("creationTimestamp")), wall())
    metrics.RESOURCE_READY.labels(DR_DRILL.kind, namespace, name).set(1)
    return True


PortsOf = Callable[[str], failover_drill.DrillPorts]
"""The failover drill ports of a namespace (the operator's: its prober, Secrets, workloads,
Route53 behind its endpoint rule)."""
PolicyDrilled = Callable[[str, str], None]
"""Told (namespace, policy) after a run was recorded on a policy: its status (RecoveryTested)
is refreshed at once instead of at its next period."""


def _no_policy(_namespace: str, _policy: str) -> None:
    return None


def tick(
    namespace: str,
    name: str,
    app: Settings,
    now: dt.datetime,
    wall: Clock,
    failover_ports: PortsOf | None = None,
    policy_drilled: PolicyDrilled = _no_policy,
) -> float | None:
    """What the drill scheduler calls: fold in a run that ended, start one that is due, and
    say when to ask again. A failover drill's run happens here, in this thread (it is I/O
    against the plan's systems, no Job), with the drill's lock released while it runs."""
    with _locks.hold((namespace, name)):
        try:
            drill = objects.get_custom(DR_DRILL, namespace, name)
        except objects.NotFound:
            return None
        parsed = parse_spec(DRDrillSpec, drill.get("spec"))
        if isinstance(parsed, SpecError):
            return None  # refused: its handler reports it
        status = drill.get("status") or {}
        created = parse_time(drill["metadata"].get("creationTimestamp")) or now
        request = (drill["metadata"].get("annotations") or {}).get(RUN_ANNOTATION)
        if parsed.failover is not None:
            if failover_ports is None:
                return None
            ports = failover_ports(namespace)
            if (status.get("lastRun") or {}).get("result") == "Running":
                # Failover runs end within the tick that started them: this one's operator
                # stopped mid-way.
                drill = _interrupted_locked(drill, parsed, ports, app, wall)
                status = drill.get("status") or {}
            decision = decide(parsed, namespace, name, status, created, request, now)
            started = _start_failover_locked(drill, parsed, decision, wall)
            if started is None:
                return decision.requeue_after
        else:
            if (status.get("lastRun") or {}).get("result") == "Running":
                drill = _finish_locked(drill, parsed, app, wall, policy_drilled)
                status = drill.get("status") or {}
                if (status.get("lastRun") or {}).get("result") == "Running":
                    return POLL_SECONDS
            decision = decide(parsed, namespace, name, status, created, request, now)
            _start_locked(drill, parsed, decision, app, wall, policy_drilled)
            return decision.requeue_after
    _run_failover(started, parsed, ports, app, wall)
    return decision.requeue_after


def _start_failover_locked(
    drill: dict[str, Any], spec: DRDrillSpec, decision: Decision, wall: Clock
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Write the run as Running (and the schedule fields), post DrillStarted; None when no
    run is due."""
    meta = drill["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = drill.get("status") or {}
    fields = _schedule_fields(status, decision)
    if _nothing_due(namespace, name, status, fields, decision, wall):
        return None
    assert spec.failover is not None
    started = wall()
    plan = spec.failover.plan_ref.name
    live = spec.failover.mode == "Live"
    run: dict[str, Any] = {
        "startTime": wire_time(started), "trigger": decision.trigger, "plan": plan,
        "result": "Running",
        "message": f"Live failover drill of FailoverPlan {plan}: checking the plan is idle"
        if live else f"DryRun of FailoverPlan {plan}: probing and checking every step",
    }
    if decision.scheduled is not None and decision.trigger == "Scheduled":
        run["scheduledTime"] = wire_time(decision.scheduled)
    current = _patch(namespace, name, {**fields, "lastRun": run}, [], wall())
    objects.post_event(
        drill, "Normal", "DrillStarted",
        f"{decision.trigger} Live failover drill of FailoverPlan {plan} started: it fails "
        "over and back for real" if live else
        f"{decision.trigger} DryRun failover drill of FailoverPlan {plan} started: nothing "
        "live is changed",
    )
    return current, run


def _run_failover(
    started: tuple[dict[str, Any], dict[str, Any]],
    spec: DRDrillSpec,
    ports: failover_drill.DrillPorts,
    app: Settings,
    wall: Clock,
) -> None:
    """Rehearse the plan (outside the drill's lock), then record the verdict."""
    drill, run = started
    meta = drill["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    assert spec.failover is not None
    plan_name = spec.failover.plan_ref.name
    outcome: failover_drill.Outcome
    try:
        body = objects.get_custom(FAILOVER_PLAN, namespace, plan_name)
    except objects.NotFound:
        outcome = failover_drill.refused(
            run, "PlanNotFound",
            f"FailoverPlan {plan_name} not found in {namespace}: fix spec.failover.planRef",
            wall(),
        )
    else:
        plan = parse_spec(FailoverPlanSpec, body.get("spec"))
        refusal = tenancy.refusal(plan, namespace, app) if not isinstance(plan, SpecError) else None
        if isinstance(plan, SpecError):
            outcome = failover_drill.refused(
                run, "PlanInvalid", f"FailoverPlan {plan_name} is invalid: {plan.message}", wall()
            )
        elif refusal is not None:
            outcome = failover_drill.refused(
                run, refusal.reason,
                f"FailoverPlan {plan_name} reaches outside its namespace: {refusal.message}",
                wall(),
            )
        elif spec.failover.mode == "Live":
            outcome = failover_live.run_live(
                run, plan, spec.failover, namespace, plan_name, name, spec.objectives,
                live_ports(namespace, name, plan_name, wall),
            )
        else:
            rehearsal = failover_drill.rehearse(
                plan, spec.failover, namespace, plan_name, name, ports
            )
            outcome = failover_drill.verdict(run, plan, rehearsal, spec.objectives, wall())
    verdict = Verdict(outcome.passed, outcome.reason, outcome.message, outcome.record)
    with _locks.hold((namespace, name)):
        try:
            current = objects.get_custom(DR_DRILL, namespace, name)
        except objects.NotFound:
            return
        _record(current, spec, verdict, {}, None, app, wall, _no_policy)


def live_ports(
    namespace: str, name: str, plan_name: str, wall: Clock
) -> failover_live.LivePorts:
    """A Live run's view of its plan and of itself, through the Kubernetes API."""

    def read_plan() -> dict[str, Any] | None:
        try:
            return objects.get_custom(FAILOVER_PLAN, namespace, plan_name)
        except objects.NotFound:
            return None

    def annotate_plan(annotations: dict[str, str]) -> None:
        objects.annotate_custom(FAILOVER_PLAN, namespace, plan_name, dict(annotations))

    def drill_annotations() -> dict[str, str]:
        try:
            body = objects.get_custom(DR_DRILL, namespace, name)
        except objects.NotFound:
            return {}
        return dict(body["metadata"].get("annotations") or {})

    def progress(run: dict[str, Any]) -> None:
        with _locks.hold((namespace, name)):
            try:
                _patch(namespace, name, {"lastRun": run}, [], wall())
            except objects.NotFound:
                pass

    return failover_live.LivePorts(
        read_plan=read_plan, annotate_plan=annotate_plan,
        drill_annotations=drill_annotations, progress=progress, wall=wall,
    )


def _interrupted_locked(
    drill: dict[str, Any],
    spec: DRDrillSpec,
    ports: failover_drill.DrillPorts,
    app: Settings,
    wall: Clock,
) -> dict[str, Any]:
    assert spec.failover is not None
    run = dict((drill.get("status") or {}).get("lastRun") or {})
    if spec.failover.mode == "Live":
        outcome = failover_drill.refused(
            run, "DrillInterrupted",
            f"the operator stopped during this Live drill: FailoverPlan "
            f"{spec.failover.plan_ref.name} may be failed over or mid-way; check kubectl aegis "
            "failover status and fail back by hand if needed", wall(),
        )
        verdict = Verdict(False, outcome.reason, outcome.message, outcome.record)
        return _record(drill, spec, verdict, {}, None, app, wall, _no_policy)
    outcome = failover_drill.interrupted(run, wall())
    cleaned = failover_drill.clean_drill_record(spec.failover, ports)
    message = outcome.message + (f"; {cleaned}" if cleaned else "")
    outcome.record["message"] = message[:1024]
    verdict = Verdict(False, outcome.reason, message[:1024], outcome.record)
    return _record(drill, spec, verdict, {}, None, app, wall, _no_policy)


def _schedule_fields(status: dict[str, Any], decision: Decision) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if decision.next_run_time is not None:
        fields["nextRunTime"] = wire_time(decision.next_run_time)
    if decision.handled_until is not None:
        fields["lastScheduleTime"] = wire_time(decision.handled_until)
    if decision.missed:
        fields["missedRuns"] = int(status.get("missedRuns") or 0) + decision.missed
    if decision.request is not None:
        fields["lastRunRequest"] = decision.request
    return fields


def _nothing_due(
    namespace: str,
    name: str,
    status: dict[str, Any],
    fields: dict[str, Any],
    decision: Decision,
    wall: Clock,
) -> bool:
    """True when the decision starts no run; the schedule fields are written if they moved."""
    if decision.trigger is not None:
        return False
    if any(status.get(k) != v for k, v in fields.items()):
        _patch(namespace, name, fields, [], wall())
    return True


def _start_locked(
    drill: dict[str, Any],
    spec: DRDrillSpec,
    decision: Decision,
    app: Settings,
    wall: Clock,
    policy_drilled: PolicyDrilled = _no_policy,
) -> None:
    meta = drill["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = drill.get("status") or {}
    fields = _schedule_fields(status, decision)
    if _nothing_due(namespace, name, status, fields, decision, wall):
        return
    assert spec.restore is not None
    started = wall()
    run: dict[str, Any] = {"startTime": wire_time(started), "trigger": decision.trigger}
    if decision.scheduled is not None and decision.trigger == "Scheduled":
        run["scheduledTime"] = wire_time(decision.scheduled)
    job_name = naming.drill_job_name(name, run_identity(decision, drill, started))
    try:
        point = restores.resolve_point(ApiCluster(), namespace, spec.restore)
        run["recoveryPoint"] = point["metadata"]["name"]
        source = (point.get("status") or {}).get("sourceTime")
        if source:
            run["sourceTime"] = source
        cluster = ApiCluster()
        policy = load_policy(cluster, namespace, point["spec"]["policyRef"]["name"])
        refusal = command_point_refusal(
            spec.restore, point, policy.spec, point["spec"]["policyRef"]["name"]
        )
        if refusal is not None:
            raise restores.RestoreRefused(*refusal)
        request = drill_job_request(
            drill, spec.restore, point, policy.spec, key_ids(cluster, policy), app, job_name,
            started,
        )
        job, created = objects.create_job(namespace, build_job(request))
        if not created:
            # Made before a crash, its run never recorded: that run is this one, with the
            # start and the point the Job was made for.
            adopted = adopted_run(job, run)
            if "recoveryPoint" in adopted:
                # Another point than resolved now: its source time comes from the agent's
                # result (the point's manifest) when the run is judged.
                run.pop("sourceTime", None)
            run.update(adopted)
    except (PointBlocked, restores.RestoreRefused) as problem:
        verdict = refused_run(run, problem.reason, problem.message, wall())
        _record(drill, spec, verdict, fields, None, app, wall, policy_drilled)
        return
    run.update(
        result="Running",
        jobName=job_name,
        message=f"drill Job {job_name} restores {run['recoveryPoint']}",
    )
    _patch(namespace, name, {**fields, "lastRun": run}, [], wall())
    objects.post_event(
        drill,
        "Normal",
        "DrillStarted",
        f"{decision.trigger} drill run started: Job {job_name} restores RecoveryPoint "
        f"{run['recoveryPoint']}",
    )


def adopted_run(job: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The run fields an existing Job of this run proves (its annotations)."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    fields: dict[str, Any] = {}
    start = parse_time(annotations.get(RUN_START_ANNOTATION))
    if start is not None:
        fields["startTime"] = wire_time(start)
    point = annotations.get(RECOVERY_POINT_ANNOTATION)
    if point and point != run.get("recoveryPoint"):
        fields["recoveryPoint"] = point
    return fields


def run_identity(decision: Decision, drill: dict[str, Any], started: dt.datetime) -> dt.datetime:
    """What names a run's Job: its tick, or for a run-once drill its creation, so a create
    retried after a crash (Job made, status not yet written) gets the same Job back. A run
    on request is named by its start."""
    if decision.trigger == "Scheduled" and decision.scheduled is not None:
        return decision.scheduled
    created = parse_time(drill["metadata"].get("creationTimestamp"))
    if decision.trigger == "Once" and created is not None:
        return created
    return started


def finish(
    namespace: str,
    name: str,
    app: Settings,
    wall: Clock,
    policy_drilled: PolicyDrilled = _no_policy,
) -> bool:
    """Fold an ended drill Job into its drill; True when a run was finished."""
    with _locks.hold((namespace, name)):
        try:
            drill = objects.get_custom(DR_DRILL, namespace, name)
        except objects.NotFound:
            return False
        parsed = parse_spec(DRDrillSpec, drill.get("spec"))
        if isinstance(parsed, SpecError):
            return False
        running = (drill.get("status") or {}).get("lastRun") or {}
        if running.get("result") != "Running":
            return False
        after = _finish_locked(drill, parsed, app, wall, policy_drilled)
        return ((after.get("status") or {}).get("lastRun") or {}).get("result") != "Running"


def _finish_locked(
    drill: dict[str, Any],
    spec: DRDrillSpec,
    app: Settings,
    wall: Clock,
    policy_drilled: PolicyDrilled = _no_policy,
) -> dict[str, Any]:
    meta = drill["metadata"]
    namespace = meta["namespace"]
    run = dict((drill.get("status") or {}).get("lastRun") or {})
    job_name = run.get("jobName")
    job = objects.get_job(namespace, job_name) if job_name else None
    state = job_outcome(job)
    if state == "Running":
        return drill
    result = None
    job_message = None
    if state == "Missing":
        job_message = f"drill Job {job_name} disappeared before the operator saw it end"
    else:
        termination = objects.job_result_message(namespace, str(job_name))
        result = restores.parse_result(termination)
        failed = find(((job or {}).get("status") or {}).get("conditions"), "Failed")
        job_message = termination or (failed or {}).get("message")
    _started, ended = restores.job_times(job)
    verdict = judge(run, state, result, job_message, spec.objectives, ended or wall())
    return _record(drill, spec, verdict, {}, result, app, wall, policy_drilled)


def _record(
    drill: dict[str, Any],
    spec: DRDrillSpec,
    verdict: Verdict,
    fields: dict[str, Any],
    result: dict[str, Any] | None,
    app: Settings,
    wall: Clock,
    policy_drilled: PolicyDrilled,
) -> dict[str, Any]:
    """Write a finished run: evidence in the bucket, status, the point's mark, metrics and an
    event. The evidence goes first so that status can point at it."""
    meta = drill["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    run = verdict.run
    point_name = run.get("recoveryPoint")
    policy = _policy_of(namespace, spec, point_name)
    if policy is not None:
        url = _write_evidence(drill, spec, policy, run, app)
        if url is not None:
            run["evidence"] = url
    # The point's mark before the drill's verdict: whoever sees the verdict sees the mark.
    if point_name and verdict.passed:
        _mark_verified(namespace, point_name, name, run, wall())
    elif point_name and verdict.reason == "PointCorrupted" and result is not None:
        # Only the agent's own authentication failure proves corruption (a point refused
        # because it is already Corrupted is left as it is).
        mark_corrupted(
            ApiCluster(), namespace, point_name, "Corrupted",
            f"drill/{name}: {verdict.message}", wall(),
        )
    status = drill.get("status") or {}
    history = with_history(status.get("history"), run, spec.history_limit)
    current = _patch(
        namespace,
        name,
        {**fields, "lastRun": run, "history": history},
        [verdict.condition()],
        wall(),
    )
    if policy is not None and run.get("recoveryPoint"):
        if _record_on_policy(policy, name, run):
            policy_drilled(policy.namespace, policy.name)
        verified = point_verified(verdict, result is not None)
        if verified is not None:
            metrics.verification_ended(namespace, policy.name, passed=verified)
    _export(namespace, name, spec, verdict)
    objects.post_event(
        current,
        "Normal" if verdict.passed else "Warning",
        "DrillPassed" if verdict.passed else verdict.reason,
        verdict.message,
    )
    log = logger.info if verdict.passed else logger.warning
    log("Drill %s/%s: %s", namespace, name, verdict.message)
    return current


def policy_drill(drill: str, run: dict[str, Any]) -> dict[str, Any]:
    """The policy's `status.lastDrill` from a finished run, as a merge patch: every field of
    the run is written (None removes what an earlier run left), and a passed run also sets
    lastPassedTime/lastPassedDrill, which a failed run leaves as they are."""
    fields: dict[str, Any] = {
        "drill": drill,
        "time": run.get("completionTime"),
        "result": run.get("result"),
        "reason": run.get("reason"),
        "rtoSeconds": run.get("rtoSeconds"),
        "rpoSeconds": run.get("rpoSeconds"),
        "recoveryPoint": run.get("recoveryPoint"),
        "display": run.get("display"),
    }
    if run.get("result") == "Passed" and run.get("completionTime"):
        fields["lastPassedTime"] = run["completionTime"]
        fields["lastPassedDrill"] = drill
    return fields


def _record_on_policy(policy: PolicyContext, drill: str, run: dict[str, Any]) -> bool:
    """Show the run on its policy (the proven RTO next to the RPO), unless a later run of
    another drill is there already. Best effort: the drill's own status is the record.
    True when written."""
    try:
        current = objects.get_custom(BACKUP_POLICY, policy.namespace, policy.name)
        shown = (current.get("status") or {}).get("lastDrill") or {}
        fields = policy_drill(drill, run)
        if str(shown.get("time") or "") > str(run.get("completionTime") or ""):
            if "lastPassedTime" not in fields or str(
                shown.get("lastPassedTime") or ""
            ) >= fields["lastPassedTime"]:
                return False
            # A later failed run is shown, but this pass is the newest pass: keep both.
            fields = {"lastPassedTime": fields["lastPassedTime"], "lastPassedDrill": drill}
        objects.patch_custom_status(
            BACKUP_POLICY, policy.namespace, policy.name, {"lastDrill": fields}
        )
        return True
    except Exception as error:  # the policy gone, the API refusing: the drill's record stands
        logger.warning("lastDrill not recorded on BackupPolicy %s: %s", policy.name, error)
        return False


def _policy_of(namespace: str, spec: DRDrillSpec, point_name: str | None) -> PolicyContext | None:
    if spec.restore is None:
        return None  # a failover drill restores no policy's point
    policy_name = spec.restore.policy_ref.name if spec.restore.policy_ref else None
    if policy_name is None and point_name:
        try:
            point = objects.get_custom(RECOVERY_POINT, namespace, point_name)
            policy_name = point["spec"]["policyRef"]["name"]
        except objects.NotFound:
            return None
    if policy_name is None:
        return None
    try:
        return load_policy(ApiCluster(), namespace, policy_name)
    except PointBlocked:
        return None


def _write_evidence(
    drill: dict[str, Any],
    spec: DRDrillSpec,
    policy: PolicyContext,
    run: dict[str, Any],
    app: Settings,
) -> str | None:
    """The run's record next to the policy's points. Best effort: a bucket that refuses the
    write leaves the run's status without an evidence URL (never a claimed one)."""
    start = parse_time(run.get("startTime"))
    if start is None:
        return None
    storage = policy.spec.storage
    key = drill_evidence_key(
        storage.prefix, policy.namespace, policy.name, drill["metadata"]["name"],
        naming.format_tick(start),
    )  # fmt: skip
    body = json.dumps(evidence_record(drill, spec, policy.name, run), indent=2, sort_keys=True)
    try:
        client = s3_client_for(ApiCluster(), storage, policy.namespace, app)
        client.put_object(
            Bucket=storage.bucket, Key=key, Body=body.encode(), ContentType="application/json"
        )
    except Exception as error:  # boto3's errors and missing credentials alike
        logger.warning(
            "Drill evidence not written to s3://%s/%s: %s",
            storage.bucket,
            key,
            type(error).__name__,
        )
        return None
    return s3_url(storage.bucket, key)


def _mark_verified(
    namespace: str, point_name: str, drill: str, run: dict[str, Any], now: dt.datetime
) -> None:
    """A passed drill proves its point restores: status.verification and Verified=True."""
    try:
        point = objects.get_custom(RECOVERY_POINT, namespace, point_name)
    except objects.NotFound:
        return
    checks = run.get("checks") or []
    verification: dict[str, Any] = {
        "time": wire_time(now),
        "result": "Passed",
        "checks": checks,
        "by": f"drill/{drill}",
    }
    restore_seconds = (run.get("phases") or {}).get("restoreSeconds")
    if restore_seconds is not None:
        verification["restoreSeconds"] = restore_seconds
    message = f"drill/{drill} restored it into a scratch server and {len(checks)} check(s) passed"
    conditions = set_conditions(
        (point.get("status") or {}).get("conditions"),
        [ConditionUpdate("Verified", "True", "DrillPassed", message)],
        generation=point["metadata"].get("generation"),
        now=now,
    )
    objects.patch_custom_status(
        RECOVERY_POINT,
        namespace,
        point_name,
        {"verification": verification, "conditions": conditions},
    )


def _export(namespace: str, name: str, spec: DRDrillSpec, verdict: Verdict) -> None:
    metrics.DRILL_RUNS.labels(
        namespace, name, "Passed" if verdict.passed else "Failed", verdict.reason
    ).inc()
    export_status(namespace, name, {"lastRun": verdict.run})
    export_objectives(namespace, name, spec)


def export_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """The last-run gauges from a drill's status (also after an operator restart, so the
    alerts' series do not vanish until the next run)."""
    finished = [
        r
        for r in [status.get("lastRun") or {}, *(status.get("history") or [])]
        if r.get("result") in ("Passed", "Failed")
    ]
    if not finished:
        return
    last = finished[0]
    metrics.DRILL_LAST_PASSED.labels(namespace, name).set(1 if last["result"] == "Passed" else 0)
    if last.get("rtoSeconds") is not None:
        metrics.DRILL_LAST_RTO.labels(namespace, name).set(last["rtoSeconds"])
    if last.get("rpoSeconds") is not None:
        metrics.DRILL_LAST_RPO.labels(namespace, name).set(last["rpoSeconds"])
    success = next(
        (parse_time(r.get("completionTime")) for r in finished if r["result"] == "Passed"), None
    )
    if success is not None:
        metrics.DRILL_LAST_SUCCESS.labels(namespace, name).set(success.timestamp())


def schedule_interval(spec: DRDrillSpec, now: dt.datetime) -> float | None:
    """Seconds between the drill's next two ticks (what "overdue" is measured in)."""
    if spec.schedule is None:
        return None
    ticks = schedule.compile_schedule(spec.schedule, spec.time_zone)
    upcoming = ticks.next_tick(now)
    return (ticks.next_tick(upcoming) - upcoming).total_seconds()


def export_schedule(
    namespace: str, name: str, spec: DRDrillSpec, created: dt.datetime | None, now: dt.datetime
) -> None:
    """The series the overdue alert reads: the drill's interval and its creation time."""
    interval = schedule_interval(spec, now)
    if interval is None:
        _remove(metrics.DRILL_INTERVAL, namespace, name)
    else:
        metrics.DRILL_INTERVAL.labels(namespace, name).set(interval)
    if created is not None:
        metrics.DRILL_CREATED.labels(namespace, name).set(created.timestamp())


def _remove(gauge: Any, namespace: str, name: str) -> None:
    try:
        gauge.remove(namespace, name)
    except KeyError:
        pass


def export_objectives(namespace: str, name: str, spec: DRDrillSpec) -> None:
    objectives = spec.objectives or DrillObjectives()
    for gauge, value in (
        (metrics.DRILL_RTO_OBJECTIVE, objectives.rto_seconds),
        (metrics.DRILL_RPO_OBJECTIVE, objectives.rpo_seconds),
    ):
        if value is None:
            _remove(gauge, namespace, name)
        else:
            gauge.labels(namespace, name).set(value)


def forget_metrics(namespace: str, name: str) -> None:
    for gauge in (
        metrics.DRILL_LAST_RTO,
        metrics.DRILL_LAST_RPO,
        metrics.DRILL_RTO_OBJECTIVE,
        metrics.DRILL_RPO_OBJECTIVE,
        metrics.DRILL_LAST_SUCCESS,
        metrics.DRILL_LAST_PASSED,
        metrics.DRILL_INTERVAL,
        metrics.DRILL_CREATED,
    ):
        _remove(gauge, namespace, name)
