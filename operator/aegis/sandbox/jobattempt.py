"""One Job's run in the sandbox: its attempts as local processes, from the first to Complete or
Failed (backoffLimit, activeDeadlineSeconds, completions, suspend, deletion), the pod
environment and the log file of each attempt. `JobRunner` (the watch loop) starts one per
Job."""

from __future__ import annotations

import logging
import secrets as random_source
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.sandbox import processes
from aegis.sandbox.jobstatus import (
    COMPLETE_MESSAGE,
    DEFAULT_BACKOFF_LIMIT,
    DEFAULT_GRACE_SECONDS,
    FAILURE_MESSAGES,
    TERMINATION_MESSAGE_LIMIT,
    TERMINATION_MESSAGE_PATH,
    JobStatus,
    condition,
)
from aegis.sandbox.podenv import (
    ContainerConfigError,
    PodIdentity,
    container_argv,
    generate_pod_name,
    resolve_env,
    rewrite_mounted_paths,
    volume_mounts,
)
from aegis.sandbox.processes import TrackedProcess

if TYPE_CHECKING:
    from aegis.sandbox.jobrunner import JobRunner

JsonDict = dict[str, Any]

log = logging.getLogger("aegis.sandbox.jobrunner")

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


class JobRun(threading.Thread):
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


