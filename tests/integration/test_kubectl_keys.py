"""`kubectl aegis keys export|rewrap` against the Kubernetes API emulator, moto (S3 and KMS) and a
real PostgreSQL: a backup taken with only the cluster's Secret key is restored from the
exported bundle alone, and, after a rewrap, with KMS alone (no key Secret anywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from tests.e2e.helpers import create, create_secret, new_key
from tests.integration.agent.helpers import run_agent
from tests.integration.agent.test_postgres import fill, table_checksums

from aegis.sandbox.servers import MotoServer, PostgresDatabase

AEGIS = str(Path(sys.executable).with_name("aegis"))


def aegis(k8s_api: Any, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AEGIS, *args],
        env={**os.environ, **env, "KUBECONFIG": str(k8s_api.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def restore_args(db: PostgresDatabase, bucket: str, ns: str, target: str) -> list[str]:
    return [
        "restore",
        "--manifest",
        f"s3://{bucket}/backups/{ns}/orders/rp-1",
        "--target",
        "postgres",
        "--host",
        db.server.host,
        "--port",
        str(db.server.port),
        "--database",
        target,
        "--create-database",
    ]


def test_export_then_rewrap_restore_without_the_clusters_secret(
    k8s_api: Any,
    namespace: str,
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    key = new_key()
    create_secret(k8s_api, namespace, "orders-keys", {"2025-01": key})
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {
            "kind": "BackupPolicy",
            "metadata": {"name": "orders"},
            "spec": {
                "schedule": "0 3 * * *",
                "source": {
                    "postgres": {
                        "host": pg_database.server.host,
                        "port": pg_database.server.port,
                        "database": pg_database.name,
                        "userSecretRef": {"name": "db", "key": "user"},
                        "passwordSecretRef": {"name": "db", "key": "password"},
                    }
                },
                "storage": {"bucket": s3_bucket, "prefix": "backups"},
                "encryption": {"keySecretRef": {"name": "orders-keys"}},
            },
        },
    )
    fill(pg_database, rows=300)
    db_env = {
        **moto.aws_env(),
        "PGUSER": pg_database.server.user,
        "PGPASSWORD": pg_database.server.password,
    }
    # The backup as the Job takes it: the Secret's key in AEGIS_KEY_<id>.
    run = run_agent(
        [
            "backup",
            "--source",
            "postgres",
            "--host",
            pg_database.server.host,
            "--port",
            str(pg_database.server.port),
            "--database",
            pg_database.name,
            "--bucket",
            s3_bucket,
            "--prefix",
            "backups",
            "--namespace",
            namespace,
            "--policy",
            "orders",
            "--point",
            "rp-1",
        ],
        {**db_env, "AEGIS_KEY_2025-01": key},
    )
    assert run.code == 0, run.stderr[-2000:]

    exported = aegis(k8s_api, moto.aws_env(), "keys", "export", "orders", "-n", namespace)
    assert exported.returncode == 0, exported.stderr
    assert "WARNING" in exported.stderr and key not in exported.stderr
    bundle = json.loads(exported.stdout)
    assert bundle["kind"] == "AegisRecoveryKeyBundle"
    assert bundle["keys"] == {"2025-01": key}
    assert bundle["bucket"] == f"s3://{s3_bucket}/backups/{namespace}/orders"

    no_keys = tmp_path / "no-keys"
    no_keys.mkdir()
    from_bundle = f"{pg_database.name}_bundle"
    from_kms = f"{pg_database.name}_kms"
    try:
        # Only the bundle: its keys object is what AEGIS_KEYS reads.
        run = run_agent(
            restore_args(pg_database, s3_bucket, namespace, from_bundle),
            {**db_env, "AEGIS_KEYS": json.dumps(bundle["keys"])},
        )
        assert run.code == 0, run.stderr[-2000:]
        assert table_checksums(
            PostgresDatabase(server=pg_database.server, name=from_bundle)
        ) == table_checksums(pg_database)

        kms = boto3.client(
            "kms",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        key_arn = kms.create_key()["KeyMetadata"]["Arn"]
        kms_env = {**moto.aws_env(), "AEGIS_KMS_ENDPOINT": moto.endpoint}
        rewrap = aegis(
            k8s_api, kms_env, "keys", "rewrap", "orders", "-n", namespace, "--kms-key", key_arn
        )
        assert rewrap.returncode == 0, rewrap.stdout + rewrap.stderr
        assert "Rewrapped" in rewrap.stdout and "rp-1/manifest.json" in rewrap.stdout
        assert key not in rewrap.stdout + rewrap.stderr
        assert "add " + key_arn + " to spec.encryption.kmsKeys" in rewrap.stderr

        # Only KMS: no key Secret, no bundle.
        run = run_agent(
            [
                *restore_args(pg_database, s3_bucket, namespace, from_kms),
                "--keys-dir",
                str(no_keys),
            ],
            {**db_env, "AEGIS_KMS_ENDPOINT": moto.endpoint},
        )
        assert run.code == 0, run.stderr[-2000:]
        assert table_checksums(
            PostgresDatabase(server=pg_database.server, name=from_kms)
        ) == table_checksums(pg_database)
    finally:
        pg_database.server.drop_database(from_bundle)
        pg_database.server.drop_database(from_kms)


def test_export_refuses_a_kms_only_policy(k8s_api: Any, namespace: str, moto: MotoServer) -> None:
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {
            "kind": "BackupPolicy",
            "metadata": {"name": "kmsonly"},
            "spec": {
                "schedule": "0 3 * * *",
                "source": {"redis": {"host": "127.0.0.1"}},
                "storage": {"bucket": "some-bucket"},
                "encryption": {
                    "kmsKeys": [{"keyId": "arn:aws:kms:us-east-1:123456789012:alias/aegis"}]
                },
            },
        },
    )
    result = aegis(k8s_api, {}, "keys", "export", "kmsonly", "-n", namespace)
    assert result.returncode == 1 and result.stdout == ""
    assert "no keySecretRef" in result.stderr
