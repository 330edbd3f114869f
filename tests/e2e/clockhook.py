"""A clock the e2e tests move, injected into the operator's policy runtime.

Importing this module registers a kopf startup handler (on the default registry, which the
tests' operator runs with) that hands `CLOCK` to the runtime, through memo["clock"] or, when
the runtime was made first, by swapping its clock. Until a test moves it, `CLOCK` is the
system clock, so operators of other tests in the same process are unaffected.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import kopf

from aegis.handlers.common import POLICY_RUNTIME


class OffsetClock:
    def __init__(self) -> None:
        self._offset = dt.timedelta(0)
        self._lock = threading.Lock()
        self.memos: list[Any] = []

    def now(self) -> dt.datetime:
        with self._lock:
            return dt.datetime.now(dt.UTC) + self._offset

    def set(self, when: dt.datetime) -> None:
        """Jump to `when` (time goes on from there) and make the schedulers look again."""
        with self._lock:
            self._offset = when - dt.datetime.now(dt.UTC)
        self._moved()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += dt.timedelta(seconds=seconds)
        self._moved()

    def reset(self) -> None:
        with self._lock:
            self._offset = dt.timedelta(0)
        self.memos.clear()

    def _moved(self) -> None:
        for memo in self.memos:
            runtime = memo.get(POLICY_RUNTIME)
            if runtime is not None:
                runtime.clock_moved()


CLOCK = OffsetClock()


@kopf.on.startup(id="test-clock")
def install_clock(memo: kopf.Memo, **_: Any) -> None:
    memo["clock"] = CLOCK
    runtime = memo.get(POLICY_RUNTIME)
    if runtime is not None:
        runtime.clock = CLOCK
    CLOCK.memos.append(memo)
