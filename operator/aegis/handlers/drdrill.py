"""kopf handlers of DR_DRILL: body → model → reconciler → status patch."""

from __future__ import annotations

from typing import Any

import kopf

from aegis import GROUP, VERSION, metrics
from aegis.api import DR_DRILL as KIND
from aegis.api.drdrill import DRDrillSpec
from aegis.handlers.common import KopfLogger, accept, forget, patch_conditions
from aegis.reconcilers.conditions import ConditionUpdate


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.update(GROUP, VERSION, KIND.plural, id="accept")
def reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, memo: kopf.Memo, **_: Any
) -> None:
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        return
    assert isinstance(spec, DRDrillSpec)
    # No drill type runs yet: saying Ready=True would claim rehearsals that never happen.
    message = f"{spec.type} drills are not implemented yet; this drill never runs"
    patch_conditions(body, patch, [ConditionUpdate("Ready", "False", "NotImplemented", message)])
    metrics.RESOURCE_READY.labels(KIND.kind, body.meta["namespace"], body.meta["name"]).set(0)


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    forget(KIND, body)
