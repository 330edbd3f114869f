"""S3 behaviour of the agent against moto over HTTP: aborts leave no multipart upload,
copies (server-side and streamed), Object Lock, SSE, storage class, retries, catalog."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from tests.integration.agent.helpers import AgentRun, run_agent

from aegis.sandbox.servers import MotoServer, RedisServer


def fill_random(redis: RedisServer, keys: int, size: int) -> None:
    client = redis.client()
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"blob:{i}", os.urandom(size))
    pipe.execute()


def backup(
    redis: RedisServer,
    env: dict[str, str],
    bucket: str,
    keys: Path,
    *extra: str,
    point: str = "rp-1",
) -> AgentRun:
    redis.client().config_set("repl-diskless-sync-delay", "0")
    return run_agent(
        [
            "backup",
            "--source",
            "redis",
            "--host",
            redis.host,
            "--port",
            str(redis.port),
            "--bucket",
            bucket,
            "--prefix",
            "dr",
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
        {**env, "REDISCLI_AUTH": redis.password or ""},
    )


def test_s3_cut_off_mid_upload_leaves_no_multipart_upload(
    redis_db: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
    proxy_factory: Any,
) -> None:
    fill_random(redis_db, 3000, 10_000)  # ~30 MB, incompressible
    proxy = proxy_factory(moto.endpoint, cut_after=12 << 20)

    # The store comes back a few seconds after the cut: the upload has failed by then, and
    # the agent's abort (which retries with backoff) must reach it.
    def restore_later() -> None:
        if proxy.cut_event.wait(60):
            threading.Timer(4, proxy.restore).start()

    threading.Thread(target=restore_later).start()
    env = {
        **moto.aws_env(),
        "AEGIS_S3_ENDPOINT": proxy.endpoint,
        "AWS_ENDPOINT_URL_S3": proxy.endpoint,
        "AWS_ENDPOINT_URL": proxy.endpoint,
    }
    run = backup(
        redis_db,
        env,
        s3_bucket,
        keys_dir,
        "--compression",
        "none",
        "--part-size",
        str(5 << 20),
        "--s3-max-attempts",
        "2",
    )
    assert proxy.cut_event.is_set() or proxy.forwarded >= 12 << 20
    assert run.code == 1, run.stdout
    assert run.result["kind"] == "StorageFailed"
    assert "aborted the multipart upload" in run.stderr
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == []


def test_a_killed_attempts_upload_is_aborted_by_the_next_attempt(
    redis_db: RedisServer,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
    proxy_factory: Any,
) -> None:
    """SIGKILL runs no abort: the agent killed mid-upload (here the moment its store is cut
    off, so even its own abort cannot get through) leaves a multipart upload with parts.
    The next attempt of the same point aborts it before uploading, and succeeds."""
    import signal
    import subprocess

    from tests.integration.agent.helpers import AEGIS

    fill_random(redis_db, 3000, 10_000)  # ~30 MB, incompressible
    proxy = proxy_factory(moto.endpoint, cut_after=12 << 20)
    env = {
        **os.environ,
        **moto.aws_env(),
        "AEGIS_S3_ENDPOINT": proxy.endpoint,
        "AWS_ENDPOINT_URL_S3": proxy.endpoint,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "REDISCLI_AUTH": redis_db.password or "",
    }
    redis_db.client().config_set("repl-diskless-sync-delay", "0")
    args = [
        "backup", "--source", "redis", "--host", redis_db.host, "--port", str(redis_db.port),
        "--bucket", s3_bucket, "--prefix", "dr", "--namespace", "cache", "--policy",
        "sessions", "--point", "rp-killed", "--keys-dir", str(keys_dir), "--compression",
        "none", "--part-size", str(5 << 20),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [AEGIS, "agent", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proxy.cut_event.wait(120), "the upload never reached the cut"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    proxy.restore()
    left = s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") or []
    assert [u["Key"] for u in left] == ["dr/cache/sessions/rp-killed/payload"]
    assert s3_client.list_parts(
        Bucket=s3_bucket, Key=left[0]["Key"], UploadId=left[0]["UploadId"]
    ).get("Parts")
    proxy.close()
    run = backup(
        redis_db,
        moto.aws_env(),
        s3_bucket,
        keys_dir,
        "--compression",
        "none",
        "--part-size",
        str(5 << 20),
        point="rp-killed",
    )
    assert run.code == 0, run.stderr[-2000:]
    assert "aborted a stale multipart upload" in run.stderr
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_copies_lock_sse_storage_class_and_catalog(
    redis_db: RedisServer, moto: MotoServer, s3_client: Any, keys_dir: Path, tmp_path: Path
) -> None:
    s3_client.create_bucket(Bucket="primary-lock", ObjectLockEnabledForBucket=True)
    s3_client.create_bucket(Bucket="copy-same")
    s3_client.create_bucket(Bucket="copy-far")
    fill_random(redis_db, 200, 1000)
    # The "far" copy names the same moto server by another host name: a different endpoint,
    # so the agent must stream the copy through itself instead of a server-side copy.
    far = moto.endpoint.replace("127.0.0.1", "localhost")
    config = tmp_path / "job.json"
    config.write_text(
        json.dumps(
            {
                "copies": [
                    {"bucket": "copy-same", "prefix": "mirror"},
                    {"bucket": "copy-far", "endpoint": far, "storageClass": "STANDARD_IA"},
                ]
            }
        )
    )
    env = moto.aws_env()
    run = backup(
        redis_db,
        env,
        "primary-lock",
        keys_dir,
        "--config",
        str(config),
        "--object-lock-mode",
        "GOVERNANCE",
        "--object-lock-days",
        "2",
        "--sse",
        "AES256",
        "--storage-class",
        "STANDARD_IA",
    )
    assert run.code == 0, run.stderr
    status = run.result["status"]
    assert status["lockedUntil"]
    assert [(c["location"], c["state"]) for c in status["copies"]] == [
        ("s3://copy-same/mirror/cache/sessions/rp-1/payload", "Completed"),
        ("s3://copy-far/cache/sessions/rp-1/payload", "Completed"),
    ]
    head = s3_client.head_object(Bucket="primary-lock", Key="dr/cache/sessions/rp-1/payload")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
    manifest_head = s3_client.head_object(
        Bucket="primary-lock", Key="dr/cache/sessions/rp-1/manifest.json"
    )
    assert manifest_head["ObjectLockMode"] == "GOVERNANCE"
    primary = s3_client.get_object(Bucket="primary-lock", Key="dr/cache/sessions/rp-1/payload")[
        "Body"
    ].read()
    for bucket, key in (
        ("copy-same", "mirror/cache/sessions/rp-1/payload"),
        ("copy-far", "cache/sessions/rp-1/payload"),
    ):
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == primary
    assert (
        s3_client.head_object(Bucket="copy-far", Key="cache/sessions/rp-1/payload")["StorageClass"]
        == "STANDARD_IA"
    )
    manifests = json.loads(run.stdout.splitlines()[-1])["manifest"]
    assert manifests == "s3://primary-lock/dr/cache/sessions/rp-1/manifest.json"

    # A new cluster reading only the copy bucket rebuilds the point from its manifest.
    s3_client.put_object(Bucket="copy-far", Key="cache/sessions/broken/manifest.json", Body=b"{")
    catalog = run_agent(["catalog", "s3://copy-far"], env)
    assert catalog.code == 0, catalog.stderr
    [point] = catalog.result["recoveryPoints"]
    assert point["status"]["location"] == "s3://copy-far/cache/sessions/rp-1/payload"
    assert point["status"]["sha256"] == status["sha256"]
    assert catalog.result["skipped"][0]["manifest"].endswith("broken/manifest.json")
    verify = run_agent(
        ["verify", "s3://copy-far/cache/sessions/rp-1", "--keys-dir", str(keys_dir)], env
    )
    assert verify.code == 0, verify.stderr


def test_retried_job_reuses_a_completed_point(
    redis_db: RedisServer, moto: MotoServer, s3_bucket: str, s3_client: Any, keys_dir: Path
) -> None:
    fill_random(redis_db, 10, 100)
    first = backup(redis_db, moto.aws_env(), s3_bucket, keys_dir)
    second = backup(redis_db, moto.aws_env(), s3_bucket, keys_dir)
    assert first.code == second.code == 0
    assert second.result["alreadyComplete"] is True
    assert second.result["status"]["sha256"] == first.result["status"]["sha256"]


def test_unreachable_store_fails_with_a_reason(
    redis_db: RedisServer, keys_dir: Path, proxy_factory: Any
) -> None:
    proxy = proxy_factory("http://127.0.0.1:9")
    proxy.cut()
    env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "sekrit-value-123",
        "AEGIS_S3_ENDPOINT": proxy.endpoint,
    }
    run = backup(redis_db, env, "some-bucket", keys_dir, "--s3-max-attempts", "1")
    assert run.code == 1 and run.result["kind"] == "StorageFailed"
    assert "sekrit-value-123" not in run.stdout + run.stderr


def test_completing_while_every_worker_is_busy_keeps_every_part(
    s3_bucket: str, s3_client: Any
) -> None:
    """complete() queues the last part and then an end marker per worker. With every worker
    still busy (a slow store), the queue stays full: the upload must wait for them, never
    drop the queued last part (which completed the object without it) or a marker (which
    hung the agent) — seen on a loaded machine."""
    from aegis.agent.s3 import MultipartUpload

    released = threading.Event()

    class SlowStore:
        """The real client; part uploads wait until the test lets them through."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def upload_part(self, **kwargs: Any) -> Any:
            assert released.wait(60)
            return self.inner.upload_part(**kwargs)

    part = 5 * 1024 * 1024
    data = os.urandom(2 * part + 1000)
    upload = MultipartUpload(SlowStore(s3_client), s3_bucket, "slow/payload", {}, part, 2)
    upload.start()
    for start in range(0, 2 * part, part):  # both workers take a part and wait
        upload.write(data[start : start + part])
    upload.write(data[2 * part :])
    done = threading.Event()

    def complete() -> None:
        upload.complete()
        done.set()

    finisher = threading.Thread(target=complete, daemon=True)
    finisher.start()
    # complete() has queued the last part and is waiting to queue the end markers: the old
    # code gave up on a full queue after 0.5 s and emptied it.
    assert not done.wait(2.0)
    released.set()
    assert done.wait(60), "complete() never returned"
    body = s3_client.get_object(Bucket=s3_bucket, Key="slow/payload")["Body"].read()
    assert body == data
