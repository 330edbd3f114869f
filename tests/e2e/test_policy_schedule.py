"""The scheduler end to end: the real operator with a clock the test moves (tests.e2e.clockhook),
so a tick's whole path — prepare (point created), fire (Job), the Job run by the Job runner
against real PostgreSQL and moto S3 — is exercised without minute-long waits.

Each test here failed on the scheduler before the split (issue 11): a point prepared inside the
lead window was left without a Job and, under Forbid, blocked every later run; user-created
Scheduled/Imported points were accepted; a deleted key Secret went unnoticed while Ready; a
policy that was not Ready still started Jobs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.e2e import clockhook
from tests.e2e.helpers import (
    OperatorHandle,
    condition,
    create,
    custom_api,
    events_for,
    get,
    wait_for,
)
from tests.e2e.test_backups import make_policy, policy_spec, secrets_for, seed

from aegis.reconcilers import naming, schedule
from aegis.reconcilers.conditions import iso

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"
POINTS = "recoverypoints"
POLICIES = "backuppolicies"


@pytest.fixture
def clock() -> Iterator[clockhook.OffsetClock]:
    yield clockhook.CLOCK
    clockhook.CLOCK.reset()


def next_tick(expression: str, after: dt.datetime) -> dt.datetime:
    return schedule.next_tick(expression, "UTC", after)


def point_or_none(k8s_api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return get(k8s_api, POINTS, namespace, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def job_names(k8s_api: Any, namespace: str) -> set[str]:
    jobs = client.BatchV1Api(k8s_api).list_namespaced_job(namespace).items
    return {j.metadata.name for j in jobs}


def patch_spec(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom_api(k8s_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, POLICIES, name, {"spec": spec}
    )


def test_a_tick_is_prepared_ahead_and_fired_at_its_due_time_through_the_operator(
    clock: clockhook.OffsetClock,
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    seed(pg_database, rows=50)
    secrets_for(k8s_api, namespace, pg_database)
    every_ten = "*/10 * * * *"
    tick = next_tick(every_ten, dt.datetime.now(dt.UTC))
    clock.set(tick - dt.timedelta(seconds=40))
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint, schedule=every_ten)
    make_policy(k8s_api, namespace, "orders", spec)
    clock.set(tick - dt.timedelta(seconds=25))
    name = naming.recovery_point_name("orders", tick)
    point = wait_for("the prepared point", lambda: point_or_none(k8s_api, namespace, name), 30)
    assert point["metadata"]["annotations"]["dr.aegis.dev/created-by"] == "scheduler"
    assert point["spec"]["scheduledTime"] == iso(tick)
    assert "jobName" not in (point.get("status") or {})
    assert job_names(k8s_api, namespace) == set()
    clock.set(tick)
    job = naming.backup_job_name(name)
    wait_for(f"the Job {job}", lambda: job in job_names(k8s_api, namespace), 10)
    done = wait_for(
        f"{name} to complete",
        lambda: (
            (p := point_or_none(k8s_api, namespace, name))
            and (p.get("status") or {}).get("phase") == "Completed"
            and p
        ),
        120,
    )
    assert done["status"]["jobName"] == job
    status = wait_for(
        "the policy's status",
        lambda: (
            (s := get(k8s_api, POLICIES, namespace, "orders")["status"]).get("lastSuccessfulTime")
            and s
        ),
        30,
    )
    assert status["lastScheduleTime"] == iso(tick)
    assert status["nextScheduleTime"] == iso(tick + dt.timedelta(minutes=10))
    assert status["handledUntil"] == iso(tick)
    assert "missedRuns" not in status


@pytest.mark.parametrize("change", ["suspend", "edit-schedule"])
def test_a_change_inside_the_lead_window_leaves_no_wedged_point_and_the_next_run_happens(
    change: str,
    clock: clockhook.OffsetClock,
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    seed(pg_database, rows=50)
    secrets_for(k8s_api, namespace, pg_database)
    every_ten = "*/10 * * * *"
    tick = next_tick(every_ten, dt.datetime.now(dt.UTC))
    clock.set(tick - dt.timedelta(seconds=40))
    spec = policy_spec(
        pg_database, s3_bucket, moto.endpoint, schedule=every_ten, concurrencyPolicy="Forbid"
    )
    make_policy(k8s_api, namespace, "orders", spec)
    clock.set(tick - dt.timedelta(seconds=25))  # inside the 30 s lead: the run is prepared
    prepared = naming.recovery_point_name("orders", tick)
    wait_for("the prepared point", lambda: point_or_none(k8s_api, namespace, prepared), 30)
    assert job_names(k8s_api, namespace) == set()  # prepared, not fired

    if change == "suspend":
        patch_spec(k8s_api, namespace, "orders", {"suspend": True})
    else:
        # The new schedule's tick - 1 min lies between the policy's creation (real time, unless
        # that was in the minute before the tick) and the edit: it passed before the edit, so
        # it is not made up. The next run is tick + 5 min.
        minutes = ",".join(str(m) for m in sorted({(tick + dt.timedelta(minutes=d)).minute
                                                   for d in (-1, 5)}))
        patch_spec(k8s_api, namespace, "orders", {"schedule": f"{minutes} * * * *"})
    wait_for(
        "the unstarted point to be removed",
        lambda: point_or_none(k8s_api, namespace, prepared) is None,
        30,
    )
    reasons = {e["reason"] for e in events_for(k8s_api, namespace, "orders")}
    assert "UnstartedRunRemoved" in reasons

    clock.set(tick + dt.timedelta(seconds=60))  # the old tick passes
    if change == "suspend":
        # The tick passes while suspended (the cursor moves past it), then the policy resumes:
        # the next run is the next tick's, and nothing from the suspended period is made up.
        wait_for(
            "the suspended tick to pass",
            lambda: get(k8s_api, POLICIES, namespace, "orders")["status"].get("handledUntil")
            == iso(tick),
            30,
        )
        patch_spec(k8s_api, namespace, "orders", {"suspend": False})
        following = tick + dt.timedelta(minutes=10)
        wait_for(  # the operator has seen the resume before its clock reaches the next tick
            "the resumed schedule",
            lambda: get(k8s_api, POLICIES, namespace, "orders")["status"].get("nextScheduleTime")
            == iso(following),
            30,
        )
        clock.set(following + dt.timedelta(seconds=1))
        expected = naming.recovery_point_name("orders", following)
        assert point_or_none(k8s_api, namespace, prepared) is None
    else:
        following = tick + dt.timedelta(minutes=5)
        clock.set(following + dt.timedelta(seconds=1))
        expected = naming.recovery_point_name("orders", following)
    job = naming.backup_job_name(expected)
    wait_for(f"the Job {job}", lambda: job in job_names(k8s_api, namespace), 30)
    # The change made up no run. The edited schedule's tick - 1 min used to start at the edit
    # (the cursor was still the creation time); under Forbid the next run's Job then waited
    # for that whole extra backup to end, which outlasted 30 s in a loaded CI run.
    assert job_names(k8s_api, namespace) == {job}
    point = wait_for(
        f"{expected} to complete",
        lambda: (
            (p := point_or_none(k8s_api, namespace, expected))
            and (p.get("status") or {}).get("phase") == "Completed"
            and p
        ),
        120,
    )
    assert point["spec"]["trigger"] == "Scheduled"
    assert point["metadata"]["annotations"]["dr.aegis.dev/created-by"] == "scheduler"


@pytest.mark.parametrize("trigger", ["Scheduled", "Imported"])
def test_a_users_point_with_an_operator_trigger_is_refused(
    trigger: str,
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg_database, s3_bucket, moto.endpoint))
    spec: dict[str, Any] = {"policyRef": {"name": "orders"}, "trigger": trigger}
    if trigger == "Scheduled":
        spec["scheduledTime"] = "2026-01-01T03:00:00Z"
    create(
        k8s_api,
        POINTS,
        namespace,
        {"kind": "RecoveryPoint", "metadata": {"name": "orders-mine"}, "spec": spec},
    )
    point = wait_for(
        "the refusal",
        lambda: (
            (p := get(k8s_api, POINTS, namespace, "orders-mine"))
            and (c := condition(p, "Complete"))
            and c["status"] == "False"
            and p
        ),
        30,
    )
    complete = condition(point, "Complete")
    assert complete is not None and complete["reason"] == f"Trigger{trigger}Reserved"
    assert "spec.trigger" in complete["message"]
    assert point["status"]["phase"] == "Failed"
    assert "completionTime" not in point["status"]  # a refusal is no failed backup
    warnings = [e for e in events_for(k8s_api, namespace, "orders-mine") if e["type"] == "Warning"]
    assert any(e["reason"] == f"Trigger{trigger}Reserved" for e in warnings)
    assert job_names(k8s_api, namespace) == set()


def test_a_deleted_key_secret_makes_a_ready_policy_not_ready_and_its_tick_starts_no_job(
    clock: clockhook.OffsetClock,
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    secrets_for(k8s_api, namespace, pg_database)
    hourly = "0 * * * *"
    tick = next_tick(hourly, dt.datetime.now(dt.UTC))
    clock.set(tick - dt.timedelta(minutes=5))
    make_policy(
        k8s_api,
        namespace,
        "orders",
        policy_spec(pg_database, s3_bucket, moto.endpoint, schedule=hourly),
    )
    client.CoreV1Api(k8s_api).delete_namespaced_secret("keys", namespace)
    # References are re-checked every AEGIS_REFERENCE_CHECK_SECONDS (30 s by default) whether
    # the policy is Ready or not: one period later on the operator's clock, it says so.
    clock.advance(31)
    policy = wait_for(
        "Ready=False",
        lambda: (
            (p := get(k8s_api, POLICIES, namespace, "orders"))
            and (c := condition(p, "Ready"))
            and c["status"] == "False"
            and p
        ),
        20,
    )
    ready = condition(policy, "Ready")
    assert ready is not None and ready["reason"] == "KeySecretNotFound"
    assert "spec.encryption.keySecretRef" in ready["message"]

    clock.set(tick + dt.timedelta(seconds=1))
    wait_for(
        "the skipped tick",
        lambda: "RunSkipped" in {e["reason"] for e in events_for(k8s_api, namespace, "orders")},
        30,
    )
    assert job_names(k8s_api, namespace) == set()
    assert point_or_none(k8s_api, namespace, naming.recovery_point_name("orders", tick)) is None
    status = get(k8s_api, POLICIES, namespace, "orders")["status"]
    assert status["missedRuns"] == 1
    scheduling = condition(get(k8s_api, POLICIES, namespace, "orders"), "Scheduling")
    assert scheduling is not None and scheduling["reason"] == "RunSkipped"
    assert "KeySecretNotFound" in scheduling["message"]

    # An on-demand backup of the same not-Ready policy: refused with the reason, no Job,
    # until the policy can back up again.
    create(k8s_api, POINTS, namespace, {
        "kind": "RecoveryPoint", "metadata": {"name": "orders-now"},
        "spec": {"policyRef": {"name": "orders"}, "trigger": "Manual"},
    })
    blocked = wait_for(
        "the on-demand point blocked",
        lambda: (
            (p := get(k8s_api, POINTS, namespace, "orders-now"))
            and "PolicyNotReady" in str(p.get("status") or {})
            and p
        ),
        30,
    )
    assert "KeySecretNotFound" in str(blocked["status"])
    assert job_names(k8s_api, namespace) == set()
