"""Wrapping keys of a policy: the spec's rules, the KeyEscrowed condition, and how KMS keys
reach the backup and restore Jobs (config in args, credentials only by Secret reference)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from aegis.agent.config import BackupConfig
from aegis.api.backuppolicy import BackupPolicySpec, Encryption
from aegis.k8s.jobs import build_job
from aegis.reconcilers import backup, keys
from aegis.settings import Settings

SETTINGS = Settings(
    agent_command=("aegis", "agent"),
    s3_endpoint="http://s3.local:9000",
    kms_endpoint="http://kms.local:4000",
)
KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALIAS_ARN = "arn:aws:kms:eu-west-1:111122223333:alias/aegis-orders"


def spec(encryption: dict[str, Any]) -> BackupPolicySpec:
    return BackupPolicySpec.model_validate(
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
            "storage": {"bucket": "bkt", "prefix": "backups"},
            "encryption": encryption,
        }
    )


def point_body() -> dict[str, Any]:
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1",
        "kind": "RecoveryPoint",
        "metadata": {"name": "orders-20260301030000", "namespace": "shop", "uid": "u-1"},
        "spec": {"policyRef": {"name": "orders"}},
    }


def test_a_policy_with_only_a_secret_key_is_not_escrowed_and_says_how_to_fix_it() -> None:
    update = keys.escrow_condition(Encryption.model_validate({"keySecretRef": {"name": "k"}}))
    assert (update.type, update.status, update.reason) == (
        "KeyEscrowed",
        "False",
        "KeyOnlyInThisCluster",
    )
    assert "Secret k of this cluster" in update.message
    assert "spec.encryption.kmsKeys" in update.message
    assert "kubectl aegis keys export" in update.message


@pytest.mark.parametrize(
    "encryption",
    [
        {"keySecretRef": {"name": "k"}, "kmsKeys": [{"keyId": ALIAS_ARN}]},
        {"kmsKeys": [{"keyId": KEY_ARN, "region": "eu-west-1"}]},
    ],
)
def test_adding_a_kms_key_escrows_the_policy(encryption: dict[str, Any]) -> None:
    update = keys.escrow_condition(Encryption.model_validate(encryption))
    assert (update.status, update.reason) == ("True", "KmsKeyConfigured")
    assert encryption["kmsKeys"][0]["keyId"] in update.message


def test_a_policy_needs_at_least_one_wrapping_key() -> None:
    for encryption in ({}, {"kmsKeys": []}):
        with pytest.raises(ValidationError, match="at least one wrapping key"):
            Encryption.model_validate(encryption)


def test_the_crd_enforces_at_least_one_wrapping_key() -> None:
    schema = Encryption.model_json_schema()
    rules = schema["x-kubernetes-validations"]
    assert rules[0]["rule"] == (
        "has(self.keySecretRef) || (has(self.kmsKeys) && size(self.kmsKeys) > 0)"
    )


@pytest.mark.parametrize(
    "key_id",
    [
        KEY_ARN,
        ALIAS_ARN,
        "alias/aegis",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "mrk-1234abcd12ab34cd56ef1234567890ab",
    ],
)
def test_kms_key_ids_of_every_documented_form_are_accepted(key_id: str) -> None:
    Encryption.model_validate({"kmsKeys": [{"keyId": key_id}]})


@pytest.mark.parametrize("key_id", ["", "arn:aws:s3:::bucket", "my key", "alias/"])
def test_malformed_kms_key_ids_are_refused(key_id: str) -> None:
    with pytest.raises(ValidationError, match="keyId"):
        Encryption.model_validate({"kmsKeys": [{"keyId": key_id}]})


def test_the_backup_job_gets_kms_keys_in_its_config_and_their_credentials_by_reference() -> None:
    policy = spec(
        {
            "keySecretRef": {"name": "keys"},
            "kmsKeys": [
                {"keyId": ALIAS_ARN},
                {
                    "keyId": KEY_ARN,
                    "endpoint": "http://kms.example:4000",
                    "credentialsSecretRef": {"name": "kms-creds"},
                },
            ],
        }
    )
    job = build_job(backup.backup_job_request(point_body(), policy, ["2025-01"], SETTINGS))
    container = job["spec"]["template"]["spec"]["containers"][0]
    config = BackupConfig.model_validate(json.loads(container["args"][1]))
    assert config.key_secret is True
    assert [(k.key_id, k.endpoint, k.credentials_env_prefix) for k in config.kms_keys] == [
        (ALIAS_ARN, "http://kms.local:4000", ""),  # the operator's default endpoint
        (KEY_ARN, "http://kms.example:4000", "KMS1_"),
    ]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["KMS1_AWS_SECRET_ACCESS_KEY"]["name"] == "kms-creds"
    assert refs["KMS1_AWS_ACCESS_KEY_ID"]["key"] == "AWS_ACCESS_KEY_ID"
    assert "KMS0_AWS_ACCESS_KEY_ID" not in refs  # ambient credentials for the first key
    assert refs["AEGIS_KEY_2025-01"]["name"] == "keys"


def test_a_kms_only_policy_passes_no_key_secret_to_the_job() -> None:
    policy = spec({"kmsKeys": [{"keyId": KEY_ARN}]})
    job = build_job(backup.backup_job_request(point_body(), policy, [], SETTINGS))
    container = job["spec"]["template"]["spec"]["containers"][0]
    config = BackupConfig.model_validate(json.loads(container["args"][1]))
    assert config.key_secret is False and config.kms_keys[0].key_id == KEY_ARN
    assert not [e for e in container["env"] if e["name"].startswith("AEGIS_KEY_")]


@pytest.mark.parametrize(
    ("value", "failures"),
    [
        ({"keySecretRef": {"name": "k"}}, 0),
        ({"kmsKeys": [{"keyId": KEY_ARN}]}, 0),
        ({"keySecretRef": {"name": "k"}, "kmsKeys": [{"keyId": KEY_ARN}]}, 0),
        ({}, 1),
        ({"kmsKeys": []}, 1),
    ],
)
def test_the_generated_cel_rule_evaluates_as_the_model_does(
    value: dict[str, Any], failures: int
) -> None:
    from aegis.sandbox.apiserver_cel import evaluate_rules

    causes = evaluate_rules(value, None, Encryption.model_json_schema(), "spec.encryption")
    assert len(causes) == failures
    assert all("at least one wrapping key" in c.message for c in causes)


def test_the_verify_job_of_a_kms_only_policy_carries_the_kms_keys() -> None:
    from aegis.agent.config import LocationConfig
    from aegis.reconcilers import verification

    policy = spec({"kmsKeys": [{"keyId": KEY_ARN, "credentialsSecretRef": {"name": "kms"}}]})
    point = {
        **point_body(),
        "status": {
            "phase": "Completed",
            "location": "s3://bkt/backups/shop/orders/p/payload",
            "manifest": "backups/shop/orders/p/manifest.json",
        },
    }
    job = build_job(verification.verify_job_request(point, policy, [], SETTINGS, "now"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    config = LocationConfig.model_validate(json.loads(container["args"][-1]))
    assert [(k.key_id, k.credentials_env_prefix) for k in config.kms_keys] == [(KEY_ARN, "KMS0_")]
    names = {e["name"] for e in container["env"]}
    assert "KMS0_AWS_SECRET_ACCESS_KEY" in names
    assert not [n for n in names if n.startswith("AEGIS_KEY_")]
