"""Keys that survive the disaster, end to end: the real operator, the Job runner running the
real agent, real PostgreSQL, moto S3 and KMS.

- a policy whose only key is a Secret of the cluster says so (KeyEscrowed=False and one
  Warning), and adding a KMS key clears it;
- restore from nothing: a brand-new cluster with none of the old Secrets, a policy naming only
  the KMS key (or a key Secret recreated from the exported bundle), catalog sync rebuilds the
  points, and the newest restores and checks out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client
from tests.e2e.helpers import (
    OperatorHandle,
    OperatorIdentity,
    condition,
    create,
    create_secret,
    custom_api,
    events_for,
    get,
    install_operator_identity,
    wait_for,
)
from tests.e2e.test_backups import make_policy, on_demand, policy_spec, secrets_for
from tests.e2e.test_restore import (
    make_restore,
    pg_target,
    scratch_database_name,
    seed_varied,
    table_checksums,
    wait_restore,
)

from aegis.k8s import client as aegis_client
from aegis.sandbox.apiserver import ApiServer

AEGIS = str(Path(sys.executable).with_name("aegis"))


def kms_key(moto: Any) -> str:
    kms = boto3.client(
        "kms",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arn: str = kms.create_key(Description="aegis e2e")["KeyMetadata"]["Arn"]
    return arn


def kms_entry(moto: Any, arn: str) -> dict[str, Any]:
    return {"keyId": arn, "endpoint": moto.endpoint, "credentialsSecretRef": {"name": "s3"}}


def escrowed(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    return condition(get(api, "backuppolicies", namespace, name), "KeyEscrowed")


def test_a_policy_keyed_only_in_this_cluster_says_so_until_a_kms_key_is_added(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    secrets_for(k8s_api, namespace, pg_database)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg_database, s3_bucket, moto.endpoint))
    found = wait_for("KeyEscrowed", lambda: escrowed(k8s_api, namespace, "orders"))
    assert (found["status"], found["reason"]) == ("False", "KeyOnlyInThisCluster")
    assert "spec.encryption.kmsKeys" in found["message"]
    assert "kubectl aegis keys export" in found["message"]
    warnings = wait_for(
        "the Warning event",
        lambda: [
            e
            for e in events_for(k8s_api, namespace, "orders")
            if e["reason"] == "KeyOnlyInThisCluster"
        ],
    )
    assert warnings[0]["type"] == "Warning"

    arn = kms_key(moto)
    custom_api(k8s_api).patch_namespaced_custom_object(
        "dr.aegis.dev",
        "v1alpha1",
        namespace,
        "backuppolicies",
        "orders",
        {"spec": {"encryption": {"kmsKeys": [kms_entry(moto, arn)]}}},
    )
    cleared = wait_for(
        "KeyEscrowed=True",
        lambda: (c := escrowed(k8s_api, namespace, "orders")) and c["status"] == "True" and c,
    )
    assert cleared["reason"] == "KmsKeyConfigured" and arn in cleared["message"]
    assert (
        len(
            [
                e
                for e in events_for(k8s_api, namespace, "orders")
                if e["reason"] == "KeyOnlyInThisCluster"
            ]
        )
        == 1
    )


@pytest.mark.parametrize("access", ["kms", "bundle"])
def test_restore_from_nothing(
    access: str,
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    operator_identity: OperatorIdentity,
) -> None:
    from aegis.sandbox.jobrunner import JobRunner

    seed_varied(pg_database)
    with pg_database.connect() as conn:
        seeded = table_checksums(conn)
    secrets_for(k8s_api, namespace, pg_database)
    arn = kms_key(moto)
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint)
    if access == "kms":
        spec["encryption"]["kmsKeys"] = [kms_entry(moto, arn)]
    make_policy(k8s_api, namespace, "orders", spec)
    original = on_demand(k8s_api, namespace, "orders", "orders-before")
    assert original["status"]["phase"] == "Completed", original["status"].get("message")
    bundle: dict[str, Any] = {}
    if access == "bundle":
        # Before the disaster: the recovery key bundle, exported and stored offline.
        exported = subprocess.run(
            [AEGIS, "keys", "export", "orders", "-n", namespace],
            env={**os.environ, "KUBECONFIG": str(k8s_api.kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert exported.returncode == 0, exported.stderr
        bundle = json.loads(exported.stdout)
    aegis_operator.stop()

    # The disaster: a new cluster. The CRDs and the policy come from Git, the bucket and the
    # KMS key survived; the key Secret did not (it is not created here at all).
    fresh = ApiServer(crd_dir=k8s_api.server.crd_dir if k8s_api.server else None).start()
    runner = None
    try:
        kubeconfig = fresh.write_kubeconfig(tmp_path / "dr-kubeconfig")
        from aegis.sandbox.pytest_fixtures import make_api

        dr_api = make_api(kubeconfig, fresh)
        client.CoreV1Api(dr_api).create_namespace({"metadata": {"name": namespace}})
        create_secret(
            dr_api,
            namespace,
            "db",
            {"username": pg_database.server.user, "password": pg_database.server.password},
        )
        create_secret(
            dr_api,
            namespace,
            "s3",
            {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )
        identity = install_operator_identity(dr_api, tmp_path)
        monkeypatch.setenv("KUBECONFIG", str(identity.kubeconfig))
        aegis_client.reset()
        runner = JobRunner(kubeconfig, tmp_path / "dr-job-logs", namespaces=[namespace])
        runner.start()
        runner.wait_synced()
        aegis_operator.start()
        if access == "kms":
            encryption: dict[str, Any] = {"kmsKeys": [kms_entry(moto, arn)]}
        else:  # the key Secret recreated from the bundle; no KMS key named at all
            create_secret(dr_api, namespace, bundle["keySecret"], bundle["keys"])
            encryption = {"keySecretRef": {"name": bundle["keySecret"]}}
        dr_spec = {**spec, "suspend": True, "encryption": encryption}
        create(
            dr_api,
            "backuppolicies",
            namespace,
            {"kind": "BackupPolicy", "metadata": {"name": "orders"}, "spec": dr_spec},
        )
        imported = wait_for(
            "the imported point",
            lambda: (
                (p := _point_or_none(dr_api, namespace, "orders-before"))
                and (p.get("status") or {}).get("phase") == "Completed"
                and p
            ),
            timeout=60,
        )
        assert imported["spec"]["trigger"] == "Imported"
        assert imported["status"]["sha256"] == original["status"]["sha256"]
        escrow = wait_for("KeyEscrowed", lambda: escrowed(dr_api, namespace, "orders"))
        assert escrow["status"] == ("True" if access == "kms" else "False")

        with scratch_database_name(pg_database.server) as new_db:
            make_restore(
                dr_api,
                namespace,
                "from-nothing",
                {
                    "policyRef": {"name": "orders"},
                    "target": pg_target(pg_database, new_db, createDatabase=True),
                    "verify": [{"name": "rows-match", "expect": {"matchesBackup": True}}],
                },
            )
            restore = wait_restore(dr_api, namespace, "from-nothing", timeout=120)
            status = restore["status"]
            assert status["phase"] == "Completed", status.get("message")
            assert status["recoveryPoint"] == "orders-before"
            assert [c["result"] for c in status["checks"]] == ["Passed"]
            with pg_database.server.connect(new_db) as conn:
                assert table_checksums(conn) == seeded
            job = client.BatchV1Api(dr_api).read_namespaced_job("restore-from-nothing", namespace)
            env_names = {e.name for e in job.spec.template.spec.containers[0].env}
            if access == "kms":
                assert not [n for n in env_names if n.startswith("AEGIS_KEY_")]
                assert "KMS0_AWS_SECRET_ACCESS_KEY" in env_names
            else:
                assert "AEGIS_KEY_2026-01" in env_names
                assert not [n for n in env_names if n.startswith("KMS")]
        aegis_operator.stop()
        operator_identity.other_usage.append(fresh.usage(identity.user))
    finally:
        if runner is not None:
            runner.stop()
        fresh.stop()
    monkeypatch.setenv("KUBECONFIG", aegis_operator.env["KUBECONFIG"])
    aegis_client.reset()
    aegis_operator.start()


def _point_or_none(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return get(api, "recoverypoints", namespace, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
