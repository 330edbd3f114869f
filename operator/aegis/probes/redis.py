"""Redis check: PING, the replication state from INFO replication (role, and for a replica
its link status, the offset it has processed and seconds since the last interaction with
its master), and the role when one is expected. Also the client the Redis steps share."""

from __future__ import annotations

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from aegis.api.common import RedisTarget
from aegis.api.failoverplan import RedisCheck
from aegis.probes.base import CheckResult, Replication, SecretReader, timed


def redis_client(target: RedisTarget, secrets: SecretReader | None, timeout: float,
                 known: list[str]) -> redis_py.Redis:
    """A client with one attempt per command (a retry would stretch beyond `timeout`);
    the password it read is appended to `known` for scrubbing."""
    password = username = None
    if target.password_secret_ref is not None or target.username_secret_ref is not None:
        if secrets is None:
            raise ValueError("credentials are Secret references but no Secret reader was given")
        if target.password_secret_ref is not None:
            password = secrets.value(target.password_secret_ref)
            known.append(password)
        if target.username_secret_ref is not None:
            username = secrets.value(target.username_secret_ref)
    return redis_py.Redis(
        host=target.host,
        port=target.port,
        db=target.db or 0,
        username=username,
        password=password,
        ssl=target.tls,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def replication_of(info: dict[str, object]) -> Replication:
    """Replication from INFO replication. A master's position is master_repl_offset; a
    replica's is the offset it has processed (slave_repl_offset), which it keeps after
    the link broke."""
    role = str(info.get("role", "unknown"))
    if role == "master":
        return Replication("redis", "primary", _int(info.get("master_repl_offset")))
    age = info.get("master_last_io_seconds_ago")
    age_seconds = float(str(age)) if age is not None and float(str(age)) >= 0 else None
    return Replication(
        "redis", "replica", _int(info.get("slave_repl_offset")),
        streaming=info.get("master_link_status") == "up", last_message_age_seconds=age_seconds,
    )


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


def check_redis(
    name: str, spec: RedisCheck, secrets: SecretReader | None, timeout: float
) -> CheckResult:
    """PING `spec`'s server, read its replication state and compare its role; never raises."""
    known: list[str] = []
    seen: list[Replication] = []

    def run() -> tuple[bool, str]:
        client = redis_client(spec, secrets, timeout, known)
        try:
            if not client.ping():
                return False, "PING got no PONG"
            info = client.info("replication")
        finally:
            client.close()
        role = str(info.get("role", "unknown"))
        replication = replication_of(info)
        seen.append(replication)
        where = f"{spec.host}:{spec.port}"
        if spec.role is not None and role != spec.role:
            return False, f"{where} role is {role}, expected {spec.role}"
        if replication.role == "replica":
            link = "link up" if replication.streaming else "link DOWN"
            return True, f"{where} PONG, role {role}, {link}, offset {replication.position}"
        return True, f"{where} PONG, role {role}, offset {replication.position}"

    return timed(name, run, known, seen)
