"""The sandbox servers are real, answer over TCP on 127.0.0.1, and leave nothing behind."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest
import redis
from botocore.exceptions import ClientError
from mypy_boto3_route53 import Route53Client
from mypy_boto3_s3 import S3Client
from redis.backoff import NoBackoff
from redis.retry import Retry

from aegis.sandbox import processes
from aegis.sandbox.servers import (
    MotoServer,
    PostgresDatabase,
    PostgresServer,
    RedisServer,
    free_port,
)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_database_is_a_real_isolated_database(pg_database: PostgresDatabase) -> None:
    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'one')")
        row = conn.execute(
            "SELECT current_database(), v, current_setting('fsync') FROM t"
        ).fetchone()
    assert row == (pg_database.name, "one", "off")
    assert pg_database.dsn.startswith(
        f"postgresql://aegis:{pg_database.server.password}@127.0.0.1:"
    )


def test_postgres_requires_the_password_over_tcp(postgres_server: PostgresServer) -> None:
    bad_dsn = postgres_server.dsn().replace(postgres_server.password, "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad_dsn, connect_timeout=5)


def test_postgres_is_configured_for_replication(postgres_server: PostgresServer) -> None:
    with postgres_server.connect() as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('wal_level', 'max_wal_senders', 'hot_standby', 'listen_addresses')"
            ).fetchall()
        )
        running_as = conn.execute("SELECT current_user").fetchone()
    assert settings == {
        "wal_level": "replica",
        "max_wal_senders": "10",
        "hot_standby": "on",
        "listen_addresses": "127.0.0.1",
    }
    assert running_as == ("aegis",)


def test_dropped_database_is_gone(postgres_server: PostgresServer) -> None:
    name = postgres_server.create_database("test_drop_me")
    with postgres_server.connect(name):
        pass
    postgres_server.drop_database(name)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        postgres_server.connect(name)


def test_standby_streams_and_replays_a_write(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with primary.connect() as conn:
        conn.execute("CREATE TABLE replicated (v text)")
        conn.execute("INSERT INTO replicated VALUES ('hello standby')")
        lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        senders = conn.execute("SELECT state FROM pg_stat_replication").fetchall()
    assert senders == [("streaming",)]
    assert lsn is not None
    with standby.connect() as conn:
        deadline = time.monotonic() + 10
        replayed = None
        while replayed != (True,) and time.monotonic() < deadline:
            query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
            replayed = conn.execute(query, (lsn[0],)).fetchone()
        assert replayed == (True,)
        assert conn.execute("SELECT v FROM replicated").fetchall() == [("hello standby",)]
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO replicated VALUES ('refused')")


def test_standby_is_promoted_after_the_primary_dies(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with primary.connect() as conn:
        conn.execute("CREATE TABLE before_failover (v int)")
        conn.execute("INSERT INTO before_failover VALUES (1)")
        conn.execute("SELECT pg_switch_wal()")
    primary.stop_hard()
    assert not listening(primary.port)
    assert not primary.is_running()
    standby.promote()
    with standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        conn.execute("INSERT INTO before_failover VALUES (2)")
        count = conn.execute("SELECT count(*) FROM before_failover").fetchone()
    assert count is not None and count[0] >= 1


def test_postgres_stop_leaves_no_process_and_no_files() -> None:
    server = PostgresServer.start()
    tracked = server.tracked
    assert tracked is not None
    with server.connect() as conn:
        conn.execute("SELECT 1")
        # A backend is a child of the postmaster in a session of its own: it must go too.
        backend_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend_pid is not None
        assert backend_pid[0] in processes.live_members(tracked)
        server.stop()
    assert processes.live_members(tracked) == []
    assert not server.base_dir.exists()
    assert not listening(server.port)


# --------------------------------------------------------------------------- Redis


def test_redis_db_requires_its_password(redis_db: RedisServer) -> None:
    client = redis_db.client()
    client.set("key", "value")
    assert client.get("key") == b"value"
    # No client retries: redis-py counts a refused password as a connection error to retry.
    no_retry = Retry(NoBackoff(), 0)
    wrong = redis.Redis(host=redis_db.host, port=redis_db.port, password="wrong", retry=no_retry)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert redis_db.password and redis_db.password in redis_db.url


def test_redis_server_has_no_persistence(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.ping() is True
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind")["bind"] == "127.0.0.1"


def test_redis_stop_leaves_no_process() -> None:
    server = RedisServer.start()
    tracked = server.tracked
    assert tracked is not None and tracked.is_alive()
    server.stop()
    assert not tracked.is_alive()
    assert not listening(server.port)


# --------------------------------------------------------------------------- moto


def test_s3_bucket_is_fresh_and_works(s3_client: S3Client, s3_bucket: str) -> None:
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    s3_client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"payload")
    body = s3_client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read()
    assert body == b"payload"


def test_moto_reset_forgets_buckets_and_zones(moto: MotoServer) -> None:
    s3 = moto.s3_client()
    route53 = moto.route53_client()
    s3.create_bucket(Bucket="reset-me-please")
    route53.create_hosted_zone(Name="example.test.", CallerReference="ref-1")
    moto.reset()
    assert s3.list_buckets()["Buckets"] == []
    assert route53.list_hosted_zones()["HostedZones"] == []
    with pytest.raises(ClientError) as missing:
        s3.head_bucket(Bucket="reset-me-please")
    assert missing.value.response["Error"]["Code"] == "404"


def test_route53_upsert_round_trips(route53_client: Route53Client) -> None:
    zone = route53_client.create_hosted_zone(Name="aegis.test.", CallerReference="ref-2")
    zone_id = zone["HostedZone"]["Id"]
    route53_client.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": "db.aegis.test.",
                        "Type": "A",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": "10.0.0.1"}],
                    },
                }
            ]
        },
    )
    records = route53_client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    assert [r["ResourceRecords"] for r in records if r["Type"] == "A"] == [[{"Value": "10.0.0.1"}]]


def test_aws_env_points_plain_boto3_at_moto(aws_env: dict[str, str], s3_bucket: str) -> None:
    import boto3

    client = boto3.client("s3")  # no endpoint_url: it comes from AWS_ENDPOINT_URL
    assert client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    assert s3_bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_moto_stop_leaves_no_process() -> None:
    server = MotoServer.start()
    tracked = server.tracked
    assert tracked is not None and listening(server.port)
    server.stop()
    assert not tracked.is_alive()
    assert not listening(server.port)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
