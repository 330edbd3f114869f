"""Backups: from a RecoveryPoint and its policy to a Job, and from the Job's outcome and the
manifest in the bucket to the point's status. Plain functions; no kopf, no API calls.

Secrets reach the agent only as `secretKeyRef` env vars; its non-secret configuration is the
agent's own typed `BackupConfig`, passed as a JSON argument, so the operator/agent contract
is checked by mypy and pydantic rather than by string conventions.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aegis import display
from aegis.agent.config import (
    COMMAND_ENV_PREFIX,
    BackupConfig,
    CommandSourceConfig,
    PostgresSourceConfig,
    RedisSourceConfig,
    StoreConfig,
)
from aegis.agent.layout import PointRef
from aegis.agent.manifest import Manifest
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.common import JobOptions, S3Location, SecretEnvVar, SecretKeyRef
from aegis.k8s.jobs import ClaimMount, JobRequest, SecretEnv
from aegis.reconcilers import keys, naming
from aegis.settings import Settings

KEY_ENV_PREFIX = "AEGIS_KEY_"


def store_config(
    location: S3Location, env_prefix: str, default_endpoint: str | None
) -> StoreConfig:
    """The agent's view of an S3Location; credentials are env vars named with `env_prefix`."""
    return StoreConfig(
        bucket=location.bucket,
        prefix=location.prefix,
        region=location.region,
        endpoint=location.endpoint or default_endpoint,
        storage_class=location.storage_class,
        server_side_encryption=location.server_side_encryption,
        object_lock=location.object_lock,
        credentials_env_prefix=env_prefix if location.credentials_secret_ref else "",
    )


def s3_secret_env(location: S3Location, env_prefix: str) -> list[SecretEnv]:
    ref = location.credentials_secret_ref
    if ref is None:
        return []
    return [
        SecretEnv(f"{env_prefix}{key}", SecretKeyRef(name=ref.name, key=key))
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def key_env_name(key_id: str) -> str:
    return f"{KEY_ENV_PREFIX}{key_id}"


def backup_config(
    spec: BackupPolicySpec, namespace: str, policy: str, point: str, settings: Settings
) -> BackupConfig:
    source = spec.source
    postgres = redis = command = None
    if source.command is not None:
        command = CommandSourceConfig(
            dump=source.command.dump,
            env=[var.name for var in source.command.env or []],
            database=source.command.database,
        )
    elif source.postgres is not None:
        pg = source.postgres
        options = pg.dump_options
        postgres = PostgresSourceConfig(
            host=pg.host,
            port=pg.port,
            database=pg.database,
            ssl_mode=pg.ssl_mode,
            schemas=options.schemas if options else None,
            exclude_tables=options.exclude_tables if options else None,
            exclude_table_data=options.exclude_table_data if options else None,
        )
    elif source.redis is not None:
        rd = source.redis
        redis = RedisSourceConfig(
            host=rd.host,
            port=rd.port,
            tls=rd.tls,
            method=rd.method,
            rdb_path=RDB_MOUNT if rd.method == "Bgsave" else None,
        )
    return BackupConfig(
        namespace=namespace,
        policy=policy,
        recovery_point=point,
        postgres=postgres,
        redis=redis,
        command=command,
        storage=store_config(spec.storage, "", settings.s3_endpoint),
        copies=[
            store_config(copy, f"COPY{i}_", settings.s3_endpoint)
            for i, copy in enumerate(spec.copies or [])
        ],
        compression=spec.compression,
        kms_keys=keys.kms_key_configs(spec, settings.kms_endpoint),
        key_secret=spec.encryption.key_secret_ref is not None,
    )


RDB_DIR = "/var/lib/aegis/rdb"
RDB_MOUNT = f"{RDB_DIR}/dump.rdb"
"""Where a Bgsave backup reads the server's dump.rdb: the root of `redis.rdbVolume`, mounted
read-only (redis writes `dbfilename`, default dump.rdb, at the root of its data dir)."""


def backup_mounts(spec: BackupPolicySpec) -> list[ClaimMount]:
    """Bgsave reads the RDB file the server wrote: its volume, read-only."""
    redis = spec.source.redis
    if redis is None or redis.method != "Bgsave" or redis.rdb_volume is None:
        return []
    return [ClaimMount("rdb", redis.rdb_volume.name, RDB_DIR, read_only=True)]


def command_secret_env(variables: list[SecretEnvVar] | None) -> list[SecretEnv]:
    """A command's variables, each carried as AEGIS_CMDENV_<name> from its Secret key (the
    agent renames them for the command only)."""
    return [
        SecretEnv(f"{COMMAND_ENV_PREFIX}{var.name}", var.secret_key_ref) for var in variables or []
    ]


def backup_secret_env(spec: BackupPolicySpec, key_ids: list[str]) -> list[SecretEnv]:
    """Every secret the backup needs, as Secret key references."""
    env: list[SecretEnv] = []
    if spec.source.command is not None:
        env += command_secret_env(spec.source.command.env)
    elif spec.source.postgres is not None:
        env += [
            SecretEnv("AEGIS_PG_USER", spec.source.postgres.user_secret_ref),
            SecretEnv("AEGIS_PG_PASSWORD", spec.source.postgres.password_secret_ref),
        ]
    elif spec.source.redis is not None:
        if spec.source.redis.username_secret_ref:
            env.append(SecretEnv("AEGIS_REDIS_USER", spec.source.redis.username_secret_ref))
        if spec.source.redis.password_secret_ref:
            env.append(SecretEnv("AEGIS_REDIS_PASSWORD", spec.source.redis.password_secret_ref))
    env += s3_secret_env(spec.storage, "")
    for i, copy in enumerate(spec.copies or []):
        env += s3_secret_env(copy, f"COPY{i}_")
    env += keys.key_secret_env(spec, key_ids, KEY_ENV_PREFIX)
    env += keys.kms_secret_env(spec)
    return env


def backup_job_request(
    point: dict[str, Any],
    spec: BackupPolicySpec,
    key_ids: list[str],
    settings: Settings,
) -> JobRequest:
    """The Job that takes the backup of `point` (a RecoveryPoint object)."""
    meta = point["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    policy = point["spec"]["policyRef"]["name"]
    config = backup_config(spec, namespace, policy, name, settings)
    options = spec.job or JobOptions()
    return JobRequest(
        name=naming.backup_job_name(name),
        namespace=namespace,
        labels=naming.backup_job_labels(policy, name),
        owner=point,
        command=[*settings.agent_command, "backup"],
        args=["--config-json", config.model_dump_json(by_alias=True, exclude_none=True)],
        image=spec.job_image() or settings.agent_image,
        options=options,
        secret_env=backup_secret_env(spec, key_ids),
        mounts=backup_mounts(spec),
    )


# --- outcome ---------------------------------------------------------------------------------

Phase = Literal["Completed", "Failed", "Corrupted"]


@dataclass
class PointOutcome:
    """What the point's status becomes once its Job has ended."""

    phase: Phase
    status: dict[str, Any]
    reason: str
    message: str
    conditions: list[tuple[str, Literal["True", "False"], str, str]] = field(default_factory=list)


def point_status(manifest: Manifest) -> dict[str, Any]:
    """The status fields a manifest proves, with their `display` twins."""
    status = manifest.recovery_point_status()
    status["display"] = display.fields(
        size=display.size(manifest.stored_bytes),
        logicalSize=display.size(manifest.size_bytes),
        duration=display.duration(
            (manifest.completion_time - manifest.start_time).total_seconds()
        ),
    )
    return status


def completed(manifest: Manifest, problems: list[str]) -> PointOutcome:
    """A Job that succeeded: Completed when the manifest proves the payload, else Corrupted."""
    if problems:
        message = "backup Job succeeded but " + "; ".join(problems)
        return PointOutcome(
            phase="Corrupted",
            status={"phase": "Corrupted", "message": message},
            reason="ManifestInconsistent",
            message=message,
            conditions=[("Complete", "False", "ManifestInconsistent", message)],
        )
    status = point_status(manifest)
    duration = (manifest.completion_time - manifest.start_time).total_seconds()
    message = (
        f"{display.size(manifest.stored_bytes)} stored ({display.size(manifest.size_bytes)} "
        f"logical) in {display.duration(duration)}, sha256 {manifest.sha256[:12]}…"
    )
    status.update({"phase": "Completed", "message": message})
    return PointOutcome(
        phase="Completed",
        status=status,
        reason="BackupCompleted",
        message=message,
        conditions=[("Complete", "True", "BackupCompleted", message)],
    )


def missing_manifest(why: str) -> PointOutcome:
    message = f"backup Job succeeded but the manifest is missing or unreadable: {why}"
    return PointOutcome(
        phase="Corrupted",
        status={"phase": "Corrupted", "message": message},
        reason="ManifestMissing",
        message=message,
        conditions=[("Complete", "False", "ManifestMissing", message)],
    )


def agent_reason(termination_message: str | None) -> str | None:
    """The agent's one-line reason from its final JSON result (the pod's termination
    message); plain text is taken as it is."""
    if not termination_message:
        return None
    try:
        result = json.loads(termination_message)
    except json.JSONDecodeError:
        return termination_message.strip().splitlines()[-1][:1024]
    if isinstance(result, dict) and isinstance(result.get("reason"), str):
        return str(result["reason"])
    return None


def failed(
    reason_line: str | None, job_condition_message: str | None, *, reason: str = "BackupFailed"
) -> PointOutcome:
    """A failed backup; `reason` tells an agent error (BackupFailed) from a kill (AgentKilled,
    OOMKilled) or a deadline (DeadlineExceeded)."""
    message = agent_reason(reason_line) or job_condition_message or "the backup Job failed"
    return PointOutcome(
        phase="Failed",
        status={"phase": "Failed", "message": message},
        reason=reason,
        message=message,
        conditions=[("Complete", "False", reason, message)],
    )


def point_ref(spec: BackupPolicySpec, namespace: str, policy: str, point: str) -> PointRef:
    return PointRef(spec.storage.bucket, spec.storage.prefix, namespace, policy, point)


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
