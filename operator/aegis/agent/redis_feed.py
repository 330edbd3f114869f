"""Redis restores into an empty target by replication: the agent acts as the target's master
for one full sync and serves it the authenticated RDB file, which the target loads itself
(as fast as a restart from that file: no key passes through Python, no scratch server).

    target: MULTI, INFO keyspace, CONFIG SET masterauth <one-time secret>, REPLICAOF <agent>, EXEC
    agent:  accepts the target's connection, checks its AUTH, answers PSYNC with
            +FULLRESYNC and the RDB (the disk-based `$<length>` form every version reads)
    target: loads it (the RDB carries values and absolute expiry times: exact)
    agent:  waits for the link to be up with the sync done, then REPLICAOF NO ONE and puts
            masterauth back

The emptiness check and REPLICAOF run in one MULTI/EXEC, so no client writes in between,
and from then on the target, a replica, refuses client writes; the RDB is only served once
EXEC showed the target empty, so a key someone wrote before it is never wiped (the caller
then falls back to MIGRATE, which keeps theirs). Whatever does not work out (the target
cannot reach the agent, refuses REPLICAOF or CONFIG, cannot load the RDB) undoes the
REPLICAOF and returns None, and the caller falls back to replaying keys through a scratch
server (agent/redis_replay.py). SIGTERM (a deleted Restore) undoes it too before the agent
exits; only a SIGKILL mid-sync leaves the target a replica of the gone Job, which
`REPLICAOF NO ONE` ends (docs/restore.md)."""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.agent.config import RedisTargetConfig
from aegis.agent.log import log
from aegis.agent.redis_resp import info_text, keyspace_keys
from aegis.agent.scrub import SCRUBBER, scrub

if TYPE_CHECKING:
    import redis

CONNECT_TIMEOUT = 10.0
"""How long the target gets to connect to the agent after REPLICAOF (then: fall back)."""


class FeedFailed(Exception):
    """The replication path did not work out; the message says why (scrubbed)."""


class Terminated(BaseException):
    """SIGTERM (the Restore or its pod was deleted) while the target was our replica: raised
    so that the target is detached and its masterauth put back before the agent exits."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def local_address_towards(host: str, port: int) -> tuple[int, str]:
    """The address family and this host's address on the route to the target: where the
    target can reach the agent (a connected UDP socket sends nothing)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(addr)
        local: str = probe.getsockname()[0]
    return family, local


def _read_command(conn: socket.socket, buffer: bytearray) -> list[bytes]:
    """One command from the replica: a RESP array of bulk strings, or an inline line."""

    def line() -> bytes:
        while (end := buffer.find(b"\r\n")) < 0:
            data = conn.recv(1 << 16)
            if not data:
                raise FeedFailed("the target closed its replication connection")
            buffer.extend(data)
        out = bytes(buffer[:end])
        del buffer[: end + 2]
        return out

    head = line()
    if not head.startswith(b"*"):
        return head.split()
    args: list[bytes] = []
    for _ in range(int(head[1:])):
        length = int(line()[1:])
        while len(buffer) < length + 2:
            data = conn.recv(1 << 16)
            if not data:
                raise FeedFailed("the target closed its replication connection")
            buffer.extend(data)
        args.append(bytes(buffer[:length]))
        del buffer[: length + 2]
    return args


def _serve_full_sync(conn: socket.socket, rdb: Path, secret: str, deadline: float) -> None:
    """Speak the master's side of the handshake, then send the RDB. Raises FeedFailed when
    the peer does not authenticate with `secret` (it is not our target)."""
    buffer = bytearray()
    authenticated = False
    while True:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        args = _read_command(conn, buffer)
        if not args:
            continue
        name = args[0].upper()
        if name == b"AUTH":
            if args[-1].decode(errors="replace") != secret:
                conn.sendall(b"-WRONGPASS invalid password\r\n")
                raise FeedFailed("a connection to the replication port did not authenticate")
            authenticated = True
            conn.sendall(b"+OK\r\n")
        elif name == b"PING":  # a replica pings before it authenticates
            conn.sendall(b"+PONG\r\n")
        elif not authenticated:
            conn.sendall(b"-NOAUTH Authentication required.\r\n")
            raise FeedFailed("a connection to the replication port did not authenticate")
        elif name == b"REPLCONF":
            conn.sendall(b"+OK\r\n")
        elif name in (b"PSYNC", b"SYNC"):
            size = rdb.stat().st_size
            if name == b"PSYNC":
                conn.sendall(b"+FULLRESYNC %s 0\r\n" % secrets.token_hex(20).encode())
            conn.sendall(b"$%d\r\n" % size)
            conn.settimeout(None)
            with rdb.open("rb") as file:
                conn.sendfile(file)
            return
        else:
            conn.sendall(b"-ERR unknown command\r\n")


def feed(
    rdb: Path, cfg: RedisTargetConfig, user: str | None, password: str | None, timeout: float
) -> int | None:
    """Load `rdb` into the (empty) target by replication; the number of keys it then holds,
    or None (with the target as it was) when that path is not available."""
    import redis

    from aegis.agent.redis_replay import target_client

    if cfg.tls:
        return None  # the target would want TLS from its master too
    try:
        family, local = local_address_towards(cfg.host, cfg.port)
    except OSError:
        return None
    client = target_client(cfg, user, password)
    listener = socket.socket(family, socket.SOCK_STREAM)
    secret = secrets.token_hex(24)
    SCRUBBER.add(secret)
    saved: str | None = None
    replicating = False
    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        listener.bind((local, 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        saved = str(client.config_get("masterauth").get("masterauth", ""))
        if saved:
            SCRUBBER.add(saved)
        txn = client.pipeline(transaction=True)
        txn.info("keyspace")
        txn.config_set("masterauth", secret)
        txn.execute_command("REPLICAOF", local, port)  # type: ignore[no-untyped-call]
        replicating = True  # undone in any case (REPLICAOF NO ONE is harmless on a master)
        keyspace, _, replicaof = txn.execute(raise_on_error=False)
        if isinstance(replicaof, Exception):
            raise FeedFailed(f"the target refused REPLICAOF: {scrub(str(replicaof))}")
        if not isinstance(keyspace, dict):
            raise FeedFailed("INFO keyspace failed on the target")
        if keyspace_keys({k: info_text(v) for k, v in keyspace.items()}):
            raise FeedFailed("the target gained keys before the restore began")
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            listener.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                raise FeedFailed(
                    f"the target did not connect to {local}:{port} within "
                    f"{CONNECT_TIMEOUT:.0f}s (a network policy may block it)"
                ) from None
            try:
                _serve_full_sync(conn, rdb, secret, deadline + timeout)
                break
            except (FeedFailed, OSError) as error:
                conn.close()
                if time.monotonic() > deadline:
                    raise FeedFailed(str(error)) from None
        with conn:
            _wait_loaded(client, conn, time.monotonic() + timeout)
            client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
            replicating = False
        keys = keyspace_keys({k: info_text(v) for k, v in client.info("keyspace").items()})
        log(f"the target loaded the RDB as a replica of the agent: {keys} keys")
        return keys
    except (FeedFailed, redis.RedisError, OSError) as error:
        log(f"restoring by replication did not work out ({scrub(str(error))}); replaying keys")
        return None
    finally:
        listener.close()
        if main:  # the undo below must not be cut short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        client.close()
        if replicating or saved is not None:
            # A fresh connection: a signal may have cut the last exchange on `client` short.
            undo = target_client(cfg, user, password)
            with contextlib.suppress(redis.RedisError):
                if replicating:
                    undo.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
                if saved is not None:
                    undo.config_set("masterauth", saved)
            undo.close()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _wait_loaded(client: redis.Redis, conn: socket.socket, deadline: float) -> None:
    """Until the target reports the sync done and its link to us up. A target that cannot
    load the RDB drops the connection (and would retry): that is a failure."""
    conn.setblocking(False)
    while True:
        info: dict[str, Any] = client.info("replication")
        if str(info.get("master_link_status")) == "up" and not int(
            info.get("master_sync_in_progress", 0)
        ):
            return
        try:
            if conn.recv(1 << 16) == b"":
                raise FeedFailed("the target dropped the connection: it could not load the RDB")
        except BlockingIOError:
            pass  # nothing from the replica (REPLCONF ACKs come once a second)
        if time.monotonic() > deadline:
            raise FeedFailed("the target did not finish loading the RDB in time")
        time.sleep(0.02)  # polling INFO replication: the target's own progress
