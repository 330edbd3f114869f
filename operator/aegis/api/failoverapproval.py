"""FailoverApproval (`fa`): a human decision that a FailoverPlan acts on once.

Approving or forcing a transition is a separate permission from editing a plan: RBAC grants
`create` on `failoverapprovals` to the approvers only, while plan editors keep `patch` on
`failoverplans`. A plan with `approval.by: FailoverApproval` ignores the trigger annotations
(which anyone who may patch the plan can set) and acts only on these objects.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from aegis.api.common import ApiModel, Condition, ObjectName, StatusModel, cel

IMMUTABLE_SPEC = {"rule": "self == oldSelf", "message": "spec is immutable once set"}


class FailoverApprovalSpec(ApiModel):
    """Which plan, which transition, and what the approver accepts."""

    model_config = ConfigDict(json_schema_extra=cel(IMMUTABLE_SPEC))

    plan_name: ObjectName
    """The FailoverPlan in this namespace."""
    action: Literal["Failover", "Failback"]
    """Fail over to the secondary (also approves a recommended failover) or fail back."""
    reason: Annotated[str, Field(min_length=1, max_length=256)]
    """Why; recorded in the transition."""
    force: bool = False
    """Failover only: even onto a secondary whose health checks fail."""
    accept_data_loss: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """Failover only: promote a secondary lagging beyond the plan's limits; this
    acknowledgement is recorded in the transition with the expected loss."""


class FailoverApprovalStatus(StatusModel):
    """What the plan did with the approval."""

    conditions: list[Condition] | None = None
    """Accepted (the spec is valid); Succeeded: True once the plan started the transition,
    False when it refused it."""
    observed_generation: int | None = None
    """The spec generation last validated."""
    state: Literal["Pending", "Used", "Refused"] | None = None
    """Pending until the plan's next round; then Used or Refused (an approval acts once)."""
    transition_id: str | None = None
    """The transition it started."""
    message: str | None = None
    """What happened, or why it was refused."""
    handled_time: dt.datetime | None = None
    """When the plan acted on it."""
