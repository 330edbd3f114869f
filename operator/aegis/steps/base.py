"""What every step executor shares: its context (deadline, outputs it may persist early),
its result, and the ports to the Kubernetes API that the operator implements."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aegis.api.failoverplan import Route53Step, Transition
from aegis.k8s.jobs import JobState
from aegis.probes.base import SecretReader
from aegis.probes.workload import WorkloadKind, WorkloadReader
from aegis.reach import EndpointRule

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client


@dataclass(frozen=True)
class StepResult:
    ok: bool
    message: str
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepContext:
    """One run of one step."""

    plan: str
    namespace: str
    step: str
    transition: Transition
    """The transition as it stood when the step started (for the webhook's payload)."""
    from_site: str
    to_site: str
    deadline: float
    """time.monotonic() value at which the step's timeoutSeconds is up."""
    prior_outputs: Mapping[str, str] = field(default_factory=dict)
    """Outputs an earlier, interrupted attempt of this step saved."""
    save_outputs: Callable[[Mapping[str, str]], None] = lambda _outputs: None
    """Persist outputs now, before the step goes on (e.g. the record before it is changed)."""
    attempt: int = 1
    max_lag_bytes: int | None = None
    """The plan's maxLagBytes: a switchover's catch-up precondition."""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class WorkloadScaler(WorkloadReader, Protocol):
    def set_replicas(self, kind: WorkloadKind, namespace: str, name: str, replicas: int) -> None:
        """Patch spec.replicas (through the scale subresource); raises when it cannot."""
        ...


class JobLauncher(Protocol):
    def ensure_job(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        """Create the Job `name` with `spec` (a batch/v1 JobSpec); an existing Job of that
        name is fine (the step was resumed), so this is idempotent."""
        ...

    def job_state(self, namespace: str, name: str) -> JobState:
        """Where the Job stands, from its status conditions."""
        ...


Route53ClientFactory = Callable[[Route53Step, "Mapping[str, str] | None"], "Route53Client"]


@dataclass(frozen=True)
class StepPorts:
    """The outside world as steps see it; the operator passes Kubernetes-backed ones."""

    secrets: SecretReader | None = None
    scaler: WorkloadScaler | None = None
    jobs: JobLauncher | None = None
    route53: Route53ClientFactory | None = None
    """Builds the Route53 client of a step; None: boto3 with the step's region and endpoint
    (the concrete client lives with the Route53 step, not in this ports module)."""
    endpoints: EndpointRule = field(default_factory=EndpointRule)
    """Addresses webhooks may be sent to; the operator passes the one its settings make."""


def backoff(delay: float, cap: float = 2.0) -> float:
    return min(delay * 2, cap)
