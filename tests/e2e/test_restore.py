"""Restore end to end: the real operator, the Job runner running the real agent, real
PostgreSQL and redis-server, moto S3. What was restored is checked in the target itself."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from tests.e2e.helpers import (
    OperatorHandle,
    condition,
    create,
    create_secret,
    custom_api,
    events_for,
    get,
    new_key,
    wait_for,
)
from tests.e2e.test_backups import jobs, make_policy, on_demand, policy_spec, secrets_for

from aegis import kubectl_restore
from aegis.sandbox.servers import RedisServer, postgres_bin_dir

PLURAL = "restores"
SEED_ORDERS = 3000


def seed_varied(pg: Any) -> None:
    """Tables of varied types: ids, timestamps, numerics, text, jsonb, arrays, bytea, NULLs."""
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, placed timestamptz NOT NULL,"
            " total numeric(12,2), note text, doc jsonb, paid boolean, blob bytea)"
        )
        conn.execute(
            "INSERT INTO orders SELECT i, timestamptz '2026-01-01' + i * interval '17 seconds',"
            " i * 1.37, CASE WHEN i %% 11 = 0 THEN NULL ELSE repeat(md5(i::text), 1 + i %% 4) END,"
            " jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i %% 7)), i %% 2 = 0,"
            " decode(md5(i::text), 'hex') FROM generate_series(1, %s) i",
            (SEED_ORDERS,),
        )
        conn.execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, tags text[], born date,"
            " ip inet, uid uuid)"
        )
        conn.execute(
            "INSERT INTO customers SELECT i, 'cüstomer ' || i, ARRAY['x', i::text],"
            " date '1970-01-01' + i, ('10.0.' || (i % 255) || '.1')::inet, gen_random_uuid()"
            " FROM generate_series(1, 200) i"
        )
        conn.execute("CREATE TABLE empty_table (id int, payload text)")


def table_checksums(conn: Any) -> dict[str, tuple[int, str]]:
    """Per table: (rows, md5 of its rows as text, in order)."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    ]
    sums = {}
    for table in tables:
        row = conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
            f" FROM public.{table} t"
        ).fetchone()
        sums[table] = (int(row[0]), str(row[1]))
    return sums


def mutate_source(pg: Any) -> None:
    """The mistake a restore repairs: a dropped table and deleted rows."""
    with pg.connect() as conn:
        conn.execute("DROP TABLE customers")
        conn.execute("DELETE FROM orders WHERE id % 3 = 0")


def plain_dump(server: Any, database: str) -> bytes:
    """A plain-format dump: byte-for-byte the same as long as nothing changed, but for the
    random key of its `\\restrict` guard lines (new in pg_dump 15.14), which are dropped."""
    dump = subprocess.run(
        [str(postgres_bin_dir() / "pg_dump"), "--no-sync", "-d", server.dsn(database)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return b"\n".join(
        line for line in dump.split(b"\n") if not line.startswith((b"\\restrict", b"\\unrestrict"))
    )


def database_exists(server: Any, name: str) -> bool:
    with server.connect() as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


@contextlib.contextmanager
def scratch_database_name(server: Any) -> Iterator[str]:
    name = f"restored_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with server.connect(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_target(pg: Any, database: str, **extra: Any) -> dict[str, Any]:
    return {
        "postgres": {
            "host": pg.server.host,
            "port": pg.server.port,
            "database": database,
            "userSecretRef": {"name": "db", "key": "username"},
            "passwordSecretRef": {"name": "db", "key": "password"},
            **extra,
        }
    }


def make_restore(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    create(
        k8s_api, PLURAL, namespace, {"kind": "Restore", "metadata": {"name": name}, "spec": spec}
    )


def wait_restore(k8s_api: Any, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    restore: dict[str, Any] = wait_for(
        f"Restore {name} to end",
        lambda: (
            (r := get(k8s_api, PLURAL, namespace, name)).get("status", {}).get("phase")
            in ("Completed", "Failed")
            and r
        ),
        timeout=timeout,
    )
    return restore


def backed_up(k8s_api: Any, namespace: str, pg: Any, bucket: str, endpoint: str) -> dict[str, Any]:
    """Seed, back up on demand, and return the Completed point."""
    seed_varied(pg)
    secrets_for(k8s_api, namespace, pg)
    make_policy(k8s_api, namespace, "orders", policy_spec(pg, bucket, endpoint))
    point = on_demand(k8s_api, namespace, "orders", "orders-good")
    assert point["status"]["phase"] == "Completed", point["status"].get("message")
    return point


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = condition(obj, type_)
    assert found is not None, f"no {type_} condition in {obj.get('status')}"
    return found


def metrics_text(handle: OperatorHandle) -> str:
    url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    text: str = urllib.request.urlopen(url, timeout=5).read().decode()
    return text


def test_restore_into_a_new_database_equals_the_seed(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    point = backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    with pg_database.connect() as conn:
        seeded = table_checksums(conn)
    assert seeded["orders"][0] == SEED_ORDERS and seeded["customers"][0] == 200
    mutate_source(pg_database)
    with scratch_database_name(pg_database.server) as new_db:
        spec = {
            "policyRef": {"name": "orders"},
            "target": pg_target(pg_database, new_db, createDatabase=True),
            "verify": [
                {"name": "rows-match", "expect": {"matchesBackup": True}},
                {
                    "name": "enough-orders",
                    "sql": "SELECT count(*) FROM orders",
                    "expect": {"min": SEED_ORDERS},
                },
            ],
        }
        make_restore(k8s_api, namespace, "to-new-db", spec)
        restore = wait_restore(k8s_api, namespace, "to-new-db")
        status = restore["status"]
        assert status["phase"] == "Completed", status.get("message")
        assert cond(restore, "Complete")["status"] == "True"
        assert cond(restore, "Failed")["status"] == "False"
        assert status["recoveryPoint"] == "orders-good"
        # The restored database holds exactly what was seeded, not the damaged source.
        with pg_database.server.connect(new_db) as conn:
            assert table_checksums(conn) == seeded
        assert {c["name"]: c["result"] for c in status["checks"]} == {
            "rows-match": "Passed",
            "enough-orders": "Passed",
        }
        assert next(c for c in status["checks"] if c["name"] == "enough-orders")["value"] == str(
            SEED_ORDERS
        )
        # Measured figures: the bytes fed to pg_restore are the dump's logical size.
        assert status["restoredBytes"] == point["status"]["sizeBytes"]
        assert 0 < status["durationSeconds"] < 60
        assert status["startTime"] <= status["completionTime"]
        # One Job, owned by the Restore, secrets only by reference.
        (job,) = [j for j in jobs(k8s_api, namespace) if j.metadata.name.startswith("restore-")]
        assert job.metadata.name == "restore-to-new-db" == status["jobName"]
        assert job.metadata.owner_references[0].kind == "Restore"
        assert job.metadata.labels["app.kubernetes.io/component"] == "restore"
        container = job.spec.template.spec.containers[0]
        assert pg_database.server.password not in " ".join(container.command + container.args)
        secret_env = {e.name for e in container.env if e.value_from and e.value_from.secret_key_ref}
        assert {"AEGIS_PG_USER", "AEGIS_PG_PASSWORD", "AWS_SECRET_ACCESS_KEY"} <= secret_env
        assert "AEGIS_KEY_2026-01" in secret_env
        reasons = {e["reason"] for e in events_for(k8s_api, namespace, "to-new-db")}
        assert {"RestoreStarted", "RestoreCompleted"} <= reasons
        # Passed checks prove the point restores.
        verified = get(k8s_api, "recoverypoints", namespace, "orders-good")
        assert cond(verified, "Verified")["status"] == "True"
        assert verified["status"]["verification"]["by"] == "restore/to-new-db"
        assert (
            f'aegis_restore_duration_seconds_count{{namespace="{namespace}"}} 1.0'
            in metrics_text(aegis_operator)
        )
        # The spec is immutable (CEL): the API refuses a change.
        with pytest.raises(ApiException) as refused:
            custom_api(k8s_api).patch_namespaced_custom_object(
                "dr.aegis.dev",
                "v1alpha1",
                namespace,
                PLURAL,
                "to-new-db",
                {"spec": {"allowOverwrite": True}},
            )
        assert refused.value.status == 422 and "immutable" in refused.value.body


def test_restore_into_the_original_database_needs_allow_overwrite(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    with pg_database.connect() as conn:
        seeded = table_checksums(conn)
    mutate_source(pg_database)
    before = plain_dump(pg_database.server, pg_database.name)
    target = pg_target(pg_database, pg_database.name)
    make_restore(
        k8s_api,
        namespace,
        "no-overwrite",
        {"recoveryPointRef": {"name": "orders-good"}, "target": target},
    )
    refused = wait_restore(k8s_api, namespace, "no-overwrite")
    assert refused["status"]["phase"] == "Failed"
    assert cond(refused, "Failed")["reason"] == "TargetNotEmpty"
    assert "allowOverwrite" in refused["status"]["message"]
    assert plain_dump(pg_database.server, pg_database.name) == before  # byte for byte
    warnings = [e for e in events_for(k8s_api, namespace, "no-overwrite") if e["type"] == "Warning"]
    assert warnings and warnings[0]["reason"] == "TargetNotEmpty"
    assert f'aegis_restore_failures_total{{namespace="{namespace}"}} 1.0' in metrics_text(
        aegis_operator
    )

    target["postgres"]["clean"] = True
    make_restore(
        k8s_api,
        namespace,
        "overwrite",
        {
            "recoveryPointRef": {"name": "orders-good"},
            "target": target,
            "allowOverwrite": True,
            "verify": [{"name": "rows-match", "expect": {"matchesBackup": True}}],
        },
    )
    restored = wait_restore(k8s_api, namespace, "overwrite")
    assert restored["status"]["phase"] == "Completed", restored["status"].get("message")
    with pg_database.connect() as conn:
        assert table_checksums(conn) == seeded


def test_corrupted_payload_fails_before_the_target_is_touched(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    s3_client: Any,
    moto: Any,
) -> None:
    point = backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    key = point["status"]["location"].removeprefix(f"s3://{s3_bucket}/")
    payload = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    payload[len(payload) // 2] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(payload))
    with scratch_database_name(pg_database.server) as new_db:
        make_restore(
            k8s_api,
            namespace,
            "from-damaged",
            {
                "recoveryPointRef": {"name": "orders-good"},
                "target": pg_target(pg_database, new_db, createDatabase=True),
            },
        )
        failed = wait_restore(k8s_api, namespace, "from-damaged")
        assert failed["status"]["phase"] == "Failed"
        assert cond(failed, "Failed")["reason"] == "Corrupted"
        assert "damaged" in failed["status"]["message"], failed["status"]["message"]
        # Refused before anything was written: the database was never even created.
        assert not database_exists(pg_database.server, new_db)


def test_redis_round_trip_keeps_values_and_ttls(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    redis_db: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    source = redis_db.client()
    pipe = source.pipeline()
    for i in range(500):
        pipe.set(f"s:{i}", f"value-{i}" * (1 + i % 5))
    pipe.hset("h", mapping={f"f{i}": i for i in range(50)})
    pipe.rpush("l", *range(100))
    pipe.sadd("set", *range(30))
    pipe.zadd("z", {f"m{i}": i / 3 for i in range(40)})
    for i in range(0, 500, 7):
        pipe.expire(f"s:{i}", 3600 + i)
    pipe.pexpire("h", 7_200_000)
    pipe.execute()
    create_secret(k8s_api, namespace, "cache", {"password": str(redis_db.password)})
    create_secret(k8s_api, namespace, "keys", {"2026-01": new_key()})
    create_secret(
        k8s_api,
        namespace,
        "s3",
        {"AWS_ACCESS_KEY_ID": "AKIDRESTORE", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex},
    )
    spec = {
        "schedule": "0 3 * * *",
        "source": {
            "redis": {
                "host": redis_db.host,
                "port": redis_db.port,
                "passwordSecretRef": {"name": "cache", "key": "password"},
            }
        },
        "storage": {
            "bucket": s3_bucket,
            "endpoint": moto.endpoint,
            "credentialsSecretRef": {"name": "s3"},
        },
        "encryption": {"keySecretRef": {"name": "keys"}},
    }
    make_policy(k8s_api, namespace, "cache", spec)
    point = on_demand(k8s_api, namespace, "cache", "cache-now")
    assert point["status"]["phase"] == "Completed", point["status"].get("message")
    expected = {
        key: (source.dump(key), source.execute_command("PEXPIRETIME", key))
        for key in source.scan_iter(count=1000)
    }
    target = RedisServer.start(password=uuid.uuid4().hex)
    try:
        create_secret(k8s_api, namespace, "target", {"password": str(target.password)})
        make_restore(
            k8s_api,
            namespace,
            "cache-back",
            {
                "recoveryPointRef": {"name": "cache-now"},
                "target": {
                    "redis": {
                        "host": target.host,
                        "port": target.port,
                        "passwordSecretRef": {"name": "target", "key": "password"},
                    }
                },
                "verify": [
                    {"name": "keys", "redis": {"op": "KeyCount"}, "expect": {"equals": "504"}},
                    {
                        "name": "hash",
                        "redis": {"op": "KeyExists", "key": "h"},
                        "expect": {"equals": "1"},
                    },
                ],
            },
        )
        restore = wait_restore(k8s_api, namespace, "cache-back")
        assert restore["status"]["phase"] == "Completed", restore["status"].get("message")
        assert [c["result"] for c in restore["status"]["checks"]] == ["Passed", "Passed"]
        restored = target.client()
        actual = {
            key: (restored.dump(key), restored.execute_command("PEXPIRETIME", key))
            for key in restored.scan_iter(count=1000)
        }
        assert len(expected) == 504
        # Same values (DUMP serializations) and the same absolute expiry times.
        assert actual == expected
        assert sum(1 for _k, (_v, at) in actual.items() if at > 0) == 73
    finally:
        target.stop()


def test_operator_restart_mid_restore_keeps_one_job(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    with scratch_database_name(pg_database.server) as new_db:
        job_runner.stop()  # the Job is created but does not run across the restart
        make_restore(
            k8s_api,
            namespace,
            "survives",
            {
                "recoveryPointRef": {"name": "orders-good"},
                "target": pg_target(pg_database, new_db, createDatabase=True),
            },
        )
        wait_for(
            "the restore Job",
            lambda: get(k8s_api, PLURAL, namespace, "survives").get("status", {}).get("jobName"),
        )
        aegis_operator.restart()
        job_runner.start()
        restore = wait_restore(k8s_api, namespace, "survives")
        assert restore["status"]["phase"] == "Completed", restore["status"].get("message")
        restore_jobs = [
            j for j in jobs(k8s_api, namespace) if j.metadata.name.startswith("restore-")
        ]
        assert [j.metadata.name for j in restore_jobs] == ["restore-survives"]
        assert len(job_runner.attempts(namespace, "restore-survives")) == 1
        with pg_database.server.connect(new_db) as conn:
            assert table_checksums(conn)["orders"][0] == SEED_ORDERS
        # Another restart after the end: a finished Restore is never run again.
        aegis_operator.restart()
        # Objects that exist are resumed from the operator's first listing, before it sees a
        # new one: once a new Restore has been handled, the finished one has been resumed.
        make_restore(
            k8s_api,
            namespace,
            "marker",
            {"recoveryPointRef": {"name": "not-there"}, "target": pg_target(pg_database, "x")},
        )
        wait_for(
            "the marker to be handled",
            lambda: condition(get(k8s_api, PLURAL, namespace, "marker"), "Accepted"),
        )
        again = get(k8s_api, PLURAL, namespace, "survives")
        assert again["status"]["completionTime"] == restore["status"]["completionTime"]
        assert len(job_runner.attempts(namespace, "restore-survives")) == 1


def test_a_failed_check_fails_the_restore_and_is_named(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    with scratch_database_name(pg_database.server) as new_db:
        make_restore(
            k8s_api,
            namespace,
            "checked",
            {
                "policyRef": {"name": "orders"},
                "target": pg_target(pg_database, new_db, createDatabase=True),
                "verify": [
                    {"name": "rows-match", "expect": {"matchesBackup": True}},
                    {
                        "name": "at-most-ten-orders",
                        "sql": "SELECT count(*) FROM orders",
                        "expect": {"max": 10},
                    },
                ],
            },
        )
        restore = wait_restore(k8s_api, namespace, "checked")
    status = restore["status"]
    assert status["phase"] == "Failed"
    assert "at-most-ten-orders" in status["message"] and "rows-match" not in status["message"]
    assert cond(restore, "Failed")["reason"] == "ChecksFailed"
    results = {c["name"]: (c["result"], c.get("value")) for c in status["checks"]}
    assert results == {
        "rows-match": ("Passed", results["rows-match"][1]),
        "at-most-ten-orders": ("Failed", str(SEED_ORDERS)),
    }
    assert status["durationSeconds"] > 0
    warnings = [e for e in events_for(k8s_api, namespace, "checked") if e["type"] == "Warning"]
    assert warnings and "at-most-ten-orders" in warnings[0]["message"]
    point = get(k8s_api, "recoverypoints", namespace, "orders-good")
    assert condition(point, "Verified") is None  # a failed check proves nothing


def test_deleting_a_running_restore_stops_its_job(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    # A "database" that accepts connections and never answers: the agent waits on it.
    with silent_server() as port:
        target = pg_target(pg_database, "never")
        target["postgres"].update(host="127.0.0.1", port=port)
        make_restore(
            k8s_api,
            namespace,
            "doomed",
            {"recoveryPointRef": {"name": "orders-good"}, "target": target},
        )
        wait_for(
            "the agent to run",
            lambda: any(
                a.outcome == "Running" for a in job_runner.attempts(namespace, "restore-doomed")
            ),
        )
        custom_api(k8s_api).delete_namespaced_custom_object(
            "dr.aegis.dev", "v1alpha1", namespace, PLURAL, "doomed"
        )
        wait_for(
            "the Job to go",
            lambda: (
                not [j for j in jobs(k8s_api, namespace) if j.metadata.name == "restore-doomed"]
            ),
            timeout=30,
        )
        (attempt,) = wait_for(
            "the agent to be stopped",
            lambda: [
                a
                for a in job_runner.attempts(namespace, "restore-doomed")
                if a.outcome != "Running"
            ],
            timeout=10,
        )
        assert attempt.outcome == "Deleted"


def test_a_corrupted_point_is_refused_with_a_reason(
    aegis_operator: OperatorHandle, k8s_api: Any, namespace: str
) -> None:
    create(
        k8s_api,
        "recoverypoints",
        namespace,
        {
            "kind": "RecoveryPoint",
            "metadata": {"name": "bad-point"},
            "spec": {"policyRef": {"name": "gone"}, "trigger": "Imported"},
        },
    )
    custom_api(k8s_api).patch_namespaced_custom_object_status(
        "dr.aegis.dev",
        "v1alpha1",
        namespace,
        "recoverypoints",
        "bad-point",
        {"status": {"phase": "Corrupted", "message": "sha256 mismatch"}},
    )
    make_restore(
        k8s_api,
        namespace,
        "from-bad",
        {
            "recoveryPointRef": {"name": "bad-point"},
            "target": {"redis": {"host": "127.0.0.1"}},
        },
    )
    restore = wait_restore(k8s_api, namespace, "from-bad", timeout=30)
    assert restore["status"]["phase"] == "Failed"
    assert cond(restore, "Accepted")["reason"] == "RecoveryPointCorrupted"
    assert "sha256 mismatch" in restore["status"]["message"]
    assert not jobs(k8s_api, namespace)


def test_kubectl_aegis_restore_follows_and_prints_checks(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backed_up(k8s_api, namespace, pg_database, s3_bucket, moto.endpoint)
    # The plugin is a user's tool: it runs as the admin, not as the operator's ServiceAccount
    # the operator fixture put in KUBECONFIG (the operator, which has backed up by now, built
    # its client from that at start-up and keeps it).
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))
    with scratch_database_name(pg_database.server) as new_db:
        argv = [
            "orders",  # a BackupPolicy: its newest good point
            "-n",
            namespace,
            "--name",
            "by-kubectl",
            "--to-postgres-host",
            pg_database.server.host,
            "--to-port",
            str(pg_database.server.port),
            "--to-database",
            new_db,
            "--user-secret",
            "db/username",
            "--password-secret",
            "db/password",
            "--create-database",
            "--verify-matches-backup",
        ]
        code = kubectl_restore.main(argv)
        out = capsys.readouterr().out
        assert code == 0, out
        restore = get(k8s_api, PLURAL, namespace, "by-kubectl")
        assert restore["spec"]["policyRef"] == {"name": "orders"}
        assert "restore.dr.aegis.dev/by-kubectl created (BackupPolicy orders)" in out
        # Progress lines carry the elapsed time; whether the Running phase is caught depends
        # on the one-second refresh, the final phase never does.
        assert re.search(r"\[\s*\d+\.\ds\] Completed: ", out), out
        assert "Restore Completed" in out
        assert f"duration        {restore['status']['display']['duration']}" in out
        assert "PASSED  matches-backup" in out
        assert "recovery point  orders-good" in out
        # A second source name that matches nothing is a clear usage error.
        assert kubectl_restore.main(["nothing-here", "-n", namespace, "--to-redis-host", "x"]) == 2
        assert "no RecoveryPoint or BackupPolicy named nothing-here" in capsys.readouterr().err


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never speaks."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
