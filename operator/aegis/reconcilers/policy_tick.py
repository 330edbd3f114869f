"""A BackupPolicy's ticks: plan (aegis.reconcilers.schedule), prepare the upcoming run ahead of
its due time (point created, Job built), fire it at the tick (one request), and settle the
points the scheduler made whose tick no longer fires.

Rules that keep the scheduler from wedging:

- Only points the scheduler made (`ownership.is_scheduler_point`) are its own. A user's
  `trigger: Scheduled` or `Imported` point is refused (`ownership.refusal`) and never counts
  as an active run.
- A scheduler point with no Job is "unstarted". Unless it is the run the plan starts now, the
  tick Forbid holds back, or the run being prepared, it is removed (its tick no longer fires:
  the policy was suspended or its schedule edited inside the lead window). One whose Job
  exists is handed to the point's reconciler (after a restart between fire and record).
- A run starts only when the policy's references pass. Otherwise the tick is skipped: no
  point, no Job, `missedRuns` counts it, a Warning event and the Scheduling condition say why.
- Whatever fails while planning or firing is recorded as the policy's tick failure, which
  makes it Ready=False (the status writer reads it) until a tick succeeds.

State lives in a `TickState` made at start-up and kept in the policy runtime; every function
takes its ports and `now`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aegis.api import RECOVERY_POINT
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.reconcilers import naming, ownership, schedule
from aegis.reconcilers.backup import parse_time
from aegis.reconcilers.conditions import ConditionUpdate, iso, set_conditions
from aegis.reconcilers.policy_ports import Body, PointRunner, PolicyCluster, Problem
from aegis.reconcilers.validation import SpecError, parse_spec

logger = logging.getLogger("aegis.backuppolicy")

TERMINAL = ("Completed", "Failed", "Corrupted", "Expired")
Key = tuple[str, str]


@dataclass
class Prepared:
    """A run made ready ahead of its due time."""

    due: dt.datetime
    scheduled: dt.datetime
    point: Body
    job: Body
    status_update: dict[str, Any]
    policy: Body


ON_SCHEDULE = ConditionUpdate("Scheduling", "True", "OnSchedule", "Runs start at their ticks")


class TickState:
    """What the scheduler remembers between ticks, per policy. Made at start-up."""

    def __init__(self, followup_workers: int = 2) -> None:
        self.lock = threading.Lock()
        self.prepared: dict[Key, Prepared] = {}
        # What this process last wrote as a policy's status.handledUntil: the cache may lag
        # behind our own write by a watch event, and a stale cursor would count runs twice.
        self.cursor: dict[Key, dt.datetime] = {}
        self.warm: set[Key] = set()
        # The point whose Job this process created last: its status may not say so yet.
        self.fired: dict[Key, str] = {}
        # Points whose Job this process created and whose follow-up (recording the start)
        # is queued: when the follow-ups lag behind a busy minute, the next ticks must not
        # take these for runs a stopped process left behind and record them again.
        self.recording: set[Key] = set()
        # When each policy's ticks fall (schedule, time zone, jitter) as of its last plan: an
        # edit is seen as a change of these, and takes effect from then on (`_edit_floor`).
        self.timing: dict[Key, tuple[str, str, int]] = {}
        # Inputs of the policy's conditions, written by the status writer.
        self.references: dict[Key, Problem | None] = {}
        self.failures: dict[Key, Problem] = {}
        self.scheduling: dict[Key, ConditionUpdate] = {}
        # Status writes that follow a run's start wait until no run is being fired, so that
        # at a busy tick they queue behind the Jobs instead of competing with them.
        self.followups = ThreadPoolExecutor(
            max_workers=followup_workers, thread_name_prefix="aegis-followup"
        )
        self._firing = 0
        self._last_fire = 0.0  # time.monotonic() of the newest Job create started
        self._firing_done = threading.Condition()

    def problem(self, key: Key) -> Problem | None:
        """Why the policy cannot run now (references first), or None."""
        return self.references.get(key) or self.failures.get(key)

    def forget(self, key: Key) -> None:
        with self.lock:
            self.prepared.pop(key, None)
        self.warm.discard(key)
        self.cursor.pop(key, None)
        self.timing.pop(key, None)
        self.fired.pop(key, None)
        self.failures.pop(key, None)
        self.scheduling.pop(key, None)

    def drop_prepared(self, key: Key) -> None:
        """The spec changed: a run prepared from the old one is stale (its point is settled
        by the next tick). The cache may still hold the old spec: read the API next."""
        with self.lock:
            self.prepared.pop(key, None)
        self.warm.discard(key)

    def shutdown(self) -> None:
        self.followups.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class TickPorts:
    cluster: PolicyCluster
    runner: PointRunner
    check: Callable[[BackupPolicySpec, str], Problem | None]
    """The policy's reference check (verdicts cached): None when it can back up."""
    build_job: Callable[[Body, BackupPolicySpec, list[str]], Body]
    """The backup Job of a point, given its policy's spec and key ids (a pure builder)."""
    notify: Callable[[str, str], None]
    """The policy's conditions' inputs changed: write its status soon."""
    spec_of: Callable[[Body], BackupPolicySpec | None] = field(default=lambda body: _parse(body))
    """The policy's accepted spec, or None when its handler refuses it."""
    prepare_seconds: float = 30.0
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    """For log lines only (how late a Job started); decisions use `now`."""


def _parse(body: Body) -> BackupPolicySpec | None:
    spec = parse_spec(BackupPolicySpec, body.get("spec"))
    return None if isinstance(spec, SpecError) else spec


def tick(
    state: TickState, ports: TickPorts, namespace: str, policy: str, now: dt.datetime
) -> float | None:
    """Do what the schedule says at `now`; return seconds until the next look (None: wait for
    a change of the spec). A failure is recorded (Ready=False) and raised for the caller's
    backoff."""
    key = (namespace, policy)
    try:
        delay = _tick(state, ports, namespace, policy, now)
    except Exception as error:
        if isinstance(error, schedule.ScheduleError):
            problem = Problem("InvalidSchedule", str(error))
        else:
            detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            problem = Problem(
                "SchedulingFailed",
                f"planning or starting a run failed ({type(error).__name__}: {detail}); "
                "retried with backoff",
            )
        if state.failures.get(key) != problem:
            state.failures[key] = problem
            ports.notify(namespace, policy)
        raise
    if state.failures.pop(key, None) is not None:
        ports.notify(namespace, policy)
    return delay


def _set_scheduling(
    state: TickState, ports: TickPorts, key: Key, condition: ConditionUpdate, body: Body
) -> None:
    if state.scheduling.get(key) == condition:
        return
    state.scheduling[key] = condition
    if condition.status == "False" and condition.reason != "Suspended":
        ports.cluster.post_event(body, "Warning", condition.reason, condition.message)
    ports.notify(*key)


def _tick(
    state: TickState, ports: TickPorts, namespace: str, policy: str, now: dt.datetime
) -> float | None:
    key = (namespace, policy)
    with state.lock:
        ready = state.prepared.pop(key, None)
    if ready is not None:
        if now < ready.due:
            with state.lock:
                state.prepared.setdefault(key, ready)
            return (ready.due - now).total_seconds()
        problem = state.problem(key)
        if problem is not None:
            _skip_prepared(state, ports, ready, problem, now)
            return 0.0  # plan the next tick right away
        _fire(state, ports, ready, now)
        # Plan the next tick when it is due to be prepared, not at once: re-planning now
        # would write the status the fired run's follow-up writes anyway, and at a busy tick
        # a thousand such writes would compete with the Jobs still being created.
        following = parse_time(ready.status_update.get("nextScheduleTime"))
        if following is None:
            return 0.0
        return max(0.0, (following - now).total_seconds() - ports.prepare_seconds)

    # The first look at a policy after start-up reads the API server; later ones read the
    # watch cache, which by then holds everything kopf has listed.
    warm = key in state.warm
    body = ports.cluster.get_policy(namespace, policy, cached=warm)
    if body is None:
        state.forget(key)
        return None
    spec = ports.spec_of(body)
    if spec is None:
        return None  # the policy's handler reports it; a spec change wakes us
    status = body.get("status") or {}
    since = max(
        t
        for t in (
            parse_time(status.get("handledUntil"))
            or parse_time(body["metadata"].get("creationTimestamp"))
            or now,
            state.cursor.get(key),
        )
        if t is not None
    )
    points = ports.cluster.list_points(namespace, policy, cached=warm)
    state.warm.add(key)
    unstarted = _unstarted(state, ports, key, points)
    skip = {p["metadata"]["name"] for p in unstarted} | {
        p["metadata"]["name"] for p in points if ownership.refusal(p) is not None
    }
    active = [
        p["metadata"]["name"]
        for p in points
        if (p.get("status") or {}).get("phase") not in TERMINAL
        and p["metadata"]["name"] not in skip
    ]
    policy_key = schedule.PolicyKey(namespace, policy)
    timing = (spec.schedule, spec.time_zone, spec.jitter_seconds)
    before = state.timing.get(key)
    if before is not None and before != timing:
        since = _edit_floor(spec, before, policy_key, since=since, now=now, active=active)
    plan = schedule.plan_runs(spec, policy_key, since=since, now=now, active=active)
    state.timing[key] = timing
    logger.debug(
        "Plan of %s/%s at %s (since %s, active %s): %s run=%s next=%s",
        namespace, policy, iso(now), iso(since), active, plan.action, plan.run_name,
        plan.next_run_time,
    )
    upcoming: schedule.Plan | None = None
    lead: float | None = None
    if plan.run is None and plan.next_run_time is not None and plan.requeue_after is not None:
        lead = plan.requeue_after - ports.prepare_seconds
        if lead <= 0:
            upcoming = schedule.plan_runs(
                spec, policy_key, since=plan.handled_until, now=plan.next_run_time, active=active
            )
            if upcoming.run is None or upcoming.run_name is None or upcoming.stop:
                upcoming = None  # it would wait or stop others: decide at the tick itself
    keep = {plan.run_name, upcoming.run_name if upcoming else None}
    if plan.waiting is not None:
        keep.add(naming.recovery_point_name(policy, plan.waiting))
    for point in unstarted:
        if point["metadata"]["name"] not in keep:
            _remove_unstarted(ports, body, point, spec)

    for name in plan.stop:
        _replace(ports, namespace, next(p for p in points if p["metadata"]["name"] == name), now)
    update: dict[str, Any] = {"handledUntil": iso(plan.handled_until)}
    update["nextScheduleTime"] = iso(plan.next_run_time) if plan.next_run_time else None
    missed = int(status.get("missedRuns") or 0)
    if plan.missed.count:
        missed += plan.missed.count
        update["missedRuns"] = missed
        ports.cluster.post_event(
            body,
            "Warning",
            "MissedRuns",
            f"{plan.missed.count} scheduled run(s) were skipped "
            f"(last {iso(plan.missed.last) if plan.missed.last else '?'}): "
            "they could not start within startingDeadlineSeconds or a newer run superseded them",
        )
    if plan.action == "Suspended":
        _set_scheduling(
            state,
            ports,
            key,
            ConditionUpdate("Scheduling", "False", "Suspended", "spec.suspend is true"),
            body,
        )
    elif plan.action == "Wait":
        waiting = iso(plan.waiting) if plan.waiting else "?"
        _set_scheduling(
            state,
            ports,
            key,
            ConditionUpdate(
                "Scheduling",
                "False",
                "RunBlocked",
                f"the run of {waiting} waits: concurrencyPolicy Forbid and "
                f"{', '.join(plan.blocked_by)} still running; it starts when they end, or is "
                "counted missed past startingDeadlineSeconds",
            ),
            body,
        )
    if plan.run is not None and plan.run_name is not None:
        # Due now (first run after a restart, a tick held back by Forbid, or one not
        # prepared in time): start at once, if the policy can back up.
        problem = ports.check(spec, namespace)
        _record_references(state, ports, key, problem)
        if problem is not None:
            update["missedRuns"] = missed + 1
            _skipped(state, ports, key, body, plan.run, problem)
        else:
            point = _create_point(ports.cluster, body, plan.run_name, plan.run)
            ports.runner.start(point)  # a failure is raised: the tick is retried, not lost
            state.fired[key] = plan.run_name
            update["lastScheduleTime"] = iso(plan.run)
            update["lastRecoveryPoint"] = plan.run_name
            _set_scheduling(state, ports, key, ON_SCHEDULE, body)
        state.cursor[key] = plan.handled_until
        ports.cluster.patch_policy_status(namespace, policy, update)
        if plan.requeue_after is None:
            return None
        return max(0.0, plan.requeue_after - ports.prepare_seconds)  # prepare the next one
    state.cursor[key] = plan.handled_until
    if plan.action in ("Idle", "Skip"):
        _set_scheduling(state, ports, key, ON_SCHEDULE, body)
    if upcoming is not None and plan.requeue_after is not None:
        problem = ports.check(spec, namespace)
        _record_references(state, ports, key, problem)
        if problem is None:
            _prepare(state, ports, body, spec, plan, upcoming, update)
            return max(0.0, plan.requeue_after)
        # Not Ready: nothing is prepared; at the tick the run is skipped with the reason.
    if _tells_something(status, update, suspended=plan.action == "Suspended"):
        ports.cluster.patch_policy_status(namespace, policy, update)
    if plan.action == "Suspended":
        # Look again at each tick, so the cursor passes the ticks of the suspended period
        # and resuming does not make them up (a tick passed unseen would run at resume).
        following = schedule.next_tick(spec.schedule, spec.time_zone, now)
        return max(0.0, (following - now).total_seconds())
    if lead is not None and lead > 0:
        return lead
    return plan.requeue_after


def _edit_floor(
    spec: BackupPolicySpec,
    before: tuple[str, str, int],
    policy: schedule.PolicyKey,
    *,
    since: dt.datetime,
    now: dt.datetime,
    active: list[str],
) -> dt.datetime:
    """The cursor to plan with when the schedule, time zone or jitter changed since the last
    plan (seen at `now`): the new timing applies from the edit on. A tick of the new schedule
    before the edit was never a tick of the policy: it is neither run now nor counted missed
    (the cursor moves to `now`), as nothing from a suspended period is made up.

    Unless the old timing still owed something at `now`: a tick of it due and not started
    (waiting under Forbid, or not fired yet) keeps the cursor where it was, and the new
    timing decides as before; a tick of it not yet due but before `now` (its jitter) stays
    ahead of the cursor."""
    schedule_, time_zone, jitter = before
    old = spec.model_copy(
        update={"schedule": schedule_, "time_zone": time_zone, "jitter_seconds": jitter}
    )
    # The old timing planned before (it is recorded only then): it cannot raise here.
    owed = schedule.plan_runs(old, policy, since=since, now=now, active=active)
    if owed.action not in ("Idle", "Suspended"):
        return since
    floor = now if owed.next_tick is None else min(now, owed.next_tick - _TINY)
    return max(since, floor)


_TINY = dt.timedelta(microseconds=1)


SUSPENDED_CURSOR_SECONDS = 600
"""While a policy is suspended, its cursor (status.handledUntil) moves at every tick in memory
but is written at most this often by the tick, or along with a status write that happens
anyway (`PolicyRuntime.maintain`): a suspended per-minute policy at rest costs no write a
minute. What the written cursor is for: after an operator restart, ticks before it are not
made up; a restart while suspended re-plans at once and moves it again."""


def _tells_something(status: Body, update: Body, *, suspended: bool) -> bool:
    """Whether writing `update` changes the policy's status (merge patch: None clears). A
    suspended policy's cursor alone counts only when the written one is
    SUSPENDED_CURSOR_SECONDS behind."""
    for field_name, value in update.items():
        if status.get(field_name) == value:
            continue
        if suspended and field_name == "handledUntil":
            written, moved = parse_time(status.get(field_name)), parse_time(value)
            if written is not None and moved is not None and (
                0 <= (moved - written).total_seconds() < SUSPENDED_CURSOR_SECONDS
            ):
                continue
        return True
    return False


def _record_references(
    state: TickState, ports: TickPorts, key: Key, problem: Problem | None
) -> None:
    if state.references.get(key) != problem:
        state.references[key] = problem
        ports.notify(*key)


def _skipped(
    state: TickState,
    ports: TickPorts,
    key: Key,
    body: Body,
    scheduled: dt.datetime,
    problem: Problem,
) -> None:
    message = (
        f"the run of {iso(scheduled)} was skipped: the policy is not Ready "
        f"({problem.reason}: {problem.message})"
    )
    ports.cluster.post_event(body, "Warning", "RunSkipped", message)
    state.scheduling[key] = ConditionUpdate("Scheduling", "False", "RunSkipped", message)
    ports.notify(*key)


def _unstarted(state: TickState, ports: TickPorts, key: Key, points: list[Body]) -> list[Body]:
    """The scheduler's points with no Job. One whose Job exists after all (created by a
    process that stopped before recording it) is handed to the point's reconciler."""
    found = []
    for point in points:
        status = point.get("status") or {}
        name = point["metadata"]["name"]
        if (
            not ownership.is_scheduler_point(point)
            or status.get("phase") in TERMINAL
            or status.get("jobName")
            or point["metadata"].get("deletionTimestamp")
            or name == state.fired.get(key)
            or (key[0], name) in state.recording
        ):
            continue
        job = ports.cluster.get_job(key[0], naming.backup_job_name(name))
        if job is not None:
            ports.runner.started(point, job)
            continue
        found.append(point)
    return found


def _remove_unstarted(ports: TickPorts, policy: Body, point: Body, spec: BackupPolicySpec) -> None:
    name = point["metadata"]["name"]
    scheduled = (point.get("spec") or {}).get("scheduledTime") or "?"
    why = (
        "the policy is suspended"
        if spec.suspend
        else "its tick no longer fires (schedule, time zone or jitter changed, or it was skipped)"
    )
    if ports.cluster.delete_point(point["metadata"]["namespace"], name):
        ports.cluster.post_event(
            policy,
            "Normal",
            "UnstartedRunRemoved",
            f"removed {name}, prepared for {scheduled} but never started: {why}",
        )


def _prepare(
    state: TickState,
    ports: TickPorts,
    body: Body,
    spec: BackupPolicySpec,
    plan: schedule.Plan,
    upcoming: schedule.Plan,
    update: dict[str, Any],
) -> None:
    """Make the upcoming tick ready: create its point, build its Job."""
    assert plan.next_run_time is not None and upcoming.run is not None
    assert upcoming.run_name is not None
    meta = body["metadata"]
    point = _create_point(ports.cluster, body, upcoming.run_name, upcoming.run)
    ref = spec.encryption.key_secret_ref
    key_ids = sorted(ports.cluster.read_secret(meta["namespace"], ref.name)) if ref else []
    job = ports.build_job(point, spec, key_ids)
    fired_update = {
        **update,
        "handledUntil": iso(upcoming.handled_until),
        "lastScheduleTime": iso(upcoming.run),
        "lastRecoveryPoint": upcoming.run_name,
        "nextScheduleTime": iso(upcoming.next_run_time) if upcoming.next_run_time else None,
    }
    if upcoming.missed.count:
        fired_update["missedRuns"] = int(update.get("missedRuns") or 0) + upcoming.missed.count
    prepared = Prepared(plan.next_run_time, upcoming.run, point, job, fired_update, body)
    with state.lock:
        state.prepared[(meta["namespace"], meta["name"])] = prepared


def _skip_prepared(
    state: TickState, ports: TickPorts, ready: Prepared, problem: Problem, now: dt.datetime
) -> None:
    """The policy stopped being Ready between preparing and firing: no Job; the unstarted
    point goes, the tick is counted skipped."""
    meta = ready.point["metadata"]
    namespace, policy = meta["namespace"], ready.point["spec"]["policyRef"]["name"]
    key = (namespace, policy)
    ports.cluster.delete_point(namespace, meta["name"])
    body = ports.cluster.get_policy(namespace, policy, cached=True) or ready.policy
    missed = int((body.get("status") or {}).get("missedRuns") or 0) + 1
    update = {k: v for k, v in ready.status_update.items() if k not in ("lastRecoveryPoint",)}
    update.pop("lastScheduleTime", None)
    update["missedRuns"] = missed
    state.cursor[key] = ready.scheduled
    ports.cluster.patch_policy_status(namespace, policy, update)
    _skipped(state, ports, key, body, ready.scheduled, problem)


def _fire(state: TickState, ports: TickPorts, ready: Prepared, now: dt.datetime) -> None:
    """Start a prepared run: one request at the tick, status writes after."""
    meta = ready.point["metadata"]
    namespace, name = meta["namespace"], ready.job["metadata"]["name"]
    policy = ready.point["spec"]["policyRef"]["name"]
    with state._firing_done:
        state._firing += 1
        state._last_fire = time.monotonic()
    try:
        job, _ = ports.cluster.create_job(namespace, ready.job)
    finally:
        with state._firing_done:
            state._firing -= 1
            state._firing_done.notify_all()
    # Only now is the tick handled: a prepared run that never fired is planned again.
    state.cursor[(namespace, policy)] = ready.scheduled
    state.fired[(namespace, policy)] = meta["name"]
    late = (ports.clock() - ready.due).total_seconds()
    logger.info("Started backup Job %s/%s %.3fs after its due time", namespace, name, late)
    if state.scheduling.get((namespace, policy)) != ON_SCHEDULE:
        state.scheduling[(namespace, policy)] = ON_SCHEDULE
        ports.notify(namespace, policy)

    def record() -> None:
        with state._firing_done:
            deadline = time.monotonic() + 30
            while not _quiet(state) and (left := deadline - time.monotonic()) > 0:
                state._firing_done.wait(timeout=min(left, FOLLOWUP_QUIET_SECONDS))
        try:
            ports.runner.started(ready.point, job)
            ports.cluster.patch_policy_status(namespace, policy, ready.status_update)
        except Exception as error:  # logged; the next tick and the Job handler catch up
            logger.warning("Recording the start of %s/%s failed: %s", namespace, name, error)
        finally:
            state.recording.discard((namespace, meta["name"]))

    state.recording.add((namespace, meta["name"]))
    try:
        state.followups.submit(record)
    except RuntimeError:  # shutting down: the next start's resume handler records it
        state.recording.discard((namespace, meta["name"]))
        raise


FOLLOWUP_QUIET_SECONDS = 0.5
"""Follow-up writes of fired runs wait until no Job create has started for this long: at a
busy tick the tick threads fire in waves, and between two waves no create is in flight for a
moment; writes started then would compete with the next wave."""


def _quiet(state: TickState) -> bool:
    """No Job create in flight, and none started for FOLLOWUP_QUIET_SECONDS."""
    return not state._firing and time.monotonic() - state._last_fire >= FOLLOWUP_QUIET_SECONDS


def _create_point(cluster: PolicyCluster, policy: Body, name: str, scheduled: dt.datetime) -> Body:
    meta = policy["metadata"]
    body = {
        "apiVersion": RECOVERY_POINT.api_version,
        "kind": RECOVERY_POINT.kind,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": naming.recovery_point_labels(meta["name"]),
            "annotations": ownership.marks(ownership.SCHEDULER),
        },
        "spec": {
            "policyRef": {"name": meta["name"]},
            "trigger": "Scheduled",
            "scheduledTime": iso(scheduled),
        },
    }
    point, _ = cluster.create_point(meta["namespace"], body)
    point.setdefault("apiVersion", RECOVERY_POINT.api_version)
    point.setdefault("kind", RECOVERY_POINT.kind)
    return point


def _replace(ports: TickPorts, namespace: str, point: Body, now: dt.datetime) -> None:
    """concurrencyPolicy Replace: stop an active run; its point ends Failed."""
    name = point["metadata"]["name"]
    job = (point.get("status") or {}).get("jobName")
    if job:
        ports.cluster.delete_job(namespace, job)
    message = "replaced by a newer scheduled run (concurrencyPolicy Replace)"
    conditions = set_conditions(
        (point.get("status") or {}).get("conditions"),
        [ConditionUpdate("Complete", "False", "Replaced", message)],
        generation=point["metadata"].get("generation"),
        now=now,
    )
    ports.cluster.patch_point_status(
        namespace, name, {"phase": "Failed", "message": message, "conditions": conditions}
    )
