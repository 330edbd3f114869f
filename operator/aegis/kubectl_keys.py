"""`kubectl aegis keys export|rewrap <policy>`: the wrapping keys of a policy, from the user's
own machine with the user's own credentials, never through the operator.

export   prints a recovery key bundle (the key Secret's keys by key id, and how to restore
         with them) for offline storage. The keys go to stdout only, the warning to stderr;
         nothing is written to the cluster, to status, events or logs.
rewrap   adds a wrap for an AWS KMS key to every existing manifest of the policy (its bucket
         and copies) without re-encrypting payloads; a locked manifest gets a new version
         with the same lock and is reported as such (agent/rewrap.py).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
from typing import Any

from aegis.agent.config import KmsKeyConfig
from aegis.agent.crypto import Keyring, KeyringError, check_key_id, decode_key
from aegis.agent.layout import policy_directory
from aegis.api.backuppolicy import BackupPolicySpec

BUNDLE_KIND = "AegisRecoveryKeyBundle"
EXPORT_WARNING = (
    "WARNING: the output below holds the encryption keys of every backup of this policy in the "
    "clear. Anyone with it and read access to the bucket can read the backups. Store it "
    "offline (a password manager, a sealed envelope in a safe), never in git, a ticket or a "
    "chat, and delete any file you redirect it to once it is stored."
)


def keys_of(secret_data: dict[str, bytes]) -> dict[str, bytes]:
    """The Secret's keys, decoded and checked (a bundle of unusable keys helps nobody)."""
    return {check_key_id(k): decode_key(v, k) for k, v in sorted(secret_data.items())}


def bundle(
    namespace: str,
    policy: str,
    spec: BackupPolicySpec,
    keys: dict[str, bytes],
    now: dt.datetime,
) -> dict[str, Any]:
    """The recovery key bundle: `keys` is the JSON the agent reads from AEGIS_KEYS."""
    storage = spec.storage
    ref = spec.encryption.key_secret_ref
    secret = ref.name if ref else "backup-keys"
    literals = " ".join(f"--from-literal={k}=<keys.{k}>" for k in keys)
    return {
        "kind": BUNDLE_KIND,
        "version": 1,
        "createdTime": now.astimezone(dt.UTC).replace(microsecond=0).isoformat(),
        "namespace": namespace,
        "policy": policy,
        "bucket": f"s3://{storage.bucket}/{policy_directory(storage.prefix, namespace, policy)}",
        "keySecret": secret,
        "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
        "kmsKeys": [k.key_id for k in spec.encryption.kms_keys or []],
        "instructions": [
            "Each backup's data key is wrapped (AES-KW, RFC 3394) by the key named in its "
            "manifest's encryption.wraps[].keyId; docs/encryption-format.md decrypts by hand.",
            "In a new cluster: kubectl create namespace " + namespace + "; kubectl -n "
            f"{namespace} create secret generic {secret} {literals}; apply the CRDs and the "
            "BackupPolicy; catalog sync rebuilds the RecoveryPoints; kubectl aegis restore.",
            "Without a cluster: AEGIS_KEYS='<the keys object as JSON>' aegis agent restore "
            "--manifest s3://.../<point>/manifest.json --target postgres|redis ... "
            "(docs/disaster-recovery.md).",
        ],
    }


def _policy(api_client: Any, namespace: str, name: str) -> BackupPolicySpec:
    from kubernetes import client

    from aegis import GROUP, VERSION

    body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "backuppolicies", name
    )
    return BackupPolicySpec.model_validate(body["spec"])


def _secret_data(api_client: Any, namespace: str, name: str) -> dict[str, bytes]:
    from kubernetes import client

    secret = client.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl aegis keys", description=__doc__.split("\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)
    export = verbs.add_parser("export", help="print a recovery key bundle (keys in the clear)")
    export.add_argument("policy")
    export.add_argument("-n", "--namespace", default=None)
    rewrap = verbs.add_parser("rewrap", help="add a KMS wrap to every existing backup")
    rewrap.add_argument("policy")
    rewrap.add_argument("-n", "--namespace", default=None)
    rewrap.add_argument("--kms-key", required=True, help="key id, key ARN or alias ARN")
    rewrap.add_argument("--region", default=None, help="region of the key (default: the ARN's)")
    rewrap.add_argument("--endpoint", default=None, help="KMS endpoint URL (default: AWS)")
    return p


def main(argv: list[str]) -> int:
    from kubernetes.client.exceptions import ApiException

    from aegis.kubectl import api_client, default_namespace

    args = parser().parse_args(argv)
    namespace = args.namespace or default_namespace()
    api = api_client()
    try:
        spec = _policy(api, namespace, args.policy)
        if args.verb == "export":
            return export_main(api, namespace, args.policy, spec)
        return rewrap_main(api, namespace, args.policy, spec, args)
    except ApiException as error:
        what = f"BackupPolicy {namespace}/{args.policy} or its Secrets"
        print(f"error: reading {what}: HTTP {error.status} {error.reason}", file=sys.stderr)
        return 1
    except KeyringError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def export_main(api: Any, namespace: str, policy: str, spec: BackupPolicySpec) -> int:
    ref = spec.encryption.key_secret_ref
    if ref is None:
        print(
            f"error: BackupPolicy {namespace}/{policy} has no keySecretRef: its backups are "
            "wrapped only for KMS keys, which cannot be exported; keep access to them",
            file=sys.stderr,
        )
        return 1
    keys = keys_of(_secret_data(api, namespace, ref.name))
    print(EXPORT_WARNING, file=sys.stderr)
    print(json.dumps(bundle(namespace, policy, spec, keys, dt.datetime.now(dt.UTC)), indent=2))
    return 0


def rewrap_main(
    api: Any, namespace: str, policy: str, spec: BackupPolicySpec, args: argparse.Namespace
) -> int:
    from aegis.agent.rewrap import rewrap_location
    from aegis.agent.s3 import StorageError, make_client
    from aegis.reconcilers.backup import store_config
    from aegis.reconcilers.keys import kms_key_configs

    env = dict(os.environ)
    ref = spec.encryption.key_secret_ref
    keyring = Keyring(
        keys_of(_secret_data(api, namespace, ref.name)) if ref else {},
        f"Secret {namespace}/{ref.name}" if ref else "no key Secret",
    )
    new_key = KmsKeyConfig(
        key_id=args.kms_key,
        region=args.region,
        endpoint=args.endpoint or env.get("AEGIS_KMS_ENDPOINT") or None,
    )
    known = kms_key_configs(spec, env.get("AEGIS_KMS_ENDPOINT") or None)
    failed = 0
    for i, location in enumerate([spec.storage, *(spec.copies or [])]):
        prefix = f"AEGIS_REWRAP{i}_"
        if location.credentials_secret_ref is not None:
            data = _secret_data(api, namespace, location.credentials_secret_ref.name)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if name in data:
                    env[prefix + name] = data[name].decode().strip()
        store = store_config(location, prefix, env.get("AEGIS_S3_ENDPOINT") or None)
        directory = policy_directory(location.prefix, namespace, policy)
        try:
            outcomes = rewrap_location(
                make_client(store, env),
                location.bucket,
                directory,
                lambda: keyring,
                new_key,
                known,
                env,
            )
        except StorageError as error:
            print(f"s3://{location.bucket}/{directory}: {error}", file=sys.stderr)
            failed += 1
            continue
        for outcome in outcomes:
            print(f"{outcome.state:<15} {outcome.manifest}: {outcome.message}")
        failed += sum(o.state == "Failed" for o in outcomes)
        print(f"s3://{location.bucket}/{directory}: {len(outcomes)} manifest(s)")
    if failed:
        print(f"{failed} manifest(s) or location(s) not rewrapped", file=sys.stderr)
        return 1
    if not spec.encryption.kms_keys or args.kms_key not in {
        k.key_id for k in spec.encryption.kms_keys
    }:
        print(
            f"note: add {args.kms_key} to spec.encryption.kmsKeys so new backups are wrapped "
            "for it too",
            file=sys.stderr,
        )
    return 0
