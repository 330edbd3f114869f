"""Fixtures shared by the whole suite: real servers from :mod:`aegis.sandbox`.

Slow start-ups are shared per session; each test gets its own database, bucket, namespace.
Fixture names are an interface other tests rely on:

PostgreSQL (``aegis.sandbox.servers.PostgresServer``; TCP auth is scram-sha-256 with a password)
- ``postgres_server`` (session): a throwaway primary. ``.host .port .user .password``,
  ``.dsn(database)``, ``.connect(database)``, ``.create_database(name)``, ``.drop_database``.
- ``pg_database``: a fresh database on ``postgres_server``, dropped afterwards; yields a
  ``PostgresDatabase`` with ``.server``, ``.name``, ``.dsn``, ``.connect()``.
- ``pg_standby``: a fresh primary and a streaming hot standby of it, as ``(primary, standby)``;
  per test, because failover (``standby.promote()``, ``primary.stop_hard()``) consumes them.

Redis (``aegis.sandbox.servers.RedisServer``)
- ``redis_server`` (session): a redis-server without a password. Shared: do not FLUSHALL it.
- ``redis_db``: a fresh redis-server for this test (it starts in ~0.1 s) with ``requirepass``;
  ``.host .port .password .url .client(db=0)``.

MariaDB (``aegis.sandbox.servers.MariaDBServer``; TCP user ``aegis`` with a password)
- ``mariadb_server`` (session): a throwaway mariadbd. ``.host .port .user .password``,
  ``.sql(statements, database)``, ``.client_args(database)``, ``.client_env()``. Shared:
  each test creates its own databases.

AWS (``aegis.sandbox.servers.MotoServer``; S3 and Route53 at one endpoint, dummy credentials)
- ``moto_server`` (session): the server process; ``.endpoint``, ``.reset()``.
- ``moto``: the same server, reset (every bucket, zone, health check forgotten) for this test.
- ``s3_client``, ``route53_client``: boto3 clients for ``moto``.
- ``s3_bucket``: the name of a fresh, empty bucket on ``moto``.
- ``aws_env``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL[_S3|_ROUTE_53]`` and ``AEGIS_S3_ENDPOINT`` set in ``os.environ`` for
  this test (for code that builds its own clients); yields the dict.

Kubernetes (only when ``aegis.sandbox.pytest_fixtures`` exists; the emulator's fixtures
``k8s_api``, ``namespace`` and friends come from there)
- ``job_runner``: an ``aegis.sandbox.jobrunner.JobRunner`` running the Jobs of ``namespace``
  as local processes; logs at ``job_runner.log_path(namespace, job)``, every try in
  ``job_runner.attempts(namespace, job)``; stopped (its processes killed) after the test.
  Skipped against a real cluster (``AEGIS_TEST_KUBECONFIG``), which runs its own Jobs.

Teardown check: after the session, any process the sandbox started that still runs fails the
run (see ``pytest_sessionfinish``) and is stopped.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from aegis.sandbox import processes
from aegis.sandbox.servers import (
    MariaDBServer,
    MotoServer,
    PostgresDatabase,
    PostgresServer,
    RedisServer,
)

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_s3 import S3Client

    from aegis.sandbox.jobrunner import JobRunner

HAVE_K8S_FIXTURES = importlib.util.find_spec("aegis.sandbox.pytest_fixtures") is not None
pytest_plugins = ["aegis.sandbox.pytest_fixtures"] if HAVE_K8S_FIXTURES else []


def unique_name(prefix: str) -> str:
    """A name no other test uses: ``<prefix>-<12 hex>`` (valid for buckets and namespaces)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    name = unique_name("test").replace("-", "_")
    postgres_server.create_database(name)
    try:
        yield PostgresDatabase(server=postgres_server, name=name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def pg_standby() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    primary = PostgresServer.start()
    try:
        standby = primary.start_standby()
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_db() -> Iterator[RedisServer]:
    server = RedisServer.start(password=uuid.uuid4().hex)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    server = MariaDBServer.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- AWS (moto)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server


@pytest.fixture
def s3_client(moto: MotoServer) -> S3Client:
    return moto.s3_client()


@pytest.fixture
def route53_client(moto: MotoServer) -> Route53Client:
    return moto.route53_client()


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> str:
    name = unique_name("aegis-test")
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = moto.aws_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# --------------------------------------------------------------------------- Kubernetes Jobs


if HAVE_K8S_FIXTURES:

    @pytest.fixture
    def job_runner(k8s_api: Any, namespace: str, tmp_path: Path) -> Iterator[JobRunner]:
        from aegis.sandbox.jobrunner import JobRunner

        if not getattr(k8s_api, "emulated", True):
            pytest.skip("a real cluster runs its own Jobs; the sandbox runner stands in for it")
        # A client of its own: the runner's watch holds a pooled connection for its lifetime.
        api = k8s_api.new_client()
        runner = JobRunner(api, tmp_path / "job-logs", namespaces=[namespace])
        runner.start()
        try:
            runner.wait_synced()
            yield runner
        finally:
            runner.stop()
            api.close()


# --------------------------------------------------------------------------- teardown check


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a process the sandbox started outlived every fixture's teardown."""
    leftovers = processes.alive()
    if not leftovers:
        return
    described = ", ".join(f"{t.name} (pid {t.pid})" for t in leftovers)
    processes.terminate_all(leftovers, grace=2.0)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"sandbox processes outlived their fixtures and were stopped: {described}"
    if reporter is not None:
        reporter.write_line(message, red=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
