"""Throwaway PostgreSQL, Redis, MariaDB and moto (S3 + Route53) servers on free ports of
127.0.0.1.

Each server is a real process started through :mod:`aegis.sandbox.processes` (so teardown can
prove it is gone), with its files in its own temp dir, and is ready when it answers over the
network: start-up polls a real connection, never a fixed sleep.

PostgreSQL authentication: the initial superuser (``aegis`` by default) gets a password.
TCP connections (the only kind tests and the agent make) use ``scram-sha-256``, replication
included, so a wrong password fails as it would in production; the unix socket in the temp
dir is ``trust`` for local debugging with ``psql -h <dir>``. PostgreSQL refuses to run as
root, so as root every PostgreSQL binary runs as the ``postgres`` OS user, in a temp dir that
user owns; clients keep running as root over TCP. MariaDB likewise: as root, mariadbd runs as
the ``mysql`` OS user in a datadir of its own (``mariadb-install-db``); its TCP user (``aegis``
by default) gets a password, created by an init file at every start.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

from aegis.sandbox import processes
from aegis.sandbox.processes import TrackedProcess

if TYPE_CHECKING:
    import psycopg
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_s3 import S3Client

LOCALHOST = "127.0.0.1"
START_ATTEMPTS = 3
"""A free port can be taken between choosing and binding it; start-up retries on another."""
POSTGRES_OS_USER = "postgres"
MARIADB_OS_USER = "mysql"


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_ready(
    what: str,
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float,
) -> None:
    """Poll ``ready`` until it returns True; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {proc.returncode} before it was ready; "
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        if ready():
            return
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{what} was not ready after {timeout:.0f}s; log {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.05)


def _port_was_taken(log_path: Path) -> bool:
    text = _log_tail(log_path, 50).lower()
    return "address already in use" in text or "could not bind" in text


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _make_temp_dir(prefix: str, owner: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _stop_tracked(
    tracked: TrackedProcess | None, proc: subprocess.Popen[bytes] | None, sig: signal.Signals
) -> None:
    if tracked is not None:
        processes.terminate(tracked, sig=sig, proc=proc)


class _Server:
    """Context-manager plumbing shared by the servers."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin (override: AEGIS_SANDBOX_PG_BIN)."""
    override = os.environ.get("AEGIS_SANDBOX_PG_BIN")
    if override:
        return Path(override)
    root = Path("/usr/lib/postgresql")
    majors = sorted(
        (p for p in root.glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    if not majors:
        raise ServerStartError(
            f"no PostgreSQL under {root}: apt-get install -y postgresql, "
            "or set AEGIS_SANDBOX_PG_BIN to the directory holding initdb and postgres"
        )
    return majors[-1]


POSTGRES_CONF = """
# aegis sandbox: throwaway server, durability traded for speed
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 128MB
hot_standby = on
password_encryption = scram-sha-256
"""

PG_HBA = """
# aegis sandbox: passwords over TCP (as in production), trust on the private socket dir
local   all          all                   trust
local   replication  all                   trust
host    all          all   127.0.0.1/32    scram-sha-256
host    replication  all   127.0.0.1/32    scram-sha-256
"""


_DEFAULT_PASSWORD = secrets.token_urlsafe(16)
"""Password of servers started without one: random, shared by this process's servers."""
_template_lock = threading.Lock()
_templates: dict[tuple[Path, str, str], Path] = {}


def _initdb_template(bin_dir: Path, user: str, password: str, os_user: str | None) -> Path:
    """The data dir of an initdb'd, configured, never started cluster; made once per process."""
    key = (bin_dir, user, password)
    with _template_lock:
        if key not in _templates:
            base_dir = _make_temp_dir("aegis-pg-template-", os_user)
            atexit.register(shutil.rmtree, base_dir, True)
            template = PostgresServer(
                base_dir=base_dir, port=0, user=user, password=password, bin_dir=bin_dir
            )
            template._initdb(os_user)
            _templates[key] = template.data_dir
        return _templates[key]


@dataclass
class PostgresServer(_Server):
    """A running PostgreSQL server in a temp dir: a primary, or a streaming standby."""

    base_dir: Path
    port: int
    user: str
    password: str
    bin_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tracked: TrackedProcess | None = None
    is_standby: bool = False
    host: str = LOCALHOST

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URI with the password, for psycopg, pg_dump and the agent."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(database, safe='')}"
        )

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """An autocommit connection (close it, or use it in ``with``)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.dsn(database), **kwargs)

    # ---- lifecycle

    @classmethod
    def start(
        cls,
        *,
        user: str = "aegis",
        password: str | None = None,
        timeout: float = 30.0,
    ) -> PostgresServer:
        """initdb a fresh primary in a temp dir and start it."""
        bin_dir = postgres_bin_dir()
        os_user = POSTGRES_OS_USER if _running_as_root() else None
        base_dir = _make_temp_dir("aegis-pg-", os_user)
        password = password or _DEFAULT_PASSWORD
        server = cls(base_dir=base_dir, port=0, user=user, password=password, bin_dir=bin_dir)
        try:
            template = _initdb_template(bin_dir, user, password, os_user)
            # A copy of an initdb'd cluster starts as if initdb had just run, in a fifth of
            # the time: it matters for the fresh primary every failover test needs.
            server._run_as(
                os_user, ["cp", "-a", str(template), str(server.data_dir)], log_path=server.log_path
            )
            server._launch(os_user, timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def start_standby(self, timeout: float = 60.0) -> PostgresServer:
        """pg_basebackup this primary into a new temp dir and start it as a streaming hot standby.

        Returns once the standby is in recovery and its WAL receiver is streaming.
        """
        os_user = POSTGRES_OS_USER if _running_as_root() else None
        base_dir = _make_temp_dir("aegis-pg-standby-", os_user)
        standby = PostgresServer(
            base_dir=base_dir,
            port=0,
            user=self.user,
            password=self.password,
            bin_dir=self.bin_dir,
            is_standby=True,
        )
        try:
            self._run_as(
                os_user,
                [
                    str(self.bin_dir / "pg_basebackup"),
                    f"--pgdata={standby.data_dir}",
                    f"--host={self.host}",
                    f"--port={self.port}",
                    f"--username={self.user}",
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    "--write-recovery-conf",
                    "--no-sync",
                ],
                # The password reaches primary_conninfo in the standby's postgresql.auto.conf.
                extra_env={"PGPASSWORD": self.password},
                log_path=standby.log_path,
            )
            standby._launch(os_user, timeout)
            _poll(
                "standby streaming from the primary",
                standby._is_streaming,
                timeout,
                standby.log_path,
            )
        except BaseException:
            standby.stop()
            raise
        return standby

    def reattach_as_standby(self, primary: PostgresServer, timeout: float = 60.0) -> None:
        """Make this (former primary) server a streaming standby of `primary`, on the same
        port, as an operator's tooling re-attaches an old primary after a switchover: stop
        it, replace its data with a base backup of `primary`, start it in recovery."""
        os_user = POSTGRES_OS_USER if _running_as_root() else None
        _stop_tracked(self.tracked, self.proc, signal.SIGQUIT)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._run_as(
            os_user,
            [
                str(self.bin_dir / "pg_basebackup"),
                f"--pgdata={self.data_dir}",
                f"--host={primary.host}",
                f"--port={primary.port}",
                f"--username={primary.user}",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--write-recovery-conf",
                "--no-sync",
            ],
            extra_env={"PGPASSWORD": primary.password},
            log_path=self.log_path,
        )
        self.is_standby = True
        self._launch(os_user, timeout, port=self.port)
        _poll("re-attached standby streaming", self._is_streaming, timeout, self.log_path)

    def stop(self) -> None:
        """Immediate shutdown (as ``pg_ctl -m immediate``) and removal of the temp dir."""
        _stop_tracked(self.tracked, self.proc, signal.SIGQUIT)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def stop_hard(self) -> None:
        """Kill the postmaster and every backend at once, like a machine dying.

        The data dir stays until :meth:`stop`; use it for failover tests.
        """
        if self.tracked is not None:
            processes.terminate(self.tracked, sig=signal.SIGKILL, proc=self.proc)

    def is_running(self) -> bool:
        return self.tracked is not None and self.tracked.is_alive()

    def promote(self, timeout: float = 30.0) -> None:
        """Promote a standby to primary and wait until it accepts writes."""
        with self.connect() as conn:
            conn.execute("SELECT pg_promote(true, %s)", (int(timeout),))
        _poll("promoted standby leaving recovery", self._is_primary, timeout, self.log_path)
        self.is_standby = False

    # ---- databases

    def create_database(self, name: str) -> str:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # ---- internals

    def _run_as(
        self,
        os_user: str | None,
        argv: list[str],
        *,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """Run a short PostgreSQL tool to completion, tracked, its output appended to the log."""
        env = {**os.environ, **(extra_env or {})}
        with open(log_path, "ab") as log:
            proc, tracked = processes.spawn(
                argv, name=Path(argv[0]).name, stdout=log, env=env, user=os_user, cwd=self.base_dir
            )
            code = proc.wait(timeout=120)
        if code != 0:
            raise ServerStartError(
                f"{Path(argv[0]).name} failed with code {code}; log {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        processes.wait_gone(tracked, 5.0)

    def _initdb(self, os_user: str | None) -> None:
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            self._run_as(
                os_user,
                [
                    str(self.bin_dir / "initdb"),
                    f"--pgdata={self.data_dir}",
                    f"--username={self.user}",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
                log_path=self.log_path,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(POSTGRES_CONF)
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA)

    def _launch(self, os_user: str | None, timeout: float, port: int | None = None) -> None:
        """Start the server on `port`, or on a free port (retried when it was taken)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = port or free_port()
            # Address, port and socket dir on the command line: a standby copies the
            # primary's postgresql.conf and must not inherit its port.
            argv = [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.base_dir),
                "-c",
                f"listen_addresses={LOCALHOST}",
            ]
            with open(self.log_path, "ab") as log:
                self.proc, self.tracked = processes.spawn(
                    argv, name="postgres", stdout=log, user=os_user, cwd=self.base_dir
                )
            try:
                _wait_ready(
                    "postgres", self._accepts_connections, self.proc, self.log_path, timeout
                )
                return
            except ServerStartError:
                _stop_tracked(self.tracked, self.proc, signal.SIGKILL)
                if port or attempt == START_ATTEMPTS or not _port_was_taken(self.log_path):
                    raise

    def _query_one(self, query: str) -> Any:
        import psycopg

        try:
            with self.connect(connect_timeout=2) as conn:
                row = conn.execute(query).fetchone()
        except psycopg.OperationalError:
            return None
        return None if row is None else row[0]

    def _accepts_connections(self) -> bool:
        return bool(self._query_one("SELECT 1") == 1)

    def _is_streaming(self) -> bool:
        in_recovery = self._query_one("SELECT pg_is_in_recovery()")
        status = self._query_one("SELECT status FROM pg_stat_wal_receiver")
        return in_recovery is True and status == "streaming"

    def _is_primary(self) -> bool:
        return self._query_one("SELECT pg_is_in_recovery()") is False


def _poll(what: str, ready: Callable[[], bool], timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"timed out after {timeout:.0f}s waiting for {what}; log {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        time.sleep(0.05)


@dataclass(frozen=True)
class PostgresDatabase:
    """One database on a :class:`PostgresServer` (what the ``pg_database`` fixture yields)."""

    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return self.server.connect(self.name, **kwargs)


# --------------------------------------------------------------------------- Redis


@dataclass
class RedisServer(_Server):
    """A running redis-server with no persistence, optionally with ``requirepass``."""

    base_dir: Path
    port: int
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tracked: TrackedProcess | None = None
    host: str = LOCALHOST

    @property
    def log_path(self) -> Path:
        return self.base_dir / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, db: int = 0, **kwargs: Any) -> Any:
        """A ``redis.Redis`` client for this server (typed ``Any``: redis-py is untyped here)."""
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db, password=self.password, **kwargs)

    @classmethod
    def start(cls, *, password: str | None = None, timeout: float = 20.0) -> RedisServer:
        base_dir = _make_temp_dir("aegis-redis-", None)
        server = cls(base_dir=base_dir, port=0, password=password)
        try:
            server._launch(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        _stop_tracked(self.tracked, self.proc, signal.SIGTERM)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _launch(self, timeout: float) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            argv = [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", LOCALHOST,
                "--dir", str(self.base_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ]  # fmt: skip
            if self.password:
                argv += ["--requirepass", self.password]
            with open(self.log_path, "ab") as log:
                self.proc, self.tracked = processes.spawn(argv, name="redis-server", stdout=log)
            try:
                _wait_ready("redis-server", self._answers_ping, self.proc, self.log_path, timeout)
                return
            except ServerStartError:
                _stop_tracked(self.tracked, self.proc, signal.SIGKILL)
                if attempt == START_ATTEMPTS or not _port_was_taken(self.log_path):
                    raise

    def _answers_ping(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries: this is polled, and redis-py retries refused connections.
        no_retry = Retry(NoBackoff(), 0)
        try:
            with self.client(socket_connect_timeout=1, socket_timeout=2, retry=no_retry) as client:
                answer = client.ping()
        except redis.RedisError:
            return False
        return answer is True


# --------------------------------------------------------------------------- MariaDB


def mariadb_binary(name: str) -> str:
    """A MariaDB program (mariadbd lives in /usr/sbin on Debian)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ServerStartError(
            f"{name} not found: apt-get install -y mariadb-server mariadb-client "
            "(scripts/install-system-packages.sh)"
        )
    return found


@dataclass
class MariaDBServer(_Server):
    """A running mariadbd in a temp dir, reachable over TCP as ``user`` with ``password``."""

    base_dir: Path
    port: int
    user: str
    password: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tracked: TrackedProcess | None = None
    host: str = LOCALHOST

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "mariadb.log"

    def client_args(self, database: str | None = None) -> list[str]:
        """`mariadb` over TCP as this server's user; the password goes in MYSQL_PWD."""
        args = [
            mariadb_binary("mariadb"),
            "--no-defaults",
            "--protocol=TCP",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--user={self.user}",
        ]
        return args + ([database] if database else [])

    def client_env(self) -> dict[str, str]:
        return {**os.environ, "MYSQL_PWD": self.password}

    def sql(self, statements: str, database: str | None = None, timeout: float = 60) -> str:
        """Run SQL with the `mariadb` client; tab-separated rows, no column names."""
        done = subprocess.run(
            [*self.client_args(database), "--batch", "--skip-column-names"],
            input=statements.encode(),
            env=self.client_env(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"mariadb exited {done.returncode}: {done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode()

    @classmethod
    def start(
        cls, *, user: str = "aegis", password: str | None = None, timeout: float = 60.0
    ) -> MariaDBServer:
        """mariadb-install-db a fresh datadir in a temp dir and start mariadbd on it."""
        os_user = MARIADB_OS_USER if _running_as_root() else None
        base_dir = _make_temp_dir("aegis-mariadb-", os_user)
        server = cls(base_dir=base_dir, port=0, user=user, password=password or _DEFAULT_PASSWORD)
        try:
            server._install(os_user)
            server._launch(os_user, timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        _stop_tracked(self.tracked, self.proc, signal.SIGTERM)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _install(self, os_user: str | None) -> None:
        argv = [
            mariadb_binary("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ]
        with open(self.log_path, "ab") as log:
            proc, tracked = processes.spawn(
                argv, name="mariadb-install-db", stdout=log, user=os_user, cwd=self.base_dir
            )
            code = proc.wait(timeout=120)
        processes.wait_gone(tracked, 5.0)
        if code != 0:
            raise ServerStartError(
                f"mariadb-install-db failed with code {code}; log {self.log_path}:\n"
                f"{_log_tail(self.log_path)}"
            )
        quoted = self.password.replace("\\", "\\\\").replace("'", "\\'")
        init = self.base_dir / "init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{self.user}'@'%' IDENTIFIED BY '{quoted}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'%' WITH GRANT OPTION;\n"
        )
        init.chmod(0o600)
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            os.chown(init, entry.pw_uid, entry.pw_gid)

    def _launch(self, os_user: str | None, timeout: float) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            argv = [
                mariadb_binary("mariadbd"),
                "--no-defaults",
                f"--datadir={self.data_dir}",
                f"--port={self.port}",
                f"--bind-address={LOCALHOST}",
                f"--socket={self.base_dir / 'mariadb.sock'}",
                f"--pid-file={self.base_dir / 'mariadb.pid'}",
                f"--init-file={self.base_dir / 'init.sql'}",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=0",
                "--sync-binlog=0",
            ]
            with open(self.log_path, "ab") as log:
                self.proc, self.tracked = processes.spawn(
                    argv, name="mariadbd", stdout=log, user=os_user, cwd=self.base_dir
                )
            try:
                _wait_ready("mariadbd", self._answers, self.proc, self.log_path, timeout)
                return
            except ServerStartError:
                _stop_tracked(self.tracked, self.proc, signal.SIGKILL)
                if attempt == START_ATTEMPTS or not _port_was_taken(self.log_path):
                    raise

    def _answers(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            if sock.connect_ex((self.host, self.port)) != 0:
                return False
        try:
            return self.sql("SELECT 1", timeout=5).strip() == "1"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False


# --------------------------------------------------------------------------- moto (S3, Route53)

DUMMY_AWS_ACCESS_KEY_ID = "testing"
DUMMY_AWS_SECRET_ACCESS_KEY = "testing"  # moto accepts any credentials
AWS_REGION = "us-east-1"


@dataclass
class MotoServer(_Server):
    """A moto server process emulating S3 and Route53 over HTTP."""

    base_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tracked: TrackedProcess | None = None
    host: str = LOCALHOST

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "moto.log"

    @classmethod
    def start(cls, *, timeout: float = 30.0) -> MotoServer:
        base_dir = _make_temp_dir("aegis-moto-", None)
        server = cls(base_dir=base_dir, port=0)
        try:
            server._launch(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        _stop_tracked(self.tracked, self.proc, signal.SIGTERM)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def reset(self) -> None:
        """Forget every bucket, zone and health check (moto's POST /moto-api/reset)."""
        url = f"{self.endpoint}/moto-api/reset"
        request = urllib.request.Request(url, method="POST")  # noqa: S310 - http to 127.0.0.1
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            if response.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {response.status}")

    def aws_env(self) -> dict[str, str]:
        """Environment for boto3 (and the agent) to reach this server with dummy credentials."""
        return {
            "AWS_ACCESS_KEY_ID": DUMMY_AWS_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_AWS_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_REGION": AWS_REGION,
            # boto3 >= 1.28 reads these instead of an endpoint_url argument.
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ENDPOINT_URL_ROUTE_53": self.endpoint,
            "AEGIS_S3_ENDPOINT": self.endpoint,
        }

    def s3_client(self) -> S3Client:
        return self._client("s3")  # type: ignore[no-any-return]

    def route53_client(self) -> Route53Client:
        return self._client("route53")  # type: ignore[no-any-return]

    def _client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name=AWS_REGION,
            aws_access_key_id=DUMMY_AWS_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_AWS_SECRET_ACCESS_KEY,
        )

    def _launch(self, timeout: float) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            argv = [sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(self.port)]
            with open(self.log_path, "ab") as log:
                self.proc, self.tracked = processes.spawn(argv, name="moto_server", stdout=log)
            try:
                _wait_ready("moto_server", self._answers, self.proc, self.log_path, timeout)
                return
            except ServerStartError:
                _stop_tracked(self.tracked, self.proc, signal.SIGKILL)
                if attempt == START_ATTEMPTS or not _port_was_taken(self.log_path):
                    raise

    def _answers(self) -> bool:
        try:
            url = f"{self.endpoint}/moto-api/"
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - fixed http
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
