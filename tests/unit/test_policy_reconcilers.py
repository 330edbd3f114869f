"""The BackupPolicy reconcilers (references, status, tick, catalog) and the point-ownership
rules, driven through in-memory ports and an explicit clock: no API server, no S3."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from tests.unit.policy_ports_memory import (
    ManualClock,
    MemoryCluster,
    MemoryRunner,
    MemoryStore,
    Reachable,
    key_bytes,
)

from aegis.api.backuppolicy import BackupPolicySpec
from aegis.k8s.cache import PointCache, SecretCache
from aegis.reconcilers import naming, ownership, policy_references, policy_status, policy_tick
from aegis.reconcilers.backuppolicy import PolicyRuntime
from aegis.reconcilers.conditions import iso
from aegis.reconcilers.policy_ports import Problem
from aegis.settings import Settings

UTC = dt.UTC
NS = "shop"
START = dt.datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)


def spec_dict(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedule": "*/5 * * * *",
        "source": {
            "postgres": {
                "host": "db.shop.svc",
                "database": "orders",
                "userSecretRef": {"name": "db", "key": "username"},
                "passwordSecretRef": {"name": "db", "key": "password"},
            }
        },
        "storage": {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}},
        "encryption": {"keySecretRef": {"name": "keys"}},
    }
    spec.update(extra)
    return spec


class World:
    """A cluster, a bucket and a source, all in memory, plus the tick's ports."""

    def __init__(self, **spec: Any) -> None:
        self.cluster = MemoryCluster()
        self.store = MemoryStore()
        self.store.buckets.add("backups")
        self.reach = Reachable()
        self.cluster.secrets[(NS, "keys")] = {"k1": key_bytes()}
        self.cluster.secrets[(NS, "db")] = {"username": b"u", "password": b"p"}
        self.cluster.secrets[(NS, "s3")] = {
            "AWS_ACCESS_KEY_ID": b"a",
            "AWS_SECRET_ACCESS_KEY": b"s",
        }
        self.cluster.add_policy(NS, "orders", spec_dict(**spec), iso(START))
        self.verdicts = policy_references.Verdicts(30)
        self.now = START
        self.state = policy_tick.TickState()
        self.notified: list[tuple[str, str]] = []
        self.runner = MemoryRunner(self.cluster, self._job)
        self.ports = policy_tick.TickPorts(
            cluster=self.cluster,
            runner=self.runner,
            check=self.check,
            build_job=lambda point, spec, keys: self._job(point),
            notify=lambda ns, name: self.notified.append((ns, name)),
            prepare_seconds=30,
            clock=lambda: self.now,
        )

    @staticmethod
    def _job(point: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": naming.backup_job_name(point["metadata"]["name"])}}

    def spec(self) -> BackupPolicySpec:
        return BackupPolicySpec.model_validate(self.cluster.policies[(NS, "orders")]["spec"])

    def check(self, spec: BackupPolicySpec, namespace: str) -> Problem | None:
        return policy_references.check_references(
            spec,
            namespace,
            cluster=self.cluster,
            store=self.store,
            reach=self.reach,
            verdicts=self.verdicts,
            now=self.now,
        )

    def tick_at(self, when: dt.datetime) -> float | None:
        self.now = when
        return policy_tick.tick(self.state, self.ports, NS, "orders", when)

    def edit(self, **spec: Any) -> None:
        self.cluster.policies[(NS, "orders")]["spec"].update(spec)
        self.cluster.policies[(NS, "orders")]["metadata"]["generation"] += 1
        self.state.drop_prepared((NS, "orders"))

    def point_names(self) -> list[str]:
        return sorted(name for _, name in self.cluster.points)


def at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


# --- ticks -----------------------------------------------------------------------------------


def test_a_tick_is_prepared_inside_the_lead_window_and_fired_at_its_due_time() -> None:
    world = World()
    wait = world.tick_at(at(4.4))  # 36 s before 02:05: not yet inside the 30 s lead
    assert wait == pytest.approx(6.0)
    assert world.point_names() == []
    world.tick_at(at(4.6))  # 24 s before: prepared, point created, no Job yet
    tick = naming.recovery_point_name("orders", at(5))
    assert world.point_names() == [tick]
    point = world.cluster.points[(NS, tick)]
    assert ownership.is_scheduler_point(point)
    assert world.cluster.jobs == {}
    # Fired; the next tick (02:10) is planned when it is due to be prepared (30 s before).
    assert world.tick_at(at(5)) == pytest.approx(270.0)
    assert (NS, naming.backup_job_name(tick)) in world.cluster.jobs
    world.state.followups.shutdown(wait=True)
    assert world.cluster.points[(NS, tick)]["status"]["jobName"] == naming.backup_job_name(tick)


def test_suspend_in_the_lead_window_removes_the_prepared_point_and_the_next_run_happens() -> None:
    world = World()
    world.tick_at(at(4.6))
    first = naming.recovery_point_name("orders", at(5))
    assert world.point_names() == [first]
    world.edit(suspend=True)
    world.tick_at(at(4.7))
    assert world.point_names() == []  # no point is left behind without a Job
    assert "UnstartedRunRemoved" in world.cluster.reasons()
    assert world.tick_at(at(4.7)) == pytest.approx(18.0)  # looks again at the 02:05 tick
    world.tick_at(at(5))  # the 02:05 tick passes while suspended: handled, not run
    # Handled in memory (written while suspended only every SUSPENDED_CURSOR_SECONDS).
    assert world.state.cursor[(NS, "orders")] == at(5)
    world.edit(suspend=False)
    world.tick_at(at(6))
    assert world.cluster.jobs == {}  # nothing from the suspended period is made up
    world.tick_at(at(9.6))
    world.tick_at(at(10))
    second = naming.recovery_point_name("orders", at(10))
    assert (NS, naming.backup_job_name(second)) in world.cluster.jobs


def test_editing_the_schedule_inside_the_lead_window_does_not_wedge_forbid() -> None:
    world = World(concurrencyPolicy="Forbid")
    world.tick_at(at(4.6))
    stale = naming.recovery_point_name("orders", at(5))
    world.edit(schedule="7-59/10 * * * *")  # 02:05 is no longer a tick
    world.tick_at(at(4.7))
    assert stale not in world.point_names()
    world.tick_at(at(6.6))
    world.tick_at(at(7))
    fresh = naming.recovery_point_name("orders", at(7))
    assert (NS, naming.backup_job_name(fresh)) in world.cluster.jobs


def test_a_schedule_edit_does_not_make_up_the_new_schedules_ticks_before_the_edit() -> None:
    # Created at 02:00 with */10: nothing ran yet, so the written cursor is still 02:00.
    # Edited at 02:09:36 to 5-59/10: 02:05 is a tick of the new schedule only, and it passed
    # before the edit. It is not a missed run to start now (it used to start at once, and
    # under Forbid the real next run, 02:15, then waited for that backup to end).
    world = World(schedule="*/10 * * * *", concurrencyPolicy="Forbid")
    world.tick_at(at(0.5))
    world.tick_at(at(9.6))  # 02:10 prepared
    assert world.point_names() == [naming.recovery_point_name("orders", at(10))]
    world.edit(schedule="5-59/10 * * * *")
    assert world.tick_at(at(9.6)) == pytest.approx(324.0 - 30)  # 02:15 is prepared at 02:14:30
    assert world.point_names() == []  # the stale point went, and no 02:05 run was made up
    assert world.cluster.jobs == {}
    status = world.cluster.policies[(NS, "orders")]["status"]
    assert status["handledUntil"] == iso(at(9.6))  # persisted: a restart makes nothing up either
    assert status["nextScheduleTime"] == iso(at(15))
    assert "missedRuns" not in status
    world.tick_at(at(14.6))
    world.tick_at(at(15))
    following = naming.recovery_point_name("orders", at(15))
    assert set(world.cluster.jobs) == {(NS, naming.backup_job_name(following))}


def test_a_run_the_old_schedule_owes_at_an_edit_is_not_dropped_by_it() -> None:
    # 02:10 is due but held back by Forbid when the schedule is edited to */5 (02:10 is a
    # tick of both): it still starts when the blocking run ends.
    world = World(schedule="*/10 * * * *", concurrencyPolicy="Forbid")
    world.cluster.create_point(
        NS,
        {
            "metadata": {"name": "orders-manual", "namespace": NS},
            "spec": {"policyRef": {"name": "orders"}},
        },
    )
    world.cluster.points[(NS, "orders-manual")]["status"] = {"phase": "Running", "jobName": "j"}
    world.tick_at(at(10))
    assert world.state.scheduling[(NS, "orders")].reason == "RunBlocked"
    world.edit(schedule="*/5 * * * *")
    world.tick_at(at(11))
    assert world.cluster.jobs == {}
    world.cluster.points[(NS, "orders-manual")]["status"] = {"phase": "Completed"}
    world.tick_at(at(12))
    waited = naming.recovery_point_name("orders", at(10))
    assert set(world.cluster.jobs) == {(NS, naming.backup_job_name(waited))}


def test_an_unstarted_point_found_after_a_restart_is_started_when_its_tick_is_still_due() -> None:
    world = World()
    world.tick_at(at(4.6))
    tick = naming.recovery_point_name("orders", at(5))
    restarted = World()
    restarted.cluster = world.cluster  # the same cluster, a new process
    restarted.ports = policy_tick.TickPorts(
        **{**restarted.ports.__dict__, "cluster": world.cluster, "runner": world.runner}
    )
    restarted.tick_at(at(5.1))
    assert (NS, naming.backup_job_name(tick)) in world.cluster.jobs
    assert world.point_names() == [tick]


def test_a_users_scheduled_point_neither_blocks_forbid_nor_is_started() -> None:
    world = World(concurrencyPolicy="Forbid")
    forged = {
        "metadata": {"name": "orders-forged", "namespace": NS},
        "spec": {"policyRef": {"name": "orders"}, "trigger": "Scheduled"},
    }
    world.cluster.create_point(NS, forged)
    world.tick_at(at(5))
    due = naming.recovery_point_name("orders", at(5))
    assert (NS, naming.backup_job_name(due)) in world.cluster.jobs
    assert (NS, naming.backup_job_name("orders-forged")) not in world.cluster.jobs


def test_forbid_names_the_blocking_point_in_the_scheduling_condition_and_an_event() -> None:
    world = World(concurrencyPolicy="Forbid")
    world.cluster.create_point(
        NS,
        {
            "metadata": {"name": "orders-manual", "namespace": NS},
            "spec": {"policyRef": {"name": "orders"}},
            "status": {"phase": "Running", "jobName": "backup-orders-manual"},
        },
    )
    world.cluster.points[(NS, "orders-manual")]["status"] = {"phase": "Running", "jobName": "j"}
    world.tick_at(at(5))
    condition = world.state.scheduling[(NS, "orders")]
    assert (condition.status, condition.reason) == ("False", "RunBlocked")
    assert "orders-manual" in condition.message
    assert "RunBlocked" in world.cluster.reasons()
    assert world.cluster.jobs == {}


def test_a_policy_that_is_not_ready_starts_no_job_and_records_the_skipped_tick() -> None:
    world = World()
    del world.cluster.secrets[(NS, "keys")]
    world.tick_at(at(4.6))  # nothing prepared for a policy that cannot run
    assert world.point_names() == []
    world.tick_at(at(5))
    assert world.cluster.jobs == {}
    assert world.point_names() == []
    assert world.cluster.policies[(NS, "orders")]["status"]["missedRuns"] == 1
    assert "RunSkipped" in world.cluster.reasons()
    assert world.state.problem((NS, "orders")) == Problem(
        "KeySecretNotFound",
        world.state.references[(NS, "orders")].message,  # type: ignore[union-attr]
    )


def test_a_prepared_run_is_skipped_when_the_policy_stops_being_ready_before_its_tick() -> None:
    world = World()
    world.tick_at(at(4.6))
    world.state.references[(NS, "orders")] = Problem("BucketNotFound", "spec.storage: gone")
    world.tick_at(at(5))
    assert world.cluster.jobs == {}
    assert world.point_names() == []  # the unstarted point went with the tick
    assert "RunSkipped" in world.cluster.reasons()


def test_a_failing_tick_is_recorded_as_a_problem_and_cleared_by_the_next_good_one() -> None:
    world = World()

    def broken(*_: Any) -> tuple[dict[str, Any], bool]:
        raise OverflowError("Python int too large to convert to C int")

    world.cluster.create_job = broken  # type: ignore[method-assign,assignment]
    world.tick_at(at(4.6))
    with pytest.raises(OverflowError):
        world.tick_at(at(5))
    problem = world.state.problem((NS, "orders"))
    assert problem is not None and problem.reason == "SchedulingFailed"
    assert "too large" in problem.message
    ready = policy_references.ready_condition(problem, world.spec())
    assert (ready.status, ready.reason) == ("False", "SchedulingFailed")
    del world.cluster.create_job
    world.tick_at(at(5.01))
    assert world.state.problem((NS, "orders")) is None


# --- references ------------------------------------------------------------------------------


def test_references_pass_and_the_bucket_and_source_verdicts_are_shared_for_a_period() -> None:
    world = World()
    assert world.check(world.spec(), NS) is None
    assert world.check(world.spec(), NS) is None
    assert (world.store.heads, world.reach.calls) == (1, 1)
    world.now += dt.timedelta(seconds=31)
    assert world.check(world.spec(), NS) is None
    assert world.store.heads == 2


@pytest.mark.parametrize(
    ("breakage", "reason", "field"),
    [
        (lambda w: w.cluster.secrets.pop((NS, "keys")), "KeySecretNotFound", "keySecretRef"),
        (
            lambda w: w.cluster.secrets.__setitem__((NS, "keys"), {"k1": b"short"}),
            "EncryptionKeyInvalid",
            "keySecretRef",
        ),
        (
            lambda w: w.cluster.secrets.__setitem__((NS, "db"), {"username": b"u"}),
            "SecretKeyMissing",
            "passwordSecretRef",
        ),
        (lambda w: w.cluster.secrets.pop((NS, "s3")), "S3CredentialsNotFound", "credentials"),
        (lambda w: w.store.buckets.clear(), "BucketNotFound", "spec.storage"),
        (lambda w: w.reach.down.add(("db.shop.svc", 5432)), "SourceUnreachable", "postgres"),
    ],
)
def test_each_broken_reference_is_named(breakage: Any, reason: str, field: str) -> None:
    world = World()
    breakage(world)
    problem = world.check(world.spec(), NS)
    assert problem is not None and problem.reason == reason
    assert field in problem.message
    assert "short" not in problem.message  # never a secret value


def test_a_deleted_key_secret_is_seen_at_the_next_check_even_when_the_policy_was_ready() -> None:
    world = World()
    assert world.check(world.spec(), NS) is None
    del world.cluster.secrets[(NS, "keys")]
    problem = world.check(world.spec(), NS)  # no verdict of a Secret is cached
    assert problem is not None and problem.reason == "KeySecretNotFound"


# --- status ----------------------------------------------------------------------------------


def test_refresh_writes_ready_scheduling_and_rpo_in_one_patch_and_warns_on_a_new_problem() -> None:
    world = World(objectives={"rpoSeconds": 3600})
    body = world.cluster.policies[(NS, "orders")]
    problem = Problem("KeySecretNotFound", "spec.encryption.keySecretRef: gone")
    ready = policy_references.ready_condition(problem, world.spec())
    policy_status.refresh(world.cluster, body, world.spec(), [], [ready], at(1))
    (patch,) = world.cluster.policy_patches
    types = {c["type"]: c for c in patch["conditions"]}
    assert types["Ready"]["status"] == "False" and types["Ready"]["reason"] == "KeySecretNotFound"
    assert types["RPOMet"]["reason"] == "NoRecoveryPoint"
    assert patch["observedGeneration"] == 1
    assert ("orders", "Warning", "KeySecretNotFound") in [e[:3] for e in world.cluster.events]


# --- ownership -------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["Scheduled", "Imported"])
def test_a_users_point_with_an_operator_trigger_is_refused_naming_spec_trigger(
    trigger: str,
) -> None:
    point = {"metadata": {"name": "x"}, "spec": {"policyRef": {"name": "p"}, "trigger": trigger}}
    refused = ownership.refusal(point)
    assert refused is not None and "spec.trigger" in refused.message
    assert refused.reason == f"Trigger{trigger}Reserved"
    creator: ownership.Creator = "scheduler" if trigger == "Scheduled" else "catalog-sync"
    point["metadata"]["annotations"] = ownership.marks(creator)  # type: ignore[index]
    assert ownership.refusal(point) is None


def test_manual_points_are_never_refused() -> None:
    assert ownership.refusal({"metadata": {}, "spec": {"policyRef": {"name": "p"}}}) is None


# --- the runtime's periodic work -------------------------------------------------------------


def runtime_for(world: World) -> tuple[PolicyRuntime, ManualClock]:
    clock = ManualClock(world.now)
    runtime = PolicyRuntime(
        Settings(reference_check_seconds=30),
        clock=clock,
        cluster=world.cluster,
        store=world.store,
        runner=world.runner,
        reach=world.reach,
        objects_cache=PointCache(),
        secrets=SecretCache(),
    )
    return runtime, clock


def ready_of(world: World) -> dict[str, Any]:
    conditions = world.cluster.policies[(NS, "orders")]["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "Ready")


def test_references_of_a_ready_policy_are_rechecked_every_period() -> None:
    world = World()
    runtime, clock = runtime_for(world)
    try:
        wait = runtime.maintain(NS, "orders", clock.now())
        assert ready_of(world)["status"] == "True"
        assert wait is not None and wait <= 30
        del world.cluster.secrets[(NS, "keys")]  # no watch event reaches the runtime here
        clock.current += dt.timedelta(seconds=15)
        runtime.maintain(NS, "orders", clock.now())
        assert ready_of(world)["status"] == "True"  # not yet due
        clock.current += dt.timedelta(seconds=16)
        runtime.maintain(NS, "orders", clock.now())
        ready = ready_of(world)
        assert (ready["status"], ready["reason"]) == ("False", "KeySecretNotFound")
        assert ("orders", "Warning", "KeySecretNotFound") in [e[:3] for e in world.cluster.events]
    finally:
        runtime.stop()


def test_a_deleted_secret_rechecks_the_policies_naming_it_at_once() -> None:
    world = World()
    runtime, clock = runtime_for(world)
    try:
        runtime.objects_cache.policy_event("ADDED", world.cluster.policies[(NS, "orders")])
        runtime.maintain(NS, "orders", clock.now())
        del world.cluster.secrets[(NS, "keys")]
        runtime.secret_changed("DELETED", {"metadata": {"namespace": NS, "name": "keys"}})
        runtime.maintain(NS, "orders", clock.now())  # same instant: only the event asks
        assert ready_of(world)["reason"] == "KeySecretNotFound"
    finally:
        runtime.stop()


def test_a_tick_failure_makes_the_policy_not_ready_until_a_tick_succeeds() -> None:
    world = World()
    runtime, clock = runtime_for(world)
    try:
        runtime.ticks.failures[(NS, "orders")] = Problem("SchedulingFailed", "boom")
        runtime.maintain(NS, "orders", clock.now())
        assert ready_of(world)["reason"] == "SchedulingFailed"
        runtime.tick(NS, "orders", clock.now())
        runtime.maintain(NS, "orders", clock.now())
        assert ready_of(world)["status"] == "True"
    finally:
        runtime.stop()


# --- the API footprint at rest (issue 15) ------------------------------------------------------


def completed_point(world: World, source: dt.datetime) -> None:
    world.cluster.points[(NS, "orders-1")] = {
        "metadata": {"name": "orders-1", "namespace": NS, "creationTimestamp": iso(source)},
        "spec": {"policyRef": {"name": "orders"}, "trigger": "Imported"},
        "status": {
            "phase": "Completed",
            "sourceTime": iso(source),
            "completionTime": iso(source + dt.timedelta(seconds=5)),
        },
    }


def test_an_unchanged_status_is_not_written_again() -> None:
    world = World(objectives={"rpoSeconds": 3600})
    ready = policy_references.ready_condition(None, world.spec())
    first = policy_status.refresh(
        world.cluster, world.cluster.policies[(NS, "orders")], world.spec(), [], [ready], at(1)
    )
    assert first.written and len(world.cluster.policy_patches) == 1
    again = policy_status.refresh(
        world.cluster, world.cluster.policies[(NS, "orders")], world.spec(), [], [ready], at(9)
    )
    assert not again.written and len(world.cluster.policy_patches) == 1
    # A change a user can see (here: Ready) is written.
    broken = policy_references.ready_condition(Problem("SecretNotFound", "gone"), world.spec())
    policy_status.refresh(
        world.cluster, world.cluster.policies[(NS, "orders")], world.spec(), [], [broken], at(10)
    )
    assert len(world.cluster.policy_patches) == 2


def test_at_rest_the_rpo_is_rewritten_at_most_once_per_status_period() -> None:
    world = World(objectives={"rpoSeconds": 3600})
    completed_point(world, START - dt.timedelta(minutes=10))
    runtime, clock = runtime_for(world)
    try:
        for _ in range(20):  # ten minutes, woken every 30 s (the reference re-check period)
            runtime.maintain(NS, "orders", clock.now())
            clock.current += dt.timedelta(seconds=30)
        patches = world.cluster.policy_patches
        assert 9 <= len(patches) <= 11, len(patches)  # once a minute (AEGIS_STATUS_SECONDS)
        rpos = [p["currentRPOSeconds"] for p in patches]
        assert rpos == sorted(rpos) and rpos[0] == 600
    finally:
        runtime.stop()


def test_at_rest_a_policy_without_points_writes_its_status_once() -> None:
    world = World(objectives={"rpoSeconds": 3600})
    runtime, clock = runtime_for(world)
    try:
        for _ in range(20):
            runtime.maintain(NS, "orders", clock.now())
            clock.current += dt.timedelta(seconds=30)
        assert len(world.cluster.policy_patches) == 1
    finally:
        runtime.stop()


def test_a_suspended_policy_moves_its_cursor_in_memory_and_writes_it_every_ten_minutes() -> None:
    world = World(schedule="* * * * *", suspend=True)
    for minute in range(0, 21):
        world.tick_at(at(minute))
    written = [p["handledUntil"] for p in world.cluster.policy_patches if "handledUntil" in p]
    assert 2 <= len(written) <= 4, written  # not 21: once, then every ten minutes
    assert world.state.cursor[(NS, "orders")] == at(20)
    # Resuming does not make up the suspended ticks: the in-memory cursor is the newest.
    world.edit(suspend=False)
    world.tick_at(at(20.5))
    assert world.cluster.jobs == {}
    assert world.point_names() in ([], [naming.recovery_point_name("orders", at(21))])
    assert not [e for e in world.cluster.events if e[2] == "MissedRuns"]


def test_a_suspended_policys_cursor_is_written_along_with_a_status_write() -> None:
    world = World(schedule="* * * * *", suspend=True, objectives={"rpoSeconds": 3600})
    completed_point(world, START - dt.timedelta(minutes=10))
    runtime, clock = runtime_for(world)
    try:
        for _ in range(6):  # three minutes: ticks each minute, maintenance every 30 s
            runtime.tick(NS, "orders", clock.now())
            runtime.maintain(NS, "orders", clock.now())
            clock.current += dt.timedelta(seconds=30)
        status = world.cluster.policies[(NS, "orders")]["status"]
        assert status["handledUntil"] >= iso(START + dt.timedelta(minutes=2))
        assert len(world.cluster.policy_patches) <= 5  # one a minute, plus the first tick's
    finally:
        runtime.stop()
