"""The sandbox Job runner runs Jobs created through the API and records their outcome."""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from aegis.sandbox.jobrunner import Attempt, JobRunner, wait_for_job
from aegis.sandbox.processes import live_members

pytestmark = pytest.mark.usefixtures("job_runner")

SECRET_VALUE = "pa55-w0rd-not-for-logs"


def job_body(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "ignored:latest", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            **spec,
        },
    }


def secret_ref(name: str, key: str) -> dict[str, str]:
    """A secretKeyRef / configMapKeyRef body (both are {name, key})."""
    return {"name": name, "key": key}


def create_job(api: Any, namespace: str, body: dict[str, Any]) -> None:
    client.BatchV1Api(api).create_namespaced_job(namespace, body)


def conditions_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions", [])}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def running_attempt(runner: JobRunner, namespace: str, job: str) -> Attempt:
    wait_until(
        f"an attempt of {job} to start",
        lambda: any(a.tracked is not None for a in runner.attempts(namespace, job)),
    )
    attempt = runner.attempts(namespace, job)[-1]
    assert attempt.tracked is not None
    return attempt


def test_job_gets_the_pods_environment_and_completes(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "db-credentials"},
            "data": {"password": base64.b64encode(SECRET_VALUE.encode()).decode()},
        },
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "db-settings"}, "data": {"host": "db.internal"}}
    )
    script = (
        "import json, os; "
        "print(json.dumps({k: os.environ.get(k) for k in "
        "['PASSWORD', 'DB_HOST', 'POD_NAME', 'POD_NAMESPACE', 'HOSTNAME', 'GREETING']}))"
    )
    env = [
        {
            "name": "PASSWORD",
            "valueFrom": {"secretKeyRef": secret_ref("db-credentials", "password")},
        },
        {"name": "DB_HOST", "valueFrom": {"configMapKeyRef": secret_ref("db-settings", "host")}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "GREETING", "value": "hello from $(POD_NAMESPACE)"},
    ]
    create_job(
        k8s_api,
        namespace,
        job_body("env-check", [sys.executable, "-c", script], container={"env": env}),
    )

    job = wait_for_job(k8s_api, namespace, "env-check")

    status = job["status"]
    assert status["succeeded"] == 1
    assert "failed" not in status and "active" not in status
    assert parse_time(status["startTime"]) <= parse_time(status["completionTime"])
    complete = conditions_of(job)["Complete"]
    assert (complete["status"], complete["reason"]) == ("True", "CompletionsReached")
    assert "Failed" not in conditions_of(job)

    log_text = job_runner.log_path(namespace, "env-check").read_text()
    printed = json.loads(next(line for line in log_text.splitlines() if line.startswith("{")))
    assert printed["PASSWORD"] == SECRET_VALUE
    assert printed["DB_HOST"] == "db.internal"
    assert printed["POD_NAMESPACE"] == namespace
    assert printed["GREETING"] == f"hello from {namespace}"
    assert re.fullmatch(r"env-check-[bcdfghjklmnpqrstvwxz2456789]{5}", printed["POD_NAME"])
    assert printed["HOSTNAME"] == printed["POD_NAME"]
    # The runner's own header and footer lines name the pod, never a resolved value.
    headers = [line for line in log_text.splitlines() if line.startswith("===")]
    assert len(headers) == 2 and all(printed["POD_NAME"] in line for line in headers)
    assert not any(SECRET_VALUE in line for line in headers)


def test_failing_job_retries_up_to_backoff_limit_then_fails(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    create_job(
        k8s_api,
        namespace,
        job_body("always-fails", ["sh", "-c", "echo trying; exit 3"], backoffLimit=1),
    )

    job = wait_for_job(k8s_api, namespace, "always-fails")

    assert job["status"]["failed"] == 2
    assert "succeeded" not in job["status"]
    assert "completionTime" not in job["status"]
    failed = conditions_of(job)["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "BackoffLimitExceeded")
    assert failed["message"] == "Job has reached the specified backoff limit"
    attempts = job_runner.attempts(namespace, "always-fails")
    assert [(a.number, a.exit_code) for a in attempts] == [(1, 3), (2, 3)]
    assert len({a.pod_name for a in attempts}) == 2
    log_text = job_runner.log_path(namespace, "always-fails").read_text()
    assert log_text.splitlines().count("trying") == 2
    assert log_text.count("exit code 3") == 2


def test_active_deadline_kills_the_process_and_fails_the_job(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    started = time.monotonic()
    create_job(
        k8s_api,
        namespace,
        job_body("too-slow", ["sh", "-c", "sleep 60 & sleep 60"], activeDeadlineSeconds=1),
    )

    job = wait_for_job(k8s_api, namespace, "too-slow")

    assert time.monotonic() - started < 10
    failed = conditions_of(job)["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
    assert failed["message"] == "Job was active longer than specified deadline"
    assert job["status"]["failed"] == 1
    (attempt,) = job_runner.attempts(namespace, "too-slow")
    assert attempt.outcome == "DeadlineExceeded"
    assert attempt.tracked is not None and not attempt.tracked.is_alive()


def test_deleting_a_running_job_kills_its_process(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    create_job(k8s_api, namespace, job_body("to-delete", ["sleep", "60"]))
    attempt = running_attempt(job_runner, namespace, "to-delete")
    assert attempt.tracked is not None and attempt.tracked.is_alive()
    batch = client.BatchV1Api(k8s_api)
    wait_until(
        "status.active=1",
        lambda: (batch.read_namespaced_job("to-delete", namespace).status.active or 0) == 1,
    )

    batch.delete_namespaced_job("to-delete", namespace, propagation_policy="Background")

    tracked = attempt.tracked
    wait_until("the process to be killed", lambda: not tracked.is_alive())
    assert attempt.outcome == "Deleted"
    # The runner writes the line just after the kill returns: wait for it, not for luck.
    wait_until(
        "the kill to be logged",
        lambda: "killed: Deleted" in job_runner.log_path(namespace, "to-delete").read_text(),
    )


def test_missing_secret_fails_the_attempt_with_a_clear_message(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    env = [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "pw"}}}]
    create_job(
        k8s_api,
        namespace,
        job_body("no-secret", ["true"], backoffLimit=0, container={"env": env}),
    )

    job = wait_for_job(k8s_api, namespace, "no-secret")

    assert conditions_of(job)["Failed"]["reason"] == "BackoffLimitExceeded"
    assert job["status"]["failed"] == 1
    log_text = job_runner.log_path(namespace, "no-secret").read_text()
    assert 'CreateContainerConfigError: secret "absent" not found (env PW)' in log_text
    assert [a.outcome for a in job_runner.attempts(namespace, "no-secret")] == [
        "CreateContainerConfigError"
    ]


def test_a_job_naming_a_missing_service_account_runs_once_it_exists(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    """As on a cluster, where the Job controller's Pod creates are refused (403) until the
    ServiceAccount exists: nothing runs and no failure is counted meanwhile."""
    body = job_body("needs-sa", ["true"], backoffLimit=0)
    body["spec"]["template"]["spec"]["serviceAccountName"] = "backup-runner"
    create_job(k8s_api, namespace, body)
    wait_until(
        "the FailedCreate note",
        lambda: "FailedCreate" in _read(job_runner.log_path(namespace, "needs-sa")),
    )
    assert job_runner.attempts(namespace, "needs-sa") == []
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "backup-runner"}})

    job = wait_for_job(k8s_api, namespace, "needs-sa")

    assert "Complete" in conditions_of(job)
    assert job["status"].get("failed", 0) == 0
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=needs-sa").items
    assert [p.spec.service_account_name for p in pods] == ["backup-runner"]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_suspended_job_waits_until_resumed(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    batch = client.BatchV1Api(k8s_api)
    create_job(k8s_api, namespace, job_body("later", ["true"], suspend=True))

    def suspended_condition() -> dict[str, Any] | None:
        job = batch.read_namespaced_job("later", namespace, _preload_content=False)
        return conditions_of(json.loads(job.data)).get("Suspended") if job else None

    wait_until("the Suspended condition", lambda: suspended_condition() is not None)
    assert suspended_condition() is not None
    assert job_runner.attempts(namespace, "later") == []

    batch.patch_namespaced_job(
        "later",
        namespace,
        {"spec": {"suspend": False}},
        _content_type="application/merge-patch+json",
    )
    job = wait_for_job(k8s_api, namespace, "later")

    assert job["status"]["succeeded"] == 1
    assert conditions_of(job)["Suspended"]["status"] == "False"
    assert len(job_runner.attempts(namespace, "later")) == 1


def test_jobs_that_exist_before_the_runner_starts_are_run(
    k8s_api: Any, namespace: str, job_runner: JobRunner, tmp_path: Path
) -> None:
    job_runner.stop()
    create_job(k8s_api, namespace, job_body("pre-existing", ["sh", "-c", "echo listed"]))

    with JobRunner(k8s_api.new_client(), tmp_path / "logs2", namespaces=[namespace]) as runner:
        job = wait_for_job(k8s_api, namespace, "pre-existing")
        assert "listed" in runner.log_path(namespace, "pre-existing").read_text()
    assert job["status"]["succeeded"] == 1


def test_runner_stop_kills_running_process_groups(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    create_job(k8s_api, namespace, job_body("long", ["sh", "-c", "sleep 60 & sleep 60"]))
    attempt = running_attempt(job_runner, namespace, "long")
    tracked = attempt.tracked
    assert tracked is not None
    wait_until("the shell and its background child", lambda: len(live_members(tracked)) >= 2)

    job_runner.stop()

    assert not tracked.is_alive()
    assert attempt.outcome == "RunnerStopped"


def test_concurrency_cap_runs_jobs_one_at_a_time(
    k8s_api: Any, namespace: str, job_runner: JobRunner, tmp_path: Path
) -> None:
    job_runner.stop()
    script = "import time; print('start', time.time()); time.sleep(0.3); print('end', time.time())"
    with JobRunner(
        k8s_api.new_client(), tmp_path / "logs", namespaces=[namespace], max_concurrent=1
    ) as runner:
        for name in ("first", "second"):
            create_job(k8s_api, namespace, job_body(name, [sys.executable, "-c", script]))
        for name in ("first", "second"):
            wait_for_job(k8s_api, namespace, name)
        spans = []
        for name in ("first", "second"):
            text = runner.log_path(namespace, name).read_text()
            marks = dict(line.split() for line in text.splitlines() if not line.startswith("="))
            spans.append((float(marks["start"]), float(marks["end"])))
    spans.sort()
    assert spans[0][1] <= spans[1][0]


def test_a_restarted_runner_runs_again_the_job_it_killed(
    k8s_api: Any, namespace: str, job_runner: JobRunner, tmp_path: Path
) -> None:
    # The first run leaves a marker in the (host) working dir and hangs; the second finishes.
    script = "test -e marker || { touch marker; exec sleep 60; }; echo second run"
    create_job(
        k8s_api,
        namespace,
        job_body("restarted", ["sh", "-c", script], container={"workingDir": str(tmp_path)}),
    )
    first = running_attempt(job_runner, namespace, "restarted")
    wait_until("the marker", (tmp_path / "marker").exists)
    job_runner.stop()
    assert first.outcome == "RunnerStopped"

    job_runner.start()
    job = wait_for_job(k8s_api, namespace, "restarted")

    assert job["status"]["succeeded"] == 1
    assert "failed" not in job["status"]
    assert "second run" in job_runner.log_path(namespace, "restarted").read_text()
    assert [a.outcome for a in job_runner.attempts(namespace, "restarted")] == [
        "RunnerStopped",
        "Succeeded",
    ]


def test_cluster_wide_runner_runs_jobs_of_every_namespace(tmp_path: Path) -> None:
    from kubernetes import config

    from aegis.sandbox.apiserver import ApiServer

    with ApiServer() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = config.new_client_from_config(config_file=str(kubeconfig))
        core = client.CoreV1Api(api)
        for name in ("team-a", "team-b"):
            core.create_namespace({"metadata": {"name": name}})
        create_job(api, "team-a", job_body("before-start", ["echo", "a"]))
        with JobRunner(str(kubeconfig), tmp_path / "logs") as runner:
            runner.wait_synced()
            create_job(api, "team-b", job_body("after-start", ["echo", "b"]))
            a = wait_for_job(api, "team-a", "before-start")
            b = wait_for_job(api, "team-b", "after-start")
            assert runner.log_path("team-b", "after-start").read_text().splitlines()[1] == "b"
        api.close()
    assert a["status"]["succeeded"] == 1
    assert b["status"]["succeeded"] == 1
