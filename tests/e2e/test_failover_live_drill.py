"""Live failover drills end to end: the real operator fails a FailoverPlan over (a
postgresSwitchover onto a real streaming standby, a moto Route53 record) and back, through
the plan's own triggers, and the drill reports the write outage and the data lost the
plan's steps measured. The test plays the re-attaching tooling (Patroni, CloudNativePG)
between the two: it makes the old primary a replica of the new one."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from tests.e2e.helpers import OperatorHandle, condition, get, wait_for
from tests.e2e.test_drills import PLURAL, finished_run, make_drill
from tests.e2e.test_failover import (
    dns_step,
    make_plan,
    make_zone,
    pg_target,
    reason_of,
    record_values,
    secrets_for,
    site,
    status_of,
    wait_state,
)
from tests.e2e.test_failover_safety import in_recovery, record_step

from aegis.sandbox.servers import MotoServer, PostgresServer


def switchover(name: str, target: PostgresServer, primary: PostgresServer) -> dict[str, Any]:
    return {"name": name, "timeoutSeconds": 30, "postgresSwitchover": {
        "target": pg_target(target), "primary": pg_target(primary)}}


def live_plan(
    mode: str, primary: PostgresServer, standby: PostgresServer, moto: MotoServer, zone: str
) -> dict[str, Any]:
    return {
        "mode": mode,
        "primary": site("eu", [{"name": "db", "postgres": pg_target(primary)}]),
        "secondary": site("us", [{"name": "db", "postgres": pg_target(standby)}]),
        "steps": [switchover("switchover", standby, primary), dns_step(moto, zone)],
        "failbackSteps": [switchover("switchover-back", primary, standby),
                          record_step(moto, zone, "dns-back", "10.0.0.1")],
    }


def test_live_drill_fails_over_and_back_with_zero_loss_and_measured_outage(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)
    with primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 1000)")
    make_plan(k8s_api, namespace, "orders", live_plan("Automatic", primary, standby, moto, zone))
    wait_for("sites probed", lambda: reason_of(k8s_api, namespace, "orders",
                                               "SecondaryHealthy") == "ChecksPassing")
    make_drill(k8s_api, namespace, "live", {
        "type": "Failover", "objectives": {"rtoSeconds": 60},
        "failover": {"planRef": {"name": "orders"}, "mode": "Live",
                     "failbackReadyTimeoutSeconds": 120},
    })
    ready = wait_for("Ready", lambda: condition(get(k8s_api, PLURAL, namespace, "live"), "Ready"))
    assert ready["status"] == "True" and "Live" in ready["message"]

    # the drill fails over through the plan: the standby serves, the record points to it
    wait_state(k8s_api, namespace, "orders", "FailedOver", timeout=60)
    assert not in_recovery(standby)
    assert record_values(route53_client, zone) == ["10.0.0.2"]
    with standby.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (1001)")  # a write on the new primary
    # the re-attaching tooling's part: the old primary becomes a replica of the new one
    primary.reattach_as_standby(standby)

    drill = finished_run(k8s_api, namespace, "live", timeout=180)
    run = drill["status"]["lastRun"]
    assert run["result"] == "Passed", run["message"]
    assert run["reason"] == "DrillPassed"
    assert run["dataLostBytes"] == 0
    assert run["writeOutageSource"] == "switchoverStep"
    assert 0 < run["rtoSeconds"] == run["writeOutageSeconds"] < 60
    assert run["rtoPredicted"] is False
    phases = run["phases"]
    assert phases["approvalSeconds"] == 0
    assert phases["failoverSeconds"] >= run["writeOutageSeconds"]
    assert phases["failbackReadySeconds"] > 0 and phases["failbackSeconds"] > 0
    assert len(run["transitions"]) == 2
    names = {s["name"]: s for s in run["steps"]}
    assert names["failover/switchover"]["result"] == "Passed"
    assert names["failback/switchover-back"]["result"] == "Passed"
    assert names["failover/switchover"]["outputs"]["lagBytes"] == "0"
    last = condition(drill, "LastDrillPassed")
    assert last is not None and last["status"] == "True"

    # the plan is back home, the old primary serves with the write made while failed over
    plan = status_of(k8s_api, namespace, "orders")
    assert plan["state"] == "Monitoring" and plan["activeSite"] == "primary"
    assert plan["lastTransition"]["kind"] == "Failback"
    assert plan["lastTransition"]["id"] == run["transitions"][1]
    assert not in_recovery(primary)
    with primary.connect() as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1001,)
    assert record_values(route53_client, zone) == ["10.0.0.1"]
    assert not (get(k8s_api, "failoverplans", namespace, "orders")["metadata"]
                .get("annotations") or {}).get("dr.aegis.dev/failover")


def test_live_drill_of_a_manual_plan_waits_for_approval_then_times_out_unchanged(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)
    make_plan(k8s_api, namespace, "orders", live_plan("Manual", primary, standby, moto, zone))
    wait_for("sites probed", lambda: reason_of(k8s_api, namespace, "orders",
                                               "SecondaryHealthy") == "ChecksPassing")
    make_drill(k8s_api, namespace, "live", {
        "type": "Failover",
        "failover": {"planRef": {"name": "orders"}, "mode": "Live", "approvalTimeoutSeconds": 4},
    })
    waiting = wait_for("awaiting approval", lambda: (
        (r := (get(k8s_api, PLURAL, namespace, "live").get("status") or {}).get("lastRun"))
        and r.get("reason") == "AwaitingApproval" and r))
    assert waiting["result"] == "Running" and waiting["approvalToken"]
    assert f"dr.aegis.dev/approve={waiting['approvalToken']}" in waiting["message"]
    # a wrong token does not approve
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, PLURAL, "live",
        {"metadata": {"annotations": {"dr.aegis.dev/approve": "not-the-token"}}},
    )
    run = finished_run(k8s_api, namespace, "live", timeout=30)["status"]["lastRun"]
    assert run["result"] == "Failed" and run["reason"] == "ApprovalTimeout"
    assert "approvalToken" not in run
    plan = status_of(k8s_api, namespace, "orders")
    assert (plan.get("state") or "Monitoring") == "Monitoring"
    assert plan.get("activeSite") in (None, "primary")
    assert in_recovery(standby) and not in_recovery(primary)
    assert record_values(route53_client, zone) == ["10.0.0.1"]
