"""PostgreSQL: consistent dumps (snapshot export + per-table row counts + pg_dump --snapshot)
and restores (pg_restore into an empty or, when allowed, cleaned database)."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from aegis.agent.config import PostgresSourceConfig, PostgresTargetConfig
from aegis.agent.errors import AgentError
from aegis.agent.log import log
from aegis.agent.manifest import SourceRecord, TableRows
from aegis.agent.pgtools import Tool, dumped_with_data, pick_tool
from aegis.agent.procs import Child, StdinFeed, widen_pipe
from aegis.agent.scrub import scrub

APP_NAME = "aegis-agent"

LIST_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND c.relpersistence <> 't'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

USER_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""


def conninfo(
    host: str, port: int, database: str, ssl_mode: str, user: str | None, password: str | None
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": host,
        "port": port,
        "dbname": database,
        "sslmode": ssl_mode,
        "application_name": APP_NAME,
        "connect_timeout": 15,
    }
    if user:
        info["user"] = user
    if password:
        info["password"] = password
    return info


def libpq_env(
    base: dict[str, str],
    host: str,
    port: int,
    database: str,
    ssl_mode: str,
    user: str | None,
    password: str | None,
    tool: str,
) -> dict[str, str]:
    """Environment for pg_dump / pg_restore: the password travels in env, never in args."""
    env = {k: v for k, v in base.items() if not k.startswith("PG")}
    env.update(
        {
            "PGHOST": host,
            "PGPORT": str(port),
            "PGDATABASE": database,
            "PGSSLMODE": ssl_mode,
            "PGAPPNAME": f"{APP_NAME}/{tool}",
            "PGCONNECT_TIMEOUT": "15",
        }
    )
    if user:
        env["PGUSER"] = user
    if password:
        env["PGPASSWORD"] = password
    return env


def connect(info: dict[str, Any], what: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(**info, autocommit=autocommit)
    except psycopg.OperationalError as error:
        raise AgentError(
            f"cannot connect to PostgreSQL {what} at {info['host']}:{info['port']}"
            f"/{info['dbname']}: {_first_line(error)}",
            kind="ConnectionFailed",
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return scrub(text[0] if text else type(error).__name__)


@dataclass
class PostgresDump:
    """One consistent dump: `start` exports a snapshot and starts pg_dump on it; `chunks`
    streams the archive; `finish` checks pg_dump's exit and returns the source record."""

    cfg: PostgresSourceConfig
    user: str | None
    password: str | None
    env: dict[str, str]
    read_size: int = 1 << 20
    conn: psycopg.Connection[Any] | None = None
    child: Child | None = None
    tool: Tool | None = None
    snapshot_time: dt.datetime | None = None
    server_version: str = ""
    position: str | None = None
    tables: list[tuple[str, str]] = field(default_factory=list)
    counts: list[TableRows] = field(default_factory=list)
    _count_error: BaseException | None = None
    _counter: threading.Thread | None = None

    def start(self) -> None:
        cfg = self.cfg
        info = conninfo(cfg.host, cfg.port, cfg.database, cfg.ssl_mode, self.user, self.password)
        self.conn = conn = connect(info, "source")
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute(
            "SELECT pg_export_snapshot(), current_setting('server_version'), "
            "current_setting('server_version_num')::int, clock_timestamp(), "
            "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
            "ELSE pg_current_wal_lsn() END::text"
        ).fetchone()
        assert row is not None
        snapshot, self.server_version, version_num, self.snapshot_time, self.position = row
        self.server_version = str(self.server_version).split()[0]
        self.tables = [
            (schema, name)
            for schema, name in conn.execute(LIST_TABLES).fetchall()
            if dumped_with_data(
                schema, name, cfg.schemas, cfg.exclude_tables, cfg.exclude_table_data
            )
        ]
        self.tool = pick_tool("pg_dump", version_num // 10000, cfg.bin_dir)
        args = [
            str(self.tool.path),
            "--format=custom",
            "--compress=0",
            "--no-password",
            f"--snapshot={snapshot}",
            f"--dbname={cfg.database}",
        ]
        for pattern in cfg.schemas or []:
            args.append(f"--schema={pattern}")
        for pattern in cfg.exclude_tables or []:
            args.append(f"--exclude-table={pattern}")
        for pattern in cfg.exclude_table_data or []:
            args.append(f"--exclude-table-data={pattern}")
        env = libpq_env(
            self.env,
            cfg.host,
            cfg.port,
            cfg.database,
            cfg.ssl_mode,
            self.user,
            self.password,
            "pg_dump",
        )
        log(
            f"dumping PostgreSQL {self.server_version} {cfg.host}:{cfg.port}/{cfg.database} "
            f"with {self.tool.path} ({self.tool.version}), snapshot at LSN {self.position}, "
            f"{len(self.tables)} tables"
        )
        self.child = Child(args, env, stdout=subprocess.PIPE)
        widen_pipe(self.child.proc.stdout)
        # Counting shares the exported snapshot, so it runs while pg_dump reads.
        self._counter = threading.Thread(target=self._count_rows, name="pg-count", daemon=True)
        self._counter.start()

    def _count_rows(self) -> None:
        assert self.conn is not None
        try:
            for schema, name in self.tables:
                query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
                row = self.conn.execute(query).fetchone()
                self.counts.append(
                    TableRows(schema=schema, name=name, rows=int(row[0]) if row else 0)
                )
        except BaseException as error:  # reported by finish()
            self._count_error = error

    def chunks(self) -> Iterator[bytes]:
        assert self.child is not None and self.child.proc.stdout is not None
        stdout = self.child.proc.stdout
        size = self.read_size
        while True:
            data = stdout.read(size)
            if not data:
                return
            yield data

    def finish(self) -> SourceRecord:
        assert self.child is not None and self.tool is not None
        if self.child.wait() != 0:
            raise AgentError(self.child.failure("failed"), kind="DumpFailed")
        if self._counter is not None:
            self._counter.join()
        if self._count_error is not None:
            raise AgentError(
                f"counting rows in the dump's snapshot failed: {_first_line(self._count_error)}",
                kind="DumpFailed",
            )
        return SourceRecord(
            kind="Postgres",
            database=self.cfg.database,
            server_version=self.server_version,
            position=self.position,
            tables=len(self.counts),
            rows=sum(t.rows for t in self.counts),
            method="pg_dump",
            dump_tool_version=self.tool.version,
            table_rows=self.counts,
        )

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
        if self._counter is not None and self._counter.is_alive() and self.conn is not None:
            self.conn.cancel_safe()
            self._counter.join(10)
        if self.conn is not None:
            self.conn.close()


# --- restore ---------------------------------------------------------------------------------


def target_info(
    cfg: PostgresTargetConfig, user: str | None, password: str | None, database: str | None = None
) -> dict[str, Any]:
    return conninfo(cfg.host, cfg.port, database or cfg.database, cfg.ssl_mode, user, password)


def database_exists(cfg: PostgresTargetConfig, user: str | None, password: str | None) -> bool:
    with connect(target_info(cfg, user, password, "postgres"), "server", autocommit=True) as c:
        return (
            c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg.database,)).fetchone()
            is not None
        )


def create_database(cfg: PostgresTargetConfig, user: str | None, password: str | None) -> None:
    with connect(target_info(cfg, user, password, "postgres"), "server", autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg.database)))
    log(f"created database {cfg.database}")


def user_relations(cfg: PostgresTargetConfig, user: str | None, password: str | None) -> int:
    with connect(target_info(cfg, user, password), "target", autocommit=True) as c:
        row = c.execute(USER_RELATIONS).fetchone()
        return int(row[0]) if row else 0


def drop_database(cfg: PostgresTargetConfig, user: str | None, password: str | None) -> None:
    """Drop the database this restore created (after a failure). FORCE (PostgreSQL 13+) ends
    the killed pg_restore's backend if it is still going away."""
    with connect(target_info(cfg, user, password, "postgres"), "server", autocommit=True) as c:
        row = c.execute("SELECT current_setting('server_version_num')::int").fetchone()
        force = sql.SQL(" WITH (FORCE)") if row and int(row[0]) >= 130000 else sql.SQL("")
        c.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(cfg.database), force)
        )
    log(f"dropped database {cfg.database}, which this restore had created")


@dataclass(frozen=True)
class TargetState:
    exists: bool
    relations: int
    server_major: int


def inspect_target(
    cfg: PostgresTargetConfig, user: str | None, password: str | None
) -> TargetState:
    with connect(target_info(cfg, user, password, "postgres"), "server", autocommit=True) as c:
        exists = (
            c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg.database,)).fetchone()
            is not None
        )
        row = c.execute("SELECT current_setting('server_version_num')::int").fetchone()
        major = int(row[0]) // 10000 if row else 0
    relations = user_relations(cfg, user, password) if exists else 0
    return TargetState(exists, relations, major)


class PgRestore(StdinFeed):
    """pg_restore reading the archive from stdin, in one transaction: a failure (or a kill
    before the archive is complete) leaves the target as it was.

    pg_restore commits as soon as it has parsed the whole archive, without waiting for the
    end of its input (a custom-format archive ends with the last data block's terminator),
    so closing stdin late is not enough: the last piece written is held back and handed
    over only by `finish`, which the caller runs once the whole payload has authenticated
    and its hash matched. Until then pg_restore waits for those bytes inside its open
    transaction, and `kill` rolls it back. Sequential restore only: `-j` needs a seekable
    file, and it would commit per worker."""

    def __init__(
        self,
        cfg: PostgresTargetConfig,
        user: str | None,
        password: str | None,
        env: dict[str, str],
        tool: Tool,
        clean: bool,
    ) -> None:
        args = [
            str(tool.path),
            "--no-password",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={cfg.database}",
        ]
        if not cfg.keep_owner:
            args += ["--no-owner", "--no-acl"]
        if clean:
            args += ["--clean", "--if-exists"]
        child_env = libpq_env(
            env, cfg.host, cfg.port, cfg.database, cfg.ssl_mode, user, password, "pg_restore"
        )
        super().__init__(Child(args, child_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL))
        self._held = b""

    def write(self, data: bytes) -> None:
        """Hand the previously held piece to pg_restore and hold this one back."""
        if not data:
            return
        held, self._held = self._held, data
        if held:
            super().write(held)

    def finish(self) -> None:
        """The payload checked out: let pg_restore read the end of the archive and commit."""
        held, self._held = self._held, b""
        if held:
            super().write(held)
        super().finish()
