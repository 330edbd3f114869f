"""In-memory copies of the objects the operator watches, fed by kopf's watch events (an
informer, in client-go's terms). The scheduler and the status refresh read policies and
their points from here instead of asking the API server for them at every tick."""

from __future__ import annotations

import base64
import copy
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final

Body = dict[str, Any]


def without_managed_fields(body: Body) -> Body:
    """The body as the cache keeps it: `metadata.managedFields` (server-side apply's record of
    who set which field, a tree of small dicts per writer) is dropped, as controller-runtime's
    `TransformStripManagedFields` does: nothing here reads it, and it grows with every writer
    of the object (kopf, the status writers, a GitOps tool), for each of the thousands of
    objects kept. The caller's dict is not changed (kopf still holds it)."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or "managedFields" not in metadata:
        return body
    return {
        **body,
        "metadata": {k: v for k, v in metadata.items() if k != "managedFields"},
    }


class PointCache:
    """RecoveryPoints by (namespace, policy), and BackupPolicies by (namespace, name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: defaultdict[tuple[str, str], dict[str, Body]] = defaultdict(dict)
        self._policies: dict[tuple[str, str], Body] = {}
        # Start-up: point names the watch delivered, per namespace, until the cache is known to
        # hold every point a LIST of the namespace returned (`expect`, `covers`).
        self._seen: defaultdict[str, set[str]] = defaultdict(set)
        self._expected: dict[str, set[str]] = {}
        self._covered: set[str] = set()

    def expect(self, namespace: str, names: set[str]) -> None:
        """A LIST of the namespace's points returned these: once the watch has delivered
        each of them, the cache holds everything that existed then."""
        with self._lock:
            if namespace not in self._covered:
                self._expected.setdefault(namespace, names)  # the first such LIST suffices

    def covers(self, namespace: str) -> bool:
        """Whether the cache holds at least what the last `expect`ed LIST returned (the
        watch's start-up listing of the namespace has been taken in)."""
        with self._lock:
            if namespace in self._covered:
                return True
            expected = self._expected.get(namespace)
            if expected is None or not expected <= self._seen[namespace]:
                return False
            self._covered.add(namespace)
            self._expected.pop(namespace, None)
            self._seen.pop(namespace, None)
            return True

    def point_event(self, event_type: str | None, body: Body) -> Body | None:
        """Takes the event in; returns the copy it replaced (None: new here)."""
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if namespace not in self._covered:
            with self._lock:
                if namespace not in self._covered:
                    self._seen[namespace].add(meta.get("name", ""))
        policy = ((body.get("spec") or {}).get("policyRef") or {}).get("name")
        if not policy:
            return None
        key = (meta.get("namespace", ""), policy)
        with self._lock:
            if event_type == "DELETED":
                return self._points[key].pop(meta.get("name", ""), None)
            previous = self._points[key].get(meta.get("name", ""))
            self._points[key][meta.get("name", "")] = without_managed_fields(body)
            return previous

    def policy_event(self, event_type: str | None, body: Body) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            if event_type == "DELETED":
                self._policies.pop(key, None)
            else:
                self._policies[key] = without_managed_fields(body)

    def points(self, namespace: str, policy: str) -> list[Body]:
        with self._lock:
            return list(self._points.get((namespace, policy), {}).values())

    def policies_in(self, namespace: str) -> list[Body]:
        with self._lock:
            return [b for (ns, _), b in self._policies.items() if ns == namespace]

    def policy(self, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._policies.get((namespace, name))


class SecretCache:
    """Secrets by (namespace, name), fed by a watch of every Secret the operator may read, so
    that re-checking a thousand policies' references and probing a plan's sites cost no API
    call, and a changed or deleted Secret is seen at the next read.

    What is kept: of every Secret, its resourceVersion (so a read can tell whether what it
    fetched is the newest version); the data only of the Secrets the operator has read (a
    policy's or a plan's reference), which are then kept current by the watch. Other Secrets'
    values are never kept. A read the cache cannot answer (a Secret never read before, or one
    larger than `max_bytes`: a Helm release, a CA bundle) goes to the API server once, and its
    answer is kept when it is the version the watch last saw (`fill`): nothing the watch
    delivered in the meantime is overwritten by an older read.

    Values are kept as the API sends them (base64) and decoded on read; they are secrets:
    never log them."""

    TOO_LARGE: Final = object()

    def __init__(self, max_bytes: int = 65536) -> None:
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        # (namespace, name) -> (resourceVersion, data | None (not kept) | TOO_LARGE)
        self._secrets: dict[tuple[str, str], tuple[str, dict[str, str] | object | None]] = {}

    def _sized(self, data: dict[str, str]) -> dict[str, str] | object:
        size = sum(len(k) + len(v or "") for k, v in data.items())
        return data if size <= self._max_bytes else self.TOO_LARGE

    def event(self, event_type: str | None, body: Body) -> bool:
        """A watch event of any Secret. True when it tells something new (a version not seen
        before, or the deletion); False for a re-list's repeat of a known version."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        version = str(meta.get("resourceVersion") or "")
        with self._lock:
            known = self._secrets.get(key)
            if event_type == "DELETED":
                self._secrets.pop(key, None)
                return True
            if known is not None and version and known[0] == version:
                return False
            kept = known is not None and known[1] is not None
            data = self._sized(dict(body.get("data") or {})) if kept else None
            self._secrets[key] = (version, data)
            return True

    def get(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The Secret's data decoded, or None when the cache does not hold it (never read,
        deleted, or too large): ask the API server then, and `fill` with the answer."""
        with self._lock:
            found = self._secrets.get((namespace, name))
        if found is None or not isinstance(found[1], dict):
            return None
        return {k: base64.b64decode(v or "") for k, v in found[1].items()}

    def fill(self, namespace: str, name: str, version: str, data: dict[str, str]) -> bool:
        """Keep what a read from the API server returned (base64 values), when it is the
        version the watch last delivered; from then on the watch keeps it current. False when
        not kept (the watch has not seen this Secret yet, or has seen a newer version)."""
        key = (namespace, name)
        with self._lock:
            known = self._secrets.get(key)
            if known is None or not version or known[0] != version:
                return False
            self._secrets[key] = (version, self._sized(dict(data)))
            return True


class PlanCache:
    """FailoverPlans by (namespace, name), fed by kopf's watch of plans, so that a plan's
    tick (every probe round) reads its plan without a GET.

    The watch delivers every change of a plan (spec, trigger annotations, status) in order,
    but a moment after it is made. The one read that must not be answered from a copy that
    lags is the one right after this process wrote the plan: the tick would see its own
    status as someone else's and start over from the older one. So each write records the
    resourceVersion it produced (`wrote`), and a copy is trusted only while it is that
    version — or while this process has written nothing since it last read the plan from
    the API server (`fresh`). Anything else (the watch has not caught up, or someone else
    wrote after us) is a miss: the caller GETs the plan and reports it with `fresh`, and
    the copy is trusted again once the watch shows that version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[tuple[str, str], Body] = {}
        self._expected: dict[tuple[str, str], str] = {}

    @staticmethod
    def _key(body: Body) -> tuple[tuple[str, str], str | None]:
        meta = body.get("metadata") or {}
        return (meta.get("namespace", ""), meta.get("name", "")), meta.get("resourceVersion")

    def event(self, event_type: str | None, body: Body) -> None:
        key, _ = self._key(body)
        with self._lock:
            if event_type == "DELETED":
                self._bodies.pop(key, None)
                self._expected.pop(key, None)
            else:
                self._bodies[key] = copy.deepcopy(without_managed_fields(body))

    def wrote(self, namespace: str, name: str, version: str | None) -> None:
        """This process changed the plan; `version` is the resourceVersion it answered
        with (None: unknown, so nothing is trusted until the next `fresh`)."""
        with self._lock:
            self._expected[(namespace, name)] = version or ""

    def fresh(self, body: Body) -> None:
        """A copy just read from the API server: the watch's copy is trusted again once
        it shows this version."""
        key, version = self._key(body)
        with self._lock:
            if version:
                self._expected[key] = version
            else:
                self._expected.pop(key, None)

    def get(self, namespace: str, name: str) -> Body | None:
        """A private copy of the plan as the watch last delivered it, when it can be
        trusted (see the class doc); None means: read it from the API server."""
        key = (namespace, name)
        with self._lock:
            body = self._bodies.get(key)
            if body is None:
                return None
            expected = self._expected.get(key)
            version = (body.get("metadata") or {}).get("resourceVersion")
            if expected is not None and version != expected:
                return None
            return copy.deepcopy(body)


class _Round:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.done = threading.Event()
        self.result: dict[str, list[Body]] = {}
        self.error: BaseException | None = None


class SharedListing:
    """Reads that must see everything that exists when they are made (not a watch cache that
    may still be filling), shared: callers that ask while a LIST of their namespace is
    running wait for the next one, and that one LIST answers them all. At start-up a
    thousand policies' first looks at their points cost a few namespace-wide LISTs instead
    of one label-selected LIST each (which makes the API server scan every object of the
    namespace each time: O(policies * points)).

    `list_one(namespace, key)` answers a round with a single caller (a narrower request);
    `list_all(namespace)` answers a round of several, and `key_of(item)` groups its items.
    Every answer comes from a request that started after the caller asked."""

    def __init__(
        self,
        list_one: Callable[[str, str], list[Body]],
        list_all: Callable[[str], list[Body]],
        key_of: Callable[[Body], str | None],
    ) -> None:
        self._list_one = list_one
        self._list_all = list_all
        self._key_of = key_of
        self._lock = threading.Lock()
        self._pending: dict[str, _Round] = {}
        self._serial: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self.requests = 0

    def get(self, namespace: str, key: str) -> list[Body]:
        with self._lock:
            round_ = self._pending.get(namespace)
            leader = round_ is None
            if round_ is None:
                round_ = self._pending[namespace] = _Round()
            round_.keys.add(key)
            serial = self._serial[namespace]
        if leader:
            with serial:  # one LIST of a namespace at a time; callers meanwhile join this round
                with self._lock:
                    del self._pending[namespace]  # later callers need a LIST started later
                    keys = set(round_.keys)
                    self.requests += 1
                try:
                    if len(keys) == 1:
                        round_.result = {key: self._list_one(namespace, key)}
                    else:
                        grouped: defaultdict[str, list[Body]] = defaultdict(list)
                        for item in self._list_all(namespace):
                            item_key = self._key_of(item)
                            if item_key in keys:
                                grouped[item_key].append(item)
                        round_.result = dict(grouped)
                except BaseException as error:
                    round_.error = error
                finally:
                    round_.done.set()
        else:
            round_.done.wait()
        if round_.error is not None:
            raise round_.error
        return list(round_.result.get(key, []))
