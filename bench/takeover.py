"""Takeover benchmark (issue 13 point 6): two operator replicas with leader election (kopf
peering, operator/aegis/k8s/peering.py) against the API emulator; the leader is stopped and
the time until the other replica probes a FailoverPlan's sites is measured.

    .venv/bin/python bench/takeover.py              # 5 kills, lifetime 15 s (chart default)
    .venv/bin/python bench/takeover.py --lifetime 5 --rounds 3
    .venv/bin/python bench/takeover.py --graceful   # SIGTERM instead of SIGKILL

Per round: the leader (the oldest replica) is sent SIGKILL (a lost node: no goodbye, its
keep-alive record must run out) or SIGTERM (a rollout or a drain: kopf removes its record on
exit). Takeover = from the signal to the first health-check request the plan's probes send
to an HTTP endpoint of this script after it (only the new leader can send it: the old one is
dead). The plan's sites are probed every second, so the figure includes up to 1 s of probe
period. A replacement replica is started after each round (it is the youngest: it never
preempts the leader). Bound: lifetime + probe period + the new leader's relist.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from aegis.k8s import peering  # noqa: E402
from aegis.sandbox.apiserver import ApiServer  # noqa: E402
from aegis.sandbox.pytest_fixtures import make_api  # noqa: E402

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"
PEERING = "aegis"


class Probes:
    """An HTTP health endpoint that records when it was asked."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()
        probes = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with probes.lock:
                    probes.times.append(time.monotonic())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def first_after(self, moment: float) -> float | None:
        with self.lock:
            return next((t for t in self.times if t > moment), None)


def plan(url: str) -> dict[str, Any]:
    def site(name: str) -> dict[str, Any]:
        return {"name": name, "checks": [{"name": "http", "http": {"url": url}}],
                "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 3,
                "successThreshold": 1}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverPlan",
            "metadata": {"name": "takeover"},
            "spec": {"mode": "Manual", "primary": site("eu"), "secondary": site("us"),
                     "steps": [{"name": "hook", "webhook": {"url": url}}]}}


def wait(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lifetime", type=int, default=15, help="AEGIS_PEERING_LIFETIME")
    parser.add_argument("--graceful", action="store_true", help="SIGTERM, not SIGKILL")
    args = parser.parse_args()

    from kubernetes import client

    work = Path(tempfile.mkdtemp(prefix="aegis-takeover-"))
    server = ApiServer(crd_dir=ROOT / "crds").start()
    server.write_kubeconfig(work / "kubeconfig")
    api = make_api(work / "kubeconfig", server)
    custom = client.CustomObjectsApi(api)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
    probes = Probes()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),
           "KUBECONFIG": str(work / "kubeconfig"), "AEGIS_PEERING": PEERING,
           "AEGIS_PEERING_LIFETIME": str(args.lifetime), "AEGIS_METRICS_PORT": "0",
           "AEGIS_HEALTH_PORT": "0", "AEGIS_LOG_FORMAT": "text",
           "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true"}
    replicas: list[tuple[str, subprocess.Popen[bytes]]] = []
    counter = iter(range(1000))

    def records() -> dict[str, Any]:
        try:
            obj = custom.get_cluster_custom_object(peering.PEERING_GROUP, peering.PEERING_VERSION,
                                                   peering.PEERING_PLURAL, PEERING)
        except client.ApiException:
            return {}
        found: dict[str, Any] = obj.get("status") or {}
        return found

    def start() -> None:
        name = f"replica-{next(counter)}"
        log = (work / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "aegis", "operator"],
                                env={**env, "POD_ID": name}, stdout=log,
                                stderr=subprocess.STDOUT)
        replicas.append((name, proc))
        wait(f"{name} registered", lambda: name in records())

    results: list[float] = []
    try:
        start()
        custom.create_namespaced_custom_object(GROUP, VERSION, "bench", "failoverplans",
                                               plan(probes.url))
        wait("first probe", lambda: probes.first_after(0.0))
        start()
        for round_ in range(args.rounds):
            name, leader = replicas.pop(0)  # the oldest live replica leads
            # let the follower settle into its pause (and the leader probe) first
            time.sleep(2)
            moment = time.monotonic()
            leader.send_signal(signal.SIGTERM if args.graceful else signal.SIGKILL)
            leader.wait(timeout=60)
            taken = wait("the other replica probing", lambda m=moment: probes.first_after(m),
                         timeout=args.lifetime + 60)
            results.append(taken - moment)
            print(f"round {round_ + 1}: {name} {'stopped' if args.graceful else 'killed'} → "
                  f"{replicas[0][0]} probing after {taken - moment:.2f} s", flush=True)
            start()  # the replacement pod: the youngest, a follower
    finally:
        for _, proc in replicas:
            proc.terminate()
        for _, proc in replicas:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        probes.server.shutdown()
        server.stop()
    how = "SIGTERM" if args.graceful else "SIGKILL"
    print(f"takeover after {how}, peering lifetime {args.lifetime} s, {len(results)} rounds: "
          f"median {statistics.median(results):.2f} s, max {max(results):.2f} s, "
          f"min {min(results):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
