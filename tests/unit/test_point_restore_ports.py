"""The RecoveryPoint and Restore reconcilers driven through an in-memory cluster and bucket
and an explicit time: admission (policy, key Secret, readiness), point resolution, one Job,
and the outcome folded from the Job. No API server, no S3."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from tests.unit.cluster_memory import MemoryCluster, custom
from tests.unit.test_point_lifecycle import POLICY, manifest

from aegis.agent.manifest import Manifest
from aegis.api.restore import RestoreSpec
from aegis.reconcilers import recoverypoint as points
from aegis.reconcilers import restore as restores
from aegis.reconcilers.conditions import find
from aegis.settings import Settings

NOW = dt.datetime(2026, 12, 1, 3, 0, 5, tzinfo=dt.UTC)
NS = "shop"

class MemoryBucket:
    """recoverypoint.Store: the evidence of the point's backup and what was deleted."""

    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {}
        self.tombstones: list[str] = []
        self.deleted: list[str] = []
        self.locked_until: dt.datetime | None = None

    def evidence(self, point: dict[str, Any]) -> points.Evidence:
        found = self.manifests.get(point["metadata"]["name"])
        return points.Evidence(found, unreadable=None if found else "NoSuchKey")

    def abort_uploads(self, point: dict[str, Any]) -> int:
        return 0

    def write_tombstone(self, point: dict[str, Any], body: bytes) -> None:
        self.tombstones.append(point["metadata"]["name"])

    def delete_objects(self, point: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
        self.deleted.append(point["metadata"]["name"])
        return self.locked_until


def world(**policy_status: Any) -> tuple[MemoryCluster, MemoryBucket]:
    cluster = MemoryCluster()
    cluster.add(custom("BackupPolicy", "orders", copy.deepcopy(POLICY), **policy_status))
    cluster.secrets["keys"] = {"k1": b"x" * 32}
    cluster.secrets["db"] = {"u": b"u", "p": b"p"}
    return cluster, MemoryBucket()


def a_point(cluster: MemoryCluster, name: str = "orders-1", **status: Any) -> dict[str, Any]:
    spec = {"policyRef": {"name": "orders"}, "trigger": "Manual"}
    return copy.deepcopy(cluster.add(custom("RecoveryPoint", name, spec, **status)))


def end_job(cluster: MemoryCluster, name: str, state: str) -> None:
    cluster.jobs[name]["status"] = {
        "startTime": "2026-12-01T03:00:01Z",
        "completionTime": "2026-12-01T03:00:04Z",
        "conditions": [{"type": state, "status": "True", "message": f"job {state}"}],
    }


# --- RecoveryPoint -------------------------------------------------------------------------


def test_a_point_starts_one_job_and_is_running() -> None:
    cluster, bucket = world()
    point = a_point(cluster)
    job_name, created = points.start(cluster, bucket, point, Settings(), NOW)
    assert (job_name, created) == ("backup-orders-1", True)
    status = cluster.status_of("RecoveryPoint", "orders-1")
    assert status["phase"] == "Running" and status["jobName"] == "backup-orders-1"
    assert cluster.reasons("orders-1") == ["BackupStarted"]
    # The Job names the key ids of the key Secret, never a value.
    assert "x" * 32 not in str(cluster.jobs["backup-orders-1"])
    again = points.start(cluster, bucket, cluster.get_point(NS, "orders-1") or {}, Settings(), NOW)
    assert again == ("backup-orders-1", False) and len(cluster.jobs) == 1
    assert cluster.reasons("orders-1") == ["BackupStarted"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c.objects.pop(("BackupPolicy", "orders")), "PolicyNotFound"),
        (lambda c: c.secrets.pop("keys"), "KeySecretNotFound"),
        (lambda c: c.secrets.__setitem__("keys", {}), "EncryptionKeyMissing"),
    ],
)
def test_a_point_whose_policy_or_keys_are_missing_is_blocked_without_a_job(
    change: Any, reason: str
) -> None:
    cluster, bucket = world()
    point = a_point(cluster)
    change(cluster)
    with pytest.raises(points.PointBlocked) as blocked:
        points.start(cluster, bucket, point, Settings(), NOW)
    assert blocked.value.reason == reason and not cluster.jobs
    points.block(cluster, point, blocked.value, NOW)
    status = cluster.status_of("RecoveryPoint", "orders-1")
    assert status["phase"] == "Pending"
    accepted = find(status["conditions"], "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == reason


def test_an_on_demand_point_of_a_policy_that_is_not_ready_waits() -> None:
    not_ready = [{"type": "Ready", "status": "False", "reason": "BucketNotFound", "message": "m"}]
    cluster, bucket = world(conditions=not_ready)
    with pytest.raises(points.PointBlocked) as blocked:
        points.start(cluster, bucket, a_point(cluster), Settings(), NOW)
    assert blocked.value.reason == "PolicyNotReady" and "BucketNotFound" in blocked.value.message
    assert not cluster.jobs


def test_a_job_that_completed_with_its_manifest_completes_the_point() -> None:
    cluster, bucket = world()
    points.start(cluster, bucket, a_point(cluster), Settings(), NOW)
    end_job(cluster, "backup-orders-1", "Complete")
    bucket.manifests["orders-1"] = manifest("orders-1")
    finished = points.sync(cluster, bucket, NS, "orders-1", NOW)
    assert finished is not None and finished.outcome.phase == "Completed"
    assert cluster.status_of("RecoveryPoint", "orders-1")["phase"] == "Completed"
    assert points.sync(cluster, bucket, NS, "orders-1", NOW) is None  # told once


def test_a_job_that_completed_without_a_manifest_does_not_complete_the_point() -> None:
    cluster, bucket = world()
    points.start(cluster, bucket, a_point(cluster), Settings(), NOW)
    end_job(cluster, "backup-orders-1", "Complete")
    finished = points.sync(cluster, bucket, NS, "orders-1", NOW)
    assert finished is not None and finished.outcome.phase != "Completed"
    assert "Warning" in [e[1] for e in cluster.events if e[0] == "orders-1"]


def test_deleting_a_point_follows_its_policy_deletion_policy() -> None:
    cluster, bucket = world()
    point = a_point(cluster, manifest="backups/shop/orders/orders-1/manifest.json")
    spec = cluster.objects[("BackupPolicy", "orders")]["spec"]
    spec["deletionPolicy"] = "Retain"
    assert points.delete_objects(cluster, bucket, point, NOW, pruned=False) is None
    assert bucket.tombstones == ["orders-1"] and not bucket.deleted
    spec["deletionPolicy"] = "Delete"
    assert points.delete_objects(cluster, bucket, point, NOW, pruned=False) is None
    assert bucket.deleted == ["orders-1"]
    spec["deletionPolicy"] = "Retain"
    bucket.deleted.clear()
    bucket.locked_until = NOW + dt.timedelta(days=1)
    assert points.delete_objects(cluster, bucket, point, NOW, pruned=True) == bucket.locked_until
    cluster.objects.pop(("BackupPolicy", "orders"))
    assert points.delete_objects(cluster, bucket, point, NOW, pruned=True) is None


# --- Restore -------------------------------------------------------------------------------

TARGET = {
    "postgres": {
        "host": "db",
        "database": "copy",
        "userSecretRef": {"name": "db", "key": "u"},
        "passwordSecretRef": {"name": "db", "key": "p"},
    }
}


def a_restore(cluster: MemoryCluster, **source: Any) -> tuple[dict[str, Any], RestoreSpec]:
    spec = {"target": TARGET, **(source or {"policyRef": {"name": "orders"}})}
    body = copy.deepcopy(cluster.add(custom("Restore", "r1", spec)))
    return body, RestoreSpec.model_validate(spec)


def completed(cluster: MemoryCluster, name: str, source_time: str) -> None:
    m = manifest(name)
    a_point(
        cluster,
        name,
        phase="Completed",
        sourceTime=source_time,
        location=m.location,
        manifest=m.manifest,
    )


def test_a_restore_by_policy_resolves_its_newest_completed_point_and_starts_one_job() -> None:
    cluster, _ = world()
    completed(cluster, "orders-1", "2026-12-01T01:00:00Z")
    completed(cluster, "orders-2", "2026-12-01T02:00:00Z")
    restore, spec = a_restore(cluster)
    started = restores.start(cluster, restore, spec, Settings(), NOW)
    assert started.created and started.point == "orders-2"
    status = cluster.status_of("Restore", "r1")
    assert status["phase"] == "Running" and status["recoveryPoint"] == "orders-2"
    assert status["jobName"] == started.job_name and status["startTime"] == "2026-12-01T03:00:05Z"
    assert find(status["conditions"], "Complete")["status"] == "Unknown"
    # A restart finds the Job recorded: no second Job, whatever points exist now.
    completed(cluster, "orders-3", "2026-12-01T02:30:00Z")
    again = restores.start(cluster, cluster.get_restore(NS, "r1") or {}, spec, Settings(), NOW)
    assert again == restores.Started(started.job_name, False, "orders-2")
    assert len(cluster.jobs) == 1


def test_a_restore_without_a_point_to_restore_is_blocked() -> None:
    cluster, _ = world()
    restore, spec = a_restore(cluster)
    with pytest.raises(points.PointBlocked) as blocked:
        restores.start(cluster, restore, spec, Settings(), NOW)
    assert blocked.value.reason == "NoCompletedRecoveryPoint"
    restore, spec = a_restore(cluster, recoveryPointRef={"name": "orders-9"})
    with pytest.raises(points.PointBlocked) as named:
        restores.start(cluster, restore, spec, Settings(), NOW)
    assert named.value.reason == "RecoveryPointNotFound"
    restores.block(cluster, restore, named.value, NOW)
    assert cluster.status_of("Restore", "r1")["phase"] == "Pending"
    assert not cluster.jobs


def test_a_restore_of_a_failed_point_is_refused_and_ends_failed() -> None:
    cluster, _ = world()
    a_point(cluster, "orders-1", phase="Failed")
    restore, spec = a_restore(cluster, recoveryPointRef={"name": "orders-1"})
    with pytest.raises(restores.RestoreRefused) as refused:
        restores.start(cluster, restore, spec, Settings(), NOW)
    finished = restores.refuse(cluster, restore, refused.value, NOW)
    assert finished.outcome.phase == "Failed"
    status = cluster.status_of("Restore", "r1")
    assert status["phase"] == "Failed" and status["completionTime"] == "2026-12-01T03:00:05Z"
    assert not cluster.jobs


def test_a_restore_job_that_passed_its_checks_completes_and_verifies_the_point() -> None:
    cluster, _ = world()
    completed(cluster, "orders-1", "2026-12-01T01:00:00Z")
    restore, spec = a_restore(cluster)
    started = restores.start(cluster, restore, spec, Settings(), NOW)
    assert started.job_name is not None
    assert restores.finish(NS, "r1", cluster, NOW) is None  # the Job runs
    end_job(cluster, started.job_name, "Complete")
    cluster.messages[started.job_name] = (
        '{"ok": true, "restoredBytes": 4096, "durationSeconds": 2.5, "checks": '
        '[{"name": "rows", "result": "Passed", "value": 10}]}'
    )
    finished = restores.finish(NS, "r1", cluster, NOW)
    assert finished is not None and finished.outcome.phase == "Completed"
    assert cluster.status_of("Restore", "r1")["restoredBytes"] == 4096
    assert restores.mark_point_verified(cluster, finished, NOW)
    point = cluster.status_of("RecoveryPoint", "orders-1")
    assert find(point["conditions"], "Verified")["status"] == "True"
    assert point["verification"]["result"] == "Passed"


def test_a_restore_job_the_agent_refused_as_corrupted_marks_the_point() -> None:
    cluster, _ = world()
    completed(cluster, "orders-1", "2026-12-01T01:00:00Z")
    restore, spec = a_restore(cluster)
    started = restores.start(cluster, restore, spec, Settings(), NOW)
    assert started.job_name is not None
    end_job(cluster, started.job_name, "Failed")
    cluster.messages[started.job_name] = '{"ok": false, "kind": "Corrupted", "reason": "sha"}'
    finished = restores.finish(NS, "r1", cluster, NOW)
    assert finished is not None and finished.outcome.reason == "Corrupted"
    assert restores.judge_point(finished, cluster, NOW)
    assert cluster.status_of("RecoveryPoint", "orders-1")["phase"] == "Corrupted"
    assert "RecoveryPointCorrupted" in cluster.reasons("orders-1")


def test_a_deleted_restore_is_left_alone() -> None:
    cluster, _ = world()
    assert restores.finish(NS, "gone", cluster, NOW) is None


def restore_failures() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("aegis_restore_failures_total", {"namespace": NS}) or 0.0


def test_a_restore_is_told_once_started_and_once_ended_with_its_metric() -> None:
    cluster, _ = world()
    completed(cluster, "orders-1", "2026-12-01T01:00:00Z")
    restore, spec = a_restore(cluster)
    started = restores.start(cluster, restore, spec, Settings(), NOW)
    assert started.job_name is not None
    assert cluster.reasons("r1") == ["RestoreStarted"]
    restores.start(cluster, cluster.get_restore(NS, "r1") or {}, spec, Settings(), NOW)
    assert cluster.reasons("r1") == ["RestoreStarted"]
    end_job(cluster, started.job_name, "Failed")
    cluster.messages[started.job_name] = '{"ok": false, "kind": "Corrupted", "reason": "sha"}'
    finished = restores.finish(NS, "r1", cluster, NOW)
    assert finished is not None
    failures = restore_failures()
    lines = restores.announce(cluster, finished, NOW)
    assert restore_failures() == failures + 1
    assert cluster.reasons("r1") == ["RestoreStarted", "Corrupted"]
    assert [line for _, line in lines] == [
        f"Restore r1 failed: {finished.outcome.message}",
        "RecoveryPoint orders-1 is Corrupted",
    ]
