"""`kubectl aegis failover status|approve|trigger|failback <plan> [-n NS]`.

status     the plan's state, active site, each site's checks, the last transition with the
           measured time of every step
approve    approve the recommended failover: reads the token from status.approvalToken
           (or --token) and sets the dr.aegis.dev/approve annotation
trigger    manual failover: dr.aegis.dev/failover=<--reason> (--force: even onto a
           secondary that is not healthy; --accept-data-loss REASON: even onto a stale one)
failback   dr.aegis.dev/failback=<--reason>

For a plan with approval.by: FailoverApproval, approve/trigger/failback create a
FailoverApproval instead (a permission of its own; the plan ignores the annotations).

The operator acts on an annotation within a moment and removes it; `status` shows the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any

from aegis import GROUP, VERSION
from aegis.labels import ACCEPT_DATA_LOSS_ANNOTATION as ACCEPT_DATA_LOSS
from aegis.labels import APPROVE_ANNOTATION as APPROVE
from aegis.labels import FAILBACK_ANNOTATION as FAILBACK
from aegis.labels import FAILOVER_ANNOTATION as FAILOVER

PLURAL = "failoverplans"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="kubectl aegis failover", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = root.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (
        ("status", "show health, state and the last transition"),
        ("approve", "approve the recommended failover"),
        ("trigger", "start a failover now"),
        ("failback", "fail back to the primary"),
    ):
        sub = verbs.add_parser(verb, help=text, description=text)
        sub.add_argument("plan", help="FailoverPlan name")
        sub.add_argument("-n", "--namespace", default=None)
        if verb == "status":
            from aegis.kubectl import add_output

            add_output(sub)
        if verb == "approve":
            sub.add_argument("--token", help="token to send (default: status.approvalToken)")
        if verb in ("trigger", "failback"):
            sub.add_argument("--reason", default="requested with kubectl aegis",
                             help="why; recorded in the transition")
        if verb == "trigger":
            sub.add_argument("--force", action="store_true",
                             help="fail over even when the secondary is not healthy")
        if verb in ("trigger", "approve"):
            sub.add_argument("--accept-data-loss", metavar="REASON", default=None,
                             help="promote the secondary even though it lags beyond the plan's "
                             "limits; the reason is recorded in the transition")
    return root


def main(argv: Sequence[str]) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from aegis.kubectl import api_client, default_namespace

    args = parser().parse_args(list(argv))
    namespace = args.namespace or default_namespace()
    api = client.CustomObjectsApi(api_client())
    try:
        plan: dict[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, args.plan
        )
    except ApiException as error:
        if error.status == 404:
            print(f"error: FailoverPlan {namespace}/{args.plan} not found", file=sys.stderr)
            return 1
        print(f"error: reading FailoverPlan {namespace}/{args.plan}: {error.reason}",
              file=sys.stderr)
        return 1
    if args.verb == "status":
        if args.output:
            from aegis.kubectl import print_objects

            print_objects([plan], args.output)
            return 0
        print(render_status(plan, dt.datetime.now(dt.UTC)))
        return 0
    if ((plan.get("spec") or {}).get("approval") or {}).get("by") == "FailoverApproval":
        # the plan ignores annotations: the decision is a FailoverApproval (RBAC: create)
        body = approval_for(args)
        try:
            made = api.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "failoverapprovals", body)
        except ApiException as error:
            print(f"error: creating a FailoverApproval for {namespace}/{args.plan}: "
                  f"{error.status} {error.reason} (creating FailoverApprovals is a permission "
                  "of its own: the aegis-failover-approver role)", file=sys.stderr)
            return 1
        print(f"failoverapproval.{GROUP}/{made['metadata']['name']} created; follow with "
              f"`kubectl aegis failover status {args.plan} -n {namespace}`")
        return 0
    annotation = annotation_for(args, plan.get("status") or {})
    if isinstance(annotation, str):
        print(f"error: {annotation}", file=sys.stderr)
        return 1
    key, value = annotation
    annotations = {key: value}
    accepted = getattr(args, "accept_data_loss", None)
    if accepted:
        annotations[ACCEPT_DATA_LOSS] = " ".join(str(accepted).split())
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, args.plan, {"metadata": {"annotations": annotations}}
    )
    what = {"approve": "approval sent", "trigger": "failover requested",
            "failback": "failback requested"}[args.verb]
    print(f"failoverplan.{GROUP}/{args.plan}: {what} ({key}); follow with "
          f"`kubectl aegis failover status {args.plan} -n {namespace}`")
    return 0


def approval_for(args: argparse.Namespace) -> dict[str, Any]:
    """The FailoverApproval a verb creates for a plan with approval.by: FailoverApproval."""
    spec: dict[str, Any] = {
        "planName": args.plan,
        "action": "Failback" if args.verb == "failback" else "Failover",
        "reason": " ".join(str(getattr(args, "reason", "") or "approved with kubectl aegis")
                           .split())[:256] or "approved with kubectl aegis",
    }
    if getattr(args, "force", False):
        spec["force"] = True
    accepted = getattr(args, "accept_data_loss", None)
    if accepted:
        spec["acceptDataLoss"] = " ".join(str(accepted).split())[:256]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverApproval",
            "metadata": {"generateName": f"{args.plan[:50]}-"}, "spec": spec}


def annotation_for(args: argparse.Namespace, status: dict[str, Any]) -> tuple[str, str] | str:
    """The annotation a verb sets, or an error message."""
    if args.verb == "approve":
        token = args.token or status.get("approvalToken")
        if not token:
            return (f"nothing to approve: the plan is {status.get('state') or 'Monitoring'}, "
                    "not AwaitingApproval (or pass --token)")
        return APPROVE, str(token)
    reason = " ".join(str(args.reason).split()) or "requested with kubectl aegis"
    if args.verb == "trigger":
        return FAILOVER, f"force:{reason}" if args.force else reason
    return FAILBACK, reason


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _ago(value: Any, now: dt.datetime) -> str:
    when = _parse_time(value)
    if when is None:
        return "never"
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _seconds(start: Any, end: Any) -> str:
    a, b = _parse_time(start), _parse_time(end)
    if a is None or b is None:
        return "-"
    return f"{(b - a).total_seconds():.2f}s"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  "
        + row[-1]
        for row in rows
    ]


def render_status(plan: dict[str, Any], now: dt.datetime) -> str:
    """A human summary of a FailoverPlan (pure)."""
    meta, spec, status = plan["metadata"], plan.get("spec") or {}, plan.get("status") or {}
    names = {key: (spec.get(key) or {}).get("name", key) for key in ("primary", "secondary")}
    active = status.get("activeSite") or "primary"
    lines = [
        f"FailoverPlan {meta['namespace']}/{meta['name']}  mode {spec.get('mode', 'Manual')}",
        f"state:        {status.get('state') or 'Monitoring'}",
        f"active site:  {active} ({names.get(active, active)})",
    ]
    if status.get("approvalToken"):
        lines.append(f"approval:     awaiting; run `kubectl aegis failover approve {meta['name']} "
                     f"-n {meta['namespace']}`")
    for key in ("primary", "secondary"):
        site = (status.get("sites") or {}).get(key) or {}
        healthy = site.get("healthy")
        health = {True: "Healthy", False: "Down", None: "Unknown"}[healthy]
        lines.append(
            f"{key:<10}    {names[key]}: {health}, {site.get('consecutiveFailures', 0)} failed "
            f"probe(s) in a row, last probe {_ago(site.get('lastProbeTime'), now)}"
        )
        rep = site.get("replication") or {}
        if rep:
            lines.append(f"    replication: {rep.get('kind')} {rep.get('role')} at "
                         f"{rep.get('position')}"
                         + (f"; {rep['message']}" if rep.get("message") else "")
                         + ("  STALE" if rep.get("stale") else ""))
        checks = site.get("checks") or []
        if checks:
            lines.extend(_table([["CHECK", "OK", "LATENCY", "MESSAGE"]] + [
                [c.get("name", "?"), "yes" if c.get("ok") else "NO",
                 f"{float(c.get('latencyMs') or 0):.1f}ms", c.get("message") or ""]
                for c in checks
            ], indent="    "))
    for condition in status.get("conditions") or []:
        lines.append(f"condition     {condition.get('type')}={condition.get('status')} "
                     f"{condition.get('reason')}: {condition.get('message', '')}")
    last = status.get("lastTransition")
    if not last:
        lines.append("last transition: none")
        return "\n".join(lines)
    lines.append(
        f"last transition: {last.get('kind')} {last.get('result') or ''} ({last.get('id')}): "
        f"{last.get('reason') or ''}"
    )
    lines.append(
        f"  detected {last.get('detectedTime') or '-'}  started {last.get('startTime') or '-'}  "
        f"completed {last.get('completionTime') or '-'}"
    )
    measured = f"  duration {last['durationSeconds']:.2f}s" if last.get("durationSeconds") \
        is not None else "  duration -"
    if last.get("rpoSeconds") is not None:
        measured += (f"  measured RPO {float(last['rpoSeconds']):.3f}s "
                     f"({last.get('lagBytes', 0)} bytes)")
    if last.get("writeOutageSeconds") is not None:
        measured += f"  write outage {float(last['writeOutageSeconds']):.3f}s"
    lines.append(measured)
    if last.get("dataLossAccepted"):
        lines.append(f"  data loss accepted: {last['dataLossAccepted']} (expected "
                     f"{last.get('expectedLagBytes')} bytes / {last.get('expectedLagSeconds')}s)")
    steps = last.get("steps") or []
    if steps:
        lines.extend(_table([["STEP", "STATE", "TOOK", "ATTEMPTS", "MESSAGE"]] + [
            [s.get("name", "?"), s.get("state", "?"),
             _seconds(s.get("startTime"), s.get("completionTime")), str(s.get("attempts") or 0),
             s.get("message") or ""]
            for s in steps
        ]))
    history = status.get("history") or []
    if history:
        lines.append(f"history: {len(history)} earlier transition(s): " + ", ".join(
            f"{t.get('kind')} {t.get('result')} {t.get('startTime')}" for t in history[:5]))
    return "\n".join(lines)
