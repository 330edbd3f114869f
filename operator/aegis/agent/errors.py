"""The agent's failure type: a one-line reason that is safe to show (scrubbed at output)."""

from __future__ import annotations


class AgentError(Exception):
    """A failure with a reason meant for the operator and the user.

    `kind` is a CamelCase word the operator can put in a condition's reason."""

    def __init__(self, reason: str, kind: str = "Failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
