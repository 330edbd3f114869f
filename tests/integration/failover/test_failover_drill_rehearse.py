"""failover_drill.rehearse against real components: moto Route53, an HTTP receiver and a TCP
listener on 127.0.0.1, the plan's own Prober; the Secret reader and the dry-run scaler are
in-memory fakes of their ports. Paths the e2e does not reach: a drill record that existed
before the drill is put back as it was, steps that fail, dependsOn branches in the RTO."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aegis.api.common import SecretKeyRef, SecretRef
from aegis.api.drdrill import DrillObjectives, FailoverDrill
from aegis.api.failoverplan import FailoverPlanSpec
from aegis.probes.prober import Prober
from aegis.probes.workload import WorkloadKind, WorkloadReplicas
from aegis.reach import EndpointRule
from aegis.reconcilers import failover_drill
from aegis.sandbox.servers import MotoServer
from aegis.steps.route53 import default_route53_client

ZONE_NAME = "example.com."
DRILL_RECORD = "drill.db.example.com."


class Secrets:
    def __init__(self, data: dict[str, dict[str, str]]) -> None:
        self.secrets = data

    def data(self, ref: SecretRef) -> dict[str, str]:
        return dict(self.secrets[ref.name])

    def value(self, ref: SecretKeyRef) -> str:
        return self.secrets[ref.name][ref.key]


class Scaler:
    """Answers dry runs like the API server; refuses a workload it does not know."""

    def __init__(self, replicas: dict[str, int]) -> None:
        self.replicas = replicas
        self.dry_runs: list[tuple[str, int]] = []

    def read_replicas(self, kind: WorkloadKind, namespace: str, name: str) -> WorkloadReplicas:
        if name not in self.replicas:
            raise LookupError(f"{kind} {namespace}/{name} not found")
        n = self.replicas[name]
        return WorkloadReplicas(desired=n, current=n, ready=n, generation=1,
                                observed_generation=1)

    def dry_run_replicas(self, kind: WorkloadKind, namespace: str, name: str,
                         replicas: int) -> int:
        self.read_replicas(kind, namespace, name)
        self.dry_runs.append((name, replicas))
        return replicas


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"headers": dict(self.headers), "json": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def zone_with_drill_record(route53: Any) -> str:
    zone = route53.create_hosted_zone(Name=ZONE_NAME, CallerReference="drill-test")
    zone_id = str(zone["HostedZone"]["Id"].split("/")[-1])
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
        "Action": "UPSERT", "ResourceRecordSet": {
            "Name": DRILL_RECORD, "Type": "A", "TTL": 120,
            "ResourceRecords": [{"Value": "192.0.2.7"}]}}]})
    return zone_id


def drill_record(route53: Any, zone: str) -> list[str] | None:
    for record in route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]:
        if record["Name"] == DRILL_RECORD and record["Type"] == "A":
            return [r["Value"] for r in record["ResourceRecords"]]
    return None


def plan(port: int, hook: str, moto: MotoServer, zone: str) -> FailoverPlanSpec:
    tcp = [{"name": "tcp", "tcp": {"host": "127.0.0.1", "port": port}}]
    route53 = {"hostedZoneId": zone, "recordName": "db.example.com.", "type": "A",
               "values": ["10.0.0.2"], "endpoint": moto.endpoint,
               "credentialsSecretRef": {"name": "aws"}}
    return FailoverPlanSpec.model_validate({
        "mode": "Automatic",
        "primary": {"name": "eu", "checks": tcp, "periodSeconds": 5, "failureThreshold": 2},
        "secondary": {"name": "us", "checks": tcp},
        "steps": [
            {"name": "dns", "route53": route53},
            # two branches after dns: the RTO counts the longer one, not both
            {"name": "warm", "dependsOn": ["dns"],
             "scale": {"kind": "Deployment", "name": "warm", "replicas": 3}},
            {"name": "notify", "dependsOn": ["dns"], "webhook": {"url": hook}},
            {"name": "custom", "job": {"template": {"template": {"spec": {"containers": [
                {"name": "c", "image": "busybox"}]}}}}},
        ],
    })


def ports(moto: MotoServer, scaler: Scaler, prober: Prober) -> failover_drill.DrillPorts:
    env = moto.aws_env()
    return failover_drill.DrillPorts(
        prober=prober,
        secrets=Secrets({"aws": {k: env[k] for k in ("AWS_ACCESS_KEY_ID",
                                                      "AWS_SECRET_ACCESS_KEY")}}),
        workloads=scaler,
        route53=default_route53_client,
        endpoints=EndpointRule(allow_loopback=True),
    )


@pytest.fixture
def prober() -> Iterator[Prober]:
    p = Prober(max_workers=4)
    try:
        yield p
    finally:
        p.close()


def test_rehearsal_puts_a_preexisting_drill_record_back_and_predicts_along_the_longest_branch(
    moto: MotoServer, route53_client: Any, receiver: tuple[str, list[dict[str, Any]]],
    listener: int, prober: Prober,
) -> None:
    hook, seen = receiver
    zone = zone_with_drill_record(route53_client)
    spec = plan(listener, hook, moto, zone)
    record = {"hostedZoneId": zone, "recordName": DRILL_RECORD, "type": "A",
              "values": ["10.0.0.2"], "endpoint": moto.endpoint,
              "credentialsSecretRef": {"name": "aws"}}
    drill = FailoverDrill.model_validate({"planRef": {"name": "orders"}, "drillRecord": record})
    scaler = Scaler({"warm": 1})
    rehearsal = failover_drill.rehearse(spec, drill, "shop", "orders", "rehearsal",
                                        ports(moto, scaler, prober))
    steps = {s.name: s for s in rehearsal.steps}
    assert [s.name for s in rehearsal.steps] == [
        "dns", "warm", "notify", "custom", "drill-record-cleanup"]
    assert steps["dns"].result == "Passed"
    assert steps["dns"].outputs["before"] == "drill.db.example.com. A 192.0.2.7 ttl 120"
    assert steps["custom"].result == "NotExercised"
    assert steps["drill-record-cleanup"].result == "Passed"
    assert "restored" in steps["drill-record-cleanup"].message
    # As before the drill: the value and the TTL it had.
    assert drill_record(route53_client, zone) == ["192.0.2.7"]
    assert scaler.dry_runs == [("warm", 3)] and scaler.replicas == {"warm": 1}
    assert seen[0]["headers"]["X-Aegis-Drill"] == "true"
    assert seen[0]["json"]["drill"] is True
    assert [s["name"] for s in seen[0]["json"]["steps"]] == ["dns", "warm"]
    assert all(site.healthy for site in rehearsal.sites.values())

    run = {"startTime": "2026-03-02T04:00:00Z", "plan": "orders"}
    outcome = failover_drill.verdict(run, spec, rehearsal, DrillObjectives(rto_seconds=600),
                                     dt.datetime.now(dt.UTC))
    assert outcome.passed, outcome.message
    assert "not exercised: custom" in outcome.message
    dns, warm, notify = (steps[n].seconds or 0.0 for n in ("dns", "warm", "notify"))
    assert outcome.record["phases"]["detectionSeconds"] == 10.0
    assert outcome.record["rtoSeconds"] == pytest.approx(10.0 + dns + max(warm, notify),
                                                         abs=0.002)


def test_failures_are_named_and_the_rto_objective_is_judged(
    moto: MotoServer, route53_client: Any, receiver: tuple[str, list[dict[str, Any]]],
    listener: int, prober: Prober,
) -> None:
    hook, _seen = receiver
    zone = zone_with_drill_record(route53_client)
    spec = plan(listener, hook, moto, zone)
    drill = FailoverDrill.model_validate({"planRef": {"name": "orders"}})
    rehearsal = failover_drill.rehearse(spec, drill, "shop", "orders", "rehearsal",
                                        ports(moto, Scaler({}), prober))
    steps = {s.name: s for s in rehearsal.steps}
    assert steps["dns"].result == "NotExercised" and "drillRecord" in steps["dns"].message
    assert steps["warm"].result == "Failed" and steps["warm"].reason == "ScaleDryRunFailed"
    assert "drill-record-cleanup" not in steps  # nothing was changed, nothing to put back
    run = {"startTime": "2026-03-02T04:00:00Z", "plan": "orders"}
    outcome = failover_drill.verdict(run, spec, rehearsal, DrillObjectives(rto_seconds=5),
                                     dt.datetime.now(dt.UTC))
    assert not outcome.passed and outcome.reason == "ScaleDryRunFailed"
    assert "RTO" in outcome.message and "objective 5s" in outcome.message
    # The objective alone: detection (10 s) already misses 5 s.
    clean = failover_drill.Rehearsal(rehearsal.sites, [s for s in rehearsal.steps
                                                       if s.result != "Failed"])
    missed = failover_drill.verdict(run, spec, clean, DrillObjectives(rto_seconds=5),
                                    dt.datetime.now(dt.UTC))
    assert missed.reason == "RTOObjectiveMissed"
    assert drill_record(route53_client, zone) == ["192.0.2.7"]


def test_critical_path_counts_parallel_branches_once() -> None:
    spec = FailoverPlanSpec.model_validate({
        "primary": {"name": "a", "checks": [{"name": "t", "tcp": {"host": "h", "port": 1}}]},
        "secondary": {"name": "b", "checks": [{"name": "t", "tcp": {"host": "h", "port": 1}}]},
        "steps": [
            {"name": "one", "webhook": {"url": "http://h/"}},
            {"name": "two", "dependsOn": [], "webhook": {"url": "http://h/"}},
            {"name": "three", "dependsOn": ["one", "two"], "webhook": {"url": "http://h/"}},
        ],
    })
    assert failover_drill.critical_path_seconds(spec, {"one": 2.0, "two": 5.0, "three": 1.0}) \
        == 6.0
    assert failover_drill.critical_path_seconds(spec, {}) == 0.0
    assert failover_drill.detection_seconds(spec) == 30.0
