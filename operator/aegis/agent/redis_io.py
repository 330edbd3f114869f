"""Redis: snapshots over the replication protocol (method Sync) or via BGSAVE (method Bgsave),
and restores through a temporary redis-server whose keys are replayed with DUMP/RESTORE."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.agent.config import RedisSourceConfig, RedisTargetConfig
from aegis.agent.errors import AgentError
from aegis.agent.log import log
from aegis.agent.manifest import SourceRecord
from aegis.agent.procs import Child
from aegis.agent.scrub import scrub

if TYPE_CHECKING:
    import redis

EOF_MARK_LEN = 40
_FULLRESYNC = re.compile(rb"^\+FULLRESYNC (\S+) (\d+)$")


def encode_command(*args: str | bytes) -> bytes:
    """A RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def parse_info(text: str) -> dict[str, str]:
    """INFO output → {field: value}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def keyspace_keys(info: dict[str, str]) -> int:
    """Sum of keys over `dbN:keys=..,expires=..` lines."""
    total = 0
    for key, value in info.items():
        if key.startswith("db") and key[2:].isdigit():
            for part in value.split(","):
                name, _, number = part.partition("=")
                if name == "keys":
                    total += int(number)
    return total


def parse_fullresync(line: bytes) -> tuple[str, int]:
    match = _FULLRESYNC.match(line)
    if not match:
        raise AgentError(
            f"unexpected reply to PSYNC: {scrub(line.decode(errors='replace'))[:80]}",
            kind="SnapshotFailed",
        )
    return match.group(1).decode(), int(match.group(2))


class RespSocket:
    """Just enough RESP over a socket for the replication handshake and the RDB transfer."""

    def __init__(self, host: str, port: int, tls: bool, timeout: float = 60.0) -> None:
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise AgentError(
                f"cannot connect to Redis at {host}:{port}: {error}", kind="ConnectionFailed"
            ) from None
        self.sock: socket.socket = (
            ssl.create_default_context().wrap_socket(raw, server_hostname=host) if tls else raw
        )
        self._buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _fill(self, size: int = 1 << 16) -> None:
        data = self.sock.recv(size)
        if not data:
            raise AgentError(
                "Redis closed the connection during the snapshot", kind="SnapshotFailed"
            )
        self._buffer += data

    def read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            self._fill()

    def command(self, *args: str | bytes) -> bytes:
        """Send a command; return its one-line reply (status, error or integer)."""
        self.sock.sendall(encode_command(*args))
        line = self.read_line()
        if line.startswith(b"$"):
            length = int(line[1:])
            if length < 0:
                return b""
            while len(self._buffer) < length + 2:
                self._fill()
            value = bytes(self._buffer[:length])
            del self._buffer[: length + 2]
            return value
        return line

    def skip_keepalives(self) -> bytes:
        """The master sends bare newlines while it prepares the RDB; return the next line."""
        while True:
            while self._buffer[:1] == b"\n":
                del self._buffer[:1]
            if self._buffer:
                return self.read_line()
            self._fill()

    def read_exact_stream(self, length: int, piece: int) -> Iterator[bytes]:
        remaining = length
        if self._buffer:
            take = bytes(self._buffer[:remaining])
            del self._buffer[: len(take)]
            remaining -= len(take)
            if take:
                yield take
        while remaining > 0:
            data = self.sock.recv(min(piece, remaining))
            if not data:
                raise AgentError(
                    f"Redis closed the connection with {remaining} bytes of the RDB still to come",
                    kind="SnapshotFailed",
                )
            remaining -= len(data)
            yield data

    def read_until_mark(self, mark: bytes, piece: int) -> Iterator[bytes]:
        """Diskless transfer: the RDB ends with a 40-byte random mark instead of a length."""
        tail = bytes(self._buffer)
        self._buffer.clear()
        while True:
            if tail.endswith(mark):
                if len(tail) > len(mark):
                    yield tail[: -len(mark)]
                return
            if len(tail) > len(mark):
                yield tail[: -len(mark)]
                tail = tail[-len(mark) :]
            data = self.sock.recv(piece)
            if not data:
                raise AgentError(
                    "Redis closed the connection before the end of the RDB", kind="SnapshotFailed"
                )
            tail += data


def _auth(conn: RespSocket, user: str | None, password: str | None) -> None:
    if not password:
        return
    reply = conn.command("AUTH", user, password) if user else conn.command("AUTH", password)
    if not reply.startswith(b"+OK"):
        raise AgentError(
            f"Redis AUTH failed: {scrub(reply.decode(errors='replace'))}", kind="ConnectionFailed"
        )


def _info(conn: RespSocket, section: str) -> dict[str, str]:
    reply = conn.command("INFO", section)
    if reply.startswith(b"-"):
        raise AgentError(
            f"Redis INFO {section} failed: {reply.decode(errors='replace')}", kind="SnapshotFailed"
        )
    return parse_info(reply.decode(errors="replace"))


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
        _auth(conn, self.user, self.password)
        self.version = _info(conn, "server").get("redis_version", "")
        self.keys = keyspace_keys(_info(conn, "keyspace"))
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
            self.keys = keyspace_keys({k: _kv(v) for k, v in client.info("keyspace").items()})
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


def _kv(value: Any) -> str:
    """redis-py parses `db0:keys=1,expires=0` into a dict; turn it back into INFO text."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


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


# --- restore ---------------------------------------------------------------------------------


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
        return keyspace_keys({k: _kv(v) for k, v in info.items()})
    except redis.RedisError as error:
        raise AgentError(
            f"cannot reach the target Redis at {cfg.host}:{cfg.port}: {scrub(str(error))}",
            kind="ConnectionFailed",
        ) from None
    finally:
        client.close()


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


def replay(
    scratch: redis.Redis,
    cfg: RedisTargetConfig,
    user: str | None,
    password: str | None,
    replace: bool,
) -> int:
    """Copy every key of every db from the scratch server to the target with DUMP/RESTORE,
    pipelined in batches, keeping absolute expiry times (PEXPIRETIME + RESTORE ABSTTL)."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    restored = 0
    info = scratch.info("keyspace")
    for db_name in sorted(info, key=lambda n: int(n[2:])):
        db = int(db_name[2:])
        source = redis.Redis(
            unix_socket_path=scratch.connection_pool.connection_kwargs["path"],
            db=db,
            socket_timeout=600,
        )
        target = target_client(cfg, user, password, db)
        try:
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


def _replay_db(source: redis.Redis, target: redis.Redis, batch: int, replace: bool) -> int:
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    restored = 0
    cursor = 0
    while True:
        cursor, keys = source.scan(cursor=cursor, count=batch)
        if keys:
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
                    # The target was checked empty; BUSYKEY now means SCAN returned a key twice
                    # or someone wrote it meanwhile: keep theirs, never overwrite unasked.
                    if "BUSYKEY" in str(reply) and not replace:
                        queued -= 1
                        continue
                    raise reply
            restored += queued
        if cursor == 0:
            return restored
