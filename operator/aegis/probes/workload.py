"""Workload check: ready replicas of a Deployment or StatefulSet, read through a
`WorkloadReader` the operator implements with the Kubernetes API (this module imports no
Kubernetes client, so it stays testable and usable outside the operator)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from aegis.api.failoverplan import WorkloadCheck
from aegis.probes.base import CheckResult, timed

WorkloadKind = Literal["Deployment", "StatefulSet"]


@dataclass(frozen=True)
class WorkloadReplicas:
    """The replica counts of a workload, as its spec and status say."""

    desired: int
    """spec.replicas."""
    current: int
    """status.replicas: pods that exist."""
    ready: int
    """status.readyReplicas."""
    generation: int = 0
    """metadata.generation."""
    observed_generation: int = 0
    """status.observedGeneration: the controller has seen the latest spec when ≥ generation."""


class WorkloadReader(Protocol):
    def read_replicas(self, kind: WorkloadKind, namespace: str, name: str) -> WorkloadReplicas:
        """Replica counts of the workload; raises when it cannot be read."""
        ...


def check_workload(
    name: str, spec: WorkloadCheck, reader: WorkloadReader | None, namespace: str
) -> CheckResult:
    """Healthy when the workload has at least `minReady` ready replicas; never raises."""

    def run() -> tuple[bool, str]:
        if reader is None:
            return False, "no workload reader was given"
        ns = spec.namespace or namespace
        replicas = reader.read_replicas(spec.kind, ns, spec.name)
        where = f"{spec.kind} {ns}/{spec.name}"
        counts = f"{replicas.ready}/{replicas.desired} ready"
        if replicas.ready >= spec.min_ready:
            return True, f"{where}: {counts}"
        return False, f"{where}: {counts}, need {spec.min_ready}"

    return timed(name, run, [])
