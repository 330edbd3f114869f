"""DRDrill end to end: the real operator, the Job runner running the real agent, real
PostgreSQL and redis-server (the drill's own scratch servers), moto S3."""

from __future__ import annotations

from typing import Any

from tests.e2e.helpers import OperatorHandle, condition, create, get, wait_for

PLURAL = "drdrills"


def make_drill(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    create(
        k8s_api, PLURAL, namespace, {"kind": "DRDrill", "metadata": {"name": name}, "spec": spec}
    )


def test_failover_drill_says_it_is_not_implemented(
    aegis_operator: OperatorHandle, k8s_api: Any, namespace: str
) -> None:
    make_drill(
        k8s_api,
        namespace,
        "switch-rehearsal",
        {"type": "Failover", "failover": {"planRef": {"name": "orders"}}},
    )
    ready = wait_for(
        "the drill's Ready condition",
        lambda: condition(get(k8s_api, PLURAL, namespace, "switch-rehearsal"), "Ready"),
    )
    assert ready["status"] == "False"
    assert ready["reason"] == "NotImplemented"
    assert "not implemented" in ready["message"]
    assert (get(k8s_api, PLURAL, namespace, "switch-rehearsal").get("status") or {}).get(
        "lastRun"
    ) is None
