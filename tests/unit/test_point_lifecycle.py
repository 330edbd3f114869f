"""The RecoveryPoint lifecycle (one writer of a point's status) and the Restore's point
choice and integrity verdicts, with in-memory ports: no API server, no bucket."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pydantic
import pytest

from aegis.agent.manifest import EncryptionRecord, Manifest, SourceRecord
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.restore import RestoreSpec
from aegis.k8s.jobs import ClaimMount, JobRequest, Termination, build_job, killed_reason
from aegis.reconcilers import backup, verification
from aegis.reconcilers import recoverypoint as points
from aegis.reconcilers import restore as restores
from aegis.reconcilers.conditions import find
from aegis.sandbox.podenv import ContainerConfigError, rewrite_mounted_paths, volume_mounts
from aegis.settings import Settings

NOW = dt.datetime(2026, 12, 1, 3, 0, 5, tzinfo=dt.UTC)
NS = "shop"


class MemoryCluster:
    """Points, Jobs, pod terminations and keyed events in dicts; status patches merge at
    the top level of `status` as a JSON merge patch does (lists replace)."""

    def __init__(self) -> None:
        self.points: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.terminations: dict[str, Termination] = {}
        self.events: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.patches = 0

    def get_point(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.points.get(name)
        return copy.deepcopy(found) if found else None

    def patch_point_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches += 1
        self.points[name].setdefault("status", {}).update(copy.deepcopy(status))

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(name))

    def create_job(self, namespace: str, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        name = job["metadata"]["name"]
        if name in self.jobs:
            return self.jobs[name], False
        self.jobs[name] = job
        return job, True

    def termination(self, namespace: str, job_name: str) -> Termination | None:
        return self.terminations.get(job_name)

    def post_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, key: str
    ) -> None:
        self.events.setdefault((involved["metadata"]["name"], key), (event_type, reason, message))

    def reasons(self, point: str) -> list[str]:
        return [reason for (name, _), (_, reason, _) in self.events.items() if name == point]


class MemoryStore:
    def __init__(self, evidence: points.Evidence | None = None) -> None:
        self.result = evidence
        self.reads = 0
        self.aborts = 0

    def evidence(self, point: dict[str, Any]) -> points.Evidence:
        self.reads += 1
        assert self.result is not None
        return self.result

    def abort_uploads(self, point: dict[str, Any]) -> int:
        self.aborts += 1
        return 2


def manifest(name: str = "orders-1") -> Manifest:
    directory = f"backups/{NS}/orders/{name}"
    return Manifest(
        namespace=NS,
        policy="orders",
        recovery_point=name,
        location=f"s3://bucket/{directory}/payload",
        manifest=f"{directory}/manifest.json",
        payload_format="pg_dump-custom",
        start_time=NOW - dt.timedelta(seconds=4),
        completion_time=NOW - dt.timedelta(seconds=1),
        source_time=NOW - dt.timedelta(seconds=4),
        source=SourceRecord(kind="Postgres", database="shop"),
        size_bytes=2048,
        stored_bytes=1024,
        sha256="ab" * 32,
        compression="Zstd",
        encryption=EncryptionRecord(
            algorithm="AES-256-GCM",
            key_id="2026-01",
            key_wrap="AES-256-GCM",
            wrapped_key="AAAA",
            chunk_size=1 << 20,
            nonce_prefix="00" * 8,
        ),
    )


def a_point(name: str = "orders-1", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1",
        "kind": "RecoveryPoint",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": {"policyRef": {"name": "orders"}, "trigger": "Manual"},
        "status": status,
    }


def a_job(name: str, state: str | None, reason: str | None = None) -> dict[str, Any]:
    conditions = (
        [{"type": state, "status": "True", "reason": reason or "", "message": f"job {state}"}]
        if state
        else []
    )
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-12-01T03:00:00Z"},
        "status": {"startTime": "2026-12-01T03:00:01Z", "conditions": conditions},
    }


def world(
    job_state: str | None, evidence: points.Evidence | None = None
) -> tuple[MemoryCluster, MemoryStore]:
    cluster = MemoryCluster()
    cluster.points["orders-1"] = a_point()
    cluster.jobs["backup-orders-1"] = a_job("backup-orders-1", job_state)
    return cluster, MemoryStore(evidence)


def sync(cluster: MemoryCluster, store: MemoryStore) -> points.Finished | None:
    return points.sync(cluster, store, NS, "orders-1", NOW)


def test_a_running_job_makes_the_point_running_once() -> None:
    cluster, store = world(None)
    assert sync(cluster, store) is None
    status = cluster.points["orders-1"]["status"]
    assert status["phase"] == "Running" and status["jobName"] == "backup-orders-1"
    assert find(status["conditions"], "Complete")["status"] == "Unknown"
    assert store.reads == 0  # the bucket is read only once the Job has ended
    patches = cluster.patches
    sync(cluster, store)
    assert cluster.patches == patches  # nothing changed, nothing written
    assert cluster.reasons("orders-1") == ["BackupStarted"]


def test_a_completed_job_is_proven_by_the_manifest_and_told_once() -> None:
    cluster, store = world("Complete", points.Evidence(manifest()))
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.phase == "Completed"
    status = cluster.points["orders-1"]["status"]
    assert status["phase"] == "Completed" and status["sha256"] == "ab" * 32
    complete = find(status["conditions"], "Complete")
    assert complete["status"] == "True" and complete["reason"] == "BackupCompleted"
    assert find(status["conditions"], "Accepted")["status"] == "True"
    # Every later call (a restart, a second Job event) changes nothing and tells nothing.
    for _ in range(3):
        assert sync(cluster, store) is None
    assert cluster.reasons("orders-1") == ["BackupCompleted"]
    assert store.aborts == 0


def test_a_lost_completion_event_is_retold_once_after_a_kill() -> None:
    cluster, store = world("Complete", points.Evidence(manifest()))
    sync(cluster, store)
    cluster.events.clear()  # the operator was killed between the status write and the event
    sync(cluster, store)
    sync(cluster, store)
    assert cluster.reasons("orders-1") == ["BackupCompleted"]


def test_conditions_written_meanwhile_are_kept() -> None:
    """The writer recomputes conditions from the point as it is now, never a stale copy."""
    cluster, store = world("Complete", points.Evidence(manifest()))
    cluster.points["orders-1"]["status"]["conditions"] = [
        {"type": "Verified", "status": "True", "reason": "RestoreVerified", "message": "ok"}
    ]
    sync(cluster, store)
    types = {c["type"] for c in cluster.points["orders-1"]["status"]["conditions"]}
    assert types == {"Verified", "Accepted", "Complete"}


def test_a_missing_manifest_makes_the_point_corrupted() -> None:
    cluster, store = world("Complete", points.Evidence(None, unreadable="NoSuchKey"))
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.phase == "Corrupted"
    status = cluster.points["orders-1"]["status"]
    assert find(status["conditions"], "Complete")["reason"] == "ManifestMissing"
    assert find(status["conditions"], "Corrupted")["reason"] == "ManifestMissing"


def test_an_agent_error_is_the_agents_reason_and_its_uploads_are_aborted() -> None:
    cluster, store = world("Failed")
    cluster.terminations["backup-orders-1"] = Termination(
        '{"ok": false, "reason": "password authentication failed"}', "Error", 1
    )
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.reason == "BackupFailed"
    assert cluster.points["orders-1"]["status"]["message"] == "password authentication failed"
    assert store.aborts == 1
    assert cluster.reasons("orders-1") == ["BackupFailed"]


@pytest.mark.parametrize(
    ("termination", "reason", "words"),
    [
        (Termination(None, "OOMKilled", 137), "OOMKilled", "memory limit"),
        (Termination(None, "Error", 137), "AgentKilled", "signal 9"),
        (Termination(None, "Error", 143, None), "AgentKilled", "signal 15"),
    ],
)
def test_a_kill_or_an_oom_is_told_apart_from_an_agent_error(
    termination: Termination, reason: str, words: str
) -> None:
    cluster, store = world("Failed")
    cluster.terminations["backup-orders-1"] = termination
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.reason == reason
    assert words in finished.outcome.message


def test_a_deadline_is_named() -> None:
    cluster, store = world(None)
    cluster.jobs["backup-orders-1"] = a_job("backup-orders-1", "Failed", "DeadlineExceeded")
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.reason == "DeadlineExceeded"


def test_a_vanished_job_fails_a_point_that_recorded_it_but_not_one_never_started() -> None:
    cluster, store = world(None)
    del cluster.jobs["backup-orders-1"]
    assert sync(cluster, store) is None
    assert cluster.points["orders-1"]["status"] == {}
    cluster.points["orders-1"]["status"] = {"jobName": "backup-orders-1", "phase": "Running"}
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.phase == "Failed"


def test_the_job_is_found_by_its_deterministic_name_when_status_lost_it() -> None:
    """Killed between creating the Job and recording it: the next sync still finds it."""
    cluster, store = world("Complete", points.Evidence(manifest()))
    assert "jobName" not in cluster.points["orders-1"]["status"]
    finished = sync(cluster, store)
    assert finished is not None and finished.outcome.phase == "Completed"


def test_a_corrupted_point_stays_corrupted_and_is_told_once() -> None:
    cluster, store = world("Complete", points.Evidence(manifest()))
    sync(cluster, store)
    for _ in range(2):
        assert points.mark_corrupted(
            cluster, NS, "orders-1", "Corrupted", "restore/r1 refused", NOW
        )
    status = cluster.points["orders-1"]["status"]
    assert status["phase"] == "Corrupted"
    assert find(status["conditions"], "Corrupted")["status"] == "True"
    assert find(status["conditions"], "Verified")["status"] == "False"
    assert status["verification"]["result"] == "Failed"
    assert sync(cluster, store) is None  # the writer never turns it back into Completed
    assert cluster.points["orders-1"]["status"]["phase"] == "Corrupted"
    assert cluster.reasons("orders-1").count("RecoveryPointCorrupted") == 1


def test_accept_does_not_overwrite_an_accepted_condition() -> None:
    cluster, store = world(None)
    sync(cluster, store)
    points.accept(cluster, NS, "orders-1", "The scheduler starts this run at its tick.", NOW)
    accepted = find(cluster.points["orders-1"]["status"]["conditions"], "Accepted")
    assert accepted["message"].startswith("Backup Job")


# --- restores: choice and verdicts -----------------------------------------------------------


def completed(name: str, source_time: str, **extra: Any) -> dict[str, Any]:
    point = a_point(name, phase="Completed", sourceTime=source_time, location="s3://b/k")
    point["status"].update(extra)
    return point


def test_a_restore_by_policy_never_chooses_a_corrupted_point() -> None:
    old = completed("orders-old", "2026-12-01T01:00:00Z")
    new = completed(
        "orders-new",
        "2026-12-01T02:00:00Z",
        conditions=[{"type": "Corrupted", "status": "True", "reason": "Corrupted"}],
    )
    assert restores.choose_point([old, new], "orders") is old
    new["status"]["phase"] = "Corrupted"
    assert restores.choose_point([new], "orders") is None


def finished_restore(reason: str, *, copy: str | None = None) -> restores.Finished:
    spec: dict[str, Any] = {"policyRef": {"name": "orders"}}
    if copy:
        spec["source"] = {"copy": copy}
    restore = {
        "metadata": {"name": "r1", "namespace": NS},
        "spec": spec,
        "status": {"recoveryPoint": "orders-1"},
    }
    return restores.Finished(restore, restores.RestoreOutcome("Failed", reason, "damaged"))


@pytest.mark.parametrize("reason", ["Corrupted", "WrongKey", "ManifestInvalid"])
def test_an_integrity_refusal_marks_the_point_corrupted(reason: str) -> None:
    cluster, store = world("Complete", points.Evidence(manifest()))
    sync(cluster, store)
    assert restores.judge_point(finished_restore(reason), cluster, NOW)
    status = cluster.points["orders-1"]["status"]
    assert status["phase"] == "Corrupted"
    assert find(status["conditions"], "Corrupted")["reason"] == reason


@pytest.mark.parametrize("reason", ["TargetNotEmpty", "StorageFailed", "ChecksFailed"])
def test_other_failures_leave_the_point_alone(reason: str) -> None:
    cluster, store = world("Complete", points.Evidence(manifest()))
    sync(cluster, store)
    assert not restores.judge_point(finished_restore(reason), cluster, NOW)
    assert cluster.points["orders-1"]["status"]["phase"] == "Completed"


def test_a_damaged_copy_says_nothing_of_the_primary() -> None:
    cluster, store = world("Complete", points.Evidence(manifest()))
    sync(cluster, store)
    assert not restores.judge_point(finished_restore("Corrupted", copy="dr-copy"), cluster, NOW)


POLICY = {
    "schedule": "0 3 * * *",
    "source": {
        "postgres": {
            "host": "db",
            "database": "shop",
            "userSecretRef": {"name": "db", "key": "u"},
            "passwordSecretRef": {"name": "db", "key": "p"},
        }
    },
    "storage": {"bucket": "primary", "prefix": "backups"},
    "copies": [
        {"bucket": "dr-copy", "prefix": "backups", "credentialsSecretRef": {"name": "dr-s3"}}
    ],
    "encryption": {"keySecretRef": {"name": "keys"}},
}


def test_a_restore_reads_a_named_completed_copy() -> None:
    policy = BackupPolicySpec.model_validate(POLICY)
    point = completed(
        "orders-1",
        "2026-12-01T01:00:00Z",
        manifest="backups/shop/orders/orders-1/manifest.json",
        location="s3://primary/backups/shop/orders/orders-1/payload",
        copies=[
            {"location": "s3://dr-copy/backups/shop/orders/orders-1/payload", "state": "Completed"}
        ],
    )
    storage, url = restores.source_location(point, policy, "dr-copy")
    assert storage.bucket == "dr-copy"
    assert url == "s3://dr-copy/backups/shop/orders/orders-1/manifest.json"
    storage, url = restores.source_location(point, policy, None)
    assert (storage.bucket, url) == (
        "primary",
        "s3://primary/backups/shop/orders/orders-1/manifest.json",
    )
    spec = RestoreSpec.model_validate(
        {"recoveryPointRef": {"name": "orders-1"}, "source": {"copy": "dr-copy"},
         "target": {"redis": {"host": "r"}}}
    )  # fmt: skip
    env = restores.restore_secret_env(spec.target, policy, ["k1"], storage=policy.copies[0])  # type: ignore[index]
    assert {e.ref.name for e in env if e.name == "AWS_SECRET_ACCESS_KEY"} == {"dr-s3"}


def test_a_copy_that_is_unknown_or_failed_is_refused() -> None:
    policy = BackupPolicySpec.model_validate(POLICY)
    point = completed(
        "orders-1",
        "2026-12-01T01:00:00Z",
        copies=[{"location": "s3://dr-copy/x/payload", "state": "Failed"}],
    )
    with pytest.raises(restores.RestoreRefused) as refused:
        restores.source_location(point, policy, "dr-copy")
    assert refused.value.reason == "CopyNotCompleted"
    with pytest.raises(restores.RestoreRefused) as refused:
        restores.source_location(point, policy, "elsewhere")
    assert refused.value.reason == "CopyNotFound"


# --- schema: buckets, prefixes, copies, Bgsave -----------------------------------------------


@pytest.mark.parametrize(
    "storage",
    [
        {"bucket": "ab"},
        {"bucket": "a" * 64},
        {"bucket": "My-Bucket"},
        {"bucket": "my..bucket"},
        {"bucket": "my.-bucket"},
        {"bucket": "-bucket"},
        {"bucket": "192.168.10.1"},
        {"bucket": "xn--bucket"},
        {"bucket": "sthree-bucket"},
        {"bucket": "bucket-s3alias"},
        {"bucket": "bucket--ol-s3"},
        {"bucket": "ok-bucket", "prefix": "../escape"},
        {"bucket": "ok-bucket", "prefix": "a/./b"},
        {"bucket": "ok-bucket", "prefix": "a/.."},
        {"bucket": "ok-bucket", "prefix": "a//b"},
        {"bucket": "ok-bucket", "prefix": "/a"},
    ],
)
def test_bad_buckets_and_prefixes_are_refused(storage: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        BackupPolicySpec.model_validate({**POLICY, "storage": storage, "copies": None})


@pytest.mark.parametrize(
    "storage",
    [
        {"bucket": "abc"},
        {"bucket": "my--bucket.v2"},
        {"bucket": "a" * 63, "prefix": "team/..hidden/v1.2/x.."},
    ],
)
def test_good_buckets_and_prefixes_are_accepted(storage: dict[str, str]) -> None:
    BackupPolicySpec.model_validate({**POLICY, "storage": storage, "copies": None})


def test_a_copy_onto_the_primary_location_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="primary location"):
        BackupPolicySpec.model_validate(
            {**POLICY, "copies": [{"bucket": "primary", "prefix": "backups"}]}
        )
    # The same bucket under another prefix, or another endpoint, is a real copy.
    BackupPolicySpec.model_validate({**POLICY, "copies": [{"bucket": "primary", "prefix": "c"}]})


def test_bgsave_needs_its_volume_which_the_job_mounts_read_only() -> None:
    redis = {"host": "r", "method": "Bgsave"}
    with pytest.raises(pydantic.ValidationError, match="rdbVolume"):
        BackupPolicySpec.model_validate({**POLICY, "source": {"redis": redis}})
    spec = BackupPolicySpec.model_validate(
        {**POLICY, "source": {"redis": {**redis, "rdbVolume": {"name": "redis-data"}}}}
    )
    point = a_point()
    request = backup.backup_job_request(point, spec, ["k1"], Settings())
    assert request.mounts == [ClaimMount("rdb", "redis-data", "/var/lib/aegis/rdb")]
    job = build_job(request)
    pod = job["spec"]["template"]["spec"]
    assert {
        "name": "rdb",
        "persistentVolumeClaim": {"claimName": "redis-data", "readOnly": True},
    } in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "rdb", "mountPath": "/var/lib/aegis/rdb", "readOnly": True} in mounts
    assert '"rdbPath":"/var/lib/aegis/rdb/dump.rdb"' in request.args[1]


def test_sync_sources_mount_nothing() -> None:
    spec = BackupPolicySpec.model_validate(POLICY)
    request = backup.backup_job_request(a_point(), spec, ["k1"], Settings())
    assert request.mounts == []
    assert isinstance(request, JobRequest)


# --- the sandbox's volumes ---------------------------------------------------------------------


def test_the_sandbox_maps_a_bound_claim_and_rewrites_paths() -> None:
    container = {"volumeMounts": [{"name": "rdb", "mountPath": "/var/lib/aegis/rdb"}]}
    pod = {"volumes": [{"name": "rdb", "persistentVolumeClaim": {"claimName": "data"}}]}
    mounts = volume_mounts(container, pod, NS, {(NS, "data"): "/tmp/redis 1"})
    assert mounts == {"/var/lib/aegis/rdb": "/tmp/redis 1"}
    arg = '{"redis":{"rdbPath":"/var/lib/aegis/rdb/dump.rdb"},"x":"/var/lib/aegis/rdbx"}'
    assert rewrite_mounted_paths(arg, mounts) == (
        '{"redis":{"rdbPath":"/tmp/redis 1/dump.rdb"},"x":"/var/lib/aegis/rdbx"}'
    )
    assert rewrite_mounted_paths("/var/lib/aegis/rdb", mounts) == "/tmp/redis 1"
    with pytest.raises(ContainerConfigError, match="FailedMount"):
        volume_mounts(container, pod, NS, {})
    host = {"volumes": [{"name": "rdb", "hostPath": {"path": "/srv/redis/"}}]}
    assert volume_mounts(container, host, NS, {}) == {"/var/lib/aegis/rdb": "/srv/redis"}


def test_killed_reason_reads_the_termination_state() -> None:
    assert killed_reason(None) is None
    assert killed_reason(Termination("boom", "Error", 1)) is None
    assert killed_reason(Termination(None, "Error", 0)) is None
    reason = killed_reason(Termination(None, "Error", 137, 9))
    assert reason is not None and reason[0] == "AgentKilled"


# --- verification ------------------------------------------------------------------------------


def verify_job(state: str | None, request: str = "request-1") -> dict[str, Any]:
    job = a_job("verify-orders-1-abc", state)
    job["metadata"]["annotations"] = {verification.REQUEST_ANNOTATION: request}
    job["metadata"]["ownerReferences"] = [{"kind": "RecoveryPoint", "name": "orders-1"}]
    return job


def verified_world() -> MemoryCluster:
    cluster, store = world("Complete", points.Evidence(manifest()))
    sync(cluster, store)
    return cluster


def test_a_passed_verify_job_verifies_the_point_once() -> None:
    cluster = verified_world()
    cluster.terminations["verify-orders-1-abc"] = Termination(
        '{"ok": true, "chunks": 7, "durationSeconds": 0.5}', "Completed", 0
    )
    found = verification.finish(cluster, NS, verify_job("Complete"), NOW)
    assert found is not None and found.result == "Passed"
    status = cluster.points["orders-1"]["status"]
    assert find(status["conditions"], "Verified")["reason"] == "ChunksAuthenticated"
    assert status["verification"]["chunks"] == 7
    assert status["verification"]["request"] == "request-1"
    assert status["phase"] == "Completed"
    assert verification.finish(cluster, NS, verify_job("Complete"), NOW) is None  # answered
    assert cluster.reasons("orders-1").count("Verified") == 1


def test_a_failed_integrity_check_makes_the_point_corrupted() -> None:
    cluster = verified_world()
    cluster.terminations["verify-orders-1-abc"] = Termination(
        '{"ok": false, "kind": "Corrupted", "reason": "payload is truncated"}', "Error", 1
    )
    from prometheus_client import REGISTRY

    labels = {"namespace": NS, "policy": "orders"}
    before = REGISTRY.get_sample_value("aegis_verification_failures_total", labels) or 0.0
    found = verification.finish(cluster, NS, verify_job("Failed"), NOW)
    assert found is not None and found.result == "Failed"
    after = REGISTRY.get_sample_value("aegis_verification_failures_total", labels)
    assert after == before + 1
    status = cluster.points["orders-1"]["status"]
    assert status["phase"] == "Corrupted"
    assert status["verification"]["result"] == "Failed"
    assert "truncated" in find(status["conditions"], "Corrupted")["message"]


def test_a_verify_that_could_not_tell_changes_nothing() -> None:
    cluster = verified_world()
    cluster.terminations["verify-orders-1-abc"] = Termination(
        '{"ok": false, "kind": "StorageFailed", "reason": "endpoint unreachable"}', "Error", 1
    )
    found = verification.finish(cluster, NS, verify_job("Failed"), NOW)
    assert found is not None and found.result == "Error"
    status = cluster.points["orders-1"]["status"]
    assert status["phase"] == "Completed" and "verification" not in status
    assert "VerificationError" in cluster.reasons("orders-1")


def test_a_running_verify_job_is_not_folded() -> None:
    cluster = verified_world()
    assert verification.finish(cluster, NS, verify_job(None), NOW) is None


def test_the_verification_tick_is_the_latest_cron_time_since_creation() -> None:
    spec = BackupPolicySpec.model_validate(
        {**POLICY, "verification": {"schedule": "0 4 * * *", "newest": 2}}
    )
    created = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert verification.due_request(spec, created, NOW) == "schedule-2026-11-30T04:00:00Z"
    assert verification.due_request(spec, NOW, NOW) is None  # no tick since creation
    plain = BackupPolicySpec.model_validate(POLICY)
    assert verification.due_request(plain, created, NOW) is None


def test_newest_completed_points_are_chosen_by_source_time() -> None:
    candidates = [
        completed("a", "2026-12-01T01:00:00Z"),
        completed("b", "2026-12-01T03:00:00Z"),
        a_point("c", phase="Failed", sourceTime="2026-12-01T04:00:00Z"),
        completed("d", "2026-12-01T02:00:00Z"),
    ]
    names = [p["metadata"]["name"] for p in verification.newest_completed(candidates, 2)]
    assert names == ["d", "b"]


def test_the_verify_job_reads_the_manifest_with_the_keys_and_no_secret_in_args() -> None:
    spec = BackupPolicySpec.model_validate(
        {**POLICY, "storage": {"bucket": "primary", "credentialsSecretRef": {"name": "s3"}}}
    )
    point = completed(
        "orders-1",
        "2026-12-01T01:00:00Z",
        location="s3://primary/backups/shop/orders/orders-1/payload",
        manifest="backups/shop/orders/orders-1/manifest.json",
    )
    request = verification.verify_job_request(point, spec, ["k1"], Settings(), "request-1")
    assert request.args[0] == "s3://primary/backups/shop/orders/orders-1/manifest.json"
    assert request.command[-1] == "verify"
    assert request.options.backoff_limit == 0
    assert {e.name for e in request.secret_env} == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AEGIS_KEY_k1",
    }
    assert (
        request.name
        == verification.verify_job_request(point, spec, ["k1"], Settings(), "request-1").name
    )
    assert (
        request.name
        != verification.verify_job_request(point, spec, ["k1"], Settings(), "request-2").name
    )


def test_accepting_an_imported_point_records_the_generation_it_processed() -> None:
    cluster = MemoryCluster()
    cluster.points["orders-1"] = a_point(
        phase="Completed",
        conditions=[{"type": "Accepted", "status": "True", "reason": "Imported", "message": "x"}],
    )
    points.accept(cluster, NS, "orders-1", "The recovery point is Completed.", NOW)
    status = cluster.points["orders-1"]["status"]
    assert status["observedGeneration"] == 1
    assert find(status["conditions"], "Accepted")["reason"] == "Imported"


# --- Restore: folding its Job, with an in-memory cluster ---------------------------------------


class MemoryRestoreCluster:
    def __init__(self, restore: dict[str, Any]) -> None:
        self.restore = restore
        self.jobs: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, str] = {}
        self.patches = 0

    def get_restore(self, namespace: str, name: str) -> dict[str, Any] | None:
        if name != self.restore["metadata"]["name"]:
            return None
        return copy.deepcopy(self.restore)

    def patch_restore_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches += 1
        self.restore.setdefault("status", {}).update(copy.deepcopy(status))

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(name))

    def termination_message(self, namespace: str, job_name: str) -> str | None:
        return self.messages.get(job_name)


def running_restore() -> MemoryRestoreCluster:
    restore = {
        "metadata": {"name": "r1", "namespace": NS, "generation": 1},
        "spec": {
            "policyRef": {"name": "orders"},
            "target": {
                "postgres": {
                    "host": "db",
                    "database": "copy",
                    "userSecretRef": {"name": "db", "key": "u"},
                    "passwordSecretRef": {"name": "db", "key": "p"},
                }
            },
        },
        "status": {"phase": "Running", "jobName": "restore-r1", "recoveryPoint": "orders-1"},
    }
    return MemoryRestoreCluster(restore)


def test_a_restore_job_that_succeeded_completes_the_restore_once() -> None:
    cluster = running_restore()
    cluster.jobs["restore-r1"] = a_job("restore-r1", "Complete")
    cluster.messages["restore-r1"] = (
        '{"ok": true, "restoredBytes": 4096, "durationSeconds": 2.5, "checks": '
        '[{"name": "rows", "result": "Passed", "value": 10}]}'
    )
    finished = restores.finish(NS, "r1", cluster, NOW)
    assert finished is not None and finished.outcome.phase == "Completed"
    status = cluster.restore["status"]
    assert status["phase"] == "Completed" and status["restoredBytes"] == 4096
    assert status["durationSeconds"] == 2.5 and status["observedGeneration"] == 1
    assert find(status["conditions"], "Complete")["status"] == "True"
    assert restores.finish(NS, "r1", cluster, NOW) is None  # terminal: never again
    assert cluster.patches == 1


def test_a_restore_the_agent_refused_as_corrupted_fails_with_that_reason() -> None:
    cluster = running_restore()
    cluster.jobs["restore-r1"] = a_job("restore-r1", "Failed")
    cluster.messages["restore-r1"] = (
        '{"ok": false, "kind": "Corrupted", "reason": "payload SHA-256 mismatch"}'
    )
    finished = restores.finish(NS, "r1", cluster, NOW)
    assert finished is not None and finished.outcome.reason == "Corrupted"
    assert find(cluster.restore["status"]["conditions"], "Failed")["status"] == "True"
    points_cluster, store = world("Complete", points.Evidence(manifest()))
    sync(points_cluster, store)
    assert restores.judge_point(finished, points_cluster, NOW)
    assert points_cluster.points["orders-1"]["status"]["phase"] == "Corrupted"


def test_a_running_or_vanished_restore_job() -> None:
    cluster = running_restore()
    cluster.jobs["restore-r1"] = a_job("restore-r1", None)
    assert restores.finish(NS, "r1", cluster, NOW) is None
    del cluster.jobs["restore-r1"]
    finished = restores.finish(NS, "r1", cluster, NOW)
    assert finished is not None and finished.outcome.reason == "JobMissing"
