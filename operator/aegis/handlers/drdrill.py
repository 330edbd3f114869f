"""kopf handlers of DR_DRILL: body → model → reconciler → status patch."""

from __future__ import annotations

from typing import Any

import kopf

from aegis import GROUP, VERSION
from aegis.api import DR_DRILL as KIND
from aegis.handlers.common import KopfLogger, accept, accepted, forget


@kopf.on.resume(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.create(GROUP, VERSION, KIND.plural, id="accept")
@kopf.on.update(GROUP, VERSION, KIND.plural, id="accept")
def reconcile(
    body: kopf.Body, patch: kopf.Patch, logger: KopfLogger, memo: kopf.Memo, **_: Any
) -> None:
    spec = accept(KIND, body, patch, logger, memo["settings"])
    if spec is None:
        return
    accepted(KIND, body, patch, "The drill is accepted.")


@kopf.on.delete(GROUP, VERSION, KIND.plural, id="forget", optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    forget(KIND, body)
