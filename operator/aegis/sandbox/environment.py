"""The local no-cluster environment behind `aegis sandbox up | down | status` (the command line
is :mod:`aegis.sandbox.cli`, the demo :mod:`aegis.sandbox.demo`).

``up`` starts, as detached processes that outlive the command (each in its own session, so
that ``down`` can stop its whole process group), the Kubernetes API emulator, a PostgreSQL
primary with a streaming standby, a redis-server, a moto server (S3 + Route53), the Job runner
and the operator. Everything listens on 127.0.0.1. What runs, where, and the throwaway
servers' credentials go to ``<dir>/state.json`` (mode 0600); every process is also appended to
``<dir>/pids.jsonl`` (the :mod:`aegis.sandbox.processes` pid log), which also catches what
those processes start themselves (Job processes, PostgreSQL tools).

``down`` stops everything recorded (SIGTERM, or the server's own shutdown signal, then SIGKILL
after a grace period) and removes the servers' temp data dirs. Logs stay in ``<dir>/logs``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.sandbox import processes
from aegis.sandbox.processes import TrackedProcess

DEFAULT_DIR = Path(".sandbox")
STATE_FILE = "state.json"
PID_LOG = "pids.jsonl"
STATE_VERSION = 1
LOCALHOST = "127.0.0.1"
DEMO_DATABASE = "orders"
REDIS_USER = "aegis-backup"
STOP_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0

# How each process wants to be stopped. PostgreSQL: SIGQUIT is an immediate shutdown, right
# for throwaway data; SIGTERM would be a "smart" shutdown that waits for every client.
STOP_SIGNALS: dict[str, signal.Signals] = {
    "postgres-primary": signal.SIGQUIT,
    "postgres-standby": signal.SIGQUIT,
}
# Stopped first to last: clients before the servers they talk to, the standby before its primary.
STOP_ORDER = (
    "operator",
    "jobrunner",
    "apiserver",
    "postgres-standby",
    "postgres-primary",
    "redis",
    "moto",
)


class SandboxError(RuntimeError):
    """Something the user can act on; the message says what."""


@dataclass
class SandboxState:
    """What ``up`` started; written to ``<dir>/state.json``."""

    dir: str
    kubeconfig: str
    api_url: str
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    temp_dirs: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    postgres: dict[str, Any] = field(default_factory=dict)
    redis: dict[str, Any] = field(default_factory=dict)
    moto: dict[str, Any] = field(default_factory=dict)
    operator: dict[str, Any] = field(default_factory=dict)
    version: int = STATE_VERSION

    def tracked(self) -> dict[str, TrackedProcess]:
        return {
            name: TrackedProcess.from_json(json.dumps(raw)) for name, raw in self.processes.items()
        }

    def save(self, path: Path) -> None:
        # Holds the throwaway servers' passwords: readable by the owner only.
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SandboxState | None:
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError) as error:
            raise SandboxError(
                f"{path} is not a sandbox state file ({error}); remove it and run "
                "`aegis sandbox down` again"
            ) from None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def state_path(sandbox_dir: Path) -> Path:
    return sandbox_dir / STATE_FILE


def pid_log_path(sandbox_dir: Path) -> Path:
    return sandbox_dir / PID_LOG


def running(sandbox_dir: Path) -> tuple[SandboxState | None, list[str], list[str]]:
    """The state, the recorded processes that run, and those that do not."""
    state = SandboxState.load(state_path(sandbox_dir))
    if state is None:
        return None, [], []
    tracked = state.tracked()
    live = {t.name for t in processes.alive(list(tracked.values()))}
    names = [n for n in tracked if n in live]
    return state, names, [n for n in tracked if n not in names]


# --------------------------------------------------------------------------- up


def _record(state: SandboxState, name: str, tracked: TrackedProcess | None) -> None:
    if tracked is None:
        raise SandboxError(f"{name} did not start")
    # The state's name is the role ("postgres-standby"), the tracked name the program.
    state.processes[name] = {**asdict(tracked), "name": name}


def _spawn_logged(
    argv: Sequence[str], name: str, log_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], TrackedProcess]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return processes.spawn(argv, name=name, stdout=log, env=env)


def _wait(
    what: str, ready: Callable[[], Any], proc: subprocess.Popen[bytes], log_path: Path
) -> Any:
    """Poll ``ready()`` until truthy; fail with the log's tail if the process exits."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        result = ready()
        if result:
            return result
        if proc.poll() is not None or time.monotonic() >= deadline:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            state = "exited" if proc.poll() is not None else "is not ready"
            raise SandboxError(f"{what} {state}; log {log_path}:\n{tail}")
        time.sleep(0.05)


def _log_says(log_path: Path, text: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return text in log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    return ready


def _first_url(log_path: Path) -> str | None:
    """The emulator's plain-http URL (it prints its https URL, the kubeconfig's, first): the
    demo's HTTP checks use its anonymous /healthz, which needs no trust in the emulator's CA."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    return next((line.strip() for line in lines if line.startswith("http://")), None)


def _write_crds(target: Path) -> Path:
    from aegis.api import crdgen

    target.mkdir(parents=True, exist_ok=True)
    for name, text in crdgen.rendered().items():
        (target / name).write_text(text, encoding="utf-8")
    return target


def _start_apiserver(state: SandboxState, sandbox_dir: Path, env: dict[str, str]) -> None:
    log_path = sandbox_dir / "logs" / "apiserver.log"
    log_path.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "aegis.sandbox.apiserver",
        "--host", LOCALHOST, "--port", "0",
        "--crds", str(_write_crds(sandbox_dir / "crds")),
        "--kubeconfig", state.kubeconfig,
    ]  # fmt: skip
    proc, tracked = _spawn_logged(argv, "apiserver", log_path, env)
    _record(state, "apiserver", tracked)
    # The emulator prints its URL once it serves (after writing the kubeconfig).
    state.api_url = _wait("the API emulator", lambda: _first_url(log_path), proc, log_path)
    state.logs["apiserver"] = str(log_path)


def _start_postgres(state: SandboxState) -> None:
    from aegis.sandbox.servers import PostgresServer

    primary = PostgresServer.start(password=secrets.token_urlsafe(18))
    state.temp_dirs.append(str(primary.base_dir))
    _record(state, "postgres-primary", primary.tracked)
    with primary.connect() as conn:
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    # After the database exists, so that pg_basebackup copies it.
    standby = primary.start_standby()
    state.temp_dirs.append(str(standby.base_dir))
    _record(state, "postgres-standby", standby.tracked)
    state.postgres = {
        "host": primary.host,
        "port": primary.port,
        "standby_port": standby.port,
        "user": primary.user,
        "password": primary.password,
        "database": DEMO_DATABASE,
    }
    state.logs["postgres-primary"] = str(primary.log_path)
    state.logs["postgres-standby"] = str(standby.log_path)


def _start_redis(state: SandboxState) -> None:
    from aegis.sandbox.servers import RedisServer

    server = RedisServer.start(password=secrets.token_urlsafe(18))
    state.temp_dirs.append(str(server.base_dir))
    _record(state, "redis", server.tracked)
    user_password = secrets.token_urlsafe(18)
    with server.client() as client:
        # A named ACL user, as the example's Secret expects; a SYNC snapshot needs @all here.
        client.execute_command(
            "ACL", "SETUSER", REDIS_USER, "on", f">{user_password}", "~*", "&*", "+@all"
        )
        client.set("cart:1001", json.dumps({"sku": "A-17", "qty": 2}))
        client.set("ratelimit:api:203.0.113.7", 12)
    state.redis = {
        "host": server.host,
        "port": server.port,
        "username": REDIS_USER,
        "password": user_password,
    }
    state.logs["redis"] = str(server.log_path)


def _start_moto(state: SandboxState) -> None:
    from aegis.sandbox.servers import MotoServer

    server = MotoServer.start()
    state.temp_dirs.append(str(server.base_dir))
    _record(state, "moto", server.tracked)
    state.moto = {"endpoint": server.endpoint, **server.aws_env()}
    state.logs["moto"] = str(server.log_path)


def _start_jobrunner(state: SandboxState, sandbox_dir: Path, env: dict[str, str]) -> None:
    log_path = sandbox_dir / "logs" / "jobrunner.log"
    jobs_dir = sandbox_dir / "logs" / "jobs"
    argv = [
        sys.executable, "-m", "aegis.sandbox.jobrunner",
        "--kubeconfig", state.kubeconfig, "--log-dir", str(jobs_dir),
    ]  # fmt: skip
    proc, tracked = _spawn_logged(argv, "jobrunner", log_path, env)
    _record(state, "jobrunner", tracked)
    state.logs["jobrunner"] = str(log_path)
    state.logs["jobs"] = str(jobs_dir)
    _wait("the Job runner", _log_says(log_path, "running the Jobs of"), proc, log_path)


def _start_operator(state: SandboxState, sandbox_dir: Path, env: dict[str, str]) -> None:
    log_path = sandbox_dir / "logs" / "operator.log"
    operator_env = {
        **env,
        "KUBECONFIG": state.kubeconfig,
        # The Job runner runs Jobs on this machine: the agent of this installation.
        "AEGIS_AGENT_COMMAND": f"{sys.executable} -m aegis agent",
        # The operator's HTTP endpoints listen on every interface; the sandbox keeps to
        # 127.0.0.1, so they are off (the operator has no bind-address setting yet).
        "AEGIS_METRICS_PORT": "0",
        "AEGIS_HEALTH_PORT": "0",
        "AEGIS_LOG_FORMAT": "text",
        "AEGIS_CATALOG_SYNC_SECONDS": "30",
        "AEGIS_S3_ENDPOINT": state.moto["endpoint"],
        "AEGIS_KMS_ENDPOINT": state.moto["endpoint"],
        # Every server of the sandbox listens on 127.0.0.1 (docs/tenancy.md).
        "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
        # As the chart sets it (values: mallocArenaMax): fewer glibc arenas, lower peak RSS.
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
    }
    argv = [sys.executable, "-m", "aegis", "operator"]
    proc, tracked = _spawn_logged(argv, "operator", log_path, operator_env)
    _record(state, "operator", tracked)
    state.logs["operator"] = str(log_path)
    state.operator = {"log": str(log_path)}
    # kopf logs this once its watches are set up (it then handles anything applied).
    _wait(
        "the operator", _log_says(log_path, "Initial authentication has finished"), proc, log_path
    )


def up(sandbox_dir: Path, *, quiet: bool = False) -> SandboxState:
    """Start the sandbox (or return the running one); see the module docstring."""
    sandbox_dir = sandbox_dir.resolve()
    state, live, dead = running(sandbox_dir)
    if state is not None and live and not dead:
        if not quiet:
            print(f"the sandbox in {sandbox_dir} is already up")
        return state
    if state is not None:
        print(f"the sandbox in {sandbox_dir} is partly down ({', '.join(dead)}): restarting it")
        down(sandbox_dir, quiet=True)
    sandbox_dir.mkdir(parents=True, exist_ok=True)
    (sandbox_dir / "logs").mkdir(exist_ok=True)
    pid_log = pid_log_path(sandbox_dir)
    # Every process started from here on (and by those processes) lands in this log.
    os.environ[processes.PID_LOG_ENV] = str(pid_log)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    state = SandboxState(
        dir=str(sandbox_dir), kubeconfig=str(sandbox_dir / "kubeconfig"), api_url=""
    )
    started = time.monotonic()
    try:
        _start_apiserver(state, sandbox_dir, env)
        _start_postgres(state)
        _start_redis(state)
        _start_moto(state)
        _start_jobrunner(state, sandbox_dir, env)
        _start_operator(state, sandbox_dir, env)
    except BaseException:
        # Whatever started is stopped, and nothing is left half up.
        state.save(state_path(sandbox_dir))
        down(sandbox_dir, quiet=True)
        raise
    state.save(state_path(sandbox_dir))
    processes.keep_running_after_exit()
    if not quiet:
        print(f"the sandbox is up in {time.monotonic() - started:.1f}s")
        print_usage(state)
    return state


def print_usage(state: SandboxState) -> None:
    pg, redis = state.postgres, state.redis
    print(
        f"""
  Kubernetes API  {state.api_url}   (emulator; kubeconfig {state.kubeconfig})
  PostgreSQL      {pg["host"]}:{pg["port"]} (primary), :{pg["standby_port"]} (streaming standby)
  Redis           {redis["host"]}:{redis["port"]}
  S3 + Route53    {state.moto["endpoint"]}   (moto)
  credentials     {state.dir}/{STATE_FILE}
  logs            {state.logs["operator"]}  (operator)
                  {state.logs["jobs"]}/<namespace>/<job>.log  (backup Jobs)
                  {Path(state.dir) / "logs"}  (everything else)

Try:
  export KUBECONFIG={state.kubeconfig}
  kubectl get dr -A
  kubectl apply --validate=false -f examples/     # placeholders: `aegis sandbox demo` fills them
Stop it with:
  aegis sandbox down{_dir_flag(state)}"""
    )


def _dir_flag(state: SandboxState) -> str:
    default = DEFAULT_DIR.resolve()
    return "" if Path(state.dir) == default else f" --dir {state.dir}"


# --------------------------------------------------------------------------- down


def _stop_rank(name: str) -> int:
    return STOP_ORDER.index(name) if name in STOP_ORDER else len(STOP_ORDER)


def down(sandbox_dir: Path, *, quiet: bool = False) -> int:
    """Stop everything the sandbox in ``sandbox_dir`` started; returns how many were running."""
    sandbox_dir = sandbox_dir.resolve()
    state = SandboxState.load(state_path(sandbox_dir))
    named = state.tracked() if state is not None else {}
    stopped = 0
    for name in sorted(named, key=_stop_rank):
        tracked = named[name]
        if not tracked.is_alive():
            continue
        processes.terminate(
            tracked, sig=STOP_SIGNALS.get(name, signal.SIGTERM), grace=STOP_GRACE_SECONDS
        )
        stopped += 1
        if not quiet:
            print(f"stopped {name} (pid {tracked.pid})")
    # Anything else they started (Job processes, a PostgreSQL tool caught mid-run).
    logged = processes.read_pid_log(pid_log_path(sandbox_dir))
    stragglers = processes.terminate_all(logged, grace=STOP_GRACE_SECONDS / 2)
    if stragglers and not quiet:
        print(f"stopped {stragglers} more process(es) from {pid_log_path(sandbox_dir)}")
    for temp_dir in state.temp_dirs if state is not None else []:
        shutil.rmtree(temp_dir, ignore_errors=True)
    # What held this sandbox's endpoints and throwaway credentials goes with it; logs stay.
    for name in ("crds", "manifests", "manifests-invalid"):
        shutil.rmtree(sandbox_dir / name, ignore_errors=True)
    for name in (STATE_FILE, PID_LOG, "kubeconfig", "encryption-keys.json"):
        (sandbox_dir / name).unlink(missing_ok=True)
    if not quiet:
        if stopped or stragglers:
            print(f"the sandbox in {sandbox_dir} is down; its logs stay in {sandbox_dir / 'logs'}")
        else:
            print(f"no sandbox runs in {sandbox_dir}")
    return stopped + stragglers


# --------------------------------------------------------------------------- status


def status(sandbox_dir: Path) -> int:
    state, live, dead = running(sandbox_dir.resolve())
    if state is None:
        print(f"no sandbox in {sandbox_dir.resolve()}: start one with `aegis sandbox up`")
        return 1
    for name, raw in state.processes.items():
        print(f"  {name:<18} pid {raw['pid']:<8} {'running' if name in live else 'NOT RUNNING'}")
    print_usage(state)
    return 0 if not dead else 1
