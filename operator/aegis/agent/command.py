"""The `command` source: any database whose tool dumps to stdout and restores from stdin.

Design: the agent runs the user's command as a child process in its own container (the Job's
image must hold the agent and the tool, e.g. an image built `FROM` the agent's with
`mariadb-client` added). One process reads the dump's stdout through the same pipeline as
pg_dump's, so there is no second container, no FIFO on a shared volume and no way for the
two halves to disagree about when the dump ended: the child's exit status is read directly,
and a dump that exits non-zero (or writes nothing) fails the backup before a manifest exists.

The commands get a small, explicit environment: PATH, HOME, LANG, LC_ALL, TZ and TMPDIR of
the agent, plus the variables the spec names, whose values the Job carries from Secrets as
`AEGIS_CMDENV_<name>`. Nothing else reaches them: not the bucket's credentials, not the
encryption keys. Every value is registered with the scrubber, so a tool that prints its
password on stderr does not put it into a reason, a log line or a status.

Restore: the emptyCheck runs first (a non-empty target is refused without allowOverwrite, and
with neither an emptyCheck nor allowOverwrite the restore is refused: emptiness cannot be
assumed); then the whole payload is downloaded, hashed and authenticated without touching the
target; only then does the restore command start, fed by a second pass that authenticates
every chunk again. Check commands run afterwards with the same environment.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegis.agent.checks import Check
from aegis.agent.config import (
    COMMAND_ENV_PREFIX,
    CommandSourceConfig,
    CommandTargetConfig,
    RestoreConfig,
)
from aegis.agent.errors import AgentError
from aegis.agent.log import log
from aegis.agent.manifest import SourceRecord
from aegis.agent.procs import Child, StdinFeed, widen_pipe
from aegis.agent.scrub import SCRUBBER, scrub

if TYPE_CHECKING:
    from aegis.agent.restore import Restoring

PAYLOAD_FORMAT = "command-stdout"
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
STOPPED = "the restore command was stopped and may have applied part of the dump"
IMAGE_HINT = "the Job's image must contain it: use an image with the agent plus your tools"


def command_env(names: list[str], env: dict[str, str]) -> dict[str, str]:
    """The child's environment: a few basics of the agent's plus the named variables."""
    child = {k: env[k] for k in PASSED_THROUGH if k in env}
    missing = []
    for name in names:
        value = env.get(f"{COMMAND_ENV_PREFIX}{name}")
        if value is None:
            missing.append(name)
            continue
        if value:
            SCRUBBER.add(value)
        child[name] = value
    if missing:
        raise AgentError(
            f"command env: {', '.join(missing)} not set (the Job passes each as "
            f"{COMMAND_ENV_PREFIX}<name> from its Secret)",
            kind="InvalidConfig",
        )
    return child


def describe(argv: list[str]) -> str:
    """The command for messages: its program name only (arguments may be long)."""
    return argv[0].rsplit("/", 1)[-1]


def start_child(
    argv: list[str], env: dict[str, str], what: str, stdin: int | None, stdout: int | None
) -> Child:
    try:
        return Child(argv, env, stdin=stdin, stdout=stdout)
    except FileNotFoundError:
        raise AgentError(
            f"{what} command {argv[0]!r} was not found; {IMAGE_HINT}", kind="CommandNotFound"
        ) from None
    except PermissionError:
        raise AgentError(
            f"{what} command {argv[0]!r} is not executable; {IMAGE_HINT}",
            kind="CommandNotFound",
        ) from None


def run_capture(
    argv: list[str], env: dict[str, str], what: str, timeout: float
) -> tuple[int, str, str]:
    """Run a short command to its end: (exit status, stdout, stderr tail), all scrubbed."""
    try:
        done = subprocess.run(  # the user's own command, as an argument vector
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise AgentError(
            f"{what} command {argv[0]!r} was not found; {IMAGE_HINT}", kind="CommandNotFound"
        ) from None
    except subprocess.TimeoutExpired:
        raise AgentError(
            f"{what} command {describe(argv)} did not finish within {timeout:.0f}s",
            kind="CommandTimedOut",
        ) from None
    stderr = " | ".join(
        line.strip() for line in done.stderr.decode(errors="replace").splitlines()[-3:]
    )
    return done.returncode, scrub(done.stdout.decode(errors="replace")), scrub(stderr)


# --- backup ----------------------------------------------------------------------------------


@dataclass
class CommandDump:
    """The backup.Source of a dump command: its stdout is the payload."""

    cfg: CommandSourceConfig
    env: dict[str, str]
    read_size: int = 1 << 20
    child: Child | None = None
    dumped: int = 0
    _argv: list[str] = field(default_factory=list)

    def start(self) -> None:
        child_env = command_env(self.cfg.env, self.env)
        self._argv = list(self.cfg.dump)
        log(f"dumping with {describe(self._argv)} (command source)")
        self.child = start_child(
            self._argv, child_env, "dump", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        widen_pipe(self.child.proc.stdout)

    def chunks(self) -> Iterator[bytes]:
        assert self.child is not None and self.child.proc.stdout is not None
        stdout = self.child.proc.stdout
        while True:
            data = stdout.read(self.read_size)
            if not data:
                return
            self.dumped += len(data)
            yield data

    def finish(self) -> SourceRecord:
        assert self.child is not None
        if self.child.wait() != 0:
            raise AgentError(self.child.failure("failed"), kind="DumpFailed")
        if self.dumped == 0:
            raise AgentError(
                f"{self.child.name} exited 0 but wrote nothing to stdout: the dump command "
                "must write the backup to stdout",
                kind="DumpFailed",
            )
        return SourceRecord(
            kind="Command",
            database=self.cfg.database,
            method="command",
            command=[scrub(arg) for arg in self._argv],
        )

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()


# --- restore ---------------------------------------------------------------------------------


def target_objects(target: CommandTargetConfig, child_env: dict[str, str]) -> int:
    """What the emptyCheck counts in the target: the integer on its last stdout line."""
    assert target.empty_check is not None
    code, out, err = run_capture(
        target.empty_check, child_env, "emptyCheck", target.timeout_seconds
    )
    name = describe(target.empty_check)
    if code != 0:
        raise AgentError(
            f"emptyCheck {name} exited {code}: {err or 'no error output'}; the target was "
            "not touched",
            kind="TargetCheckFailed",
        )
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    try:
        return int(lines[-1])
    except (IndexError, ValueError):
        shown = lines[-1][:80] if lines else "nothing"
        raise AgentError(
            f"emptyCheck {name} printed {shown!r}; it must print the number of objects in "
            "the target (0 when empty) on its last line; the target was not touched",
            kind="TargetCheckFailed",
        ) from None


def check_target_empty(
    cfg: RestoreConfig, target: CommandTargetConfig, env: dict[str, str]
) -> None:
    if target.empty_check is None:
        if cfg.allow_overwrite:
            log("no emptyCheck: restoring with allowOverwrite, whatever the target holds")
            return
        raise AgentError(
            "the command target has no emptyCheck, so its emptiness cannot be proven: set "
            "target.command.emptyCheck (or the policy's source.command.emptyCheck) to a "
            "command printing the number of objects in the target, or set allowOverwrite",
            kind="TargetNotEmpty",
        )
    count = target_objects(target, env)
    if count and not cfg.allow_overwrite:
        raise AgentError(
            f"the target is not empty (emptyCheck {describe(target.empty_check)} counted "
            f"{count}); set allowOverwrite to restore over it; the target was not touched",
            kind="TargetNotEmpty",
        )
    log(f"emptyCheck counted {count} objects in the target")


class CommandRestore(StdinFeed):
    """The restore command, fed the decrypted dump on stdin."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(
            start_child(argv, env, "restore", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        )


def command_query(
    target: CommandTargetConfig, env: dict[str, str]
) -> Callable[[Check], str | None]:
    """A check's value: its command's stdout, trimmed; a non-zero exit is an Error."""

    def query(check: Check) -> str | None:
        if check.command is None:
            raise ValueError("a command target runs command checks, not sql or redis ones")
        code, out, err = run_capture(check.command, env, "check", target.timeout_seconds)
        if code != 0:
            raise ValueError(f"{describe(check.command)} exited {code}: {err or 'no error output'}")
        return out.strip()

    return query


def restore_command(run: Restoring, target: CommandTargetConfig) -> dict[str, Any]:
    cfg, manifest = run.cfg, run.manifest
    child_env = command_env(target.env, run.env)
    check_target_empty(cfg, target, child_env)
    _opened, verify_seconds = run.payload.verify(cfg.progress_seconds, decompress=False)
    log(
        f"verified {manifest.location} in {verify_seconds:.1f}s; restoring with "
        f"{describe(target.restore)}"
    )
    started = time.monotonic()
    restorer = CommandRestore(list(target.restore), child_env)
    # A second pass that authenticates every chunk again: the tool applies what it reads as it
    # reads it. On a failure stdin is never closed: the tool sees a killed session, not an EOF.
    run.payload.stream(
        restorer.write,
        "restore",
        cfg.progress_seconds,
        corrupted="{location} changed after it was verified: {error}; " + STOPPED,
        unreadable="{error}; " + STOPPED,
        stop=restorer.kill,
    )
    restorer.finish()
    restore_seconds = time.monotonic() - started
    outcomes = run.run_checks(command_query(target, child_env))
    return run.result(restorer.written, verify_seconds, restore_seconds, outcomes)
