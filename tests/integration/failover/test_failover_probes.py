"""Probes against real servers: PostgreSQL primary/standby, redis-server, HTTP, TCP."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from failover_helpers import LOOPBACK, DictSecrets, Endpoint, Hung

from aegis.api.failoverplan import HealthCheck, Site
from aegis.probes import ProbeContext, Prober, run_check
from aegis.sandbox.servers import PostgresServer, RedisServer


def pg_check(server: PostgresServer, writable: bool) -> HealthCheck:
    return HealthCheck.model_validate({"name": "db", "postgres": {
        "host": server.host, "port": server.port, "database": "postgres", "writable": writable,
        "userSecretRef": {"name": "pg", "key": "user"},
        "passwordSecretRef": {"name": "pg", "key": "password"},
    }})


def pg_ctx(server: PostgresServer, password: str | None = None) -> ProbeContext:
    creds = {"user": server.user, "password": password or server.password}
    return ProbeContext("ns", secrets=DictSecrets({"pg": creds}))


def test_postgres_writable_on_primary_and_not_on_standby(
    pg_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pg_standby
    ok = run_check(pg_check(primary, writable=True), 3, pg_ctx(primary))
    assert ok.ok and "primary" in ok.message and ok.latency_ms > 0
    refused = run_check(pg_check(standby, writable=True), 3, pg_ctx(standby))
    assert not refused.ok and "standby (in recovery), expected writable" in refused.message
    reachable = run_check(pg_check(standby, writable=False), 3, pg_ctx(standby))
    assert reachable.ok and "standby" in reachable.message


def test_postgres_bad_password_fails_without_leaking_it(postgres_server: PostgresServer) -> None:
    wrong = "Wr0ng-" + postgres_server.password
    result = run_check(pg_check(postgres_server, False), 3, pg_ctx(postgres_server, wrong))
    assert not result.ok
    assert "password authentication failed" in result.message
    assert wrong not in result.message


def test_postgres_missing_secret_key_is_a_failed_check(postgres_server: PostgresServer) -> None:
    ctx = ProbeContext("ns", secrets=DictSecrets({"pg": {"user": "x"}}))
    result = run_check(pg_check(postgres_server, False), 3, ctx)
    assert not result.ok and "Secret pg has no key password" in result.message


def redis_check(server: RedisServer, role: str | None) -> HealthCheck:
    body: dict[str, Any] = {"host": server.host, "port": server.port, "role": role}
    if server.password:
        body["passwordSecretRef"] = {"name": "redis", "key": "password"}
    return HealthCheck.model_validate({"name": "cache", "redis": body})


def test_redis_ping_and_replication_role(redis_db: RedisServer) -> None:
    ctx = ProbeContext("ns", secrets=DictSecrets({"redis": {"password": redis_db.password or ""}}))
    master = run_check(redis_check(redis_db, "master"), 2, ctx)
    assert master.ok and "PONG, role master" in master.message
    replica = RedisServer.start()
    try:
        replica.client().replicaof(redis_db.host, redis_db.port)
        replica.client().config_set("masterauth", redis_db.password)
        as_slave = run_check(redis_check(replica, "slave"), 2, ctx)
        assert as_slave.ok, as_slave.message
        as_master = run_check(redis_check(replica, "master"), 2, ctx)
        assert not as_master.ok and "role is slave, expected master" in as_master.message
    finally:
        replica.stop()
    wrong = ProbeContext("ns", secrets=DictSecrets({"redis": {"password": "nope-x1"}}))
    denied = run_check(redis_check(redis_db, None), 2, wrong)
    assert not denied.ok and "nope-x1" not in denied.message


def http_check(url: str, **kw: Any) -> HealthCheck:
    return HealthCheck.model_validate({"name": "web", "http": {"url": url, **kw}})


def test_http_status_flip_and_headers_from_a_secret(http_endpoint: Endpoint) -> None:
    ctx = ProbeContext("ns", secrets=DictSecrets({"hdr": {"Authorization": "Bearer s3cr3t"}}),
                       endpoints=LOOPBACK)
    check = http_check(http_endpoint.url, headersSecretRef={"name": "hdr"})
    ok = run_check(check, 2, ctx)
    assert ok.ok and ok.message == "HTTP 200"
    assert http_endpoint.requests[-1]["headers"]["Authorization"] == "Bearer s3cr3t"
    http_endpoint.status = 503
    down = run_check(check, 2, ctx)
    assert not down.ok and down.message == "HTTP 503, expected 200"
    assert run_check(http_check(http_endpoint.url, expectStatus=[503]), 2, ctx).ok


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_open_and_closed_ports(http_endpoint: Endpoint) -> None:
    port = http_endpoint.server.server_address[1]
    ctx = ProbeContext("ns", endpoints=LOOPBACK)
    opened = HealthCheck.model_validate({"name": "t", "tcp": {"host": "127.0.0.1", "port": port}})
    assert run_check(opened, 2, ctx).ok
    shut = HealthCheck.model_validate({"name": "t", "tcp": {"host": "127.0.0.1",
                                                           "port": closed_port()}})
    result = run_check(shut, 2, ctx)
    assert not result.ok and "refused" in result.message.lower()


def site(name: str, url: str, timeout: int = 1) -> Site:
    return Site.model_validate({"name": name, "timeoutSeconds": timeout,
                                "checks": [{"name": "web", "http": {"url": url}}]})


@pytest.mark.parametrize("hung_server", [False, True], ids=["silent", "trickling"],
                         indirect=True)
def test_a_hung_server_fails_at_the_timeout_without_delaying_another_plan(
    hung_server: Hung, http_endpoint: Endpoint
) -> None:
    prober = Prober(max_workers=8)
    try:
        slow_site = site("slow", f"http://127.0.0.1:{hung_server.port}/health", timeout=1)
        fast_site = site("fast", http_endpoint.url, timeout=1)
        ctx = ProbeContext("ns", endpoints=LOOPBACK)
        slow: dict[str, Any] = {}

        def probe_slow() -> None:
            started = time.monotonic()
            slow["probe"] = prober.probe_site(slow_site, ctx)
            slow["elapsed"] = time.monotonic() - started

        thread = threading.Thread(target=probe_slow)
        thread.start()
        time.sleep(0.1)  # the slow plan's check is now hanging inside the pool
        started = time.monotonic()
        fast = prober.probe_site(fast_site, ctx)
        fast_elapsed = time.monotonic() - started
        thread.join(5)

        print(f"\nhung={hung_server.trickle} fast probe {fast_elapsed * 1000:.1f} ms "
              f"(check {fast.results[0].latency_ms:.1f} ms), slow probe {slow['elapsed']:.3f} s")
        assert fast.results[0].ok
        assert fast_elapsed < 0.3, f"fast probe took {fast_elapsed:.3f}s"
        assert fast.results[0].latency_ms < 300
        result = slow["probe"].results[0]
        assert not result.ok
        # silent: urllib's own 1 s socket timeout fires; trickling: each byte resets it, so
        # only the prober's hard deadline (timeout + 0.5 s grace) ends the wait
        assert 0.9 <= slow["elapsed"] <= 1.8, slow["elapsed"]
        if hung_server.trickle:
            assert "no answer within timeoutSeconds=1; abandoned" in result.message
        else:
            assert "timed out" in result.message
    finally:
        prober.close()


def test_probe_sites_runs_both_sites_in_parallel(http_endpoint: Endpoint) -> None:
    prober = Prober()
    try:
        sites = {"primary": site("eu", http_endpoint.url), "secondary": site("us",
                                                                           http_endpoint.url)}
        probes = prober.probe_sites(sites, ProbeContext("ns", endpoints=LOOPBACK))
        assert {k: p.results[0].ok for k, p in probes.items()} == {"primary": True,
                                                                    "secondary": True}
        assert probes["primary"].site == "eu"
        assert prober.in_flight == 0
    finally:
        prober.close()
