"""Failover drills in Live mode: a real failover and failback, through the FailoverPlan's own
public triggers, with the write outage and the data lost read from what the plan measured.

The drill never runs a step itself. It asks the plan, as a person would with
`kubectl aegis failover trigger|failback`, by the dr.aegis.dev/failover and
dr.aegis.dev/failback annotations, and follows the plan's status:

1. the plan must be idle (Monitoring, the primary site serving) with both sites healthy;
2. approval: a plan that needs it (mode Manual, or approval.required) waits for the
   drill's dr.aegis.dev/approve annotation carrying the run's `approvalToken`, at most
   `approvalTimeoutSeconds` (ApprovalTimeout). A plan deciding only through
   FailoverApproval objects ignores annotations, so a Live drill cannot drive it
   (ApprovalRequired, before anything changes);
3. failover: the trigger, then the plan's Failover transition followed until it settles;
4. failback readiness: with a switchover in the plan's failbackSteps, the old primary must
   be a caught-up replica of the new one (re-attached by your tooling; the plan's probes say
   so), at most `failbackReadyTimeoutSeconds`;
5. failback: the trigger, then the Failback transition followed until it settles, and the
   plan must be Monitoring on its primary site again.

Measured, never guessed: the write outage is the switchover step's own measurement (fence
of the old primary to the new one verified writable) or, for a promote step, that step's
start (when it fences) to its completion (the promoted server took a write), an upper bound;
`writeOutageSource` says which. The data lost is the step's lag in bytes at promotion (the
WAL between the fenced primary's final position and what the standby had). A quantity
that is not in the transition makes the run fail `NotMeasured`, never pass.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aegis import display
from aegis.api.drdrill import DrillObjectives, FailoverDrill
from aegis.api.failoverplan import FailoverPlanSpec, FailoverPlanStatus, Step, Transition
from aegis.labels import APPROVE_ANNOTATION, FAILBACK_ANNOTATION, FAILOVER_ANNOTATION
from aegis.reconcilers.failover_drill import Outcome, iso_ms, step_action

POLL_SECONDS = 0.5
"""How often a Live run reads the plan (and the drill, for its approval)."""
REFUSED_AFTER_SECONDS = 30.0
"""A trigger the plan consumed without starting a transition within this long was refused
(the plan's Warning event says why)."""
TRANSITION_MARGIN_SECONDS = 120.0
"""Added to the sum of the steps' timeouts when waiting for a transition to settle."""


@dataclass(frozen=True)
class LivePorts:
    """The outside world as a Live failover drill sees it: the plan, through the API."""

    read_plan: Callable[[], dict[str, Any] | None]
    """The FailoverPlan object (None when gone)."""
    annotate_plan: Callable[[dict[str, str]], None]
    """Set trigger annotations on the plan."""
    drill_annotations: Callable[[], Mapping[str, str]]
    """The drill's annotations now (for its approval)."""
    progress: Callable[[dict[str, Any]], None]
    """Publish the Running run (status.lastRun)."""
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    sleep: Callable[[float], None] = time.sleep
    new_token: Callable[[], str] = lambda: secrets.token_hex(8)
    poll_seconds: float = POLL_SECONDS


class _Stop(Exception):
    """The run ends here with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Run:
    namespace: str
    drill_name: str
    plan_name: str
    plan: FailoverPlanSpec
    drill: FailoverDrill
    ports: LivePorts
    record: dict[str, Any]
    phases: dict[str, float] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)

    def publish(self, message: str, reason: str | None = None) -> None:
        self.record["message"] = message[:1024]
        if reason is not None:
            self.record["reason"] = reason
        self.record["phases"] = dict(self.phases)
        if self.steps:
            self.record["steps"] = list(self.steps)
        if self.transitions:
            self.record["transitions"] = list(self.transitions)
        self.ports.progress(dict(self.record))

    def status(self) -> tuple[FailoverPlanStatus, Mapping[str, str]]:
        body = self.ports.read_plan()
        if body is None:
            raise _Stop("PlanNotFound", f"FailoverPlan {self.plan_name} was deleted during "
                        "the drill")
        status = FailoverPlanStatus.model_validate(body.get("status") or {})
        return status, (body.get("metadata") or {}).get("annotations") or {}


# --------------------------------------------------------------------------- pure


def needs_approval(plan: FailoverPlanSpec) -> bool:
    return plan.mode == "Manual" or bool(plan.approval is not None and plan.approval.required)


def transition_budget(steps: list[Step] | None) -> float:
    return float(sum(s.timeout_seconds for s in steps or [])) + TRANSITION_MARGIN_SECONDS


def has_switchover(steps: list[Step] | None) -> bool:
    return any(s.postgres_switchover or s.redis_switchover for s in steps or [])


def write_outage(
    plan_steps: list[Step] | None, transition: Transition
) -> tuple[float | None, str]:
    """(seconds, source) of a settled failover's write outage; (None, why) when the
    transition does not hold it."""
    if transition.write_outage_seconds is not None:
        return float(transition.write_outage_seconds), "switchoverStep"
    promotes = {s.name for s in plan_steps or [] if s.postgres_promote or s.redis_promote}
    spans = [
        (s.completion_time - s.start_time).total_seconds()
        for s in transition.steps or []
        if s.name in promotes and s.state == "Succeeded"
        and s.start_time is not None and s.completion_time is not None
    ]
    if spans:
        return round(max(spans), 3), "promoteStepTimings"
    return None, ("the failover's steps recorded no write outage (no switchover step, and no "
                  "promote step with a start and completion time)")


def transition_steps(
    prefix: str, plan_steps: list[Step] | None, transition: Transition
) -> list[dict[str, Any]]:
    """The plan's step statuses as the drill's steps (wire form of DrillStep)."""
    actions = {s.name: step_action(s) for s in plan_steps or []}
    found: list[dict[str, Any]] = []
    for step in transition.steps or []:
        result = {"Succeeded": "Passed", "Failed": "Failed"}.get(step.state, "NotExercised")
        entry: dict[str, Any] = {
            "name": f"{prefix}/{step.name}", "action": actions.get(step.name, "route53"),
            "result": result, "message": (step.message or step.state)[:512],
        }
        if step.start_time is not None and step.completion_time is not None:
            entry["seconds"] = round((step.completion_time - step.start_time).total_seconds(), 3)
        if step.outputs:
            entry["outputs"] = {k: v for k, v in step.outputs.items()
                                if k in ("lagBytes", "lagSeconds", "writeOutageSeconds",
                                         "finalLsn", "changeId")}
        found.append(entry)
    return found


# --------------------------------------------------------------------------- the run


def run_live(
    run: Mapping[str, Any],
    plan: FailoverPlanSpec,
    drill: FailoverDrill,
    namespace: str,
    plan_name: str,
    drill_name: str,
    objectives: DrillObjectives | None,
    ports: LivePorts,
) -> Outcome:
    """Fail over and back through the plan; the run's record and verdict. Never raises for
    what the plan does; a failure after the failover still tries the failback."""
    r = _Run(namespace, drill_name, plan_name, plan, drill, ports, dict(run))
    measured: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    try:
        _check_idle(r)
        _approve(r)
        failover = _transition(r, "Failover")
        if failover.result != "Succeeded":
            raise _Stop("FailoverFailed", f"the plan's failover {failover.id} failed: "
                        f"{_failed_steps(failover)}; the plan is in state Failed (kubectl "
                        f"aegis failover status {plan_name} -n {namespace})")
        measured["outage"], measured["source"] = write_outage(plan.steps, failover)
        measured["lost"] = failover.lag_bytes
        try:
            _failback_ready(r)
            failback = _transition(r, "Failback")
            if failback.result != "Succeeded":
                raise _Stop("FailbackFailed", f"the plan's failback {failback.id} failed: "
                            f"{_failed_steps(failback)}; the plan stays failed over")
            status, _ = r.status()
            if status.active_site not in (None, "primary") or status.state != "Monitoring":
                raise _Stop("FailbackFailed", f"after the failback the plan is "
                            f"{status.state} on its {status.active_site} site, not "
                            "Monitoring on its primary")
            measured["failbackLost"] = failback.lag_bytes
        except _Stop as stop:
            problems.append(("FailbackFailed", f"{stop.reason}: {stop.message}"
                             if stop.reason != "FailbackFailed" else stop.message))
    except _Stop as stop:
        return _finish(r, objectives, [(stop.reason, stop.message)], measured)
    return _finish(r, objectives, problems, measured)


def _check_idle(r: _Run) -> None:
    status, annotations = r.status()
    state = status.state or "Monitoring"
    if state != "Monitoring" or status.active_site == "secondary":
        raise _Stop("PlanNotIdle", f"FailoverPlan {r.plan_name} is {state} (active site "
                    f"{status.active_site or 'primary'}): a Live drill starts only from "
                    "Monitoring on the primary site")
    pending = [a for a in (FAILOVER_ANNOTATION, FAILBACK_ANNOTATION, APPROVE_ANNOTATION)
               if a in annotations]
    if pending:
        raise _Stop("PlanNotIdle", f"FailoverPlan {r.plan_name} has a pending trigger "
                    f"({', '.join(pending)})")
    for key, site in (("primary", r.plan.primary), ("secondary", r.plan.secondary)):
        seen = (status.sites or {}).get(key)
        if seen is None or seen.healthy is not True:
            bad = [c.name for c in (seen.checks or []) if not c.ok] if seen else []
            raise _Stop(f"{key.capitalize()}Unhealthy",
                        f"the {key} site {site.name} is not healthy in the plan's status"
                        + (f" (failing: {', '.join(bad)})" if bad else " (not probed yet)"))
    if r.plan.approval is not None and r.plan.approval.by == "FailoverApproval":
        raise _Stop("ApprovalRequired",
                    f"FailoverPlan {r.plan_name} decides only through FailoverApproval "
                    "objects and ignores trigger annotations, so a Live drill cannot drive it; "
                    "use mode DryRun, or approval.by: Annotation")


def _approve(r: _Run) -> None:
    ports = r.ports
    if not needs_approval(r.plan):
        r.phases["approvalSeconds"] = 0.0
        return
    token = ports.new_token()
    r.record["approvalToken"] = token
    r.publish(
        f"AwaitingApproval: FailoverPlan {r.plan_name} needs approval (mode "
        f"{r.plan.mode}); this drill really fails over and back. Approve with kubectl annotate "
        f"drdrill {r.drill_name} -n {r.namespace} {APPROVE_ANNOTATION}={token} within "
        f"{r.drill.approval_timeout_seconds}s", "AwaitingApproval",
    )
    started = ports.monotonic()
    deadline = started + r.drill.approval_timeout_seconds
    approved = False
    try:
        while True:
            given = str(ports.drill_annotations().get(APPROVE_ANNOTATION, "")).strip()
            if given and secrets.compare_digest(given, token):
                approved = True
                break
            if ports.monotonic() >= deadline:
                raise _Stop("ApprovalTimeout",
                            f"no approval ({APPROVE_ANNOTATION}={token} on the drill) within "
                            f"{r.drill.approval_timeout_seconds}s; nothing was changed")
            ports.sleep(ports.poll_seconds)
    finally:
        # the token is spent either way: removed from status (a merge patch with null)
        r.phases["approvalSeconds"] = round(ports.monotonic() - started, 3)
        r.record["approvalToken"] = None
        r.publish("approved" if approved else "approval timed out", "Approved" if approved
                  else "ApprovalTimeout")
        r.record.pop("approvalToken", None)


def _known_ids(status: FailoverPlanStatus) -> set[str]:
    return {t.id or "" for t in [status.last_transition, *(status.history or [])]
            if t is not None}


def _transition(r: _Run, kind: str) -> Transition:
    """Trigger `kind` on the plan and follow its transition until it settles."""
    ports = r.ports
    steps = r.plan.steps if kind == "Failover" else r.plan.failback_steps
    annotation = FAILOVER_ANNOTATION if kind == "Failover" else FAILBACK_ANNOTATION
    status, _ = r.status()
    known = _known_ids(status)
    phase = "failoverSeconds" if kind == "Failover" else "failbackSeconds"
    r.publish(f"{kind}: triggering FailoverPlan {r.plan_name} ({annotation})")
    started = ports.monotonic()
    ports.annotate_plan({annotation: f"Live failover drill {r.namespace}/{r.drill_name}"})
    deadline = started + transition_budget(steps)
    seen: Transition | None = None
    while True:
        status, annotations = r.status()
        current = status.last_transition
        if current is not None and current.kind == kind and (current.id or "") not in known:
            if seen is None:
                r.transitions.append(current.id or "")
                r.publish(f"{kind}: the plan runs transition {current.id}")
            seen = current
            if current.result in ("Succeeded", "Failed"):
                r.phases[phase] = round(ports.monotonic() - started, 3)
                r.steps.extend(transition_steps(kind.lower(), steps, current))
                return current
        elif annotation not in annotations and \
                ports.monotonic() - started > REFUSED_AFTER_SECONDS:
            raise _Stop(f"{kind}Refused" if kind == "Failover" else "FailbackFailed",
                        f"FailoverPlan {r.plan_name} consumed {annotation} without starting a "
                        f"{kind} (its Warning event says why; state {status.state})")
        if ports.monotonic() >= deadline:
            raise _Stop(f"{kind}Failed", f"the plan's {kind} did not settle within "
                        f"{transition_budget(steps):g}s (state {status.state})")
        ports.sleep(ports.poll_seconds)


def _failback_ready(r: _Run) -> None:
    """Wait until the plan could fail back: FailedOver, and with a switchover failback the
    old primary a caught-up replica of the new one (the plan's probes say so)."""
    ports = r.ports
    switchover = has_switchover(r.plan.failback_steps)
    started = ports.monotonic()
    deadline = started + r.drill.failback_ready_timeout_seconds
    r.publish(
        "FailedOver; waiting for the plan to be able to fail back"
        + (": its failback is a switchover, so the old primary must be re-attached as a "
           "caught-up replica of the new one (your tooling does that)" if switchover else "")
    )
    why = ""
    while True:
        status, _ = r.status()
        rep = ((status.sites or {}).get("primary") or None)
        replication = rep.replication if rep is not None else None
        if status.state != "FailedOver":
            why = f"the plan is {status.state}, not FailedOver"
        elif not switchover:
            break
        elif replication is None or replication.role != "replica":
            why = (f"the primary site {r.plan.primary.name} is no replica of the new primary "
                   "yet (not re-attached)")
        elif replication.stale is not False:
            why = (f"the primary site {r.plan.primary.name} replicates but is not caught up: "
                   f"{replication.message or 'lag unknown'}")
        else:
            break
        if ports.monotonic() >= deadline:
            raise _Stop("FailbackFailed",
                        f"the plan could not fail back within "
                        f"{r.drill.failback_ready_timeout_seconds}s: {why}; it stays failed "
                        f"over to {r.plan.secondary.name}: re-attach the old primary and run "
                        f"kubectl aegis failover failback {r.plan_name} -n {r.namespace}")
        ports.sleep(ports.poll_seconds)
    r.phases["failbackReadySeconds"] = round(ports.monotonic() - started, 3)


def _failed_steps(transition: Transition) -> str:
    failed = [f"{s.name}: {s.message}" for s in transition.steps or [] if s.state == "Failed"]
    return "; ".join(failed) or "no step reported why"


def _finish(
    r: _Run,
    objectives: DrillObjectives | None,
    problems: list[tuple[str, str]],
    measured: Mapping[str, Any],
) -> Outcome:
    record = r.record
    record.pop("approvalToken", None)
    record["completionTime"] = iso_ms(r.ports.wall())
    record["phases"] = dict(r.phases)
    record["rtoPredicted"] = False
    if r.steps:
        record["steps"] = list(r.steps)
    if r.transitions:
        record["transitions"] = list(r.transitions)
    problems = list(problems)
    failed_over = "outage" in measured or "lost" in measured
    if failed_over:
        outage, source = measured.get("outage"), str(measured.get("source"))
        lost = [v for v in (measured.get("lost"), measured.get("failbackLost")) if v is not None]
        if outage is not None:
            record["rtoSeconds"] = round(float(outage), 3)
            record["writeOutageSeconds"] = round(float(outage), 3)
            record["writeOutageSource"] = source
            record["display"] = display.fields(rto=display.duration(float(outage)))
        else:
            problems.append(("NotMeasured", f"write outage not measured: {source}"))
        if measured.get("lost") is None:
            problems.append(("NotMeasured", "data lost not measured: the failover's transition "
                             "recorded no lagBytes (no switchover or promote step measured it)"))
        if lost:
            record["dataLostBytes"] = max(int(v) for v in lost)
            if max(lost) > 0:
                problems.insert(0, ("DataLost", f"{max(lost)} bytes of WAL/stream were not on "
                                    "the promoted server (failover "
                                    f"{measured.get('lost')}, failback "
                                    f"{measured.get('failbackLost')}); a planned switchover "
                                    "must lose 0"))
        objective = objectives.rto_seconds if objectives is not None else None
        if outage is not None and objective is not None and outage > objective:
            problems.append(("RTOObjectiveMissed", f"measured write outage {outage:.3f}s > "
                             f"objective {objective}s"))
    if problems:
        # a plan left failed over is what its owner must see first
        problems.sort(key=lambda p: p[0] != "FailbackFailed")
        reason = problems[0][0]
        message = ("Live failover drill failed: " + "; ".join(m for _, m in problems))[:1024]
        record.update(result="Failed", reason=reason, message=message)
        return Outcome(False, reason, message, record)
    message = (
        f"Live failover drill of plan {r.plan_name}: failed over to {r.plan.secondary.name} "
        f"and back ({', '.join(r.transitions)}); write outage "
        f"{record['writeOutageSeconds']:.3f}s ({record['writeOutageSource']}), data lost "
        f"{record['dataLostBytes']} bytes"
    )[:1024]
    record.update(result="Passed", reason="DrillPassed", message=message)
    return Outcome(True, "DrillPassed", message, record)


__all__ = [
    "LivePorts",
    "has_switchover",
    "needs_approval",
    "run_live",
    "transition_steps",
    "write_outage",
]
