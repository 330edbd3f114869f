"""Verification of stored backups: a Job runs `aegis agent verify` on a point (download,
hash, authenticate and decompress every chunk, without restoring), and its verdict becomes
the point's `status.verification`, its `Verified` condition, or `Corrupted`.

A request is a string: the value of the point's `dr.aegis.dev/verify` annotation (set by
`kubectl aegis verify`) or a tick of its policy's `spec.verification.schedule`. The Job's
name is derived from the point and the request, so a request runs one Job however often it
is seen, and `status.verification.request` records the request a verdict answers.

Pure builders and verdicts first; then the steps against the ports of `recoverypoint`.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from aegis import labels, metrics
from aegis.agent.config import LocationConfig
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.common import JobOptions
from aegis.k8s.jobs import JobRequest, Termination, build_job, job_outcome
from aegis.reconcilers import backup, naming
from aegis.reconcilers import keys as wrapping
from aegis.reconcilers import recoverypoint as points
from aegis.reconcilers.conditions import ConditionUpdate, iso
from aegis.reconcilers.restore import manifest_url
from aegis.settings import Settings

VERIFY_ANNOTATION = labels.VERIFY_ANNOTATION
REQUEST_ANNOTATION = labels.VERIFY_REQUEST_ANNOTATION


def verify_job_request(
    point: dict[str, Any],
    policy: BackupPolicySpec,
    key_ids: list[str],
    settings: Settings,
    request: str,
) -> JobRequest:
    """The Job that verifies `point` (a Completed RecoveryPoint) for `request`."""
    meta, status = point["metadata"], point.get("status") or {}
    url = manifest_url(status)
    if url is None:
        raise points.PointBlocked(
            "NoManifest", f"RecoveryPoint {meta['name']} records no manifest to verify"
        )
    config = LocationConfig(
        location=url,
        storage=backup.store_config(policy.storage, "", settings.s3_endpoint),
        kms_keys=wrapping.kms_key_configs(policy, settings.kms_endpoint),
    )
    options = (policy.job or JobOptions()).model_copy(update={"backoff_limit": 0})
    secret_env = [
        *backup.s3_secret_env(policy.storage, ""),
        *wrapping.key_secret_env(policy, key_ids, backup.KEY_ENV_PREFIX),
        *wrapping.kms_secret_env(policy),
    ]
    policy_name = point["spec"]["policyRef"]["name"]
    return JobRequest(
        name=naming.verify_job_name(meta["name"], request),
        namespace=meta["namespace"],
        labels=naming.verify_job_labels(policy_name, meta["name"]),
        annotations={REQUEST_ANNOTATION: request},
        owner=point,
        command=[*settings.agent_command, "verify"],
        args=[url, "--config-json", config.model_dump_json(by_alias=True, exclude_none=True)],
        image=options.image or settings.agent_image,
        options=options,
        secret_env=secret_env,
    )


@dataclass(frozen=True)
class Verdict:
    """What an ended verify Job proves: Passed, Corrupted (an integrity failure) or Error
    (it could not tell: storage unreachable, key Secret missing...)."""

    result: str
    reason: str
    message: str
    chunks: int | None = None
    seconds: float | None = None


def parse_result(message: str | None) -> dict[str, Any]:
    for line in reversed((message or "").strip().splitlines()):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        return parsed if isinstance(parsed, dict) else {}
    return {}


def verdict(job: dict[str, Any] | None, termination: Termination | None) -> Verdict | None:
    """None while the Job runs."""
    state = job_outcome(job)
    if state == "Running":
        return None
    result = parse_result(termination.message if termination else None)
    if state == "Complete" and result.get("ok") is True:
        chunks = result.get("chunks")
        seconds = result.get("durationSeconds")
        message = (
            f"{chunks} chunk(s) downloaded, hashed and authenticated; sha256 matches the "
            f"manifest ({float(seconds or 0):.1f}s)"
        )
        return Verdict(
            "Passed",
            "ChunksAuthenticated",
            message,
            chunks if isinstance(chunks, int) else None,
            float(seconds) if isinstance(seconds, int | float) else None,
        )
    kind = str(result.get("kind") or "")
    reason = str(result.get("reason") or "")
    if kind in points.INTEGRITY_KINDS:
        return Verdict("Failed", kind, reason or f"verification failed: {kind}")
    if state == "Missing":
        return Verdict("Error", "VerifyJobMissing", "the verify Job disappeared before it ended")
    return Verdict("Error", kind or "VerifyFailed", reason or "the verify Job failed")


def due_request(spec: BackupPolicySpec, created: dt.datetime, now: dt.datetime) -> str | None:
    """The request of the policy's latest verification tick at or before `now` (its time in
    RFC 3339), or None when there is none since the policy was created."""
    if spec.verification is None:
        return None
    zone = zoneinfo.ZoneInfo(spec.time_zone)
    tick = croniter(spec.verification.schedule, now.astimezone(zone)).get_prev(dt.datetime)
    if tick < created:
        return None
    return f"schedule-{iso(tick)}"


def newest_completed(candidates: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    completed = [p for p in candidates if (p.get("status") or {}).get("phase") == "Completed"]
    completed.sort(key=lambda p: str((p.get("status") or {}).get("sourceTime") or ""))
    return completed[-count:]


# --- against the ports ---------------------------------------------------------------------


def answered(point: dict[str, Any], request: str) -> bool:
    verification = (point.get("status") or {}).get("verification") or {}
    return bool(verification.get("request") == request)


def start(
    cluster: points.Cluster,
    point: dict[str, Any],
    request: str,
    settings: Settings,
) -> tuple[str, bool] | None:
    """Make sure the verify Job of `request` exists; None when there is nothing to verify
    (answered already, or the point is not Completed: a Corrupted point stays Corrupted)."""
    status = point.get("status") or {}
    if answered(point, request) or status.get("phase") != "Completed":
        return None
    meta = point["metadata"]
    policy = points.load_policy(cluster, meta["namespace"], point["spec"]["policyRef"]["name"])
    points.admit_policy(policy, settings)  # the verify Job reaches the same endpoints
    key_ids = points.key_ids(cluster, policy)
    request_job = verify_job_request(point, policy.spec, key_ids, settings, request)
    _, created = cluster.create_job(meta["namespace"], build_job(request_job))
    if created:
        cluster.post_event(
            point,
            "Normal",
            "VerificationStarted",
            f"Started verify Job {request_job.name}",
            key=f"verify-{naming.short_hash(request, 8)}",
        )
    return request_job.name, created


def finish(
    cluster: points.Cluster, namespace: str, job: dict[str, Any], now: dt.datetime
) -> Verdict | None:
    """Fold an ended verify Job into its point (once per request). None while it runs or
    when its verdict is recorded already."""
    meta = job.get("metadata") or {}
    request = (meta.get("annotations") or {}).get(REQUEST_ANNOTATION)
    owner = next(
        (o for o in meta.get("ownerReferences") or [] if o.get("kind") == "RecoveryPoint"), None
    )
    if not request or owner is None:
        return None
    point = cluster.get_point(namespace, owner["name"])
    if point is None or answered(point, request):
        return None
    found = verdict(job, cluster.termination(namespace, meta["name"]))
    if found is None:
        return None
    name = owner["name"]
    key = f"verified-{naming.short_hash(request, 8)}"
    if found.result in ("Passed", "Failed"):
        policy = ((point.get("spec") or {}).get("policyRef") or {}).get("name") or ""
        metrics.verification_ended(namespace, policy, passed=found.result == "Passed")
    if found.result == "Failed":
        points.mark_corrupted(
            cluster, namespace, name, found.reason, f"verify/{meta['name']}: {found.message}", now
        )
        points.write_conditions(
            cluster,
            namespace,
            name,
            {"verification": record(found, meta["name"], request, now)},
            [],
            now,
            unless_terminal=False,
        )
        return found
    if found.result == "Passed" and (point.get("status") or {}).get("phase") == "Corrupted":
        return None  # another check proved it damaged meanwhile: Corrupted stays
    if found.result == "Error":
        # Not a verdict on the point: say so, keep its verification as it was.
        cluster.post_event(point, "Warning", "VerificationError", found.message, key=key)
        return found
    points.write_conditions(
        cluster,
        namespace,
        name,
        {"verification": record(found, meta["name"], request, now)},
        [ConditionUpdate("Verified", "True", found.reason, found.message)],
        now,
        unless_terminal=False,
    )
    cluster.post_event(point, "Normal", "Verified", found.message, key=key)
    return found


def record(found: Verdict, job_name: str, request: str, now: dt.datetime) -> dict[str, Any]:
    """`status.verification` of a verdict."""
    entry: dict[str, Any] = {
        "time": iso(now),
        "result": found.result,
        "by": f"verify/{job_name}",
        "request": request,
        "message": found.message[:1024],
    }
    if found.chunks is not None:
        entry["chunks"] = found.chunks
    return entry
