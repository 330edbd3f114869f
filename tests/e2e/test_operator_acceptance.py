"""The real operator against the emulator: specs are accepted or refused with conditions that
name the field, refusals raise Warning events, finalizers let deletes complete, and a bad
object never stops the operator or the reconciliation of the others."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.e2e.helpers import (
    OperatorHandle,
    condition,
    create,
    create_secret,
    events_for,
    get,
    new_key,
    wait_for,
)

PLAN = {
    "primary": {"name": "eu", "checks": [{"name": "api", "tcp": {"host": "127.0.0.1", "port": 9}}]},
    "secondary": {
        "name": "us",
        "checks": [{"name": "api", "tcp": {"host": "127.0.0.1", "port": 9}}],
    },
    "steps": [
        {
            "name": "notify",
            "webhook": {"url": "http://127.0.0.1:9/hook"},
        }
    ],
}


def _policy(pg: Any, bucket: str, endpoint: str, schedule: str = "0 3 * * *") -> dict[str, Any]:
    return {
        "schedule": schedule,
        "timeZone": "Europe/Berlin",
        "source": {
            "postgres": {
                "host": pg.server.host,
                "port": pg.server.port,
                "database": pg.name,
                "userSecretRef": {"name": "db", "key": "username"},
                "passwordSecretRef": {"name": "db", "key": "password"},
            }
        },
        "storage": {"bucket": bucket, "endpoint": endpoint, "credentialsSecretRef": {"name": "s3"}},
        "encryption": {"keySecretRef": {"name": "keys"}},
        "objectives": {"rpoSeconds": 3600},
    }


def test_valid_specs_are_accepted_and_invalid_ones_refused(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    pg_database: Any,
    s3_bucket: str,
    moto: Any,
) -> None:
    create_secret(
        k8s_api,
        namespace,
        "db",
        {"username": pg_database.server.user, "password": pg_database.server.password},
    )
    create_secret(k8s_api, namespace, "keys", {"k1": new_key()})
    create_secret(
        k8s_api,
        namespace,
        "s3",
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )
    # An invalid policy first: it must not hold up the valid objects created after it.
    bad = _policy(pg_database, s3_bucket, moto.endpoint, schedule="61 * * * *")
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {"kind": "BackupPolicy", "metadata": {"name": "bad-cron"}, "spec": bad},
    )
    bad_zone = {**_policy(pg_database, s3_bucket, moto.endpoint), "timeZone": "Mars/Olympus"}
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {"kind": "BackupPolicy", "metadata": {"name": "bad-zone"}, "spec": bad_zone},
    )
    create(
        k8s_api,
        "backuppolicies",
        namespace,
        {
            "kind": "BackupPolicy",
            "metadata": {"name": "orders"},
            "spec": _policy(pg_database, s3_bucket, moto.endpoint),
        },
    )
    create(
        k8s_api,
        "failoverplans",
        namespace,
        {"kind": "FailoverPlan", "metadata": {"name": "orders"}, "spec": PLAN},
    )

    ready = wait_for(
        "policy Ready",
        lambda: (
            (c := condition(get(k8s_api, "backuppolicies", namespace, "orders"), "Ready"))
            and c["status"] == "True"
            and c
        ),
    )
    assert ready["reason"] == "Scheduled"
    policy = get(k8s_api, "backuppolicies", namespace, "orders")
    assert ready["observedGeneration"] == policy["metadata"]["generation"]
    assert policy["status"]["nextScheduleTime"].endswith("Z")

    plan_ready = wait_for(
        "plan Ready", lambda: condition(get(k8s_api, "failoverplans", namespace, "orders"), "Ready")
    )
    assert plan_ready["status"] == "True"

    # A drill of the policy (examples/drdrill.yaml's shape) is accepted too.
    create(
        k8s_api,
        "drdrills",
        namespace,
        {
            "kind": "DRDrill",
            "metadata": {"name": "orders-weekly"},
            "spec": {
                "type": "Restore",
                "schedule": "0 4 * * 1",
                "restore": {"policyRef": {"name": "orders"},
                            "verify": [{"name": "rows", "expect": {"matchesBackup": True}}]},
            },
        },
    )
    drill_ready = wait_for(
        "drill Ready", lambda: condition(get(k8s_api, "drdrills", namespace, "orders-weekly"),
                                         "Ready")
    )
    assert drill_ready["status"] == "True", drill_ready

    refused = wait_for(
        "bad-cron refused",
        lambda: condition(get(k8s_api, "backuppolicies", namespace, "bad-cron"), "Ready"),
    )
    assert refused["status"] == "False"
    assert refused["reason"] == "InvalidSchedule"
    assert "spec.schedule" in refused["message"] and "cron" in refused["message"]
    zone = wait_for(
        "bad-zone refused",
        lambda: condition(get(k8s_api, "backuppolicies", namespace, "bad-zone"), "Ready"),
    )
    assert (zone["status"], zone["reason"]) == ("False", "InvalidTimeZone")

    warnings = wait_for(
        "a Warning event",
        lambda: [e for e in events_for(k8s_api, namespace, "bad-cron") if e["type"] == "Warning"],
    )
    assert warnings[0]["reason"] == "InvalidSchedule"

    # The API server refuses what the schema can express, before the operator sees it.
    try:
        create(
            k8s_api,
            "backuppolicies",
            namespace,
            {
                "kind": "BackupPolicy",
                "metadata": {"name": "port-zero"},
                "spec": {
                    **_policy(pg_database, s3_bucket, moto.endpoint),
                    "source": {
                        "postgres": {
                            **_policy(pg_database, s3_bucket, moto.endpoint)["source"]["postgres"],
                            "port": 0,
                        }
                    },
                },
            },
        )
        raise AssertionError("port 0 was accepted")
    except ApiException as error:
        assert error.status == 422

    # Deleting objects that carry our finalizer completes.
    rp = create(
        k8s_api,
        "recoverypoints",
        namespace,
        {
            "kind": "RecoveryPoint",
            "metadata": {"name": "orders-manual"},
            "spec": {"policyRef": {"name": "missing-policy"}},
        },
    )
    wait_for(
        "finalizer",
        lambda: (
            "dr.aegis.dev/finalizer"
            in (
                get(k8s_api, "recoverypoints", namespace, "orders-manual")["metadata"].get(
                    "finalizers"
                )
                or []
            )
        ),
    )
    blocked = wait_for(
        "point blocked",
        lambda: (
            (c := condition(get(k8s_api, "recoverypoints", namespace, "orders-manual"), "Accepted"))
            and c
        ),
    )
    assert (blocked["status"], blocked["reason"]) == ("False", "PolicyNotFound")
    api = client.CustomObjectsApi(k8s_api)
    for plural, name in (
        ("recoverypoints", rp["metadata"]["name"]),
        ("backuppolicies", "orders"),
        ("backuppolicies", "bad-cron"),
        ("failoverplans", "orders"),
        ("drdrills", "orders-weekly"),
    ):
        api.delete_namespaced_custom_object("dr.aegis.dev", "v1alpha1", namespace, plural, name)

    def gone(plural: str, name: str) -> bool:
        try:
            get(k8s_api, plural, namespace, name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(
        "deletes complete",
        lambda: (
            gone("recoverypoints", "orders-manual")
            and gone("backuppolicies", "orders")
            and gone("failoverplans", "orders")
            and gone("drdrills", "orders-weekly")
        ),
    )
    assert aegis_operator.running
