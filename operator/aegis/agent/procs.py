"""Child processes whose stderr is drained in the background (and kept, scrubbed, for errors)."""

from __future__ import annotations

import collections
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from aegis.agent.errors import AgentError
from aegis.agent.scrub import scrub

F_SETPIPE_SZ = 1031  # Linux fcntl: resize a pipe's buffer


def widen_pipe(stream: Any) -> None:
    """Let the two ends of a pipe run 1 MiB apart instead of the default 64 KiB: fewer stalls
    and wake-ups on both sides. Best effort (Linux only, capped by pipe-max-size)."""
    if stream is None:
        return
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError, AttributeError):
        pass


class Child:
    """A child process; the last lines of its stderr are kept for the failure reason."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        stdin: int | None = None,
        stdout: int | None = None,
        keep_lines: int = 20,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.name = args[0].rsplit("/", 1)[-1]
        self.proc = subprocess.Popen(
            list(args),
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            bufsize=0,
            user=user,
            group=group,
            # Dropping to another user drops root's supplementary groups too.
            extra_groups=[] if user is not None else None,
        )
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._drain = threading.Thread(
            target=self._read_stderr, name=f"{self.name}-stderr", daemon=True
        )
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._lines.append(scrub(line))

    def stderr_tail(self, lines: int = 3) -> str:
        self._drain.join(5)
        return " | ".join(list(self._lines)[-lines:])

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self._drain.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(5)

    def failure(self, what: str) -> str:
        code = self.proc.returncode
        tail = self.stderr_tail()
        return f"{self.name} {what} (exit {code}): {tail or 'no error output'}"


class StdinFeed:
    """A child process (started with stdin=PIPE) fed on its stdin: `write` hands it bytes,
    `finish` closes its stdin and checks its exit status, `kill` stops it. A child that
    exits early fails the `write` with its own stderr (kind RestoreFailed)."""

    def __init__(self, child: Child) -> None:
        self.child = child
        widen_pipe(child.proc.stdin)
        self.written = 0

    def write(self, data: bytes) -> None:
        assert self.child.proc.stdin is not None
        try:
            self.child.proc.stdin.write(data)
        except BrokenPipeError:
            self.child.wait()
            raise AgentError(self.child.failure("failed"), kind="RestoreFailed") from None
        self.written += len(data)

    def finish(self) -> None:
        assert self.child.proc.stdin is not None
        try:
            self.child.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.child.wait() != 0:
            raise AgentError(self.child.failure("failed"), kind="RestoreFailed")

    def kill(self) -> None:
        self.child.kill()
