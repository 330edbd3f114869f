"""Failover that protects data (issue 13), end to end: the real operator against the
emulator, a real PostgreSQL primary with a streaming standby, a real Redis pair, and a moto
Route53 zone. Replication lag gates promotion; failback is a switchover with zero loss."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tests.e2e.helpers import OperatorHandle, condition, events_for, get, wait_for
from tests.e2e.test_failover import (
    PLURAL,
    Endpoint,
    annotations_of,
    dns_step,
    endpoints,
    make_plan,
    make_zone,
    metric,
    metrics_port,
    pg_target,
    reason_of,
    reasons,
    record_values,
    secrets_for,
    site,
    status_of,
    step_of,
    wait_state,
)

from aegis.sandbox.servers import MotoServer, PostgresServer, RedisServer

__all__ = ["endpoints"]  # the fixture, re-exported for this module's tests


def annotate(k8s_api: Any, namespace: str, name: str, annotations: dict[str, str]) -> None:
    from kubernetes import client

    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, PLURAL, name,
        {"metadata": {"annotations": annotations}},
    )


def in_recovery(server: PostgresServer) -> bool:
    with server.connect() as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


def stop_replication(standby: PostgresServer) -> None:
    """Break the standby's replication the way a broken network or a bad config would: its
    WAL receiver stops, the standby still answers SELECT 1."""
    with standby.connect(autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")


def replication_of(k8s_api: Any, namespace: str, name: str, key: str) -> dict[str, Any]:
    sites = status_of(k8s_api, namespace, name).get("sites") or {}
    rep: dict[str, Any] = (sites.get(key) or {}).get("replication") or {}
    return rep


def test_stale_standby_is_not_promoted_automatic_plan_blocks_with_the_lag(
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
    make_plan(k8s_api, namespace, "stale", {
        "mode": "Automatic",
        "objectives": {"rpoSeconds": 30},
        "primary": site("eu", [{"name": "db", "postgres": {**pg_target(primary),
                                                             "writable": True}}]),
        "secondary": site("us", [{"name": "db", "postgres": pg_target(standby)}]),
        "steps": [
            {"name": "promote", "timeoutSeconds": 30, "postgresPromote": {
                "target": pg_target(standby), "fencePrimary": pg_target(primary)}},
            dns_step(moto, zone),
        ],
    })
    wait_for("standby replication known and fresh",
             lambda: replication_of(k8s_api, namespace, "stale", "secondary").get("stale")
             is False)
    healthy = replication_of(k8s_api, namespace, "stale", "secondary")
    assert healthy["role"] == "replica" and healthy["streaming"] is True
    assert healthy["lagBytes"] < 1024 * 1024

    stop_replication(standby)
    with primary.connect() as conn:  # writes go on: about 3 MB of WAL the standby never gets
        conn.execute("CREATE TABLE orders (id int, note text)")
        conn.execute("INSERT INTO orders SELECT g, repeat('x', 100) FROM generate_series(1, "
                     "20000) g")
    with primary.connect() as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
        assert row is not None
        written = int(row[0])
    wait_for("the primary's new position observed",
             lambda: (replication_of(k8s_api, namespace, "stale", "primary").get("position")
                      or 0) >= written)
    lagging = wait_for(
        "standby stale", lambda: (r := replication_of(k8s_api, namespace, "stale", "secondary"))
        .get("stale") is True and r)
    assert lagging["streaming"] is False and lagging["lagBytes"] > 1024 * 1024
    port = metrics_port(aegis_operator)
    assert metric(port, "aegis_replication_stale", namespace=namespace, plan="stale",
                  site="secondary") == 1.0
    assert (metric(port, "aegis_replication_lag_bytes", namespace=namespace, plan="stale",
                   site="secondary") or 0) > 1024 * 1024

    primary.stop_hard()
    status = wait_state(k8s_api, namespace, "stale", "Blocked")
    assert status["activeSite"] == "primary"
    plan = get(k8s_api, PLURAL, namespace, "stale")
    ready = condition(plan, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert ready["reason"] == "FailoverBlocked" and "bytes" in ready["message"]
    recommended = condition(plan, "FailoverRecommended")
    assert recommended is not None and recommended["reason"] == "SecondaryLagging"
    assert f"{lagging['lagBytes']} bytes" in recommended["message"] or "bytes" in recommended[
        "message"]
    warnings = [e for e in events_for(k8s_api, namespace, "stale")
                if e["reason"] == "FailoverBlocked"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert "behind eu" in warnings[0]["message"]
    assert metric(port, "aegis_failover_blocked", namespace=namespace, plan="stale") == 1.0
    # several more probe rounds: still blocked, the standby never promoted, DNS unchanged
    time.sleep(3)
    assert status_of(k8s_api, namespace, "stale")["state"] == "Blocked"
    assert in_recovery(standby)
    assert record_values(route53_client, zone) == ["10.0.0.1"]
    assert "lastTransition" not in status_of(k8s_api, namespace, "stale")

    # a manual trigger without the acknowledgement is refused with the lag named
    annotate(k8s_api, namespace, "stale", {"dr.aegis.dev/failover": "site lost"})
    wait_for("manual trigger refused",
             lambda: "SecondaryLagging" in reasons(k8s_api, namespace, "stale"))
    wait_for("trigger consumed", lambda: "dr.aegis.dev/failover" not in annotations_of(
        k8s_api, namespace, "stale"))
    assert in_recovery(standby) and status_of(k8s_api, namespace, "stale")["state"] == "Blocked"

    # with the acknowledgement it runs, and the transition records what was accepted
    annotate(k8s_api, namespace, "stale", {"dr.aegis.dev/failover": "site lost",
                                           "dr.aegis.dev/accept-data-loss": "INC-42 CTO ok"})
    status = wait_state(k8s_api, namespace, "stale", "FailedOver")
    last = status["lastTransition"]
    assert last["dataLossAccepted"] == "INC-42 CTO ok"
    assert last["expectedLagBytes"] == lagging["lagBytes"] or last["expectedLagBytes"] > 1024 ** 2
    assert not in_recovery(standby)
    assert record_values(route53_client, zone) == ["10.0.0.2"]
    assert "DataLossAccepted" in reasons(k8s_api, namespace, "stale")
    assert metric(port, "aegis_failover_blocked", namespace=namespace, plan="stale") == 0.0
