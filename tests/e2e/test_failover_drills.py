"""Failover drills (DryRun) end to end: the real operator rehearses a FailoverPlan against a
real PostgreSQL primary with a streaming standby, a moto Route53 zone, a Deployment in the
emulator and a webhook the test holds, and leaves every live thing exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.helpers import OperatorHandle, condition, events_for, get, wait_for
from tests.e2e.test_drills import PLURAL, finished_run, make_drill
from tests.e2e.test_failover import (
    RECORD,
    Endpoint,
    endpoints,  # noqa: F401 - the fixture
    http_check,
    make_plan,
    make_zone,
    metric,
    metrics_port,
    pg_target,
    secrets_for,
    site,
    status_of,
)

from aegis import display, kubectl_drill
from aegis.sandbox.servers import MotoServer, PostgresServer

DRILL_RECORD = "drill.db.example.com."


def zone_records(route53: Any, zone: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = route53.list_resource_record_sets(HostedZoneId=zone)[
        "ResourceRecordSets"
    ]
    return sorted(found, key=lambda r: (r["Name"], r["Type"]))


def drill_record_values(route53: Any, zone: str) -> list[str] | None:
    for record in zone_records(route53, zone):
        if record["Name"] == DRILL_RECORD and record["Type"] == "A":
            return [r["Value"] for r in record["ResourceRecords"]]
    return None


def pg_state(server: PostgresServer) -> dict[str, Any]:
    """What a failover would change on a server, read back."""
    with server.connect() as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
            " (SELECT count(*) FROM orders)"
        ).fetchone()
        settings = conn.execute(
            "SELECT name, setting FROM pg_file_settings ORDER BY name"
        ).fetchall()
    assert row is not None
    return {"in_recovery": row[0], "read_only": row[1], "orders": row[2],
            "file_settings": settings}


def deployment_state(k8s_api: Any, namespace: str, name: str) -> tuple[Any, ...]:
    dep = client.AppsV1Api(k8s_api).read_namespaced_deployment(name, namespace)
    return (dep.spec.replicas, dep.metadata.generation, dep.metadata.resource_version)


def drill_record_step(moto: MotoServer, zone: str) -> dict[str, Any]:
    return {
        "hostedZoneId": zone, "recordName": DRILL_RECORD, "type": "A", "values": ["10.0.0.2"],
        "ttl": 30, "endpoint": moto.endpoint, "credentialsSecretRef": {"name": "aws"},
    }


def plan_spec(
    primary: PostgresServer, standby: PostgresServer, health: Endpoint, hook: Endpoint,
    moto: MotoServer, zone: str,
) -> dict[str, Any]:
    return {
        "mode": "Manual",
        "primary": site("eu", [{"name": "db", "postgres": {**pg_target(primary),
                                                          "writable": True}}]),
        "secondary": site("us", [{"name": "db", "postgres": pg_target(standby)},
                                 http_check(health)]),
        "steps": [
            {"name": "promote", "timeoutSeconds": 30,
             "postgresPromote": {"target": pg_target(standby),
                                 "fencePrimary": pg_target(primary)}},
            {"name": "dns", "timeoutSeconds": 30,
             "route53": {"hostedZoneId": zone, "recordName": RECORD, "type": "A",
                         "values": ["10.0.0.2"], "ttl": 30, "endpoint": moto.endpoint,
                         "credentialsSecretRef": {"name": "aws"}}},
            {"name": "warm-up", "scale": {"kind": "Deployment", "name": "warm", "replicas": 3}},
            {"name": "notify", "timeoutSeconds": 60, "webhook": {"url": hook.url}},
        ],
    }


def make_deployment(k8s_api: Any, namespace: str, name: str, replicas: int) -> None:
    labels = {"app": name}
    client.AppsV1Api(k8s_api).create_namespaced_deployment(namespace, {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "app", "image": "nginx"}]}},
        },
    })


def test_dryrun_failover_drill_changes_only_the_drill_record_and_predicts_the_rto(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
    endpoints: Callable[[], Endpoint],  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, standby = pg_standby
    health, hook = endpoints(), endpoints()
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)
    make_deployment(k8s_api, namespace, "warm", 1)
    with primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 100)")
    wait_for("the standby has the orders", lambda: _orders(standby) == 100)
    make_plan(k8s_api, namespace, "orders",
              plan_spec(primary, standby, health, hook, moto, zone))
    wait_for("the plan probed both sites",
             lambda: status_of(k8s_api, namespace, "orders").get("state") == "Monitoring")

    before = {
        "zone": zone_records(route53_client, zone),
        "primary": pg_state(primary),
        "standby": pg_state(standby),
        "deployment": deployment_state(k8s_api, namespace, "warm"),
    }
    assert before["standby"]["in_recovery"] is True and before["primary"]["in_recovery"] is False
    plan_before = status_of(k8s_api, namespace, "orders")

    hook.gate.clear()  # the drill's webhook call is held: the drill record is set meanwhile
    make_drill(k8s_api, namespace, "switch-rehearsal", {
        "type": "Failover",
        "failover": {"planRef": {"name": "orders"}, "drillRecord": drill_record_step(moto, zone)},
        "objectives": {"rtoSeconds": 600},
    })
    wait_for("the drill's webhook call", lambda: hook.posts())
    # Read during the run: the drill record holds the change the failover would make.
    assert drill_record_values(route53_client, zone) == ["10.0.0.2"]
    running = get(k8s_api, PLURAL, namespace, "switch-rehearsal")["status"]["lastRun"]
    assert running["result"] == "Running" and running["plan"] == "orders"
    sent = hook.posts()[0]
    assert sent["headers"].get("X-Aegis-Drill") == "true"
    assert sent["json"]["drill"] is True and sent["json"]["kind"] == "Failover"
    hook.gate.set()

    drill = finished_run(k8s_api, namespace, "switch-rehearsal")
    run = drill["status"]["lastRun"]
    assert run["result"] == "Passed", run.get("message")
    passed = condition(drill, "LastDrillPassed")
    assert passed is not None and passed["status"] == "True"
    assert condition(drill, "Ready")["status"] == "True"  # type: ignore[index]
    steps = {s["name"]: s for s in run["steps"]}
    assert [s["name"] for s in run["steps"]] == [
        "promote", "dns", "warm-up", "notify", "drill-record-cleanup"
    ]
    assert all(s["result"] == "Passed" for s in run["steps"]), run["steps"]
    assert steps["promote"]["outputs"]["lagBytes"] == "0"
    assert "in recovery" in steps["promote"]["message"]
    assert steps["warm-up"]["outputs"] == {"previousReplicas": "1", "dryRunReplicas": "3"}
    assert steps["notify"]["outputs"]["httpStatus"] == "200"
    upsert = steps["dns"]["outputs"]["changeId"]
    assert DRILL_RECORD.rstrip(".") in steps["dns"]["outputs"]["drillRecord"]
    assert steps["dns"]["outputs"]["before"] == "absent"
    # Route53 recorded the drill's change, and the cleanup's.
    assert route53_client.get_change(Id=upsert)["ChangeInfo"]["Status"] == "INSYNC"
    cleanup = steps["drill-record-cleanup"]["outputs"]["changeId"]
    assert route53_client.get_change(Id=cleanup)["ChangeInfo"]["Status"] == "INSYNC"
    # Predicted RTO: detection (1 s period x 3 failures) + the measured steps (one chain).
    assert run["rtoPredicted"] is True
    assert run["phases"]["detectionSeconds"] == 3.0
    chain = sum(steps[n]["seconds"] for n in ("promote", "dns", "warm-up", "notify"))
    assert run["phases"]["stepsSeconds"] == pytest.approx(chain, abs=0.01)
    assert run["rtoSeconds"] == pytest.approx(3.0 + chain, abs=0.01)
    assert run["display"]["rto"] == display.duration(run["rtoSeconds"])  # the RTO column
    assert steps["notify"]["seconds"] > 0  # the held call is measured, as a slow receiver is
    assert run["sites"]["primary"]["healthy"] is True
    assert run["sites"]["secondary"]["healthy"] is True

    # Nothing live changed: read back and compared.
    assert drill_record_values(route53_client, zone) is None
    assert zone_records(route53_client, zone) == before["zone"]
    assert pg_state(primary) == before["primary"]
    assert pg_state(standby) == before["standby"]
    assert deployment_state(k8s_api, namespace, "warm") == before["deployment"]
    plan_after = status_of(k8s_api, namespace, "orders")
    assert plan_after["state"] == "Monitoring" and plan_after["activeSite"] == "primary"
    assert "lastTransition" not in plan_after and "lastTransition" not in plan_before

    reasons = [e["reason"] for e in events_for(k8s_api, namespace, "switch-rehearsal")]
    assert "DrillStarted" in reasons and "DrillPassed" in reasons
    port = metrics_port(aegis_operator)
    labels = {"namespace": namespace, "drill": "switch-rehearsal"}
    assert metric(port, "aegis_drill_last_passed", **labels) == 1.0
    assert metric(port, "aegis_drill_last_rto_seconds", **labels) == run["rtoSeconds"]
    capsys.readouterr()
    assert kubectl_drill.main(["status", "switch-rehearsal", "-n", namespace]) == 0
    shown = capsys.readouterr().out
    assert "plan      orders (failover DryRun)" in shown
    assert "predicted: detection + the exercised steps" in shown
    for name in ("promote", "dns", "warm-up", "notify", "drill-record-cleanup"):
        assert f"step      {name}: Passed" in shown


def test_dryrun_failover_drill_fails_naming_a_standby_that_is_not_in_recovery(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
    endpoints: Callable[[], Endpoint],  # noqa: F811 - the fixture
) -> None:
    primary, standby = pg_standby
    health, hook = endpoints(), endpoints()
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)
    make_deployment(k8s_api, namespace, "warm", 1)
    with primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int)")
    wait_for("the standby has the table", lambda: _orders(standby) == 0)
    standby.promote()  # the "standby" has left recovery: a failover onto it would not work
    wait_for("the standby promoted", lambda: pg_state(standby)["in_recovery"] is False)
    make_plan(k8s_api, namespace, "orders",
              plan_spec(primary, standby, health, hook, moto, zone))
    zone_before = zone_records(route53_client, zone)
    make_drill(k8s_api, namespace, "switch-rehearsal", {
        "type": "Failover", "failover": {"planRef": {"name": "orders"}},
    })
    drill = finished_run(k8s_api, namespace, "switch-rehearsal")
    run = drill["status"]["lastRun"]
    assert run["result"] == "Failed"
    passed = condition(drill, "LastDrillPassed")
    assert passed is not None and passed["status"] == "False"
    assert passed["reason"] == "StandbyNotInRecovery"
    assert "not in recovery" in passed["message"]
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["promote"]["result"] == "Failed"
    # Without drillRecord the Route53 step is not exercised, and says so (not a pass).
    assert steps["dns"]["result"] == "NotExercised"
    assert "drillRecord" in steps["dns"]["message"]
    assert "not exercised: dns" in passed["message"]
    assert zone_records(route53_client, zone) == zone_before
    warnings = [e for e in events_for(k8s_api, namespace, "switch-rehearsal")
                if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["StandbyNotInRecovery"]
    port = metrics_port(aegis_operator)
    assert metric(port, "aegis_drill_runs_total", namespace=namespace,
                  drill="switch-rehearsal", result="Failed",
                  reason="StandbyNotInRecovery") == 1.0


def _orders(server: PostgresServer) -> int:
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT count(*) FROM orders").fetchone()
    except Exception:  # not replicated yet: wait_for asks again
        return -1
    return int(row[0]) if row else -1
