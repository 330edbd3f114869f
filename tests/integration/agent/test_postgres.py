"""PostgreSQL backup and restore through the agent, run as a subprocess like a Job runs it,
against a real PostgreSQL server and the moto S3 server."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.integration.agent.helpers import AgentRun, run_agent

from aegis.agent.crypto import TAG_BYTES
from aegis.sandbox.servers import MotoServer, PostgresDatabase, PostgresServer

SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, amount numeric(12, 2),
    digest text, note text, doc jsonb);
CREATE INDEX orders_created ON public.orders (created_at);
CREATE TABLE app."Events" (id int PRIMARY KEY, kind text, payload bytea, at date);
CREATE TABLE app.empty_table (id int);
CREATE VIEW app.big_orders AS SELECT id, amount FROM public.orders WHERE amount > 500;
INSERT INTO public.orders (created_at, amount, digest, note, doc)
SELECT timestamptz '2024-01-01' + g * interval '37 seconds', (g * 7919 % 100000) / 100.0,
       md5(g::text), repeat('x', g % 300), jsonb_build_object('n', g, 'tags', array['a', g::text])
FROM generate_series(1, %(rows)s) g;
INSERT INTO app."Events"
SELECT g, 'k' || (g % 5), decode(md5(g::text), 'hex'), date '2024-01-01' + g
FROM generate_series(1, 500) g;
"""


def fill(db: PostgresDatabase, rows: int = 20000) -> None:
    with db.connect() as conn:
        conn.execute(SCHEMA.replace("%(rows)s", str(rows)))


def table_checksums(db: PostgresDatabase) -> dict[str, tuple[int, str]]:
    """Per table: row count and md5 over its rows in order."""
    with db.connect() as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'app') "
            "ORDER BY 1, 2"
        ).fetchall()
        sums = {}
        for schema, name in tables:
            row = conn.execute(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f'FROM "{schema}"."{name}" t'
            ).fetchone()
            assert row is not None
            sums[f"{schema}.{name}"] = (row[0], row[1])
        return sums


def env_for(server: PostgresServer, moto: MotoServer) -> dict[str, str]:
    return {**moto.aws_env(), "PGUSER": server.user, "PGPASSWORD": server.password}


def backup(
    db: PostgresDatabase,
    moto: MotoServer,
    bucket: str,
    keys: Path,
    point: str = "rp-1",
    *extra: str,
) -> AgentRun:
    return run_agent(
        [
            "backup",
            "--source",
            "postgres",
            "--host",
            db.server.host,
            "--port",
            str(db.server.port),
            "--database",
            db.name,
            "--bucket",
            bucket,
            "--prefix",
            "backups",
            "--namespace",
            "shop",
            "--policy",
            "orders",
            "--point",
            point,
            "--keys-dir",
            str(keys),
            "--progress-seconds",
            "1",
            *extra,
        ],
        env_for(db.server, moto),
    )


def restore(
    server: PostgresServer,
    moto: MotoServer,
    bucket: str,
    keys: Path,
    database: str,
    point: str = "rp-1",
    *extra: str,
) -> AgentRun:
    return run_agent(
        [
            "restore",
            "--manifest",
            f"s3://{bucket}/backups/shop/orders/{point}",
            "--target",
            "postgres",
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--database",
            database,
            "--keys-dir",
            str(keys),
            *extra,
        ],
        env_for(server, moto),
    )


def manifest_of(s3: Any, bucket: str, point: str = "rp-1") -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=f"backups/shop/orders/{point}/manifest.json")["Body"]
    manifest: dict[str, Any] = json.loads(body.read())
    return manifest


def database_exists(server: PostgresServer, name: str) -> bool:
    with server.connect() as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def test_round_trip_with_checks(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    fill(pg_database)
    before = table_checksums(pg_database)
    run = backup(pg_database, moto, s3_bucket, keys_dir)
    assert run.code == 0, run.stderr
    status = run.result["status"]
    assert status["source"]["rows"] == 20500 and status["source"]["tables"] == 3
    assert status["encryption"] == {"algorithm": "AES-256-GCM-STREAM", "keyId": "2025-01"}
    assert "progress phase=backup" in run.stderr
    manifest = manifest_of(s3_client, s3_bucket)
    stored = s3_client.get_object(Bucket=s3_bucket, Key="backups/shop/orders/rp-1/payload")
    payload = stored["Body"].read()
    assert len(payload) == manifest["storedBytes"] == status["storedBytes"]
    assert manifest["sizeBytes"] > manifest["storedBytes"]  # zstd did something
    assert {t["name"]: t["rows"] for t in manifest["source"]["tableRows"]} == {
        "Events": 500,
        "empty_table": 0,
        "orders": 20000,
    }
    # Encrypted, not just compressed: no plaintext marker of the dump survives (markers of 10+
    # bytes, which random ciphertext cannot produce by chance), and no zstd frame is visible.
    for marker in (b"PGDMP", b"empty_table", b"big_orders", b"CREATE TABLE"):
        assert marker not in payload, marker
    assert not payload.startswith(b"\x28\xb5\x2f\xfd")
    assert manifest["encryption"]["wrappedKey"]
    key_hex = (keys_dir / "2025-01").read_text().strip()
    assert key_hex not in json.dumps(manifest) and key_hex not in run.stderr + run.stdout

    checks = tmp_path / "checks.json"
    checks.write_text(
        json.dumps(
            [
                {
                    "name": "orders",
                    "sql": "SELECT count(*) FROM orders",
                    "expect": {"equals": "20000"},
                },
                {"name": "rows", "expect": {"matchesBackup": True}},
                {
                    "name": "amount",
                    "sql": "SELECT max(amount) FROM orders",
                    "expect": {"max": 1000},
                },
            ]
        )
    )
    target = f"{pg_database.name}_restored"
    try:
        run = restore(
            pg_database.server,
            moto,
            s3_bucket,
            keys_dir,
            target,
            "rp-1",
            "--create-database",
            "--checks-file",
            str(checks),
        )
        assert run.code == 0, run.stderr
        assert [c["result"] for c in run.result["checks"]] == ["Passed"] * 3
        assert run.result["restoredBytes"] == manifest["sizeBytes"]
        restored = PostgresDatabase(server=pg_database.server, name=target)
        assert table_checksums(restored) == before
        with restored.connect() as conn:
            big = conn.execute("SELECT count(*) FROM app.big_orders").fetchone()
            assert big is not None and big[0] > 0
    finally:
        pg_database.server.drop_database(target)

    verify = run_agent(
        [
            "verify",
            f"s3://{s3_bucket}/backups/shop/orders/rp-1/manifest.json",
            "--keys-dir",
            str(keys_dir),
        ],
        env_for(pg_database.server, moto),
    )
    assert verify.code == 0 and verify.result["sizeBytes"] == manifest["sizeBytes"]


def test_overwrite_rules(
    pg_database: PostgresDatabase, moto: MotoServer, s3_bucket: str, keys_dir: Path
) -> None:
    fill(pg_database, rows=2000)
    before = table_checksums(pg_database)
    assert backup(pg_database, moto, s3_bucket, keys_dir).code == 0
    server = pg_database.server
    target = f"{pg_database.name}_busy"
    server.create_database(target)
    busy = PostgresDatabase(server=server, name=target)
    try:
        with busy.connect() as conn:
            conn.execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (42)")
        refused = restore(server, moto, s3_bucket, keys_dir, target)
        assert refused.code == 1 and refused.result["kind"] == "TargetNotEmpty"
        assert "allowOverwrite" in refused.result["reason"]
        with busy.connect() as conn:
            assert conn.execute("SELECT id FROM orders").fetchall() == [(42,)]
        missing = restore(server, moto, s3_bucket, keys_dir, f"{pg_database.name}_nope")
        assert missing.code == 1 and "createDatabase" in missing.result["reason"]
        allowed = restore(server, moto, s3_bucket, keys_dir, target, "rp-1", "--allow-overwrite")
        assert allowed.code == 0, allowed.stderr
        assert table_checksums(busy) == before
    finally:
        server.drop_database(target)


def damage_flip(payload: bytes, chunk: int) -> bytes:
    data = bytearray(payload)
    data[chunk + TAG_BYTES + 100] ^= 0x20
    return bytes(data)


def damage_truncate(payload: bytes, chunk: int) -> bytes:
    return payload[: -(chunk + TAG_BYTES)]


def damage_swap(payload: bytes, chunk: int) -> bytes:
    size = chunk + TAG_BYTES
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    pieces[1], pieces[2] = pieces[2], pieces[1]
    return b"".join(pieces)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (damage_flip, "chunk 1 failed authentication"),
        (damage_truncate, "truncated"),
        (damage_swap, "chunk 1 failed authentication"),
        (None, "wrong key"),
    ],
)
def test_damaged_backups_are_refused_before_the_target_is_touched(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
    damage: Any,
    reason: str,
) -> None:
    fill(pg_database, rows=3000)
    chunk = 4096
    assert (
        backup(pg_database, moto, s3_bucket, keys_dir, "rp-1", "--chunk-size", str(chunk)).code == 0
    )
    key = "backups/shop/orders/rp-1/payload"
    if damage is None:
        (keys_dir / "2025-01").write_bytes(os.urandom(32))
    else:
        payload = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=damage(payload, chunk))
    target = f"{pg_database.name}_new"
    run = restore(
        pg_database.server, moto, s3_bucket, keys_dir, target, "rp-1", "--create-database"
    )
    assert run.code == 1
    assert reason in run.result["reason"], run.result
    assert run.result["kind"] == ("WrongKey" if damage is None else "Corrupted")
    assert not database_exists(pg_database.server, target)  # not even created
    verify = run_agent(
        ["verify", f"s3://{s3_bucket}/backups/shop/orders/rp-1", "--keys-dir", str(keys_dir)],
        env_for(pg_database.server, moto),
    )
    assert verify.code == 1 and reason in verify.result["reason"]


def test_key_rotation(
    pg_database: PostgresDatabase, moto: MotoServer, s3_bucket: str, s3_client: Any, keys_dir: Path
) -> None:
    fill(pg_database, rows=500)
    assert backup(pg_database, moto, s3_bucket, keys_dir, "rp-old").code == 0
    (keys_dir / "2025-06").write_text(os.urandom(32).hex())
    run = backup(pg_database, moto, s3_bucket, keys_dir, "rp-new")
    assert run.result["status"]["encryption"]["keyId"] == "2025-06"
    assert manifest_of(s3_client, s3_bucket, "rp-old")["encryption"]["keyId"] == "2025-01"
    target = f"{pg_database.name}_rot"
    try:
        run = restore(
            pg_database.server, moto, s3_bucket, keys_dir, target, "rp-old", "--create-database"
        )
        assert run.code == 0, run.stderr
        assert table_checksums(
            PostgresDatabase(server=pg_database.server, name=target)
        ) == table_checksums(pg_database)
    finally:
        pg_database.server.drop_database(target)
    (keys_dir / "2025-01").unlink()
    gone = restore(
        pg_database.server, moto, s3_bucket, keys_dir, target + "x", "rp-old", "--create-database"
    )
    assert gone.code == 1 and gone.result["kind"] == "KeyNotFound"
    assert "2025-06" in gone.result["reason"]


def test_bad_credentials_fail_cleanly_without_leaking(
    pg_database: PostgresDatabase, moto: MotoServer, s3_bucket: str, s3_client: Any, keys_dir: Path
) -> None:
    wrong = "Wr0ng-" + os.urandom(6).hex()
    env = {**env_for(pg_database.server, moto), "PGPASSWORD": wrong}
    run = run_agent(
        [
            "backup",
            "--source",
            "postgres",
            "--host",
            pg_database.server.host,
            "--port",
            str(pg_database.server.port),
            "--database",
            pg_database.name,
            "--bucket",
            s3_bucket,
            "--namespace",
            "shop",
            "--policy",
            "orders",
            "--point",
            "rp-1",
            "--keys-dir",
            str(keys_dir),
        ],
        env,
    )
    assert run.code == 1 and run.result["kind"] == "ConnectionFailed"
    assert "password authentication failed" in run.result["reason"]
    assert wrong not in run.stdout + run.stderr
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_pg_dump_dropped_mid_stream_leaves_nothing(
    pg_database: PostgresDatabase, moto: MotoServer, s3_bucket: str, s3_client: Any, keys_dir: Path
) -> None:
    with pg_database.connect() as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, "
            "md5(g::text) || repeat(md5((g*3)::text), 8) AS v "
            "FROM generate_series(1, 400000) g"
        )
    killed: list[int] = []

    def kill_pg_dump() -> None:
        deadline = time.monotonic() + 60
        with pg_database.server.connect() as conn:
            while time.monotonic() < deadline and not killed:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = 'aegis-agent/pg_dump' "
                    "AND query ILIKE 'COPY%%big%%'"
                ).fetchall()
                for (pid,) in rows:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    killed.append(pid)
                time.sleep(0.01)  # polling pg_stat_activity for the COPY to start

    killer = threading.Thread(target=kill_pg_dump)
    killer.start()
    run = run_agent(
        [
            "backup",
            "--source",
            "postgres",
            "--host",
            pg_database.server.host,
            "--port",
            str(pg_database.server.port),
            "--database",
            pg_database.name,
            "--bucket",
            s3_bucket,
            "--namespace",
            "shop",
            "--policy",
            "orders",
            "--point",
            "rp-1",
            "--keys-dir",
            str(keys_dir),
            "--compression",
            "none",
            "--read-size",
            "65536",
        ],
        env_for(pg_database.server, moto),
    )
    killer.join()
    assert killed, "pg_dump's COPY was never seen"
    assert run.code == 1 and run.result["kind"] == "DumpFailed", run.result
    assert "pg_dump failed" in run.result["reason"]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not any(k.endswith("manifest.json") for k in keys)
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_a_hash_mismatch_found_at_the_end_never_commits(
    pg_database: PostgresDatabase,
    moto: MotoServer,
    s3_bucket: str,
    s3_client: Any,
    keys_dir: Path,
) -> None:
    """Every chunk authenticates, but the payload's SHA-256 differs from the manifest's: that
    is known only after the last byte, when pg_restore has the whole archive but its end."""
    fill(pg_database, rows=3000)
    assert backup(pg_database, moto, s3_bucket, keys_dir).code == 0
    manifest = manifest_of(s3_client, s3_bucket)
    manifest["sha256"] = "0" * 64
    s3_client.put_object(
        Bucket=s3_bucket,
        Key="backups/shop/orders/rp-1/manifest.json",
        Body=json.dumps(manifest).encode(),
    )
    target = f"{pg_database.name}_hash"
    run = restore(
        pg_database.server, moto, s3_bucket, keys_dir, target, "rp-1", "--create-database"
    )
    assert run.code == 1 and run.result["kind"] == "Corrupted", run.result
    assert "SHA-256 mismatch" in run.result["reason"]
    assert "dropped" in run.result["reason"]
    assert not database_exists(pg_database.server, target)


def test_pg_restore_commits_only_when_handed_the_end_of_the_archive(
    pg_database: PostgresDatabase,
) -> None:
    """pg_restore --single-transaction commits once it has parsed the whole archive, without
    waiting for the end of its input. PgRestore holds the last piece back until `finish`:
    with everything else written, the restore waits in its open transaction, and a kill
    leaves the target empty."""
    import subprocess

    from aegis.agent.config import PostgresTargetConfig
    from aegis.agent.pgtools import pick_tool
    from aegis.agent.postgres import PgRestore

    fill(pg_database, rows=3000)
    server = pg_database.server
    env = {
        **os.environ,
        "PGUSER": server.user,
        "PGPASSWORD": server.password,
        "PGHOST": server.host,
        "PGPORT": str(server.port),
    }
    archive = subprocess.run(
        [str(server.bin_dir / "pg_dump"), "-Fc", "-Z0", "-d", pg_database.name],
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    tool = pick_tool("pg_restore", 15, None)

    def relations(database: str) -> int:
        with server.connect(database) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('public', 'app')"
            ).fetchone()
            return int(row[0]) if row else 0

    def starved(restorer: PgRestore) -> bool:
        """pg_restore took everything from its stdin and sleeps reading for more."""
        import fcntl
        import struct
        import termios

        assert restorer.child.proc.stdin is not None
        raw = fcntl.ioctl(restorer.child.proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4)
        pending = struct.unpack("i", raw)[0]
        wchan = Path(f"/proc/{restorer.child.proc.pid}/wchan").read_text()
        return pending == 0 and "pipe" in wchan

    for finish in (False, True):
        database = f"{pg_database.name}_held_{int(finish)}"
        server.create_database(database)
        cfg = PostgresTargetConfig(host=server.host, port=server.port, database=database)
        restorer = PgRestore(cfg, server.user, server.password, dict(os.environ), tool, False)
        try:
            for start in range(0, len(archive), 65536):
                restorer.write(archive[start : start + 65536])
            deadline = time.monotonic() + 30
            while not starved(restorer):
                assert restorer.child.proc.poll() is None, restorer.child.failure("exited")
                assert time.monotonic() < deadline, "pg_restore never waited for input"
                time.sleep(0.05)  # polling the pipe and the process state
            assert relations(database) == 0  # nothing committed yet
            if finish:
                restorer.finish()
        finally:
            restorer.kill()
        assert relations(database) == (relations(pg_database.name) if finish else 0)
