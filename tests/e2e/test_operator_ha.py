"""The watcher survives the failure it watches (issue 13 point 6): two operator processes
elect a leader (kopf peering, aegis/k8s/peering.py) against the emulator; the leader is
SIGKILLed in the middle of a failover (real PostgreSQL primary + streaming standby, moto
Route53); the other replica takes over and finishes the transition, every finished step
done exactly once.

The replicas are real `python -m aegis operator` processes (a KopfRunner thread cannot be
SIGKILLed), running as the chart's ServiceAccount like the other e2e operators, so the peering
grants are proven by `test_rbac_least_privilege`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.e2e.helpers import OperatorIdentity, wait_for
from tests.e2e.test_failover import (  # noqa: F401  (endpoints is a fixture)
    Endpoint,
    dns_step,
    endpoints,
    hook_step,
    is_writable,
    make_plan,
    make_zone,
    pg_target,
    reason_of,
    record_values,
    secrets_for,
    site,
    status_of,
    step_of,
    wait_state,
)

from aegis.k8s import peering
from aegis.sandbox.servers import MotoServer, PostgresServer

# Short, so the test is quick: the takeover after a SIGKILL waits for this to run out.
LIFETIME = 5


@dataclass
class Replica:
    """One operator process, as one pod of the chart's Deployment (POD_ID is its identity)."""

    name: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aegis", "operator"],
                env={**self.env, "POD_ID": self.name},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no goodbye to the peers, the record must expire
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Replicas:
    k8s_api: Any
    peering_name: str
    make: Callable[[str], Replica]
    started: list[Replica] = field(default_factory=list)

    def start(self, name: str) -> Replica:
        replica = self.make(name).start()
        self.started.append(replica)
        return replica

    def records(self) -> dict[str, Any]:
        try:
            obj = client.CustomObjectsApi(self.k8s_api).get_cluster_custom_object(
                peering.PEERING_GROUP, peering.PEERING_VERSION, peering.PEERING_PLURAL,
                self.peering_name,
            )
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        records: dict[str, Any] = obj.get("status") or {}
        return records


@pytest.fixture
def replicas(
    k8s_api: Any, operator_identity: OperatorIdentity, tmp_path: Path
) -> Iterator[Replicas]:
    # The chart names the peering object after the release (its ClusterRole's name) and
    # grants `patch` on that name only.
    (role,) = [d for d in operator_identity.documents if d["kind"] == "ClusterRole"]
    name = role["metadata"]["name"]
    env = {
        **os.environ,
        "KUBECONFIG": str(operator_identity.kubeconfig),
        "AEGIS_PEERING": name,
        "AEGIS_PEERING_LIFETIME": str(LIFETIME),
        "AEGIS_AGENT_COMMAND": f"{sys.executable} -m aegis agent",
        "AEGIS_METRICS_PORT": "0",
        "AEGIS_HEALTH_PORT": "0",
        "AEGIS_LOG_FORMAT": "text",
        "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
    }
    group = Replicas(k8s_api, name, lambda n: Replica(n, env, tmp_path / f"{n}.log"))
    try:
        yield group
    finally:
        for replica in group.started:
            replica.stop()


def test_leader_killed_mid_failover_the_other_replica_finishes_it_once(
    replicas: Replicas,
    k8s_api: Any,
    namespace: str,
    moto: MotoServer,
    route53_client: Any,
    pg_standby: tuple[PostgresServer, PostgresServer],
    endpoints: Callable[[], Endpoint],  # noqa: F811
) -> None:
    primary, standby = pg_standby
    hold = endpoints()
    zone = make_zone(route53_client)
    secrets_for(k8s_api, namespace, moto, primary)

    # The oldest replica leads: start `a`, let it register, then `b`.
    leader = replicas.start("replica-a")
    wait_for("replica-a registered", lambda: "replica-a" in replicas.records(), timeout=60)
    follower = replicas.start("replica-b")
    records = wait_for("replica-b registered",
                       lambda: "replica-b" in (r := replicas.records()) and r, timeout=60)
    assert records["replica-a"]["priority"] > records["replica-b"]["priority"]
    assert records["replica-a"]["lifetime"] == LIFETIME

    make_plan(
        k8s_api,
        namespace,
        "ha",
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
        lambda: reason_of(k8s_api, namespace, "ha", "FailoverRecommended") == "PrimaryHealthy",
    )
    hold.gate.clear()
    primary.stop_hard()
    wait_for("hold step called", lambda: len(hold.requests) == 1)
    status = status_of(k8s_api, namespace, "ha")
    transition = status["lastTransition"]
    promoted = step_of(status, "promote")
    assert promoted["state"] == "Succeeded" and promoted["attempts"] == 1
    assert step_of(status, "hold")["state"] == "Running"
    assert is_writable(standby)
    # Only the leader acts: the follower starts paused and has not resumed.
    assert "Resuming operations" not in follower.output
    assert "Resuming operations" in leader.output

    killed = time.monotonic()
    leader.kill()  # in the middle of the failover: the webhook call is in flight
    hold.gate.set()  # the dead leader's call is answered into a closed socket

    # The follower takes over once the leader's record runs out, and re-sends the step that
    # was running (same idempotency key); nothing finished is done again.
    wait_for("the follower re-sends the held step", lambda: len(hold.requests) >= 2,
             timeout=LIFETIME + 60)
    takeover = time.monotonic() - killed
    status = wait_state(k8s_api, namespace, "ha", "FailedOver", timeout=60)
    assert takeover < LIFETIME + 30, f"takeover took {takeover:.1f}s"
    print(f"\ntakeover (leader SIGKILLed -> the other replica acting): {takeover:.1f}s "
          f"with a {LIFETIME}s peering lifetime")

    after = status["lastTransition"]
    assert after["startTime"] == transition["startTime"]  # the same transition, resumed
    assert after["result"] == "Succeeded"
    again = step_of(status, "promote")
    assert again["attempts"] == 1 and again["startTime"] == promoted["startTime"]
    assert again["completionTime"] == promoted["completionTime"]
    resumed = step_of(status, "hold")
    assert resumed["state"] == "Succeeded" and resumed["attempts"] == 2
    dns = step_of(status, "dns")
    assert dns["state"] == "Succeeded" and dns["attempts"] == 1
    assert record_values(route53_client, zone) == ["10.0.0.2"]
    keys = [r["headers"].get("Idempotency-Key") for r in hold.posts()]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    with standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)

    # The follower logged its takeover; the dead leader's record is cleaned up.
    assert "Resuming operations" in follower.output
    wait_for("dead leader's record removed",
             lambda: "replica-a" not in replicas.records(), timeout=30)
    assert follower.proc is not None and follower.proc.poll() is None
