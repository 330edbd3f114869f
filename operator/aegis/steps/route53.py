"""route53: UPSERT a record and wait for INSYNC; the record as it was before is saved in
the step's outputs (under `previous`) BEFORE the change, so neither a crash nor a retry can
lose it, and failback can put it back (`run_route53_restore`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aegis.api.failoverplan import Route53Step
from aegis.cloud.route53 import (
    AliasSnapshot,
    RecordSnapshot,
    Route53Error,
    Route53Records,
    absent_json,
    normalize_name,
    route53_client,
)
from aegis.probes.base import scrub
from aegis.reconcilers.failover import PREVIOUS_RECORD, RestoreRoute53
from aegis.steps.base import StepContext, StepPorts, StepResult

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client


def desired_record(step: Route53Step) -> RecordSnapshot:
    name = normalize_name(step.record_name)
    if step.alias_target is not None:
        alias = step.alias_target
        return RecordSnapshot(name, step.type, alias=AliasSnapshot(
            alias.hosted_zone_id, alias.dns_name, alias.evaluate_target_health
        ))
    return RecordSnapshot.of_values(name, step.type, step.ttl, list(step.values or []))


def _records(step: Route53Step, ports: StepPorts) -> tuple[Route53Records, list[str]]:
    credentials = None
    if step.credentials_secret_ref is not None:
        if ports.secrets is None:
            raise Route53Error("route53.credentialsSecretRef is set but no Secret reader was given")
        credentials = ports.secrets.data(step.credentials_secret_ref)
    known = list(credentials.values()) if credentials else []
    factory = ports.route53 or default_route53_client
    return Route53Records(factory(step, credentials)), known


def default_route53_client(
    step: Route53Step, credentials: Mapping[str, str] | None
) -> Route53Client:
    return route53_client(step.region, step.endpoint, credentials)


def run_route53(step: Route53Step, ctx: StepContext, ports: StepPorts) -> StepResult:
    known: list[str] = []
    outputs: dict[str, str] = {}
    try:
        records, known = _records(step, ports)
        if PREVIOUS_RECORD not in ctx.prior_outputs:
            before = records.read(step.hosted_zone_id, step.record_name, step.type, ctx.deadline)
            outputs[PREVIOUS_RECORD] = (
                before.to_json() if before else absent_json(normalize_name(step.record_name),
                                                            step.type)
            )
            ctx.save_outputs(dict(outputs))
        desired = desired_record(step)
        started = time.monotonic()
        change_id, status = records.upsert(
            step.hosted_zone_id, desired, ctx.deadline,
            comment=f"aegis {ctx.namespace}/{ctx.plan} {ctx.transition.id}",
        )
        outputs["changeId"] = change_id
        records.wait_insync(change_id, ctx.deadline, status)
        outputs["insyncSeconds"] = f"{time.monotonic() - started:.3f}"
        return StepResult(True, f"{desired.describe()} is INSYNC ({change_id})", outputs)
    except Route53Error as exc:
        return StepResult(False, scrub(str(exc), known), outputs)
    except Exception as exc:  # an executor reports, it never raises
        return StepResult(False, scrub(f"route53: {type(exc).__name__}: {exc}", known), outputs)


def run_route53_restore(action: RestoreRoute53, ctx: StepContext, ports: StepPorts) -> StepResult:
    """Put the record back as the failover found it; delete it if there was none."""
    step = action.source
    known: list[str] = []
    try:
        records, known = _records(step, ports)
        previous = RecordSnapshot.from_json(action.previous)
        started = time.monotonic()
        if previous is None:
            current = records.read(step.hosted_zone_id, step.record_name, step.type, ctx.deadline)
            if current is None:
                return StepResult(True, f"{step.record_name} {step.type}: absent, as before")
            change_id, status = records.delete(step.hosted_zone_id, current, ctx.deadline,
                                               comment=f"aegis failback {ctx.transition.id}")
            done = f"deleted {current.describe()} (it did not exist before the failover)"
        else:
            change_id, status = records.upsert(step.hosted_zone_id, previous, ctx.deadline,
                                               comment=f"aegis failback {ctx.transition.id}")
            done = f"restored {previous.describe()}"
        records.wait_insync(change_id, ctx.deadline, status)
        seconds = f"{time.monotonic() - started:.3f}"
        return StepResult(True, f"{done}, INSYNC ({change_id})",
                          {"changeId": change_id, "insyncSeconds": seconds})
    except Route53Error as exc:
        return StepResult(False, scrub(str(exc), known))
    except Exception as exc:  # an executor reports, it never raises
        return StepResult(False, scrub(f"route53: {type(exc).__name__}: {exc}", known))
