"""RESP framing, INFO parsing, the diskless RDB end mark, pg tool versions and patterns."""

from __future__ import annotations

import socket
import threading

import pytest

from aegis.agent.errors import AgentError
from aegis.agent.pgtools import dumped_with_data, parse_tool_version, table_pattern
from aegis.agent.redis_resp import (
    RespSocket,
    encode_command,
    keyspace_keys,
    parse_fullresync,
    parse_info,
)


def test_encode_command() -> None:
    assert encode_command("PSYNC", "?", "-1") == b"*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n"


def test_info_and_keyspace() -> None:
    info = parse_info("# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=0\r\ndb3:keys=5,expires=0\r\n")
    assert keyspace_keys(info) == 15


def test_fullresync() -> None:
    assert parse_fullresync(b"+FULLRESYNC 8371b4fb1155b71f4a04d3e1bc3e18c4a990aeeb 1234") == (
        "8371b4fb1155b71f4a04d3e1bc3e18c4a990aeeb",
        1234,
    )
    with pytest.raises(AgentError, match="unexpected reply"):
        parse_fullresync(b"+CONTINUE")


@pytest.mark.parametrize("piece", [1, 7, 39, 40, 41, 4096])
def test_read_until_mark_over_a_real_socket(piece: int) -> None:
    mark = b"m" * 39 + b"!"
    body = bytes(range(256)) * 40 + b"m" * 39  # almost a mark inside the body
    server, client = socket.socketpair()

    def send() -> None:
        server.sendall(b"\n\n$EOF:" + mark + b"\r\n" + body + mark)
        server.close()

    thread = threading.Thread(target=send)
    thread.start()
    conn = RespSocket.__new__(RespSocket)
    conn.sock = client
    conn._buffer = bytearray()
    header = conn.skip_keepalives()
    assert header == b"$EOF:" + mark
    got = b"".join(conn.read_until_mark(mark, piece))
    thread.join()
    client.close()
    assert got == body


def test_pg_tool_version() -> None:
    assert parse_tool_version("pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)") == (
        15,
        "15.10",
    )
    assert parse_tool_version("pg_restore (PostgreSQL) 17devel") == (17, "17")


def test_table_patterns_follow_psql_rules() -> None:
    assert table_pattern("audit_*").matches("public", "audit_2024")
    assert table_pattern("app.t?").matches("app", "t1")
    assert not table_pattern("app.t?").matches("other", "t1")
    assert table_pattern('"Mixed"').matches("public", "Mixed")
    assert not table_pattern("Mixed").matches("public", "Mixed")  # unquoted folds to lower
    assert dumped_with_data("public", "t", ["public"], None, None)
    assert not dumped_with_data("app", "t", ["public"], None, None)
    assert not dumped_with_data("public", "logs", None, None, ["log*"])
