"""A precise, cheap scheduler of policy ticks: one thread waits on a heap of due times and
hands due policies to a small pool. A thousand policies cost a heap entry each, not a thread
or a timer each, and a tick is acted on within milliseconds of its due time.

What to do at a tick is not decided here: `act(namespace, name, now)` does it and returns
the seconds until it wants to be asked again (None: only when woken). Errors back off
exponentially per policy, so one broken policy never floods the logs or delays the others.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

Key = tuple[str, str]
Act = Callable[[str, str, dt.datetime], float | None]

logger = logging.getLogger("aegis.scheduler")

MIN_BACKOFF = 5.0
MAX_BACKOFF = 600.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Scheduler:
    def __init__(
        self,
        act: Act,
        *,
        workers: int = 16,
        clock: Callable[[], dt.datetime] = utcnow,
        name: str = "aegis-tick",
    ) -> None:
        self._act = act
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Condition()
        self._heap: list[tuple[dt.datetime, int, Key]] = []
        self._due: dict[Key, dt.datetime] = {}
        self._running: set[Key] = set()
        self._rerun: set[Key] = set()
        self._backoff: dict[Key, float] = {}
        self._sequence = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"{name}-loop", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self, namespace: str, name: str, at: dt.datetime | None = None) -> None:
        """Ask `act` about this policy at `at` (now by default); an earlier wake wins."""
        key = (namespace, name)
        when = at or self._clock()
        with self._lock:
            if key in self._running:
                self._rerun.add(key)
                if at is None:
                    return
            current = self._due.get(key)
            if current is not None and current <= when:
                return
            self._due[key] = when
            heapq.heappush(self._heap, (when, next(self._sequence), key))
            self._lock.notify()

    def nudge(self) -> None:
        """Look at the clock again now: an injected clock was moved (tests, drills)."""
        with self._lock:
            self._lock.notify()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            key = (namespace, name)
            self._due.pop(key, None)
            self._rerun.discard(key)
            self._backoff.pop(key, None)

    def pending(self) -> dict[Key, dt.datetime]:
        with self._lock:
            return dict(self._due)

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    when, _, key = heapq.heappop(self._heap)
                    if self._due.get(key) != when:
                        continue  # superseded by an earlier wake, or forgotten
                    del self._due[key]
                    self._running.add(key)
                    self._pool.submit(self._run, key, now)
                timeout = None
                if self._heap:
                    timeout = max(0.0, (self._heap[0][0] - self._clock()).total_seconds())
                # Waiting for a point in time (or a wake), not standing in for work.
                self._lock.wait(timeout=timeout)

    def _run(self, key: Key, now: dt.datetime) -> None:
        delay: float | None
        try:
            delay = self._act(key[0], key[1], now)
            self._backoff.pop(key, None)
        except Exception as error:  # a broken policy must not stop the scheduler
            delay = min(MAX_BACKOFF, self._backoff.get(key, MIN_BACKOFF / 2) * 2)
            self._backoff[key] = delay
            logger.warning(
                "Tick of %s/%s failed (retry in %.0fs): %s", key[0], key[1], delay, error
            )
        with self._lock:
            self._running.discard(key)
            rerun = key in self._rerun
            self._rerun.discard(key)
        if rerun:
            self.wake(*key)
        if delay is not None:
            self.wake(key[0], key[1], self._clock() + dt.timedelta(seconds=delay))
