"""Leader election of operator replicas (kopf peering, aegis/k8s/peering.py) against the
emulator, with real `python -m aegis operator` processes: the oldest replica leads, a newer
one (a rollout's new pod) never preempts it, a graceful exit hands over at once to the next
oldest; without kopf's peering CRD a replica exits with the fix instead of waiting paused
forever (pods that look Ready and do nothing). The SIGKILL mid-failover case is
tests/e2e/test_operator_ha.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from aegis.k8s import peering
from aegis.sandbox.apiserver import ApiServer
from aegis.sandbox.pytest_fixtures import make_api

ROOT = Path(__file__).resolve().parents[2]
RESUMED = "Resuming operations"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def emulator(tmp_path: Path, crds: Path) -> Iterator[tuple[ApiServer, Path]]:
    server = ApiServer(crd_dir=crds).start()
    try:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        yield server, tmp_path / "kubeconfig"
    finally:
        server.stop()


def operator_env(kubeconfig: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "AEGIS_PEERING": "aegis",
            "AEGIS_METRICS_PORT": "0", "AEGIS_HEALTH_PORT": "0", "AEGIS_LOG_FORMAT": "text",
            **extra}


@pytest.fixture
def emulator_without_peering_crd(tmp_path: Path) -> Iterator[Path]:
    crds = tmp_path / "crds"
    crds.mkdir()
    for path in (ROOT / "crds").glob("*.dr.aegis.dev.yaml"):
        shutil.copy(path, crds)
    with emulator(tmp_path, crds) as (_, kubeconfig):
        yield kubeconfig


def test_missing_peering_crd_stops_the_replica_with_the_fix(
    emulator_without_peering_crd: Path,
) -> None:
    result = subprocess.run([sys.executable, "-m", "aegis", "operator"],
                            env=operator_env(emulator_without_peering_crd),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "failed permanently: leader election needs the CRD clusterkopfpeerings.kopf.dev" in out
    assert "apply crds/clusterkopfpeerings.kopf.dev.yaml" in out


def test_a_new_replica_never_preempts_the_leader_and_a_graceful_exit_hands_over(
    tmp_path: Path,
) -> None:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with emulator(tmp_path, ROOT / "crds") as (server, kubeconfig):
        custom = client.CustomObjectsApi(make_api(kubeconfig, server))

        def records() -> dict[str, Any]:
            try:
                obj = custom.get_cluster_custom_object(
                    peering.PEERING_GROUP, peering.PEERING_VERSION, peering.PEERING_PLURAL,
                    "aegis")
            except client.ApiException:
                return {}
            found: dict[str, Any] = obj.get("status") or {}
            return found

        def log(name: str) -> str:
            return (tmp_path / f"{name}.log").read_text(errors="replace")

        def start(name: str, lifetime: int, health_port: int = 0) -> None:
            with (tmp_path / f"{name}.log").open("ab") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "aegis", "operator"],
                    env=operator_env(kubeconfig, POD_ID=name,
                                     AEGIS_PEERING_LIFETIME=str(lifetime),
                                     AEGIS_HEALTH_PORT=str(health_port),
                                     AEGIS_METRICS_ADDRESS="127.0.0.1"),
                    stdout=out, stderr=subprocess.STDOUT)
            wait_for(f"{name} registered", lambda: name in records())

        try:
            # a's record would outlive it by 5 s or more (keep-alives 20-25 s apart), so a
            # handover within that proves a removed it on exit; b and c renew every second.
            start("a", lifetime=30)
            wait_for("a leads", lambda: RESUMED in log("a"))
            health = free_port()
            start("b", lifetime=3, health_port=health)
            start("c", lifetime=3)  # a rollout's new pod
            # c has renewed its keep-alive (and so re-read the peers) twice and stayed
            # paused, like b: only the oldest acts.
            for _ in range(2):
                seen = records()["c"]["lastseen"]
                wait_for("c renews its keep-alive", lambda s=seen: records()["c"]["lastseen"] != s)
            assert RESUMED not in log("b") and RESUMED not in log("c")
            # A paused replica is Ready (its /healthz answers): a rollout with
            # maxUnavailable 0 waits for the new pod's readiness, which must not need leading.
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as rsp:
                assert rsp.status == 200
            priorities = {n: r["priority"] for n, r in records().items()}
            assert priorities["a"] > priorities["b"] > priorities["c"]

            stopped = time.monotonic()
            procs["a"].terminate()  # a drain or a rollout: graceful
            procs["a"].wait(timeout=30)
            exited = time.monotonic()
            assert "a" not in records()  # removed on exit, not left to expire
            wait_for("b takes over", lambda: RESUMED in log("b"), timeout=10)
            handover = time.monotonic() - exited
            assert handover < 4, f"b took over {handover:.1f}s after a exited"
            print(f"\ngraceful handover: {time.monotonic() - stopped:.2f}s after SIGTERM")
            assert RESUMED not in log("c")
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
