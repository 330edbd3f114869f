"""docs/encryption-format.md's hand decryption recipe works on a real backup, with no Aegis
code: only cryptography and zstandard."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

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
