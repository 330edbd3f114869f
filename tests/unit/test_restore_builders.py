"""The pure parts of restores: point choice, the agent's config, the Job, the outcome, and
the `kubectl aegis restore` flag handling."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import pytest

from aegis import kubectl_restore
from aegis.agent.config import RestoreConfig
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.restore import RestoreSpec
from aegis.k8s.jobs import build_job
from aegis.reconcilers import restore as r
from aegis.reconcilers.recoverypoint import PointBlocked
from aegis.settings import Settings

SETTINGS = Settings(agent_command=("aegis", "agent"), s3_endpoint="http://s3.local:9000")


def point(
    name: str,
    phase: str = "Completed",
    source_time: str = "2026-03-01T03:00:00Z",
    policy: str = "orders",
    verified: bool | None = None,
    **status: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"policyRef": {"name": policy}},
        "status": {
            "phase": phase,
            "sourceTime": source_time,
            "location": f"s3://bkt/backups/shop/{policy}/{name}/payload",
            "manifest": f"backups/shop/{policy}/{name}/manifest.json",
            **status,
        },
    }
    if verified is not None:
        body["status"]["conditions"] = [
            {"type": "Verified", "status": "True" if verified else "False", "reason": "X"}
        ]
    return body


POLICY = BackupPolicySpec.model_validate(
    {
        "schedule": "0 3 * * *",
        "source": {
            "postgres": {
                "host": "db",
                "database": "orders",
                "userSecretRef": {"name": "db", "key": "user"},
                "passwordSecretRef": {"name": "db", "key": "password"},
            }
        },
        "storage": {"bucket": "bkt", "prefix": "backups", "credentialsSecretRef": {"name": "s3"}},
        "encryption": {"keySecretRef": {"name": "keys"}},
    }
)


def restore_body(
    spec: dict[str, Any], name: str = "fix-orders"
) -> tuple[dict[str, Any], RestoreSpec]:
    body = {
        "apiVersion": "dr.aegis.dev/v1alpha1",
        "kind": "Restore",
        "metadata": {"name": name, "namespace": "shop", "uid": "u-1"},
        "spec": spec,
    }
    return body, RestoreSpec.model_validate(spec)


PG_TARGET = {
    "postgres": {
        "host": "db-new",
        "database": "orders_restored",
        "userSecretRef": {"name": "target", "key": "user"},
        "passwordSecretRef": {"name": "target", "key": "password"},
        "createDatabase": True,
    }
}


# --- choosing the point ---------------------------------------------------------------------


def test_choose_point_takes_the_newest_completed_of_the_policy() -> None:
    points = [
        point("old", source_time="2026-03-01T03:00:00Z"),
        point("new", source_time="2026-03-02T03:00:00Z"),
        point("newest-failed", phase="Failed", source_time="2026-03-03T03:00:00Z"),
        point("running", phase="Running", source_time="2026-03-04T03:00:00Z"),
        point("other-policy", source_time="2026-03-05T03:00:00Z", policy="users"),
    ]
    chosen = r.choose_point(points, "orders")
    assert chosen is not None and chosen["metadata"]["name"] == "new"


def test_choose_point_prefers_a_verified_point() -> None:
    points = [
        point("verified", source_time="2026-03-01T03:00:00Z", verified=True),
        point("newer", source_time="2026-03-02T03:00:00Z"),
        point("verify-failed", source_time="2026-03-03T03:00:00Z", verified=False),
    ]
    chosen = r.choose_point(points, "orders")
    assert chosen is not None and chosen["metadata"]["name"] == "verified"
    by_status = point("by-status", verification={"result": "Passed"})
    assert r.is_verified(by_status)


def test_choose_point_none_without_a_completed_point() -> None:
    assert r.choose_point([point("x", phase="Corrupted")], "orders") is None
    assert r.choose_point([], "orders") is None


@pytest.mark.parametrize("phase", ["Failed", "Corrupted", "Expired"])
def test_unusable_points_are_refused_with_their_reason(phase: str) -> None:
    with pytest.raises(r.RestoreRefused) as refused:
        r.check_point(point("p", phase=phase, message="sha256 mismatch"))
    assert refused.value.reason == f"RecoveryPoint{phase}"
    assert "sha256 mismatch" in refused.value.message and "p is " + phase in refused.value.message


def test_an_unfinished_point_blocks_instead() -> None:
    with pytest.raises(PointBlocked) as blocked:
        r.check_point(point("p", phase="Running"))
    assert blocked.value.reason == "RecoveryPointNotReady"


def test_manifest_url_is_the_manifest_key_in_the_payloads_bucket() -> None:
    assert r.manifest_url(point("p")["status"]) == "s3://bkt/backups/shop/orders/p/manifest.json"
    assert r.manifest_url({"location": "s3://bkt/x"}) is None


# --- the Job ----------------------------------------------------------------------------------


def test_restore_job_passes_config_as_json_and_secrets_by_reference() -> None:
    body, spec = restore_body(
        {
            "recoveryPointRef": {"name": "p"},
            "target": PG_TARGET,
            "verify": [{"name": "rows", "expect": {"matchesBackup": True}}],
        }
    )
    request = r.restore_job_request(body, spec, point("p"), POLICY, ["k1", "k2"], SETTINGS)
    job = build_job(request)
    assert job["metadata"]["name"] == "restore-fix-orders"
    assert job["metadata"]["annotations"][r.RECOVERY_POINT_ANNOTATION] == "p"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "restore"
    assert job["spec"]["backoffLimit"] == 0  # a restore is not retried unless asked
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["aegis", "agent", "restore"]
    assert container["args"][0] == "--config-json"
    config = RestoreConfig.model_validate(json.loads(container["args"][1]))
    assert config.manifest == "s3://bkt/backups/shop/orders/p/manifest.json"
    assert config.storage.bucket == "bkt" and config.storage.endpoint == "http://s3.local:9000"
    assert config.postgres is not None and config.postgres.create_database
    assert config.postgres.host == "db-new" and not config.allow_overwrite
    assert config.checks == [{"name": "rows", "expect": {"matchesBackup": True}}]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert (
        refs["AEGIS_PG_USER"]["name"] == "target" and refs["AEGIS_PG_PASSWORD"]["key"] == "password"
    )
    assert refs["AWS_SECRET_ACCESS_KEY"] == {
        "name": "s3",
        "key": "AWS_SECRET_ACCESS_KEY",
        "optional": False,
    }
    assert refs["AEGIS_KEY_k1"]["name"] == refs["AEGIS_KEY_k2"]["name"] == "keys"


def test_restore_job_keeps_an_explicit_backoff_limit_and_redis_secrets() -> None:
    body, spec = restore_body(
        {
            "policyRef": {"name": "orders"},
            "target": {
                "redis": {"host": "cache", "passwordSecretRef": {"name": "c", "key": "pw"}, "db": 2}
            },
            "allowOverwrite": True,
            "job": {"backoffLimit": 3},
        }
    )
    request = r.restore_job_request(body, spec, point("p", manifest=None), POLICY, ["k"], SETTINGS)
    job = build_job(request)
    assert job["spec"]["backoffLimit"] == 3
    config = RestoreConfig.model_validate(json.loads(request.args[1]))
    # Without a recorded manifest key, the agent finds it from the layout's names.
    assert config.manifest is None and config.recovery_point == "p" and config.policy == "orders"
    assert config.redis is not None and config.redis.db == 2 and config.allow_overwrite
    names = [s.name for s in request.secret_env]
    assert "AEGIS_REDIS_PASSWORD" in names and "AEGIS_PG_PASSWORD" not in names


# --- the outcome ------------------------------------------------------------------------------


def test_a_complete_job_with_passed_checks_completes() -> None:
    result = {
        "ok": True,
        "restoredBytes": 2048,
        "durationSeconds": 3.25,
        "checks": [{"name": "rows", "result": "Passed", "value": "12"}],
    }
    outcome = r.restore_outcome("Complete", result, None, "p", "postgres db:5432/x")
    assert outcome.phase == "Completed" and outcome.reason == "RestoreCompleted"
    assert outcome.status["restoredBytes"] == 2048
    assert outcome.status["checks"] == [{"name": "rows", "result": "Passed", "value": "12"}]
    assert "2.0 KiB from p into postgres db:5432/x" in outcome.message
    assert [(c.type, c.status) for c in outcome.conditions()] == [
        ("Complete", "True"),
        ("Failed", "False"),
    ]


def test_a_failed_check_fails_the_restore_naming_it() -> None:
    result = {
        "ok": False,
        "kind": "ChecksFailed",
        "reason": "verification failed: check orders failed",
        "checks": [
            {"name": "rows", "result": "Passed"},
            {"name": "orders", "result": "Failed", "value": "3", "message": "3 < min 10"},
        ],
    }
    outcome = r.restore_outcome("Failed", result, None, "p", "t")
    assert outcome.phase == "Failed" and outcome.reason == "ChecksFailed"
    assert outcome.message == "verification failed: check orders failed: 3 < min 10"
    assert [(c.type, c.status) for c in outcome.conditions()] == [
        ("Complete", "False"),
        ("Failed", "True"),
    ]


def test_the_agents_reason_and_kind_explain_a_failure() -> None:
    result = {"ok": False, "kind": "TargetNotEmpty", "reason": "target database x is not empty"}
    outcome = r.restore_outcome("Failed", result, json.dumps(result), "p", "t")
    assert (outcome.reason, outcome.message) == ("TargetNotEmpty", result["reason"])
    plain = r.restore_outcome("Failed", None, "Traceback...\nboom: no route", "p", "t")
    assert (plain.reason, plain.message) == ("RestoreFailed", "boom: no route")
    odd_kind = r.restore_outcome("Failed", {"kind": "not a reason!", "reason": "x"}, None, "p", "t")
    assert odd_kind.reason == "RestoreFailed"


def test_a_missing_job_or_result_never_claims_a_restore() -> None:
    missing = r.restore_outcome("Missing", None, "Job restore-x disappeared", "p", "t")
    assert (missing.phase, missing.reason) == ("Failed", "JobMissing")
    silent = r.restore_outcome("Complete", None, None, "p", "t")
    assert (silent.phase, silent.reason) == ("Failed", "ResultMissing")


def test_parse_result_reads_the_last_json_line() -> None:
    assert r.parse_result('log line\n{"ok": true, "restoredBytes": 5}\n') == {
        "ok": True,
        "restoredBytes": 5,
    }
    assert r.parse_result("no json here") is None
    assert r.parse_result(None) is None
    assert r.parse_result("[1, 2]") is None


def test_duration_is_the_agents_measurement_else_the_jobs() -> None:
    start = dt.datetime(2026, 3, 1, 3, 0, 0, tzinfo=dt.UTC)
    end = start + dt.timedelta(seconds=42)
    assert r.measured_duration({"durationSeconds": 7.1234}, start, end) == 7.123
    assert r.measured_duration({}, start, end) == 42.0
    assert r.measured_duration(None, None, end) is None
    job = {
        "status": {
            "startTime": "2026-03-01T03:00:00Z",
            "conditions": [
                {"type": "Failed", "status": "True", "lastTransitionTime": "2026-03-01T03:00:42Z"}
            ],
        }
    }
    assert r.job_times(job) == (start, end)


def test_verification_is_recorded_only_for_passed_checks() -> None:
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    passed = r.RestoreOutcome(
        "Completed",
        "RestoreCompleted",
        "ok",
        {"checks": [{"name": "a", "result": "Passed"}], "durationSeconds": 3.0},
        [{"name": "a", "result": "Passed"}],
    )
    verification = r.verification_of("fix", passed, now)
    assert verification is not None
    assert verification["by"] == "restore/fix" and verification["restoreSeconds"] == 3.0
    no_checks = r.RestoreOutcome("Completed", "RestoreCompleted", "ok")
    assert r.verification_of("fix", no_checks, now) is None


# --- kubectl aegis restore --------------------------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    return kubectl_restore.parser().parse_args(["src", *argv])


PG_FLAGS = (
    "--to-postgres-host",
    "db",
    "--to-database",
    "orders_new",
    "--user-secret",
    "db/user",
    "--password-secret",
    "db/password",
)


def test_kubectl_builds_a_valid_postgres_spec() -> None:
    spec = kubectl_restore.restore_spec(
        args(*PG_FLAGS, "--create-database", "--to-port", "5433", "--verify-matches-backup"),
        "BackupPolicy",
        "orders",
    )
    assert spec["policyRef"] == {"name": "orders"}
    assert spec["target"]["postgres"]["passwordSecretRef"] == {"name": "db", "key": "password"}
    assert spec["target"]["postgres"]["port"] == 5433
    assert spec["verify"] == [{"name": "matches-backup", "expect": {"matchesBackup": True}}]
    assert "allowOverwrite" not in spec


def test_kubectl_flag_mistakes_name_the_flag() -> None:
    with pytest.raises(kubectl_restore.UsageError, match="exactly one target"):
        kubectl_restore.target_spec(args())
    with pytest.raises(kubectl_restore.UsageError, match="--to-database, --user-secret"):
        kubectl_restore.target_spec(args("--to-postgres-host", "db", "--password-secret", "a/b"))
    with pytest.raises(kubectl_restore.UsageError, match="--password-secret 'nokey'"):
        kubectl_restore.secret_ref("nokey", "--password-secret")
    with pytest.raises(kubectl_restore.UsageError, match="--create-database"):
        kubectl_restore.target_spec(args("--to-redis-host", "c", "--create-database"))
    with pytest.raises(kubectl_restore.UsageError, match="allowOverwrite"):
        kubectl_restore.restore_spec(args(*PG_FLAGS, "--clean"), "RecoveryPoint", "p")


def test_kubectl_verify_file(tmp_path: Any) -> None:
    good = tmp_path / "checks.yaml"
    good.write_text("- name: orders\n  sql: SELECT count(*) FROM orders\n  expect: {min: 1}\n")
    assert kubectl_restore.read_checks(str(good))[0]["name"] == "orders"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(kubectl_restore.UsageError, match="must be a list of checks"):
        kubectl_restore.read_checks(str(bad))


def test_kubectl_source_prefixes_and_names() -> None:
    assert kubectl_restore.split_source("rp/orders-1") == ("RecoveryPoint", "orders-1")
    assert kubectl_restore.split_source("policy/orders") == ("BackupPolicy", "orders")
    assert kubectl_restore.split_source("orders") == (None, "orders")
    now = dt.datetime(2026, 3, 1, 12, 30, 5, tzinfo=dt.UTC)
    assert kubectl_restore.restore_name("orders", now) == "orders-restore-20260301123005"
    long = kubectl_restore.restore_name("a" * 300, now)
    assert len(long) <= 253 and long.endswith("-restore-20260301123005")


def test_kubectl_summary_shows_duration_and_every_check() -> None:
    text = kubectl_restore.summary(
        {
            "phase": "Failed",
            "recoveryPoint": "p",
            "restoredBytes": 3 * 1024 * 1024,
            "durationSeconds": 12.34,
            "checks": [
                {"name": "rows", "result": "Passed", "value": "10"},
                {"name": "orders-min", "result": "Failed", "value": "3", "message": "3 < min 5"},
            ],
            "message": "verification failed: check orders-min failed",
        }
    )
    assert "duration        12s" in text and "restored        3.0 MiB" in text
    assert "PASSED  rows        value=10" in text
    assert "FAILED  orders-min  value=3  3 < min 5" in text
    assert "reason          verification failed" in text
