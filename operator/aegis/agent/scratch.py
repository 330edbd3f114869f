"""Throwaway database servers a drill restores into: started inside the drill's Job, on
127.0.0.1 in a private temp dir (an emptyDir in a pod), and removed afterwards.

PostgreSQL refuses to run as root. The image runs as a non-root user, so nothing changes
there; where the agent does run as root (the sandbox's Job runner, some clusters), the
server tools run as an unprivileged OS user (`AEGIS_SCRATCH_USER`, default `postgres`)
that owns the data directory, as the sandbox's own test servers do."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aegis.agent.errors import AgentError
from aegis.agent.pgtools import PG_LIB
from aegis.agent.procs import Child

LOCALHOST = "127.0.0.1"
SCRATCH_USER = "aegis"
"""The superuser of a scratch PostgreSQL (trust authentication, loopback only)."""
DATABASE = "drill"
"""The database a drill restores into."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_server_dir(major: int, lib: Path = PG_LIB) -> Path:
    """The bin dir of the PostgreSQL server for a dump of `major`: that major if installed,
    else the oldest newer one (pg_restore reads older dumps), never an older one."""
    found = sorted(
        (int(p.parent.name), p)
        for p in lib.glob("*/bin")
        if p.parent.name.isdigit() and (p / "initdb").is_file() and (p / "postgres").is_file()
    )
    usable = [(m, p) for m, p in found if m >= major]
    if not usable:
        have = ", ".join(str(m) for m, _ in found) or "none"
        raise AgentError(
            f"no PostgreSQL server {major} or newer for the scratch database in "
            f"{lib}/<major>/bin (found: {have}); use the Aegis image, which carries the "
            "server binaries, or give the drill a target",
            kind="ScratchUnavailable",
        )
    exact = [p for m, p in usable if m == major]
    return exact[0] if exact else usable[0][1]


@dataclass(frozen=True)
class RunAs:
    """Who runs the server: None keeps the current user (not root)."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_postgres(cls, env: dict[str, str]) -> RunAs:
        if os.geteuid() != 0:
            return cls()
        name = env.get("AEGIS_SCRATCH_USER") or "postgres"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise AgentError(
                f"the agent runs as root and PostgreSQL refuses root; OS user {name} "
                "(AEGIS_SCRATCH_USER) does not exist to run the scratch server as",
                kind="ScratchUnavailable",
            ) from None
        return cls(entry.pw_uid, entry.pw_gid)

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


class ScratchPostgres:
    """initdb into a temp dir, start `postgres` on a free loopback port, throw it away."""

    def __init__(self, major: int, work_dir: str | None, env: dict[str, str]) -> None:
        self.bin_dir = postgres_server_dir(major)
        self.run_as = RunAs.for_postgres(env)
        self.dir = Path(tempfile.mkdtemp(prefix="aegis-drill-pg-", dir=work_dir))
        os.chmod(self.dir, 0o700)
        self.run_as.own(self.dir)
        self.data_dir = self.dir / "data"
        self.port = 0
        self.child: Child | None = None
        self._env = {k: v for k, v in env.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME")}

    def _tool(self, name: str, *args: str) -> None:
        try:
            done = subprocess.run(
                [str(self.bin_dir / name), *args],
                env=self._env,
                capture_output=True,
                timeout=300,
                check=False,
                user=self.run_as.uid,
                group=self.run_as.gid,
                cwd=self.dir,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise AgentError(f"{name} could not run: {error}", kind="ScratchUnavailable") from None
        if done.returncode != 0:
            tail = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-3:])
            raise AgentError(
                f"{name} failed (exit {done.returncode}): {tail}", kind="ScratchUnavailable"
            )

    def start(self, timeout: float = 60.0) -> ScratchPostgres:
        self._tool(
            "initdb",
            f"--pgdata={self.data_dir}",
            f"--username={SCRATCH_USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        self.port = free_port()
        args = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.dir),
            "-c", f"listen_addresses={LOCALHOST}",
            # A throwaway copy: durability traded for restore speed.
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "synchronous_commit=off",
        ]  # fmt: skip
        self.child = Child(
            args, self._env, stdout=subprocess.DEVNULL, user=self.run_as.uid, group=self.run_as.gid
        )
        self._wait_ready(timeout)
        self._create_database()
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        assert self.child is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.child.proc.poll() is not None:
                raise AgentError(
                    f"the scratch PostgreSQL exited: {self.child.stderr_tail(3)}",
                    kind="ScratchUnavailable",
                )
            try:
                with psycopg.connect(
                    host=LOCALHOST, port=self.port, user=SCRATCH_USER, dbname="postgres",
                    connect_timeout=2,
                ):  # fmt: skip
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise AgentError(
                    f"the scratch PostgreSQL did not accept connections within {timeout:.0f}s",
                    kind="ScratchUnavailable",
                )
            time.sleep(0.05)  # polling the server's own readiness (a connection)

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            host=LOCALHOST, port=self.port, user=SCRATCH_USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"'.encode())

    @property
    def major(self) -> int:
        return int(self.bin_dir.parent.name)

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()  # SIGKILL: nothing of a scratch copy needs to survive
        shutil.rmtree(self.dir, ignore_errors=True)


class ScratchRedisServer:
    """An empty redis-server on a free loopback port, the target a Redis drill restores into
    (the restore itself loads the RDB into its own temporary server and replays the keys)."""

    def __init__(self, work_dir: str | None, binary: str = "redis-server") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aegis-drill-redis-", dir=work_dir))
        os.chmod(self.dir, 0o700)
        self.binary = shutil.which(binary) or binary
        self.port = 0
        self.child: Child | None = None

    def start(self, timeout: float = 30.0) -> ScratchRedisServer:
        import redis

        self.port = free_port()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOCALHOST,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--databases", "256",
            "--logfile", "",
        ]  # fmt: skip
        try:
            self.child = Child(args, dict(os.environ), stdout=subprocess.DEVNULL)
        except OSError as error:
            raise AgentError(
                f"cannot start {self.binary}: {error.strerror}", kind="ScratchUnavailable"
            ) from None
        client = redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.child.proc.poll() is not None:
                    raise AgentError(
                        f"the scratch redis-server exited: {self.child.stderr_tail(2)}",
                        kind="ScratchUnavailable",
                    )
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise AgentError(
                        "the scratch redis-server did not answer in time", kind="ScratchUnavailable"
                    )
                time.sleep(0.05)  # polling the server's own readiness (PING)
        finally:
            client.close()

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
