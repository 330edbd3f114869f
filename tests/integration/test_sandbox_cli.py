"""`aegis sandbox up` / `down` as a user runs them: separate commands, detached processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from aegis.sandbox import processes
from aegis.sandbox.processes import TrackedProcess

EXPECTED_PROCESSES = {
    "apiserver",
    "postgres-primary",
    "postgres-standby",
    "redis",
    "moto",
    "jobrunner",
    "operator",
}


def sandbox(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != processes.PID_LOG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "aegis", "sandbox", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pid_running(tracked: TrackedProcess) -> bool:
    """The very process (same pid and start time) exists in /proc and is not a zombie."""
    try:
        raw = Path(f"/proc/{tracked.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and int(fields[19]) == tracked.start_ticks


def tracked_from_state(state: dict[str, Any]) -> list[TrackedProcess]:
    return [TrackedProcess.from_json(json.dumps(raw)) for raw in state["processes"].values()]


def test_up_then_down_leaves_nothing_running(tmp_path: Path) -> None:
    sandbox_dir = tmp_path / "sbx"
    started = sandbox("up", "--dir", str(sandbox_dir))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"export KUBECONFIG={sandbox_dir / 'kubeconfig'}" in started.stdout
        state_file = sandbox_dir / "state.json"
        # It holds the throwaway servers' passwords.
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = json.loads(state_file.read_text())
        assert set(state["processes"]) == EXPECTED_PROCESSES
        tracked = tracked_from_state(state)
        # The command has exited; what it started still runs, detached.
        assert all(pid_running(t) for t in tracked), [t.name for t in tracked]
        assert state["api_url"].startswith("http://127.0.0.1:")

        # The real kubectl reaches the emulator with the kubeconfig it wrote.
        kubectl = subprocess.run(
            ["kubectl", "get", "namespaces", "-o", "name"],
            env={**os.environ, "KUBECONFIG": state["kubeconfig"]},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert kubectl.returncode == 0, kubectl.stderr
        assert "namespace/default" in kubectl.stdout.split()

        # `up` again is harmless: the same processes, nothing new.
        again = sandbox("up", "--dir", str(sandbox_dir))
        assert again.returncode == 0 and "already up" in again.stdout
        assert json.loads(state_file.read_text())["processes"] == state["processes"]
    finally:
        stopped = sandbox("down", "--dir", str(sandbox_dir))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "is down" in stopped.stdout
    # Neither the processes nor anything in their process groups or below them runs.
    assert [t.name for t in tracked if pid_running(t)] == []
    assert processes.alive(tracked) == []
    assert not any(Path(d).exists() for d in state["temp_dirs"]), state["temp_dirs"]
    assert not state_file.exists()
    assert (sandbox_dir / "logs" / "operator.log").exists()

    # Down twice (and down with nothing ever started) is fine.
    twice = sandbox("down", "--dir", str(sandbox_dir))
    assert twice.returncode == 0 and "no sandbox runs" in twice.stdout
    never = sandbox("down", "--dir", str(tmp_path / "never-up"))
    assert never.returncode == 0 and "no sandbox runs" in never.stdout


def test_status_without_a_sandbox_says_how_to_start_one(tmp_path: Path) -> None:
    result = sandbox("status", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "aegis sandbox up" in result.stdout
