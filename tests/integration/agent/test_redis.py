"""Redis backup (Sync and Bgsave) and restore through the agent as a subprocess, against real
redis-server processes and the moto S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.integration.agent.helpers import AgentRun, run_agent

from aegis.sandbox.servers import MotoServer, RedisServer


def fill(server: RedisServer) -> None:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"str:{i}", f"value-{i}-" + "x" * (i % 97))
        if i % 4 == 0:
            pipe.pexpire(f"str:{i}", 3_600_000 + i)
    pipe.set(b"bin:\xff\x00", os.urandom(300))
    pipe.hset("hash", mapping={f"f{i}": i for i in range(500)})
    pipe.rpush("list", *[f"item{i}" for i in range(800)])
    pipe.sadd("set", *range(300))
    pipe.zadd("zset", {f"m{i}": i / 3 for i in range(400)})
    pipe.xadd("stream", {"a": "1"})
    pipe.set("expiring", "soon", px=7_200_000)
    pipe.execute()
    server.client(db=5).set("other-db", "five", ex=9000)


def snapshot(server: RedisServer) -> dict[tuple[int, bytes], tuple[bytes, int]]:
    """Every key of every db → (DUMP payload, absolute expiry ms or -1)."""
    state = {}
    for db in range(16):
        client = server.client(db=db)
        for key in client.scan_iter(count=1000):
            state[(db, key)] = (client.dump(key), int(client.execute_command("PEXPIRETIME", key)))
    return state


def env_of(moto: MotoServer, server: RedisServer) -> dict[str, str]:
    return {**moto.aws_env(), "AEGIS_REDIS_PASSWORD": server.password or ""}


def backup(
    server: RedisServer, moto: MotoServer, bucket: str, keys: Path, point: str, *extra: str
) -> AgentRun:
    # Diskless transfers wait repl-diskless-sync-delay (5 s) for more replicas: not here.
    server.client().config_set("repl-diskless-sync-delay", "0")
    return run_agent(
        [
            "backup",
            "--source",
            "redis",
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--bucket",
            bucket,
            "--namespace",
            "cache",
            "--policy",
            "sessions",
            "--point",
            point,
            "--keys-dir",
            str(keys),
            *extra,
        ],
        env_of(moto, server),
    )


def restore(
    target: RedisServer, moto: MotoServer, bucket: str, keys: Path, point: str, *extra: str
) -> AgentRun:
    return run_agent(
        [
            "restore",
            "--manifest",
            f"s3://{bucket}/cache/sessions/{point}",
            "--target",
            "redis",
            "--host",
            target.host,
            "--port",
            str(target.port),
            "--keys-dir",
            str(keys),
            *extra,
        ],
        env_of(moto, target),
    )


@pytest.fixture
def redis_target() -> Any:
    server = RedisServer.start(password=os.urandom(8).hex())
    yield server
    server.stop()


@pytest.mark.parametrize("method", ["Sync", "SyncDiskBased", "Bgsave"])
def test_round_trip_keeps_every_key_value_and_ttl(
    redis_db: RedisServer,
    redis_target: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    keys_dir: Path,
    tmp_path: Path,
    method: str,
) -> None:
    fill(redis_db)
    before = snapshot(redis_db)
    extra: list[str] = []
    if method == "Bgsave":
        # The source's data dir stands in for the volume mounted into the Job.
        extra = ["--redis-method", "Bgsave", "--rdb-path", str(redis_db.base_dir / "dump.rdb")]
    elif method == "SyncDiskBased":
        extra = ["--no-diskless"]

    run = backup(redis_db, moto, s3_bucket, keys_dir, "rp-1", *extra)
    assert run.code == 0, run.stderr
    source = run.result["status"]["source"]
    assert source["kind"] == "Redis" and source["keys"] == len(before)
    assert source["serverVersion"].startswith("7.")
    assert int(source["position"]) >= 0
    assert redis_db.password and redis_db.password not in run.stdout + run.stderr

    checks = tmp_path / "checks.json"
    checks.write_text(
        json.dumps(
            [
                {"name": "count", "redis": {"op": "KeyCount"}, "expect": {"min": 3000}},
                {
                    "name": "hello",
                    "redis": {"op": "Get", "key": "str:1"},
                    "expect": {"equals": "value-1-x"},
                },
                {"name": "ttl", "redis": {"op": "TTL", "key": "expiring"}, "expect": {"min": 7000}},
                {
                    "name": "absent",
                    "redis": {"op": "KeyExists", "key": "nope"},
                    "expect": {"equals": "0"},
                },
            ]
        )
    )
    run = restore(redis_target, moto, s3_bucket, keys_dir, "rp-1", "--checks-file", str(checks))
    assert run.code == 0, run.stderr
    assert [c["result"] for c in run.result["checks"]] == ["Passed"] * 4
    assert run.result["restoredKeys"] == len(before)
    after = snapshot(redis_target)
    assert after.keys() == before.keys()
    for key, (payload, expire_at) in before.items():
        assert after[key][0] == payload, key
        assert after[key][1] == expire_at, key  # absolute expiry, to the millisecond


def test_overwrite_rules(
    redis_db: RedisServer,
    redis_target: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    keys_dir: Path,
) -> None:
    redis_db.client().mset({"a": "new-a", "b": "new-b"})
    assert backup(redis_db, moto, s3_bucket, keys_dir, "rp-1").code == 0
    target = redis_target.client()
    target.mset({"a": "old-a", "z": "keep"})
    refused = restore(redis_target, moto, s3_bucket, keys_dir, "rp-1")
    assert refused.code == 1 and refused.result["kind"] == "TargetNotEmpty"
    assert target.get("a") == b"old-a" and target.get("b") is None
    allowed = restore(redis_target, moto, s3_bucket, keys_dir, "rp-1", "--allow-overwrite")
    assert allowed.code == 0, allowed.stderr
    assert target.mget("a", "b", "z") == [b"new-a", b"new-b", b"keep"]


def test_damaged_backup_leaves_the_target_untouched(
    redis_db: RedisServer,
    redis_target: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
) -> None:
    fill(redis_db)
    assert backup(redis_db, moto, s3_bucket, keys_dir, "rp-1", "--chunk-size", "4096").code == 0
    key = "cache/sessions/rp-1/payload"
    payload = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    payload[-100] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(payload))
    run = restore(redis_target, moto, s3_bucket, keys_dir, "rp-1")
    assert run.code == 1 and run.result["kind"] == "Corrupted"
    # The last chunk is only opened after the whole object was hashed: the hash catches it.
    assert "SHA-256 mismatch" in run.result["reason"]
    assert redis_target.client().dbsize() == 0


def test_failed_check_fails_the_restore(
    redis_db: RedisServer,
    redis_target: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    redis_db.client().set("k", "v")
    assert backup(redis_db, moto, s3_bucket, keys_dir, "rp-1").code == 0
    checks = tmp_path / "checks.json"
    checks.write_text(
        json.dumps([{"name": "many", "redis": {"op": "KeyCount"}, "expect": {"min": 10}}])
    )
    run = restore(redis_target, moto, s3_bucket, keys_dir, "rp-1", "--checks-file", str(checks))
    assert run.code == 1 and run.result["ok"] is False
    assert run.result["kind"] == "ChecksFailed"
    assert run.result["checks"] == [
        {"name": "many", "result": "Failed", "value": "1", "message": "1 < min 10"}
    ]
    assert "check many failed" in run.stderr


def test_wrong_password_is_scrubbed(
    redis_db: RedisServer, moto: MotoServer, s3_bucket: str, keys_dir: Path
) -> None:
    wrong = "not-the-password-" + os.urandom(4).hex()
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
            "c",
            "--policy",
            "p",
            "--point",
            "r",
            "--keys-dir",
            str(keys_dir),
        ],
        {**moto.aws_env(), "REDISCLI_AUTH": wrong},
    )
    assert run.code == 1 and "AUTH failed" in run.result["reason"]
    assert wrong not in run.stdout + run.stderr


@pytest.mark.parametrize("migrate", [True, False], ids=["MIGRATE", "DUMP-RESTORE"])
def test_both_replay_paths_copy_every_key_with_its_absolute_expiry_and_keep_theirs(
    redis_db: RedisServer, redis_target: RedisServer, migrate: bool
) -> None:
    """The scratch server sends keys with MIGRATE over plain TCP; to TLS targets (or when the
    target refuses MIGRATE) the agent copies them with DUMP/RESTORE. Both end equal, expiry
    times to the millisecond; a key the target gained meanwhile is kept, not overwritten."""
    from aegis.agent import redis_replay
    from aegis.agent.config import RedisTargetConfig

    fill(redis_db)
    before = snapshot(redis_db)
    redis_target.client().set("str:7", "theirs")  # written by someone else meanwhile
    scratch = redis_db.client()
    target = RedisTargetConfig(host=redis_target.host, port=redis_target.port, batch_size=500)
    restored = redis_replay.replay(
        scratch, target, None, redis_target.password, False, migrate=migrate
    )
    assert restored == len(before) - 1
    after = snapshot(redis_target)
    assert after.keys() == before.keys()
    assert redis_target.client().get("str:7") == b"theirs"
    for key, (payload, expire_at) in before.items():
        if key == (0, b"str:7"):
            continue
        assert after[key] == (payload, expire_at), key


def test_replication_is_not_used_when_the_target_has_keys_and_is_undone(
    redis_db: RedisServer, redis_target: RedisServer
) -> None:
    """The emptiness check runs in the MULTI/EXEC that makes the target a replica: a target
    that holds a key is detached again before anything is served, keeps its key, and gets
    its own masterauth back."""
    from aegis.agent import redis_feed
    from aegis.agent.config import RedisTargetConfig

    fill(redis_db)
    redis_db.client().save()
    target = redis_target.client()
    target.config_set("masterauth", "their-own")
    target.set("theirs", "1")
    cfg = RedisTargetConfig(host=redis_target.host, port=redis_target.port)
    rdb = redis_db.base_dir / "dump.rdb"
    assert redis_feed.feed(rdb, cfg, None, redis_target.password, 60) is None
    assert target.dbsize() == 1 and target.get("theirs") == b"1"
    assert target.info("replication")["role"] == "master"
    assert target.config_get("masterauth")["masterauth"] == "their-own"

    target.delete("theirs")
    assert redis_feed.feed(rdb, cfg, None, redis_target.password, 60) == len(snapshot(redis_db))
    assert snapshot(redis_target) == snapshot(redis_db)  # values and absolute expiry times
    assert target.info("replication")["role"] == "master"
    assert target.config_get("masterauth")["masterauth"] == "their-own"


def test_a_target_that_refuses_replicaof_is_restored_by_replay(
    redis_db: RedisServer,
    redis_target: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    keys_dir: Path,
) -> None:
    """A user without REPLICAOF and CONFIG (as on managed Redis services): the restore falls
    back to MIGRATE from a scratch server, with the same result."""
    fill(redis_db)
    before = snapshot(redis_db)
    assert backup(redis_db, moto, s3_bucket, keys_dir, "rp-1").code == 0
    redis_target.client().acl_setuser(
        "restorer",
        enabled=True,
        passwords=[f"+{redis_target.password}"],
        keys=["*"],
        commands=["+@all", "-replicaof", "-config"],
    )
    argv = [
        "restore",
        "--manifest",
        f"s3://{s3_bucket}/cache/sessions/rp-1",
        "--target",
        "redis",
        "--host",
        redis_target.host,
        "--port",
        str(redis_target.port),
        "--keys-dir",
        str(keys_dir),
    ]
    run = run_agent(argv, {**env_of(moto, redis_target), "AEGIS_REDIS_USER": "restorer"})
    assert run.code == 0, run.stderr
    assert "replaying keys" in run.stderr
    assert run.result["restoredKeys"] == len(before)
    assert snapshot(redis_target) == before
