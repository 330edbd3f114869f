"""The series the alerts read, on the real operator's /metrics: present from the moment a
policy is seen (so the first failure is an increase and a policy that never backed up has an
RPO), following the points' evidence, and gone with the policy."""

from __future__ import annotations

import urllib.request
from typing import Any

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.helpers import OperatorHandle, custom_api, wait_for
from tests.e2e.test_backups import make_policy, on_demand, policy_spec, secrets_for

from aegis import GROUP, VERSION, metrics


def policy_series(handle: OperatorHandle, namespace: str) -> dict[tuple[str, str], float]:
    """(sample name, phase or "") → value for the policy `orders` of `namespace`."""
    port = metrics.serve(0) or handle.metrics_port  # one /metrics server per test process
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, sample.labels.get("phase", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("policy") == "orders"
    }


def test_policy_series_exist_from_the_start_follow_failures_and_leave_with_the_policy(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    secrets_for(k8s_api, namespace, pg_database)
    client.CoreV1Api(k8s_api).patch_namespaced_secret(
        "db", namespace, {"stringData": {"password": "wrong-password"}}
    )
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint, job={"backoffLimit": 0})
    make_policy(k8s_api, namespace, "orders", spec)

    # Seen, nothing run yet: counters at 0, no Completed point, an RPO counting from creation.
    seen = policy_series(aegis_operator, namespace)
    assert seen[("aegis_backup_failures_total", "")] == 0
    assert seen[("aegis_copy_failures_total", "")] == 0
    assert seen[("aegis_verification_failures_total", "")] == 0
    assert seen[("aegis_recovery_points", "Completed")] == 0
    assert seen[("aegis_rpo_objective_seconds", "")] == 3600
    assert 0 <= seen[("aegis_rpo_seconds", "")] < 120

    point = on_demand(k8s_api, namespace, "orders", "orders-bad-password")
    assert point["status"]["phase"] == "Failed"
    # The point's status, the failure count and the refreshed point counts are written by
    # different steps (and threads): wait for all of them rather than read one moment.
    expected = {("aegis_recovery_points", "Failed"): 1, ("aegis_backup_failures_total", ""): 1}
    after = wait_for(
        "the failed point in the policy's series",
        lambda: (s := policy_series(aegis_operator, namespace)).items() >= expected.items() and s,
        # The refresh a finished backup triggers may read the point before its cache has the
        # new phase; the status timer (every 60 s) then catches up.
        timeout=150,
    )
    assert after[("aegis_recovery_points", "Completed")] == 0  # AegisNoRecoveryPoint's input
    assert after[("aegis_rpo_seconds", "")] >= seen[("aegis_rpo_seconds", "")]

    custom_api(k8s_api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "backuppolicies", "orders"
    )
    wait_for(
        "the policy's series to go",
        lambda: policy_series(aegis_operator, namespace) == {},
        timeout=60,
    )


def test_a_backup_whose_copy_failed_counts_a_copy_failure_and_a_completed_point(
    aegis_operator: OperatorHandle,
    job_runner: Any,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    secrets_for(k8s_api, namespace, pg_database)
    spec = policy_spec(pg_database, s3_bucket, moto.endpoint)
    # A copy to a bucket that does not exist: the backup completes, its copy fails.
    spec["copies"] = [{**spec["storage"], "bucket": f"{s3_bucket}-missing-copy"}]
    make_policy(k8s_api, namespace, "orders", spec)
    point = on_demand(k8s_api, namespace, "orders", "orders-copy-fails")
    assert point["status"]["phase"] == "Completed", point["status"].get("message")
    assert [c["state"] for c in point["status"]["copies"]] == ["Failed"]

    expected = {
        ("aegis_recovery_points", "Completed"): 1,
        ("aegis_copy_failures_total", ""): 1,  # AegisCopyFailing's input
        ("aegis_backup_size_bytes", ""): point["status"]["storedBytes"],
    }
    after = wait_for(
        "the completed point and its failed copy in the policy's series",
        lambda: (s := policy_series(aegis_operator, namespace)).items() >= expected.items() and s,
        timeout=150,
    )
    assert after[("aegis_backup_failures_total", "")] == 0
    assert after[("aegis_rpo_seconds", "")] < 120  # from the new point's source time
