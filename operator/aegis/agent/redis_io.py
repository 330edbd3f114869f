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


# Runs in the scratch server: how many of KEYS exist, then each expiring key with its
# absolute expiry (ms).
_EXPIRY_SCRIPT = """
local present, out = 0, {0}
for _, key in ipairs(KEYS) do
  local at = redis.call('PEXPIRETIME', key)
  if at ~= -2 then present = present + 1 end
  if at > 0 then out[#out + 1] = key; out[#out + 1] = at end
end
out[1] = present
return out
"""

MIGRATE_TIMEOUT_MS = 60_000
"""MIGRATE's limit on one exchange with the target (Redis's own I/O timeout, not a sleep)."""


def replay(
    scratch: redis.Redis,
    cfg: RedisTargetConfig,
    user: str | None,
    password: str | None,
    replace: bool,
    *,
    migrate: bool = True,
) -> int:
    """Copy every key of every db from the scratch server to the target, keeping expiry times.

    Over plain TCP the scratch server sends the keys itself with `MIGRATE ... COPY KEYS`, a
    batch per command: DUMP, transfer and RESTORE run server to server, with no per-key
    round trip through Python (several times faster; see bench/RESULTS.md). To a TLS target,
    or when the target refuses MIGRATE, the agent copies them with pipelined DUMP/RESTORE
    ABSTTL. Returns the number of keys written."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    restored = 0
    info = scratch.info("keyspace")
    use_migrate = migrate and not cfg.tls
    for db_name in sorted(info, key=lambda n: int(n[2:])):
        db = int(db_name[2:])
        pool = scratch.connection_pool  # the scratch server's socket, this db
        source = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class,
                **{**pool.connection_kwargs, "db": db, "socket_timeout": 600},
            )
        )
        target = target_client(cfg, user, password, db)
        try:
            if use_migrate:
                migrated = _migrate_db(source, target, cfg, user, password, db, replace)
                if migrated is None:  # the target refused MIGRATE: copy through the agent
                    use_migrate = False
                else:
                    restored += migrated
                    continue
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


def _migrate_db(
    source: redis.Redis,
    target: redis.Redis,
    cfg: RedisTargetConfig,
    user: str | None,
    password: str | None,
    db: int,
    replace: bool,
) -> int | None:
    """MIGRATE one db's keys in batches; None when the target refuses MIGRATE before any key
    moved (an ACL without RESTORE, a proxy that does not speak it), so the caller falls back."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

    auth: list[str] = []
    if password is not None:
        auth = ["AUTH2", user, password] if user else ["AUTH", password]
    restored = 0
    cursor = 0
    first = True
    expiry_script = source.register_script(_EXPIRY_SCRIPT)
    while True:
        cursor, keys = source.scan(cursor=cursor, count=cfg.batch_size)
        if keys:
            # The absolute expiry of each key (-2: expired since the SCAN, so MIGRATE skips
            # it; -1: none). MIGRATE carries the remaining TTL, which lands a few ms later on
            # the target; PEXPIREAT below puts back the exact absolute time of the backup.
            # One script call on our own scratch server answers for the whole batch, so
            # Python parses a reply per expiring key, not per key.
            reply = expiry_script(keys=keys)
            present = int(reply[0])
            expire_at = dict(zip(reply[1::2], (int(at) for at in reply[2::2]), strict=True))
            command: list[str | bytes | int] = [
                "MIGRATE", cfg.host, cfg.port, "", db, MIGRATE_TIMEOUT_MS, "COPY",
            ]
            if replace:
                command.append("REPLACE")
            command += [*auth, "KEYS", *keys]
            try:
                source.execute_command(*command)  # type: ignore[no-untyped-call]
            except redis.ResponseError as error:
                text = str(error)
                if "BUSYKEY" in text and not replace:
                    # Someone wrote one of these keys meanwhile (the target was checked
                    # empty). MIGRATE stops at that key; settle the batch key by key,
                    # keeping theirs, never overwriting.
                    restored += _settle_batch(source, target, keys)
                    first = False
                    continue
                if first and "BUSYKEY" not in text:
                    return None
                raise
            if expire_at:
                write = target.pipeline(transaction=False)
                for key, at in expire_at.items():
                    write.pexpireat(key, at)
                write.execute()
            restored += present
            first = False
        if cursor == 0:
            return restored


def _settle_batch(source: redis.Redis, target: redis.Redis, keys: list[Any]) -> int:
    """After a MIGRATE that stopped at a key the target already held: copy what is missing,
    count what the target holds with exactly the backup's value, leave anything else."""
    read_source = source.pipeline(transaction=False)
    read_target = target.pipeline(transaction=False)
    for key in keys:
        read_source.dump(key)
        read_source.execute_command("PEXPIRETIME", key)  # type: ignore[no-untyped-call]
        read_target.dump(key)
    values, theirs = read_source.execute(), read_target.execute()
    ours, expire_at = values[0::2], [int(at) for at in values[1::2]]
    write = target.pipeline(transaction=False)
    settled = 0
    for key, payload, held, at in zip(keys, ours, theirs, expire_at, strict=True):
        if payload is None or at == -2:
            continue  # expired in the scratch server
        if held is None:
            write.restore(key, max(at, 0), payload, absttl=at > 0)
        elif held == payload:
            if at > 0:
                write.pexpireat(key, at)  # MIGRATE copied it with a relative TTL
        else:
            continue  # theirs: kept
        settled += 1
    write.execute()
    return settled


def _replay_db(source: redis.Redis, target: redis.Redis, batch: int, replace: bool) -> int:
    restored = 0
    cursor = 0
    while True:
        cursor, keys = source.scan(cursor=cursor, count=batch)
        if keys:
            restored += _replay_keys(source, target, keys, replace)
        if cursor == 0:
            return restored


def _replay_keys(source: redis.Redis, target: redis.Redis, keys: list[Any], replace: bool) -> int:
    """DUMP + PEXPIRETIME from the scratch server, RESTORE ... ABSTTL into the target, each
    side one pipelined round trip. A key the target already holds is kept unless `replace`."""
    import redis  # here, not at the top: Sync and PostgreSQL Jobs never load it

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
            # The target was checked empty; BUSYKEY now means SCAN returned a key twice or
            # someone wrote it meanwhile: keep theirs, never overwrite unasked.
            if "BUSYKEY" in str(reply) and not replace:
                queued -= 1
                continue
            raise reply
    return queued
