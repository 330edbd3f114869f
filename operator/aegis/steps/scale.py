"""scale: set a workload's replicas and wait until they are ready, through a
`WorkloadScaler` the operator implements with the Kubernetes API. The replicas before the
change are saved first (`previousReplicas`), so a failback procedure can read them."""

from __future__ import annotations

import time

from aegis.api.failoverplan import ScaleStep
from aegis.probes.workload import WorkloadReplicas
from aegis.steps.base import StepContext, StepResult, WorkloadScaler, backoff


def settled(replicas: WorkloadReplicas, wanted: int) -> bool:
    """The controller saw the change and exactly `wanted` pods exist and are ready."""
    return (
        replicas.observed_generation >= replicas.generation
        and replicas.ready >= wanted
        and replicas.current <= wanted
    )


def run_scale(step: ScaleStep, ctx: StepContext, scaler: WorkloadScaler | None) -> StepResult:
    if scaler is None:
        return StepResult(False, "scale: no workload scaler was given")
    namespace = step.namespace or ctx.namespace
    where = f"{step.kind} {namespace}/{step.name}"
    outputs: dict[str, str] = {}
    try:
        if "previousReplicas" not in ctx.prior_outputs:
            before = scaler.read_replicas(step.kind, namespace, step.name)
            outputs["previousReplicas"] = str(before.desired)
            ctx.save_outputs(dict(outputs))
        scaler.set_replicas(step.kind, namespace, step.name, step.replicas)
        if not step.wait_ready:
            return StepResult(True, f"{where} scaled to {step.replicas}", outputs)
        started = time.monotonic()
        delay = 0.1
        while True:
            now = scaler.read_replicas(step.kind, namespace, step.name)
            if settled(now, step.replicas):
                outputs["readySeconds"] = f"{time.monotonic() - started:.3f}"
                return StepResult(True, f"{where}: {now.ready}/{step.replicas} ready", outputs)
            remaining = ctx.remaining()
            if remaining <= 0:
                return StepResult(
                    False, f"{where}: {now.ready}/{step.replicas} ready, {now.current} pods, at "
                    "timeoutSeconds; check the pods' events", outputs)
            time.sleep(min(delay, remaining))
            delay = backoff(delay)
    except Exception as exc:  # an executor reports, it never raises
        return StepResult(False, f"scale {where}: {type(exc).__name__}: {exc}", outputs)
