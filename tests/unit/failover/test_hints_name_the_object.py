"""Hints in events and messages name the real object: a command the user can paste, never a
literal `<name>` placeholder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.unit.failover.test_failover_decision import NOW, down, spec, status, up

from aegis.api.backuppolicy import Encryption
from aegis.reconcilers import keys, ownership
from aegis.reconcilers.failover import APPROVE, decide

OPERATOR = Path(__file__).resolve().parents[3] / "operator" / "aegis"
PLACEHOLDER = re.compile(r"<(name|plan|policy|point|drill|restore|namespace|ns)>")


def test_awaiting_approval_says_how_to_approve_this_plan() -> None:
    d = decide(spec(mode="Manual"), status(down(), up()), {}, NOW, plan=("shop", "orders"))
    assert d.reason == "AwaitingApproval"
    assert "kubectl aegis failover approve orders -n shop" in d.message
    assert f"kubectl annotate fp orders -n shop {APPROVE}=" in d.message
    assert "kubectl get fp orders -n shop -o jsonpath='{.status.approvalToken}'" in d.message
    (event,) = d.events
    assert event.message == d.message and not PLACEHOLDER.search(event.message)


def test_the_approve_hint_is_a_valid_shell_command() -> None:
    d = decide(spec(mode="Manual"), status(down(), up()), {}, NOW, plan=("shop", "orders"))
    command = d.message.split("(or: ", 1)[1].removesuffix(")")
    subprocess.run(["bash", "-n", "-c", command], check=True)


def test_the_escrow_hint_names_the_policy() -> None:
    update = keys.escrow_condition(
        Encryption.model_validate({"keySecretRef": {"name": "k"}}), "shop", "orders"
    )
    assert "kubectl aegis keys export orders -n shop" in update.message
    assert "kubectl aegis keys rewrap orders -n shop --kms-key ARN" in update.message
    assert not PLACEHOLDER.search(update.message)


def test_a_forged_scheduled_point_is_told_the_real_backup_command() -> None:
    point = {
        "metadata": {"name": "p1", "namespace": "shop", "annotations": {}},
        "spec": {"policyRef": {"name": "orders"}, "trigger": "Scheduled"},
    }
    refused = ownership.refusal(point)
    assert refused is not None and "`kubectl aegis backup orders -n shop`" in refused.message


def test_no_message_of_the_operator_holds_a_placeholder() -> None:
    """Every f-string or string literal passed as a message: no `<name>`-style placeholder
    outside docstrings and comments (the source is read, line by line, for quotes)."""
    offenders = []
    for path in sorted((OPERATOR / "reconcilers").glob("*.py")) + sorted(
        (OPERATOR / "handlers").glob("*.py")
    ):
        in_doc = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.count('"""') == 1:
                in_doc = not in_doc
                continue
            if in_doc or stripped.startswith(("#", '"""')):
                continue
            if PLACEHOLDER.search(line):
                offenders.append(f"{path.name}:{number}: {stripped}")
    assert not offenders, offenders
