"""The `command` source end to end: the real operator, the Job runner running the real agent,
which runs the real `mariadb-dump` and `mariadb` against a real mariadbd, and moto S3. What was
restored is checked in MariaDB itself with CHECKSUM TABLE."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from typing import Any

from tests.e2e.helpers import (
    OperatorHandle,
    condition,
    create_secret,
    events_for,
    get,
    new_key,
)
from tests.e2e.test_backups import jobs, make_policy, on_demand
from tests.e2e.test_restore import make_restore, wait_restore

from aegis import display
from aegis.sandbox.servers import MariaDBServer, mariadb_binary

ORDERS = 2000
CUSTOMERS = 150


def seed(server: MariaDBServer, database: str) -> None:
    """Tables of varied types: ints, decimals, dates, UTF-8 text, JSON, blobs, NULLs, an
    index, a view and an empty table."""
    server.sql(
        f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4;\n"
        f"USE `{database}`;\n"
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, placed DATETIME(3) NOT NULL,"
        " total DECIMAL(12,2), note TEXT, doc JSON, paid BOOLEAN, blob_col VARBINARY(64),"
        " KEY by_placed (placed)) ENGINE=InnoDB;\n"
        "INSERT INTO orders SELECT seq, TIMESTAMPADD(SECOND, seq * 17, '2026-01-01'),"
        " seq * 1.37, IF(seq % 11 = 0, NULL, REPEAT(MD5(seq), 1 + seq % 4)),"
        " JSON_OBJECT('i', seq, 'tags', JSON_ARRAY('a', seq % 7)), seq % 2 = 0,"
        f" UNHEX(MD5(seq)) FROM seq_1_to_{ORDERS};\n"
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64), born DATE)"
        " ENGINE=InnoDB;\n"
        "INSERT INTO customers SELECT seq, CONCAT('cüstomer ', seq),"
        f" DATE_ADD('1970-01-01', INTERVAL seq DAY) FROM seq_1_to_{CUSTOMERS};\n"
        "CREATE TABLE empty_table (id INT, payload TEXT) ENGINE=InnoDB;\n"
        "CREATE VIEW paid_orders AS SELECT id, total FROM orders WHERE paid;\n"
    )


def checksums(server: MariaDBServer, database: str) -> dict[str, str]:
    """CHECKSUM TABLE of every base table, by table name."""
    tables = server.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        f"'{database}' AND table_type = 'BASE TABLE' ORDER BY 1"
    ).split()
    out = server.sql(f"CHECKSUM TABLE {', '.join(f'`{database}`.`{t}`' for t in tables)} EXTENDED")
    sums = {}
    for line in out.splitlines():
        qualified, value = line.split("\t")
        sums[qualified.split(".", 1)[1]] = value
    return sums


def full_dump(server: MariaDBServer, database: str) -> bytes:
    """Schema and rows, byte for byte (no dump date), to prove a target untouched."""
    return subprocess.run(
        [
            mariadb_binary("mariadb-dump"),
            "--no-defaults",
            "--protocol=TCP",
            f"--host={server.host}",
            f"--port={server.port}",
            f"--user={server.user}",
            "--skip-dump-date",
            "--single-transaction",
            database,
        ],
        env=server.client_env(),
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


def client(server: MariaDBServer, *args: str) -> list[str]:
    """A `mariadb` argument vector for a command (password from MYSQL_PWD, a Secret)."""
    return [
        "mariadb",
        "--no-defaults",
        "--protocol=TCP",
        f"--host={server.host}",
        f"--port={server.port}",
        f"--user={server.user}",
        *args,
    ]


def table_count(server: MariaDBServer, database: str) -> list[str]:
    """An emptyCheck: the number of tables and views in `database` (0 when it is absent)."""
    return client(
        server,
        "--batch",
        "--skip-column-names",
        "--execute",
        f"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{database}'",
    )


def command_policy(
    server: MariaDBServer, database: str, bucket: str, endpoint: str
) -> dict[str, Any]:
    return {
        "schedule": "0 3 * * *",
        "source": {
            "command": {
                "database": database,
                "dump": [
                    "mariadb-dump",
                    "--no-defaults",
                    "--protocol=TCP",
                    f"--host={server.host}",
                    f"--port={server.port}",
                    f"--user={server.user}",
                    "--single-transaction",
                    "--routines",
                    "--triggers",
                    "--hex-blob",
                    database,
                ],
                "env": [
                    {"name": "MYSQL_PWD", "secretKeyRef": {"name": "maria", "key": "password"}}
                ],
            }
        },
        "storage": {
            "bucket": bucket,
            "prefix": "backups",
            "endpoint": endpoint,
            "credentialsSecretRef": {"name": "s3"},
        },
        "encryption": {"keySecretRef": {"name": "keys"}},
    }


def secrets(k8s_api: Any, namespace: str, server: MariaDBServer) -> None:
    create_secret(k8s_api, namespace, "maria", {"password": server.password})
    create_secret(k8s_api, namespace, "keys", {"2026-01": new_key()})
    create_secret(
        k8s_api,
        namespace,
        "s3",
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = condition(obj, type_)
    assert found is not None, f"no {type_} condition in {obj.get('status')}"
    return found


def test_mariadb_backup_restores_into_a_new_database_with_equal_checksums(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    kubectl: Any,
    k8s_api: Any,
    namespace: str,
    mariadb_server: MariaDBServer,
    s3_bucket: str,
    moto: Any,
) -> None:
    server = mariadb_server
    suffix = uuid.uuid4().hex[:10]
    source, copy = f"shop_{suffix}", f"shop_copy_{suffix}"
    try:
        seed(server, source)
        seeded = checksums(server, source)
        assert set(seeded) == {"orders", "customers", "empty_table"}
        secrets(k8s_api, namespace, server)
        make_policy(
            k8s_api, namespace, "shop", command_policy(server, source, s3_bucket, moto.endpoint)
        )
        point = on_demand(k8s_api, namespace, "shop", "shop-1")
        status = point["status"]
        assert status["phase"] == "Completed", status.get("message")
        assert status["source"] == {"kind": "Command", "database": source}
        assert status["sizeBytes"] > ORDERS * 100  # the dump's own bytes, measured
        assert status["storedBytes"] < status["sizeBytes"]  # compressed before encryption
        # Columns read as people write sizes, from the numeric fields (which stay).
        assert status["display"]["size"] == display.size(status["storedBytes"])
        assert re.fullmatch(r"\d+\.\d (KiB|MiB)", status["display"]["size"])
        assert status["display"]["logicalSize"] == display.size(status["sizeBytes"])
        (job,) = [j for j in jobs(k8s_api, namespace) if j.metadata.name.startswith("backup-")]
        container = job.spec.template.spec.containers[0]
        assert server.password not in " ".join(container.command + container.args)
        secret_env = {
            e.name: e.value_from.secret_key_ref.name
            for e in container.env
            if e.value_from and e.value_from.secret_key_ref
        }
        assert secret_env["AEGIS_CMDENV_MYSQL_PWD"] == "maria"
        # The mistake a restore repairs.
        server.sql(f"USE `{source}`; DELETE FROM orders WHERE id % 3 = 0; DROP TABLE customers;")

        make_restore(
            k8s_api,
            namespace,
            "to-copy",
            {
                "recoveryPointRef": {"name": "shop-1"},
                "target": {
                    "command": {
                        "restore": [
                            "sh",
                            "-c",
                            '"$@" --execute "CREATE DATABASE \\`$0\\`" && exec "$@" "$0"',
                            copy,
                            *client(server),
                        ],
                        "emptyCheck": table_count(server, copy),
                    }
                },
                "verify": [
                    {
                        "name": "orders",
                        "command": client(
                            server,
                            "--batch",
                            "--skip-column-names",
                            "--execute",
                            f"SELECT COUNT(*) FROM `{copy}`.orders",
                        ),
                        "expect": {"equals": str(ORDERS)},
                    }
                ],
            },
        )
        restore = wait_restore(k8s_api, namespace, "to-copy", timeout=120)
        status = restore["status"]
        assert status["phase"] == "Completed", status.get("message")
        assert status["restoredBytes"] == point["status"]["sizeBytes"]
        assert status["display"]["duration"] == display.duration(status["durationSeconds"])
        assert status["display"]["restored"] == point["status"]["display"]["logicalSize"]
        assert status["checks"] == [{"name": "orders", "result": "Passed", "value": str(ORDERS)}]
        # Equal per-table checksums: the copy holds what was seeded, not the damaged source.
        assert checksums(server, copy) == seeded
        assert server.sql(f"SELECT COUNT(*) FROM `{copy}`.paid_orders").strip() == str(ORDERS // 2)
        verified = get(k8s_api, "recoverypoints", namespace, "shop-1")
        assert cond(verified, "Verified")["status"] == "True"
        assert verified["status"]["verification"]["by"] == "restore/to-copy"
        # `kubectl get` shows the display fields in its columns, not raw numbers.
        table = kubectl("get", "rp,rst", "-n", namespace, check=True).stdout
        assert point["status"]["display"]["size"] in table
        assert str(point["status"]["storedBytes"]) not in table
        assert status["display"]["duration"] in table
        # `kubectl aegis status -o json` prints the objects themselves.
        listed = json.loads(
            subprocess.run(
                [sys.executable, "-m", "aegis", "status", "-n", namespace, "-o", "json"],
                env={**os.environ, "KUBECONFIG": str(k8s_api.kubeconfig)},
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        assert listed["kind"] == "List"
        (shown,) = [i for i in listed["items"] if i["metadata"]["name"] == "shop-1"]
        assert shown["kind"] == "RecoveryPoint" and shown["status"]["display"]["size"]
    finally:
        server.sql(f"DROP DATABASE IF EXISTS `{source}`; DROP DATABASE IF EXISTS `{copy}`;")


def test_command_source_refuses_a_non_empty_target_without_allow_overwrite(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    mariadb_server: MariaDBServer,
    s3_bucket: str,
    moto: Any,
) -> None:
    server = mariadb_server
    source = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        seed(server, source)
        secrets(k8s_api, namespace, server)
        spec = command_policy(server, source, s3_bucket, moto.endpoint)
        # The policy carries the restore and emptyCheck commands; Restores inherit them.
        spec["source"]["command"]["restore"] = client(server, source)
        spec["source"]["command"]["emptyCheck"] = table_count(server, source)
        make_policy(k8s_api, namespace, "shop", spec)
        point = on_demand(k8s_api, namespace, "shop", "shop-1")
        assert point["status"]["phase"] == "Completed", point["status"].get("message")
        server.sql(f"USE `{source}`; UPDATE orders SET total = 0 WHERE id <= 10;")
        before_sums, before_dump = checksums(server, source), full_dump(server, source)

        make_restore(
            k8s_api,
            namespace,
            "over-source",
            {"recoveryPointRef": {"name": "shop-1"}, "target": {"command": {}}},
        )
        refused = wait_restore(k8s_api, namespace, "over-source")
        assert refused["status"]["phase"] == "Failed"
        assert cond(refused, "Failed")["reason"] == "TargetNotEmpty"
        message = refused["status"]["message"]
        assert "allowOverwrite" in message and "counted 4" in message  # 3 tables + 1 view
        # Untouched: row for row and byte for byte.
        assert checksums(server, source) == before_sums
        assert full_dump(server, source) == before_dump
        warnings = [
            e for e in events_for(k8s_api, namespace, "over-source") if e["type"] == "Warning"
        ]
        assert warnings and warnings[0]["reason"] == "TargetNotEmpty"

        # With allowOverwrite the dump is applied over it (mariadb-dump drops and recreates
        # each table), which brings back the backed-up rows.
        make_restore(
            k8s_api,
            namespace,
            "overwrite",
            {
                "recoveryPointRef": {"name": "shop-1"},
                "target": {"command": {}},
                "allowOverwrite": True,
            },
        )
        restored = wait_restore(k8s_api, namespace, "overwrite", timeout=120)
        assert restored["status"]["phase"] == "Completed", restored["status"].get("message")
        assert server.sql(f"SELECT SUM(total = 0) FROM `{source}`.orders").strip() == "0"
    finally:
        server.sql(f"DROP DATABASE IF EXISTS `{source}`;")


def test_drill_of_a_command_point_is_refused_naming_the_field_and_the_fix(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    mariadb_server: MariaDBServer,
    s3_bucket: str,
    moto: Any,
) -> None:
    from tests.e2e.test_drills import PLURAL as DRILLS
    from tests.e2e.test_drills import finished_run, make_drill

    server = mariadb_server
    source = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        seed(server, source)
        secrets(k8s_api, namespace, server)
        make_policy(
            k8s_api, namespace, "shop", command_policy(server, source, s3_bucket, moto.endpoint)
        )
        point = on_demand(k8s_api, namespace, "shop", "shop-1")
        assert point["status"]["phase"] == "Completed", point["status"].get("message")
        before = checksums(server, source)

        make_drill(k8s_api, namespace, "scratch", {
            "type": "Restore", "restore": {"policyRef": {"name": "shop"}}})
        make_drill(k8s_api, namespace, "into-target", {
            "type": "Restore",
            "restore": {"recoveryPointRef": {"name": "shop-1"}, "target": {"command": {}}}})
        scratch = finished_run(k8s_api, namespace, "scratch", timeout=30)["status"]["lastRun"]
        assert scratch["result"] == "Failed" and scratch["reason"] == "ScratchUnsupported"
        assert "spec.restore" in scratch["message"] and "shop-1" in scratch["message"]
        assert "spec.target.command" in scratch["message"]  # the fix: a Restore
        into = finished_run(k8s_api, namespace, "into-target", timeout=30)["status"]["lastRun"]
        assert into["result"] == "Failed" and into["reason"] == "CommandTargetUnsupported"
        assert "spec.restore.target" in into["message"]
        assert not [j for j in jobs(k8s_api, namespace) if j.metadata.name.startswith("drill-")]
        # nothing was restored anywhere; the point is not marked Verified by a refused drill
        assert checksums(server, source) == before
        verified = get(k8s_api, "recoverypoints", namespace, "shop-1")
        assert (condition(verified, "Verified") or {}).get("status") != "True"
        warned = [e["reason"] for e in events_for(k8s_api, namespace, "scratch")
                  if e["type"] == "Warning"]
        assert "ScratchUnsupported" in warned
        assert get(k8s_api, DRILLS, namespace, "scratch")["status"]["lastRun"]["reason"] == \
            "ScratchUnsupported"
    finally:
        server.sql(f"DROP DATABASE IF EXISTS `{source}`;")
