"""Redis protocol: just enough RESP over a socket for the replication handshake and the RDB
transfer (method Sync), and INFO parsing shared by backup and restore."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from aegis.agent.errors import AgentError
from aegis.agent.scrub import scrub

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
        """Diskless transfer: the RDB ends with a 40-byte random mark instead of a length.
        Pieces of about `piece` bytes (a recv returns far less): fewer, larger writes for the
        stages after this one."""
        tail = len(mark)
        buffer = bytearray(self._buffer)
        self._buffer.clear()
        while True:
            if buffer.endswith(mark):
                if len(buffer) > tail:
                    yield bytes(buffer[:-tail])
                return
            if len(buffer) >= piece + tail:
                yield bytes(buffer[:-tail])
                del buffer[:-tail]
            data = self.sock.recv(piece)
            if not data:
                raise AgentError(
                    "Redis closed the connection before the end of the RDB", kind="SnapshotFailed"
                )
            buffer += data


def auth(conn: RespSocket, user: str | None, password: str | None) -> None:
    if not password:
        return
    reply = conn.command("AUTH", user, password) if user else conn.command("AUTH", password)
    if not reply.startswith(b"+OK"):
        raise AgentError(
            f"Redis AUTH failed: {scrub(reply.decode(errors='replace'))}", kind="ConnectionFailed"
        )


def server_info(conn: RespSocket, section: str) -> dict[str, str]:
    reply = conn.command("INFO", section)
    if reply.startswith(b"-"):
        raise AgentError(
            f"Redis INFO {section} failed: {reply.decode(errors='replace')}", kind="SnapshotFailed"
        )
    return parse_info(reply.decode(errors="replace"))


def info_text(value: Any) -> str:
    """redis-py parses `db0:keys=1,expires=0` into a dict; turn it back into INFO text."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
