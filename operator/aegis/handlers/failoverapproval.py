"""kopf handlers of FailoverApproval: accept the spec and wake the plan it names, whose
daemon acts on it (once) at its next round and records the outcome on it."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from aegis import GROUP, VERSION
from aegis.api import FAILOVER_APPROVAL as KIND
from aegis.handlers.common import KopfLogger, accept, accepted, forget
from aegis.handlers.failoverplan import WAKEUPS


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="approval-accept")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="approval-accept")
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: KopfLogger,
              **_: Any) -> None:
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        return
    plan = body.spec.get("planName")
    accepted(KIND, body, patch, f"Waits for FailoverPlan {plan} to act on it (once).")
    wakeup: asyncio.Event | None = memo.get(WAKEUPS, {}).get((body.meta.get("namespace"), plan))
    if wakeup is not None:
        # kopf runs sync handlers in threads: hand the wake-up to the daemon's loop
        loop = memo.get("failover-loop")
        if isinstance(loop, asyncio.AbstractEventLoop):
            loop.call_soon_threadsafe(wakeup.set)


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="approval-forget", optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    forget(KIND, body)
