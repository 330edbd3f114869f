"""No process the sandbox starts outlives its teardown: servers, standbys, Job processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from aegis.sandbox import processes
from aegis.sandbox.servers import MotoServer, PostgresServer, RedisServer

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent

# A whole pytest session using every fixture, ending while a Job's process still runs.
SESSION_USING_EVERY_FIXTURE = textwrap.dedent(
    """
    import time

    from kubernetes import client


    def test_everything(postgres_server, pg_database, pg_standby, redis_server, redis_db,
                        s3_bucket, route53_client, aws_env, k8s_api, namespace, job_runner):
        primary, standby = pg_standby
        assert standby.connect().execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert redis_db.client().ping()
        client.BatchV1Api(k8s_api).create_namespaced_job(namespace, {
            "metadata": {"name": "still-running"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": "x", "command": ["sh", "-c", "sleep 60 & sleep 60"]},
            ]}}},
        })
        deadline = time.monotonic() + 10
        while not job_runner.attempts(namespace, "still-running"):
            assert time.monotonic() < deadline, "the Job never started"
            time.sleep(0.02)
    """
)


# A session whose test starts a tracked process and never stops it.
SESSION_LEAKING_A_PROCESS = textwrap.dedent(
    """
    from aegis.sandbox import processes


    def test_leaks():
        processes.spawn(["sleep", "60"], name="leaked-sleep")
    """
)


def run_pytest_session(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a test file in a pytest of its own, with tests/conftest.py loaded."""
    (tmp_path / "test_session.py").write_text(source)
    env = {
        **os.environ,
        processes.PID_LOG_ENV: str(tmp_path / "pids.jsonl"),
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--rootdir", str(REPO_ROOT), "-c", str(REPO_ROOT / "pyproject.toml"),
            "-p", "conftest",  # tests/conftest.py, via PYTHONPATH
            str(tmp_path / "test_session.py"),
        ],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_a_test_session_leaves_no_sandbox_process_behind(tmp_path: Path) -> None:
    result = run_pytest_session(tmp_path, SESSION_USING_EVERY_FIXTURE)

    assert result.returncode == 0, result.stdout + result.stderr
    started = processes.read_pid_log(tmp_path / "pids.jsonl")
    names = {t.name.split()[0] for t in started}
    # initdb and pg_basebackup run to completion; postgres thrice: session, primary, standby.
    assert {"initdb", "pg_basebackup", "postgres", "redis-server", "moto_server", "job"} <= names
    assert sum(t.name == "postgres" for t in started) == 3
    assert processes.alive(started) == []


def test_the_session_check_fails_a_run_that_leaks_a_process(tmp_path: Path) -> None:
    result = run_pytest_session(tmp_path, SESSION_LEAKING_A_PROCESS)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "sandbox processes outlived their fixtures and were stopped: leaked-sleep" in (
        result.stdout
    )
    (leaked,) = processes.read_pid_log(tmp_path / "pids.jsonl")
    assert not leaked.is_alive()


def test_servers_stopped_directly_leave_no_process() -> None:
    primary = PostgresServer.start()
    standby = primary.start_standby()
    redis = RedisServer.start()
    moto = MotoServer.start()
    tracked = [s.tracked for s in (primary, standby, redis, moto) if s.tracked is not None]
    assert len(tracked) == 4
    assert processes.alive(tracked) == tracked
    for server in (standby, primary, redis, moto):
        server.stop()
    assert processes.alive(tracked) == []


def test_a_leftover_process_is_reported_and_can_be_stopped() -> None:
    proc, tracked = processes.spawn(["sh", "-c", "sleep 60 & sleep 60"], name="leftover")
    try:
        assert processes.alive([tracked]) == [tracked]
        # The shell and its background sleep: under load the shell may not have forked yet.
        deadline = time.monotonic() + 10
        while len(processes.live_members(tracked)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(processes.live_members(tracked)) >= 2
        assert processes.terminate_all([tracked], grace=2.0) == 1
        proc.wait(timeout=5)
        assert processes.alive([tracked]) == []
    finally:
        processes.terminate(tracked, proc=proc)


def test_orphaned_grandchild_is_still_found_through_its_process_group() -> None:
    # The shell exits at once; its background sleep is reparented away from us.
    proc, tracked = processes.spawn(["sh", "-c", "sleep 60 &"], name="orphan-maker")
    proc.wait(timeout=5)
    try:
        assert processes.alive([tracked]) == [tracked]
    finally:
        processes.terminate(tracked)
    assert processes.alive([tracked]) == []
