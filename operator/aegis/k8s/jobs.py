"""Pure builders of the Jobs the operator creates. No API calls here: a builder returns the
object, `aegis.k8s.objects.create_job` sends it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aegis.api.common import JobOptions, SecretKeyRef

# The agent writes its one-line result here; the kubelet copies it into the pod status,
# where the operator reads the reason of a failure.
TERMINATION_LOG = "/dev/termination-log"
AGENT_UID = 65532


@dataclass(frozen=True)
class SecretEnv:
    """An env var whose value comes from a Secret key: the only way secrets reach a Job."""

    name: str
    ref: SecretKeyRef
    optional: bool = False


@dataclass(frozen=True)
class ClaimMount:
    """A PersistentVolumeClaim mounted into the agent's container (read-only by default)."""

    volume: str
    claim: str
    mount_path: str
    read_only: bool = True


@dataclass(frozen=True)
class JobRequest:
    """Everything that varies between the Jobs the operator runs."""

    name: str
    namespace: str
    labels: dict[str, str]
    owner: dict[str, Any]
    """The owning object (its apiVersion, kind, metadata.name and metadata.uid)."""
    command: list[str]
    args: list[str]
    """Non-secret configuration only: Job args are visible to anyone who can read Jobs."""
    image: str
    options: JobOptions
    env: dict[str, str] = field(default_factory=dict)
    secret_env: list[SecretEnv] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    mounts: list[ClaimMount] = field(default_factory=list)


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": AGENT_UID,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def build_job(request: JobRequest) -> dict[str, Any]:
    """A batch/v1 Job meeting the restricted Pod Security Standard."""
    options = request.options
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "AEGIS_RESULT_FILE", "value": TERMINATION_LOG},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(request.env.items())]
    env += [
        {
            "name": s.name,
            "valueFrom": {
                "secretKeyRef": {"name": s.ref.name, "key": s.ref.key, "optional": s.optional}
            },
        }
        for s in request.secret_env
    ]
    container: dict[str, Any] = {
        "name": "agent",
        "image": request.image,
        "imagePullPolicy": "IfNotPresent",
        "command": request.command,
        "args": request.args,
        "env": env,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # pg_dump, the temporary redis-server and Python need a writable scratch dir.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    for mount in request.mounts:
        container["volumeMounts"].append(
            {"name": mount.volume, "mountPath": mount.mount_path, "readOnly": mount.read_only}
        )
    if options.resources is not None:
        container["resources"] = options.resources.to_api()
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
            "fsGroup": AGENT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}]
        + [
            {
                "name": m.volume,
                "persistentVolumeClaim": {"claimName": m.claim, "readOnly": m.read_only},
            }
            for m in request.mounts
        ],
    }
    if options.service_account_name:
        pod_spec["serviceAccountName"] = options.service_account_name
    if options.node_selector:
        pod_spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod_spec["tolerations"] = [t.to_api() for t in options.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": request.name,
            "namespace": request.namespace,
            "labels": dict(request.labels),
            "annotations": dict(request.annotations),
            "ownerReferences": [owner_reference(request.owner)],
        },
        "spec": {
            "backoffLimit": options.backoff_limit,
            "activeDeadlineSeconds": options.active_deadline_seconds,
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": dict(request.labels)}, "spec": pod_spec},
        },
    }


JobPhase = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobState:
    """Where a Job stands, as a failover `job` step reads it."""

    phase: JobPhase
    message: str = ""


def _finished_condition(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Job's `Complete` or `Failed` condition once it is True: the one place that reads
    a Job's outcome (the Job controller sets exactly one of them when it finishes)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class Termination:
    """How the agent's container of a Job's newest ended pod ended (its terminated state)."""

    message: str | None
    reason: str | None
    """The kubelet's reason: `Completed`, `Error`, `OOMKilled`, `DeadlineExceeded`..."""
    exit_code: int | None
    signal: int | None = None


def termination_of(pods: list[dict[str, Any]], *, failed_only: bool = False) -> Termination | None:
    """The terminated state of the newest ended container among `pods` (API dicts)."""
    newest: tuple[str, Termination] | None = None
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if not terminated:
                continue
            exit_code = terminated.get("exitCode")
            if failed_only and not exit_code:
                continue
            when = str(terminated.get("finishedAt") or "")
            found = Termination(
                message=(terminated.get("message") or "").strip() or None,
                reason=terminated.get("reason"),
                exit_code=exit_code,
                signal=terminated.get("signal"),
            )
            if newest is None or when >= newest[0]:
                newest = (when, found)
    return newest[1] if newest else None


def killed_reason(termination: Termination | None) -> tuple[str, str] | None:
    """(reason, message) when the container was killed rather than failing on its own: the
    kernel's OOM killer (reason OOMKilled) or a signal (exit code above 128). None for an
    ordinary exit, whose reason is the agent's own message."""
    if termination is None:
        return None
    code = termination.exit_code
    if termination.reason == "OOMKilled":
        return (
            "OOMKilled",
            f"the agent was killed for exceeding its memory limit (OOMKilled, exit code {code}); "
            "raise spec.job.resources.limits.memory",
        )
    signal = termination.signal or (code - 128 if code is not None and code > 128 else None)
    if signal is not None:
        return (
            "AgentKilled",
            f"the agent was killed by signal {signal} (exit code {code}) before it finished: "
            "a node drain, eviction or kill, not an agent error",
        )
    return None


def job_outcome(job: Mapping[str, Any] | None) -> str:
    """`Missing`, `Running`, `Complete` or `Failed`, from the Job's conditions."""
    if job is None:
        return "Missing"
    finished = _finished_condition(job)
    return "Running" if finished is None else str(finished["type"])


def job_state_of(job: Mapping[str, Any] | None) -> JobState:
    """The same reading as `job_outcome`, with the Job's reason and message, for steps: a Job
    gone while a step waited for it counts as Failed."""
    if job is None:
        return JobState("Failed", "the Job is gone (deleted while the step waited for it)")
    finished = _finished_condition(job)
    if finished is None:
        return JobState("Running")
    if finished["type"] == "Complete":
        return JobState("Succeeded", finished.get("message") or "")
    why = finished.get("reason") or "Failed"
    return JobState("Failed", f"{why}: {finished.get('message') or ''}".rstrip(": "))
