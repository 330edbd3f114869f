"""The FailoverPlan tick through in-memory ports: a cluster in dicts, a prober that returns
what each test scripts, and an explicit clock. Status is written on a change of health,
state or lag band, plus a heartbeat; metrics follow every probe; a failover runs its steps
(a webhook to a real loopback server) and settles the plan."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from prometheus_client import REGISTRY
from tests.unit.cluster_memory import MemoryCluster, custom

from aegis.api.failoverplan import Site
from aegis.labels import FAILOVER_ANNOTATION
from aegis.probes.base import CheckResult
from aegis.probes.prober import ProbeContext, SiteProbe
from aegis.reconcilers import failoverplan as plans
from aegis.settings import Settings

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NS = "shop"


class ScriptedProber:
    """SiteProber: each site's checks pass unless the test says the site is down."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.down: set[str] = set()
        self.probes = 0

    def probe_sites(self, sites: Mapping[str, Site], ctx: ProbeContext) -> dict[str, SiteProbe]:
        out = {}
        for key, site in sites.items():
            self.probes += 1
            ok = key not in self.down
            results = tuple(
                CheckResult(c.name, ok, 1.5, "ok" if ok else "connection refused")
                for c in site.checks
            )
            out[key] = SiteProbe(site.name, self.clock(), results)
        return out

    def close(self) -> None:
        pass


class ManualClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Hook(BaseHTTPRequestHandler):
    calls: list[str]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).calls.append(self.rfile.read(length).decode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[str]]]:
    calls: list[str] = []
    handler = type("RecordingHook", (Hook,), {"calls": calls})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", calls
    server.shutdown()
    server.server_close()


def a_plan(url: str = "http://127.0.0.1:9/hook", **extra: Any) -> dict[str, Any]:
    check = [{"name": "api", "tcp": {"host": "127.0.0.1", "port": 9}}]
    spec = {
        "mode": "Manual",
        "primary": {"name": "eu", "checks": check, "periodSeconds": 1, "failureThreshold": 2},
        "secondary": {"name": "us", "checks": check, "periodSeconds": 1},
        "steps": [{"name": "notify", "webhook": {"url": url}}],
        **extra,
    }
    return custom("FailoverPlan", "orders", spec)


class World:
    def __init__(self, plan: dict[str, Any], heartbeat: int = 60) -> None:
        self.cluster = MemoryCluster()
        self.cluster.add(plan)
        self.clock = ManualClock()
        self.prober = ScriptedProber(self.clock)
        settings = Settings(
            allow_loopback_endpoints=True, failover_status_heartbeat_seconds=heartbeat
        )
        self.runtime = plans.FailoverRuntime(
            self.cluster, lambda step, credentials: None, settings, clock=self.clock,
            prober=self.prober,
        )

    def tick(self, after: float = 1.0) -> float | None:
        self.clock.advance(after)
        return plans.tick(NS, "orders", self.runtime)

    @property
    def writes(self) -> int:
        return self.cluster.status_writes.get(("FailoverPlan", "orders"), 0)

    @property
    def status(self) -> dict[str, Any]:
        return self.cluster.status_of("FailoverPlan", "orders")

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def world() -> Iterator[World]:
    w = World(a_plan())
    yield w
    w.close()


def latency_count(site: str) -> float:
    value = REGISTRY.get_sample_value(
        "aegis_probe_latency_seconds_count",
        {"namespace": NS, "plan": "orders", "site": site},
    )
    return value or 0.0


def test_steady_probes_write_status_only_on_a_change_and_on_the_heartbeat(world: World) -> None:
    world.tick(0)
    assert world.writes == 1 and world.status["state"] == "Monitoring"
    assert world.status["sites"]["primary"]["healthy"] is True
    world.tick()  # the second success confirms the recovery: written
    assert world.writes == 2
    observed = latency_count("primary")
    for _ in range(20):
        world.tick()
    assert world.writes == 2, "a probe that changes nothing that matters is not written"
    assert world.prober.probes == 44
    assert latency_count("primary") == observed + 20, "metrics follow every probe"
    world.tick(40)  # a minute since the last write: the heartbeat
    assert world.writes == 3
    # The heartbeat carries the counts kept in memory meanwhile.
    assert world.status["sites"]["primary"]["consecutiveSuccesses"] == 23
    assert world.status["sites"]["primary"]["lastProbeTime"] == "2026-12-01T12:01:01Z"


def test_a_failing_site_is_written_at_every_failure_until_it_is_down(world: World) -> None:
    world.tick(0)
    world.tick()
    writes = world.writes
    world.prober.down.add("primary")
    world.tick()
    assert world.writes == writes + 1
    assert world.status["sites"]["primary"]["consecutiveFailures"] == 1
    world.tick()  # the threshold (2): the site is down, a failover is recommended
    primary = world.status["sites"]["primary"]
    assert primary["healthy"] is False and primary["downSince"] == "2026-12-01T12:00:02Z"
    assert world.status["state"] == "AwaitingApproval"
    assert "FailoverRecommended" in world.cluster.reasons("orders")
    writes = world.writes
    world.tick()
    world.tick()
    assert world.writes == writes, "a site that stays down is not written again"


def test_status_written_by_someone_else_is_the_next_start(world: World) -> None:
    world.tick(0)
    world.tick()
    world.tick()
    world.tick()
    world.status["sites"]["primary"]["consecutiveSuccesses"] = 100  # another writer
    world.tick()
    world.tick(60)
    assert world.status["sites"]["primary"]["consecutiveSuccesses"] == 102


def test_a_deleted_plan_ends_its_loop(world: World) -> None:
    world.tick(0)
    world.cluster.objects.pop(("FailoverPlan", "orders"))
    assert world.tick() is None
    assert ("shop", "orders") not in world.runtime.unsaved


def test_a_manual_failover_runs_its_steps_and_settles_the_plan(
    webhook: tuple[str, list[str]],
) -> None:
    url, calls = webhook
    world = World(a_plan(url))
    try:
        world.tick(0)
        plan = world.cluster.objects[("FailoverPlan", "orders")]
        plan["metadata"]["annotations"] = {FAILOVER_ANNOTATION: "drill"}
        world.tick()
        status = world.status
        assert status["state"] == "FailedOver" and status["activeSite"] == "secondary"
        last = status["lastTransition"]
        assert last["kind"] == "Failover" and last["result"] == "Succeeded"
        assert [s["state"] for s in last["steps"]] == ["Succeeded"]
        assert len(calls) == 1
        assert FAILOVER_ANNOTATION not in plan["metadata"]["annotations"]  # consumed
        assert "FailoverSucceeded" in world.cluster.reasons("orders")
    finally:
        world.close()


def test_the_lag_band_is_the_order_of_magnitude_and_the_limit() -> None:
    assert plans.lag_band(None, 100) is None
    assert plans.lag_band(0, 100) == (False, 0)
    assert plans.lag_band(9, 100) == (False, 1)
    assert plans.lag_band(10, 100) == (False, 2)
    assert plans.lag_band(99, 100) == plans.lag_band(50, 100)
    assert plans.lag_band(101, 100) == (True, 3)
