"""DRDrill end to end: the real operator, the Job runner running the real agent, real
PostgreSQL and redis-server (the drill's own scratch servers), moto S3."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.helpers import (
    OperatorHandle,
    condition,
    create,
    create_secret,
    custom_api,
    events_for,
    get,
    new_key,
    wait_for,
)
from tests.e2e.test_backups import jobs, make_policy, on_demand
from tests.e2e.test_restore import backed_up, metrics_text, pg_target

from aegis import display, kubectl_drill, kubectl_report
from aegis.handlers import drdrill as drill_handlers

PLURAL = "drdrills"


def make_drill(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    create(
        k8s_api, PLURAL, namespace, {"kind": "DRDrill", "metadata": {"name": name}, "spec": spec}
    )


def finished_run(k8s_api: Any, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    drill: dict[str, Any] = wait_for(
        f"a finished run of {name}",
        lambda: (
            (d := get(k8s_api, PLURAL, namespace, name))
            .get("status", {})
            .get("lastRun", {})
            .get("result")
            in ("Passed", "Failed")
            and d
        ),
        timeout=timeout,
    )
    return drill


def when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def shifted_clock(offset: dt.timedelta) -> Callable[[], dt.datetime]:
    """The real clock moved by `offset`: it runs at real speed, so waits stay real."""
    return lambda: dt.datetime.now(dt.UTC) + offset


ORDERS_CHECKS = [
    {"name": "row-counts", "expect": {"matchesBackup": True}},
    {"name": "orders", "sql": "SELECT count(*) FROM public.orders", "expect": {"min": 1}},
]
SLOW_CHECK = {
    "name": "slow",
    "sql": "SELECT count(*) FROM public.orders CROSS JOIN pg_sleep(1.5)",
    "expect": {"min": 1},
}


def test_scheduled_restore_drill_passes_measures_and_verifies_its_point(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    # The schedule clock is moved to 3 s before the next hourly tick (the tick stays after
    # the drill's creation, so it is a new tick, not a missed one).
    real = dt.datetime.now(dt.UTC)
    tick = (real + dt.timedelta(seconds=10)).replace(minute=0, second=0, microsecond=0)
    tick += dt.timedelta(hours=1)
    monkeypatch.setattr(
        drill_handlers, "CLOCK", shifted_clock(tick - real - dt.timedelta(seconds=3))
    )
    make_drill(
        k8s_api,
        namespace,
        "hourly",
        {
            "type": "Restore",
            "schedule": "0 * * * *",
            "restore": {"policyRef": {"name": "orders"}, "verify": ORDERS_CHECKS},
            "objectives": {"rtoSeconds": 600, "rpoSeconds": 3600},
        },
    )
    drill = finished_run(k8s_api, namespace, "hourly")
    status = drill["status"]
    run = status["lastRun"]
    assert run["result"] == "Passed", run.get("message")
    assert run["trigger"] == "Scheduled" and when(run["scheduledTime"]) == tick
    assert when(status["nextRunTime"]) == tick + dt.timedelta(hours=1)
    assert condition(drill, "LastDrillPassed")["status"] == "True"
    assert condition(drill, "Ready")["status"] == "True"
    assert run["recoveryPoint"] == "orders-good"
    assert [c["result"] for c in run["checks"]] == ["Passed", "Passed"]
    # RPO: exactly the run's start minus the point's source time.
    source = when(point["status"]["sourceTime"])
    assert run["rpoSeconds"] == pytest.approx(
        (when(run["startTime"]) - source).total_seconds(), abs=1e-3
    )
    # RTO: from the run's start (before its Job existed) to the checks passing, which is
    # before the Job ends (it then throws the scratch server away); it covers every measured
    # phase. Job times are whole seconds, hence the 1 s.
    phases = run["phases"]
    assert set(phases) == {
        "queuedSeconds", "scratchSeconds", "downloadAuthenticateSeconds", "restoreSeconds",
        "checksSeconds",
    }  # fmt: skip
    assert all(v >= 0 for v in phases.values())
    assert run["rtoSeconds"] >= sum(phases.values()) - 0.01
    job = client.BatchV1Api(k8s_api).read_namespaced_job(run["jobName"], namespace)
    started = when(run["startTime"])
    second = dt.timedelta(seconds=1)
    assert started <= job.metadata.creation_timestamp + second
    job_end = (job.status.completion_time + second - started).total_seconds()
    assert run["rtoSeconds"] <= job_end
    assert run["rtoSeconds"] < 600
    # The point is Verified by this drill.
    verified = get(k8s_api, "recoverypoints", namespace, "orders-good")
    assert condition(verified, "Verified")["status"] == "True"
    assert verified["status"]["verification"]["by"] == "drill/hourly"
    # The policy shows its proven RTO.
    policy = get(k8s_api, "backuppolicies", namespace, "orders")
    assert policy["status"]["lastDrill"] == {
        "drill": "hourly",
        "time": run["completionTime"],
        "result": "Passed",
        "reason": "DrillPassed",
        "rtoSeconds": run["rtoSeconds"],
        "rpoSeconds": run["rpoSeconds"],
        "recoveryPoint": "orders-good",
        # Read as people write durations, for the columns (`Drill RTO`, `RTO`, `RPO`).
        "display": {
            "rto": display.duration(run["rtoSeconds"]),
            "rpo": display.duration(run["rpoSeconds"]),
        },
        "lastPassedTime": run["completionTime"],
        "lastPassedDrill": "hourly",
    }
    assert run["display"] == policy["status"]["lastDrill"]["display"]
    # ... and that its recovery was tested within its window (refreshed when the run ended,
    # not at the next status period).
    tested = wait_for(
        "RecoveryTested=True on the policy",
        lambda: (
            (found := condition(get(k8s_api, "backuppolicies", namespace, "orders"),
                                "RecoveryTested"))
            and found["status"] == "True"
            and found
        ),
        timeout=30,
    )
    assert tested["reason"] == "DrillPassed"
    assert "drill/hourly passed at" in tested["message"]
    # Evidence in the bucket, next to the policy's points.
    key = run["evidence"].removeprefix(f"s3://{s3_bucket}/")
    assert key.startswith(f"backups/{namespace}/orders/_drills/hourly/")
    evidence = json.loads(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert evidence["run"]["result"] == "Passed"
    assert evidence["run"]["rtoSeconds"] == run["rtoSeconds"]
    assert status["history"][0]["startTime"] == run["startTime"]
    reasons = {e["reason"] for e in events_for(k8s_api, namespace, "hourly")}
    assert {"DrillStarted", "DrillPassed"} <= reasons
    text = metrics_text(aegis_operator)
    labels = f'drill="hourly",namespace="{namespace}"'
    assert f"aegis_drill_last_rto_seconds{{{labels}}} {run['rtoSeconds']}" in text
    assert f"aegis_drill_last_success_timestamp_seconds{{{labels}}}" in text


def test_rto_objective_below_the_measured_rto_fails_the_drill(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    make_drill(
        k8s_api,
        namespace,
        "too-ambitious",
        {
            "type": "Restore",
            # The one-pass restore of this small database can take under a second, the
            # smallest objective the schema allows: a check that takes 1.5 s makes the
            # measured RTO exceed it on any machine.
            "restore": {"policyRef": {"name": "orders"}, "verify": [*ORDERS_CHECKS, SLOW_CHECK]},
            "objectives": {"rtoSeconds": 1},
        },
    )
    drill = finished_run(k8s_api, namespace, "too-ambitious")
    run = drill["status"]["lastRun"]
    assert run["result"] == "Failed" and run["trigger"] == "Once"
    assert run["rtoSeconds"] > 1
    passed = condition(drill, "LastDrillPassed")
    assert passed["status"] == "False" and passed["reason"] == "RTOObjectiveMissed"
    assert "objective 1s" in passed["message"]
    warnings = [
        e for e in events_for(k8s_api, namespace, "too-ambitious") if e["type"] == "Warning"
    ]
    assert [e["reason"] for e in warnings] == ["RTOObjectiveMissed"]
    text = metrics_text(aegis_operator)
    labels = f'drill="too-ambitious",namespace="{namespace}"'
    assert f"aegis_drill_last_passed{{{labels}}} 0.0" in text
    assert f"aegis_drill_rto_objective_seconds{{{labels}}} 1.0" in text
    assert (
        f'aegis_drill_runs_total{{{labels},reason="RTOObjectiveMissed",result="Failed"}} 1.0'
        in text
    )
    # A failed drill proves nothing about the point.
    point = get(k8s_api, "recoverypoints", namespace, "orders-good")
    assert (condition(point, "Verified") or {}).get("status") != "True"


def test_drill_of_a_corrupted_point_fails_naming_it(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    point = backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    key = point["status"]["location"].removeprefix(f"s3://{s3_bucket}/")
    payload = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    payload[len(payload) // 2] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(payload))
    make_drill(
        k8s_api,
        namespace,
        "damaged",
        {"type": "Restore", "restore": {"recoveryPointRef": {"name": "orders-good"}}},
    )
    drill = finished_run(k8s_api, namespace, "damaged")
    passed = condition(drill, "LastDrillPassed")
    assert passed["status"] == "False" and passed["reason"] == "PointCorrupted"
    assert "orders-good" in passed["message"] and "damaged" in passed["message"]
    corrupted = get(k8s_api, "recoverypoints", namespace, "orders-good")
    assert corrupted["status"]["phase"] == "Corrupted"
    text = metrics_text(aegis_operator)
    assert (
        f'aegis_verification_failures_total{{namespace="{namespace}",policy="orders"}} 1.0' in text
    )
    assert condition(corrupted, "Verified")["status"] == "False"


def test_redis_drill_passes_with_key_count_checks(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    redis_db: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    source = redis_db.client()
    pipe = source.pipeline()
    for i in range(300):
        pipe.set(f"k:{i}", f"v{i}")
    pipe.hset("h", mapping={"a": 1, "b": 2})
    pipe.execute()
    create_secret(k8s_api, namespace, "cache", {"password": str(redis_db.password)})
    create_secret(k8s_api, namespace, "keys", {"2026-01": new_key()})
    create_secret(
        k8s_api,
        namespace,
        "s3",
        {"AWS_ACCESS_KEY_ID": "AKIDDRILL", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex},
    )
    make_policy(
        k8s_api,
        namespace,
        "cache",
        {
            "schedule": "0 3 * * *",
            "source": {
                "redis": {
                    "host": redis_db.host,
                    "port": redis_db.port,
                    "passwordSecretRef": {"name": "cache", "key": "password"},
                }
            },
            "storage": {
                "bucket": s3_bucket,
                "endpoint": moto.endpoint,
                "credentialsSecretRef": {"name": "s3"},
            },
            "encryption": {"keySecretRef": {"name": "keys"}},
        },
    )
    point = on_demand(k8s_api, namespace, "cache", "cache-now")
    assert point["status"]["phase"] == "Completed", point["status"].get("message")
    make_drill(
        k8s_api,
        namespace,
        "cache-drill",
        {
            "type": "Restore",
            "restore": {
                "policyRef": {"name": "cache"},
                "verify": [
                    {"name": "keys", "redis": {"op": "KeyCount"}, "expect": {"equals": "301"}},
                    {
                        "name": "hash",
                        "redis": {"op": "KeyExists", "key": "h"},
                        "expect": {"equals": "1"},
                    },
                ],
            },
        },
    )
    drill = finished_run(k8s_api, namespace, "cache-drill")
    run = drill["status"]["lastRun"]
    assert run["result"] == "Passed", run.get("message")
    assert [(c["name"], c["result"], c.get("value")) for c in run["checks"]] == [
        ("keys", "Passed", "301"),
        ("hash", "Passed", "1"),
    ]
    verified = get(k8s_api, "recoverypoints", namespace, "cache-now")
    assert condition(verified, "Verified")["status"] == "True"


def test_kubectl_aegis_drill_run_follows_a_run_on_request_and_status_shows_it(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
    aws_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    # Scheduled far away: only the request runs it.
    make_drill(
        k8s_api,
        namespace,
        "weekly",
        {
            "type": "Restore",
            "schedule": "0 4 * * 1",
            "timeZone": "Europe/Berlin",
            "restore": {"policyRef": {"name": "orders"}, "verify": ORDERS_CHECKS},
            "objectives": {"rtoSeconds": 600},
        },
    )
    wait_for(
        "the drill's next run time",
        lambda: get(k8s_api, PLURAL, namespace, "weekly").get("status", {}).get("nextRunTime"),
    )
    # What the overdue alert reads: a week between runs, counted from creation until a pass.
    text = metrics_text(aegis_operator)
    labels = f'drill="weekly",namespace="{namespace}"'
    assert f"aegis_drill_interval_seconds{{{labels}}} 604800.0" in text
    assert f"aegis_drill_created_timestamp_seconds{{{labels}}}" in text
    capsys.readouterr()
    assert kubectl_drill.main(["run", "weekly", "-n", namespace, "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "run requested" in out and "Passed: restored orders-good" in out, out
    assert "download+authenticate" in out and "(objective 600s)" in out, out
    run = get(k8s_api, PLURAL, namespace, "weekly")["status"]["lastRun"]
    assert run["trigger"] == "Manual" and run["result"] == "Passed"
    assert kubectl_drill.main(["status", "weekly", "-n", namespace]) == 0
    out = capsys.readouterr().out
    assert "schedule 0 4 * * 1" in out and "history:" in out and "DrillPassed" in out, out
    # The evidence report lists the run against its objective.
    assert kubectl_report.main(["-n", namespace, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert f"## BackupPolicy {namespace}/orders" in out
    assert "| weekly | " in out and "| Passed (DrillPassed) | orders-good |" in out, out
    assert "| 600.0s met |" in out, out
    assert kubectl_report.main(["-n", namespace, "--format", "html"]) == 0
    page = capsys.readouterr().out
    # One backup: no gap to chart; the drill's RTO per run against its objective.
    assert page.count("<svg") == 1 and 'class="objective"' in page, page
    # The drill deleted, its history is still in the bucket's evidence records.
    custom_api(k8s_api).delete_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, PLURAL, "weekly"
    )
    wait_for(
        "the drill to go",
        lambda: (
            not custom_api(k8s_api).list_namespaced_custom_object(
                "dr.aegis.dev", "v1alpha1", namespace, PLURAL
            )["items"]
        ),
    )
    argv = [
        "-n",
        namespace,
        "--bucket",
        f"s3://{s3_bucket}/backups",
        "--endpoint-url",
        moto.endpoint,
    ]
    assert kubectl_report.main(argv) == 0
    out = capsys.readouterr().out
    assert "| weekly | " in out and "| Passed (DrillPassed) | orders-good |" in out, out


def _tables(pg: Any) -> dict[str, int]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables ORDER BY 1"
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def test_a_drill_into_a_given_target_keeps_a_restores_safety_rules(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    before = _tables(pg_database)
    make_drill(
        k8s_api,
        namespace,
        "into-live",
        {
            "type": "Restore",
            # The live, non-empty database: refused, never overwritten.
            "restore": {
                "policyRef": {"name": "orders"},
                "target": pg_target(pg_database, pg_database.name),
            },
        },
    )
    drill = finished_run(k8s_api, namespace, "into-live")
    passed = condition(drill, "LastDrillPassed")
    assert passed["status"] == "False" and passed["reason"] == "TargetNotEmpty", passed
    assert "allowOverwrite" in passed["message"]
    assert _tables(pg_database) == before


def test_operator_restart_mid_drill_keeps_one_job_and_its_run(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    job_runner.stop()  # the Job is created but does not run across the restart
    make_drill(
        k8s_api,
        namespace,
        "survives",
        {"type": "Restore", "restore": {"policyRef": {"name": "orders"}, "verify": ORDERS_CHECKS}},
    )
    running = wait_for(
        "the drill Job",
        lambda: get(k8s_api, PLURAL, namespace, "survives").get("status", {}).get("lastRun"),
    )
    aegis_operator.restart()
    job_runner.start()
    drill = finished_run(k8s_api, namespace, "survives")
    run = drill["status"]["lastRun"]
    assert run["result"] == "Passed", run.get("message")
    assert run["startTime"] == running["startTime"]  # the same run, not a new one
    drill_jobs = [
        j.metadata.name for j in jobs(k8s_api, namespace) if j.metadata.name.startswith("drill-")
    ]
    assert drill_jobs == [running["jobName"]]
    assert len(job_runner.attempts(namespace, running["jobName"])) == 1
    # Its queue time includes the restart: the RTO clock kept running.
    assert run["phases"]["queuedSeconds"] > 0


def test_live_failover_drill_of_a_missing_plan_fails_naming_the_field(
    aegis_operator: OperatorHandle, k8s_api: Any, namespace: str
) -> None:
    make_drill(
        k8s_api,
        namespace,
        "switch-rehearsal",
        {"type": "Failover", "failover": {"planRef": {"name": "orders"}, "mode": "Live"}},
    )
    drill = finished_run(k8s_api, namespace, "switch-rehearsal", timeout=30)
    ready = condition(drill, "Ready")
    assert ready is not None and ready["status"] == "True"
    assert "Live failover drill" in ready["message"]
    run = drill["status"]["lastRun"]
    assert run["result"] == "Failed" and run["reason"] == "PlanNotFound"
    assert "spec.failover.planRef" in run["message"]
