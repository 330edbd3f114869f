"""`aegis agent drill`: restore a recovery point into a scratch server started here (or into
a given target), run the checks, throw the scratch server away, and report what each phase
took, with wall-clock instants the operator can line up with the run's start.

The restore itself is `aegis agent restore`'s code path (one authenticated pass, the same
safety rules for a given target): a drill proves exactly what a real restore does.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import model_validator

from aegis.agent import restore
from aegis.agent.checks import CheckOutcome, parse_checks, run_checks
from aegis.agent.config import (
    Common,
    PostgresTargetConfig,
    RedisTargetConfig,
    RestoreConfig,
    StoreConfig,
    postgres_credentials,
    redis_credentials,
)
from aegis.agent.crypto import Keyring
from aegis.agent.log import log
from aegis.agent.s3 import make_client
from aegis.agent.scratch import (
    DATABASE,
    LOCALHOST,
    SCRATCH_USER,
    ScratchPostgres,
    ScratchRedisServer,
)


class DrillConfig(Common):
    """`aegis agent drill`."""

    manifest: str
    """s3:// URL of the point's manifest."""
    storage: StoreConfig
    """The bucket (and endpoint, region, credentials) to read from."""
    kind: Literal["postgres", "redis"]
    """What the point holds (and so what scratch server to start)."""
    postgres_major: int = 0
    """Major version of the PostgreSQL the point was dumped from: the scratch server is that
    major, or the oldest newer one installed."""
    postgres: PostgresTargetConfig | None = None
    """Restore into this PostgreSQL instead of a scratch server."""
    redis: RedisTargetConfig | None = None
    """Restore into this Redis instead of a scratch server."""
    checks: list[dict[str, Any]] | None = None
    """Checks that must pass (the drill's spec.restore.verify)."""
    work_dir: str | None = None
    """Where scratch servers keep their files (an emptyDir); default the temp dir."""

    @model_validator(mode="after")
    def _target_matches(self) -> DrillConfig:
        if self.postgres is not None and self.redis is not None:
            raise ValueError("target: set at most one of postgres or redis")
        given = "postgres" if self.postgres else "redis" if self.redis else None
        if given is not None and given != self.kind:
            raise ValueError(f"target: a {self.kind} point cannot be restored into {given}")
        return self


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _wire(time_: dt.datetime) -> str:
    # Sub-second precision: the operator subtracts these from the run's start.
    return time_.isoformat().replace("+00:00", "Z")


def run_drill(
    cfg: DrillConfig, env: dict[str, str], keyring_loader: Callable[[], Keyring]
) -> dict[str, Any]:
    agent_started = _now()
    checks = parse_checks(cfg.checks, "checks") if cfg.checks is not None else []
    clock = time.monotonic()
    scratch: ScratchPostgres | ScratchRedisServer | None = None
    restore_env = dict(env)
    try:
        postgres, redis = cfg.postgres, cfg.redis
        if cfg.kind == "postgres" and postgres is None:
            pg_scratch = ScratchPostgres(cfg.postgres_major, cfg.work_dir, env)
            scratch = pg_scratch.start()
            postgres = PostgresTargetConfig(
                host=LOCALHOST,
                port=pg_scratch.port,
                database=DATABASE,
                ssl_mode="disable",
                bin_dir=str(pg_scratch.bin_dir),
            )
            restore_env.update({"AEGIS_PG_USER": SCRATCH_USER})
            restore_env.pop("AEGIS_PG_PASSWORD", None)
            log(f"scratch PostgreSQL {pg_scratch.major} up on {LOCALHOST}:{pg_scratch.port}")
        elif cfg.kind == "redis" and redis is None:
            redis_scratch = ScratchRedisServer(cfg.work_dir)
            scratch = redis_scratch.start()
            redis = RedisTargetConfig(host=LOCALHOST, port=redis_scratch.port)
            for name in ("AEGIS_REDIS_USER", "AEGIS_REDIS_PASSWORD", "REDISCLI_AUTH"):
                restore_env.pop(name, None)
            log(f"scratch redis-server up on {LOCALHOST}:{redis_scratch.port}")
        scratch_seconds = time.monotonic() - clock
        restore_cfg = RestoreConfig(
            manifest=cfg.manifest,
            storage=cfg.storage,
            postgres=postgres,
            redis=redis,
            # A given target gets a Restore's safety: a non-empty one is refused.
            allow_overwrite=False,
            work_dir=cfg.work_dir,
            keys_dir=cfg.keys_dir,
            kms_keys=cfg.kms_keys,
            tuning=cfg.tuning,
            progress_seconds=cfg.progress_seconds,
        )
        restored = restore.run_restore(restore_cfg, restore_env, keyring_loader)
        checks_started = time.monotonic()
        outcomes = _run_checks(restore_cfg, restore_env, checks)
        checks_ended = _now()
        checks_seconds = time.monotonic() - checks_started
    finally:
        if scratch is not None:
            scratch.close()
    failed = [o for o in outcomes if o.result != "Passed"]
    result: dict[str, Any] = {
        "ok": not failed,
        "command": "drill",
        "recoveryPoint": restored.get("recoveryPoint"),
        "location": restored.get("location"),
        "sourceTime": restored.get("sourceTime"),
        "restoredBytes": restored.get("restoredBytes"),
        "scratch": scratch is not None,
        "agentStartTime": _wire(agent_started),
        "checksEndTime": _wire(checks_ended),
        "phases": {
            "scratchSeconds": round(scratch_seconds, 3),
            "downloadAuthenticateSeconds": restored.get("verifySeconds"),
            "restoreSeconds": restored.get("restoreSeconds"),
            "checksSeconds": round(checks_seconds, 3),
        },
        "durationSeconds": round((checks_ended - agent_started).total_seconds(), 3),
        "checks": [o.to_wire() for o in outcomes],
    }
    if "restoredKeys" in restored:
        result["restoredKeys"] = restored["restoredKeys"]
    if failed:
        result["kind"] = "CheckFailed"
        result["reason"] = "; ".join(
            f"check {o.name} {o.result.lower()}" + (f" ({o.message})" if o.message else "")
            for o in failed
        )
    return result


def _run_checks(cfg: RestoreConfig, env: dict[str, str], checks: list[Any]) -> list[CheckOutcome]:
    """The checks, timed apart from the restore (the restore ran without them). Same query
    code as a Restore's checks; `matchesBackup` compares with the manifest's row counts."""
    if not checks:
        return []
    client = make_client(cfg.storage, env, max_attempts=cfg.tuning.s3_max_attempts)
    bucket, key = restore.manifest_location(cfg)
    manifest = restore.load_manifest(client, bucket, key)
    if cfg.postgres is not None:
        user, password = postgres_credentials(env)
        return run_checks(
            checks,
            restore._pg_query(cfg.postgres, user, password),
            restore._pg_row_counter(cfg.postgres, user, password),
            manifest.table_rows(),
        )
    assert cfg.redis is not None
    user, password = redis_credentials(env)
    return run_checks(checks, restore._redis_query(cfg.redis, user, password), None, None)
