"""The agent's configuration contract: JSON models (for `--config`, e.g. from a ConfigMap),
the flags that set the same fields, and the environment variables that carry secrets.

Precedence: flags > `--config` file > defaults. Secrets come only from env (or mounted
files): never from flags or the config file. docs/agent.md documents every field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from aegis.agent.compress import Compression, parse_compression
from aegis.agent.scrub import SCRUBBER
from aegis.agent.wire import ObjectLock, Port, ServerSideEncryption, SSLMode, WireModel

MiB = 1 << 20


class ConfigError(ValueError):
    """Bad configuration; the message names the field and the fix."""


class StoreConfig(WireModel):
    """A bucket and how to write to it (mirrors the API's S3Location)."""

    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    """Bucket name."""
    prefix: str = ""
    """Key prefix inside the bucket."""
    region: str | None = None
    """AWS region; absent uses AWS_REGION / AWS_DEFAULT_REGION or us-east-1."""
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """S3-compatible endpoint; absent uses AEGIS_S3_ENDPOINT, AWS_ENDPOINT_URL_S3 or AWS."""
    storage_class: str | None = None
    """Storage class of written objects."""
    server_side_encryption: ServerSideEncryption | None = None
    """Server-side encryption of written objects."""
    object_lock: ObjectLock | None = None
    """Object Lock retention of written objects."""
    credentials_env_prefix: Annotated[str, Field(pattern=r"^[A-Z0-9_]*$")] = ""
    """Read <prefix>AWS_ACCESS_KEY_ID / <prefix>AWS_SECRET_ACCESS_KEY / <prefix>AWS_SESSION_TOKEN;
    unset variables mean ambient credentials (IRSA, instance profile)."""
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    """Bucket addressing; absent: path style with a custom endpoint, else auto."""


class KmsKeyConfig(WireModel):
    """An AWS KMS key that wraps the data key (mirrors the API's KmsKey)."""

    key_id: Annotated[str, Field(min_length=1, max_length=2048)]
    """Key id, key ARN, alias ARN or alias/name."""
    region: str | None = None
    """Region of the key; absent: the ARN's, else AWS_REGION, else us-east-1."""
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """KMS endpoint; absent uses AEGIS_KMS_ENDPOINT, AWS_ENDPOINT_URL_KMS or AWS."""
    credentials_env_prefix: Annotated[str, Field(pattern=r"^[A-Z0-9_]*$")] = ""
    """Read <prefix>AWS_ACCESS_KEY_ID / <prefix>AWS_SECRET_ACCESS_KEY; unset: ambient
    credentials (IRSA web identity, instance profile)."""


class PostgresSourceConfig(WireModel):
    host: Annotated[str, Field(min_length=1)]
    """Server host."""
    port: Port = 5432
    """Server port."""
    database: Annotated[str, Field(min_length=1)]
    """Database to dump."""
    ssl_mode: SSLMode = "prefer"
    """libpq sslmode."""
    schemas: list[str] | None = None
    """pg_dump --schema patterns."""
    exclude_tables: list[str] | None = None
    """pg_dump --exclude-table patterns."""
    exclude_table_data: list[str] | None = None
    """pg_dump --exclude-table-data patterns."""
    bin_dir: str | None = None
    """Directory of pg_dump/pg_restore; absent picks /usr/lib/postgresql/<major>/bin."""


class RedisSourceConfig(WireModel):
    host: Annotated[str, Field(min_length=1)]
    """Server host."""
    port: Port = 6379
    """Server port."""
    tls: bool = False
    """Connect with TLS."""
    method: Literal["Sync", "Bgsave"] = "Sync"
    """Sync: the snapshot a replica receives. Bgsave: BGSAVE, then read rdbPath."""
    rdb_path: str | None = None
    """The server's dump.rdb as mounted in the Job (Bgsave)."""
    diskless: bool = True
    """Sync: announce `capa eof`, as replicas and `redis-cli --rdb` do, so a master with
    `repl-diskless-sync yes` (Redis 7's default) streams the RDB without writing it to its disk;
    it first waits `repl-diskless-sync-delay` (default 5 s) for other replicas. False asks for
    the disk-based transfer: no wait, but the master writes the RDB to its disk first."""
    bgsave_timeout_seconds: Annotated[float, Field(gt=0)] = 3600
    """How long to wait for BGSAVE to finish."""

    @model_validator(mode="after")
    def _rdb_path_for_bgsave(self) -> RedisSourceConfig:
        if self.method == "Bgsave" and not self.rdb_path:
            raise ValueError(
                "redis.rdbPath: method Bgsave needs the mounted dump.rdb path (--rdb-path)"
            )
        return self


COMMAND_ENV_PREFIX = "AEGIS_CMDENV_"
"""The Job carries a command's variable NAME as AEGIS_CMDENV_NAME (from its Secret); the
agent hands it to the command as NAME, so it never changes the agent's own environment."""
Argv = Annotated[list[str], Field(min_length=1)]


class CommandSourceConfig(WireModel):
    """A dump command whose stdout is the backup (agent/command.py)."""

    dump: Argv
    """The dump command (argument vector)."""
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = []
    """Variables handed to the command, read from AEGIS_CMDENV_<name>."""
    database: str | None = None
    """Label recorded as the manifest's source.database."""


class CommandTargetConfig(WireModel):
    """A restore command reading the dump on stdin (agent/command.py)."""

    restore: Argv
    """The restore command (argument vector)."""
    empty_check: Argv | None = None
    """Prints the number of objects in the target (last line); 0 means empty."""
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = []
    """Variables handed to the commands, read from AEGIS_CMDENV_<name>."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 600
    """Limit of each emptyCheck and check command."""


class TuningConfig(WireModel):
    chunk_size: Annotated[int, Field(ge=4096, le=64 * MiB)] = MiB
    """Plaintext bytes per encrypted chunk."""
    part_size: Annotated[int, Field(ge=5 * MiB, le=1024 * MiB)] = 6 * MiB
    """Size of the first 1000 S3 parts; doubles every 1000 parts. Memory for parts is about
    (uploadConcurrency + 2) x partSize."""
    upload_concurrency: Annotated[int, Field(ge=1, le=32)] = 3
    """Parts uploaded at the same time."""
    read_size: Annotated[int, Field(ge=4096, le=64 * MiB)] = MiB
    """Bytes read from the source per call."""
    compression_level: int | None = None
    """zstd 1-19 (default 1) or gzip 1-9 (default 6)."""
    compression_threads: Annotated[int, Field(ge=-1, le=64)] = 0
    """zstd worker threads; 0 (default): compress in the agent's own thread; -1: one per core.
    Each worker costs about 25 MiB of buffers; it pays off only with spare cores."""
    s3_max_attempts: Annotated[int, Field(ge=1, le=20)] = 6
    """botocore attempts per request (standard retry mode: backoff on throttling and 5xx)."""


class Common(WireModel):
    keys_dir: str | None = None
    """Directory of key files (one per key id); default AEGIS_KEYS_DIR or /etc/aegis/keys."""
    kms_keys: list[KmsKeyConfig] = []
    """AWS KMS keys: a backup wraps its data key for each; restore and verify use them (and
    any KMS wrap in the manifest, with ambient credentials) when no Secret key opens it."""
    tuning: TuningConfig = TuningConfig()
    """Performance knobs."""
    progress_seconds: Annotated[float, Field(ge=0)] = 5.0
    """Interval of progress log lines; 0 disables them."""
    result_file: str | None = None
    """Also write the final JSON result here (e.g. /dev/termination-log)."""


class BackupConfig(Common):
    """`aegis agent backup`."""

    namespace: Annotated[str, Field(min_length=1)]
    """Namespace of the policy (a path segment of the layout)."""
    policy: Annotated[str, Field(min_length=1)]
    """BackupPolicy name."""
    recovery_point: Annotated[str, Field(min_length=1)]
    """RecoveryPoint name."""
    postgres: PostgresSourceConfig | None = None
    """A PostgreSQL source."""
    redis: RedisSourceConfig | None = None
    """A Redis source."""
    command: CommandSourceConfig | None = None
    """A dump command."""
    storage: StoreConfig
    """Where the backup is written."""
    copies: list[StoreConfig] = []
    """Further buckets the payload and manifest are copied to."""
    compression: Compression = "Zstd"
    """Zstd, Gzip or None."""
    key_secret: bool | None = None
    """Wrap the data key for the newest key of the keyring (the policy's key Secret). None:
    when a keyring is available, and required when no kmsKeys are given."""

    @model_validator(mode="before")
    @classmethod
    def _normalize_compression(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("compression"), str):
            data = {**data, "compression": parse_compression(data["compression"])}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> BackupConfig:
        if [self.postgres, self.redis, self.command].count(None) != 2:
            raise ValueError("source: set exactly one of postgres, redis or command (--source)")
        return self


class PostgresTargetConfig(WireModel):
    host: Annotated[str, Field(min_length=1)]
    """Server host."""
    port: Port = 5432
    """Server port."""
    database: Annotated[str, Field(min_length=1)]
    """Database to restore into."""
    ssl_mode: SSLMode = "prefer"
    """libpq sslmode."""
    create_database: bool = False
    """Create the database when it does not exist."""
    keep_owner: bool = False
    """Restore owners and privileges (the roles must exist); default --no-owner --no-acl."""
    bin_dir: str | None = None
    """Directory of pg_restore; absent picks /usr/lib/postgresql/<major>/bin."""


class RedisTargetConfig(WireModel):
    host: Annotated[str, Field(min_length=1)]
    """Server host."""
    port: Port = 6379
    """Server port."""
    tls: bool = False
    """Connect with TLS."""
    db: Annotated[int, Field(ge=0)] = 0
    """Logical database the Redis checks query (the restore itself covers every db)."""
    batch_size: Annotated[int, Field(ge=1, le=100000)] = 1000
    """Keys per pipelined DUMP/RESTORE batch."""
    redis_server: str = "redis-server"
    """The redis-server binary that loads the RDB inside the Job."""


class RestoreConfig(Common):
    """`aegis agent restore`."""

    manifest: str | None = None
    """s3:// URL of the manifest (or of the point's directory); or give namespace, policy and
    recoveryPoint with storage."""
    namespace: str | None = None
    """Namespace of the policy."""
    policy: str | None = None
    """BackupPolicy name."""
    recovery_point: str | None = None
    """RecoveryPoint name."""
    storage: StoreConfig
    """The bucket (and endpoint, region, credentials) to read from."""
    postgres: PostgresTargetConfig | None = None
    """A PostgreSQL target."""
    redis: RedisTargetConfig | None = None
    """A Redis target."""
    command: CommandTargetConfig | None = None
    """A restore command."""
    allow_overwrite: bool = False
    """Allow a non-empty target (PostgreSQL: --clean --if-exists; Redis: RESTORE ... REPLACE)."""
    checks: list[dict[str, Any]] | None = None
    """Verification checks (the Restore's spec.verify), run after the restore."""
    work_dir: str | None = None
    """Scratch directory (Redis: the RDB for the temporary server); default the temp dir."""

    @model_validator(mode="after")
    def _one_target(self) -> RestoreConfig:
        if [self.postgres, self.redis, self.command].count(None) != 2:
            raise ValueError("target: set exactly one of postgres, redis or command (--target)")
        if self.manifest is None and not (self.namespace and self.policy and self.recovery_point):
            raise ValueError(
                "manifest: give --manifest s3://..., or --namespace, --policy and --point"
            )
        return self


class LocationConfig(Common):
    """`aegis agent verify` and `aegis agent catalog`."""

    location: str
    """s3:// URL: a manifest or point directory (verify), a bucket/prefix (catalog)."""
    storage: StoreConfig
    """Endpoint, region and credentials of the bucket."""


# --- loading ---------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"storage.bucket": "b"}` → `{"storage": {"bucket": "b"}}`; None values dropped."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        if value is None:
            continue
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def read_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--config {path}: not valid JSON ({error.msg} at line {error.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must be a JSON object")
    return data


def read_config_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--config-json: not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("--config-json: must be a JSON object")
    return data


def validation_reason(error: ValidationError) -> str:
    """The first problem, as `config: <field.path>: <message>`."""
    first = error.errors()[0]
    field = ".".join(to_camel(str(p)) if isinstance(p, str) else str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"config: {field}: {message}" if field else f"config: {message}"


def default_endpoint(env: dict[str, str]) -> str | None:
    return env.get("AEGIS_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or None


# --- secrets from env ------------------------------------------------------------------------


def _secret(env: dict[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            SCRUBBER.add(value)
            return value
    return None


def _secret_file(env: dict[str, str], name: str) -> str | None:
    path = env.get(name)
    if not path:
        return None
    try:
        value = Path(path).read_text().rstrip("\n")
    except OSError as error:
        raise ConfigError(f"{name}={path}: cannot read it ({error.strerror})") from None
    SCRUBBER.add(value)
    return value


def postgres_credentials(env: dict[str, str]) -> tuple[str | None, str | None]:
    """User and password: AEGIS_PG_USER/AEGIS_PG_PASSWORD, PGUSER/PGPASSWORD, or *_FILE."""
    user = env.get("AEGIS_PG_USER") or env.get("PGUSER") or _secret_file(env, "AEGIS_PG_USER_FILE")
    password = _secret(env, "AEGIS_PG_PASSWORD", "PGPASSWORD") or _secret_file(
        env, "AEGIS_PG_PASSWORD_FILE"
    )
    return user, password


def redis_credentials(env: dict[str, str]) -> tuple[str | None, str | None]:
    """ACL user and password: AEGIS_REDIS_USER, AEGIS_REDIS_PASSWORD or REDISCLI_AUTH."""
    user = env.get("AEGIS_REDIS_USER") or _secret_file(env, "AEGIS_REDIS_USER_FILE")
    password = _secret(env, "AEGIS_REDIS_PASSWORD", "REDISCLI_AUTH") or _secret_file(
        env, "AEGIS_REDIS_PASSWORD_FILE"
    )
    return user, password


def aws_credentials(env: dict[str, str], prefix: str) -> dict[str, str]:
    """boto3 client kwargs for explicit credentials, or {} for ambient ones."""
    key_id = env.get(f"{prefix}AWS_ACCESS_KEY_ID")
    secret = _secret(env, f"{prefix}AWS_SECRET_ACCESS_KEY")
    token = _secret(env, f"{prefix}AWS_SESSION_TOKEN")
    if not key_id or not secret:
        return {}
    creds = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    if token:
        creds["aws_session_token"] = token
    return creds


def register_env_secrets(env: dict[str, str]) -> None:
    """Register every secret-carrying variable with the scrubber up front."""
    for name, value in env.items():
        if value and any(
            word in name for word in ("PASSWORD", "SECRET", "TOKEN", "AUTH", "AEGIS_KEY")
        ):
            SCRUBBER.add(value)


def environ() -> dict[str, str]:
    return dict(os.environ)
