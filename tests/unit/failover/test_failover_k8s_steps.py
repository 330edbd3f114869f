"""scale, job and workload logic over in-memory stand-ins of the Kubernetes ports (the
operator's real implementations of these Protocols are tested against the API emulator)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aegis.api.failoverplan import HealthCheck, JobStep, ScaleStep, Transition
from aegis.probes import WorkloadReplicas
from aegis.probes.prober import ProbeContext, run_check
from aegis.steps.base import JobState, StepContext
from aegis.steps.job import job_name, run_job
from aegis.steps.scale import run_scale


class Cluster:
    """A Deployment whose controller readies one more pod per read, up to `limit`."""

    def __init__(self, replicas: int, limit: int = 100) -> None:
        self.spec = replicas
        self.ready = replicas
        self.limit = limit
        self.calls: list[str] = []

    def read_replicas(self, kind: str, namespace: str, name: str) -> WorkloadReplicas:
        self.calls.append(f"read {kind} {namespace}/{name}")
        if self.ready < min(self.spec, self.limit):
            self.ready += 1
        self.ready = min(self.ready, self.spec)
        return WorkloadReplicas(self.spec, self.ready, self.ready, 2, 2)

    def set_replicas(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(f"set {replicas}")
        self.spec = replicas


def ctx(timeout: float = 5.0, saved: list[Mapping[str, str]] | None = None,
        prior: dict[str, str] | None = None) -> StepContext:
    return StepContext(
        plan="orders", namespace="ns", step="scale-up",
        transition=Transition(kind="Failover", id="failover-20250101000000"),
        from_site="eu", to_site="us", deadline=time.monotonic() + timeout,
        prior_outputs=prior or {},
        save_outputs=lambda o: (saved if saved is not None else []).append(o),
    )


SCALE = ScaleStep.model_validate({"kind": "Deployment", "name": "api", "replicas": 3})


def test_scale_saves_previous_replicas_then_waits_until_ready() -> None:
    cluster = Cluster(replicas=0)
    saved: list[Mapping[str, str]] = []
    result = run_scale(SCALE, ctx(saved=saved), cluster)
    assert result.ok, result.message
    assert result.message == "Deployment ns/api: 3/3 ready"
    assert saved == [{"previousReplicas": "0"}]
    assert cluster.calls[:2] == ["read Deployment ns/api", "set 3"]
    assert float(result.outputs["readySeconds"]) >= 0


def test_scale_resumed_keeps_the_first_previous_value() -> None:
    cluster = Cluster(replicas=3)
    saved: list[Mapping[str, str]] = []
    result = run_scale(SCALE, ctx(saved=saved, prior={"previousReplicas": "0"}), cluster)
    assert result.ok and saved == [] and cluster.calls[0] == "set 3"


def test_scale_times_out_with_the_counts() -> None:
    cluster = Cluster(replicas=0, limit=1)
    started = time.monotonic()
    result = run_scale(SCALE, ctx(timeout=0.5), cluster)
    assert not result.ok
    assert "1/3 ready" in result.message and "timeoutSeconds" in result.message
    assert 0.4 < time.monotonic() - started < 1.0


class Jobs:
    def __init__(self, phases: list[str]) -> None:
        self.phases = phases
        self.created: list[tuple[str, str, Mapping[str, Any]]] = []

    def ensure_job(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        self.created.append((namespace, name, spec))

    def job_state(self, namespace: str, name: str) -> JobState:
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return JobState(phase, "BackoffLimitExceeded" if phase == "Failed" else "")  # type: ignore[arg-type]


JOB = JobStep.model_validate({"template": {"template": {"spec": {"containers": []}}}})


def test_job_waits_for_success_and_uses_a_stable_name() -> None:
    jobs = Jobs(["Running", "Running", "Succeeded"])
    result = run_job(JOB, ctx(), jobs)
    assert result.ok
    name = job_name("orders", "failover-20250101000000", "scale-up")
    assert jobs.created == [("ns", name, JOB.template)] and result.outputs["jobName"] == name
    assert name == job_name("orders", "failover-20250101000000", "scale-up")
    assert name != job_name("orders", "failover-20250101000001", "scale-up")


def test_job_failure_and_long_names() -> None:
    assert not run_job(JOB, ctx(), Jobs(["Failed"])).ok
    long = job_name("p" * 60, "failover-1", "s" * 60)
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()


def test_workload_check_counts_ready_replicas() -> None:
    check = HealthCheck.model_validate({"name": "api", "workload": {
        "kind": "StatefulSet", "name": "db", "minReady": 2}})
    ok = run_check(check, 1, ProbeContext("ns", workloads=Cluster(replicas=2)))
    assert ok.ok and ok.message == "StatefulSet ns/db: 2/2 ready"
    low = run_check(check, 1, ProbeContext("ns", workloads=Cluster(replicas=1)))
    assert not low.ok and low.message == "StatefulSet ns/db: 1/1 ready, need 2"
    none = run_check(check, 1, ProbeContext("ns"))
    assert not none.ok and "no workload reader" in none.message
