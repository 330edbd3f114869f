"""`aegis agent restore`, `verify` and `catalog`.

Restore reads the payload once and commits only after every chunk authenticated and the
whole payload's SHA-256 and sizes matched the manifest, so a damaged object or a wrong key
never changes the target, and nothing is spooled to disk (Redis aside: redis-server loads
RDBs from files). PostgreSQL: authenticated plaintext streams into `pg_restore
--single-transaction`, which is held short of the archive's end until the payload checked
out, and killed (the transaction rolls back; a database the restore created is dropped)
when it does not. Redis: the payload is authenticated on its way into an RDB file in the
Job's scratch dir, and the target is touched only once all of it checked out.

Each target kind has its own `_restore_<kind>` (checked by `run_restore`), so another one
slots in beside them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aegis.agent.checks import (
    Check,
    CheckOutcome,
    Query,
    RowCounter,
    parse_checks,
    run_checks,
)
from aegis.agent.config import (
    KmsKeyConfig,
    LocationConfig,
    PostgresTargetConfig,
    RedisTargetConfig,
    RestoreConfig,
    postgres_credentials,
    redis_credentials,
)
from aegis.agent.crypto import IntegrityError, Keyring
from aegis.agent.errors import AgentError
from aegis.agent.keys import open_data_key
from aegis.agent.layout import (
    PointRef,
    is_manifest_key,
    manifest_key_for,
    normalize_prefix,
    parse_s3_url,
    s3_url,
)
from aegis.agent.log import Progress, human_bytes, log
from aegis.agent.manifest import Manifest, ManifestError, parse_manifest
from aegis.agent.pgtools import pick_tool
from aegis.agent.pipeline import Expected, Opened, Sink, open_sealed
from aegis.agent.s3 import S3Client, StorageError, get_bytes, list_keys, make_client, read_stream

KeyringLoader = Callable[[], Keyring]
REDIS_LOAD_TIMEOUT = 3600.0
"""How long a Redis target may take to load the RDB (by replication or in the scratch server)."""


def load_manifest(client: S3Client, bucket: str, key: str) -> Manifest:
    url = s3_url(bucket, key)
    try:
        return parse_manifest(get_bytes(client, bucket, key), url)
    except StorageError as error:
        if "does not exist" in str(error):
            raise AgentError(
                f"{error}: no manifest there (an incomplete backup has a payload but no manifest)",
                kind="ManifestNotFound",
            ) from None
        raise AgentError(str(error), kind="StorageFailed") from None
    except ManifestError as error:
        raise AgentError(str(error), kind="ManifestInvalid") from None


def manifest_location(cfg: RestoreConfig) -> tuple[str, str]:
    if cfg.manifest:
        bucket, key = parse_s3_url(cfg.manifest)
        return bucket, manifest_key_for(key)
    assert cfg.namespace and cfg.policy and cfg.recovery_point
    point = PointRef(
        cfg.storage.bucket,
        normalize_prefix(cfg.storage.prefix),
        cfg.namespace,
        cfg.policy,
        cfg.recovery_point,
    )
    return point.bucket, point.manifest_key


def data_key_for(
    manifest: Manifest,
    keyring_loader: KeyringLoader,
    kms_keys: list[KmsKeyConfig] | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    """The data key from any wrap this agent can open (agent/keys.py)."""
    data_key, _ = open_data_key(manifest, keyring_loader, kms_keys or [], env or {})
    return data_key


def payload_stream(client: S3Client, manifest: Manifest) -> Any:
    bucket, key = parse_s3_url(manifest.location)
    return read_stream(client, bucket, key)


@dataclass(frozen=True)
class Payload:
    """A backup's stored payload and the data key that opens it."""

    client: S3Client
    manifest: Manifest
    data_key: bytes

    def stream(
        self,
        sink: Sink | None,
        step: str,
        progress_seconds: float,
        *,
        corrupted: str = "{location} is damaged: {error}",
        unreadable: str = "{error}",
        stop: Callable[[], None] | None = None,
        decompress: bool = True,
    ) -> Opened:
        """Read the payload, hash and authenticate it, and hand its plaintext to `sink` (None:
        discard). A damaged payload fails with kind Corrupted and the reason `corrupted`, one
        that cannot be read with StorageFailed and `unreadable` (templates of {location} and
        {error}). On any failure `stop` (which kills the sink) runs first."""
        manifest = self.manifest
        enc = manifest.encryption
        try:
            with Progress(step, progress_seconds) as progress:
                return open_sealed(
                    payload_stream(self.client, manifest),
                    sink,
                    self.data_key,
                    enc.nonce_prefix_bytes(),
                    enc.chunk_size,
                    manifest.compression,
                    Expected(manifest.stored_bytes, manifest.sha256, manifest.size_bytes),
                    progress,
                    decompress=decompress,
                )
        except BaseException as error:
            if stop is not None:
                stop()
            if isinstance(error, IntegrityError):
                reason = corrupted.format(location=manifest.location, error=error)
                raise AgentError(reason, kind="Corrupted") from None
            if isinstance(error, StorageError):
                reason = unreadable.format(location=manifest.location, error=error)
                raise AgentError(reason, kind="StorageFailed") from None
            raise

    def verify(self, progress_seconds: float, decompress: bool) -> tuple[Opened, float]:
        """The verification pass: every chunk authenticated, the hash and sizes checked."""
        started = time.monotonic()
        opened = self.stream(None, "verify", progress_seconds, decompress=decompress)
        return opened, time.monotonic() - started


@dataclass(frozen=True)
class Restoring:
    """What a restore into any kind of target works with: the request, the payload, the
    checks to run afterwards, and when the restore began (monotonic)."""

    cfg: RestoreConfig
    env: dict[str, str]
    payload: Payload
    checks: list[Check]
    clock: float

    @property
    def manifest(self) -> Manifest:
        return self.payload.manifest

    def run_checks(
        self,
        query: Query,
        count_rows: RowCounter | None = None,
        backup_rows: dict[str, int] | None = None,
    ) -> list[CheckOutcome]:
        """The checks' outcomes (none without checks) once the target is restored."""
        return run_checks(self.checks, query, count_rows, backup_rows) if self.checks else []

    def result(
        self,
        restored: int,
        verify_seconds: float,
        restore_seconds: float,
        outcomes: list[CheckOutcome],
    ) -> dict[str, Any]:
        return restore_result(
            self.manifest,
            restored,
            verify_seconds,
            restore_seconds,
            time.monotonic() - self.clock,
            outcomes,
        )


# --- restore ---------------------------------------------------------------------------------


def run_restore(
    cfg: RestoreConfig, env: dict[str, str], keyring_loader: KeyringLoader
) -> dict[str, Any]:
    clock = time.monotonic()
    client = make_client(cfg.storage, env, max_attempts=cfg.tuning.s3_max_attempts)
    bucket, key = manifest_location(cfg)
    manifest = load_manifest(client, bucket, key)
    checks = parse_checks(cfg.checks, "checks") if cfg.checks is not None else []
    target, expected_format = (
        ("postgres", "pg_dump-custom")
        if cfg.postgres is not None
        else ("redis", "redis-rdb")
        if cfg.redis is not None
        else ("command", "command-stdout")
    )
    if manifest.payload_format != expected_format:
        raise AgentError(
            f"{s3_url(bucket, key)} is a {manifest.source.kind} backup; it cannot "
            f"be restored into a {target} target",
            kind="InvalidConfig",
        )
    data_key = data_key_for(manifest, keyring_loader, cfg.kms_keys, env)
    run = Restoring(cfg, env, Payload(client, manifest, data_key), checks, clock)
    if cfg.command is not None:
        from aegis.agent.command import restore_command  # a Job loads only what it needs

        return restore_command(run, cfg.command)
    if cfg.postgres is not None:
        return _restore_postgres(run, cfg.postgres)
    assert cfg.redis is not None
    return _restore_redis(run, cfg.redis)


def _restore_postgres(run: Restoring, target: PostgresTargetConfig) -> dict[str, Any]:
    from aegis.agent import postgres as pg  # per target: a Job loads only its own client

    cfg, manifest = run.cfg, run.manifest
    user, password = postgres_credentials(run.env)
    state = pg.inspect_target(target, user, password)
    if not state.exists and not target.create_database:
        raise AgentError(
            f"database {target.database} does not exist on {target.host}:"
            f"{target.port}; set createDatabase to create it",
            kind="TargetMissing",
        )
    if state.relations and not cfg.allow_overwrite:
        raise AgentError(
            f"target database {target.database} is not empty ({state.relations} "
            "relations); set allowOverwrite to replace its objects",
            kind="TargetNotEmpty",
        )
    dump_major = int((manifest.source.dump_tool_version or "0").split(".")[0])
    tool = pick_tool("pg_restore", max(state.server_major, dump_major), target.bin_dir)
    log(
        f"restoring {manifest.location} into {target.host}:{target.port}/{target.database} "
        f"with {tool.path}, in one transaction that commits only once every chunk "
        "authenticated and the payload's SHA-256 matched"
    )
    started = time.monotonic()
    created = not state.exists
    if created:
        pg.create_database(target, user, password)
    restorer: pg.PgRestore | None = None

    def undo() -> str:
        """Roll back: kill pg_restore before it has the end of the archive (its transaction
        never commits) and drop the database this restore created."""
        if restorer is not None:
            restorer.kill()
        if not created:
            return "the target was rolled back"
        try:
            pg.drop_database(target, user, password)
        except AgentError as error:
            return (
                f"the target was rolled back, but dropping database {target.database} "
                f"failed: {error}"
            )
        return f"the target was rolled back and database {target.database} dropped"

    # One pass: only authenticated plaintext reaches pg_restore, and PgRestore holds back the
    # archive's last bytes until open_sealed has checked the final chunk, the size and the
    # SHA-256 of the whole payload, so a damaged object never commits.
    try:
        restorer = pg.PgRestore(target, user, password, run.env, tool, clean=cfg.allow_overwrite)
        run.payload.stream(restorer.write, "restore", cfg.progress_seconds)
        verified = time.monotonic()
        restorer.finish()
    except AgentError as error:  # a damaged or unreadable payload, or pg_restore's failure
        raise AgentError(f"{error}; {undo()}", kind=error.kind) from None
    except BaseException:
        undo()
        raise
    restore_seconds = time.monotonic() - started
    assert restorer is not None
    outcomes = run.run_checks(
        _pg_query(target, user, password),
        _pg_row_counter(target, user, password),
        manifest.table_rows(),
    )
    return run.result(restorer.written, verified - started, restore_seconds, outcomes)


def _pg_query(
    target: PostgresTargetConfig, user: str | None, password: str | None
) -> Callable[[Check], str | None]:
    from aegis.agent import postgres as pg

    def query(check: Check) -> str | None:
        if check.sql is None:
            raise ValueError("a PostgreSQL target runs sql checks, not redis ones")
        with pg.connect(pg.target_info(target, user, password), "target") as conn:
            conn.read_only = True
            row = conn.execute(check.sql.encode()).fetchone()
            if row is None or row[0] is None:
                return None
            value = row[0]
            return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return query


def _pg_row_counter(
    target: PostgresTargetConfig, user: str | None, password: str | None
) -> Callable[[list[str]], dict[str, int | None]]:
    import psycopg
    from psycopg import sql

    from aegis.agent import postgres as pg

    def count(tables: list[str]) -> dict[str, int | None]:
        counts: dict[str, int | None] = {}
        with pg.connect(pg.target_info(target, user, password), "target", autocommit=True) as conn:
            for table in tables:
                schema, _, name = table.partition(".")
                try:
                    row = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}.{}").format(
                            sql.Identifier(schema), sql.Identifier(name)
                        )
                    ).fetchone()
                    counts[table] = int(row[0]) if row else None
                except psycopg.errors.UndefinedTable:
                    counts[table] = None
        return counts

    return count


def _restore_redis(run: Restoring, target: RedisTargetConfig) -> dict[str, Any]:
    from aegis.agent import redis_feed, redis_replay, redis_scratch

    cfg, manifest = run.cfg, run.manifest
    user, password = redis_credentials(run.env)
    existing = redis_replay.target_keys(target, user, password)
    if existing and not cfg.allow_overwrite:
        raise AgentError(
            f"target Redis {target.host}:{target.port} is not empty ({existing} "
            "keys); set allowOverwrite to replace keys",
            kind="TargetNotEmpty",
        )
    # One pass: the payload is authenticated chunk by chunk on its way into the scratch
    # server's RDB file, and the target is touched only after the whole of it checked out
    # (a damaged payload stops here, with the target untouched), so no separate verify pass.
    downloading = time.monotonic()
    scratch = redis_scratch.ScratchRedis(cfg.work_dir, target.redis_server)
    try:
        opened = run.payload.stream(
            scratch.write,
            "download",
            cfg.progress_seconds,
            corrupted="{location} failed authentication: {error}; the target was not touched",
        )
        verify_seconds = time.monotonic() - downloading
        log(
            f"downloaded and authenticated {manifest.location} in {verify_seconds:.1f}s; "
            "loading it into the target"
        )
        started = time.monotonic()
        # An empty target loads the RDB itself, as a replica of the agent; otherwise (or when
        # that is not possible) a scratch server's keys are replayed into it.
        keys = (
            redis_feed.feed(scratch.written(), target, user, password, REDIS_LOAD_TIMEOUT)
            if not existing
            else None
        )
        if keys is None:
            scratch_client = scratch.load()
            keys = redis_replay.replay(scratch_client, target, user, password, cfg.allow_overwrite)
            scratch_client.close()
    finally:
        scratch.close()
    restore_seconds = time.monotonic() - started
    log(f"restored {keys} keys into {target.host}:{target.port} in {restore_seconds:.1f}s")
    outcomes = run.run_checks(_redis_query(target, user, password))
    result = run.result(opened.logical_bytes, verify_seconds, restore_seconds, outcomes)
    result["restoredKeys"] = keys
    return result


def _redis_query(
    target: RedisTargetConfig, user: str | None, password: str | None
) -> Callable[[Check], str | None]:
    import redis

    from aegis.agent import redis_replay

    def query(check: Check) -> str | None:
        if check.redis is None:
            raise ValueError("a Redis target runs redis checks, not sql ones")
        client = redis_replay.target_client(target, user, password, target.db)
        try:
            op, key = check.redis.op, check.redis.key or ""
            if op == "KeyCount":
                return str(client.dbsize())
            if op == "KeyExists":
                return str(int(client.exists(key)))
            if op == "TTL":
                return str(client.ttl(key))
            value = client.get(key)
            if value is None:
                return None
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        except redis.RedisError as error:
            raise ValueError(f"redis {check.redis.op}: {error}") from None
        finally:
            client.close()

    return query


def restore_result(
    manifest: Manifest,
    restored: int,
    verify_seconds: float,
    restore_seconds: float,
    total: float,
    outcomes: list[CheckOutcome],
) -> dict[str, Any]:
    failed = [o for o in outcomes if o.result != "Passed"]
    result: dict[str, Any] = {
        "ok": not failed,
        "command": "restore",
        "recoveryPoint": manifest.recovery_point,
        "location": manifest.location,
        "sourceTime": manifest.recovery_point_status()["sourceTime"],
        "restoredBytes": restored,
        "verifySeconds": round(verify_seconds, 3),
        "restoreSeconds": round(restore_seconds, 3),
        "durationSeconds": round(total, 3),
        "checks": [o.to_wire() for o in outcomes],
    }
    if failed:
        result["kind"] = "ChecksFailed"
        result["reason"] = "verification failed: " + "; ".join(
            f"check {o.name} {o.result.lower()}" + (f" ({o.message})" if o.message else "")
            for o in failed
        )
    log(
        f"restored {human_bytes(restored)} in {restore_seconds:.1f}s "
        f"(payload authenticated after {verify_seconds:.1f}s)"
    )
    return result


# --- verify and catalog ----------------------------------------------------------------------


def run_verify(
    cfg: LocationConfig, env: dict[str, str], keyring_loader: KeyringLoader
) -> dict[str, Any]:
    bucket, key = parse_s3_url(cfg.location)
    key = manifest_key_for(key)
    client = make_client(cfg.storage, env, max_attempts=cfg.tuning.s3_max_attempts)
    manifest = load_manifest(client, bucket, key)
    data_key = data_key_for(manifest, keyring_loader, cfg.kms_keys, env)
    opened, seconds = Payload(client, manifest, data_key).verify(
        cfg.progress_seconds, decompress=True
    )
    return {
        "ok": True,
        "command": "verify",
        "manifest": s3_url(bucket, key),
        "location": manifest.location,
        "sha256": manifest.sha256,
        "storedBytes": opened.stored_bytes,
        "sizeBytes": opened.logical_bytes,
        "chunks": opened.chunks,
        "keyId": manifest.encryption.key_id,
        "durationSeconds": round(seconds, 3),
    }


def run_catalog(cfg: LocationConfig, env: dict[str, str]) -> dict[str, Any]:
    bucket, prefix = parse_s3_url(cfg.location)
    client = make_client(cfg.storage, env, max_attempts=cfg.tuning.s3_max_attempts)
    listed: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        keys = list(list_keys(client, bucket, f"{prefix}/" if prefix else "", is_manifest_key))
        for key in keys:
            url = s3_url(bucket, key)
            try:
                manifest = parse_manifest(get_bytes(client, bucket, key), url)
            except (ManifestError, StorageError) as error:
                skipped.append({"manifest": url, "reason": str(error)})
                continue
            listed.append(
                {
                    "manifest": url,
                    "namespace": manifest.namespace,
                    "policy": manifest.policy,
                    "recoveryPoint": manifest.recovery_point,
                    "status": manifest.recovery_point_status(),
                }
            )
    except StorageError as error:
        raise AgentError(str(error), kind="StorageFailed") from None
    for item in skipped:
        log(f"skipped {item['manifest']}: {item['reason']}")
    return {
        "ok": True,
        "command": "catalog",
        "location": s3_url(bucket, prefix),
        "recoveryPoints": listed,
        "skipped": skipped,
    }
