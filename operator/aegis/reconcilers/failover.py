"""FailoverPlan logic as pure functions: no I/O, no clock, no kopf. The handler glue calls
them in this order on every tick:

1. `probe_due(site, status, now)`: is it time to probe (periodSeconds)?
2. `next_site_status(site, previous, probe)`: the health state machine (Kubernetes probe
   semantics: failureThreshold, successThreshold, weights/downWeight); `site_condition()`
   gives the PrimaryHealthy/SecondaryHealthy conditions.
3. `decide(spec, status, annotations, now)`: what to do — nothing (with the reason), recommend
   and wait for approval, withdraw a recommendation, start a failover or a failback, or
   continue a running one. It also lists the events to emit and the trigger annotations to
   remove.
4. `begin_transition(...)` puts a new (or resumed) `Transition` in status; the steps runner
   (`aegis.steps.runner`) then drives it with `progress()`, `mark_running()`,
   `mark_finished()`, `finish_transition()`, persisting status before each step starts, and
   `end_transition()` sets the state the plan ends in.

Decision rules (see docs/failover.md): fail over only when the primary is down (threshold
reached), the secondary is healthy, the plan is out of cooldown, and it has not already
failed over. Manual mode or `approval.required` turn that into a recommendation with a
random token. Triggers by annotation: `dr.aegis.dev/failover=<reason>` (a human decision:
skips cooldown and approval, but still needs a healthy secondary unless the value is
`force` or `force:<reason>`), `dr.aegis.dev/approve=<token>`, `dr.aegis.dev/failback=<reason>`
(needs a healthy primary; no force).

Replication gating (issue 13): `next_replication()` compares the database position of the
serving site with the other site's; a replica lagging beyond maxLagBytes/maxLagSeconds (or
whose lag is unknown) is stale. No automatic failover onto a stale secondary (state
Blocked, reason SecondaryLagging, a Warning event); a manual trigger or an approval onto it
needs `dr.aegis.dev/accept-data-loss=<reason>`, which is recorded in the transition with
the expected loss.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aegis.api.failoverplan import (
    CheckStatus,
    FailoverPlanSpec,
    FailoverPlanStatus,
    Route53Step,
    Site,
    SiteReplication,
    SiteStatus,
    Step,
    StepStatus,
    Transition,
)
from aegis.labels import ACCEPT_DATA_LOSS_ANNOTATION as ACCEPT_DATA_LOSS
from aegis.labels import APPROVE_ANNOTATION as APPROVE
from aegis.labels import FAILBACK_ANNOTATION as FAILBACK
from aegis.labels import FAILOVER_ANNOTATION as FAILOVER

# the annotations, for readers of this module
__all__ = ["ACCEPT_DATA_LOSS", "APPROVE", "FAILBACK", "FAILOVER"]
from aegis.probes.base import CheckResult
from aegis.probes.prober import SiteProbe
from aegis.reconcilers.conditions import ConditionUpdate, iso

FORCE = "force"

# A step found Running this many times (operator restarts mid-step) is not started again:
# something in it kills the operator, and a human must look.
MAX_STEP_ATTEMPTS = 3

SiteKey = Literal["primary", "secondary"]
TransitionKind = Literal["Failover", "Failback"]


# --------------------------------------------------------------------------- health


def failed_weight(site: Site, results: Sequence[CheckResult | CheckStatus]) -> int:
    weights = {c.name: c.weight for c in site.checks}
    return sum(weights.get(r.name, 1) for r in results if not r.ok)


def attempt_failed(site: Site, results: Sequence[CheckResult | CheckStatus]) -> bool:
    """A probe attempt fails when the failed weight reaches downWeight (absent: any check)."""
    weight = failed_weight(site, results)
    if site.down_weight is None:
        return weight > 0
    return weight >= site.down_weight


def probe_due(site: Site, previous: SiteStatus | None, now: dt.datetime) -> bool:
    if previous is None or previous.last_probe_time is None:
        return True
    return now >= previous.last_probe_time + dt.timedelta(seconds=site.period_seconds)


def next_site_status(site: Site, previous: SiteStatus | None, probe: SiteProbe) -> SiteStatus:
    """The site's health after one probe attempt.

    Like a Kubernetes readiness probe: `failureThreshold` failed attempts in a row make the
    site down, `successThreshold` good ones in a row make it up; in between it keeps its
    state (unknown at first). `firstFailureTime` is the first failed attempt of the current
    run; `downSince` keeps the one of the run that crossed the threshold until the site is up.
    """
    prev = previous or SiteStatus()
    checks = [
        CheckStatus(name=r.name, ok=r.ok, latency_ms=r.latency_ms, message=r.message or None)
        for r in probe.results
    ]
    if attempt_failed(site, probe.results):
        failures = prev.consecutive_failures + 1
        first = prev.first_failure_time if prev.consecutive_failures else None
        first = first or probe.time
        healthy, down_since = prev.healthy, prev.down_since
        if failures >= site.failure_threshold and prev.healthy is not False:
            healthy, down_since = False, first
        return SiteStatus(
            healthy=healthy,
            consecutive_failures=failures,
            consecutive_successes=0,
            first_failure_time=first,
            down_since=down_since,
            last_probe_time=probe.time,
            checks=checks,
        )
    successes = prev.consecutive_successes + 1
    healthy = prev.healthy
    if prev.healthy is not True and successes >= site.success_threshold:
        healthy = True
    return SiteStatus(
        healthy=healthy,
        consecutive_failures=0,
        consecutive_successes=successes,
        first_failure_time=None,
        down_since=None if healthy else prev.down_since,
        last_probe_time=probe.time,
        checks=checks,
    )


def failing_checks(status: SiteStatus | None) -> str:
    """`name: message; ...` of the failing checks, for conditions and events."""
    failed = [c for c in (status.checks if status and status.checks else []) if not c.ok]
    return "; ".join(f"{c.name}: {c.message or 'failed'}" for c in failed)


def site_condition(key: SiteKey, site: Site, status: SiteStatus | None) -> ConditionUpdate:
    """PrimaryHealthy / SecondaryHealthy from the site's status."""
    type_ = "PrimaryHealthy" if key == "primary" else "SecondaryHealthy"
    if status is None or status.healthy is None:
        runs = status.consecutive_failures if status else 0
        return ConditionUpdate(
            type_, "Unknown", "Probing",
            f"{site.name}: not enough probes yet ({runs}/{site.failure_threshold} failures)",
        )
    if status.healthy:
        if status.consecutive_failures:
            return ConditionUpdate(
                type_, "True", "BelowThreshold",
                f"{site.name}: {status.consecutive_failures}/{site.failure_threshold} failed "
                f"probes in a row: {failing_checks(status)}",
            )
        return ConditionUpdate(type_, "True", "ChecksPassing", f"{site.name}: all checks pass")
    since = iso(status.down_since) if status.down_since else "unknown"
    why = failing_checks(status) or (
        f"recovering, {status.consecutive_successes}/{site.success_threshold} good probes"
    )
    return ConditionUpdate(type_, "False", "Down", f"{site.name} down since {since}: {why}")


# --------------------------------------------------------------------------- replication


def observed_replication(probe: SiteProbe) -> SiteReplication | None:
    """The replication state the site's first database check reported in this probe."""
    for result in probe.results:
        seen = result.replication
        if seen is not None:
            return SiteReplication(
                kind=seen.kind, role=seen.role, position=seen.position, position_time=probe.time,
                streaming=seen.streaming if seen.role == "replica" else None,
                last_message_age_seconds=seen.last_message_age_seconds,
                read_only=seen.read_only if seen.role == "primary" else None,
            )
    return None


def _other(key: SiteKey) -> SiteKey:
    return "secondary" if key == "primary" else "primary"


def replica_lag(
    spec: FailoverPlanSpec,
    source: SiteReplication | None,
    source_before: SiteReplication | None,
    replica: SiteReplication,
    source_name: str,
) -> SiteReplication:
    """`replica` with its lag behind `source` (the serving site's latest observation, kept
    while the source is unreachable) and staleness.

    completeAsOfTime moves forward to the time of a source observation (this one or the one
    before) whose position the replica has reached: every write before then is on the
    replica. lagSeconds is the source's last observation time minus it, so a source that
    died keeps the window it had when last seen instead of aging with the outage."""
    limit_b, limit_s = spec.max_lag_bytes, spec.lag_seconds_limit
    limits = f"limits {limit_b} bytes / {limit_s}s"
    if replica.role != "replica":
        return replica.model_copy(update={
            "lag_bytes": None, "lag_seconds": None, "stale": None,
            "message": "a primary itself, not replicating from the serving site",
        })
    if source is None or source.kind != replica.kind or source.role != "primary":
        return replica.model_copy(update={
            "lag_bytes": None, "lag_seconds": None, "stale": True,
            "message": f"lag unknown: no {replica.kind} primary position observed on "
            f"{source_name}",
        })
    complete = replica.complete_as_of_time
    for sample in (source_before, source):
        if (sample is not None and sample.position is not None and sample.position_time
                and replica.position is not None and replica.position >= sample.position
                and sample.kind == replica.kind
                and (complete is None or sample.position_time > complete)):
            complete = sample.position_time
    if source.position is None or replica.position is None:
        return replica.model_copy(update={
            "complete_as_of_time": complete, "lag_bytes": None, "lag_seconds": None,
            "stale": True, "message": "lag unknown: a position could not be read",
        })
    lag_bytes = max(0, source.position - replica.position)
    lag_seconds: float | None = 0.0
    if lag_bytes:
        if complete is None or source.position_time is None:
            lag_seconds = None
        else:
            lag_seconds = round(max(0.0, (source.position_time - complete).total_seconds()), 3)
    stale = lag_bytes > limit_b or lag_seconds is None or lag_seconds > limit_s
    link = "streaming" if replica.streaming else "NOT streaming"
    window = "unknown" if lag_seconds is None else f"{lag_seconds:g}s"
    message = (f"{lag_bytes} bytes / {window} behind {source_name} ({link}; {limits})")
    return replica.model_copy(update={
        "complete_as_of_time": complete, "lag_bytes": lag_bytes, "lag_seconds": lag_seconds,
        "stale": stale, "message": message,
    })


def next_replication(
    spec: FailoverPlanSpec,
    active: SiteKey,
    previous: Mapping[str, SiteStatus],
    current: Mapping[str, SiteStatus],
    probes: Mapping[str, SiteProbe],
) -> dict[str, SiteStatus]:
    """`current` site statuses with `replication` set: each probed site's new observation
    (or its last one while unreachable), and for the site that does not serve (`active` is
    the serving one), its lag behind the serving site."""
    sites = dict(current)
    before: dict[str, SiteReplication | None] = {}
    for key in ("primary", "secondary"):
        old = previous.get(key)
        old_rep = old.replication if old else None
        before[key] = old_rep
        status = sites.get(key)
        if status is None:
            continue
        seen = observed_replication(probes[key]) if key in probes else None
        if seen is None:
            rep = old_rep
        elif old_rep is not None and old_rep.role == seen.role and old_rep.kind == seen.kind:
            rep = seen.model_copy(update={"complete_as_of_time": old_rep.complete_as_of_time})
        else:
            rep = seen
        sites[key] = status.model_copy(update={"replication": rep})
    replica_key = _other(active)
    replica_status = sites.get(replica_key)
    if replica_status is not None and replica_status.replication is not None:
        source_status = sites.get(active)
        source = source_status.replication if source_status else None
        name = spec.secondary.name if active == "secondary" else spec.primary.name
        lagged = replica_lag(spec, source, before[active], replica_status.replication, name)
        sites[replica_key] = replica_status.model_copy(update={"replication": lagged})
    source_status = sites.get(active)
    if source_status is not None and source_status.replication is not None:
        # the serving site has no lag: clear what it carried while it was the replica
        serving = source_status.replication.model_copy(update={
            "lag_bytes": None, "lag_seconds": None, "stale": None, "complete_as_of_time": None,
            "message": "serving site",
        })
        sites[active] = source_status.model_copy(update={"replication": serving})
    return sites


def lag_problem(spec: FailoverPlanSpec, status: FailoverPlanStatus, key: SiteKey) -> str | None:
    """Why promoting `key` would lose more data than the limits allow, or None."""
    site = _site(status, key)
    rep = site.replication if site else None
    if rep is None or rep.role != "replica" or rep.stale is not True:
        return None
    name = spec.secondary.name if key == "secondary" else spec.primary.name
    return f"{name} is stale: {rep.message}"


def _lag_of(status: FailoverPlanStatus, key: SiteKey) -> tuple[int | None, float | None]:
    site = _site(status, key)
    rep = site.replication if site else None
    if rep is None or rep.role != "replica":
        return None, None
    return rep.lag_bytes, rep.lag_seconds


# --------------------------------------------------------------------------- decision

Action = Literal[
    "none", "recommend", "withdraw", "block", "unblock", "start_failover", "start_failback",
    "continue",
]


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What the reconciler should do now. `reason`/`message` feed the FailoverRecommended
    condition (`recommended`), `events` are emitted, `consume` lists trigger annotations to
    remove from the object once the decision is acted on."""

    action: Action
    reason: str
    message: str
    recommended: bool = False
    events: tuple[Event, ...] = ()
    consume: tuple[str, ...] = ()
    approval_token: str | None = None
    transition_reason: str | None = None
    detected_time: dt.datetime | None = None
    resume: bool = False
    """Start the transition from the failed one: finished steps are not repeated."""
    expected_lag_bytes: int | None = None
    expected_lag_seconds: float | None = None
    data_loss_accepted: str | None = None
    """The acknowledgement that let a failover run onto a stale secondary."""

    @property
    def condition(self) -> ConditionUpdate:
        status: Literal["True", "False"] = "True" if self.recommended else "False"
        return ConditionUpdate("FailoverRecommended", status, self.reason, self.message)


def new_approval_token() -> str:
    return secrets.token_urlsafe(16)


def parse_trigger(value: str) -> tuple[str, bool]:
    """`force:<reason>` / `force` / `<reason>` → (reason, force)."""
    text = value.strip()
    head, _, rest = text.partition(":")
    if head.strip().lower() == FORCE:
        return rest.strip() or "forced by annotation", True
    return text or "requested by annotation", False


def latest_transition(status: FailoverPlanStatus, kind: TransitionKind) -> Transition | None:
    candidates = [status.last_transition, *(status.history or [])]
    return next((t for t in candidates if t is not None and t.kind == kind), None)


def cooldown_until(spec: FailoverPlanSpec, status: FailoverPlanStatus) -> dt.datetime | None:
    """End of the cooldown that follows the latest failover (whatever its outcome)."""
    last = latest_transition(status, "Failover")
    started = last.start_time if last else None
    if started is None:
        return None
    return started + dt.timedelta(seconds=spec.cooldown_seconds)


def _site(status: FailoverPlanStatus, key: SiteKey) -> SiteStatus | None:
    return (status.sites or {}).get(key)


def _healthy(status: FailoverPlanStatus, key: SiteKey) -> bool:
    site = _site(status, key)
    return bool(site and site.healthy is True)


def _primary_down(status: FailoverPlanStatus) -> bool:
    site = _site(status, "primary")
    return bool(site and site.healthy is False)


def _secondary_problem(spec: FailoverPlanSpec, status: FailoverPlanStatus) -> str:
    site = _site(status, "secondary")
    if site is None or site.healthy is None:
        return f"{spec.secondary.name} has not been probed enough to be trusted"
    return failing_checks(site) or f"{spec.secondary.name} is down"


@dataclass
class _Triggers:
    events: list[Event] = field(default_factory=list)
    consume: list[str] = field(default_factory=list)

    def refuse(self, annotation: str, reason: str, message: str) -> None:
        self.events.append(Event("Warning", reason, message))
        self.consume.append(annotation)


def decide(
    spec: FailoverPlanSpec,
    status: FailoverPlanStatus,
    annotations: Mapping[str, str],
    now: dt.datetime,
    new_token: Callable[[], str] = new_approval_token,
    *,
    plan: tuple[str, str] = ("", ""),
) -> Decision:
    """The decision table. At most one trigger annotation is acted on per call (failover,
    then approve, then failback); a refused trigger is consumed with a Warning event and the
    automatic evaluation still runs. `plan` (namespace, name) names the plan in hints."""
    t = _Triggers()
    state = status.state or "Monitoring"
    last = status.last_transition
    failed_kind = last.kind if state == "Failed" and last is not None else None
    failed_over = status.active_site == "secondary"

    if state in ("FailingOver", "FailingBack"):
        for name in (FAILOVER, APPROVE, FAILBACK, ACCEPT_DATA_LOSS):
            if name in annotations:
                t.refuse(name, "TriggerIgnored", f"{name} ignored: {state} is in progress")
        return Decision(
            "continue", state, f"{state}: running the steps", recommended=False,
            events=tuple(t.events), consume=tuple(t.consume),
        )

    if FAILOVER in annotations:
        reason, force = parse_trigger(annotations[FAILOVER])
        if failed_over:
            t.refuse(FAILOVER, "AlreadyFailedOver",
                     f"manual failover refused: {spec.secondary.name} already serves")
        elif not force and not _healthy(status, "secondary"):
            t.refuse(FAILOVER, "SecondaryUnhealthy",
                     f"manual failover refused: {_secondary_problem(spec, status)}; set "
                     f"{FAILOVER}=force:<reason> to fail over anyway")
        elif (lagging := _unaccepted_lag(spec, status, annotations)) is not None:
            t.refuse(FAILOVER, "SecondaryLagging", f"manual failover refused: {lagging}")
        else:
            return _start_failover(
                f"Manual: {reason}" + (" (forced)" if force else ""), status, t, FAILOVER,
                resume=failed_kind == "Failover", annotations=annotations,
            )

    if APPROVE in annotations and FAILOVER not in t.consume:
        given = annotations[APPROVE].strip()
        if state != "AwaitingApproval" or not status.approval_token:
            t.refuse(APPROVE, "NothingToApprove", "approval refused: no failover is awaiting "
                     "approval")
        elif not secrets.compare_digest(given, status.approval_token):
            t.refuse(APPROVE, "ApprovalRefused", "approval refused: the token does not match "
                     "status.approvalToken")
        elif not _healthy(status, "secondary"):
            t.refuse(APPROVE, "SecondaryUnhealthy",
                     f"approval refused: {_secondary_problem(spec, status)}")
        elif (lagging := _unaccepted_lag(spec, status, annotations)) is not None:
            t.refuse(APPROVE, "SecondaryLagging", f"approval refused: {lagging}")
        else:
            t.events.append(Event("Normal", "FailoverApproved", "failover approved by token"))
            return _start_failover(
                "Approved: " + _down_message(spec, status), status, t, APPROVE, resume=False,
                annotations=annotations,
            )

    if FAILBACK in annotations and not t.consume:
        reason = parse_trigger(annotations[FAILBACK])[0]
        can_fail_back = failed_over or failed_kind is not None
        # A switchover step checks its own preconditions (the old primary is then a caught-up
        # replica, which a writable check rightly reports as not serving).
        switchover = any(s.postgres_switchover or s.redis_switchover
                         for s in spec.failback_steps or [])
        if not can_fail_back:
            t.refuse(FAILBACK, "NotFailedOver",
                     f"failback refused: {spec.primary.name} already serves")
        elif not switchover and not _healthy(status, "primary"):
            why = failing_checks(_site(status, "primary")) or "not healthy"
            t.refuse(FAILBACK, "PrimaryUnhealthy",
                     f"failback refused: {spec.primary.name}: {why}; fix it first")
        elif not spec.failback_steps and promotes_database(spec):
            t.refuse(FAILBACK, "DivergedPrimary",
                     f"failback refused: the failover promoted the database on "
                     f"{spec.secondary.name}, so the old primary on {spec.primary.name} lacks "
                     "every write since; the default failback (Route53 records set back) would "
                     "send traffic to it. Re-attach it as a replica and add failbackSteps with "
                     "postgresSwitchover/redisSwitchover before the DNS steps")
        else:
            t.consume.append(FAILBACK)
            return Decision(
                "start_failback", "FailingBack", f"failback: {reason}",
                events=(*t.events, Event("Normal", "FailbackStarted", f"failback: {reason}")),
                consume=tuple(t.consume), transition_reason=f"Manual: {reason}",
                resume=failed_kind == "Failback",
            )

    if ACCEPT_DATA_LOSS in annotations:
        # an acknowledgement counts for the trigger it came with, never for a later one
        if FAILOVER in annotations or APPROVE in annotations:
            t.consume.append(ACCEPT_DATA_LOSS)
        else:
            t.refuse(ACCEPT_DATA_LOSS, "TriggerIgnored", f"{ACCEPT_DATA_LOSS} ignored: it "
                     f"only counts together with {FAILOVER} or {APPROVE}")
    return _automatic(spec, status, state, failed_kind, now, t, new_token, plan)


def approve_hint(namespace: str, name: str) -> str:
    """The command that approves this plan's pending failover, ready to paste."""
    ns = f" -n {namespace}" if namespace else ""
    name = name or "PLAN"
    return (
        f"kubectl aegis failover approve {name}{ns} (or: kubectl annotate fp {name}{ns} "
        f"{APPROVE}=$(kubectl get fp {name}{ns} -o jsonpath='{{.status.approvalToken}}'))"
    )


def _down_message(spec: FailoverPlanSpec, status: FailoverPlanStatus) -> str:
    site = _site(status, "primary")
    since = iso(site.down_since) if site and site.down_since else "unknown"
    return f"{spec.primary.name} down since {since}: {failing_checks(site) or 'checks failing'}"


def promotes_database(spec: FailoverPlanSpec) -> bool:
    return any(s.postgres_promote or s.redis_promote for s in spec.steps)


def _unaccepted_lag(
    spec: FailoverPlanSpec, status: FailoverPlanStatus, annotations: Mapping[str, str]
) -> str | None:
    """Why a human trigger onto the secondary must acknowledge data loss, or None."""
    problem = lag_problem(spec, status, "secondary")
    if problem is None or annotations.get(ACCEPT_DATA_LOSS, "").strip():
        return None
    return (f"{problem}; promoting it loses that data. To accept the loss, annotate "
            f"{ACCEPT_DATA_LOSS}=<reason> together with the trigger")


def _start_failover(
    reason: str, status: FailoverPlanStatus, t: _Triggers, annotation: str | None, *,
    resume: bool, annotations: Mapping[str, str] | None = None,
) -> Decision:
    if annotation is not None:
        t.consume.append(annotation)
    accepted = (annotations or {}).get(ACCEPT_DATA_LOSS, "").strip() or None
    if annotations is not None and ACCEPT_DATA_LOSS in annotations:
        t.consume.append(ACCEPT_DATA_LOSS)
    lag_bytes, lag_seconds = _lag_of(status, "secondary")
    primary = _site(status, "primary")
    detected = primary.down_since if primary else None
    events = [*t.events, Event("Warning", "FailoverStarted", reason)]
    if accepted is not None:
        events.append(Event("Warning", "DataLossAccepted",
                            f"failover onto a replica {lag_bytes} bytes / {lag_seconds}s behind, "
                            f"accepted: {accepted}"))
    return Decision(
        "start_failover", "FailoverStarted", reason, recommended=True,
        events=tuple(events),
        consume=tuple(t.consume), transition_reason=reason, detected_time=detected,
        resume=resume, expected_lag_bytes=lag_bytes, expected_lag_seconds=lag_seconds,
        data_loss_accepted=accepted,
    )


def _automatic(
    spec: FailoverPlanSpec,
    status: FailoverPlanStatus,
    state: str,
    failed_kind: str | None,
    now: dt.datetime,
    t: _Triggers,
    new_token: Callable[[], str],
    plan: tuple[str, str] = ("", ""),
) -> Decision:
    awaiting = state == "AwaitingApproval"

    def none(reason: str, message: str) -> Decision:
        if awaiting:
            return Decision(
                "withdraw", reason, f"recommendation withdrawn: {message}",
                events=(*t.events, Event("Normal", "RecommendationWithdrawn", message)),
                consume=tuple(t.consume),
            )
        if state == "Blocked":
            return Decision(
                "unblock", reason, f"no longer blocked: {message}",
                events=(*t.events, Event("Normal", "FailoverUnblocked", message)),
                consume=tuple(t.consume),
            )
        return Decision("none", reason, message, events=tuple(t.events), consume=tuple(t.consume))

    if failed_kind is not None:
        return none(
            f"Last{failed_kind}Failed",
            f"the last {failed_kind.lower()} failed; fix the cause, then retry with "
            f"{FAILOVER if failed_kind == 'Failover' else FAILBACK}=<reason> (finished steps "
            f"are not repeated) or roll back with {FAILBACK}=<reason>",
        )
    if status.active_site == "secondary":
        return none("AlreadyFailedOver", f"{spec.secondary.name} serves since the last failover")
    primary = _site(status, "primary")
    if not _primary_down(status):
        if primary is None or primary.healthy is None:
            return none("PrimaryUnknown", f"{spec.primary.name}: not enough probes yet")
        if primary.consecutive_failures:
            return none(
                "BelowThreshold",
                f"{spec.primary.name}: {primary.consecutive_failures}/"
                f"{spec.primary.failure_threshold} failed probes in a row",
            )
        return none("PrimaryHealthy", f"{spec.primary.name} is healthy")
    if not _healthy(status, "secondary"):
        return none("SecondaryUnhealthy", f"primary down but no failover: "
                    f"{_secondary_problem(spec, status)}")
    lagging = lag_problem(spec, status, "secondary")
    if lagging is not None:
        message = (f"primary down but failover blocked: {lagging}; promoting it would lose that "
                   f"data. Wait for it to catch up, or fail over by hand with {FAILOVER}="
                   f"<reason> and {ACCEPT_DATA_LOSS}=<reason>")
        events = list(t.events)
        if state != "Blocked":
            events.append(Event("Warning", "FailoverBlocked", message))
        if awaiting:
            events.append(Event("Normal", "RecommendationWithdrawn", message))
        return Decision("block", "SecondaryLagging", message, events=tuple(events),
                        consume=tuple(t.consume))
    until = cooldown_until(spec, status)
    if until is not None and now < until:
        return none("InCooldown", f"primary down but in cooldown until {iso(until)} "
                    f"(cooldownSeconds={spec.cooldown_seconds})")

    down = _down_message(spec, status)
    needs_approval = spec.mode == "Manual" or bool(spec.approval and spec.approval.required)
    if needs_approval:
        message = f"{down}; approve with {approve_hint(*plan)}"
        if awaiting and status.approval_token:
            return Decision("none", "AwaitingApproval", message, recommended=True,
                            events=tuple(t.events), consume=tuple(t.consume),
                            approval_token=status.approval_token)
        return Decision(
            "recommend", "AwaitingApproval", message, recommended=True,
            events=(*t.events, Event("Warning", "FailoverRecommended", message)),
            consume=tuple(t.consume), approval_token=new_token(),
        )
    return _start_failover("PrimaryDown: " + down, status, t, None, resume=False)


# --------------------------------------------------------------------------- approvals

APPROVAL_MAX_AGE = dt.timedelta(minutes=15)
"""A FailoverApproval older than this when the plan first sees it is refused: a decision
taken for an incident an hour ago must not act on today's state."""


def by_approval_objects(spec: FailoverPlanSpec) -> bool:
    return spec.approval is not None and spec.approval.by == "FailoverApproval"


def pending_approval(approvals: Sequence[Mapping[str, object]], plan: str
                     ) -> Mapping[str, object] | None:
    """The oldest FailoverApproval for `plan` that has not been acted on."""
    pending = []
    for obj in approvals:
        spec = obj.get("spec")
        status = obj.get("status")
        meta = obj.get("metadata")
        if not isinstance(spec, Mapping) or not isinstance(meta, Mapping):
            continue
        if spec.get("planName") != plan:
            continue
        state = status.get("state") if isinstance(status, Mapping) else None
        if state in ("Used", "Refused"):
            continue
        # acted on only once its spec was accepted (its handler validated it and wrote the
        # Accepted condition, which the outcome written here must not race with)
        conditions = status.get("conditions") if isinstance(status, Mapping) else None
        if not isinstance(conditions, list) or not any(
            isinstance(c, Mapping) and c.get("type") == "Accepted" and c.get("status") == "True"
            for c in conditions
        ):
            continue
        pending.append((str(meta.get("creationTimestamp") or ""), str(meta.get("name")), obj))
    return min(pending, key=lambda p: (p[0], p[1]))[2] if pending else None


def approval_triggers(approval: Mapping[str, object], now: dt.datetime
                      ) -> dict[str, str] | str:
    """The trigger annotations a FailoverApproval stands for, or why it is refused."""
    spec = approval.get("spec")
    meta = approval.get("metadata")
    assert isinstance(spec, Mapping) and isinstance(meta, Mapping)
    created = meta.get("creationTimestamp")
    if isinstance(created, str) and created:
        when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        if now - when > APPROVAL_MAX_AGE:
            return (f"expired: created {iso(when)}, more than "
                    f"{int(APPROVAL_MAX_AGE.total_seconds() // 60)} minutes before the plan "
                    "saw it; create a new one if it still holds")
    reason = f"{spec.get('reason')} (FailoverApproval {meta.get('name')})"
    if spec.get("action") == "Failback":
        return {FAILBACK: reason}
    triggers = {FAILOVER: f"{FORCE}:{reason}" if spec.get("force") else reason}
    accepted = spec.get("acceptDataLoss")
    if accepted:
        triggers[ACCEPT_DATA_LOSS] = f"{accepted} (FailoverApproval {meta.get('name')})"
    return triggers


def approval_outcome(decision: Decision, triggers: Mapping[str, str]
                     ) -> tuple[bool, str]:
    """(used, message) of a FailoverApproval after `decision` was taken on its triggers."""
    wanted = "start_failback" if FAILBACK in triggers else "start_failover"
    if decision.action == wanted:
        return True, decision.transition_reason or decision.message
    refusals = [e.message for e in decision.events if e.type == "Warning"]
    return False, refusals[0] if refusals else f"not acted on: {decision.message}"


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class RestoreRoute53:
    """Default failback action: set the record of a failover `route53` step back to the
    values it had before (`previous` is the JSON snapshot the step stored in its outputs)."""

    source: Route53Step
    previous: str


@dataclass(frozen=True)
class PlannedStep:
    """A step with its dependencies resolved (absent dependsOn: the previous step)."""

    name: str
    depends_on: tuple[str, ...]
    timeout_seconds: int
    continue_on_error: bool
    action: Step | RestoreRoute53


def plan_steps(steps: Sequence[Step]) -> list[PlannedStep]:
    planned: list[PlannedStep] = []
    for index, step in enumerate(steps):
        if step.depends_on is not None:
            deps = tuple(step.depends_on)
        else:
            deps = (steps[index - 1].name,) if index else ()
        planned.append(
            PlannedStep(step.name, deps, step.timeout_seconds, step.continue_on_error, step)
        )
    return planned


PREVIOUS_RECORD = "previous"
"""Output key under which a route53 step stores the record as it was before the UPSERT."""


def failback_plan(spec: FailoverPlanSpec, status: FailoverPlanStatus) -> list[PlannedStep]:
    """`failbackSteps`, or else one restore per route53 step of the latest failover that
    recorded the previous record, newest change first."""
    if spec.failback_steps:
        return plan_steps(spec.failback_steps)
    failover = latest_transition(status, "Failover")
    by_name = {s.name: s for s in spec.steps if s.route53 is not None}
    restores: list[PlannedStep] = []
    for step_status in reversed(failover.steps or [] if failover else []):
        step = by_name.get(step_status.name)
        previous = (step_status.outputs or {}).get(PREVIOUS_RECORD)
        if step is None or step.route53 is None or previous is None:
            continue
        deps = (restores[-1].name,) if restores else ()
        restores.append(PlannedStep(
            f"restore-{step.name}", deps, step.timeout_seconds, step.continue_on_error,
            RestoreRoute53(step.route53, previous),
        ))
    return restores


@dataclass(frozen=True)
class Progress:
    """Where a procedure stands. `runnable` may start now; `running` are marked Running
    (when no runner holds them, they were interrupted and must be re-run); `skip` can never
    run because the procedure stopped or a dependency was skipped."""

    runnable: tuple[str, ...]
    running: tuple[str, ...]
    skip: tuple[str, ...]
    finished: bool
    result: Literal["Succeeded", "Failed"] | None
    failed: tuple[str, ...]


def progress(planned: Sequence[PlannedStep], statuses: Sequence[StepStatus] | None) -> Progress:
    """A failed step without continueOnError stops the procedure: steps running finish,
    nothing new starts, the rest is skipped. A failed step with continueOnError counts as
    done for its dependents. Succeeded steps are never offered again."""
    state = {s.name: s.state for s in statuses or []}
    by_name = {p.name: p for p in planned}

    def settled_ok(name: str) -> bool:
        step = by_name.get(name)
        got = state.get(name, "Pending")
        return got == "Succeeded" or (got == "Failed" and step is not None
                                      and step.continue_on_error)

    failed = tuple(p.name for p in planned if state.get(p.name) == "Failed")
    stopped = any(not by_name[n].continue_on_error for n in failed)
    runnable: list[str] = []
    skip: list[str] = []
    for step in planned:  # dependencies come earlier in the list (check_steps), one pass cascades
        if state.get(step.name, "Pending") != "Pending":
            continue
        blocked = any(
            d not in by_name or state.get(d) == "Skipped" or d in skip for d in step.depends_on
        )
        if stopped or blocked:
            skip.append(step.name)
        elif all(settled_ok(d) for d in step.depends_on):
            runnable.append(step.name)
    running = tuple(p.name for p in planned if state.get(p.name) == "Running")
    finished = not runnable and not running
    result: Literal["Succeeded", "Failed"] | None = None
    if finished:
        result = "Failed" if stopped else "Succeeded"
    return Progress(tuple(runnable), running, tuple(skip), finished, result, failed)


def transition_id(kind: TransitionKind, now: dt.datetime) -> str:
    return f"{kind.lower()}-{now.astimezone(dt.UTC):%Y%m%d%H%M%S}"


def new_transition(
    kind: TransitionKind,
    reason: str,
    planned: Sequence[PlannedStep],
    now: dt.datetime,
    detected_time: dt.datetime | None = None,
    resume_from: Transition | None = None,
) -> Transition:
    """A Running transition with every step Pending. Resuming a failed transition of the
    same kind keeps its Succeeded steps (they are not repeated), its id, timings and every
    step's outputs (a route53 step's previous record must survive a retry)."""
    old = {s.name: s for s in (resume_from.steps or [])} if resume_from else {}
    steps: list[StepStatus] = []
    for p in planned:
        before = old.get(p.name)
        if before is not None and before.state == "Succeeded":
            steps.append(before)
        else:
            steps.append(StepStatus(
                name=p.name, state="Pending",
                # a retry is a human decision: the interruption count starts again
                outputs=before.outputs if before else None,
            ))
    if resume_from is not None and resume_from.kind == kind:
        return resume_from.model_copy(update={
            "reason": f"{resume_from.reason}; retried: {reason}",
            "completion_time": None, "duration_seconds": None, "result": "Running",
            "steps": steps,
        })
    return Transition(
        kind=kind, id=transition_id(kind, now), reason=reason, detected_time=detected_time,
        start_time=now, result="Running", steps=steps,
    )


def _with_step(transition: Transition, name: str, **changes: object) -> Transition:
    steps = [
        s.model_copy(update=changes) if s.name == name else s for s in transition.steps or []
    ]
    return transition.model_copy(update={"steps": steps})


def step_status(transition: Transition, name: str) -> StepStatus:
    return next(s for s in transition.steps or [] if s.name == name)


def mark_running(transition: Transition, name: str, now: dt.datetime) -> Transition:
    """Record that `name` starts (again). The first start time is kept, so a step resumed
    after a restart reports its whole duration, the restart included."""
    before = step_status(transition, name)
    attempts = (before.attempts or 0) + 1
    message = "running" if attempts == 1 else f"resumed after an interruption (attempt {attempts})"
    return _with_step(
        transition, name, state="Running", start_time=before.start_time or now,
        completion_time=None, attempts=attempts, message=message,
    )


def max_attempts(step: PlannedStep) -> int:
    """How often a step may be started. A webhook is re-sent at most once after an
    interruption (its receiver may see it twice, with the same idempotency key)."""
    if isinstance(step.action, Step) and step.action.webhook is not None:
        return 2
    return MAX_STEP_ATTEMPTS


def exhausted(transition: Transition, step: PlannedStep) -> bool:
    """The step was interrupted too often to be started again."""
    return (step_status(transition, step.name).attempts or 0) >= max_attempts(step)


def mark_finished(
    transition: Transition,
    name: str,
    ok: bool,
    message: str,
    now: dt.datetime,
    outputs: Mapping[str, str] | None = None,
) -> Transition:
    before = step_status(transition, name)
    merged = {**(before.outputs or {}), **(outputs or {})} or None
    return _with_step(
        transition, name, state="Succeeded" if ok else "Failed", completion_time=now,
        message=message, outputs=merged,
    )


def save_outputs(transition: Transition, name: str, outputs: Mapping[str, str]) -> Transition:
    before = step_status(transition, name)
    return _with_step(transition, name, outputs={**(before.outputs or {}), **outputs})


def mark_skipped(transition: Transition, names: Sequence[str], why: str) -> Transition:
    for name in names:
        transition = _with_step(transition, name, state="Skipped", message=why)
    return transition


LAG_BYTES = "lagBytes"
LAG_SECONDS = "lagSeconds"
"""Output keys of postgresPromote: the standby's replay lag measured just before promotion."""
WRITE_OUTAGE = "writeOutageSeconds"
"""Output key of a switchover: from fencing the old primary to the new one taking writes."""


def finish_transition(
    transition: Transition, result: Literal["Succeeded", "Failed"], now: dt.datetime
) -> Transition:
    """Completion time, duration and the measured RPO (the largest lag any promote step
    measured) of a transition whose steps are all settled."""
    lag_bytes: list[int] = []
    lag_seconds: list[float] = []
    outages: list[float] = []
    for step in transition.steps or []:
        outputs = step.outputs or {}
        if WRITE_OUTAGE in outputs:
            outages.append(float(outputs[WRITE_OUTAGE]))
        if LAG_BYTES in outputs:
            lag_bytes.append(int(outputs[LAG_BYTES]))
        if LAG_SECONDS in outputs:
            lag_seconds.append(float(outputs[LAG_SECONDS]))
    start = transition.start_time or now
    return transition.model_copy(update={
        "result": result,
        "completion_time": now,
        "duration_seconds": round((now - start).total_seconds(), 3),
        "lag_bytes": max(lag_bytes) if lag_bytes else transition.lag_bytes,
        "rpo_seconds": max(lag_seconds) if lag_seconds else transition.rpo_seconds,
        "write_outage_seconds": max(outages) if outages else transition.write_outage_seconds,
    })


def begin_transition(
    status: FailoverPlanStatus, transition: Transition, history_limit: int
) -> FailoverPlanStatus:
    """Status with `transition` as the last one; the previous last goes to history (unless
    `transition` resumes it)."""
    history = list(status.history or [])
    last = status.last_transition
    if last is not None and last.id != transition.id:
        history.insert(0, last)
    state = "FailingOver" if transition.kind == "Failover" else "FailingBack"
    return status.model_copy(update={
        "state": state, "last_transition": transition, "approval_token": None,
        "history": history[:history_limit] or None,
    })


def end_transition(status: FailoverPlanStatus, transition: Transition) -> FailoverPlanStatus:
    """The state after a settled transition: the active site flips only on success."""
    if transition.result == "Succeeded":
        failover = transition.kind == "Failover"
        return status.model_copy(update={
            "last_transition": transition,
            "state": "FailedOver" if failover else "Monitoring",
            "active_site": "secondary" if failover else "primary",
        })
    return status.model_copy(update={"last_transition": transition, "state": "Failed"})
