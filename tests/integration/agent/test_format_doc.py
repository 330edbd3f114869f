"""docs/encryption-format.md's hand decryption recipe works on a real backup, with no Aegis
code: only cryptography and zstandard."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from tests.integration.agent.helpers import run_agent

from aegis.sandbox.servers import MotoServer, RedisServer


def test_documented_recipe_decrypts_a_backup(
    redis_db: RedisServer, moto: MotoServer, s3_bucket: str, s3_client: Any, keys_dir: Path
) -> None:
    redis_db.client().config_set("repl-diskless-sync-delay", "0")
    redis_db.client().mset({f"k{i}": os.urandom(i % 300) for i in range(2000)})
    run = run_agent(
        [
            "backup",
            "--source",
            "redis",
            "--host",
            redis_db.host,
            "--port",
            str(redis_db.port),
            "--bucket",
            s3_bucket,
            "--namespace",
            "n",
            "--policy",
            "p",
            "--point",
            "r",
            "--keys-dir",
            str(keys_dir),
            "--chunk-size",
            "65536",
        ],
        {**moto.aws_env(), "REDISCLI_AUTH": redis_db.password or ""},
    )
    assert run.code == 0, run.stderr
    manifest = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key="n/p/r/manifest.json")["Body"].read()
    )
    payload = s3_client.get_object(Bucket=s3_bucket, Key="n/p/r/payload")["Body"].read()
    assert hashlib.sha256(payload).hexdigest() == manifest["sha256"]

    enc = manifest["encryption"]
    kek = bytes.fromhex((keys_dir / enc["keyId"]).read_text().strip())
    data_key = aes_key_unwrap(kek, base64.b64decode(enc["wrappedKey"]))
    prefix, chunk = bytes.fromhex(enc["noncePrefix"]), enc["chunkSize"] + enc["tagBytes"]
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    assert len(pieces) > 1
    aead = AESGCM(data_key)
    compressed = b"".join(
        aead.decrypt(prefix + i.to_bytes(4, "big") + bytes([i == len(pieces) - 1]), p, None)
        for i, p in enumerate(pieces)
    )
    rdb = zstandard.ZstdDecompressor().decompressobj().decompress(compressed)
    assert rdb.startswith(b"REDIS") and len(rdb) == manifest["sizeBytes"]


def test_documented_kms_recipe_opens_the_data_key_with_the_aws_cli(
    redis_db: RedisServer, moto: MotoServer, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """No Secret key at all: the data key comes from `aws kms decrypt` as the page shows it,
    the payload from the same chunk recipe."""
    import shutil
    import subprocess

    import boto3

    aws_cli = shutil.which("aws")
    if aws_cli is None:
        pytest.skip("the AWS CLI is not installed")
    kms = boto3.client(
        "kms",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key_arn = kms.create_key()["KeyMetadata"]["Arn"]
    redis_db.client().config_set("repl-diskless-sync-delay", "0")
    redis_db.client().mset({f"k{i}": os.urandom(i % 200) for i in range(500)})
    env = {**moto.aws_env(), "REDISCLI_AUTH": redis_db.password or ""}
    run = run_agent(
        [
            "backup",
            "--source",
            "redis",
            "--host",
            redis_db.host,
            "--port",
            str(redis_db.port),
            "--bucket",
            s3_bucket,
            "--namespace",
            "n",
            "--policy",
            "p",
            "--point",
            "r",
            "--kms-key",
            key_arn,
            "--keys-dir",
            str(tmp_path / "none"),
        ],
        {**env, "AEGIS_KMS_ENDPOINT": moto.endpoint},
    )
    assert run.code == 0, run.stderr
    manifest = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key="n/p/r/manifest.json")["Body"].read()
    )
    enc = manifest["encryption"]
    assert [w["keyWrap"] for w in enc["wraps"]] == ["AWS-KMS"]  # KMS only: no Secret wrap
    wrap = next(w for w in enc["wraps"] if w["keyWrap"] == "AWS-KMS")
    (tmp_path / "wrapped.bin").write_bytes(base64.b64decode(wrap["wrappedKey"]))
    context = {
        "aegis:namespace": manifest["namespace"],
        "aegis:policy": manifest["policy"],
        "aegis:recoveryPoint": manifest["recoveryPoint"],
    }
    cli = subprocess.run(
        [
            aws_cli,
            "--endpoint-url",
            moto.endpoint,
            "kms",
            "decrypt",
            "--region",
            wrap["region"],
            "--key-id",
            wrap["keyId"],
            "--ciphertext-blob",
            f"fileb://{tmp_path / 'wrapped.bin'}",
            "--encryption-context",
            json.dumps(context),
            "--query",
            "Plaintext",
            "--output",
            "text",
        ],
        env={**os.environ, **moto.aws_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    data_key = base64.b64decode(cli.stdout.strip())
    assert len(data_key) == 32

    payload = s3_client.get_object(Bucket=s3_bucket, Key="n/p/r/payload")["Body"].read()
    prefix, chunk = bytes.fromhex(enc["noncePrefix"]), enc["chunkSize"] + enc["tagBytes"]
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    aead = AESGCM(data_key)
    compressed = b"".join(
        aead.decrypt(prefix + i.to_bytes(4, "big") + bytes([i == len(pieces) - 1]), p, None)
        for i, p in enumerate(pieces)
    )
    rdb = zstandard.ZstdDecompressor().decompressobj().decompress(compressed)
    assert rdb.startswith(b"REDIS") and len(rdb) == manifest["sizeBytes"]
