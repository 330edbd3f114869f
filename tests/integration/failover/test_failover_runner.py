"""A whole procedure on real servers: promote a standby, flip a moto record, call a
webhook; resumption after a simulated operator crash; failure handling."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from failover_helpers import LOOPBACK, DictSecrets, Endpoint, Hung
from test_failover_route53_moto import get, make_zone, put

from aegis.api.failoverplan import Step, StepStatus, Transition
from aegis.reconcilers.failover import PREVIOUS_RECORD, new_transition, plan_steps, step_status
from aegis.sandbox.servers import MotoServer, PostgresServer
from aegis.steps import StepPorts, run_procedure


def pg_target(server: PostgresServer) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "database": "postgres",
            "userSecretRef": {"name": "pg", "key": "user"},
            "passwordSecretRef": {"name": "pg", "key": "password"}}


def dns_step(moto: MotoServer, zone: str, **kw: Any) -> dict[str, Any]:
    return {"name": "dns", "route53": {
        "hostedZoneId": zone, "recordName": "db.example.com", "type": "A",
        "values": ["10.0.0.2"], "ttl": 30, "endpoint": moto.endpoint,
        "credentialsSecretRef": {"name": "aws"}}, **kw}


def hook_step(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "webhook": {"url": url, "headersSecretRef": {"name": "hook"}}, **kw}


def ports(moto: MotoServer, pg: PostgresServer | None = None) -> StepPorts:
    env = moto.aws_env()
    return StepPorts(secrets=DictSecrets({
        "aws": {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        "hook": {"Authorization": "Bearer hook-token-1"},
        "pg": {"user": pg.user, "password": pg.password} if pg else {},
    }), endpoints=LOOPBACK)


class Saves:
    """The status patches the runner would send, in order."""

    def __init__(self) -> None:
        self.snapshots: list[Transition] = []

    def __call__(self, transition: Transition) -> None:
        self.snapshots.append(transition)

    def states(self, name: str) -> list[str]:
        seen = [step_status(t, name).state for t in self.snapshots]
        return [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]


def run(steps: list[dict[str, Any]], transition: Transition | None, saves: Saves,
        step_ports: StepPorts) -> Transition:
    planned = plan_steps([Step.model_validate(s) for s in steps])
    start = transition or new_transition("Failover", "PrimaryDown: test", planned,
                                         dt.datetime.now(dt.UTC))
    return run_procedure(planned, start, plan="orders", namespace="ns", from_site="eu",
                         to_site="us", ports=step_ports, save=saves)


def test_failover_procedure_end_to_end_with_measured_times(
    pg_standby: tuple[PostgresServer, PostgresServer], moto: MotoServer, route53_client: Any,
    http_endpoint: Endpoint,
) -> None:
    primary, standby = pg_standby
    zone = make_zone(route53_client)
    put(route53_client, zone, "db.example.com.", ["10.0.0.1"])
    saves = Saves()
    states_at_call: list[str] = []
    http_endpoint.on_request = lambda: states_at_call.append(
        step_status(saves.snapshots[-1], "notify").state)
    steps = [
        {"name": "promote", "postgresPromote": {"target": pg_target(standby),
                                                "fencePrimary": pg_target(primary)}},
        dns_step(moto, zone),
        hook_step("notify", http_endpoint.url),
    ]
    primary.stop_hard()
    started = time.monotonic()
    done = run(steps, None, saves, ports(moto, standby))
    wall = time.monotonic() - started

    assert done.result == "Succeeded", [s.message for s in done.steps or []]
    assert [s.state for s in done.steps or []] == ["Succeeded"] * 3
    for name in ("promote", "dns", "notify"):
        assert saves.states(name)[-2:] == ["Running", "Succeeded"]
        s = step_status(done, name)
        assert s.start_time and s.completion_time and s.start_time <= s.completion_time
    assert states_at_call == ["Running"]  # persisted before the webhook was sent
    assert done.lag_bytes == 0 and done.rpo_seconds == 0.0
    assert done.duration_seconds is not None and 0 < done.duration_seconds <= wall + 1
    record = get(route53_client, zone, "db.example.com.")
    assert record is not None and record["ResourceRecords"] == [{"Value": "10.0.0.2"}]
    dns_outputs = step_status(done, "dns").outputs or {}
    assert json.loads(dns_outputs[PREVIOUS_RECORD])["values"] == ["10.0.0.1"]

    sent = http_endpoint.requests[0]
    assert sent["headers"]["Authorization"] == "Bearer hook-token-1"
    assert sent["headers"]["Idempotency-Key"] == f"ns/orders/{done.id}/notify"
    body = sent["json"]
    assert (body["kind"], body["from"], body["to"], body["plan"]) == (
        "Failover", "eu", "us", "orders")
    assert [(s["name"], s["state"]) for s in body["steps"]] == [
        ("promote", "Succeeded"), ("dns", "Succeeded"), ("notify", "Running")]
    print(f"\nprocedure wall {wall:.3f}s; steps: " + ", ".join(
        f"{s.name} {(s.completion_time - s.start_time).total_seconds():.3f}s"
        for s in done.steps or [] if s.completion_time and s.start_time))


def test_restart_after_a_finished_step_resumes_without_repeating_it(
    moto: MotoServer, route53_client: Any, http_endpoint: Endpoint,
) -> None:
    zone = make_zone(route53_client)
    # the crashed operator had already applied its UPSERT, after saving the old value
    put(route53_client, zone, "db.example.com.", ["10.0.0.2"])
    original = json.dumps({"name": "db.example.com.", "type": "A", "ttl": 300,
                           "values": ["10.0.0.1"]}, sort_keys=True)
    steps = [hook_step("page", http_endpoint.url), dns_step(moto, zone),
             hook_step("notify", http_endpoint.url)]
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    crashed = Transition(kind="Failover", id="failover-x", start_time=t0, result="Running",
                         steps=[
        StepStatus(name="page", state="Succeeded", start_time=t0, completion_time=t0,
                   attempts=1),
        StepStatus(name="dns", state="Running", start_time=t0, attempts=1,
                   outputs={PREVIOUS_RECORD: original}),
        StepStatus(name="notify", state="Pending"),
    ])
    saves = Saves()
    done = run(steps, crashed, saves, ports(moto))
    assert done.result == "Succeeded"
    assert [r["json"]["steps"][-1]["name"] for r in http_endpoint.requests] == ["notify"]
    dns = step_status(done, "dns")
    assert dns.attempts == 2 and "resumed" not in (dns.message or "")
    assert dns.start_time == t0  # the first start is kept
    assert dns.outputs is not None and dns.outputs[PREVIOUS_RECORD] == original
    assert step_status(done, "page").attempts == 1
    assert saves.states("dns") == ["Running", "Succeeded"]


def test_a_failed_step_stops_the_procedure_and_a_step_interrupted_twice_is_not_resent(
    moto: MotoServer, route53_client: Any, http_endpoint: Endpoint,
) -> None:
    zone = make_zone(route53_client)
    put(route53_client, zone, "db.example.com.", ["10.0.0.1"])
    http_endpoint.status = 500
    saves = Saves()
    done = run([hook_step("page", http_endpoint.url), dns_step(moto, zone)], None, saves,
               ports(moto))
    assert done.result == "Failed"
    assert step_status(done, "page").message == f"POST {http_endpoint.url}: HTTP 500, expected 2xx"
    assert (step_status(done, "dns").state, step_status(done, "dns").message) == (
        "Skipped", "not run: step page failed")
    record = get(route53_client, zone, "db.example.com.")
    assert record is not None and record["ResourceRecords"] == [{"Value": "10.0.0.1"}]

    http_endpoint.status = 200
    count = len(http_endpoint.requests)
    twice = Transition(kind="Failover", id="failover-y", result="Running", steps=[
        StepStatus(name="page", state="Running", attempts=2)])
    stopped = run([hook_step("page", http_endpoint.url)], twice, Saves(), ports(moto))
    assert stopped.result == "Failed"
    assert "interrupted 2 times" in (step_status(stopped, "page").message or "")
    assert len(http_endpoint.requests) == count  # not sent a third time


def test_continue_on_error_goes_on(moto: MotoServer, route53_client: Any,
                                   http_endpoint: Endpoint) -> None:
    zone = make_zone(route53_client)
    http_endpoint.status = 404
    done = run([hook_step("page", http_endpoint.url, continueOnError=True),
                dns_step(moto, zone)], None, Saves(), ports(moto))
    assert done.result == "Succeeded"
    assert step_status(done, "page").state == "Failed"
    assert step_status(done, "dns").state == "Succeeded"


@pytest.mark.parametrize("hung_server", [True], indirect=True)
def test_a_step_that_never_returns_is_abandoned_after_its_timeout(
    hung_server: Hung, moto: MotoServer
) -> None:
    url = f"http://127.0.0.1:{hung_server.port}/hook"
    started = time.monotonic()
    done = run([hook_step("page", url, timeoutSeconds=1)], None, Saves(), ports(moto))
    elapsed = time.monotonic() - started
    assert done.result == "Failed"
    assert step_status(done, "page").message == (
        "no result within timeoutSeconds=1; abandoned")
    assert 2.5 <= elapsed < 4.5, elapsed
