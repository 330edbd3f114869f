"""KMS envelope encryption through the agent: a backup wrapped for a Secret key and a KMS key
(moto's KMS on 127.0.0.1) opens with either one alone; a KMS wrap is bound to its point; a
rewrap adds a KMS wrap to old manifests, locked ones included (and says so)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from tests.integration.agent.helpers import run_agent
from tests.integration.agent.test_postgres import (
    backup,
    env_for,
    fill,
    manifest_of,
    restore,
    table_checksums,
)

from aegis.agent import kms
from aegis.agent.config import KmsKeyConfig
from aegis.agent.crypto import load_keys_dir
from aegis.agent.rewrap import rewrap_location
from aegis.sandbox.servers import MotoServer, PostgresDatabase

MANIFEST = "backups/shop/orders/{}/manifest.json"


def kms_client(moto: MotoServer) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def new_kms_key(moto: MotoServer, alias: str) -> tuple[str, str]:
    """(key ARN, alias ARN) of a fresh symmetric key."""
    client = kms_client(moto)
    arn = client.create_key(Description="aegis test")["KeyMetadata"]["Arn"]
    client.create_alias(AliasName=f"alias/{alias}", TargetKeyId=arn)
    account = arn.split(":")[4]
    return arn, f"arn:aws:kms:us-east-1:{account}:alias/{alias}"


def restored_matches(db: PostgresDatabase, run: Any, target: str) -> None:
    assert run.code == 0, run.stderr[-2000:]
    assert table_checksums(PostgresDatabase(server=db.server, name=target)) == table_checksums(db)


def test_a_backup_wrapped_for_a_secret_key_and_a_kms_key_restores_with_either_alone(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    fill(pg_database, rows=2000)
    key_arn, alias_arn = new_kms_key(moto, "aegis-orders")
    run = backup(pg_database, moto, s3_bucket, keys_dir, "rp-1", "--kms-key", alias_arn)
    assert run.code == 0, run.stderr[-2000:]
    encryption = manifest_of(s3_client, s3_bucket)["encryption"]
    wraps = encryption["wraps"]
    assert [(w["keyWrap"], w["keyId"]) for w in wraps] == [
        ("AES-KW", "2025-01"),
        ("AWS-KMS", key_arn),  # the alias resolved to the key it named at backup time
    ]
    # Format-1 readers find the Secret wrap where they always did.
    assert (encryption["keyWrap"], encryption["keyId"]) == ("AES-KW", "2025-01")
    assert encryption["wrappedKey"] == wraps[0]["wrappedKey"]
    assert wraps[1]["encryptionContext"] == {
        "aegis:namespace": "shop",
        "aegis:policy": "orders",
        "aegis:recoveryPoint": "rp-1",
    }
    assert wraps[1]["region"] == "us-east-1"

    secret_only = f"{pg_database.name}_secret"
    kms_only = f"{pg_database.name}_kms"
    try:
        # The Secret key alone, with KMS out of reach (no endpoint answers there).
        run = run_agent(
            _restore_args(pg_database, s3_bucket, secret_only, "--keys-dir", str(keys_dir)),
            {**env_for(pg_database.server, moto), "AEGIS_KMS_ENDPOINT": "http://127.0.0.1:9"},
        )
        restored_matches(pg_database, run, secret_only)
        # KMS alone: an empty keys directory, as in a cluster that never had the Secret.
        empty = tmp_path / "no-keys"
        empty.mkdir()
        run = run_agent(
            _restore_args(pg_database, s3_bucket, kms_only, "--keys-dir", str(empty)),
            {**env_for(pg_database.server, moto), "AEGIS_KMS_ENDPOINT": moto.endpoint},
        )
        restored_matches(pg_database, run, kms_only)
        assert f"data key opened with KMS key {key_arn}" in run.stderr
        # No key material in the output or the manifest: neither the data key nor the Secret's.
        data_key = kms.unwrap(
            KmsKeyConfig(key_id=key_arn, endpoint=moto.endpoint),
            {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
            base64.b64decode(wraps[1]["wrappedKey"]),
            wraps[1]["encryptionContext"],
            "us-east-1",
        )
        secret_key = (keys_dir / "2025-01").read_text().strip()
        seen = run.stdout + run.stderr + json.dumps(manifest_of(s3_client, s3_bucket))
        for material in (data_key.hex(), base64.b64encode(data_key).decode(), secret_key):
            assert material not in seen
    finally:
        pg_database.server.drop_database(secret_only)
        pg_database.server.drop_database(kms_only)
    # Neither: the reason names what was tried for each wrap.
    empty = tmp_path / "no-keys"
    run = run_agent(
        _restore_args(pg_database, s3_bucket, kms_only + "x", "--keys-dir", str(empty)),
        {**env_for(pg_database.server, moto), "AEGIS_KMS_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert run.code == 1 and run.result["kind"] == "KeyNotFound"
    assert "'2025-01'" in run.result["reason"] and key_arn in run.result["reason"]


def _restore_args(db: PostgresDatabase, bucket: str, database: str, *extra: str) -> list[str]:
    return [
        "restore",
        "--manifest",
        f"s3://{bucket}/backups/shop/orders/rp-1",
        "--target",
        "postgres",
        "--host",
        db.server.host,
        "--port",
        str(db.server.port),
        "--database",
        database,
        "--create-database",
        *extra,
    ]


def test_a_kms_wrap_does_not_open_under_another_points_encryption_context(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    fill(pg_database, rows=200)
    key_arn, _ = new_kms_key(moto, "aegis-ctx")
    for point in ("rp-1", "rp-2"):
        assert backup(pg_database, moto, s3_bucket, keys_dir, point, "--kms-key", key_arn).code == 0
    one = manifest_of(s3_client, s3_bucket, "rp-1")["encryption"]["wraps"][1]
    blob = base64.b64decode(one["wrappedKey"])
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    key = KmsKeyConfig(key_id=key_arn, endpoint=moto.endpoint)
    assert len(kms.unwrap(key, env, blob, one["encryptionContext"], "us-east-1")) == 32
    with pytest.raises(kms.KmsError, match=r"InvalidCiphertextException.*encryption context"):
        kms.unwrap(key, env, blob, kms.encryption_context("shop", "orders", "rp-2"), "us-east-1")

    # rp-1's KMS wrap pasted into rp-2's manifest opens nothing: the context is rp-2's.
    two = manifest_of(s3_client, s3_bucket, "rp-2")
    two["encryption"]["wraps"] = [one]
    s3_client.put_object(
        Bucket=s3_bucket, Key=MANIFEST.format("rp-2"), Body=json.dumps(two).encode()
    )
    empty = tmp_path / "no-keys"
    empty.mkdir()
    run = run_agent(
        ["verify", f"s3://{s3_bucket}/backups/shop/orders/rp-2", "--keys-dir", str(empty)],
        {**env_for(pg_database.server, moto), "AEGIS_KMS_ENDPOINT": moto.endpoint},
    )
    assert run.code == 1 and run.result["kind"] == "KeyNotFound"
    assert "InvalidCiphertextException" in run.result["reason"]


def test_rewrap_adds_a_kms_wrap_and_the_old_point_then_restores_with_kms_only(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_client: Any,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    bucket = "aegis-rewrap-locked"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    fill(pg_database, rows=300)
    # rp-1 locked (the backup writes COMPLIANCE retention), rp-2 not.
    locked = backup(
        pg_database,
        moto,
        bucket,
        keys_dir,
        "rp-1",
        "--object-lock-mode",
        "COMPLIANCE",
        "--object-lock-days",
        "1",
    )
    assert locked.code == 0, locked.stderr[-2000:]
    assert backup(pg_database, moto, bucket, keys_dir, "rp-2").code == 0
    before = s3_client.get_object(Bucket=bucket, Key=MANIFEST.format("rp-1"))
    old_version, old_body = before["VersionId"], before["Body"].read()
    assert "wraps" in json.loads(old_body)["encryption"]

    key_arn, alias_arn = new_kms_key(moto, "aegis-escrow")
    env = {**moto.aws_env(), "AEGIS_KMS_ENDPOINT": moto.endpoint}
    outcomes = rewrap_location(
        s3_client,
        bucket,
        "backups",
        lambda: load_keys_dir(keys_dir),
        KmsKeyConfig(key_id=alias_arn),
        [],
        env,
    )
    by_point = {o.manifest.rsplit("/", 2)[-2]: o for o in outcomes}
    assert set(by_point) == {"rp-1", "rp-2"}
    assert all(o.state == "Rewrapped" for o in outcomes), [o.to_wire() for o in outcomes]
    # The locked manifest is reported: a new version, the locked original kept as it was.
    assert by_point["rp-1"].locked_until is not None
    assert "locked (COMPLIANCE)" in by_point["rp-1"].message
    assert by_point["rp-2"].locked_until is None
    original = s3_client.get_object(
        Bucket=bucket, Key=MANIFEST.format("rp-1"), VersionId=old_version
    )["Body"].read()
    assert original == old_body
    head = s3_client.head_object(Bucket=bucket, Key=MANIFEST.format("rp-1"))
    assert head["VersionId"] != old_version and head["ObjectLockMode"] == "COMPLIANCE"
    # The payload was not touched.
    new = manifest_of(s3_client, bucket, "rp-1")
    assert new["sha256"] == json.loads(old_body)["sha256"]
    assert [w["keyId"] for w in new["encryption"]["wraps"]] == ["2025-01", key_arn]

    # A second rewrap finds the wrap there.
    again = rewrap_location(
        s3_client,
        bucket,
        "backups",
        lambda: load_keys_dir(keys_dir),
        KmsKeyConfig(key_id=key_arn),
        [],
        env,
    )
    assert {o.state for o in again} == {"AlreadyWrapped"}

    # The old locked point now restores with KMS access only.
    empty = tmp_path / "no-keys"
    empty.mkdir()
    target = f"{pg_database.name}_rewrapped"
    try:
        run = restore(pg_database.server, moto, bucket, empty, target, "rp-1", "--create-database")
        restored_matches(pg_database, run, target)
    finally:
        pg_database.server.drop_database(target)


def test_rewrap_reports_a_manifest_it_cannot_open(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    fill(pg_database, rows=50)
    assert backup(pg_database, moto, s3_bucket, keys_dir, "rp-1").code == 0
    _, alias_arn = new_kms_key(moto, "aegis-nokey")
    empty = tmp_path / "no-keys"
    empty.mkdir()
    outcomes = rewrap_location(
        moto.s3_client(),
        s3_bucket,
        "backups",
        lambda: load_keys_dir(empty),
        KmsKeyConfig(key_id=alias_arn),
        [],
        {**moto.aws_env(), "AEGIS_KMS_ENDPOINT": moto.endpoint},
    )
    assert [o.state for o in outcomes] == ["Failed"]
    assert "'2025-01'" in outcomes[0].message
