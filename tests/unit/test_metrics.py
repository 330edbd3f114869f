"""aegis.metrics: the per-policy series the alerts read exist from the moment the operator
sees a policy, follow the points' evidence, and go away with the policy. Read back the way
Prometheus reads them: the registry's text exposition."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aegis import metrics

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def now_is_now() -> None:
    """The RPO gauge is computed at scrape time from the real clock: every test's "now" is
    taken when it starts, not when the module was collected (a whole suite can run between)."""
    global NOW
    NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def policy(namespace: str, name: str = "orders", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "creationTimestamp": iso(NOW - dt.timedelta(hours=2)),
        },
        "spec": spec,
    }


def point(phase: str | None, *, source_age: float = 0, stored: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if phase == "Completed":
        source = NOW - dt.timedelta(seconds=source_age)
        status.update(
            sourceTime=iso(source),
            completionTime=iso(source + dt.timedelta(seconds=30)),
            storedBytes=stored,
        )
    return {"metadata": {"name": f"p-{phase}-{source_age}"}, "status": status}


def scrape(namespace: str, registry: CollectorRegistry = REGISTRY) -> dict[tuple[str, str], float]:
    """(sample name, phase or "") → value, for one namespace's series."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace:
                found[(sample.name, sample.labels.get("phase", ""))] = sample.value
    return found


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Any:
    name = request.node.name.replace("_", "-")[:60]
    yield name
    metrics.forget_policy(name, "orders")


def test_a_policy_seen_for_the_first_time_has_every_alerted_series_at_zero(
    namespace: str,
) -> None:
    metrics.policy_seen(policy(namespace, objectives={"rpoSeconds": 3600}))
    seen = scrape(namespace)
    for counter in (
        "aegis_backup_failures_total",
        "aegis_copy_failures_total",
        "aegis_verification_failures_total",
        "aegis_restore_failures_total",
    ):
        assert seen[(counter, "")] == 0, counter
    for phase in metrics.POINT_PHASES:
        assert seen[("aegis_recovery_points", phase)] == 0, phase
    assert seen[("aegis_rpo_objective_seconds", "")] == 3600
    # Never completed: the RPO counts from the policy's creation, two hours ago.
    assert 7200 <= seen[("aegis_rpo_seconds", "")] < 7200 + 60


def test_seeing_a_policy_again_keeps_its_counts_and_its_known_rpo(namespace: str) -> None:
    body = policy(namespace)
    metrics.policy_seen(body)
    metrics.BACKUP_FAILURES.labels(namespace, "orders").inc()
    metrics.export_policy(body, [point("Completed", source_age=60)])
    metrics.policy_seen(body)  # e.g. an update of the policy
    seen = scrape(namespace)
    assert seen[("aegis_backup_failures_total", "")] == 1
    assert seen[("aegis_rpo_seconds", "")] < 120


def test_a_policy_without_a_valid_objective_exports_none(namespace: str) -> None:
    metrics.policy_seen(policy(namespace, objectives={"rpoSeconds": "an hour"}))
    assert ("aegis_rpo_objective_seconds", "") not in scrape(namespace)


def test_points_are_counted_by_phase_and_only_completed_ones_set_the_rpo(
    namespace: str,
) -> None:
    points = [
        point("Completed", source_age=3000, stored=1000),
        point("Completed", source_age=600, stored=2048),
        point("Failed"),
        point("Corrupted"),
        point("Running"),
        point(None),  # created, not started yet
    ]
    metrics.export_policy(policy(namespace, objectives={"rpoSeconds": 900}), points)
    seen = scrape(namespace)
    assert {p: seen[("aegis_recovery_points", p)] for p in metrics.POINT_PHASES} == {
        "Pending": 1,
        "Running": 1,
        "Completed": 2,
        "Failed": 1,
        "Corrupted": 1,
        "Expired": 0,
    }
    assert 600 <= seen[("aegis_rpo_seconds", "")] < 660  # the newest Completed point
    assert seen[("aegis_backup_size_bytes", "")] == 2048
    newest_done = NOW - dt.timedelta(seconds=600) + dt.timedelta(seconds=30)
    assert seen[("aegis_backup_last_success_timestamp_seconds", "")] == newest_done.timestamp()


def test_a_policy_whose_points_all_failed_has_no_completed_point_and_rpo_since_creation(
    namespace: str,
) -> None:
    body = policy(namespace)
    metrics.export_policy(body, [point("Completed", source_age=60)])
    metrics.export_policy(body, [point("Failed"), point("Corrupted")])  # the good one pruned
    seen = scrape(namespace)
    assert seen[("aegis_recovery_points", "Completed")] == 0
    assert seen[("aegis_recovery_points", "Failed")] == 1
    assert 7200 <= seen[("aegis_rpo_seconds", "")] < 7260
    assert ("aegis_backup_last_success_timestamp_seconds", "") not in seen
    assert ("aegis_backup_size_bytes", "") not in seen


def test_the_rpo_grows_between_refreshes_because_it_is_computed_at_scrape_time() -> None:
    clock = [1_000_000.0]
    rpo = metrics.RpoCollector(clock=lambda: clock[0])
    registry = CollectorRegistry()
    registry.register(rpo)
    rpo.set_since("shop", "orders", 1_000_000.0 - 100)
    assert scrape("shop", registry)[("aegis_rpo_seconds", "")] == 100
    clock[0] += 3600  # no refresh in between (e.g. a bucket outage stalls the status timer)
    assert scrape("shop", registry)[("aegis_rpo_seconds", "")] == 3700
    rpo.forget("shop", "orders")
    assert scrape("shop", registry) == {}


def test_failed_copies_and_verifications_are_counted(namespace: str) -> None:
    metrics.policy_seen(policy(namespace))
    metrics.copies_ended(
        namespace,
        "orders",
        [
            {"location": "s3://dr/a", "state": "Failed", "message": "AccessDenied"},
            {"location": "s3://dr-eu/a", "state": "Completed"},
            {"location": "s3://dr-us/a", "state": "Failed"},
        ],
    )
    metrics.copies_ended(namespace, "orders", None)
    metrics.verification_ended(namespace, "orders", passed=True)
    metrics.verification_ended(namespace, "orders", passed=False)
    seen = scrape(namespace)
    assert seen[("aegis_copy_failures_total", "")] == 2
    assert seen[("aegis_verification_failures_total", "")] == 1


def test_deleting_a_policy_removes_its_series_and_keeps_the_others(namespace: str) -> None:
    metrics.export_policy(
        policy(namespace, objectives={"rpoSeconds": 60}), [point("Completed", stored=5)]
    )
    metrics.export_policy(policy(namespace, "other"), [])
    metrics.BACKUP_DURATION.labels(namespace, "orders").observe(12)
    metrics.forget_policy(namespace, "orders")
    families = text_string_to_metric_families(generate_latest(REGISTRY).decode())
    samples = [s for family in families for s in family.samples]
    left = [
        s.name
        for s in samples
        if (s.labels.get("namespace"), s.labels.get("policy")) == (namespace, "orders")
    ]
    assert left == []
    assert ("aegis_rpo_seconds", "") in scrape(namespace)  # the other policy's
    # Restores are counted per namespace, not per policy: that series stays.
    assert ("aegis_restore_failures_total", "") in scrape(namespace)
    metrics.forget_policy(namespace, "other")
