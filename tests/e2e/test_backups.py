"""BackupPolicy and RecoveryPoint end to end: the real operator, the Job runner running the
real agent, real PostgreSQL and moto S3. Evidence in status is checked against the bucket."""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.e2e.helpers import (
    OperatorHandle,
    OperatorIdentity,
    condition,
    create,
    create_secret,
    events_for,
    get,
    install_operator_identity,
    new_key,
    wait_for,
)

from aegis.k8s import client as aegis_client
from aegis.sandbox.apiserver import ApiServer

PLURAL = "recoverypoints"


def seed(pg: Any, rows: int = 2000) -> None:
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, placed timestamptz, total numeric(12,2),"
            " note text)"
        )
        conn.execute(
            "INSERT INTO orders SELECT i, now() - i * interval '1 minute', i * 1.25, md5(i::text)"
            " FROM generate_series(1, %s) i",
            (rows,),
        )
        conn.execute(
            "CREATE TABLE customers AS SELECT i AS id, 'c' || i AS name"
            " FROM generate_series(1, 50) i"
        )


def secrets_for(k8s_api: Any, namespace: str, pg: Any) -> None:
    create_secret(
        k8s_api, namespace, "db", {"username": pg.server.user, "password": pg.server.password}
    )
    create_secret(k8s_api, namespace, "keys", {"2026-01": new_key()})
    create_secret(
        k8s_api,
        namespace,
        "s3",
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )


def policy_spec(pg: Any, bucket: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedule": "0 3 * * *",
        "source": {
            "postgres": {
                "host": pg.server.host,
                "port": pg.server.port,
                "database": pg.name,
                "userSecretRef": {"name": "db", "key": "username"},
                "passwordSecretRef": {"name": "db", "key": "password"},
            }
        },
        "storage": {
            "bucket": bucket,
            "prefix": "backups",
            "endpoint": endpoint,
            "credentialsSecretRef": {"name": "s3"},
        },
        "encryption": {"keySecretRef": {"name": "keys"}},
        "objectives": {"rpoSeconds": 3600},
    }
    spec.update(extra)
    return spec


def make_policy(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {"kind": "BackupPolicy", "metadata": {"name": name}, "spec": spec},
    )
    wait_for(
        "policy Ready",
        lambda: (
            (c := condition(get(k8s_api, "backuppolicies", namespace, name), "Ready"))
            and c["status"] == "True"
        ),
    )


def on_demand(k8s_api: Any, namespace: str, policy: str, name: str) -> dict[str, Any]:
    create(
        k8s_api,
        PLURAL,
        namespace,
        {
            "kind": "RecoveryPoint",
            "metadata": {"name": name},
            "spec": {"policyRef": {"name": policy}},
        },
    )
    return wait_for(
        f"{name} to end",
        lambda: (
            (p := get(k8s_api, PLURAL, namespace, name)).get("status", {}).get("phase")
            in ("Completed", "Failed", "Corrupted")
            and p
        ),
        timeout=120,
    )


def jobs(k8s_api: Any, namespace: str) -> list[Any]:
    return list(client.BatchV1Api(k8s_api).list_namespaced_job(namespace).items)


def test_on_demand_backup_is_proven_by_the_bucket(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    seed(pg_database)
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg_database, s3_bucket, moto.endpoint))
    point = on_demand(k8s_api, namespace, "orders", "orders-adhoc")
    status = point["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert condition(point, "Complete")["status"] == "True"
    # The evidence is what the bucket holds.
    key = status["location"].removeprefix(f"s3://{s3_bucket}/")
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert status["storedBytes"] == len(body)
    assert status["sha256"] == hashlib.sha256(body).hexdigest()
    assert status["sizeBytes"] > 0 and status["encryption"]["keyId"] == "2026-01"
    assert status["source"]["kind"] == "Postgres" and status["source"]["rows"] == 2050
    assert key == f"backups/{namespace}/orders/orders-adhoc/payload"
    assert point["metadata"]["labels"]["dr.aegis.dev/policy"] == "orders"
    (job,) = jobs(k8s_api, namespace)
    assert job.metadata.owner_references[0].name == "orders-adhoc"
    # Secrets only through secretKeyRef, never in args.
    container = job.spec.template.spec.containers[0]
    assert pg_database.server.password not in " ".join(container.args + container.command)
    secret_env = {e.name for e in container.env if e.value_from and e.value_from.secret_key_ref}
    assert {"AEGIS_PG_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AEGIS_KEY_2026-01"} <= secret_env
    assert container.security_context.run_as_non_root is True
    reasons = {e["reason"] for e in events_for(k8s_api, namespace, "orders-adhoc")}
    assert {"BackupStarted", "BackupCompleted"} <= reasons
    policy = wait_for(
        "policy status",
        lambda: (
            (p := get(k8s_api, "backuppolicies", namespace, "orders"))["status"].get(
                "lastSuccessfulTime"
            )
            and p
        ),
    )
    assert policy["status"]["currentRPOSeconds"] >= 0
    assert condition(policy, "RPOMet")["status"] == "True"
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{aegis_operator.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert f'aegis_rpo_seconds{{namespace="{namespace}",policy="orders"}}' in metrics
    assert (
        f'aegis_rpo_objective_seconds{{namespace="{namespace}",policy="orders"}} 3600.0' in metrics
    )


def test_failed_backup_reports_the_agents_reason(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    secrets_for(k8s_api, namespace, pg_database)
    client.CoreV1Api(k8s_api).patch_namespaced_secret(
        "db", namespace, {"stringData": {"password": "wrong-password"}}
    )
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint, job={"backoffLimit": 0})
    make_policy(k8s_api, namespace, "orders", spec)
    point = on_demand(k8s_api, namespace, "orders", "orders-bad-password")
    assert point["status"]["phase"] == "Failed"
    message = point["status"]["message"]
    assert "password" in message.lower() or "authentication" in message.lower(), message
    assert "wrong-password" not in message
    warnings = [
        e for e in events_for(k8s_api, namespace, "orders-bad-password") if e["type"] == "Warning"
    ]
    assert warnings and warnings[0]["reason"] == "BackupFailed"


def test_restart_between_job_creation_and_completion_keeps_one_job(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    seed(pg_database)
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg_database, s3_bucket, moto.endpoint))
    job_runner.stop()  # Jobs are created but do not run while the operator restarts.
    create(
        k8s_api,
        PLURAL,
        namespace,
        {
            "kind": "RecoveryPoint",
            "metadata": {"name": "orders-r"},
            "spec": {"policyRef": {"name": "orders"}},
        },
    )
    wait_for("the Job", lambda: jobs(k8s_api, namespace))
    aegis_operator.stop()
    job_runner.start()
    wait_for(
        "the Job to end",
        lambda: any(
            c.type in ("Complete", "Failed")
            for j in jobs(k8s_api, namespace)
            for c in ((j.status and j.status.conditions) or [])
        ),
        timeout=120,
    )
    aegis_operator.start()
    point = wait_for(
        "Completed",
        lambda: (
            (p := get(k8s_api, PLURAL, namespace, "orders-r"))["status"].get("phase") == "Completed"
            and p
        ),
        timeout=60,
    )
    assert len(jobs(k8s_api, namespace)) == 1
    assert point["status"]["jobName"] == jobs(k8s_api, namespace)[0].metadata.name


def test_keep_last_prunes_points_and_their_objects(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    seed(pg_database, rows=100)
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(
        k8s_api,
        namespace,
        "orders",
        policy_spec(pg_database, s3_bucket, moto.endpoint, retention={"keepLast": 2}),
    )
    names = [f"orders-run{i}" for i in range(4)]
    for name in names:
        assert on_demand(k8s_api, namespace, "orders", name)["status"]["phase"] == "Completed"

    def remaining() -> list[str]:
        items = client.CustomObjectsApi(k8s_api).list_namespaced_custom_object(
            "dr.aegis.dev", "v1alpha1", namespace, PLURAL
        )["items"]
        return sorted(p["metadata"]["name"] for p in items)

    # Retention runs with the policy's status refresh: after a run ends, and at the latest on
    # the refresh period (AEGIS_STATUS_SECONDS, 60 s): allow two periods on a loaded machine.
    wait_for("pruning", lambda: remaining() == names[2:], timeout=150)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])}
    for name in names[:2]:
        assert not any(f"/{name}/" in k for k in keys), name
    for name in names[2:]:
        assert f"backups/{namespace}/orders/{name}/manifest.json" in keys
        assert f"backups/{namespace}/orders/{name}/payload" in keys


def test_object_locked_point_is_kept(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_client: Any,
    moto: Any,
) -> None:
    bucket = f"locked-{namespace}"[:63]
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    seed(pg_database, rows=10)
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(
        k8s_api,
        namespace,
        "orders",
        policy_spec(
            pg_database,
            bucket,
            moto.endpoint,
            retention={"keepLast": 1},
            storage={
                "bucket": bucket,
                "endpoint": moto.endpoint,
                "credentialsSecretRef": {"name": "s3"},
                "objectLock": {"mode": "COMPLIANCE", "days": 1},
            },
        ),
    )
    first = on_demand(k8s_api, namespace, "orders", "orders-locked")
    assert first["status"]["phase"] == "Completed"
    assert first["status"]["lockedUntil"] > dt.datetime.now(dt.UTC).isoformat()
    on_demand(k8s_api, namespace, "orders", "orders-newer")
    # The older point is beyond keepLast but locked: kept, objects intact, no error storm.
    policy = wait_for(
        "a status pass",
        lambda: (
            (p := get(k8s_api, "backuppolicies", namespace, "orders"))["status"].get(
                "recoveryPoints"
            )
            == 2
            and p
        ),
    )
    assert get(k8s_api, PLURAL, namespace, "orders-locked")["status"]["phase"] == "Completed"
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert any("/orders-locked/" in k for k in keys)
    assert policy["status"]["recoveryPoints"] == 2


def test_catalog_sync_rebuilds_points_in_a_fresh_cluster(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    operator_identity: OperatorIdentity,
) -> None:
    seed(pg_database, rows=10)
    secrets_for(k8s_api, namespace, pg_database)
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint)
    make_policy(k8s_api, namespace, "orders", spec)
    original = on_demand(k8s_api, namespace, "orders", "orders-dr")
    assert original["status"]["phase"] == "Completed"
    aegis_operator.stop()

    # A second cluster, applied from the same Git repository: the same policy, suspended.
    fresh = ApiServer(crd_dir=k8s_api.server.crd_dir if k8s_api.server else None).start()
    try:
        kubeconfig = fresh.write_kubeconfig(tmp_path / "dr-kubeconfig")
        from aegis.sandbox.pytest_fixtures import make_api

        dr_api = make_api(kubeconfig, fresh)
        client.CoreV1Api(dr_api).create_namespace({"metadata": {"name": namespace}})
        secrets_for(dr_api, namespace, pg_database)
        # The chart installed there too: the operator runs as its ServiceAccount.
        identity = install_operator_identity(dr_api, tmp_path)
        monkeypatch.setenv("KUBECONFIG", str(identity.kubeconfig))
        aegis_client.reset()
        aegis_operator.start()
        create(
            dr_api,
            "backuppolicies",
            namespace,
            {
                "kind": "BackupPolicy",
                "metadata": {"name": "orders"},
                "spec": {**spec, "suspend": True},
            },
        )
        imported = wait_for(
            "the imported point", lambda: _get_or_none(dr_api, namespace, "orders-dr"), timeout=60
        )
        imported = wait_for(
            "its status",
            lambda: (
                (p := get(dr_api, PLURAL, namespace, "orders-dr")).get("status", {}).get("phase")
                == "Completed"
                and p
            ),
        )
        assert imported["spec"]["trigger"] == "Imported"
        for field in ("sha256", "storedBytes", "sizeBytes", "sourceTime", "location"):
            assert imported["status"][field] == original["status"][field], field
        aegis_operator.stop()
        operator_identity.other_usage.append(fresh.usage(identity.user))
    finally:
        fresh.stop()
    # Back on the first cluster, as the chart's ServiceAccount again.
    monkeypatch.setenv("KUBECONFIG", aegis_operator.env["KUBECONFIG"])
    aegis_client.reset()
    aegis_operator.start()


def _get_or_none(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return get(api, PLURAL, namespace, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
