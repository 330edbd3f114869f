"""PostgreSQL check (connect, `SELECT 1`, and for `writable` a primary that takes writes),
its view of replication, plus the connection helper the failover steps share.

Replication as seen by one check (the plan compares the two sites, see
`aegis.reconcilers.failover.next_replication`):
- a primary reports its current WAL position and whether it is fenced (read-only);
- a standby reports the last WAL position it received and flushed (the server keeps it
  after the link broke, so a standby whose replication stopped days ago still shows how far
  it got), whether its WAL receiver is streaming, and the age of the last message from the
  primary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import psycopg

from aegis.api.common import PostgresTarget
from aegis.api.failoverplan import PostgresCheck
from aegis.probes.base import CheckResult, Replication, SecretReader, timed


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


def _int(value: object) -> int | None:
    return None if value is None else int(float(str(value)))


def replication_of(conn: psycopg.Connection[tuple[object, ...]]) -> Replication:
    """The server's replication state, read in one round trip."""
    row = conn.execute(
        "SELECT pg_is_in_recovery(),"
        " CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')"
        "  ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END,"
        " current_setting('default_transaction_read_only') = 'on',"
        " (SELECT status FROM pg_stat_wal_receiver LIMIT 1),"
        " (SELECT extract(epoch FROM now() - last_msg_receipt_time)"
        "  FROM pg_stat_wal_receiver LIMIT 1)"
    ).fetchone()
    assert row is not None
    recovering, position, read_only, receiver, age = row
    if not recovering:
        return Replication("postgres", "primary", _int(position), read_only=bool(read_only))
    return Replication(
        "postgres", "replica", _int(position), streaming=receiver == "streaming",
        last_message_age_seconds=None if age is None else max(0.0, float(str(age))),
    )


def describe(replication: Replication) -> str:
    if replication.role == "primary":
        fenced = ", read-only (fenced)" if replication.read_only else ""
        return f"primary at {replication.position}{fenced}"
    link = "streaming" if replication.streaming else "NOT streaming"
    age = replication.last_message_age_seconds
    since = f", last message {age:.1f}s ago" if age is not None else ""
    return f"standby, {link}, received up to {replication.position}{since}"


def check_postgres(
    name: str, spec: PostgresCheck, secrets: SecretReader | None, timeout: float
) -> CheckResult:
    """Connect, `SELECT 1`, read replication state, and with `writable` require a primary
    that takes writes (not in recovery, not fenced read-only); never raises."""
    known: list[str] = []
    seen: list[Replication] = []

    def run() -> tuple[bool, str]:
        if secrets is None:
            return False, "credentials are Secret references but no Secret reader was given"
        endpoint = PgEndpoint.resolve(spec, secrets)
        known.append(endpoint.password)
        with pg_connect(endpoint, timeout) as conn:
            conn.execute("SELECT 1").fetchone()
            replication = replication_of(conn)
        seen.append(replication)
        state = describe(replication)
        if spec.writable and replication.role == "replica":
            return False, f"{endpoint.where} is a standby (in recovery), expected writable"
        if spec.writable and replication.read_only:
            return False, (f"{endpoint.where} is read-only (default_transaction_read_only = on, "
                           "fenced), expected writable")
        return True, f"{endpoint.where} answers, {state}"

    return timed(name, run, known, seen)
