"""Per-object locks serialise threads on one key and leave nothing behind."""

from __future__ import annotations

import gc
import threading
import time

from aegis.locks import KeyedLocks


def test_threads_on_one_key_take_turns_and_other_keys_do_not_wait() -> None:
    locks = KeyedLocks()
    inside: list[int] = []
    overlaps: list[int] = []

    def work(i: int) -> None:
        with locks.hold(("rp", "ns", "a")):
            inside.append(i)
            if len(inside) > 1:
                overlaps.append(i)
            time.sleep(0.01)  # a writer's critical section, long enough for others to try
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    with locks.hold(("rp", "ns", "b")):  # another key is free meanwhile
        pass
    for t in threads:
        t.join()
    assert overlaps == []


def test_no_lock_outlives_its_holders() -> None:
    locks = KeyedLocks()
    for i in range(1000):
        with locks.hold(("rp", "ns", f"p{i}")):
            pass
    gc.collect()
    assert len(locks) == 0
