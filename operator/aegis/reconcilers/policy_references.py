"""Can a BackupPolicy back up now? Its schedule, key Secret, source Secrets, bucket and source
reachability, checked through ports, and the Ready condition that says so.

Secrets are read through the cluster port, which serves them from the watch cache, so a
check costs no API call and a deleted Secret shows at the next check. The bucket and the
source are checked over the network; a passing verdict is shared by every policy that names
the same bucket or source for `ttl` seconds (a thousand policies on one bucket cost one
HEAD per period, not a thousand). Problems are never cached: a fix shows at the next check.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Hashable
from typing import Any

from aegis.agent.crypto import KeyringError, decode_key
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.reconcilers import schedule
from aegis.reconcilers.conditions import ConditionUpdate
from aegis.reconcilers.policy_ports import (
    PolicyCluster,
    PolicyStore,
    Problem,
    Reach,
    SecretNotFound,
    StoreProblem,
)


class Verdicts:
    """Passing verdicts of network checks, shared by policies, for `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._passed: dict[Hashable, dt.datetime] = {}
        self._lock = threading.Lock()

    def checked(
        self, key: Hashable, now: dt.datetime, check: Callable[[], Problem | None]
    ) -> Problem | None:
        with self._lock:
            passed = self._passed.get(key)
        if passed is not None and 0 <= (now - passed).total_seconds() < self.ttl:
            return None
        problem = check()
        with self._lock:
            if problem is None:
                self._passed[key] = now
            else:
                self._passed.pop(key, None)
        return problem


def check_keys(cluster: PolicyCluster, namespace: str, secret: str) -> Problem | None:
    try:
        keys = cluster.read_secret(namespace, secret)
    except SecretNotFound:
        return Problem(
            "KeySecretNotFound",
            f"spec.encryption.keySecretRef: Secret {secret} does not exist in {namespace}; "
            "create it with at least one 32-byte key",
        )
    if not keys:
        return Problem(
            "EncryptionKeyMissing",
            f"spec.encryption.keySecretRef: Secret {secret} holds no keys; add a 32-byte key",
        )
    for key_id, value in sorted(keys.items()):
        try:
            decode_key(value, key_id)
        except KeyringError as error:
            return Problem("EncryptionKeyInvalid", f"spec.encryption.keySecretRef: {error}")
    return None


def check_secret_key(
    cluster: PolicyCluster, namespace: str, field: str, secret: str, key: str
) -> Problem | None:
    try:
        data = cluster.read_secret(namespace, secret)
    except SecretNotFound:
        return Problem(
            "SecretNotFound", f"{field}: Secret {secret} does not exist in {namespace}; create it"
        )
    if key not in data:
        return Problem("SecretKeyMissing", f"{field}: Secret {secret} has no key {key!r}")
    return None


def check_references(
    spec: BackupPolicySpec,
    namespace: str,
    *,
    cluster: PolicyCluster,
    store: PolicyStore,
    reach: Reach,
    verdicts: Verdicts,
    now: dt.datetime,
) -> Problem | None:
    """The first reason the policy cannot back up now, or None when it can."""
    try:
        schedule.next_tick(spec.schedule, spec.time_zone, now)
    except schedule.ScheduleError as error:
        return Problem("InvalidSchedule", str(error))
    if spec.encryption.key_secret_ref is not None:  # absent: KMS keys only
        problem = check_keys(cluster, namespace, spec.encryption.key_secret_ref.name)
        if problem:
            return problem
    refs: list[tuple[str, str, str]] = []
    if spec.source.postgres is not None:
        pg = spec.source.postgres
        refs = [
            ("spec.source.postgres.userSecretRef", pg.user_secret_ref.name, pg.user_secret_ref.key),
            (
                "spec.source.postgres.passwordSecretRef",
                pg.password_secret_ref.name,
                pg.password_secret_ref.key,
            ),
        ]
    elif spec.source.command is not None:
        for i, var in enumerate(spec.source.command.env or []):
            key_ref = var.secret_key_ref
            refs.append((f"spec.source.command.env[{i}].secretKeyRef", key_ref.name, key_ref.key))
    elif spec.source.redis is not None:
        rd = spec.source.redis
        for field, ref in (
            ("spec.source.redis.passwordSecretRef", rd.password_secret_ref),
            ("spec.source.redis.usernameSecretRef", rd.username_secret_ref),
        ):
            if ref is not None:
                refs.append((field, ref.name, ref.key))
    for field, secret, key in refs:
        problem = check_secret_key(cluster, namespace, field, secret, key)
        if problem:
            return problem
    for field, location in [("spec.storage", spec.storage)] + [
        (f"spec.copies[{i}]", copy) for i, copy in enumerate(spec.copies or [])
    ]:
        credentials_ref = location.credentials_secret_ref
        if credentials_ref is not None:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                problem = check_secret_key(
                    cluster, namespace, f"{field}.credentialsSecretRef", credentials_ref.name, key
                )
                if problem:
                    return Problem(
                        "S3CredentialsNotFound"
                        if problem.reason == "SecretNotFound"
                        else "S3CredentialsInvalid",
                        problem.message,
                    )
    storage = spec.storage
    credentials = storage.credentials_secret_ref.name if storage.credentials_secret_ref else None

    def bucket() -> Problem | None:
        try:
            store.head_bucket(storage, namespace)
        except StoreProblem as failure:
            return Problem(failure.reason, f"spec.storage: {failure.message}")
        return None

    bucket_key = ("bucket", namespace, storage.bucket, storage.endpoint, credentials)
    problem = verdicts.checked(bucket_key, now, bucket)
    if problem:
        return problem
    source = spec.source.postgres or spec.source.redis
    if source is None:
        # A command source: the tool reaches whatever its arguments name; only the dump
        # itself can tell (a failed dump fails its point with the tool's own error).
        return None
    kind, field = (
        ("PostgreSQL", "spec.source.postgres")
        if spec.source.postgres is not None
        else ("Redis", "spec.source.redis")
    )

    def reachable() -> Problem | None:
        why = reach(source.host, source.port)
        if why is None:
            return None
        return Problem(
            "SourceUnreachable",
            f"{field}: cannot reach {kind} at {source.host}:{source.port} ({why}); "
            "check host, port and network policies",
        )

    return verdicts.checked(("tcp", source.host, source.port), now, reachable)


def secret_names(spec: dict[str, Any]) -> set[str]:
    """Names of the Secrets a policy's spec (wire form) refers to."""
    names = {((spec.get("encryption") or {}).get("keySecretRef") or {}).get("name")}
    for source in ((spec.get("source") or {}).get(kind) or {} for kind in ("postgres", "redis")):
        for field in ("userSecretRef", "passwordSecretRef", "usernameSecretRef"):
            names.add((source.get(field) or {}).get("name"))
    for var in ((spec.get("source") or {}).get("command") or {}).get("env") or []:
        names.add(((var or {}).get("secretKeyRef") or {}).get("name"))
    for location in [spec.get("storage") or {}, *(spec.get("copies") or [])]:
        names.add((location.get("credentialsSecretRef") or {}).get("name"))
    return {n for n in names if isinstance(n, str)}


def ready_condition(problem: Problem | None, spec: BackupPolicySpec) -> ConditionUpdate:
    """Ready: True only when the policy will back up at its next tick (or would, but for
    spec.suspend)."""
    if problem is not None:
        return ConditionUpdate("Ready", "False", problem.reason, problem.message)
    if spec.suspend:
        return ConditionUpdate(
            "Ready", "True", "Suspended", "References resolve; scheduling is suspended"
        )
    return ConditionUpdate(
        "Ready", "True", "Scheduled", f"Backups run on '{spec.schedule}' ({spec.time_zone})"
    )
