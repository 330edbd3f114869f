"""One FailoverPlan against the cluster: probe, decide, act, write status. No kopf import:
the handler's per-plan daemon calls `tick()` in a thread, again and again.

A tick reads the plan fresh, probes the sites that are due (periodSeconds), runs the pure
state machine and decision (`aegis.reconcilers.failover`), and writes what changed. When the
decision starts (or an operator restart finds running) a transition, the tick drives the
procedure to its end (`aegis.steps.run_procedure`) with status written before and after each
step. Between ticks nothing is held in memory that status does not also hold, so a new
operator process carries on exactly where the old one stopped.

Status is written with JSON merge patches computed against what this plan's tick last saw
(`merge_patch`): fields that went away are sent as null, so a resumed transition loses its
old completionTime and a withdrawn recommendation its token.

A probe whose result changes nothing that matters (no site's health or failure run, no
state, no replica's lag band: `significant`) is not written; the plan's status is written
then at most every `failover_status_heartbeat_seconds`, and the unwritten result is kept in
the runtime (`FailoverRuntime.unsaved`) as the next tick's starting point, for as long as the
stored status is the one this process last wrote. An operator restarted in between resumes
from the last written status: at most one heartbeat of probe counts is lost, never a state.
Metrics follow every probe.

Ports: the API server is `PlanCluster` (the handlers pass `aegis.k8s.adapters.ApiCluster`),
the checks run in `SiteProber`, Route53 clients come from the runtime's factory, the time
from its clock; unit tests pass in-memory ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, get_args

from aegis import metrics
from aegis.api.failoverplan import (
    FailoverPlanSpec,
    FailoverPlanStatus,
    Route53Step,
    Site,
    SiteStatus,
    Transition,
)
from aegis.probes.base import SecretReader
from aegis.probes.prober import ProbeContext, Prober, SiteProbe
from aegis.reach import EndpointRule
from aegis.reconcilers import failover, tenancy
from aegis.reconcilers.conditions import ConditionUpdate, iso, set_conditions
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.settings import Settings
from aegis.steps import StepPorts, run_procedure
from aegis.steps.base import JobLauncher, Route53ClientFactory, WorkloadScaler

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = get_args(get_args(FailoverPlanStatus.model_fields["state"].annotation)[0])
RUNNING_STATES = ("FailingOver", "FailingBack")
TRIGGERS = (failover.FAILOVER, failover.APPROVE, failover.FAILBACK, failover.ACCEPT_DATA_LOSS)
# A plan whose spec is refused is looked at again this often (an edit also wakes it).
INVALID_SPEC_RETRY_SECONDS = 30.0
# Upper bound on the sleep between ticks, so a changed periodSeconds is picked up soon.
MAX_IDLE_SECONDS = 30.0

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Halted(RuntimeError):
    """The daemon that started this tick has been stopped (operator shutdown, plan deleted):
    nothing more may be written, as if the process had died here."""


# --------------------------------------------------------------------------- ports


class PlanCluster(Protocol):
    """What a FailoverPlan's tick needs of the API server, and the Kubernetes-backed ports
    its checks and steps are handed (bound to the plan's namespace)."""

    def get_plan(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FailoverPlan, or None when it does not exist."""

    def patch_plan_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource."""

    def annotate_plan(
        self, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> None:
        """Merge-patch annotations; None removes one."""

    def list_approvals(self, namespace: str) -> list[dict[str, Any]]: ...

    def patch_approval_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def post_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """Best effort: never raises."""

    def secret_reader(self, namespace: str) -> SecretReader | None: ...

    def workloads(self, namespace: str, reachable: Sequence[str]) -> WorkloadScaler | None: ...

    def plan_jobs(
        self,
        plan: Mapping[str, Any],
        transition_id: str | None,
        admit: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> JobLauncher | None: ...


class SiteProber(Protocol):
    """Runs the checks of the due sites, all in parallel, each with its hard deadline."""

    def probe_sites(self, sites: Mapping[str, Site], ctx: ProbeContext) -> dict[str, SiteProbe]: ...

    def close(self) -> None: ...


@dataclass
class Unsaved:
    """A plan's probe results not written to its status (nothing significant changed), with
    what this process last wrote: they are the next tick's start only while the stored status
    is still that."""

    uid: str | None
    written: dict[str, Any]
    written_at: dt.datetime
    status: FailoverPlanStatus | None = None


@dataclass
class FailoverRuntime:
    """What all plans of one operator process share, created at start-up and kept in kopf's
    memo. Probes run in the prober's bounded pool (every check has a hard deadline); ticks,
    which may run a procedure for minutes, run in their own pool so they never take kopf's
    handler threads."""

    cluster: PlanCluster
    route53: Route53ClientFactory
    """Builds the Route53 client of a step (the handlers pass boto3's)."""
    settings: Settings
    """The operator's settings: what plans may reach (namespaces, images, endpoints), pools,
    the status heartbeat."""
    clock: Clock = field(default_factory=lambda: utcnow)
    prober: SiteProber | None = None
    """None: a `Prober` of settings.probe_workers threads."""
    ticks: ThreadPoolExecutor | None = None
    """None: a pool of settings.failover_workers threads."""
    unsaved: dict[tuple[str, str], Unsaved] = field(default_factory=dict)
    """Per plan: what was last written and the probe results since (see the module doc)."""

    def __post_init__(self) -> None:
        if self.prober is None:
            self.prober = Prober(max_workers=self.settings.probe_workers)
        if self.ticks is None:
            self.ticks = ThreadPoolExecutor(
                self.settings.failover_workers, thread_name_prefix="aegis-failover"
            )

    @property
    def probes(self) -> SiteProber:
        assert self.prober is not None
        return self.prober

    @property
    def pool(self) -> ThreadPoolExecutor:
        assert self.ticks is not None
        return self.ticks

    def close(self) -> None:
        self.probes.close()
        # Running ticks are not waited for: a stopped daemon's tick is halted at its next write.
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- pure helpers


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns `old` into `new` (None: nothing to change is
    signalled by returning an empty dict for equal dicts)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            if isinstance(old[key], dict) and isinstance(value, dict):
                patch[key] = merge_patch(old[key], value)
            else:
                patch[key] = value
    return patch


def next_delay(spec: FailoverPlanSpec, status: FailoverPlanStatus, now: dt.datetime) -> float:
    """Seconds until the first site is due for a probe."""
    delays = []
    for key, site in (("primary", spec.primary), ("secondary", spec.secondary)):
        previous = (status.sites or {}).get(key)
        if previous is None or previous.last_probe_time is None:
            return 0.0
        due = previous.last_probe_time + dt.timedelta(seconds=site.period_seconds)
        delays.append((due - now).total_seconds())
    return max(0.0, min(min(delays), MAX_IDLE_SECONDS))


def ready_condition(spec: FailoverPlanSpec, status: FailoverPlanStatus) -> ConditionUpdate:
    state = status.state or "Monitoring"
    last = status.last_transition
    if state == "Failed" and last is not None:
        failed = [s.name for s in last.steps or [] if s.state == "Failed"]
        return ConditionUpdate(
            "Ready", "False", f"{last.kind}Failed",
            f"{last.kind.lower()} failed at step {', '.join(failed) or '?'}; fix the cause, then "
            f"retry with {failover.FAILOVER if last.kind == 'Failover' else failover.FAILBACK}"
            "=<reason> or roll back with " + failover.FAILBACK + "=<reason>",
        )
    if state == "Blocked":
        secondary = (status.sites or {}).get("secondary")
        lag = secondary.replication.message if secondary and secondary.replication else None
        return ConditionUpdate(
            "Ready", "False", "FailoverBlocked",
            f"{spec.primary.name} is down and {spec.secondary.name} is too far behind to be "
            f"promoted without losing data: {lag or 'lag unknown'}",
        )
    site = spec.secondary if status.active_site == "secondary" else spec.primary
    messages = {
        "Monitoring": f"{site.name} serves; both sites probed",
        "AwaitingApproval": "a failover is recommended and awaits approval",
        "FailingOver": f"failing over to {spec.secondary.name}",
        "FailingBack": f"failing back to {spec.primary.name}",
        "FailedOver": f"{spec.secondary.name} serves since the last failover",
    }
    return ConditionUpdate("Ready", "True", state, messages.get(state, state))


def interval_of(spec: FailoverPlanSpec) -> float:
    return float(min(spec.primary.period_seconds, spec.secondary.period_seconds))


# --------------------------------------------------------------------------- the writer


class PlanWriter:
    """Writes one plan's status and annotations, remembering what it last wrote."""

    def __init__(
        self, cluster: PlanCluster, body: Mapping[str, Any], halted: Callable[[], bool]
    ) -> None:
        self.cluster = cluster
        self.body = body
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.generation = meta.get("generation")
        self.seen: dict[str, Any] = dict(body.get("status") or {})
        self.halted = halted
        self.writes = 0

    def _guard(self) -> None:
        if self.halted():
            raise Halted(f"FailoverPlan {self.namespace}/{self.name}: its daemon was stopped")

    def save(
        self,
        status: FailoverPlanStatus,
        updates: list[ConditionUpdate] | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        self._guard()
        wanted = status.to_api()
        wanted.pop("conditions", None)
        conditions = self.seen.get("conditions")
        if updates:
            conditions = set_conditions(
                conditions, updates, generation=self.generation, now=now or utcnow()
            )
        if conditions is not None:
            wanted["conditions"] = conditions
        if updates:
            wanted["observedGeneration"] = self.generation
        elif "observedGeneration" in self.seen:
            wanted["observedGeneration"] = self.seen["observedGeneration"]
        patch = merge_patch(self.seen, wanted)
        if patch:
            self.cluster.patch_plan_status(self.namespace, self.name, patch)
            self.seen = wanted
            self.writes += 1

    def save_transition(self, status: FailoverPlanStatus, transition: Transition) -> None:
        """The runner's save: only lastTransition changes while steps run."""
        self.save(status.model_copy(update={"last_transition": transition}))

    def remove_annotations(self, names: tuple[str, ...]) -> None:
        if not names:
            return
        self._guard()
        self.cluster.annotate_plan(self.namespace, self.name, dict.fromkeys(names, None))

    def event(self, type_: str, reason: str, message: str) -> None:
        if not self.halted():
            self.cluster.post_event(dict(self.body), type_, reason, message)


# --------------------------------------------------------------------------- metrics


def record_site_metrics(
    namespace: str, name: str, key: str, status: SiteStatus
) -> None:
    if status.healthy is not None:
        metrics.SITE_HEALTHY.labels(namespace, name, key).set(1 if status.healthy else 0)
    rep = status.replication
    if rep is not None and rep.role == "replica" and rep.stale is not None:
        metrics.REPLICATION_STALE.labels(namespace, name, key).set(1 if rep.stale else 0)
        if rep.lag_bytes is not None:
            metrics.REPLICATION_LAG_BYTES.labels(namespace, name, key).set(rep.lag_bytes)
        if rep.lag_seconds is not None:
            metrics.REPLICATION_LAG_SECONDS.labels(namespace, name, key).set(rep.lag_seconds)
    else:  # the serving site (or no database check): no lag to export
        for gauge in (metrics.REPLICATION_STALE, metrics.REPLICATION_LAG_BYTES,
                      metrics.REPLICATION_LAG_SECONDS):
            try:
                gauge.remove(namespace, name, key)
            except KeyError:
                pass
    for check in status.checks or []:
        if check.latency_ms is not None:
            metrics.PROBE_LATENCY.labels(namespace, name, key).observe(check.latency_ms / 1000)


KINDS = ("Failover", "Failback")
RESULTS = ("Succeeded", "Failed")


def init_counters(namespace: str, name: str) -> None:
    """Create the plan's counter series at 0: Prometheus' increase() cannot see a series
    that appears already at 1, so an alert on the first failover would never fire."""
    for kind in KINDS:
        for result in RESULTS:
            metrics.FAILOVER_TOTAL.labels(namespace, name, kind, result)


def record_state(namespace: str, name: str, state: str | None) -> None:
    init_counters(namespace, name)
    metrics.FAILOVER_BLOCKED.labels(namespace, name).set(1 if state == "Blocked" else 0)
    for candidate in STATES:
        metrics.FAILOVER_STATE.labels(namespace, name, candidate).set(
            1 if candidate == (state or "Monitoring") else 0
        )


def forget_metrics(namespace: str, name: str) -> None:
    """Drop the plan's series when it is deleted."""
    try:
        metrics.FAILOVER_BLOCKED.remove(namespace, name)
    except KeyError:
        pass
    for gauge, values in (
        (metrics.REPLICATION_STALE, ("primary", "secondary")),
        (metrics.REPLICATION_LAG_BYTES, ("primary", "secondary")),
        (metrics.REPLICATION_LAG_SECONDS, ("primary", "secondary")),
        (metrics.SITE_HEALTHY, ("primary", "secondary")),
        (metrics.PROBE_LATENCY, ("primary", "secondary")),
        (metrics.FAILOVER_STATE, STATES),
    ):
        for value in values:
            try:
                gauge.remove(namespace, name, value)
            except KeyError:
                pass
    for kind in KINDS:
        for result in RESULTS:
            try:
                metrics.FAILOVER_TOTAL.remove(namespace, name, kind, result)
            except KeyError:
                pass
        try:
            metrics.FAILOVER_DURATION.remove(namespace, name, kind)
        except KeyError:
            pass


# --------------------------------------------------------------------------- the tick


def tick(
    namespace: str,
    name: str,
    runtime: FailoverRuntime,
    *,
    halted: Callable[[], bool] = lambda: False,
    clock: Clock | None = None,
) -> float | None:
    """One round for one plan. Returns the seconds until the next round is due, or None
    when the plan is gone. Raises `Halted` when its daemon was stopped mid-way."""
    clock = clock or runtime.clock
    cluster = runtime.cluster
    key = (namespace, name)
    body = cluster.get_plan(namespace, name)
    if body is None:
        runtime.unsaved.pop(key, None)
        return None
    parsed = parse_spec(FailoverPlanSpec, body.get("spec"))
    if isinstance(parsed, SpecError):
        return INVALID_SPEC_RETRY_SECONDS  # the accept handler reports it
    if tenancy.refusal(parsed, namespace, runtime.settings) is not None:
        # Reaches outside its namespace: nothing is probed or run (the accept handler
        # reports why); an edit of the plan or of the settings lets it go on.
        return INVALID_SPEC_RETRY_SECONDS
    spec = parsed
    stored = dict(body.get("status") or {})
    written = FailoverPlanStatus.model_validate(stored)
    status = written
    unsaved = runtime.unsaved.get(key)
    uid = (body.get("metadata") or {}).get("uid")
    if unsaved is not None and (unsaved.uid != uid or unsaved.written != stored):
        unsaved = None  # written by someone else (or a new plan of that name): start from it
        runtime.unsaved.pop(key, None)
    if unsaved is not None and unsaved.status is not None:
        status = unsaved.status
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    triggers = {k: v for k, v in annotations.items() if k in TRIGGERS}
    writer = PlanWriter(cluster, body, halted)
    now = clock()
    ignored: dict[str, str] = {}
    approval: Mapping[str, Any] | None = None
    if failover.by_approval_objects(spec):
        # Anyone who may patch the plan can set annotations: here they decide nothing.
        ignored, triggers = triggers, {}
        approval = failover.pending_approval(cluster.list_approvals(namespace), name)
        if approval is not None:
            mapped = failover.approval_triggers(approval, now)
            if isinstance(mapped, str):
                settle_approval(cluster, approval, False, mapped, None, now)
                approval = None
            else:
                triggers = mapped

    running = status.state in RUNNING_STATES
    due = {
        key: site
        for key, site in (("primary", spec.primary), ("secondary", spec.secondary))
        if failover.probe_due(site, (status.sites or {}).get(key), now)
    }
    if not due and not triggers and not ignored and not running and status.state is not None:
        return next_delay(spec, status, now)

    if due and not running:
        status = probe(spec, status, due, namespace, name, runtime)
    if status.state is None:
        status = status.model_copy(update={"state": "Monitoring", "active_site": "primary"})
    now = clock()
    decision = failover.decide(spec, status, triggers, now, plan=(namespace, name))
    if failover.by_approval_objects(spec):
        decision = for_approval_objects(spec, name, decision, ignored)
    status = apply_decision(status, decision)
    updates = conditions_for(spec, status, decision)
    heartbeat = dt.timedelta(seconds=runtime.settings.failover_status_heartbeat_seconds)
    quiet = (
        unsaved is not None
        and now - unsaved.written_at < heartbeat
        and decision.action == "none"
        and not decision.events
        and not decision.consume
        and approval is None
        and significant(spec, written) == significant(spec, status)
        and not conditions_change(stored.get("conditions"), updates)
    )
    if quiet:
        assert unsaved is not None
        unsaved.status = status
    else:
        writer.save(status, updates, now)
    record_state(namespace, name, status.state)
    for event in decision.events:
        writer.event(event.type, event.reason, event.message)

    if decision.action in ("start_failover", "start_failback"):
        status = begin(spec, status, decision, now)
        writer.save(status, conditions_for(spec, status, decision), now)
        record_state(namespace, name, status.state)
        writer.remove_annotations(decision.consume)
        if approval is not None:
            used, message = failover.approval_outcome(decision, triggers)
            last = status.last_transition
            settle_approval(
                cluster, approval, used, message, last.id if last and used else None, now
            )
            approval = None
        status = drive(spec, status, writer, runtime, clock)
    else:
        writer.remove_annotations(decision.consume)
        if approval is not None:
            used, message = failover.approval_outcome(decision, triggers)
            settle_approval(cluster, approval, used, message, None, now)
        if decision.action == "continue":
            status = drive(spec, status, writer, runtime, clock)
    if writer.writes and not quiet:
        runtime.unsaved[key] = Unsaved(uid, dict(writer.seen), clock())
    return next_delay(spec, status, clock())


def lag_band(lag_bytes: int | None, max_lag_bytes: int) -> tuple[bool, int] | None:
    """A replica's lag as status tells it without a write per probe: over maxLagBytes or
    not, and its order of magnitude (0 for none, then 1 for < 10 bytes, 2 for < 100, ...)."""
    if lag_bytes is None:
        return None
    magnitude = 0 if lag_bytes <= 0 else 1 + int(math.log10(lag_bytes))
    return lag_bytes > max_lag_bytes, magnitude


def conditions_change(
    conditions: list[dict[str, Any]] | None, updates: list[ConditionUpdate]
) -> bool:
    """True when an update changes a condition's status or reason (a new message alone, such
    as a lag figure, waits for the heartbeat)."""
    current = {c.get("type"): c for c in conditions or []}
    for update in updates:
        found = current.get(update.type)
        if found is None or (found.get("status"), found.get("reason")) != (
            update.status, update.reason,
        ):
            return True
    return False


def significant(spec: FailoverPlanSpec, status: FailoverPlanStatus) -> tuple[Any, ...]:
    """What of a plan's status is written as soon as it changes: its state, each site's
    health and failure run, the success run until one probe past the threshold (a recovery
    confirmed), each check's verdict, each replica's role, link and lag band (`lag_band`).
    Latencies, probe times, positions and longer success runs wait for the heartbeat."""
    sites: list[tuple[Any, ...] | None] = []
    for key, site in (("primary", spec.primary), ("secondary", spec.secondary)):
        found = (status.sites or {}).get(key)
        if found is None:
            sites.append(None)
            continue
        rep = found.replication
        sites.append((
            found.healthy,
            min(found.consecutive_failures, site.failure_threshold),
            min(found.consecutive_successes, site.success_threshold + 1),
            found.down_since,
            tuple((c.name, c.ok) for c in found.checks or []),
            None if rep is None else (
                rep.role, rep.streaming, rep.read_only, rep.stale,
                lag_band(rep.lag_bytes, spec.max_lag_bytes),
            ),
        ))
    return (
        status.state,
        status.active_site,
        status.approval_token,
        status.last_transition,
        len(status.history or []),
        tuple(sites),
    )


def for_approval_objects(
    spec: FailoverPlanSpec, name: str, decision: failover.Decision, ignored: Mapping[str, str]
) -> failover.Decision:
    """The decision of a plan that acts only on FailoverApproval objects: trigger annotations
    are removed with a Warning, and a recommendation points at FailoverApproval instead of
    publishing a token."""
    events = list(decision.events)
    for key in ignored:
        events.append(failover.Event(
            "Warning", "ApprovalRequired",
            f"{key} ignored: this plan (approval.by: FailoverApproval) acts only on "
            f"FailoverApproval objects with planName: {name}"))
    message = decision.message
    if decision.reason == "AwaitingApproval":
        message = message.split("; approve with")[0] + (
            f"; approve by creating a FailoverApproval with planName: {name}, action: Failover")
        events = [dataclasses.replace(e, message=message) if e.reason == "FailoverRecommended"
                  else e for e in events]
    return dataclasses.replace(
        decision, events=tuple(events), message=message,
        consume=(*decision.consume, *ignored),
        approval_token=APPROVAL_BY_OBJECT if decision.approval_token else None,
    )


APPROVAL_BY_OBJECT = "use-a-FailoverApproval"
"""status.approvalToken of a plan approved by FailoverApproval objects: not a secret, it only
keeps the recommendation stable; approve annotations are refused anyway."""


def settle_approval(
    cluster: PlanCluster, approval: Mapping[str, Any], used: bool, message: str,
    transition_id: str | None, now: dt.datetime,
) -> None:
    """Record on the FailoverApproval what the plan did with it (it acts once)."""
    meta = approval["metadata"]
    state = "Used" if used else "Refused"
    conditions = set_conditions(
        (approval.get("status") or {}).get("conditions"),
        [ConditionUpdate("Succeeded", "True" if used else "False", state, message)],
        generation=meta.get("generation"), now=now,
    )
    cluster.patch_approval_status(meta["namespace"], meta["name"], {
        "state": state, "message": message[:1000], "transitionId": transition_id,
        "handledTime": iso(now), "conditions": conditions,
    })


def probe(
    spec: FailoverPlanSpec,
    status: FailoverPlanStatus,
    due: Mapping[str, Any],
    namespace: str,
    name: str,
    runtime: FailoverRuntime,
) -> FailoverPlanStatus:
    """Probe the due sites (all their checks in parallel) and step their state machines."""
    settings = runtime.settings
    context = ProbeContext(
        namespace,
        secrets=runtime.cluster.secret_reader(namespace),
        workloads=runtime.cluster.workloads(namespace, settings.reachable_namespaces),
        endpoints=settings.endpoints,
    )
    probes = runtime.probes.probe_sites(due, context)
    previous = dict(status.sites or {})
    sites = dict(previous)
    for key, result in probes.items():
        sites[key] = failover.next_site_status(due[key], sites.get(key), result)
    active: failover.SiteKey = "secondary" if status.active_site == "secondary" else "primary"
    sites = failover.next_replication(spec, active, previous, sites, probes)
    for key in sites:
        record_site_metrics(namespace, name, key, sites[key])
    return status.model_copy(update={"sites": sites})


def apply_decision(status: FailoverPlanStatus, decision: failover.Decision) -> FailoverPlanStatus:
    if decision.action == "recommend":
        return status.model_copy(
            update={"state": "AwaitingApproval", "approval_token": decision.approval_token}
        )
    if decision.action == "withdraw":
        return status.model_copy(update={"state": "Monitoring", "approval_token": None})
    if decision.action == "block":
        return status.model_copy(update={"state": "Blocked", "approval_token": None})
    if decision.action == "unblock":
        return status.model_copy(update={"state": "Monitoring"})
    return status


def conditions_for(
    spec: FailoverPlanSpec, status: FailoverPlanStatus, decision: failover.Decision
) -> list[ConditionUpdate]:
    sites = status.sites or {}
    return [
        failover.site_condition("primary", spec.primary, sites.get("primary")),
        failover.site_condition("secondary", spec.secondary, sites.get("secondary")),
        decision.condition,
        ready_condition(spec, status),
    ]


def planned_for(
    kind: failover.TransitionKind, spec: FailoverPlanSpec, status: FailoverPlanStatus
) -> list[failover.PlannedStep]:
    if kind == "Failover":
        return failover.plan_steps(spec.steps)
    return failover.failback_plan(spec, status)


def begin(
    spec: FailoverPlanSpec,
    status: FailoverPlanStatus,
    decision: failover.Decision,
    now: dt.datetime,
) -> FailoverPlanStatus:
    kind: failover.TransitionKind = (
        "Failover" if decision.action == "start_failover" else "Failback"
    )
    planned = planned_for(kind, spec, status)
    resume_from = status.last_transition if decision.resume else None
    transition = failover.new_transition(
        kind, decision.transition_reason or decision.message, planned, now,
        detected_time=decision.detected_time, resume_from=resume_from,
    )
    if kind == "Failover":
        transition = transition.model_copy(update={
            "expected_lag_bytes": decision.expected_lag_bytes,
            "expected_lag_seconds": decision.expected_lag_seconds,
            "data_loss_accepted": decision.data_loss_accepted,
        })
    return failover.begin_transition(status, transition, spec.history_limit)


def guarded_route53(factory: Route53ClientFactory, rule: EndpointRule) -> Route53ClientFactory:
    """The factory, refusing a step whose `endpoint` resolves to an address `rule` refuses
    (boto3 connects by itself, so the check resolves the name just before)."""

    def make(step: Route53Step, credentials: Mapping[str, str] | None) -> Any:
        if step.endpoint:
            rule.check_resolved_url("route53.endpoint", step.endpoint)
        return factory(step, credentials)

    return make


def drive(
    spec: FailoverPlanSpec,
    status: FailoverPlanStatus,
    writer: PlanWriter,
    runtime: FailoverRuntime,
    clock: Clock,
) -> FailoverPlanStatus:
    """Run (or resume) the procedure of `status.lastTransition` to its end and settle the
    plan's state. Raises `Halted` when the daemon is stopped meanwhile."""
    transition = status.last_transition
    assert transition is not None
    planned = planned_for(transition.kind, spec, status)
    namespace, name = writer.namespace, writer.name
    settings = runtime.settings
    cluster = runtime.cluster
    ports = StepPorts(
        secrets=cluster.secret_reader(namespace),
        scaler=cluster.workloads(namespace, settings.reachable_namespaces),
        jobs=cluster.plan_jobs(
            writer.body, transition.id,
            admit=partial(tenancy.job_template, "job.template", settings=settings),
        ),
        route53=guarded_route53(runtime.route53, settings.endpoints),
        endpoints=settings.endpoints,
    )
    failing_over = transition.kind == "Failover"
    source, target = (spec.primary, spec.secondary) if failing_over else (
        spec.secondary, spec.primary)
    base = status

    def save(changed: Transition) -> None:
        writer.save_transition(base, changed)

    final = run_procedure(
        planned, transition, plan=name, namespace=namespace, from_site=source.name,
        to_site=target.name, ports=ports, save=save, clock=clock,
        max_lag_bytes=spec.max_lag_bytes,
    )
    status = failover.end_transition(base, final)
    now = clock()
    outcome = ConditionUpdate(
        "FailoverRecommended", "False", status.state or "Monitoring",
        f"{final.kind.lower()} {final.result.lower() if final.result else 'ended'}",
    )
    sites = status.sites or {}
    writer.save(status, [
        failover.site_condition("primary", spec.primary, sites.get("primary")),
        failover.site_condition("secondary", spec.secondary, sites.get("secondary")),
        outcome,
        ready_condition(spec, status),
    ], now)
    record_state(namespace, name, status.state)
    result = final.result or "Failed"
    metrics.FAILOVER_TOTAL.labels(namespace, name, final.kind, result).inc()
    if final.duration_seconds is not None:
        metrics.FAILOVER_DURATION.labels(namespace, name, final.kind).observe(
            final.duration_seconds
        )
    writer.event(
        "Normal" if result == "Succeeded" else "Warning", f"{final.kind}{result}",
        summary(final),
    )
    return status


def summary(transition: Transition) -> str:
    """One line for the end-of-transition event: outcome, duration, RPO, each step."""
    parts = [f"{transition.kind} {transition.result or 'ended'}"]
    if transition.duration_seconds is not None:
        parts.append(f"in {transition.duration_seconds:.2f}s")
    if transition.rpo_seconds is not None:
        parts.append(f"measured RPO {transition.rpo_seconds:.3f}s ({transition.lag_bytes or 0} "
                     "bytes of WAL behind)")
    steps = []
    for step in transition.steps or []:
        took = ""
        if step.start_time and step.completion_time:
            took = f" {(step.completion_time - step.start_time).total_seconds():.2f}s"
        steps.append(f"{step.name} {step.state}{took}")
    return ", ".join(parts) + ": " + "; ".join(steps)
