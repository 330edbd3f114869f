"""The scratch redis-server of a Redis restore: a redis-server inside the Job, on a unix
socket in a private temp dir, that loads the restored RDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aegis.agent.errors import AgentError
from aegis.agent.procs import Child

if TYPE_CHECKING:
    import redis


class ScratchRedis:
    """A redis-server inside the Job, on a unix socket in a private temp dir, that loads the
    restored RDB. Written to disk because redis-server loads RDBs from files."""

    def __init__(self, work_dir: str | None, binary: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aegis-redis-", dir=work_dir))
        os.chmod(self.dir, 0o700)
        self.rdb_path = self.dir / "dump.rdb"
        self.socket_path = self.dir / "redis.sock"
        self.binary = binary
        self.child: Child | None = None
        self._file = self.rdb_path.open("wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def written(self) -> Path:
        """The RDB file, complete (e.g. for agent/redis_feed.py to serve)."""
        self._file.close()
        return self.rdb_path

    def load(self, timeout: float = 3600) -> redis.Redis:
        import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

        self._file.close()
        binary = shutil.which(self.binary) or self.binary
        args = [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--dbfilename",
            "dump.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            "256",
            "--logfile",
            "",
        ]
        try:
            self.child = Child(args, dict(os.environ), stdout=subprocess.DEVNULL)
        except OSError as error:
            raise AgentError(
                f"cannot start {self.binary}: {error.strerror}", kind="RestoreFailed"
            ) from None
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=600)
        deadline = time.monotonic() + timeout
        while True:
            if self.child.proc.poll() is not None:
                raise AgentError(
                    f"the scratch redis-server could not load the RDB: {self.child.stderr_tail(2)}",
                    kind="RestoreFailed",
                )
            try:
                if self.socket_path.exists() and client.ping():
                    return client
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AgentError(
                    "the scratch redis-server did not finish loading in time", kind="RestoreFailed"
                )
            time.sleep(0.05)  # polling the server's own readiness (PING)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self.child is not None:
            self.child.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
