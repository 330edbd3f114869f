"""Runs batch/v1 Jobs as local processes, the way kubelet and the Job controller would.

The sandbox has no nodes, so this stands in for both: it watches Jobs through the API (list,
then watch from the list's resourceVersion, re-listing on errors and on 410 Gone), runs the
first container's ``command + args`` on the host with the environment the pod would get (the
image is ignored), and records the outcome through the Job's ``/status`` subresource as the
Job controller of Kubernetes 1.31+ does (``startTime``, ``active``, ``ready``, ``succeeded``,
``failed``, ``completionTime`` on success, and the conditions ``SuccessCriteriaMet`` +
``Complete`` with reason ``CompletionsReached``, or ``FailureTarget`` + ``Failed`` with reason
``BackoffLimitExceeded`` / ``DeadlineExceeded`` and the real controller's messages).

For benchmarks, simply do not start a runner: Jobs then stay pending, as on a cluster
without nodes.

What a pod gets, as kubelet builds it (the rules are in :mod:`aegis.sandbox.podenv`):
- ``envFrom`` (``secretRef`` / ``configMapRef``, ``prefix``, ``optional``), then ``env``
  (``value`` with ``$(VAR)`` expansion, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``
  for the downward API); ``$(VAR)`` is also expanded in ``command`` and ``args``.
  A missing Secret, ConfigMap or key that is not ``optional`` fails the attempt as kubelet's
  ``CreateContainerConfigError`` would, and the attempt counts towards ``backoffLimit``.
- ``HOSTNAME`` is the pod name (``<job>-<5 random chars>``, new for every attempt).
- Not from a pod: the host's ``PATH`` (with this interpreter's bin dir first, so ``aegis``
  resolves), ``HOME``, ``LANG=C.UTF-8`` and ``PYTHONUNBUFFERED=1`` (so logs are live), plus
  the runner's ``extra_env``.
- The working dir is the container's ``workingDir`` if it exists on the host, else a fresh
  per-pod temp dir.
- Volumes: there is no mount namespace, so a mount is materialised by *path rewriting*: a
  ``hostPath`` volume is the host directory itself, and a ``persistentVolumeClaim`` volume is
  the local directory a test bound to it with ``bind_claim(namespace, claim, path)`` (an
  unbound claim fails the attempt with ``FailedMount``). Wherever the container's
  ``mountPath`` appears as a path in its ``command``, ``args`` or ``env`` values, it is
  replaced by that local directory (JSON arguments stay valid). So an agent told to read
  ``/var/lib/aegis/rdb/dump.rdb`` reads the file the real redis-server wrote in the bound
  directory. ``readOnly`` is not enforced. ``emptyDir`` and other volumes are not
  materialised.

What the Job controller does that is honoured: ``activeDeadlineSeconds`` (counted from
``startTime``; the process group is killed and the Job fails with ``DeadlineExceeded``),
``backoffLimit`` (failed attempts beyond it fail the Job with ``BackoffLimitExceeded``),
``completions`` (run one after another; ``parallelism`` is not honoured), ``suspend`` (not
started, or killed and restarted on resume) and deletion (a Job deleted, or given a
``deletionTimestamp``, has its process killed). Not done: Pod objects, Events,
``ttlSecondsAfterFinished``, ``podFailurePolicy``, indexed completion, volumes other than
``hostPath`` and bound ``persistentVolumeClaim``.

Each Job's stdout and stderr go to ``<log_dir>/<namespace>/<job>.log``, one header and one
footer line per attempt. Headers show the command as written in the Job, before ``$(VAR)``
expansion, so no resolved value (a password) reaches the log through them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as random_source
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aegis.sandbox import processes
from aegis.sandbox.podenv import (
    ContainerConfigError,
    Lookup,
    PodIdentity,
    container_argv,
    generate_pod_name,
    resolve_env,
    rewrite_mounted_paths,
    volume_mounts,
)
from aegis.sandbox.processes import TrackedProcess

JsonDict = dict[str, Any]

log = logging.getLogger("aegis.sandbox.jobrunner")

DEFAULT_BACKOFF_LIMIT = 6
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_GRACE_SECONDS = 30


# --------------------------------------------------------------------------- Job status


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def condition(
    kind: str, reason: str, message: str, now: datetime, status: str = "True"
) -> JsonDict:
    stamp = rfc3339(now)
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


FAILURE_MESSAGES = {
    "BackoffLimitExceeded": "Job has reached the specified backoff limit",
    "DeadlineExceeded": "Job was active longer than specified deadline",
}
COMPLETE_MESSAGE = "Reached expected number of succeeded pods"


def is_finished(job: JsonDict) -> bool:
    """True once the Job has a Complete or Failed condition that is True."""
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


@dataclass
class JobStatus:
    """The controller's view of one Job; ``to_api`` renders it as the real controller does."""

    start_time: datetime | None = None
    completion_time: datetime | None = None
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    conditions: list[JsonDict] = field(default_factory=list)

    @classmethod
    def from_api(cls, status: JsonDict | None) -> JobStatus:
        status = status or {}
        start = status.get("startTime")
        return cls(
            start_time=parse_rfc3339(start) if start else None,
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            conditions=list(status.get("conditions") or []),
        )

    def set_condition(self, new: JsonDict) -> None:
        for i, old in enumerate(self.conditions):
            if old.get("type") == new["type"]:
                if old.get("status") == new["status"]:
                    new = {**new, "lastTransitionTime": old.get("lastTransitionTime")}
                self.conditions[i] = new
                return
        self.conditions.append(new)

    def to_api(self) -> JsonDict:
        """A merge patch body for /status: zero counters are removed (``omitempty``)."""
        return {
            "startTime": rfc3339(self.start_time) if self.start_time else None,
            "completionTime": rfc3339(self.completion_time) if self.completion_time else None,
            "active": self.active or None,
            "ready": self.active,
            "terminating": 0,
            "succeeded": self.succeeded or None,
            "failed": self.failed or None,
            "uncountedTerminatedPods": {},
            "conditions": self.conditions or None,
        }


# --------------------------------------------------------------------------- the runner


@dataclass
class Attempt:
    """One pod's worth of a Job: what ran and how it ended."""

    namespace: str
    job: str
    pod_name: str
    number: int
    started_at: float
    tracked: TrackedProcess | None = None
    exit_code: int | None = None
    outcome: str = "Running"
    """Running, Succeeded, Failed, CreateContainerConfigError, DeadlineExceeded, Deleted,
    Suspended or RunnerStopped."""


class _Cancelled(Exception):
    pass


class JobRunner:
    """Watches Jobs through the API and runs them locally; see the module docstring."""

    def __init__(
        self,
        api: Any,
        log_dir: str | Path,
        namespaces: Sequence[str] | None = None,
        *,
        max_concurrent: int = 8,
        retry_delay_seconds: float = 0.5,
        max_grace_seconds: float = 5.0,
        watch_timeout_seconds: int = 60,
        extra_env: Mapping[str, str] | None = None,
        default_entrypoint: Sequence[str] = (),
    ) -> None:
        """``api``: a ``kubernetes.client.ApiClient`` or the path of a kubeconfig file.

        ``retry_delay_seconds`` stands in for the controller's 10 s, 20 s, ... backoff between
        failed attempts; ``max_grace_seconds`` caps ``terminationGracePeriodSeconds``.
        """
        from kubernetes import client, config

        if isinstance(api, (str, Path)):
            api = config.new_client_from_config(config_file=str(api))
        self.api_client = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.log_dir = Path(log_dir)
        self.namespaces = tuple(namespaces) if namespaces else ()
        self.retry_delay_seconds = retry_delay_seconds
        self.max_grace_seconds = max_grace_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.extra_env = dict(extra_env or {})
        self.default_entrypoint = tuple(default_entrypoint)
        self.claims: dict[tuple[str, str], str] = {}
        """Local directories standing in for PersistentVolumeClaims (`bind_claim`)."""
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], _JobRun] = {}
        self._finished_uids: set[str] = set()
        self._attempts: list[Attempt] = []
        self._watchers: list[threading.Thread] = []
        self._open_responses: set[Any] = set()
        self._work_root: Path | None = None
        self.synced = threading.Event()
        """Set once every watched scope has been listed: Jobs created after it are seen."""

    # ---- public

    def start(self) -> JobRunner:
        """Start watching; a stopped runner can be started again (Jobs it killed run anew)."""
        if self._watchers:
            return self
        self._stopping.clear()
        self.synced.clear()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._work_root = Path(tempfile.mkdtemp(prefix="aegis-jobs-"))
        scopes: list[str | None] = list(self.namespaces) or [None]
        pending = {id(scope): scope for scope in scopes}
        for scope in scopes:
            thread = threading.Thread(
                target=self._watch_forever,
                args=(scope, pending),
                name=f"jobrunner-watch-{scope or 'all'}",
                daemon=True,
            )
            self._watchers.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop watching and kill every running Job's process group (like a node going away).

        Job status is left as it was, as it would be after a node crash.
        """
        self._stopping.set()
        with self._lock:
            responses = list(self._open_responses)
            runs = list(self._runs.values())
        for response in responses:
            _interrupt(response)
        for run in runs:
            run.cancel("RunnerStopped")
        deadline = time.monotonic() + timeout
        for thread in [*self._watchers, *runs]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._watchers = []
        if self._work_root is not None:
            shutil.rmtree(self._work_root, ignore_errors=True)
            self._work_root = None

    def __enter__(self) -> JobRunner:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def bind_claim(self, namespace: str, claim: str, path: str | Path) -> None:
        """Make PersistentVolumeClaim `claim` of `namespace` the local directory `path` for
        the Jobs that mount it (see the module docstring on volumes)."""
        self.claims[(namespace, claim)] = str(Path(path).resolve())

    def log_path(self, namespace: str, job: str) -> Path:
        return self.log_dir / namespace / f"{job}.log"

    def attempts(self, namespace: str | None = None, job: str | None = None) -> list[Attempt]:
        with self._lock:
            return [
                a
                for a in self._attempts
                if (namespace is None or a.namespace == namespace) and (job is None or a.job == job)
            ]

    def wait_synced(self, timeout: float = 10.0) -> None:
        if not self.synced.wait(timeout):
            raise TimeoutError(f"the Job runner did not list Jobs within {timeout}s")

    # ---- watching

    def _watch_forever(self, namespace: str | None, pending: dict[int, str | None]) -> None:
        while not self._stopping.is_set():
            try:
                version = self._relist(namespace)
                with self._lock:
                    pending.pop(id(namespace), None)
                    if not pending:
                        self.synced.set()
                while not self._stopping.is_set():
                    version = self._watch_once(namespace, version)
            except _Gone:
                log.info("watch of Jobs expired (410 Gone); listing again")
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning("watching Jobs failed, listing again in 1s: %s", error)
                self._stopping.wait(1.0)

    def _list_call(self, namespace: str | None) -> Callable[..., Any]:
        if namespace is None:
            return self.batch.list_job_for_all_namespaces  # type: ignore[no-any-return]
        return lambda **kw: self.batch.list_namespaced_job(namespace, **kw)

    def _relist(self, namespace: str | None) -> str:
        response = self._list_call(namespace)(_preload_content=False, _request_timeout=30)
        listing: JsonDict = json.loads(response.data)
        seen = set()
        for job in listing.get("items") or []:
            seen.add(_key(job))
            self._observe(job)
        with self._lock:
            vanished = [
                run
                for key, run in self._runs.items()
                if key not in seen and (namespace is None or key[0] == namespace)
            ]
        for run in vanished:
            self._forget(run.namespace, run.name, run.uid)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_once(self, namespace: str | None, version: str) -> str:
        kwargs: JsonDict = {
            # The client would send "True"; kube-apiserver accepts that, but "true" is canonical.
            "watch": "true",
            "allow_watch_bookmarks": "true",
            "timeout_seconds": self.watch_timeout_seconds,
            "_preload_content": False,
            "_request_timeout": (10, self.watch_timeout_seconds + 30),
        }
        if version:
            kwargs["resource_version"] = version
        response = self._list_call(namespace)(**kwargs)
        with self._lock:
            self._open_responses.add(response)
        try:
            # stop() sets the flag before it collects responses to interrupt: one registered
            # after that collection is caught here.
            if self._stopping.is_set():
                return version
            for line in _lines(response):
                if self._stopping.is_set():
                    break
                event: JsonDict = json.loads(line)
                version = self._dispatch(event) or version
        finally:
            with self._lock:
                self._open_responses.discard(response)
            response.release_conn()
        return version

    def _dispatch(self, event: JsonDict) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._observe(obj)
        elif kind == "DELETED":
            meta = obj.get("metadata") or {}
            self._forget(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))
        return str(version) if version else None

    def _observe(self, job: JsonDict) -> None:
        meta = job.get("metadata") or {}
        namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        if self.namespaces and namespace not in self.namespaces:
            return
        with self._lock:
            run = self._runs.get((namespace, name))
            if run is not None and run.uid == uid:
                run.update(job)
                return
            if run is not None:  # deleted and created again under the same name
                run.cancel("Deleted")
            if uid in self._finished_uids or meta.get("deletionTimestamp") or is_finished(job):
                return
            if self._stopping.is_set():
                return
            run = _JobRun(self, job)
            self._runs[(namespace, name)] = run
        run.start()

    def _forget(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            run = self._runs.get((namespace, name))
            if uid:
                self._finished_uids.add(uid)
        if run is not None and (not uid or run.uid == uid):
            run.cancel("Deleted")

    def _run_ended(self, run: _JobRun) -> None:
        with self._lock:
            # A Job whose process the runner's own stop() killed is run again after start().
            if run.ended_by != "RunnerStopped":
                self._finished_uids.add(run.uid)
            if self._runs.get((run.namespace, run.name)) is run:
                del self._runs[(run.namespace, run.name)]

    def _record_attempt(self, attempt: Attempt) -> None:
        with self._lock:
            self._attempts.append(attempt)

    # ---- API helpers used by runs

    def lookup(self, namespace: str) -> Lookup:
        from kubernetes.client.exceptions import ApiException

        def read(kind: str, name: str) -> JsonDict | None:
            reader = (
                self.core.read_namespaced_secret
                if kind == "Secret"
                else self.core.read_namespaced_config_map
            )
            try:
                response = reader(name, namespace, _preload_content=False, _request_timeout=30)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
            found: JsonDict = json.loads(response.data)
            return found

        return read

    def record_pod(
        self,
        pod: PodIdentity,
        job_uid: str | None,
        container: JsonDict,
        exit_code: int,
        message: str,
        started: datetime,
        finished: datetime,
        automount_token: bool | None = None,
    ) -> None:
        """Create the attempt's Pod with its container's terminated state, as the Job
        controller and the kubelet would, so that readers of pod status (the operator reads
        an agent's one-line failure reason there) see what they would on a cluster. Best
        effort: a failure here never changes the Job's outcome."""
        from kubernetes.client.exceptions import ApiException

        owner = (
            [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": pod.labels["job-name"],
                    "uid": job_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            if job_uid
            else []
        )
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": pod.labels,
                "ownerReferences": owner,
            },
            "spec": {
                "restartPolicy": "Never",
                # The template's account: the API server's ServiceAccount admission checks it
                # and mounts its token unless the template opted out.
                "serviceAccountName": pod.service_account,
                **(
                    {"automountServiceAccountToken": automount_token}
                    if automount_token is not None
                    else {}
                ),
                "containers": [
                    {
                        "name": container.get("name") or "main",
                        "image": container.get("image") or "sandbox",
                    }
                ],
            },
        }
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": rfc3339(started),
            "finishedAt": rfc3339(finished),
        }
        if message:
            terminated["message"] = message
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": rfc3339(started),
            "containerStatuses": [
                {
                    "name": container.get("name") or "main",
                    "ready": False,
                    "restartCount": 0,
                    "image": container.get("image") or "sandbox",
                    "imageID": "",
                    "state": {"terminated": terminated},
                }
            ],
        }
        try:
            self.core.create_namespaced_pod(pod.namespace, body, _request_timeout=30)
            self.core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                {"status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=30,
            )
        except ApiException as error:
            log.warning("recording pod %s/%s failed: %s", pod.namespace, pod.name, error.reason)

    def patch_status(self, namespace: str, name: str, status: JsonDict) -> bool:
        """Merge-patch /status; False if the Job is gone."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(5):
            try:
                self.batch.patch_namespaced_job_status(
                    name,
                    namespace,
                    {"status": status},
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                    _request_timeout=30,
                )
                return True
            except ApiException as error:
                if error.status == 404:
                    return False
                if attempt == 4:
                    raise
                log.warning("patching status of Job %s/%s failed: %s", namespace, name, error)
            except Exception as error:  # the connection: retry a few times
                if attempt == 4:
                    raise
                log.warning("patching status of Job %s/%s failed: %s", namespace, name, error)
            time.sleep(0.2 * (attempt + 1))
        return False

    def base_env(self, pod_name: str) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        return {
            "PATH": f"{bin_dir}:{path}" if bin_dir not in path.split(":") else path,
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            # A checkout run with PYTHONPATH (a git worktree beside the venv's editable
            # install) runs its own agent in Jobs too.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            **self.extra_env,
            "HOSTNAME": pod_name,
        }

    def new_work_dir(self, pod_name: str) -> Path:
        root = self._work_root or Path(tempfile.gettempdir())
        return Path(tempfile.mkdtemp(prefix=f"{pod_name}-", dir=root))


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def _key(job: JsonDict) -> tuple[str, str]:
    meta = job.get("metadata") or {}
    return (meta.get("namespace", ""), meta.get("name", ""))


def _lines(response: Any) -> Iterator[str]:
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer.extend(chunk)
        while (newline := buffer.find(b"\n")) != -1:
            line = buffer[:newline].decode("utf-8", errors="replace").strip()
            del buffer[: newline + 1]
            if line:
                yield line
    if buffer.strip():
        yield buffer.decode("utf-8", errors="replace").strip()


def _interrupt(response: Any) -> None:
    """Wake a thread blocked reading a watch response (urllib3 >= 2.3 has shutdown())."""
    try:
        response.shutdown()
    except Exception:  # already closed, or an older urllib3
        log.debug("could not shut down a watch response", exc_info=True)


class _JobRun(threading.Thread):
    """Drives one Job from its first attempt to Complete / Failed, or until cancelled."""

    def __init__(self, runner: JobRunner, job: JsonDict) -> None:
        meta = job["metadata"]
        super().__init__(name=f"job-{meta['namespace']}-{meta['name']}", daemon=True)
        self.runner = runner
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta.get("uid", "")
        self.job = job
        self.status = JobStatus.from_api(job.get("status"))
        self._changed = threading.Condition()
        self._cancel_reason: str | None = None
        self._failed_create_noted = False
        self.ended_by: str | None = None
        """Why the run stopped early (Deleted, RunnerStopped), or None."""

    # ---- signals from the watcher

    def update(self, job: JsonDict) -> None:
        with self._changed:
            self.job = job
            if (job.get("metadata") or {}).get("deletionTimestamp"):
                self._cancel_reason = self._cancel_reason or "Deleted"
            self._changed.notify_all()

    def cancel(self, reason: str) -> None:
        with self._changed:
            self._cancel_reason = self._cancel_reason or reason
            self._changed.notify_all()

    # ---- spec

    @property
    def spec(self) -> JsonDict:
        return self.job.get("spec") or {}

    @property
    def suspended(self) -> bool:
        return bool(self.spec.get("suspend"))

    def _deadline(self) -> float | None:
        """Seconds left before activeDeadlineSeconds, counted from startTime."""
        limit = self.spec.get("activeDeadlineSeconds")
        if limit is None or self.status.start_time is None:
            return None
        elapsed = (datetime.now(UTC) - self.status.start_time).total_seconds()
        return float(limit) - elapsed

    # ---- the loop

    def run(self) -> None:
        try:
            self._drive()
        except _Cancelled as cancelled:
            self.ended_by = str(cancelled)
        except Exception:
            log.exception(
                "running Job %s/%s failed inside the sandbox runner", self.namespace, self.name
            )
        finally:
            self.runner._run_ended(self)

    def _check_cancel(self) -> None:
        if self._cancel_reason is not None:
            raise _Cancelled(self._cancel_reason)

    def _publish(self) -> None:
        self._check_cancel()
        if not self.runner.patch_status(self.namespace, self.name, self.status.to_api()):
            raise _Cancelled("Deleted")

    def _drive(self) -> None:
        completions = int(self.spec.get("completions") or 1)
        while True:
            self._wait_while_suspended()
            remaining = self._deadline()
            if remaining is not None and remaining <= 0:
                return self._fail("DeadlineExceeded")
            if not self._service_account_exists():
                # The Job controller's Pod create is refused (403) while the ServiceAccount
                # is missing: nothing runs, no attempt is counted, it retries.
                if self.status.start_time is None:
                    self.status.start_time = datetime.now(UTC)
                    self._publish()
                self._pause(self.runner.retry_delay_seconds)
                continue
            self._acquire_slot()
            try:
                outcome = self._run_attempt()
            finally:
                self.runner._slots.release()
            if outcome == "DeadlineExceeded":
                return self._fail("DeadlineExceeded")
            if outcome == "Suspended":
                continue
            if self.status.succeeded >= completions:
                return self._complete()
            backoff_limit = self.spec.get("backoffLimit")
            limit = DEFAULT_BACKOFF_LIMIT if backoff_limit is None else int(backoff_limit)
            if self.status.failed > limit:
                return self._fail("BackoffLimitExceeded")
            self._publish()
            if outcome != "Succeeded":
                self._pause(self.runner.retry_delay_seconds)

    def _service_account_exists(self) -> bool:
        from kubernetes.client.exceptions import ApiException

        pod_spec = ((self.spec.get("template") or {}).get("spec")) or {}
        account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount")
        if not account or account == "default":
            return True  # every namespace has its default account
        try:
            self.runner.core.read_namespaced_service_account(account, self.namespace,
                                                             _request_timeout=30)
        except ApiException as error:
            if error.status == 404:
                self._note_failed_create(account)
                return False
            raise
        return True

    def _note_failed_create(self, account: str) -> None:
        if self._failed_create_noted:
            return
        self._failed_create_noted = True
        log_path = self.runner.log_path(self.namespace, self.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        _append_log(log_path,
                    f"FailedCreate: Error creating: pods is forbidden: error looking up service "
                    f"account {self.namespace}/{account}: serviceaccount \"{account}\" not found")

    def _wait_while_suspended(self) -> None:
        announced = False
        while self.suspended:
            self._check_cancel()
            if not announced:
                now = datetime.now(UTC)
                self.status.set_condition(
                    condition("Suspended", "JobSuspended", "Job suspended", now)
                )
                self._publish()
                announced = True
            with self._changed:
                # update() and cancel() notify; the timeout covers a notify that came just before.
                self._changed.wait(1.0)
        self._check_cancel()
        if announced:
            now = datetime.now(UTC)
            self.status.set_condition(
                condition("Suspended", "JobResumed", "Job resumed", now, status="False")
            )

    def _acquire_slot(self) -> None:
        while not self.runner._slots.acquire(timeout=0.2):
            self._check_cancel()

    def _pause(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._cancel_reason is not None, timeout=seconds)
        self._check_cancel()

    def _run_attempt(self) -> str:
        """One pod: start the process, wait for it, count it. Returns the attempt's outcome."""
        pod_spec = ((self.spec.get("template") or {}).get("spec")) or {}
        template_meta = (self.spec.get("template") or {}).get("metadata") or {}
        containers = pod_spec.get("containers") or [{}]
        pod_name = generate_pod_name(self.name)
        attempt = Attempt(
            namespace=self.namespace,
            job=self.name,
            pod_name=pod_name,
            number=self.status.failed + self.status.succeeded + 1,
            started_at=time.time(),
        )
        self.runner._record_attempt(attempt)
        if self.status.start_time is None:
            self.status.start_time = datetime.now(UTC)
        log_path = self.runner.log_path(self.namespace, self.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pod = PodIdentity(
            name=pod_name,
            namespace=self.namespace,
            uid=_pseudo_uid(),
            labels={
                **(template_meta.get("labels") or {}),
                "job-name": self.name,
                "batch.kubernetes.io/job-name": self.name,
            },
            annotations=template_meta.get("annotations") or {},
            service_account=pod_spec.get("serviceAccountName") or "default",
        )
        try:
            env = resolve_env(containers[0], pod, self.runner.lookup(self.namespace))
            argv = container_argv(containers[0], env, self.runner.default_entrypoint)
            mounts = volume_mounts(containers[0], pod_spec, self.namespace, self.runner.claims)
            if mounts:
                argv = [rewrite_mounted_paths(a, mounts) for a in argv]
                env = {k: rewrite_mounted_paths(v, mounts) for k, v in env.items()}
        except ContainerConfigError as error:
            _append_log(
                log_path,
                f"pod {pod_name} attempt {attempt.number} could not start: "
                f"CreateContainerConfigError: {error}",
            )
            attempt.outcome = "CreateContainerConfigError"
            self.status.failed += 1
            return attempt.outcome
        written = [*(containers[0].get("command") or []), *(containers[0].get("args") or [])]
        _append_log(
            log_path,
            f"pod {pod_name} attempt {attempt.number} started: "
            f"{shlex.join(str(w) for w in written)}",
        )
        work_dir = containers[0].get("workingDir")
        if not (work_dir and Path(work_dir).is_dir()):
            work_dir = str(self.runner.new_work_dir(pod_name))
        # The kubelet gives the container a file at terminationMessagePath and copies what
        # it holds into the pod's status; here that file lives in the pod's own work dir
        # (never the host's /dev), and env values naming the path are pointed at it.
        message_path = containers[0].get("terminationMessagePath") or TERMINATION_MESSAGE_PATH
        message_file = Path(self.runner.new_work_dir(f"{pod_name}-termination")) / "message"
        message_file.touch()
        env = {k: (str(message_file) if v == message_path else v) for k, v in env.items()}
        attempt_started = datetime.now(UTC)
        with open(log_path, "ab") as log_file:
            try:
                proc, tracked = processes.spawn(
                    argv,
                    name=f"job {self.namespace}/{self.name} pod {pod_name}",
                    stdout=log_file,
                    env={**self.runner.base_env(pod_name), **env},
                    cwd=work_dir,
                )
            except OSError as error:
                _append_log(log_path, f"pod {pod_name} could not start: {error}")
                attempt.outcome = "Failed"
                attempt.exit_code = 128
                self.status.failed += 1
                return attempt.outcome
        attempt.tracked = tracked
        self.status.active = 1
        try:
            self._publish()
            outcome = self._wait_for_exit(proc, tracked, pod_spec)
        except _Cancelled as cancelled:
            attempt.outcome = str(cancelled)
            self._kill(proc, tracked, pod_spec)
            _append_log(log_path, f"pod {pod_name} killed: {cancelled}")
            raise
        attempt.exit_code = proc.returncode
        attempt.outcome = outcome
        self.status.active = 0
        if outcome == "Succeeded":
            self.status.succeeded += 1
        elif outcome != "Suspended":
            self.status.failed += 1
        elapsed = time.time() - attempt.started_at
        _append_log(
            log_path,
            f"pod {pod_name} {outcome.lower()}: exit code {proc.returncode} after {elapsed:.2f}s",
        )
        if outcome in ("Succeeded", "Failed"):
            message = message_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(
                "utf-8", "replace"
            )
            self.runner.record_pod(
                pod,
                self.uid or None,
                containers[0],
                proc.returncode,
                message.strip(),
                attempt_started,
                datetime.now(UTC),
                automount_token=pod_spec.get("automountServiceAccountToken"),
            )
        return outcome

    def _wait_for_exit(
        self, proc: subprocess.Popen[bytes], tracked: TrackedProcess, pod_spec: JsonDict
    ) -> str:
        while True:
            try:
                code = proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                # The pod is done when its container is; stray children die with it.
                if processes.live_members(tracked):
                    processes.terminate(tracked, grace=0.5)
                return "Succeeded" if code == 0 else "Failed"
            self._check_cancel()
            remaining = self._deadline()
            if remaining is not None and remaining <= 0:
                self._kill(proc, tracked, pod_spec)
                return "DeadlineExceeded"
            if self.suspended:
                self._kill(proc, tracked, pod_spec)
                return "Suspended"

    def _kill(
        self, proc: subprocess.Popen[bytes], tracked: TrackedProcess, pod_spec: JsonDict
    ) -> None:
        grace = pod_spec.get("terminationGracePeriodSeconds")
        grace = DEFAULT_GRACE_SECONDS if grace is None else float(grace)
        processes.terminate(
            tracked, sig=signal.SIGTERM, grace=min(grace, self.runner.max_grace_seconds), proc=proc
        )

    def _finish(self) -> None:
        self.status.active = 0
        self.status.completion_time = self.status.completion_time or datetime.now(UTC)

    def _complete(self) -> None:
        now = datetime.now(UTC)
        self._finish()
        self.status.set_condition(
            condition("SuccessCriteriaMet", "CompletionsReached", COMPLETE_MESSAGE, now)
        )
        self.status.set_condition(
            condition("Complete", "CompletionsReached", COMPLETE_MESSAGE, now)
        )
        self._publish()

    def _fail(self, reason: str) -> None:
        now = datetime.now(UTC)
        self.status.active = 0
        # The real controller sets no completionTime on failure.
        message = FAILURE_MESSAGES[reason]
        self.status.set_condition(condition("FailureTarget", reason, message, now))
        self.status.set_condition(condition("Failed", reason, message, now))
        self._publish()


def _pseudo_uid() -> str:
    raw = random_source.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _append_log(path: Path, message: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"=== {stamp} {message}\n")


def wait_for_job(api: Any, namespace: str, name: str, timeout: float = 30.0) -> JsonDict:
    """Poll the API until the Job is Complete or Failed; returns the Job as a dict.

    ``api`` is a ``kubernetes.client.ApiClient``.
    """
    from kubernetes import client

    batch = client.BatchV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        response = batch.read_namespaced_job(name, namespace, _preload_content=False)
        job: JsonDict = json.loads(response.data)
        if is_finished(job):
            return job
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Job {namespace}/{name} did not finish within {timeout}s; status: "
                f"{json.dumps(job.get('status') or {})}"
            )
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aegis.sandbox.jobrunner``: run the Jobs of an API until SIGTERM/SIGINT."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m aegis.sandbox.jobrunner",
        description="Run the batch/v1 Jobs of a Kubernetes API as local processes.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True, help="kubeconfig of the API")
    parser.add_argument("--log-dir", type=Path, required=True, help="one log file per Job here")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if not args.kubeconfig.is_file():
        parser.error(f"--kubeconfig {args.kubeconfig}: no such file; pass the API's kubeconfig")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner = JobRunner(args.kubeconfig, args.log_dir, args.namespace or None).start()
    log.info("running the Jobs of %s; logs in %s", args.kubeconfig, args.log_dir)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        # Kills every running Job's process group, as a node going away would.
        runner.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
