"""Every process the sandbox starts, so that a teardown can prove none outlives it.

Each child is started in its own session (so its process group id equals its pid) and is
recorded here. "Alive" means: the process itself, anything still in its process group, or
any running descendant of those is not a zombie. The group catches a shell's children that
outlived the shell; descendants catch PostgreSQL backends, which each call setsid() and so
leave the postmaster's group.

When ``AEGIS_SANDBOX_PID_LOG`` names a file, every start is also appended to it as one JSON
line, so that another process (a parent pytest, ``aegis sandbox down``) can check or stop
what this one started. Liveness is read from /proc: no psutil.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

PID_LOG_ENV = "AEGIS_SANDBOX_PID_LOG"


@dataclass(frozen=True)
class TrackedProcess:
    """One child started by the sandbox."""

    pid: int
    pgid: int
    name: str
    argv: tuple[str, ...]
    started_at: float
    start_ticks: int
    """Start time of the pid in clock ticks since boot (/proc), to tell pid reuse apart."""

    def is_alive(self) -> bool:
        return bool(live_members(self))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> TrackedProcess:
        raw: dict[str, Any] = json.loads(line)
        return cls(
            pid=int(raw["pid"]),
            pgid=int(raw["pgid"]),
            name=str(raw["name"]),
            argv=tuple(str(a) for a in raw["argv"]),
            started_at=float(raw["started_at"]),
            start_ticks=int(raw["start_ticks"]),
        )


_lock = threading.Lock()
_registry: list[TrackedProcess] = []
_stop_at_exit = True


@dataclass(frozen=True)
class _ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    start_ticks: int


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 of proc(5): state; then 4 ppid, 5 pgrp, ..., 22 starttime.
    return _ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        start_ticks=int(fields[19]),
    )


def _all_stats() -> list[_ProcStat]:
    stats = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                stats.append(stat)
    return stats


def _is_running(stat: _ProcStat) -> bool:
    # Z = zombie, X = dead: the process has exited, only its table entry remains.
    return stat.state not in ("Z", "X")


def live_members(tracked: TrackedProcess, stats: Sequence[_ProcStat] | None = None) -> list[int]:
    """Pids of the tracked process, its process group and their descendants still running."""
    stats = _all_stats() if stats is None else stats
    # Anything started before the tracked process only reuses a number: it is not ours.
    candidates = [s for s in stats if _is_running(s) and s.start_ticks >= tracked.start_ticks]
    members = {
        s.pid
        for s in candidates
        if (s.pid == tracked.pid and s.start_ticks == tracked.start_ticks) or s.pgid == tracked.pgid
    }
    children: dict[int, list[int]] = {}
    for stat in candidates:
        children.setdefault(stat.ppid, []).append(stat.pid)
    pending = list(members)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in members:
                members.add(child)
                pending.append(child)
    return sorted(members)


def track(proc: subprocess.Popen[Any], name: str, argv: Sequence[str]) -> TrackedProcess:
    """Record a child started with ``start_new_session=True``."""
    stat = _read_stat(proc.pid)
    tracked = TrackedProcess(
        pid=proc.pid,
        # A session leader's group id is its pid; read it anyway in case the caller forgot.
        pgid=stat.pgid if stat is not None else proc.pid,
        name=name,
        argv=tuple(argv),
        started_at=time.time(),
        start_ticks=stat.start_ticks if stat is not None else 0,
    )
    with _lock:
        _registry.append(tracked)
    pid_log = os.environ.get(PID_LOG_ENV)
    if pid_log:
        with open(pid_log, "a", encoding="utf-8") as out:
            out.write(tracked.to_json() + "\n")
    return tracked


def spawn(
    argv: Sequence[str],
    *,
    name: str,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.STDOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    user: str | None = None,
) -> tuple[subprocess.Popen[bytes], TrackedProcess]:
    """Start ``argv`` in a new session, tracked. ``user`` switches to that OS user (root only)."""
    switch_user: dict[str, Any] = {}
    if user is not None:
        # The same as `runuser -u <user> --`, but the child is the real process, not a runuser
        # wrapper: signals reach it directly and its pid is the one we wait on.
        switch_user = {"user": user, "group": user, "extra_groups": []}
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        **switch_user,
    )
    return proc, track(proc, name, argv)


def keep_running_after_exit() -> None:
    """Let tracked processes outlive this interpreter (``aegis sandbox up`` hands them over).

    By default whatever is still running when the interpreter exits is stopped, so a crashed
    or interrupted test run leaves no servers behind.
    """
    global _stop_at_exit
    _stop_at_exit = False


@atexit.register
def _stop_leftovers_at_exit() -> None:
    if _stop_at_exit:
        terminate_all(grace=2.0)


def registered() -> list[TrackedProcess]:
    with _lock:
        return list(_registry)


def alive(candidates: Sequence[TrackedProcess] | None = None) -> list[TrackedProcess]:
    """The tracked processes (all of this process's, by default) that still run."""
    candidates = registered() if candidates is None else candidates
    stats = _all_stats()
    return [t for t in candidates if live_members(t, stats)]


def read_pid_log(path: str | Path) -> list[TrackedProcess]:
    """Processes recorded in a ``AEGIS_SANDBOX_PID_LOG`` file (missing file: none)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [TrackedProcess.from_json(line) for line in lines if line.strip()]


def _signal_group(tracked: TrackedProcess, sig: signal.Signals) -> None:
    for pid in live_members(tracked):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_gone(tracked: TrackedProcess, timeout: float) -> bool:
    """Poll until nothing of ``tracked`` runs; True if it is gone within ``timeout``."""
    deadline = time.monotonic() + timeout
    while live_members(tracked):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def terminate(
    tracked: TrackedProcess,
    *,
    sig: signal.Signals = signal.SIGTERM,
    grace: float = 5.0,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Send ``sig`` to the process group, then SIGKILL whatever is left after ``grace``.

    ``proc`` (when this process is the parent) is reaped, so no zombie stays behind.
    """
    _signal_group(tracked, sig)
    if proc is not None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if not wait_gone(tracked, grace if proc is None else 0.5):
        _signal_group(tracked, signal.SIGKILL)
        if proc is not None:
            proc.wait()
        wait_gone(tracked, 5.0)


def terminate_all(candidates: Sequence[TrackedProcess] | None = None, grace: float = 5.0) -> int:
    """Stop every still-running tracked process; returns how many had to be stopped."""
    leftovers = alive(candidates)
    for tracked in leftovers:
        terminate(tracked, grace=grace)
    return len(leftovers)
