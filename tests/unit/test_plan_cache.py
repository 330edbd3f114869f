"""PlanCache: a FailoverPlan's tick reads the watch's copy only when it cannot be older than
what this process last wrote or read (issue 15: no GET per probe round)."""

from __future__ import annotations

from typing import Any

from aegis.k8s.cache import PlanCache


def plan(version: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": "p",
            "resourceVersion": version,
            "annotations": annotations or {},
        },
        "spec": {"mode": "Manual"},
    }


def test_a_plan_never_seen_is_a_miss() -> None:
    assert PlanCache().get("ns", "p") is None


def test_the_watched_copy_is_served_as_a_private_copy() -> None:
    cache = PlanCache()
    cache.event("ADDED", plan("1"))
    got = cache.get("ns", "p")
    assert got is not None and got["metadata"]["resourceVersion"] == "1"
    got["spec"]["mode"] = "Automatic"
    again = cache.get("ns", "p")
    assert again is not None and again["spec"]["mode"] == "Manual"


def test_after_our_write_only_the_version_it_produced_is_trusted() -> None:
    cache = PlanCache()
    cache.event("ADDED", plan("1"))
    cache.wrote("ns", "p", "2")
    assert cache.get("ns", "p") is None  # the watch has not delivered our write yet
    cache.event("MODIFIED", plan("2"))
    got = cache.get("ns", "p")
    assert got is not None and got["metadata"]["resourceVersion"] == "2"


def test_a_later_change_by_someone_else_costs_one_read() -> None:
    cache = PlanCache()
    cache.event("ADDED", plan("1"))
    cache.wrote("ns", "p", "2")
    cache.event("MODIFIED", plan("2"))
    cache.event("MODIFIED", plan("3", {"dr.aegis.dev/failover": "now"}))
    assert cache.get("ns", "p") is None  # newer or older than ours: read it
    cache.fresh(plan("3", {"dr.aegis.dev/failover": "now"}))
    got = cache.get("ns", "p")
    assert got is not None and got["metadata"]["annotations"] == {"dr.aegis.dev/failover": "now"}


def test_a_write_of_unknown_outcome_trusts_nothing_until_a_read() -> None:
    cache = PlanCache()
    cache.event("ADDED", plan("1"))
    cache.wrote("ns", "p", None)
    cache.event("MODIFIED", plan("2"))
    assert cache.get("ns", "p") is None
    cache.fresh(plan("2"))
    assert cache.get("ns", "p") is not None


def test_a_deleted_plan_is_a_miss() -> None:
    cache = PlanCache()
    cache.event("ADDED", plan("1"))
    cache.event("DELETED", plan("1"))
    assert cache.get("ns", "p") is None


def test_caches_keep_bodies_without_managed_fields_and_leave_the_event_alone() -> None:
    from aegis.k8s.cache import PointCache

    managed = [{"manager": "kopf", "operation": "Update", "fieldsV1": {"f:metadata": {}}}]

    def body(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "metadata": {"namespace": "shop", "name": name, "resourceVersion": "7",
                         "labels": {"a": "b"}, "managedFields": list(managed)},
            **extra,
        }

    plans = PlanCache()
    plan = body("orders")
    plans.event("ADDED", plan)
    kept = plans.get("shop", "orders")
    assert kept is not None and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["labels"] == {"a": "b"}
    assert plan["metadata"]["managedFields"] == managed  # kopf's copy is untouched

    points = PointCache()
    point = body("orders-1", spec={"policyRef": {"name": "orders"}})
    points.point_event("ADDED", point)
    policy = body("orders")
    points.policy_event("ADDED", policy)
    assert [p["metadata"].get("managedFields") for p in points.points("shop", "orders")] == [None]
    cached_policy = points.policy("shop", "orders")
    assert cached_policy is not None and "managedFields" not in cached_policy["metadata"]
    assert point["metadata"]["managedFields"] == managed
    assert policy["metadata"]["managedFields"] == managed
