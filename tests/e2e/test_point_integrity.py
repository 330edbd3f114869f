"""RecoveryPoint integrity end to end: one writer of a point's status whatever kills the
operator; corrupted points never chosen; no upload or point left behind; Bgsave in a Job.

The kill test runs the operator as `python -m aegis operator` in its own process (as the
sandbox and a cluster do) so that it can be SIGKILLed: no shutdown hook runs, exactly as
when a node dies or the OOM killer strikes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.e2e.helpers import condition, create, events_for, get, wait_for
from tests.e2e.test_backups import jobs, policy_spec, secrets_for, seed

from aegis.sandbox import processes

PLURAL = "recoverypoints"
TERMINAL = ("Completed", "Failed", "Corrupted")


class KillableOperator:
    """The operator as a child process, started and SIGKILLed at will."""

    def __init__(self, k8s_api: Any, namespace: str, log_dir: Path) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(k8s_api.kubeconfig),
            "AEGIS_AGENT_COMMAND": f"{sys.executable} -m aegis agent",
            "AEGIS_WATCH_NAMESPACES": namespace,
            "AEGIS_METRICS_PORT": "0",
            "AEGIS_HEALTH_PORT": "0",
            "AEGIS_LOG_FORMAT": "text",
            "AEGIS_CATALOG_SYNC_SECONDS": "3600",
            # PostgreSQL and moto listen on 127.0.0.1 here (docs/tenancy.md).
            "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
        }
        self.log_dir = log_dir
        self.started = 0
        self.proc: Any = None
        self.tracked: processes.TrackedProcess | None = None

    def start(self) -> None:
        assert self.proc is None
        self.started += 1
        log = open(self.log_dir / f"operator-{self.started}.log", "wb")  # noqa: SIM115
        self.proc, self.tracked = processes.spawn(
            [sys.executable, "-m", "aegis", "operator"],
            name=f"operator {self.started}",
            stdout=log,
            env=self.env,
        )
        log.close()

    def kill(self) -> None:
        assert self.proc is not None and self.tracked is not None
        os.killpg(self.tracked.pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        processes.wait_gone(self.tracked, 10)
        self.proc = self.tracked = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill()


def phase_of(k8s_api: Any, namespace: str, name: str) -> str | None:
    phase: str | None = (get(k8s_api, PLURAL, namespace, name).get("status") or {}).get("phase")
    return phase


def test_operator_killed_at_random_moments_leaves_one_job_one_condition_one_event(
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
    tmp_path: Path,
) -> None:
    """SIGKILL the operator at 24+ random moments of 6 backups (before the Job, while it
    runs, around its end, while the status is written), restarting it each time: every point
    ends Completed with one Job, Complete=True and one BackupCompleted event."""
    seed(pg_database, rows=200)
    secrets_for(k8s_api, namespace, pg_database)
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {
            "kind": "BackupPolicy",
            "metadata": {"name": "orders"},
            "spec": policy_spec(pg_database, s3_bucket, moto.endpoint),
        },
    )
    operator = KillableOperator(k8s_api, namespace, tmp_path)
    rng = random.Random(os.environ.get("AEGIS_KILL_SEED") or time.time_ns())
    names = [f"orders-k{i}" for i in range(6)]
    kills = 0
    try:
        for name in names:
            create(
                k8s_api,
                PLURAL,
                namespace,
                {
                    "kind": "RecoveryPoint",
                    "metadata": {"name": name},
                    "spec": {"policyRef": {"name": "orders"}},
                },
            )
            # Kill 4 times per point, at moments spread over the operator's start-up, the
            # Job's creation, the backup and the status write.
            for _ in range(4):
                operator.start()
                time.sleep(rng.uniform(0.3, 4.5))
                operator.kill()
                kills += 1
        operator.start()
        for name in names:
            wait_for(
                f"{name} to end", lambda n=name: phase_of(k8s_api, namespace, n) in TERMINAL, 120
            )
        wait_for(
            "the policy Ready",
            lambda: (
                (c := condition(get(k8s_api, "backuppolicies", namespace, "orders"), "Ready"))
                and c["status"] == "True"
            ),
            60,
        )
        # Let a late duplicate (a second Job, a second event) show up if there is one.
        time.sleep(2)
        all_jobs = jobs(k8s_api, namespace)
        for name in names:
            point = get(k8s_api, PLURAL, namespace, name)
            status = point["status"]
            assert status["phase"] == "Completed", (name, status)
            complete = condition(point, "Complete")
            assert complete is not None and complete["status"] == "True", (name, status)
            assert complete["reason"] == "BackupCompleted"
            owned = [
                j
                for j in all_jobs
                if any(o.name == name for o in (j.metadata.owner_references or []))
            ]
            assert len(owned) == 1, (name, [j.metadata.name for j in owned])
            reasons = [e["reason"] for e in events_for(k8s_api, namespace, name)]
            assert reasons.count("BackupCompleted") == 1, (name, reasons)
            assert reasons.count("BackupStarted") <= 1, (name, reasons)
    finally:
        operator.stop()
    assert kills >= 20


def backup_job_of(k8s_api: Any, namespace: str, point: str) -> Any:
    for job in jobs(k8s_api, namespace):
        if any(o.name == point for o in (job.metadata.owner_references or [])):
            return job
    return None


def core(k8s_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


def test_a_point_a_restore_refused_is_corrupted_and_never_chosen_by_policy(
    aegis_operator: Any,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    """Two points; the newest has a flipped byte. A restore by policy picks it and is refused;
    the point becomes Corrupted (phase, condition, reason, Warning event), and the next
    restore by policy restores the older, intact point instead of the damaged one again."""
    from tests.e2e.test_backups import make_policy, on_demand
    from tests.e2e.test_restore import (
        make_restore,
        pg_target,
        scratch_database_name,
        seed_varied,
        wait_restore,
    )

    seed_varied(pg_database)
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg_database, s3_bucket, moto.endpoint))
    older = on_demand(k8s_api, namespace, "orders", "orders-older")
    newer = on_demand(k8s_api, namespace, "orders", "orders-newer")
    assert older["status"]["phase"] == newer["status"]["phase"] == "Completed"
    key = newer["status"]["location"].removeprefix(f"s3://{s3_bucket}/")
    payload = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    payload[len(payload) // 2] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(payload))
    with (
        scratch_database_name(pg_database.server) as first,
        scratch_database_name(pg_database.server) as second,
    ):
        make_restore(
            k8s_api,
            namespace,
            "by-policy-1",
            {
                "policyRef": {"name": "orders"},
                "target": pg_target(pg_database, first, createDatabase=True),
            },
        )
        refused = wait_restore(k8s_api, namespace, "by-policy-1")
        assert refused["status"]["phase"] == "Failed"
        assert refused["status"]["recoveryPoint"] == "orders-newer"
        point = wait_for(
            "the damaged point Corrupted",
            lambda: (
                (p := get(k8s_api, PLURAL, namespace, "orders-newer"))["status"]["phase"]
                == "Corrupted"
                and p
            ),
            timeout=30,
        )
        corrupted = condition(point, "Corrupted")
        assert corrupted is not None and corrupted["status"] == "True"
        assert corrupted["reason"] == "Corrupted"
        assert "by-policy-1" in corrupted["message"]
        verified = condition(point, "Verified")
        assert verified is not None and verified["status"] == "False"
        reasons = [e["reason"] for e in events_for(k8s_api, namespace, "orders-newer")]
        assert reasons.count("RecoveryPointCorrupted") == 1
        make_restore(
            k8s_api,
            namespace,
            "by-policy-2",
            {
                "policyRef": {"name": "orders"},
                "target": pg_target(pg_database, second, createDatabase=True),
            },
        )
        restored = wait_restore(k8s_api, namespace, "by-policy-2")
        assert restored["status"]["recoveryPoint"] == "orders-older"
        assert restored["status"]["phase"] == "Completed", restored["status"].get("message")


def test_a_point_deleted_under_retain_is_not_reimported_until_its_tombstone_goes(
    aegis_operator: Any,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    """Catalog sync (every 5 s here) imports every manifest the cluster does not know; a
    point its user deleted under deletionPolicy Retain keeps its objects but gets a tombstone,
    so it stays deleted. A probe manifest copied in afterwards proves a sync ran. Deleting
    the tombstone re-imports the point on purpose."""
    from tests.e2e.test_backups import make_policy, on_demand

    seed(pg_database, rows=10)
    secrets_for(k8s_api, namespace, pg_database)
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint, deletionPolicy="Retain")
    make_policy(k8s_api, namespace, "orders", spec)
    point = on_demand(k8s_api, namespace, "orders", "orders-gone")
    assert point["status"]["phase"] == "Completed"
    manifest_key = point["status"]["manifest"]
    client.CustomObjectsApi(k8s_api).delete_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, PLURAL, "orders-gone"
    )
    wait_for("the point gone", lambda: not _exists(k8s_api, namespace, "orders-gone"), 30)
    directory = manifest_key.rsplit("/", 1)[0]
    tombstone = f"{directory}/deleted-by-user.json"
    s3_client.head_object(Bucket=s3_bucket, Key=manifest_key)  # Retain: objects kept
    s3_client.head_object(Bucket=s3_bucket, Key=tombstone)
    probe_key = manifest_key.replace("/orders-gone/", "/orders-probe/")
    s3_client.copy_object(
        Bucket=s3_bucket, Key=probe_key, CopySource={"Bucket": s3_bucket, "Key": manifest_key}
    )
    wait_for("the probe imported", lambda: _exists(k8s_api, namespace, "orders-probe"), 30)
    assert not _exists(k8s_api, namespace, "orders-gone")
    s3_client.delete_object(Bucket=s3_bucket, Key=tombstone)
    wait_for("the point re-imported", lambda: _exists(k8s_api, namespace, "orders-gone"), 30)
    reimported = get(k8s_api, PLURAL, namespace, "orders-gone")
    assert reimported["spec"]["trigger"] == "Imported"


def _exists(k8s_api: Any, namespace: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        get(k8s_api, PLURAL, namespace, name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_bgsave_backup_reads_the_servers_rdb_from_its_volume_and_restores(
    aegis_operator: Any,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    redis_db: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    """method Bgsave: the Job mounts rdbVolume read-only at /var/lib/aegis/rdb; the Job
    runner binds the claim to the real redis-server's data dir, so the agent reads the
    dump.rdb that BGSAVE wrote there. A restore of the point brings every key back."""
    import uuid

    from tests.e2e.helpers import create_secret, new_key
    from tests.e2e.test_backups import make_policy, on_demand
    from tests.e2e.test_restore import make_restore, wait_restore

    from aegis.sandbox.servers import RedisServer

    source = redis_db.client()
    source.mset({f"k:{i}": f"v-{i}" for i in range(300)})
    source.expire("k:7", 3600)
    job_runner.bind_claim(namespace, "redis-data", redis_db.base_dir)
    create_secret(k8s_api, namespace, "cache", {"password": str(redis_db.password)})
    create_secret(k8s_api, namespace, "keys", {"2026-01": new_key()})
    create_secret(
        k8s_api, namespace, "s3", {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    )
    spec = {
        "schedule": "0 3 * * *",
        "source": {
            "redis": {
                "host": redis_db.host,
                "port": redis_db.port,
                "passwordSecretRef": {"name": "cache", "key": "password"},
                "method": "Bgsave",
                "rdbVolume": {"name": "redis-data"},
            }
        },
        "storage": {
            "bucket": s3_bucket,
            "endpoint": moto.endpoint,
            "credentialsSecretRef": {"name": "s3"},
        },
        "encryption": {"keySecretRef": {"name": "keys"}},
    }
    make_policy(k8s_api, namespace, "cache", spec)
    point = on_demand(k8s_api, namespace, "cache", "cache-bgsave")
    assert point["status"]["phase"] == "Completed", point["status"].get("message")
    manifest = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key=point["status"]["manifest"])["Body"].read()
    )
    assert manifest["source"]["method"] == "Bgsave"
    job = backup_job_of(k8s_api, namespace, "cache-bgsave")
    (mount,) = [m for m in job.spec.template.spec.containers[0].volume_mounts if m.name == "rdb"]
    assert mount.mount_path == "/var/lib/aegis/rdb" and mount.read_only is True
    (volume,) = [v for v in job.spec.template.spec.volumes if v.name == "rdb"]
    assert volume.persistent_volume_claim.claim_name == "redis-data"
    assert volume.persistent_volume_claim.read_only is True
    assert (Path(redis_db.base_dir) / "dump.rdb").exists()
    target = RedisServer.start(password=uuid.uuid4().hex)
    try:
        create_secret(k8s_api, namespace, "target", {"password": str(target.password)})
        make_restore(
            k8s_api,
            namespace,
            "cache-back",
            {
                "recoveryPointRef": {"name": "cache-bgsave"},
                "target": {
                    "redis": {
                        "host": target.host,
                        "port": target.port,
                        "passwordSecretRef": {"name": "target", "key": "password"},
                    }
                },
            },
        )
        restore = wait_restore(k8s_api, namespace, "cache-back")
        assert restore["status"]["phase"] == "Completed", restore["status"].get("message")
        restored = target.client()
        assert restored.dbsize() == 300
        assert restored.get("k:42") == b"v-42"
        assert restored.ttl("k:7") > 3000
    finally:
        target.stop()


def test_kubectl_aegis_verify_authenticates_a_point_and_marks_a_truncated_one_corrupted(
    aegis_operator: Any,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
    capsys: Any,
) -> None:
    """`kubectl aegis verify rp/NAME` runs a verify Job: every chunk downloaded, hashed and
    authenticated, the point Verified. `kubectl aegis verify bp/POLICY` on a policy whose
    newest point was truncated in the bucket: the point becomes Corrupted, never chosen."""
    from tests.e2e.test_backups import make_policy, on_demand

    from aegis import kubectl_verify

    seed(pg_database, rows=500)
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg_database, s3_bucket, moto.endpoint))
    good = on_demand(k8s_api, namespace, "orders", "orders-a")
    assert good["status"]["phase"] == "Completed"
    assert kubectl_verify.main(["rp/orders-a", "-n", namespace, "--timeout", "90"]) == 0
    out = capsys.readouterr().out
    assert "orders-a: Passed:" in out, out
    point = get(k8s_api, PLURAL, namespace, "orders-a")
    verified = condition(point, "Verified")
    assert verified is not None and verified["status"] == "True"
    assert verified["reason"] == "ChunksAuthenticated"
    verification = point["status"]["verification"]
    assert verification["result"] == "Passed" and verification["chunks"] >= 1
    assert verification["by"].startswith("verify/verify-orders-a-")
    verify_jobs = [j for j in jobs(k8s_api, namespace) if j.metadata.name.startswith("verify-")]
    assert len(verify_jobs) == 1

    damaged = on_demand(k8s_api, namespace, "orders", "orders-b")
    key = damaged["status"]["location"].removeprefix(f"s3://{s3_bucket}/")
    payload = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=payload[: len(payload) - 100])
    assert kubectl_verify.main(["bp/orders", "-n", namespace, "--timeout", "90"]) == 1
    out = capsys.readouterr().out
    assert "orders-b: Failed:" in out, out
    point = get(k8s_api, PLURAL, namespace, "orders-b")
    assert point["status"]["phase"] == "Corrupted"
    corrupted = condition(point, "Corrupted")
    assert corrupted is not None and corrupted["reason"] == "Corrupted"
    assert point["status"]["verification"]["result"] == "Failed"
    from aegis.reconcilers.restore import choose_point

    everything = client.CustomObjectsApi(k8s_api).list_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, PLURAL
    )["items"]
    assert choose_point(everything, "orders")["metadata"]["name"] == "orders-a"
