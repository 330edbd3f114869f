"""Log lines on stderr (scrubbed) and periodic progress reports."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from types import TracebackType

from aegis.agent.scrub import scrub


def log(message: str) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f"{now} aegis-agent: {scrub(message)}", file=sys.stderr, flush=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - unreachable


def progress_line(phase: str, read: int, stored: int, elapsed: float) -> str:
    rate = read / elapsed if elapsed > 0 else 0.0
    return (
        f"progress phase={phase} read={read} ({human_bytes(read)}) stored={stored} "
        f"({human_bytes(stored)}) rate={human_bytes(rate)}/s elapsed={elapsed:.1f}s"
    )


class Progress:
    """Counters updated by the pipeline; a ticker thread logs them every `interval` seconds.

    Used as a context manager around a phase; the last line is logged at exit."""

    def __init__(self, phase: str, interval: float) -> None:
        self.phase = phase
        self.interval = interval
        self.read = 0
        self.stored = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"progress-{phase}", daemon=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            log(progress_line(self.phase, self.read, self.stored, self.elapsed))

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        outcome = "done" if exc is None else "stopped"
        log(progress_line(self.phase, self.read, self.stored, self.elapsed) + f" {outcome}")
