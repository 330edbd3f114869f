"""Pure parts of the operator glue: merge patches, tick scheduling, the Ready condition,
workload and Job views, and the kubectl verb's rendering and annotations."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from aegis.api.failoverplan import FailoverPlanSpec, FailoverPlanStatus, SiteStatus
from aegis.k8s.jobs import job_state_of
from aegis.k8s.workloads import job_manifest, replicas_of
from aegis.kubectl_failover import annotation_for, parser, render_status
from aegis.reconcilers.failoverplan import (
    MAX_IDLE_SECONDS,
    merge_patch,
    next_delay,
    ready_condition,
    summary,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def spec(primary_period: int = 1, secondary_period: int = 5) -> FailoverPlanSpec:
    check = [{"name": "api", "tcp": {"host": "127.0.0.1", "port": 9}}]
    return FailoverPlanSpec.model_validate({
        "primary": {"name": "eu", "checks": check, "periodSeconds": primary_period},
        "secondary": {"name": "us", "checks": check, "periodSeconds": secondary_period},
        "steps": [{"name": "notify", "webhook": {"url": "http://127.0.0.1:9/"}}],
    })


def test_merge_patch_nulls_removed_keys_and_recurses_into_objects() -> None:
    old = {"state": "AwaitingApproval", "approvalToken": "t", "lastTransition": {
        "id": "a", "completionTime": "x", "steps": [{"name": "s", "state": "Failed"}]}}
    new = {"state": "FailingOver", "lastTransition": {
        "id": "a", "steps": [{"name": "s", "state": "Pending"}]}}
    assert merge_patch(old, new) == {
        "state": "FailingOver", "approvalToken": None,
        "lastTransition": {"completionTime": None, "steps": [{"name": "s", "state": "Pending"}]},
    }
    assert merge_patch(new, new) == {}


def test_next_delay_is_the_earliest_due_site_capped() -> None:
    plan = spec(primary_period=3, secondary_period=10)
    status = FailoverPlanStatus(sites={
        "primary": SiteStatus(last_probe_time=T0),
        "secondary": SiteStatus(last_probe_time=T0 - dt.timedelta(seconds=9)),
    })
    assert next_delay(plan, status, T0) == 1.0
    assert next_delay(plan, FailoverPlanStatus(), T0) == 0.0
    late = T0 + dt.timedelta(seconds=30)
    assert next_delay(plan, status, late) == 0.0
    slow = spec(primary_period=3600, secondary_period=3600)
    assert next_delay(slow, status.model_copy(update={"sites": {
        "primary": SiteStatus(last_probe_time=T0),
        "secondary": SiteStatus(last_probe_time=T0)}}), T0) == MAX_IDLE_SECONDS


def test_ready_condition_is_false_after_a_failed_transition_and_names_the_step() -> None:
    failed = FailoverPlanStatus.model_validate({"state": "Failed", "lastTransition": {
        "kind": "Failover", "result": "Failed", "steps": [
            {"name": "promote", "state": "Succeeded"}, {"name": "dns", "state": "Failed"}]}})
    ready = ready_condition(spec(), failed)
    assert (ready.status, ready.reason) == ("False", "FailoverFailed")
    assert "step dns" in ready.message and "dr.aegis.dev/failover" in ready.message
    over = ready_condition(spec(), FailoverPlanStatus(state="FailedOver", active_site="secondary"))
    assert (over.status, over.reason) == ("True", "FailedOver") and "us serves" in over.message


def test_summary_lists_duration_rpo_and_steps() -> None:
    status = FailoverPlanStatus.model_validate({"lastTransition": {
        "kind": "Failover", "result": "Succeeded", "durationSeconds": 0.25, "rpoSeconds": 0.5,
        "lagBytes": 128, "steps": [{"name": "promote", "state": "Succeeded",
                                    "startTime": "2026-01-01T12:00:00Z",
                                    "completionTime": "2026-01-01T12:00:00.150000Z"}]}})
    assert status.last_transition is not None
    text = summary(status.last_transition)
    assert text == ("Failover Succeeded, in 0.25s, measured RPO 0.500s (128 bytes of WAL "
                    "behind): promote Succeeded 0.15s")


def test_replicas_and_job_states_from_json() -> None:
    counts = replicas_of({"metadata": {"generation": 4}, "spec": {"replicas": 3},
                          "status": {"replicas": 3, "readyReplicas": 2, "observedGeneration": 3}})
    assert (counts.desired, counts.current, counts.ready) == (3, 3, 2)
    assert (counts.generation, counts.observed_generation) == (4, 3)
    assert replicas_of({"spec": {}}).desired == 1  # the API server's default
    assert job_state_of(None).phase == "Failed"
    assert job_state_of({"status": {}}).phase == "Running"
    assert job_state_of({"status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}).phase == "Succeeded"
    failed = job_state_of({"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline"}]}})
    assert failed.message == "DeadlineExceeded: Job was active longer than specified deadline"


def test_job_manifest_is_owned_by_the_plan() -> None:
    owner = {"apiVersion": "dr.aegis.dev/v1alpha1", "kind": "FailoverPlan",
             "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"}}
    job = job_manifest("orders-smoke-1", {"template": {}}, owner, "failover-1")
    assert job["metadata"]["namespace"] == "shop"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["labels"] == {"dr.aegis.dev/failoverplan": "orders",
                                         "dr.aegis.dev/transition": "failover-1"}


def args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def test_kubectl_annotations() -> None:
    assert annotation_for(args("approve", "p"), {"approvalToken": "tok"}) == (
        "dr.aegis.dev/approve", "tok")
    assert annotation_for(args("approve", "p", "--token", "given"), {}) == (
        "dr.aegis.dev/approve", "given")
    refused = annotation_for(args("approve", "p"), {"state": "FailedOver"})
    assert isinstance(refused, str) and "FailedOver" in refused
    assert annotation_for(args("trigger", "p", "--reason", "dc  fire"), {}) == (
        "dr.aegis.dev/failover", "dc fire")
    assert annotation_for(args("trigger", "p", "--reason", "x", "--force"), {}) == (
        "dr.aegis.dev/failover", "force:x")
    assert annotation_for(args("failback", "p"), {})[0] == "dr.aegis.dev/failback"


def test_render_status_shows_sites_steps_and_hides_the_token() -> None:
    plan: dict[str, Any] = {
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"mode": "Manual", "primary": {"name": "eu"}, "secondary": {"name": "us"}},
        "status": {
            "state": "AwaitingApproval", "activeSite": "primary", "approvalToken": "s3cret",
            "sites": {"primary": {"healthy": False, "consecutiveFailures": 4,
                                  "lastProbeTime": "2026-01-01T11:59:59Z",
                                  "checks": [{"name": "api", "ok": False, "latencyMs": 3.25,
                                              "message": "HTTP 503"}]}},
            "lastTransition": {"kind": "Failback", "result": "Succeeded", "id": "failback-1",
                               "durationSeconds": 1.5, "steps": [
                                   {"name": "restore-dns", "state": "Succeeded", "attempts": 1,
                                    "startTime": "2026-01-01T11:00:00Z",
                                    "completionTime": "2026-01-01T11:00:01.500000Z"}]},
        },
    }
    text = render_status(plan, T0)
    assert "s3cret" not in text
    assert "state:        AwaitingApproval" in text and "kubectl aegis failover approve" in text
    assert "primary       eu: Down, 4 failed probe(s) in a row, last probe 1s ago" in text
    assert "api" in text and "NO" in text and "3.2ms" in text and "HTTP 503" in text
    assert "secondary     us: Unknown" in text
    assert any(line.split()[:4] == ["restore-dns", "Succeeded", "1.50s", "1"]
               for line in text.splitlines())


def test_render_status_shows_replication_lag_outage_and_accepted_loss() -> None:
    plan: dict[str, Any] = {
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"mode": "Automatic", "primary": {"name": "eu"}, "secondary": {"name": "us"}},
        "status": {
            "state": "Blocked", "activeSite": "primary",
            "sites": {"secondary": {"healthy": True, "replication": {
                "kind": "postgres", "role": "replica", "position": 1000, "stale": True,
                "message": "5242880 bytes / 90s behind eu (NOT streaming)"}}},
            "lastTransition": {"kind": "Failover", "result": "Succeeded", "id": "f-1",
                               "durationSeconds": 1.0, "writeOutageSeconds": 0.25,
                               "dataLossAccepted": "INC-1", "expectedLagBytes": 5242880,
                               "expectedLagSeconds": 90},
        },
    }
    text = render_status(plan, T0)
    assert "replication: postgres replica at 1000; 5242880 bytes / 90s behind eu" in text
    assert "STALE" in text and "write outage 0.250s" in text
    assert "data loss accepted: INC-1 (expected 5242880 bytes / 90s)" in text


def test_trigger_and_approve_take_an_acceptance_of_data_loss() -> None:
    parsed = args("trigger", "p", "--accept-data-loss", "INC-1")
    assert parsed.accept_data_loss == "INC-1"
    assert args("approve", "p", "--accept-data-loss", "ok").accept_data_loss == "ok"


def test_verbs_build_a_failoverapproval_for_plans_that_take_them() -> None:
    from aegis.kubectl_failover import approval_for

    forced = approval_for(args("trigger", "orders", "--reason", "eu  lost", "--force",
                               "--accept-data-loss", "INC-1"))
    assert forced["kind"] == "FailoverApproval"
    assert forced["metadata"] == {"generateName": "orders-"}
    assert forced["spec"] == {"planName": "orders", "action": "Failover", "reason": "eu lost",
                              "force": True, "acceptDataLoss": "INC-1"}
    approve = approval_for(args("approve", "orders"))["spec"]
    assert approve == {"planName": "orders", "action": "Failover",
                       "reason": "approved with kubectl aegis"}
    assert approval_for(args("failback", "orders"))["spec"]["action"] == "Failback"
