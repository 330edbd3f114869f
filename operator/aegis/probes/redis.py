"""Redis check: PING, and the replication role from INFO replication when one is expected."""

from __future__ import annotations

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from aegis.api.failoverplan import RedisCheck
from aegis.probes.base import CheckResult, SecretReader, timed


def check_redis(
    name: str, spec: RedisCheck, secrets: SecretReader | None, timeout: float
) -> CheckResult:
    """PING `spec`'s server and compare its role; never raises."""
    known: list[str] = []

    def run() -> tuple[bool, str]:
        password = username = None
        if spec.password_secret_ref is not None or spec.username_secret_ref is not None:
            if secrets is None:
                return False, "credentials are Secret references but no Secret reader was given"
            if spec.password_secret_ref is not None:
                password = secrets.value(spec.password_secret_ref)
                known.append(password)
            if spec.username_secret_ref is not None:
                username = secrets.value(spec.username_secret_ref)
        client = redis_py.Redis(
            host=spec.host,
            port=spec.port,
            db=spec.db or 0,
            username=username,
            password=password,
            ssl=spec.tls,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # one attempt: a retry would stretch the check beyond timeoutSeconds
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if not client.ping():
                return False, "PING got no PONG"
            role = str(client.info("replication").get("role", "unknown"))
        finally:
            client.close()
        where = f"{spec.host}:{spec.port}"
        if spec.role is not None and role != spec.role:
            return False, f"{where} role is {role}, expected {spec.role}"
        return True, f"{where} PONG, role {role}"

    return timed(name, run, known)
