"""Per-object mutexes for the operator's worker threads.

kopf runs handlers of different objects in parallel threads, and a backup's Job event, its
point's handler and the scheduler can reach the same object at once; the writers that must
not interleave (one point's status, one restore's Job) hold the object's lock. A lock exists
only while a thread holds or waits for it (weak references), so the registry never grows with
the number of objects the operator has seen.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class KeyedLocks:
    """`with locks.hold(key):` serialises the threads of this process on `key`."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[Hashable, _Lock] = weakref.WeakValueDictionary()

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = _Lock()
                self._locks[key] = lock
        with lock.lock:  # `lock` is referenced here, so it lives until released
            yield

    def __len__(self) -> int:
        return len(self._locks)


class _Lock:
    """A weakly referenceable holder (threading.Lock objects cannot be weakly referenced)."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
