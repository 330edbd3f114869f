"""Leader election of the operator's replicas, by kopf's own peering.

Why kopf peering rather than a coordination.k8s.io Lease: kopf pauses and resumes its own
watches and daemons on a peering decision (a paused replica lists nothing, runs no handler,
stops every daemon: a FailoverPlan's tick is halted and writes nothing more, exactly as if
the process had died), so no handler of ours has to ask "am I the leader?". A Lease elector
would need the same gating rebuilt around kopf.

kopf's rule: a replica pauses while it sees a live peer of higher priority (and also on a
tie, so ties must not happen). Aegis gives each replica a *seniority* priority: the earlier
a replica started, the higher its priority. So the oldest live replica leads, a replica
started later (a rollout's new pod, a rescheduled one) never preempts a leader in the
middle of a transition, and a leader that dies hands over to the next oldest:

- at once when it stops gracefully (kopf removes its record on exit);
- when its record expires when it is killed or its node is lost: at most
  `lifetime` seconds after its last keep-alive (AEGIS_PEERING_LIFETIME).

The peering object is a ClusterKopfPeering (cluster-scoped, kopf's CRD shipped in crds/)
named after the release, whatever namespaces the operator watches: one election per
installation, not one per namespace.
"""

from __future__ import annotations

import random
import time
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from aegis.k8s.client import api_client

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
PEERING_PLURAL = "clusterkopfpeerings"
PEERING_KIND = "ClusterKopfPeering"

# Added below the start time in milliseconds: replicas started within the same millisecond
# still get distinct priorities (a tie pauses both, by kopf's rule).
_TIEBREAK = 1000


def seniority_priority(started_ns: int | None = None, tiebreak: int | None = None) -> int:
    """A priority that is higher the earlier the replica started (negated start time in ms,
    scaled, plus a random tie-break); fits in int64 until the year 2262."""
    started = time.time_ns() if started_ns is None else started_ns
    rnd = random.randrange(_TIEBREAK) if tiebreak is None else tiebreak
    return -(started // 1_000_000) * _TIEBREAK + rnd


def peering_object(name: str) -> dict[str, Any]:
    """The peering object kopf keeps its keep-alives in (status: identity → record)."""
    return {
        "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
        "kind": PEERING_KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "aegis"}},
    }


class PeeringUnavailable(RuntimeError):
    """The peering CRD is not installed: without it every replica would stay paused."""


def ensure_peering(name: str) -> bool:
    """Create the peering object unless it exists; True when created. kopf waits (paused)
    until it sees the object, so a replica must not depend on someone else creating it."""
    api = kubernetes.client.CustomObjectsApi(api_client())
    try:
        api.create_cluster_custom_object(
            PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, peering_object(name)
        )
    except ApiException as error:
        if error.status == 404:
            # kopf would wait silently (paused, "peering CRD is missing" at debug level)
            raise PeeringUnavailable(
                f"leader election needs the CRD {PEERING_PLURAL}.{PEERING_GROUP}: apply "
                f"crds/{PEERING_PLURAL}.{PEERING_GROUP}.yaml (the chart installs it unless "
                "--skip-crds), or run one replica without election (AEGIS_PEERING empty)"
            ) from None
        if error.status != 409:
            raise
        return False
    return True
