"""Redis restores: the keys of the scratch server (agent/redis_scratch.py) copied into the
target with MIGRATE ... COPY KEYS (server to server) or pipelined DUMP/RESTORE ABSTTL, each
key with its absolute expiry time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aegis.agent.config import RedisTargetConfig
from aegis.agent.errors import AgentError
from aegis.agent.redis_resp import info_text, keyspace_keys
from aegis.agent.scrub import scrub

if TYPE_CHECKING:
    import redis


def target_client(
    cfg: RedisTargetConfig, user: str | None, password: str | None, db: int = 0
) -> redis.Redis:
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    return redis.Redis(
        host=cfg.host,
        port=cfg.port,
        db=db,
        username=user,
        password=password,
        ssl=cfg.tls,
        socket_timeout=60,
    )


def target_keys(cfg: RedisTargetConfig, user: str | None, password: str | None) -> int:
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    client = target_client(cfg, user, password)
    try:
        info = client.info("keyspace")
        return keyspace_keys({k: info_text(v) for k, v in info.items()})
    except redis.RedisError as error:
        raise AgentError(
            f"cannot reach the target Redis at {cfg.host}:{cfg.port}: {scrub(str(error))}",
            kind="ConnectionFailed",
        ) from None
    finally:
        client.close()


# Runs in the scratch server: how many of KEYS exist, then each expiring key with its
# absolute expiry (ms).
_EXPIRY_SCRIPT = """
local present, out = 0, {0}
for _, key in ipairs(KEYS) do
  local at = redis.call('PEXPIRETIME', key)
  if at ~= -2 then present = present + 1 end
  if at > 0 then out[#out + 1] = key; out[#out + 1] = at end
end
out[1] = present
return out
"""

MIGRATE_TIMEOUT_MS = 60_000
"""MIGRATE's limit on one exchange with the target (Redis's own I/O timeout, not a sleep)."""


def replay(
    scratch: redis.Redis,
    cfg: RedisTargetConfig,
    user: str | None,
    password: str | None,
    replace: bool,
    *,
    migrate: bool = True,
) -> int:
    """Copy every key of every db from the scratch server to the target, keeping expiry times.

    Over plain TCP the scratch server sends the keys itself with `MIGRATE ... COPY KEYS`, a
    batch per command: DUMP, transfer and RESTORE run server to server, with no per-key
    round trip through Python (several times faster; see bench/RESULTS.md). To a TLS target,
    or when the target refuses MIGRATE, the agent copies them with pipelined DUMP/RESTORE
    ABSTTL. Returns the number of keys written."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    restored = 0
    info = scratch.info("keyspace")
    use_migrate = migrate and not cfg.tls
    for db_name in sorted(info, key=lambda n: int(n[2:])):
        db = int(db_name[2:])
        pool = scratch.connection_pool  # the scratch server's socket, this db
        source = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class,
                **{**pool.connection_kwargs, "db": db, "socket_timeout": 600},
            )
        )
        target = target_client(cfg, user, password, db)
        try:
            if use_migrate:
                migrated = _migrate_db(source, target, cfg, user, password, db, replace)
                if migrated is None:  # the target refused MIGRATE: copy through the agent
                    use_migrate = False
                else:
                    restored += migrated
                    continue
            restored += _replay_db(source, target, cfg.batch_size, replace)
        except redis.ResponseError as error:
            text = str(error)
            if "BUSYKEY" in text:
                raise AgentError(
                    "a key already exists in the target Redis; set allowOverwrite to replace it",
                    kind="TargetNotEmpty",
                ) from None
            raise AgentError(
                f"RESTORE into the target Redis failed: {scrub(text)}", kind="RestoreFailed"
            ) from None
        except redis.RedisError as error:
            raise AgentError(
                f"replaying keys into the target Redis failed: {scrub(str(error))}",
                kind="RestoreFailed",
            ) from None
        finally:
            source.close()
            target.close()
    return restored


def _migrate_db(
    source: redis.Redis,
    target: redis.Redis,
    cfg: RedisTargetConfig,
    user: str | None,
    password: str | None,
    db: int,
    replace: bool,
) -> int | None:
    """MIGRATE one db's keys in batches; None when the target refuses MIGRATE before any key
    moved (an ACL without RESTORE, a proxy that does not speak it), so the caller falls back."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    auth: list[str] = []
    if password is not None:
        auth = ["AUTH2", user, password] if user else ["AUTH", password]
    restored = 0
    cursor = 0
    first = True
    expiry_script = source.register_script(_EXPIRY_SCRIPT)
    while True:
        cursor, keys = source.scan(cursor=cursor, count=cfg.batch_size)
        if keys:
            # The absolute expiry of each key (-2: expired since the SCAN, so MIGRATE skips
            # it; -1: none). MIGRATE carries the remaining TTL, which lands a few ms later on
            # the target; PEXPIREAT below puts back the exact absolute time of the backup.
            # One script call on our own scratch server answers for the whole batch, so
            # Python parses a reply per expiring key, not per key.
            reply = expiry_script(keys=keys)
            present = int(reply[0])
            expire_at = dict(zip(reply[1::2], (int(at) for at in reply[2::2]), strict=True))
            command: list[str | bytes | int] = [
                "MIGRATE",
                cfg.host,
                cfg.port,
                "",
                db,
                MIGRATE_TIMEOUT_MS,
                "COPY",
            ]
            if replace:
                command.append("REPLACE")
            command += [*auth, "KEYS", *keys]
            try:
                source.execute_command(*command)  # type: ignore[no-untyped-call]
            except redis.ResponseError as error:
                text = str(error)
                if "BUSYKEY" in text and not replace:
                    # Someone wrote one of these keys meanwhile (the target was checked
                    # empty). MIGRATE stops at that key; settle the batch key by key,
                    # keeping theirs, never overwriting.
                    restored += _settle_batch(source, target, keys)
                    first = False
                    continue
                if first and "BUSYKEY" not in text:
                    return None
                raise
            if expire_at:
                write = target.pipeline(transaction=False)
                for key, at in expire_at.items():
                    write.pexpireat(key, at)
                write.execute()
            restored += present
            first = False
        if cursor == 0:
            return restored


def _settle_batch(source: redis.Redis, target: redis.Redis, keys: list[Any]) -> int:
    """After a MIGRATE that stopped at a key the target already held: copy what is missing,
    count what the target holds with exactly the backup's value, leave anything else."""
    read_source = source.pipeline(transaction=False)
    read_target = target.pipeline(transaction=False)
    for key in keys:
        read_source.dump(key)
        read_source.execute_command("PEXPIRETIME", key)  # type: ignore[no-untyped-call]
        read_target.dump(key)
    values, theirs = read_source.execute(), read_target.execute()
    ours, expire_at = values[0::2], [int(at) for at in values[1::2]]
    write = target.pipeline(transaction=False)
    settled = 0
    for key, payload, held, at in zip(keys, ours, theirs, expire_at, strict=True):
        if payload is None or at == -2:
            continue  # expired in the scratch server
        if held is None:
            write.restore(key, max(at, 0), payload, absttl=at > 0)
        elif held == payload:
            if at > 0:
                write.pexpireat(key, at)  # MIGRATE copied it with a relative TTL
        else:
            continue  # theirs: kept
        settled += 1
    write.execute()
    return settled


def _replay_db(source: redis.Redis, target: redis.Redis, batch: int, replace: bool) -> int:
    restored = 0
    cursor = 0
    while True:
        cursor, keys = source.scan(cursor=cursor, count=batch)
        if keys:
            restored += _replay_keys(source, target, keys, replace)
        if cursor == 0:
            return restored


def _replay_keys(source: redis.Redis, target: redis.Redis, keys: list[Any], replace: bool) -> int:
    """DUMP + PEXPIRETIME from the scratch server, RESTORE ... ABSTTL into the target, each
    side one pipelined round trip. A key the target already holds is kept unless `replace`."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    read = source.pipeline(transaction=False)
    for key in keys:
        read.dump(key)
        read.execute_command("PEXPIRETIME", key)  # type: ignore[no-untyped-call]
    values = read.execute()
    write = target.pipeline(transaction=False)
    queued = 0
    for i, key in enumerate(keys):
        payload, expire_at = values[2 * i], int(values[2 * i + 1])
        if payload is None or expire_at == -2:
            continue  # expired or removed since the scan
        if expire_at > 0:
            write.restore(key, expire_at, payload, replace=replace, absttl=True)
        else:
            write.restore(key, 0, payload, replace=replace)
        queued += 1
    for reply in write.execute(raise_on_error=False):
        if isinstance(reply, redis.ResponseError):
            # The target was checked empty; BUSYKEY now means SCAN returned a key twice or
            # someone wrote it meanwhile: keep theirs, never overwrite unasked.
            if "BUSYKEY" in str(reply) and not replace:
                queued -= 1
                continue
            raise reply
    return queued
