"""Wrapping keys of a policy: the KMS part of the agent's configuration and Job env, and the
`KeyEscrowed` condition. Pure functions; no API calls.

A policy whose only wrapping key is a Secret of this cluster has backups that die with the
cluster: catalog sync can rebuild the RecoveryPoints in a new one, but nothing rebuilds the
key. `KeyEscrowed=False` says so where the user looks (`kubectl describe`, kstatus tools
ignore it: it is not Ready), with the two fixes.
"""

from __future__ import annotations

from aegis.agent.config import KmsKeyConfig
from aegis.api.backuppolicy import BackupPolicySpec, Encryption
from aegis.api.common import SecretKeyRef
from aegis.k8s.jobs import SecretEnv
from aegis.reconcilers.conditions import ConditionUpdate

KEY_ESCROWED = "KeyEscrowed"
KEY_ONLY_IN_THIS_CLUSTER = "KeyOnlyInThisCluster"
def escrow_fix(namespace: str, policy: str) -> str:
    """How to get a key out of the cluster, naming the policy."""
    target = f"{policy} -n {namespace}"
    return (
        "add an AWS KMS key to spec.encryption.kmsKeys (new backups get a KMS wrap; "
        f"`kubectl aegis keys rewrap {target} --kms-key ARN` adds one to existing backups), "
        f"or run `kubectl aegis keys export {target} > {policy}-keys.json` and store the "
        "bundle offline"
    )


def kms_env_prefix(index: int) -> str:
    return f"KMS{index}_"


def escrow_condition(
    encryption: Encryption, namespace: str = "NAMESPACE", policy: str = "POLICY"
) -> ConditionUpdate:
    """KeyEscrowed from the spec alone: True when some wrapping key lives outside the
    cluster (a KMS key), False when only the cluster's Secret can open new backups.

    An exported bundle is not visible to the operator (it never sees it), so the condition
    stays False after an export: the message says that an export is the user's own record."""
    if encryption.kms_keys:
        ids = ", ".join(k.key_id for k in encryption.kms_keys)
        return ConditionUpdate(
            KEY_ESCROWED,
            "True",
            "KmsKeyConfigured",
            f"new backups are also wrapped for KMS key(s) {ids}: they open without this "
            "cluster's Secrets",
        )
    secret = encryption.key_secret_ref.name if encryption.key_secret_ref else "?"
    return ConditionUpdate(
        KEY_ESCROWED,
        "False",
        KEY_ONLY_IN_THIS_CLUSTER,
        f"the only key that opens these backups is in Secret {secret} of this cluster: lose "
        f"the cluster and the backups cannot be decrypted. Fix: "
        f"{escrow_fix(namespace, policy)} (an export is "
        "not visible to the operator; this condition stays False until a KMS key is added)",
    )


def kms_key_configs(spec: BackupPolicySpec, default_endpoint: str | None) -> list[KmsKeyConfig]:
    """The agent's view of the policy's KMS keys; credentials are env vars `KMS<i>_...`."""
    return [
        KmsKeyConfig(
            key_id=key.key_id,
            region=key.region,
            endpoint=key.endpoint or default_endpoint,
            credentials_env_prefix=kms_env_prefix(i) if key.credentials_secret_ref else "",
        )
        for i, key in enumerate(spec.encryption.kms_keys or [])
    ]


def kms_secret_env(spec: BackupPolicySpec) -> list[SecretEnv]:
    env: list[SecretEnv] = []
    for i, key in enumerate(spec.encryption.kms_keys or []):
        ref = key.credentials_secret_ref
        if ref is None:
            continue
        env += [
            SecretEnv(f"{kms_env_prefix(i)}{name}", SecretKeyRef(name=ref.name, key=name))
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    return env


def key_secret_env(
    spec: BackupPolicySpec, key_ids: list[str], env_name_prefix: str
) -> list[SecretEnv]:
    """One env var per key id of the key Secret (none when the policy has no key Secret)."""
    ref = spec.encryption.key_secret_ref
    if ref is None:
        return []
    return [SecretEnv(f"{env_name_prefix}{k}", SecretKeyRef(name=ref.name, key=k)) for k in key_ids]
