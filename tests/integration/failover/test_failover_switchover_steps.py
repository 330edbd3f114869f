"""Switchover and Redis steps against real servers: refusals change nothing, a catch-up
that cannot finish rolls the fence back, probes report replication (issue 13)."""

from __future__ import annotations

import time
from typing import Any

from failover_helpers import DictSecrets

from aegis.api.failoverplan import (
    HealthCheck,
    PostgresSwitchoverStep,
    RedisPromoteStep,
    RedisSwitchoverStep,
    Transition,
)
from aegis.probes import ProbeContext, run_check
from aegis.sandbox.servers import PostgresServer, RedisServer
from aegis.steps.base import StepContext
from aegis.steps.postgres import run_postgres_switchover
from aegis.steps.redis import run_redis_promote, run_redis_switchover


def target(server: PostgresServer) -> dict[str, object]:
    return {"host": server.host, "port": server.port, "database": "postgres",
            "userSecretRef": {"name": "pg", "key": "user"},
            "passwordSecretRef": {"name": "pg", "key": "password"}}


def pg_secrets(server: PostgresServer) -> DictSecrets:
    return DictSecrets({"pg": {"user": server.user, "password": server.password}})


def ctx(timeout: float = 30.0, max_lag_bytes: int | None = 1024 * 1024) -> StepContext:
    return StepContext(
        plan="orders", namespace="ns", step="switchover",
        transition=Transition(kind="Failback", id="failback-1"), from_site="us", to_site="eu",
        deadline=time.monotonic() + timeout, max_lag_bytes=max_lag_bytes,
    )


def switchover(standby: PostgresServer, primary: PostgresServer) -> PostgresSwitchoverStep:
    return PostgresSwitchoverStep.model_validate(
        {"target": target(standby), "primary": target(primary)})


def writable(server: PostgresServer) -> bool:
    with server.connect(autocommit=True) as conn:
        row = conn.execute("SHOW default_transaction_read_only").fetchone()
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is None or row[0] == "on" or in_recovery is None or in_recovery[0]:
            return False
        conn.execute("CREATE TABLE IF NOT EXISTS probe_write (id int)")
        return True


def test_probe_reports_replication_and_a_fenced_primary_is_not_writable(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    ctx_ = ProbeContext("ns", secrets=pg_secrets(primary))

    def check(server: PostgresServer, writable: bool) -> HealthCheck:
        return HealthCheck.model_validate(
            {"name": "db", "postgres": {**target(server), "writable": writable}})

    seen = run_check(check(primary, True), 3, ctx_)
    assert seen.ok and seen.replication is not None
    assert seen.replication.role == "primary" and (seen.replication.position or 0) > 0
    replica = run_check(check(standby, False), 3, ctx_)
    assert replica.replication is not None and replica.replication.role == "replica"
    assert replica.replication.streaming is True and "streaming" in replica.message
    with primary.connect(autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.2)
    fenced = run_check(check(primary, True), 3, ctx_)
    assert not fenced.ok and "read-only" in fenced.message
    assert fenced.replication is not None and fenced.replication.read_only is True


def test_switchover_refuses_a_standby_that_does_not_stream_and_changes_nothing(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with standby.connect(autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    result = run_postgres_switchover(switchover(standby, primary), ctx(), pg_secrets(primary))
    assert not result.ok and "refused, nothing changed" in result.message
    assert "WAL receiver is" in result.message
    assert writable(primary)  # not fenced


def test_switchover_rolls_the_fence_back_when_the_standby_cannot_catch_up(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")  # receives, does not replay
    with primary.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 100) id")
    started = time.monotonic()
    result = run_postgres_switchover(switchover(standby, primary), ctx(timeout=7),
                                     pg_secrets(primary))
    assert not result.ok and "switchover rolled back" in result.message, result.message
    assert "unfenced" in result.message and time.monotonic() - started < 10
    assert writable(primary)
    with standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def redis_target(server: RedisServer) -> dict[str, object]:
    return {"host": server.host, "port": server.port}


def _until_link_up(replica: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while replica.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica never attached to its master"
        time.sleep(0.05)


def test_redis_promote_fences_catches_up_and_is_idempotent() -> None:
    master, replica = RedisServer.start(), RedisServer.start()
    try:
        m, r = master.client(), replica.client()
        r.replicaof(master.host, master.port)
        # The writes below must stream to a replica that is attached, as in production;
        # under load the initial full sync alone can outlast the step's catch-up budget.
        _until_link_up(r)
        m.mset({f"k{i}": "v" * 100 for i in range(2000)})
        step = RedisPromoteStep.model_validate(
            {"target": redis_target(replica), "fencePrimary": redis_target(master)})
        result = run_redis_promote(step, ctx(), None)
        assert result.ok, result.message
        assert result.outputs["lagBytes"] == "0" and r.dbsize() == 2000
        assert r.info("replication")["role"] == "master"
        try:
            m.set("late", "1")
            raise AssertionError("the fenced master took a write")
        except Exception as exc:
            assert "NOREPLICAS" in str(exc)
        again = run_redis_promote(step, ctx(), None)
        assert again.ok and "already a master" in again.message
    finally:
        replica.stop()
        master.stop()


def test_redis_switchover_refuses_a_diverged_master_and_a_foreign_replica() -> None:
    a, b, c = RedisServer.start(), RedisServer.start(), RedisServer.start()
    try:
        step = RedisSwitchoverStep.model_validate(
            {"target": redis_target(a), "primary": redis_target(b)})
        diverged = run_redis_switchover(step, ctx(), None)  # a is a master of its own
        assert not diverged.ok and "diverged" in diverged.message
        a.client().replicaof(c.host, c.port)  # a replicates from another master
        time.sleep(1.0)
        foreign = run_redis_switchover(step, ctx(), None)
        assert not foreign.ok and "nothing changed" in foreign.message
        b.client().set("still", "writable")  # b was never fenced
    finally:
        for server in (a, b, c):
            server.stop()


def test_a_retry_after_a_rollback_checks_and_fences_again(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with primary.connect() as conn:
        conn.execute("CREATE TABLE t (id int)")
    first = run_postgres_switchover(switchover(standby, primary), ctx(timeout=7),
                                    pg_secrets(primary))
    assert not first.ok and "rolled back" in first.message
    # writes after the rollback lie beyond the first attempt's final LSN
    with primary.connect() as conn:
        conn.execute("INSERT INTO t SELECT generate_series(1, 500)")
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_resume()")
    retry = StepContext(
        plan="orders", namespace="ns", step="switchover",
        transition=Transition(kind="Failback", id="failback-1"), from_site="us", to_site="eu",
        deadline=time.monotonic() + 30, max_lag_bytes=1024 * 1024,
        prior_outputs=dict(first.outputs), attempt=2,
    )
    second = run_postgres_switchover(switchover(standby, primary), retry, pg_secrets(primary))
    assert second.ok, second.message
    assert second.outputs["lagBytes"] == "0" and second.outputs["finalLsn"]
    assert "preconditions" in second.outputs and not writable(primary)
    with standby.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (500,)
