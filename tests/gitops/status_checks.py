"""Readers of Aegis statuses as GitOps tools read them: kstatus (Flux health checks, `kubectl
wait`) and the Argo CD health/action scripts shipped in integrations/argocd/argocd-cm.yaml,
run in Lua 5.1 (Argo CD's gopher-lua follows Lua 5.1 semantics).

Used by the unit tests on hand-written statuses and by the e2e suite on every object it
produced (tests/e2e/conftest.py), so the scripts are proven on real statuses."""

from __future__ import annotations

import datetime as dt
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_CM = ROOT / "integrations" / "argocd" / "argocd-cm.yaml"
GROUP = "dr.aegis.dev"
KINDS = ("BackupPolicy", "RecoveryPoint", "Restore", "FailoverPlan", "DRDrill",
         "FailoverApproval")
LONG_LIVED = ("BackupPolicy", "FailoverPlan", "DRDrill")
ARGO_HEALTH = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


# ------------------------------------------------------------------ kstatus


def kstatus(obj: dict[str, Any]) -> str:
    """The status kstatus computes for a custom resource (cli-utils' generic rules):
    InProgress, Current, Failed or Terminating."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if observed is not None and generation is not None and observed != generation:
        return "InProgress"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Reconciling") or {}).get("status") == "True":
        return "InProgress"
    if (conditions.get("Stalled") or {}).get("status") == "True":
        return "Failed"
    ready = conditions.get("Ready")
    if ready is not None and ready.get("status") != "True":
        return "InProgress"
    return "Current"


def _rfc3339(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return value.endswith("Z")


def kstatus_problems(obj: dict[str, Any]) -> list[str]:
    """Where a reconciled object's status breaks the kstatus / API conventions."""
    kind = obj.get("kind", "?")
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    name = f"{kind} {meta.get('namespace')}/{meta.get('name')}"
    problems: list[str] = []
    if not conditions:
        return problems  # not reconciled yet: nothing to judge
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if observed is None:
        problems.append(f"{name}: conditions without status.observedGeneration")
    elif generation is not None and observed > generation:
        problems.append(f"{name}: observedGeneration {observed} > generation {generation}")
    types = [c.get("type") for c in conditions]
    if len(types) != len(set(types)):
        problems.append(f"{name}: duplicate condition types {types}")
    for c in conditions:
        where = f"{name} condition {c.get('type')}"
        if c.get("status") not in ("True", "False", "Unknown"):
            problems.append(f"{where}: status {c.get('status')!r}")
        if not CAMEL.match(str(c.get("reason") or "")):
            problems.append(f"{where}: reason {c.get('reason')!r} is not CamelCase")
        if not _rfc3339(c.get("lastTransitionTime")):
            problems.append(f"{where}: lastTransitionTime {c.get('lastTransitionTime')!r}")
        cond_gen = c.get("observedGeneration")
        if cond_gen is not None and generation is not None and cond_gen > generation:
            problems.append(f"{where}: observedGeneration {cond_gen} > generation {generation}")
    by_type = {c.get("type"): c for c in conditions}
    if kind in LONG_LIVED and "Ready" not in by_type:
        problems.append(f"{name}: a long-lived kind without a Ready condition")
    if all((by_type.get(t) or {}).get("status") == "True" for t in ("Stalled", "Reconciling")):
        problems.append(f"{name}: Stalled and Reconciling both True")
    # kstatus must agree with the kind's own conditions: never Current over a refusal or
    # a failure, never Current while the operator is still at work.
    computed = kstatus(obj)
    gate = by_type.get("Ready") or by_type.get("Accepted")
    if gate is not None and gate.get("status") == "False" and computed == "Current":
        problems.append(f"{name}: {gate['type']}=False but kstatus says Current")
    failed = by_type.get("Failed")
    if failed is not None and failed.get("status") == "True" and computed != "Failed":
        problems.append(f"{name}: Failed=True but kstatus says {computed}")
    complete = by_type.get("Complete")
    if complete is not None and complete.get("status") == "Unknown" and computed != "InProgress":
        problems.append(f"{name}: Complete=Unknown but kstatus says {computed}")
    return problems


# ------------------------------------------------------------------ Argo CD (Lua 5.1)


@cache
def argocd_config() -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    return data


def health_script(kind: str) -> str:
    return argocd_config()[f"resource.customizations.health.{GROUP}_{kind}"]


def actions_config(kind: str) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(
        argocd_config()[f"resource.customizations.actions.{GROUP}_{kind}"]
    )
    return parsed


def _runtime() -> Any:
    from lupa import lua51

    return lua51.LuaRuntime(unpack_returned_tuples=True)


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            table[key] = _to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(lua, item)
        return table
    return value


def _from_lua(value: Any) -> Any:
    if hasattr(value, "items") and not isinstance(value, (str, bytes, dict)):
        items = list(value.items())
        keys = [k for k, _ in items]
        if keys and all(isinstance(k, int) for k in keys) and sorted(keys) == list(
            range(1, len(keys) + 1)
        ):
            return [_from_lua(v) for _, v in sorted(items)]
        return {k: _from_lua(v) for k, v in items}
    return value


def run_lua(script: str, obj: dict[str, Any]) -> Any:
    """Run an Argo CD script with `obj` as its global, as Argo CD does; return its result."""
    lua = _runtime()
    lua.globals().obj = _to_lua(lua, obj)
    function = lua.eval(f"function() {script}\nend")
    return _from_lua(function())


def argocd_health(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_lua(health_script(obj["kind"]), obj)
    return result


def argocd_problems(obj: dict[str, Any]) -> list[str]:
    """Where the Argo CD health of a real object is not what its conditions say."""
    meta = obj.get("metadata") or {}
    name = f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}"
    health = argocd_health(obj)
    problems: list[str] = []
    if health.get("status") not in ARGO_HEALTH:
        return [f"{name}: Argo CD health {health!r}"]
    if not isinstance(health.get("message"), str):
        problems.append(f"{name}: Argo CD health without a message: {health!r}")
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    gate = conditions.get("Ready") or conditions.get("Accepted")
    if gate is not None and gate.get("status") == "False" and health["status"] != "Degraded":
        problems.append(f"{name}: {gate['type']}=False but Argo CD says {health['status']}")
    if (conditions.get("Failed") or {}).get("status") == "True" and health["status"] != "Degraded":
        problems.append(f"{name}: Failed=True but Argo CD says {health['status']}")
    if health["status"] == "Healthy" and kstatus(obj) != "Current":
        problems.append(f"{name}: Argo CD Healthy but kstatus {kstatus(obj)}")
    return problems
