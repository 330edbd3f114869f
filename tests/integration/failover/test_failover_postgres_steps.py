"""postgresPromote and the fence on a real primary and streaming standby."""

from __future__ import annotations

import time

import psycopg
import pytest
from failover_helpers import DictSecrets

from aegis.api.failoverplan import PostgresPromoteStep, Transition
from aegis.probes import PgEndpoint
from aegis.sandbox.servers import PostgresServer
from aegis.steps.base import StepContext
from aegis.steps.postgres import fence_primary, run_postgres_promote


def target(server: PostgresServer, secret: str) -> dict[str, object]:
    return {"host": server.host, "port": server.port, "database": "postgres",
            "userSecretRef": {"name": secret, "key": "user"},
            "passwordSecretRef": {"name": secret, "key": "password"}}


def promote_step(standby: PostgresServer, primary: PostgresServer | None) -> PostgresPromoteStep:
    body: dict[str, object] = {"target": target(standby, "standby")}
    if primary is not None:
        body["fencePrimary"] = target(primary, "primary")
    return PostgresPromoteStep.model_validate(body)


def secrets(primary: PostgresServer, standby: PostgresServer) -> DictSecrets:
    return DictSecrets({
        "standby": {"user": standby.user, "password": standby.password},
        "primary": {"user": primary.user, "password": primary.password},
    })


def ctx(timeout: float = 30.0) -> tuple[StepContext, list[dict[str, str]]]:
    saved: list[dict[str, str]] = []
    context = StepContext(
        plan="orders", namespace="ns", step="promote",
        transition=Transition(kind="Failover", id="failover-1"), from_site="eu", to_site="us",
        deadline=time.monotonic() + timeout, save_outputs=lambda o: saved.append(dict(o)),
    )
    return context, saved


def in_recovery(server: PostgresServer) -> bool:
    with server.connect() as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


def wait_replayed(primary: PostgresServer, standby: PostgresServer) -> None:
    with primary.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
    with standby.connect() as conn:
        for _ in range(200):
            done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                (row[0],)).fetchone()
            if done and done[0]:
                return
            time.sleep(0.05)
    raise AssertionError("standby did not replay")


def test_promote_after_the_primary_dies_measures_lag_and_is_idempotent(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 1000)")
    wait_replayed(primary, standby)
    primary.stop_hard()

    context, saved = ctx()
    started = time.monotonic()
    result = run_postgres_promote(promote_step(standby, primary), context,
                                  secrets(primary, standby))
    elapsed = time.monotonic() - started
    assert result.ok, result.message
    assert "skipped" in result.outputs["fence"] and "unreachable" in result.outputs["fence"]
    assert result.outputs["lagBytes"] == "0" and result.outputs["lagSeconds"] == "0.000"
    assert saved and saved[0]["lagBytes"] == "0"  # persisted before pg_promote ran
    assert "promoted" in result.message and "writable" in result.message
    assert not in_recovery(standby)
    with standby.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (1001)")
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
        assert row is not None and row[0] == 1001
    assert elapsed < 10, elapsed

    again, saved_again = ctx()
    second = run_postgres_promote(promote_step(standby, None), again, secrets(primary, standby))
    assert second.ok and "already promoted" in second.message
    assert saved_again == []  # nothing measured or promoted the second time


def test_lag_is_measured_when_replay_is_behind(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with primary.connect() as conn:
        conn.execute("CREATE TABLE events (id int, body text)")
    wait_replayed(primary, standby)
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with primary.connect() as conn:
        conn.execute(
            "INSERT INTO events SELECT i, repeat('x', 200) FROM generate_series(1, 5000) i"
        )
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        written = row[0]
    with standby.connect() as conn:  # wait until the WAL is received (not replayed)
        for _ in range(200):
            got = conn.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn",
                               (written,)).fetchone()
            if got and got[0]:
                break
            time.sleep(0.05)
    time.sleep(1.1)  # let the last replayed transaction age, so lagSeconds is visibly > 1
    primary.stop_hard()

    context, _ = ctx()
    result = run_postgres_promote(promote_step(standby, None), context, secrets(primary, standby))
    assert result.ok, result.message
    lag_bytes = int(result.outputs["lagBytes"])
    assert lag_bytes > 5000 * 200, lag_bytes  # at least the rows' payload was unreplayed
    assert float(result.outputs["lagSeconds"]) >= 1.0
    assert result.outputs["receiveLsn"] != result.outputs["replayLsn"]
    # promotion replays everything received first: the lag was delay, not loss
    with standby.connect() as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        assert row is not None and row[0] == 5000


def test_a_reachable_old_primary_is_fenced_before_promotion(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    bystander = primary.connect()  # a client session the fence must end
    bystander.execute("CREATE TABLE t (id int)")
    bystander.execute("INSERT INTO t SELECT generate_series(1, 100)")

    context, _ = ctx()
    result = run_postgres_promote(promote_step(standby, primary), context,
                                  secrets(primary, standby))
    assert result.ok, result.message
    assert result.outputs["fence"].startswith("fenced") and "1 client sessions ended" in \
        result.outputs["fence"]
    # fenced, then caught up to the primary's final LSN: nothing is missing
    assert result.outputs["lagBytes"] == "0"
    assert result.outputs["primaryLsn"]
    with pytest.raises(psycopg.OperationalError):
        bystander.execute("SELECT 1")
    with primary.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO t VALUES (101)")
    with standby.connect() as conn:
        conn.execute("INSERT INTO t VALUES (101)")
        row = conn.execute("SELECT count(*) FROM t").fetchone()
        assert row is not None and row[0] == 101


def test_fence_skips_unreachable_servers_and_standbys(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    _, standby = pg_standby
    endpoint = PgEndpoint(standby.host, standby.port, "postgres", standby.user, standby.password)
    on_standby = fence_primary(endpoint, 2)
    assert not on_standby.fenced and "is a standby" in on_standby.message
    gone = PgEndpoint("127.0.0.1", 1, "postgres", "u", "secret-pw")
    started = time.monotonic()
    unreachable = fence_primary(gone, 2)
    assert not unreachable.fenced and unreachable.message.startswith("skipped:")
    assert "secret-pw" not in unreachable.message
    assert time.monotonic() - started < 3
