"""`aegis agent backup`: dump → compress → encrypt → hash → multipart upload → copies →
manifest. On any failure the upload is aborted and no manifest is written."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any, Protocol

from aegis import __version__
from aegis.agent.config import BackupConfig, StoreConfig, postgres_credentials, redis_credentials
from aegis.agent.crypto import ALGORITHM, KEY_WRAP, TAG_BYTES, DataKey
from aegis.agent.errors import AgentError
from aegis.agent.keys import new_wrapped_data_key, with_wraps
from aegis.agent.kms import encryption_context
from aegis.agent.layout import PointRef, normalize_prefix
from aegis.agent.log import Progress, human_bytes, log
from aegis.agent.manifest import (
    CopyRecord,
    EncryptionRecord,
    Manifest,
    SourceRecord,
    StorageRecord,
    parse_manifest,
)
from aegis.agent.pipeline import seal
from aegis.agent.s3 import (
    MultipartUpload,
    S3Client,
    StorageError,
    abort_stale_uploads,
    describe_error,
    endpoint_of,
    get_bytes,
    head_size,
    locked_until,
    make_client,
    put_bytes,
    server_side_copy,
    streamed_copy,
    write_args,
)


class Source(Protocol):
    def start(self) -> None: ...
    def chunks(self) -> Any: ...
    def finish(self) -> SourceRecord: ...
    def close(self) -> None: ...


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_source(cfg: BackupConfig, env: dict[str, str]) -> tuple[Source, str]:
    read_size = cfg.tuning.read_size
    # Imported per source, so a Job loads only the client it needs (memory budget).
    if cfg.postgres is not None:
        from aegis.agent.postgres import PostgresDump

        user, password = postgres_credentials(env)
        return PostgresDump(cfg.postgres, user, password, env, read_size), "pg_dump-custom"
    if cfg.command is not None:
        from aegis.agent.command import PAYLOAD_FORMAT, CommandDump

        return CommandDump(cfg.command, env, read_size), PAYLOAD_FORMAT
    assert cfg.redis is not None
    from aegis.agent.redis_snapshot import RedisSnapshot

    user, password = redis_credentials(env)
    return RedisSnapshot(cfg.redis, user, password, read_size), "redis-rdb"


def existing_manifest(client: S3Client, point: PointRef) -> Manifest | None:
    """A retried Job whose first attempt completed finds its manifest: nothing to redo."""
    try:
        raw = get_bytes(client, point.bucket, point.manifest_key)
    except StorageError as error:
        if "does not exist" in str(error):
            return None
        raise
    return parse_manifest(raw, point.manifest_url)


def run_backup(cfg: BackupConfig, env: dict[str, str], keyring_loader: Any) -> dict[str, Any]:
    started = now()
    clock = time.monotonic()
    point = PointRef(
        cfg.storage.bucket,
        normalize_prefix(cfg.storage.prefix),
        cfg.namespace,
        cfg.policy,
        cfg.recovery_point,
    )
    # The snapshot starts first: the source produces data while the keys and the S3 client
    # are prepared and the store is checked (a retried Job whose first attempt completed
    # then drops a snapshot it did not need; rare, and cheaper than serialising start-up).
    source, payload_format = make_source(cfg, env)
    try:
        source.start()
        return _backup(cfg, env, keyring_loader, point, source, payload_format, started, clock)
    finally:
        source.close()


def _backup(
    cfg: BackupConfig,
    env: dict[str, str],
    keyring_loader: Any,
    point: PointRef,
    source: Source,
    payload_format: str,
    started: dt.datetime,
    clock: float,
) -> dict[str, Any]:
    tuning = cfg.tuning
    data_key, wraps = new_wrapped_data_key(
        keyring_loader,
        cfg.key_secret,
        cfg.kms_keys,
        env,
        encryption_context(cfg.namespace, cfg.policy, cfg.recovery_point),
    )
    client = make_client(
        cfg.storage, env, pool=tuning.upload_concurrency + 4, max_attempts=tuning.s3_max_attempts
    )
    try:
        done = existing_manifest(client, point)
    except StorageError as error:
        raise AgentError(str(error), kind="StorageFailed") from None
    if done is not None:
        log(f"{point.manifest_url} exists: this recovery point is already complete")
        return backup_result(done, point, time.monotonic() - clock, reused=True)
    try:
        abort_stale_uploads(client, point.bucket, point.directory + "/")
    except StorageError as error:
        raise AgentError(str(error), kind="StorageFailed") from None

    upload = MultipartUpload(
        client,
        point.bucket,
        point.payload_key,
        write_args(cfg.storage, started),
        tuning.part_size,
        tuning.upload_concurrency,
    )
    try:
        upload.start()
        with Progress("backup", cfg.progress_seconds) as progress:
            sealed = seal(
                source.chunks(),
                upload.write,
                data_key.key,
                data_key.nonce_prefix,
                tuning.chunk_size,
                cfg.compression,
                tuning.compression_level,
                tuning.compression_threads,
                progress,
            )
            record = source.finish()
            upload.complete()
    except StorageError as error:
        upload.abort()
        raise AgentError(str(error), kind="StorageFailed") from None
    except BaseException:
        upload.abort()
        raise
    completed = now()
    seconds = time.monotonic() - clock
    log(
        f"uploaded {point.payload_url}: {human_bytes(sealed.size_bytes)} logical, "
        f"{human_bytes(sealed.stored_bytes)} stored in {seconds:.1f}s"
    )
    assert record is not None
    snapshot_time = getattr(source, "snapshot_time", None) or started
    manifest = Manifest(
        namespace=cfg.namespace,
        policy=cfg.policy,
        recovery_point=cfg.recovery_point,
        location=point.payload_url,
        manifest=point.manifest_key,
        payload_format=payload_format,
        start_time=started,
        completion_time=completed,
        source_time=snapshot_time,
        source=record,
        size_bytes=sealed.size_bytes,
        stored_bytes=sealed.stored_bytes,
        sha256=sealed.sha256,
        compression=cfg.compression,
        compression_level=tuning.compression_level,
        encryption=with_wraps(encryption_record(data_key, tuning.chunk_size), wraps),
        storage=storage_record(cfg.storage),
        locked_until=locked_until(cfg.storage, started),
        agent_version=__version__,
    )
    copies = [make_copy(cfg, env, client, point, manifest, store) for store in cfg.copies]
    if copies:
        manifest = manifest.model_copy(update={"copies": copies})
    try:
        put_bytes(
            client,
            point.bucket,
            point.manifest_key,
            manifest.to_json().encode(),
            write_args(cfg.storage, started),
        )
    except StorageError as error:
        raise AgentError(
            f"{error}; the payload is in place but without a manifest the point is incomplete",
            kind="StorageFailed",
        ) from None
    log(f"wrote {point.manifest_url}")
    return backup_result(manifest, point, time.monotonic() - clock, reused=False)


def encryption_record(data_key: DataKey, chunk_size: int) -> EncryptionRecord:
    return EncryptionRecord(
        algorithm=ALGORITHM,
        key_id=data_key.key_id,
        key_wrap=KEY_WRAP,
        wrapped_key=base64.b64encode(data_key.wrapped).decode(),
        chunk_size=chunk_size,
        nonce_prefix=data_key.nonce_prefix.hex(),
        tag_bytes=TAG_BYTES,
    )


def storage_record(store: StoreConfig) -> StorageRecord:
    sse = store.server_side_encryption
    return StorageRecord(
        storage_class=store.storage_class,
        server_side_encryption=sse.type if sse else None,
        kms_key_id=sse.kms_key_id if sse else None,
        object_lock_mode=store.object_lock.mode if store.object_lock else None,
    )


def make_copy(
    cfg: BackupConfig,
    env: dict[str, str],
    client: S3Client,
    point: PointRef,
    manifest: Manifest,
    store: StoreConfig,
) -> CopyRecord:
    """Copy the payload and a manifest describing the copy; a failed copy is recorded, not
    fatal: the primary backup is good."""
    target = point.in_bucket(store.bucket, store.prefix)
    same_endpoint = (
        endpoint_of(store, env) == endpoint_of(cfg.storage, env)
        and store.credentials_env_prefix == cfg.storage.credentials_env_prefix
    )
    method = "ServerSideCopy" if same_endpoint else "Streamed"
    started = now()
    try:
        extra = write_args(store, started)
        if same_endpoint:
            abort_stale_uploads(client, target.bucket, target.directory + "/")
            size = head_size(client, point.bucket, point.payload_key)
            server_side_copy(
                client,
                point.bucket,
                point.payload_key,
                target.bucket,
                target.payload_key,
                size,
                extra,
            )
            copy_client = client
        else:
            copy_client = make_client(
                store,
                env,
                pool=cfg.tuning.upload_concurrency + 4,
                max_attempts=cfg.tuning.s3_max_attempts,
            )
            abort_stale_uploads(copy_client, target.bucket, target.directory + "/")
            streamed_copy(
                client,
                point.bucket,
                point.payload_key,
                copy_client,
                target.bucket,
                target.payload_key,
                extra,
                cfg.tuning.part_size,
                cfg.tuning.upload_concurrency,
            )
        copy_manifest = manifest.model_copy(
            update={
                "location": target.payload_url,
                "manifest": target.manifest_key,
                "storage": storage_record(store),
                "locked_until": locked_until(store, started),
            }
        )
        put_bytes(
            copy_client, target.bucket, target.manifest_key, copy_manifest.to_json().encode(), extra
        )
    except (StorageError, Exception) as error:
        reason = str(error) if isinstance(error, StorageError) else describe_error(error)
        log(f"copy to {target.payload_url} failed: {reason}")
        return CopyRecord(
            location=target.payload_url, state="Failed", time=now(), method=method, message=reason
        )
    log(f"copied to {target.payload_url} ({method})")
    return CopyRecord(location=target.payload_url, state="Completed", time=now(), method=method)


def backup_result(
    manifest: Manifest, point: PointRef, seconds: float, reused: bool
) -> dict[str, Any]:
    return {
        "ok": True,
        "command": "backup",
        "manifest": point.manifest_url,
        "alreadyComplete": reused,
        "durationSeconds": round(seconds, 3),
        "status": manifest.recovery_point_status(),
    }
