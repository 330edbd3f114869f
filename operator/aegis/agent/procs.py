"""Child processes whose stderr is drained in the background (and kept, scrubbed, for errors)."""

from __future__ import annotations

import collections
import subprocess
import threading
from collections.abc import Sequence

from aegis.agent.scrub import scrub


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
