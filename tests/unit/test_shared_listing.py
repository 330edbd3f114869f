"""SharedListing: concurrent uncached reads of a namespace's points share one LIST, and every
answer comes from a LIST that started after the caller asked (issue 15: 5,000 policies'
first looks after start-up must not cost a namespace scan each)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aegis.k8s.cache import SharedListing

Body = dict[str, Any]


class Server:
    """A namespace of points whose LIST blocks until released, counting requests."""

    def __init__(self, points: list[Body]) -> None:
        self.points = points
        self.gate = threading.Event()
        self.started = threading.Event()
        self.all_lists = 0
        self.one_lists = 0

    def list_one(self, namespace: str, policy: str) -> list[Body]:
        self.one_lists += 1
        self.started.set()
        self.gate.wait(5)
        return [p for p in self.points if p["policy"] == policy]

    def list_all(self, namespace: str) -> list[Body]:
        self.all_lists += 1
        self.started.set()
        self.gate.wait(5)
        return list(self.points)


def listing(server: Server) -> SharedListing:
    return SharedListing(server.list_one, server.list_all, lambda p: p["policy"])


def test_a_lone_caller_asks_for_its_own_points_only() -> None:
    server = Server([{"policy": "a", "n": 1}, {"policy": "b", "n": 2}])
    server.gate.set()
    assert listing(server).get("ns", "a") == [{"policy": "a", "n": 1}]
    assert (server.one_lists, server.all_lists) == (1, 0)


def test_callers_waiting_on_a_running_list_share_the_next_one() -> None:
    server = Server([{"policy": f"p{i}", "n": i} for i in range(50)])
    shared = listing(server)
    # Hold the listing busy with a first caller, so that all later callers queue behind it
    # and join one round.
    with ThreadPoolExecutor(60) as pool:
        first = pool.submit(shared.get, "ns", "p0")
        assert server.started.wait(5)
        later = [pool.submit(shared.get, "ns", f"p{i}") for i in range(1, 50)]
        while True:  # every later caller has joined the pending round
            with shared._lock:
                pending = shared._pending.get("ns")
                if pending is not None and len(pending.keys) == 49:
                    break
        server.points.append({"policy": "p7", "n": 99})  # created after they asked
        server.gate.set()
        assert first.result() == [{"policy": "p0", "n": 0}]
        answers = {i: f.result() for i, f in zip(range(1, 50), later, strict=True)}
    assert (server.one_lists, server.all_lists) == (1, 1)  # not 50
    assert answers[5] == [{"policy": "p5", "n": 5}]
    # The second LIST started after the point was created: it is seen.
    assert answers[7] == [{"policy": "p7", "n": 7}, {"policy": "p7", "n": 99}]


def test_an_error_reaches_every_caller_of_its_round_and_the_next_round_retries() -> None:
    calls = 0

    def failing(namespace: str, policy: str) -> list[Body]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("API server unavailable")
        return [{"policy": policy}]

    shared = SharedListing(failing, lambda ns: [], lambda p: p["policy"])
    with pytest.raises(RuntimeError, match="unavailable"):
        shared.get("ns", "a")
    assert shared.get("ns", "a") == [{"policy": "a"}]


def point(name: str, policy: str = "p") -> Body:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {"policyRef": {"name": policy}}}


def test_the_point_cache_serves_first_looks_once_it_holds_what_a_list_returned() -> None:
    from aegis.k8s.cache import PointCache

    cache = PointCache()
    assert not cache.covers("ns")  # nothing listed yet: a first look must LIST
    cache.point_event(None, point("a"))
    cache.expect("ns", {"a", "b", "c"})
    assert not cache.covers("ns")  # the watch has not delivered b and c yet
    cache.point_event(None, point("b"))
    cache.point_event("DELETED", point("c"))  # deleted since the LIST: delivered all the same
    assert cache.covers("ns")
    assert not cache.covers("other")
    assert [p["metadata"]["name"] for p in cache.points("ns", "p")] == ["a", "b"]
