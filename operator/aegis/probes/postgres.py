"""PostgreSQL check (connect, `SELECT 1`, and for `writable` not in recovery), plus the
connection helper the failover steps share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import psycopg

from aegis.api.common import PostgresTarget
from aegis.api.failoverplan import PostgresCheck
from aegis.probes.base import CheckResult, SecretReader, timed


@dataclass(frozen=True)
class PgEndpoint:
    """A PostgreSQL server with its credentials resolved. `repr` hides the password."""

    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    sslmode: str = "prefer"

    @classmethod
    def resolve(cls, target: PostgresTarget, secrets: SecretReader) -> PgEndpoint:
        return cls(
            host=target.host,
            port=target.port,
            dbname=target.database,
            user=secrets.value(target.user_secret_ref),
            password=secrets.value(target.password_secret_ref),
            sslmode=target.ssl_mode,
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"


def pg_connect(endpoint: PgEndpoint, timeout: float) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection whose connect and every statement are bounded by `timeout`
    (libpq rounds connect_timeout up to whole seconds, at least 2)."""
    statement_ms = max(1, int(timeout * 1000))
    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        dbname=endpoint.dbname,
        user=endpoint.user,
        password=endpoint.password,
        sslmode=endpoint.sslmode,
        connect_timeout=max(2, math.ceil(timeout)),
        autocommit=True,
        application_name="aegis",
        options=f"-c statement_timeout={statement_ms}",
    )


def in_recovery(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def check_postgres(
    name: str, spec: PostgresCheck, secrets: SecretReader | None, timeout: float
) -> CheckResult:
    """Connect, `SELECT 1`, and with `writable` require a primary; never raises."""
    known: list[str] = []

    def run() -> tuple[bool, str]:
        if secrets is None:
            return False, "credentials are Secret references but no Secret reader was given"
        endpoint = PgEndpoint.resolve(spec, secrets)
        known.append(endpoint.password)
        with pg_connect(endpoint, timeout) as conn:
            conn.execute("SELECT 1").fetchone()
            recovering = in_recovery(conn)
        role = "standby (in recovery)" if recovering else "primary"
        if spec.writable and recovering:
            return False, f"{endpoint.where} is a standby (in recovery), expected writable"
        return True, f"{endpoint.where} answers, {role}"

    return timed(name, run, known)
