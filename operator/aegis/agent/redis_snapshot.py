"""Redis backups: a snapshot over the replication protocol (method Sync) or via BGSAVE
(method Bgsave), streamed as an RDB."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.agent.config import RedisSourceConfig
from aegis.agent.errors import AgentError
from aegis.agent.log import log
from aegis.agent.manifest import SourceRecord
from aegis.agent.redis_resp import (
    EOF_MARK_LEN,
    RespSocket,
    auth,
    encode_command,
    info_text,
    keyspace_keys,
    parse_fullresync,
    server_info,
)
from aegis.agent.scrub import scrub

if TYPE_CHECKING:
    import redis


@dataclass
class RedisSnapshot:
    """A snapshot of the whole server as an RDB stream, with what the manifest records."""

    cfg: RedisSourceConfig
    user: str | None
    password: str | None
    read_size: int = 1 << 20
    version: str = ""
    keys: int = 0
    offset: str | None = None
    snapshot_time: dt.datetime | None = None
    _conn: RespSocket | None = None
    _stream: Iterator[bytes] | None = None
    _rdb_file: Any = None
    _bytes: int = field(default=0)

    def start(self) -> None:
        if self.cfg.method == "Sync":
            self._start_sync()
        else:
            self._start_bgsave()

    def _start_sync(self) -> None:
        cfg = self.cfg
        conn = self._conn = RespSocket(cfg.host, cfg.port, cfg.tls)
        auth(conn, self.user, self.password)
        self.version = server_info(conn, "server").get("redis_version", "")
        self.keys = keyspace_keys(server_info(conn, "keyspace"))
        # rdb-only (7.0+) tells the master we want the snapshot only, not the replication
        # stream after it; capa eof (optional) lets it stream the RDB without its disk.
        if cfg.diskless:
            conn.command("REPLCONF", "capa", "eof", "capa", "psync2")
        conn.command("REPLCONF", "rdb-only", "1")
        conn.sock.sendall(encode_command("PSYNC", "?", "-1"))
        line = conn.skip_keepalives()
        if line.startswith(b"-"):
            raise AgentError(
                f"Redis refused PSYNC: {line.decode(errors='replace')}; if SYNC "
                "is disabled on this server use method Bgsave",
                kind="SnapshotFailed",
            )
        _replid, offset = parse_fullresync(line)
        self.offset = str(offset)
        self.snapshot_time = dt.datetime.now(dt.UTC)
        header = conn.skip_keepalives()
        if header.startswith(b"$EOF:"):
            mark = header[5:]
            if len(mark) != EOF_MARK_LEN:
                raise AgentError("malformed diskless RDB header from Redis", kind="SnapshotFailed")
            self._stream = conn.read_until_mark(mark, self.read_size)
        elif header.startswith(b"$"):
            self._stream = conn.read_exact_stream(int(header[1:]), self.read_size)
        else:
            raise AgentError(
                f"unexpected RDB header from Redis: {header[:20]!r}", kind="SnapshotFailed"
            )
        log(
            f"snapshot of Redis {self.version} {cfg.host}:{cfg.port} over the replication "
            f"protocol at offset {self.offset}, {self.keys} keys"
        )

    def _client(self) -> redis.Redis:
        import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

        return redis.Redis(
            host=self.cfg.host,
            port=self.cfg.port,
            username=self.user,
            password=self.password,
            ssl=self.cfg.tls,
            socket_timeout=60,
        )

    def _start_bgsave(self) -> None:
        import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

        cfg = self.cfg
        assert cfg.rdb_path is not None
        client = self._client()
        try:
            server = client.info("server")
            self.version = str(server.get("redis_version", ""))
            before = client.info("persistence")
            saves_before = int(before.get("rdb_saves", -1))
            last_before = int(before.get("rdb_last_save_time", 0))
            deadline = time.monotonic() + cfg.bgsave_timeout_seconds
            while True:
                try:
                    client.bgsave()
                    break
                except redis.ResponseError as error:
                    if "in progress" not in str(error) or time.monotonic() > deadline:
                        raise
                    # Someone else's save may predate our start: wait for it, then save ours.
                    _wait_bgsave(client, deadline, None, 0)
                    before = client.info("persistence")
                    saves_before = int(before.get("rdb_saves", -1))
                    last_before = int(before.get("rdb_last_save_time", 0))
            self.snapshot_time = dt.datetime.now(dt.UTC)
            self.keys = keyspace_keys({k: info_text(v) for k, v in client.info("keyspace").items()})
            self.offset = str(client.info("replication").get("master_repl_offset", "")) or None
            _wait_bgsave(client, deadline, saves_before if saves_before >= 0 else None, last_before)
        except redis.RedisError as error:
            raise AgentError(
                f"Redis BGSAVE on {cfg.host}:{cfg.port} failed: {scrub(str(error))}",
                kind="SnapshotFailed",
            ) from None
        finally:
            client.close()
        path = Path(cfg.rdb_path)
        try:
            self._rdb_file = path.open("rb")
        except OSError as error:
            raise AgentError(
                f"cannot open redis.rdbPath {path}: {error.strerror}; mount the "
                "server's data volume there",
                kind="SnapshotFailed",
            ) from None
        if self._rdb_file.read(5) != b"REDIS":
            raise AgentError(f"redis.rdbPath {path} is not an RDB file", kind="SnapshotFailed")
        self._rdb_file.seek(0)
        self._stream = self._file_chunks()
        log(f"BGSAVE of Redis {self.version} {cfg.host}:{cfg.port} done; streaming {path}")

    def _file_chunks(self) -> Iterator[bytes]:
        while True:
            data = self._rdb_file.read(self.read_size)
            if not data:
                return
            yield data

    def chunks(self) -> Iterator[bytes]:
        assert self._stream is not None
        for data in self._stream:
            self._bytes += len(data)
            yield data

    def finish(self) -> SourceRecord:
        if self._bytes < 9:
            raise AgentError("the RDB snapshot is empty", kind="SnapshotFailed")
        return SourceRecord(
            kind="Redis",
            server_version=self.version,
            position=self.offset,
            keys=self.keys,
            method=self.cfg.method,
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._rdb_file is not None:
            self._rdb_file.close()


def _wait_bgsave(
    client: redis.Redis, deadline: float, saves_before: int | None, last_before: int
) -> None:
    """Poll INFO persistence until the save we started has finished, and check it worked."""
    while True:
        info = client.info("persistence")
        running = int(info.get("rdb_bgsave_in_progress", 0)) == 1
        done = (
            int(info.get("rdb_saves", -1)) > saves_before
            if saves_before is not None
            else int(info.get("rdb_last_save_time", 0)) > last_before
        )
        if not running and (done or (saves_before is None and last_before == 0)):
            if info.get("rdb_last_bgsave_status") != "ok":
                raise AgentError(
                    "Redis BGSAVE failed (rdb_last_bgsave_status is not ok); see the server's log",
                    kind="SnapshotFailed",
                )
            return
        if time.monotonic() > deadline:
            raise AgentError(
                "Redis BGSAVE did not finish in time (redis.bgsaveTimeoutSeconds)",
                kind="SnapshotFailed",
            )
        time.sleep(0.2)  # polling a real signal: INFO persistence
