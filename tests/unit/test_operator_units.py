"""Pure and in-process pieces of the operator: the tick scheduler, conditions, the backup Job
builder (what secrets may and may not appear in a Job)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

from aegis.api.backuppolicy import BackupPolicySpec
from aegis.k8s.jobs import build_job, job_outcome
from aegis.reconcilers import backup
from aegis.reconcilers.conditions import ConditionUpdate, set_conditions
from aegis.scheduler import Scheduler
from aegis.settings import Settings

UTC = dt.UTC


def _recorder() -> tuple[list[tuple[str, str]], threading.Event, Any]:
    calls: list[tuple[str, str]] = []
    done = threading.Event()

    def act(namespace: str, name: str, now: dt.datetime) -> float | None:
        calls.append((namespace, name))
        done.set()
        return None

    return calls, done, act


def test_scheduler_calls_due_policies_in_time_order_and_an_earlier_wake_wins() -> None:
    calls: list[str] = []
    finished = threading.Event()

    def act(namespace: str, name: str, now: dt.datetime) -> float | None:
        calls.append(name)
        if len(calls) == 3:
            finished.set()
        return None

    scheduler = Scheduler(act, workers=1).start()
    try:
        now = dt.datetime.now(UTC)
        scheduler.wake("ns", "late", now + dt.timedelta(seconds=0.6))
        scheduler.wake("ns", "early", now + dt.timedelta(seconds=0.2))
        scheduler.wake("ns", "moved", now + dt.timedelta(seconds=30))
        scheduler.wake("ns", "moved", now + dt.timedelta(seconds=0.4))  # earlier wins
        scheduler.wake("ns", "moved", now + dt.timedelta(seconds=60))  # later is ignored
        assert finished.wait(5)
        assert calls == ["early", "moved", "late"]
    finally:
        scheduler.stop()


def test_scheduler_forget_cancels_a_pending_tick() -> None:
    calls, done, act = _recorder()
    scheduler = Scheduler(act).start()
    try:
        scheduler.wake("ns", "gone", dt.datetime.now(UTC) + dt.timedelta(seconds=0.2))
        scheduler.forget("ns", "gone")
        scheduler.wake("ns", "kept", dt.datetime.now(UTC) + dt.timedelta(seconds=0.3))
        assert done.wait(5)
        assert calls == [("ns", "kept")]
        assert scheduler.pending() == {}
    finally:
        scheduler.stop()


def test_scheduler_backs_off_a_failing_policy_without_stopping_others() -> None:
    attempts: list[str] = []
    ok = threading.Event()

    def act(namespace: str, name: str, now: dt.datetime) -> float | None:
        attempts.append(name)
        if name == "broken":
            raise RuntimeError("bucket unreachable")
        ok.set()
        return None

    scheduler = Scheduler(act).start()
    try:
        scheduler.wake("ns", "broken")
        scheduler.wake("ns", "fine")
        assert ok.wait(5)
        # The failing policy's retry is registered once its act has raised: observe it.
        deadline = time.monotonic() + 5
        while ("ns", "broken") not in scheduler.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        retry = scheduler.pending()[("ns", "broken")]
        delay = (retry - dt.datetime.now(UTC)).total_seconds()
        assert 1 < delay <= 5  # first backoff, not an immediate retry loop
        assert attempts.count("broken") == 1
    finally:
        scheduler.stop()


def test_conditions_keep_their_transition_time_until_the_status_changes() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    first = set_conditions(
        None, [ConditionUpdate("Ready", "False", "A", "a")], generation=1, now=t0
    )
    same = set_conditions(
        first,
        [ConditionUpdate("Ready", "False", "B", "b")],
        generation=2,
        now=t0 + dt.timedelta(minutes=1),
    )
    flipped = set_conditions(
        same,
        [ConditionUpdate("Ready", "True", "C", "c")],
        generation=2,
        now=t0 + dt.timedelta(minutes=2),
    )
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z"
    assert len(flipped) == 1


SPEC = BackupPolicySpec.model_validate(
    {
        "schedule": "0 * * * *",
        "source": {
            "postgres": {
                "host": "db",
                "database": "orders",
                "userSecretRef": {"name": "db", "key": "user"},
                "passwordSecretRef": {"name": "db", "key": "password"},
            }
        },
        "storage": {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}},
        "copies": [
            {"bucket": "dr-copy", "region": "eu-west-1", "credentialsSecretRef": {"name": "s3-dr"}}
        ],
        "encryption": {"keySecretRef": {"name": "keys"}},
    }
)
POINT = {
    "apiVersion": "dr.aegis.dev/v1alpha1",
    "kind": "RecoveryPoint",
    "metadata": {"name": "orders-20260101000000", "namespace": "shop", "uid": "u-1"},
    "spec": {"policyRef": {"name": "orders"}},
}


def test_backup_job_passes_secrets_only_by_reference() -> None:
    request = backup.backup_job_request(POINT, SPEC, ["2026-01", "2025-06"], Settings())
    job = build_job(request)
    container = job["spec"]["template"]["spec"]["containers"][0]
    config = json.loads(container["args"][container["args"].index("--config-json") + 1])
    assert config["storage"]["bucket"] == "backups"
    assert config["copies"][0]["credentialsEnvPrefix"] == "COPY0_"
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs["AEGIS_PG_PASSWORD"] == {"name": "db", "key": "password", "optional": False}
    assert refs["AEGIS_KEY_2026-01"]["name"] == "keys"
    assert refs["COPY0_AWS_SECRET_ACCESS_KEY"]["name"] == "s3-dr"
    plain = [e for e in container["env"] if "value" in e]
    assert not any("PASSWORD" in e["name"] or "SECRET" in e["name"] for e in plain)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["name"] == "backup-orders-20260101000000"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert job_outcome(job) == "Running" and job_outcome(None) == "Missing"


def test_agent_reason_is_taken_from_the_json_result_line() -> None:
    line = json.dumps({"ok": False, "kind": "DumpFailed", "reason": "pg_dump: password rejected"})
    assert backup.agent_reason(line) == "pg_dump: password rejected"
    assert backup.agent_reason("plain text\nlast line") == "last line"
    assert backup.agent_reason(None) is None
