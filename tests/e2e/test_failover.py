"""FailoverPlan end to end: the real operator (KopfRunner) against the emulator, a real
PostgreSQL primary with a streaming standby, HTTP health endpoints and webhooks the tests
control, and a moto Route53 zone holding the record."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.helpers import (
    OperatorHandle,
    condition,
    create,
    create_secret,
    events_for,
    get,
    wait_for,
)

from aegis import metrics
from aegis.kubectl_failover import main as kubectl_failover
from aegis.sandbox.servers import MotoServer, PostgresServer

PLURAL = "failoverplans"
RECORD = "db.example.com."


# --------------------------------------------------------------------------- HTTP endpoints


@dataclass
class Endpoint:
    """An HTTP server on 127.0.0.1: answers `answer(n)` for its n-th request (0-based), and
    while `gate` is clear, holds requests until the test sets it."""

    server: ThreadingHTTPServer
    answer: Callable[[int], int] = lambda _n: 200
    gate: threading.Event = field(default_factory=threading.Event)
    requests: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def status(self, code: int) -> None:
        self.answer = lambda _n: code

    def posts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] != "GET"]


@pytest.fixture
def endpoints() -> Iterator[Callable[[], Endpoint]]:
    servers: list[Endpoint] = []

    def make() -> Endpoint:
        endpoint: Endpoint

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with endpoint.lock:
                    index = len(endpoint.requests)
                    endpoint.requests.append(
                        {
                            "method": self.command,
                            "headers": dict(self.headers),
                            "json": json.loads(body) if body else None,
                        }
                    )
                endpoint.gate.wait(60)
                self.send_response(endpoint.answer(index))
                self.send_header("Content-Length", "0")
                self.end_headers()
                with endpoint.lock:
                    endpoint.answered += 1

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        endpoint = Endpoint(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(endpoint)
        return endpoint

    try:
        yield make
    finally:
        for endpoint in servers:
            endpoint.gate.set()
            endpoint.server.shutdown()
            endpoint.server.server_close()


# --------------------------------------------------------------------------- plan builders


def site(name: str, checks: list[dict[str, Any]], threshold: int = 3) -> dict[str, Any]:
    return {
        "name": name,
        "checks": checks,
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "failureThreshold": threshold,
        "successThreshold": 1,
    }


def http_check(endpoint: Endpoint) -> dict[str, Any]:
    return {"name": "http", "http": {"url": endpoint.url}}


def pg_target(server: PostgresServer) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "database": "postgres",
        "userSecretRef": {"name": "pg", "key": "user"},
        "passwordSecretRef": {"name": "pg", "key": "password"},
    }


def dns_step(moto: MotoServer, zone: str) -> dict[str, Any]:
    return {
        "name": "dns",
        "timeoutSeconds": 30,
        "route53": {
            "hostedZoneId": zone,
            "recordName": RECORD,
            "type": "A",
            "values": ["10.0.0.2"],
            "ttl": 30,
            "endpoint": moto.endpoint,
            "credentialsSecretRef": {"name": "aws"},
        },
    }


def hook_step(name: str, endpoint: Endpoint, timeout: int = 30) -> dict[str, Any]:
    return {"name": name, "timeoutSeconds": timeout, "webhook": {"url": endpoint.url}}


def make_plan(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    create(
        k8s_api,
        PLURAL,
        namespace,
        {
            "kind": "FailoverPlan",
            "metadata": {"name": name},
            "spec": {"cooldownSeconds": 3600, **spec},
        },
    )


def make_zone(route53: Any) -> str:
    zone = route53.create_hosted_zone(Name="example.com.", CallerReference=str(time.time()))
    zone_id = str(zone["HostedZone"]["Id"].split("/")[-1])
    route53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": RECORD,
                        "Type": "A",
                        "TTL": 300,
                        "ResourceRecords": [{"Value": "10.0.0.1"}],
                    },
                }
            ]
        },
    )
    return zone_id


def record_values(route53: Any, zone: str) -> list[str]:
    found = route53.list_resource_record_sets(
        HostedZoneId=zone, StartRecordName=RECORD, StartRecordType="A", MaxItems="1"
    )
    for record in found["ResourceRecordSets"]:
        if record["Name"] == RECORD and record["Type"] == "A":
            return [r["Value"] for r in record["ResourceRecords"]]
    return []


def secrets_for(
    k8s_api: Any, namespace: str, moto: MotoServer, pg: PostgresServer | None = None
) -> None:
    env = moto.aws_env()
    create_secret(
        k8s_api,
        namespace,
        "aws",
        {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    )
    if pg is not None:
        create_secret(k8s_api, namespace, "pg", {"user": pg.user, "password": pg.password})


def status_of(k8s_api: Any, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get(k8s_api, PLURAL, namespace, name).get("status") or {}
    return status


def reason_of(k8s_api: Any, namespace: str, name: str, type_: str) -> str | None:
    found = condition(get(k8s_api, PLURAL, namespace, name), type_)
    return found["reason"] if found else None


def wait_state(
    k8s_api: Any, namespace: str, name: str, state: str, timeout: float = 30
) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(
        f"{name} {state}",
        lambda: (s := status_of(k8s_api, namespace, name)).get("state") == state and s,
        timeout=timeout,
    )
    return status


def step_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] = next(s for s in status["lastTransition"]["steps"] if s["name"] == name)
    return step


def parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def annotations_of(k8s_api: Any, namespace: str, name: str) -> dict[str, str]:
    meta = get(k8s_api, PLURAL, namespace, name)["metadata"]
    return dict(meta.get("annotations") or {})


def reasons(k8s_api: Any, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in events_for(k8s_api, namespace, name)]


def metrics_port(handle: OperatorHandle) -> int:
    """The process serves /metrics once, on the port of the first operator started in it;
    a later fixture's metrics_port is not listened on."""
    return metrics.serve(0) or handle.metrics_port


def metric(port: int, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def is_writable(server: PostgresServer) -> bool:
    with server.connect() as conn:
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        conn.execute("CREATE TABLE IF NOT EXISTS after_failover (id int)")
        conn.execute("INSERT INTO after_failover VALUES (1)")
        return in_recovery is not None and in_recovery[0] is False


# --------------------------------------------------------------------------- tests


def test_primary_stops_standby_promoted_and_record_flipped_with_measured_times(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
    endpoints: Callable[[], Endpoint],
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, standby = pg_standby
    health, hook = endpoints(), endpoints()
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)
    make_plan(
        k8s_api,
        namespace,
        "orders",
        {
            "mode": "Automatic",
            "primary": site(
                "eu", [{"name": "db", "postgres": {**pg_target(primary), "writable": True}}]
            ),
            "secondary": site(
                "us", [{"name": "db", "postgres": pg_target(standby)}, http_check(health)]
            ),
            "steps": [
                {
                    "name": "promote",
                    "timeoutSeconds": 30,
                    "postgresPromote": {
                        "target": pg_target(standby),
                        "fencePrimary": pg_target(primary),
                    },
                },
                dns_step(moto, zone),
                hook_step("notify", hook),
            ],
        },
    )
    wait_for(
        "both sites healthy",
        lambda: (
            reason_of(k8s_api, namespace, "orders", "FailoverRecommended") == "PrimaryHealthy"
            and reason_of(k8s_api, namespace, "orders", "SecondaryHealthy") == "ChecksPassing"
        ),
    )
    healthy = status_of(k8s_api, namespace, "orders")
    assert healthy["state"] == "Monitoring" and healthy["activeSite"] == "primary"
    assert healthy["sites"]["secondary"]["checks"][1]["latencyMs"] > 0
    with primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 1000)")

    stopped_at = dt.datetime.now(dt.UTC)
    primary.stop_hard()
    status = wait_state(k8s_api, namespace, "orders", "FailedOver")

    assert is_writable(standby)
    with standby.connect() as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1000,)
    assert record_values(route53_client, zone) == ["10.0.0.2"]
    assert status["activeSite"] == "secondary"
    last = status["lastTransition"]
    assert last["kind"] == "Failover" and last["result"] == "Succeeded"
    assert last["reason"].startswith("PrimaryDown: eu down since")
    detected, started = parse(last["detectedTime"]), parse(last["startTime"])
    completed = parse(last["completionTime"])
    # detectedTime is the first failed probe, at most one period after the stop
    assert stopped_at - dt.timedelta(seconds=1) <= detected <= stopped_at + dt.timedelta(seconds=2)
    assert detected < started <= completed
    assert last["durationSeconds"] == pytest.approx((completed - started).total_seconds(), abs=0.01)
    assert last["lagBytes"] >= 0 and last["rpoSeconds"] >= 0
    for name in ("promote", "dns", "notify"):
        step = step_of(status, name)
        assert step["state"] == "Succeeded" and step["attempts"] == 1, step
        assert parse(step["startTime"]) <= parse(step["completionTime"])
    assert "10.0.0.1" in step_of(status, "dns")["outputs"]["previous"]
    assert "lagBytes" in step_of(status, "promote")["outputs"]
    assert reason_of(k8s_api, namespace, "orders", "PrimaryHealthy") == "Down"
    sent = hook.posts()
    assert len(sent) == 1 and sent[0]["json"]["kind"] == "Failover"
    assert [s["name"] for s in sent[0]["json"]["steps"]] == ["promote", "dns", "notify"]
    assert {"FailoverStarted", "FailoverSucceeded"} <= set(reasons(k8s_api, namespace, "orders"))
    port = metrics_port(aegis_operator)
    assert (
        metric(
            port,
            "aegis_failover_total",
            namespace=namespace,
            plan="orders",
            kind="Failover",
            result="Succeeded",
        )
        == 1.0
    )
    assert (
        metric(port, "aegis_site_healthy", namespace=namespace, plan="orders", site="primary")
        == 0.0
    )
    assert (
        metric(port, "aegis_failover_state", namespace=namespace, plan="orders", state="FailedOver")
        == 1.0
    )
    assert (
        metric(
            port,
            "aegis_failover_duration_seconds_count",
            namespace=namespace,
            plan="orders",
            kind="Failover",
        )
        == 1.0
    )

    # kubectl aegis failover status shows the steps and their measured times
    capsys.readouterr()
    assert kubectl_failover(["status", "orders", "-n", namespace]) == 0
    shown = capsys.readouterr().out
    assert "state:        FailedOver" in shown and "active site:  secondary (us)" in shown
    for name in ("promote", "dns", "notify"):
        assert any(line.split()[:2] == [name, "Succeeded"] for line in shown.splitlines())
    # the primary is dead: a failback is refused with an event, and the annotation removed
    assert kubectl_failover(["failback", "orders", "-n", namespace, "--reason", "too soon"]) == 0
    wait_for(
        "failback refused", lambda: "PrimaryUnhealthy" in reasons(k8s_api, namespace, "orders")
    )
    wait_for(
        "annotation removed",
        lambda: "dr.aegis.dev/failback" not in annotations_of(k8s_api, namespace, "orders"),
    )
    assert status_of(k8s_api, namespace, "orders")["state"] == "FailedOver"


def test_manual_mode_waits_for_the_token_and_refuses_a_wrong_one(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    endpoints: Callable[[], Endpoint],
) -> None:
    primary, secondary, hook = endpoints(), endpoints(), endpoints()
    make_plan(
        k8s_api,
        namespace,
        "manual",
        {
            "mode": "Manual",
            "primary": site("eu", [http_check(primary)]),
            "secondary": site("us", [http_check(secondary)]),
            "steps": [hook_step("notify", hook)],
        },
    )
    wait_for(
        "primary healthy",
        lambda: reason_of(k8s_api, namespace, "manual", "FailoverRecommended") == "PrimaryHealthy",
    )
    primary.status(503)
    status = wait_state(k8s_api, namespace, "manual", "AwaitingApproval")
    token = status["approvalToken"]
    assert len(token) >= 16
    recommended = condition(get(k8s_api, PLURAL, namespace, "manual"), "FailoverRecommended")
    assert recommended is not None and recommended["status"] == "True"
    assert "approve" in recommended["message"] and token not in recommended["message"]
    port = metrics_port(aegis_operator)
    assert (
        metric(
            port,
            "aegis_failover_state",
            namespace=namespace,
            plan="manual",
            state="AwaitingApproval",
        )
        == 1.0
    )
    assert (
        metric(port, "aegis_site_healthy", namespace=namespace, plan="manual", site="primary")
        == 0.0
    )
    # created at 0 before any failover, so that increase() sees the first one
    assert (
        metric(
            port,
            "aegis_failover_total",
            namespace=namespace,
            plan="manual",
            kind="Failover",
            result="Succeeded",
        )
        == 0.0
    )

    assert kubectl_failover(["approve", "manual", "-n", namespace, "--token", "wrong"]) == 0
    wait_for(
        "wrong token refused", lambda: "ApprovalRefused" in reasons(k8s_api, namespace, "manual")
    )
    wait_for(
        "annotation removed",
        lambda: "dr.aegis.dev/approve" not in annotations_of(k8s_api, namespace, "manual"),
    )
    status = status_of(k8s_api, namespace, "manual")
    assert status["state"] == "AwaitingApproval" and status["approvalToken"] == token
    assert hook.posts() == [] and "lastTransition" not in status
    assert all("wrong" not in e["message"] for e in events_for(k8s_api, namespace, "manual"))

    assert kubectl_failover(["approve", "manual", "-n", namespace]) == 0
    status = wait_state(k8s_api, namespace, "manual", "FailedOver")
    assert "approvalToken" not in status
    assert status["lastTransition"]["reason"].startswith("Approved: eu down since")
    assert len(hook.posts()) == 1
    seen = reasons(k8s_api, namespace, "manual")
    assert seen.count("FailoverRecommended") == 1  # the Warning is emitted once, not per tick
    assert "FailoverApproved" in seen and "FailoverSucceeded" in seen


def test_no_failover_onto_a_sick_secondary_nor_on_a_flapping_primary(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    endpoints: Callable[[], Endpoint],
) -> None:
    down_primary, down_secondary = endpoints(), endpoints()
    flapping, healthy_secondary = endpoints(), endpoints()
    hook_a, hook_b = endpoints(), endpoints()
    down_primary.status(503)
    down_secondary.status(503)
    # two failures, one success, over and over: runs of 2 < failureThreshold 3
    flapping.answer = lambda n: 200 if n % 3 == 2 else 503
    for name, primary, secondary, hook in (
        ("sick", down_primary, down_secondary, hook_a),
        ("flappy", flapping, healthy_secondary, hook_b),
    ):
        make_plan(
            k8s_api,
            namespace,
            name,
            {
                "mode": "Automatic",
                "primary": site("eu", [http_check(primary)]),
                "secondary": site("us", [http_check(secondary)]),
                "steps": [hook_step("notify", hook)],
            },
        )
    wait_for(
        "sick secondary named",
        lambda: (
            reason_of(k8s_api, namespace, "sick", "FailoverRecommended") == "SecondaryUnhealthy"
        ),
    )
    message = condition(get(k8s_api, PLURAL, namespace, "sick"), "FailoverRecommended")
    assert message is not None and "http: HTTP 503" in message["message"], message
    wait_for("nine probes of the flapping primary", lambda: len(flapping.requests) >= 9)
    flappy = status_of(k8s_api, namespace, "flappy")
    assert flappy["state"] == "Monitoring" and "lastTransition" not in flappy
    assert flappy["sites"]["primary"]["healthy"] is True
    assert flappy["sites"]["primary"]["consecutiveFailures"] < 3
    assert reason_of(k8s_api, namespace, "flappy", "FailoverRecommended") in (
        "BelowThreshold",
        "PrimaryHealthy",
    )
    sick = status_of(k8s_api, namespace, "sick")
    assert sick["state"] == "Monitoring" and "lastTransition" not in sick
    assert hook_a.posts() == [] and hook_b.posts() == []


def play_deployment_controller(api: Any, namespace: str, name: str, stop: threading.Event) -> None:
    """The emulator has no Deployment controller: report every wanted pod ready."""
    apps = client.AppsV1Api(api)
    while not stop.is_set():
        dep = apps.read_namespaced_deployment(name, namespace)
        apps.patch_namespaced_deployment_status(
            name,
            namespace,
            {
                "status": {
                    "observedGeneration": dep.metadata.generation,
                    "replicas": dep.spec.replicas,
                    "readyReplicas": dep.spec.replicas,
                }
            },
        )
        stop.wait(0.1)


def test_manual_trigger_failback_restores_the_record_and_cooldown_blocks_a_second_failover(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    endpoints: Callable[[], Endpoint],
    job_runner: Any,
) -> None:
    primary, secondary, hook = endpoints(), endpoints(), endpoints()
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto)
    labels = {"app": "warm"}
    client.AppsV1Api(k8s_api).create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "warm"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "nginx"}]},
                },
            },
        },
    )
    stop_controller = threading.Event()
    controller = threading.Thread(
        target=play_deployment_controller,
        daemon=True,
        args=(k8s_api.new_client(), namespace, "warm", stop_controller),
    )
    controller.start()
    make_plan(
        k8s_api,
        namespace,
        "switch",
        {
            "mode": "Automatic",
            "primary": site("eu", [http_check(primary)]),
            "secondary": site("us", [http_check(secondary)]),
            "steps": [
                {
                    "name": "warm",
                    "timeoutSeconds": 20,
                    "scale": {"kind": "Deployment", "name": "warm", "replicas": 2},
                },
                {
                    "name": "smoke",
                    "timeoutSeconds": 30,
                    "job": {
                        "template": {
                            "backoffLimit": 0,
                            "template": {
                                "spec": {
                                    "restartPolicy": "Never",
                                    "containers": [
                                        {
                                            "name": "c",
                                            "image": "busybox",
                                            "command": ["sh", "-c", "echo smoke test passed"],
                                        }
                                    ],
                                }
                            },
                        }
                    },
                },
                dns_step(moto, zone),
                hook_step("notify", hook),
            ],
        },
    )
    wait_for(
        "primary healthy",
        lambda: reason_of(k8s_api, namespace, "switch", "FailoverRecommended") == "PrimaryHealthy",
    )
    assert kubectl_failover(["trigger", "switch", "-n", namespace, "--reason", "drill"]) == 0
    try:
        status = wait_state(k8s_api, namespace, "switch", "FailedOver")
    finally:
        stop_controller.set()
        controller.join(5)
    assert status["lastTransition"]["reason"] == "Manual: drill"
    assert record_values(route53_client, zone) == ["10.0.0.2"]
    assert step_of(status, "warm")["outputs"]["previousReplicas"] == "0"
    assert (
        client.AppsV1Api(k8s_api).read_namespaced_deployment("warm", namespace).spec.replicas == 2
    )
    job = client.BatchV1Api(k8s_api).read_namespaced_job(
        step_of(status, "smoke")["outputs"]["jobName"], namespace
    )
    assert job.metadata.owner_references[0].name == "switch"
    assert job.status.succeeded == 1

    assert kubectl_failover(["failback", "switch", "-n", namespace, "--reason", "back"]) == 0
    status = wait_state(k8s_api, namespace, "switch", "Monitoring")
    assert status["activeSite"] == "primary"
    back = status["lastTransition"]
    assert back["kind"] == "Failback" and back["result"] == "Succeeded"
    assert [s["name"] for s in back["steps"]] == ["restore-dns"]
    assert record_values(route53_client, zone) == ["10.0.0.1"]
    assert [t["kind"] for t in status["history"]] == ["Failover"]
    assert "FailbackSucceeded" in reasons(k8s_api, namespace, "switch")

    primary.status(503)
    wait_for(
        "cooldown named",
        lambda: reason_of(k8s_api, namespace, "switch", "FailoverRecommended") == "InCooldown",
    )
    status = status_of(k8s_api, namespace, "switch")
    assert status["state"] == "Monitoring" and status["lastTransition"]["kind"] == "Failback"
    assert record_values(route53_client, zone) == ["10.0.0.1"]
    assert len(hook.posts()) == 1


def test_operator_killed_after_promote_resumes_without_promoting_again(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
    endpoints: Callable[[], Endpoint],
) -> None:
    primary, standby = pg_standby
    hold = endpoints()
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)
    make_plan(
        k8s_api,
        namespace,
        "resume",
        {
            "mode": "Automatic",
            "primary": site(
                "eu", [{"name": "db", "postgres": {**pg_target(primary), "writable": True}}]
            ),
            "secondary": site("us", [{"name": "db", "postgres": pg_target(standby)}]),
            "steps": [
                {
                    "name": "promote",
                    "timeoutSeconds": 30,
                    "postgresPromote": {
                        "target": pg_target(standby),
                        "fencePrimary": pg_target(primary),
                    },
                },
                hook_step("hold", hold, timeout=60),
                dns_step(moto, zone),
            ],
        },
    )
    wait_for(
        "primary healthy",
        lambda: reason_of(k8s_api, namespace, "resume", "FailoverRecommended") == "PrimaryHealthy",
    )
    hold.gate.clear()
    primary.stop_hard()
    wait_for("hold step called", lambda: len(hold.requests) == 1)
    status = status_of(k8s_api, namespace, "resume")
    promoted = step_of(status, "promote")
    assert promoted["state"] == "Succeeded" and promoted["attempts"] == 1
    assert step_of(status, "hold")["state"] == "Running"
    assert is_writable(standby)

    aegis_operator.stop()  # the operator dies while the webhook is in flight
    hold.gate.set()
    wait_for("the abandoned call answered", lambda: hold.answered == 1)
    # Its thread now gets the answer and tries to record it: the halted tick writes nothing.
    # Nothing positive to wait for here, so give that thread a moment before looking.
    time.sleep(0.5)
    frozen = status_of(k8s_api, namespace, "resume")
    assert frozen["state"] == "FailingOver" and step_of(frozen, "hold")["state"] == "Running"
    assert step_of(frozen, "dns")["state"] == "Pending"
    assert record_values(route53_client, zone) == ["10.0.0.1"]

    aegis_operator.start()
    status = wait_state(k8s_api, namespace, "resume", "FailedOver")
    after = step_of(status, "promote")
    assert after["attempts"] == 1 and after["startTime"] == promoted["startTime"]
    assert after["completionTime"] == promoted["completionTime"]
    resumed = step_of(status, "hold")
    assert resumed["state"] == "Succeeded" and resumed["attempts"] == 2
    assert step_of(status, "dns")["state"] == "Succeeded"
    assert step_of(status, "dns")["attempts"] == 1
    assert record_values(route53_client, zone) == ["10.0.0.2"]
    # the webhook was re-sent once, with the same idempotency key
    keys = [r["headers"].get("Idempotency-Key") for r in hold.posts()]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert status["lastTransition"]["result"] == "Succeeded"
    with standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def test_kubectl_failover_errors_are_clear(
    aegis_operator: OperatorHandle,
    k8s_api: Any,
    namespace: str,
    endpoints: Callable[[], Endpoint],
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, secondary, hook = endpoints(), endpoints(), endpoints()
    assert kubectl_failover(["status", "missing", "-n", namespace]) == 1
    assert "FailoverPlan " + namespace + "/missing not found" in capsys.readouterr().err
    make_plan(
        k8s_api,
        namespace,
        "idle",
        {
            "primary": site("eu", [http_check(primary)]),
            "secondary": site("us", [http_check(secondary)]),
            "steps": [hook_step("notify", hook)],
        },
    )
    assert kubectl_failover(["approve", "idle", "-n", namespace]) == 1
    assert "nothing to approve" in capsys.readouterr().err
    assert "dr.aegis.dev/approve" not in annotations_of(k8s_api, namespace, "idle")
    assert kubectl_failover(["status", "idle", "-n", namespace]) == 0
    assert "last transition: none" in capsys.readouterr().out
