"""`kubectl aegis drill run|status <drill>`: run a DRDrill now and follow it, or show its runs.

`run` sets the `dr.aegis.dev/run-now` annotation to a new value; the operator starts one run for
each new value (never two at once) and the command follows it to its verdict."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aegis import GROUP, VERSION
from aegis.labels import RUN_ANNOTATION

PLURAL = "drdrills"
FOLLOW_INTERVAL = 1.0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kubectl aegis drill", description=__doc__)
    verbs = root.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (
        ("run", "run the drill now and follow it to its verdict"),
        ("status", "show the last run, its RTO/RPO breakdown and the history"),
    ):
        sub = verbs.add_parser(verb, help=text, description=text)
        sub.add_argument("drill", help="DRDrill name")
        sub.add_argument("-n", "--namespace", default=None)
        if verb == "status":
            from aegis.kubectl import add_output

            add_output(sub)
        if verb == "run":
            sub.add_argument("--no-wait", action="store_true", help="do not follow the run")
            sub.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow")
    return root


def _seconds(value: Any) -> str:
    return f"{float(value):.1f}s" if isinstance(value, int | float) else "-"


def render_run(run: dict[str, Any], objectives: dict[str, Any]) -> list[str]:
    rto_goal = objectives.get("rtoSeconds")
    rpo_goal = objectives.get("rpoSeconds")
    lines = [
        f"  result    {run.get('result') or '-'} ({run.get('reason') or '-'}): "
        f"{run.get('message') or ''}".rstrip(": "),
        f"  point     {run.get('recoveryPoint') or '-'}"
        f"  (source time {run.get('sourceTime') or '-'})",
        f"  started   {run.get('startTime') or '-'}  ({run.get('trigger') or '-'})",
        f"  RTO       {_seconds(run.get('rtoSeconds'))}"
        + (f"  (objective {rto_goal}s)" if rto_goal else ""),
        f"  RPO       {_seconds(run.get('rpoSeconds'))}"
        + (f"  (objective {rpo_goal}s)" if rpo_goal else ""),
    ]
    phases = run.get("phases") or {}
    for key, label in (
        ("queuedSeconds", "queued"),
        ("scratchSeconds", "scratch server"),
        ("downloadAuthenticateSeconds", "download+authenticate"),
        ("restoreSeconds", "restore"),
        ("checksSeconds", "checks"),
        ("detectionSeconds", "detection"),
        ("stepsSeconds", "steps (longest chain)"),
    ):
        if key in phases:
            lines.append(f"    {label:<22} {_seconds(phases[key])}")
    if run.get("plan"):
        lines[1] = f"  plan      {run['plan']} (failover DryRun)"
    if run.get("rtoPredicted"):
        lines[3] += "  predicted: detection + the exercised steps"
    for step in run.get("steps") or []:
        lines.append(
            f"  step      {step.get('name')}: {step.get('result')} "
            f"{_seconds(step.get('seconds'))}  {step.get('message') or ''}".rstrip()
        )
    for check in run.get("checks") or []:
        value = f" = {check['value']}" if "value" in check else ""
        message = f" ({check['message']})" if check.get("message") else ""
        lines.append(f"  check     {check.get('name')}: {check.get('result')}{value}{message}")
    if run.get("evidence"):
        lines.append(f"  evidence  {run['evidence']}")
    return lines


def render_status(drill: dict[str, Any]) -> str:
    spec, status = drill.get("spec") or {}, drill.get("status") or {}
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    passed: dict[str, Any] = next((c for c in conditions if c.get("type") == "LastDrillPassed"), {})
    lines = [
        f"DRDrill {drill['metadata']['namespace']}/{drill['metadata']['name']}: "
        f"{spec.get('type')}, schedule {spec.get('schedule') or '(once)'}",
        f"  ready     {ready.get('status', '-')} {ready.get('reason', '')}: "
        f"{ready.get('message', '')}",
        f"  passed    {passed.get('status', '-')} {passed.get('reason', '')}",
        f"  next      {status.get('nextRunTime') or '-'}",
    ]
    last = status.get("lastRun")
    if last:
        lines.append("last run:")
        lines += render_run(last, spec.get("objectives") or {})
    history = status.get("history") or []
    if history:
        lines.append("history:")
        for run in history:
            lines.append(
                f"  {run.get('startTime')}  {run.get('result'):<7} "
                f"RTO {_seconds(run.get('rtoSeconds')):>8}  "
                f"RPO {_seconds(run.get('rpoSeconds')):>8}"
                f"  {run.get('reason') or ''}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from aegis.kubectl import api_client, default_namespace

    args = parser().parse_args(list(argv))
    namespace = args.namespace or default_namespace()
    api = client.CustomObjectsApi(api_client())

    def read() -> dict[str, Any]:
        drill: dict[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, args.drill
        )
        return drill

    try:
        drill = read()
    except ApiException as error:
        what = "not found" if error.status == 404 else f"cannot be read: {error.reason}"
        print(f"error: DRDrill {namespace}/{args.drill} {what}", file=sys.stderr)
        return 1
    if args.verb == "status":
        if args.output:
            from aegis.kubectl import print_objects

            print_objects([drill], args.output)
            return 0
        print(render_status(drill))
        return 0
    before = ((drill.get("status") or {}).get("lastRun") or {}).get("startTime")
    token = f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, args.drill,
        {"metadata": {"annotations": {RUN_ANNOTATION: token}}},
    )  # fmt: skip
    print(f"drdrill.{GROUP}/{args.drill}: run requested ({RUN_ANNOTATION}={token})", flush=True)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    shown = ""
    while time.monotonic() < deadline:
        drill = read()
        status = drill.get("status") or {}
        run = status.get("lastRun") or {}
        mine = status.get("lastRunRequest") == token and run.get("startTime") != before
        if mine:
            line = f"{run.get('result')}: {run.get('message') or ''}"
            if line != shown:
                print(line, flush=True)
                shown = line
            if run.get("result") in ("Passed", "Failed"):
                print("\n".join(render_run(run, (drill.get("spec") or {}).get("objectives") or {})))
                return 0 if run["result"] == "Passed" else 1
        # Following a resource is polling its status; the interval is the display's refresh.
        time.sleep(FOLLOW_INTERVAL)
    print(f"error: the run did not finish within {args.timeout:.0f}s", file=sys.stderr)
    return 1
