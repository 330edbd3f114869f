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
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aegis.sandbox.jobattempt import Attempt, JobRun
from aegis.sandbox.jobstatus import JobStatus, condition, is_finished, rfc3339
from aegis.sandbox.podenv import (
    Lookup,
    PodIdentity,
)

JsonDict = dict[str, Any]

log = logging.getLogger("aegis.sandbox.jobrunner")

__all__ = ["Attempt", "JobRunner", "JobStatus", "condition", "is_finished", "wait_for_job"]

# --------------------------------------------------------------------------- the watch loop


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
        self._runs: dict[tuple[str, str], JobRun] = {}
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
            run = JobRun(self, job)
            self._runs[(namespace, name)] = run
        run.start()

    def _forget(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            run = self._runs.get((namespace, name))
            if uid:
                self._finished_uids.add(uid)
        if run is not None and (not uid or run.uid == uid):
            run.cancel("Deleted")

    def _run_ended(self, run: JobRun) -> None:
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
