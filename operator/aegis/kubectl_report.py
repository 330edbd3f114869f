"""`kubectl aegis report [-n NS | -A] [--since 90d] [--format markdown|html]`: the DR evidence
report for a review or an audit, from what the cluster's Aegis objects record.

Per BackupPolicy: the RPO objective against the achieved one (now, and the worst gap between
consecutive backups in the period), backups succeeded and failed, verified points, the
drills that restored the policy's points (measured RTO and RPO against their objectives),
and the failovers of the namespace with their timings. Every number is copied from status
(measured by the operator); nothing is estimated here. The HTML form is one self-contained
file with inline SVG charts (no scripts, no external resources).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import itertools
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aegis import GROUP, VERSION
from aegis.agent.layout import DRILLS_DIRECTORY, LayoutError, parse_s3_url

PLURALS = ("backuppolicies", "recoverypoints", "drdrills", "failoverplans")
_DURATION = re.compile(r"^(\d+)([dhm])$")


def parse_since(text: str) -> dt.timedelta:
    """`90d`, `12h`, `30m`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number and d, h or m, e.g. 90d")
    value, unit = int(match.group(1)), match.group(2)
    return {"d": dt.timedelta(days=value), "h": dt.timedelta(hours=value)}.get(
        unit, dt.timedelta(minutes=value)
    )


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- the report's content (pure) ---------------------------------------------------------------


@dataclass
class DrillRunRow:
    drill: str
    start: dt.datetime
    result: str
    reason: str
    point: str
    rto: float | None
    rpo: float | None
    rto_objective: float | None
    rpo_objective: float | None


@dataclass
class PolicyReport:
    namespace: str
    name: str
    rpo_objective: float | None
    current_rpo: float | None
    succeeded: int = 0
    failed: int = 0
    verified: int = 0
    gaps: list[tuple[dt.datetime, float]] = field(default_factory=list)
    """(source time of a point, seconds since the previous point's source time)."""
    drills: list[DrillRunRow] = field(default_factory=list)

    @property
    def worst_gap(self) -> float | None:
        return max((g for _, g in self.gaps), default=None)


@dataclass
class FailoverRow:
    namespace: str
    plan: str
    kind: str
    reason: str
    start: dt.datetime | None
    duration: float | None
    state: str


@dataclass
class FailoverDrillRow:
    namespace: str
    drill: str
    plan: str
    mode: str
    start: dt.datetime
    result: str
    reason: str
    rto: float | None
    rto_predicted: bool
    rto_objective: float | None
    data_lost_bytes: int | None

    @property
    def rto_label(self) -> str:
        """The RTO as recorded, saying whether it was predicted (DryRun) or measured (Live)."""
        if self.rto is None:
            return "-"
        return f"{_s(self.rto)} ({'predicted' if self.rto_predicted else 'measured'})"


@dataclass
class Report:
    scope: str
    since: dt.datetime
    now: dt.datetime
    policies: list[PolicyReport]
    failovers: list[FailoverRow]
    failover_drills: list[FailoverDrillRow] = field(default_factory=list)


def _policy_of_point(point: dict[str, Any]) -> str | None:
    ref = (point.get("spec") or {}).get("policyRef") or {}
    name = ref.get("name")
    return str(name) if name else None


def build_report(
    objects: dict[str, list[dict[str, Any]]], scope: str, since: dt.datetime, now: dt.datetime
) -> Report:
    """The report from listed objects (`objects[plural]`), for the period since `since`."""
    points_by_policy: dict[tuple[str, str], list[dict[str, Any]]] = {}
    point_policy: dict[tuple[str, str], str] = {}
    for point in objects.get("recoverypoints", []):
        meta, policy = point["metadata"], _policy_of_point(point)
        if policy:
            points_by_policy.setdefault((meta["namespace"], policy), []).append(point)
            point_policy[(meta["namespace"], meta["name"])] = policy
    policies = []
    for body in sorted(
        objects.get("backuppolicies", []),
        key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"]),
    ):
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        key = (meta["namespace"], meta["name"])
        report = PolicyReport(
            meta["namespace"],
            meta["name"],
            _num((spec.get("objectives") or {}).get("rpoSeconds")),
            _num(status.get("currentRPOSeconds")),
        )
        completed: list[dt.datetime] = []
        for point in points_by_policy.get(key, []):
            pstatus = point.get("status") or {}
            when = _time(pstatus.get("startTime")) or _time(
                point["metadata"].get("creationTimestamp")
            )
            phase = pstatus.get("phase")
            source = _time(pstatus.get("sourceTime"))
            if phase == "Completed" and source is not None:
                completed.append(source)
            if when is None or when < since:
                continue
            if phase == "Completed":
                report.succeeded += 1
            elif phase in ("Failed", "Corrupted"):
                report.failed += 1
            conditions = pstatus.get("conditions") or []
            if any(c.get("type") == "Verified" and c.get("status") == "True" for c in conditions):
                report.verified += 1
        completed.sort()
        report.gaps = [
            (b, (b - a).total_seconds()) for a, b in itertools.pairwise(completed) if b >= since
        ]
        policies.append(report)
    by_key = {(p.namespace, p.name): p for p in policies}
    failover_drills: list[FailoverDrillRow] = []
    for drill in objects.get("drdrills", []):
        meta, spec, status = drill["metadata"], drill.get("spec") or {}, drill.get("status") or {}
        objectives = spec.get("objectives") or {}
        declared = ((spec.get("restore") or {}).get("policyRef") or {}).get("name")
        runs = list(status.get("history") or [])
        last = status.get("lastRun") or {}
        if last and all(r.get("startTime") != last.get("startTime") for r in runs):
            runs.insert(0, last)
        for run in runs:
            start = _time(run.get("startTime"))
            if start is None or start < since or run.get("result") not in ("Passed", "Failed"):
                continue
            if spec.get("type") == "Failover":
                failover = spec.get("failover") or {}
                lost = run.get("dataLostBytes")
                failover_drills.append(
                    FailoverDrillRow(
                        meta["namespace"],
                        meta["name"],
                        str(run.get("plan") or (failover.get("planRef") or {}).get("name") or ""),
                        str(failover.get("mode") or "DryRun"),
                        start,
                        str(run.get("result")),
                        str(run.get("reason") or ""),
                        _num(run.get("rtoSeconds")),
                        bool(run.get("rtoPredicted")),
                        _num(objectives.get("rtoSeconds")),
                        int(lost) if isinstance(lost, int) else None,
                    )
                )
                continue
            point_name = str(run.get("recoveryPoint") or "")
            policy = point_policy.get((meta["namespace"], point_name)) or declared
            target = by_key.get((meta["namespace"], str(policy)))
            if target is None:
                continue
            target.drills.append(
                DrillRunRow(
                    meta["name"],
                    start,
                    str(run.get("result")),
                    str(run.get("reason") or ""),
                    point_name,
                    _num(run.get("rtoSeconds")),
                    _num(run.get("rpoSeconds")),
                    _num(objectives.get("rtoSeconds")),
                    _num(objectives.get("rpoSeconds")),
                )
            )
    for policy_report in policies:
        policy_report.drills.sort(key=lambda r: r.start)
    failovers = []
    for plan in objects.get("failoverplans", []):
        meta, status = plan["metadata"], plan.get("status") or {}
        transitions = list(status.get("history") or [])
        last = status.get("lastTransition")
        if last and all(t.get("startTime") != last.get("startTime") for t in transitions):
            transitions.insert(0, last)
        for item in transitions:
            start = _time(item.get("startTime"))
            if start is not None and start < since:
                continue
            failovers.append(
                FailoverRow(
                    meta["namespace"],
                    meta["name"],
                    str(item.get("kind") or ""),
                    str(item.get("reason") or ""),
                    start,
                    _num(item.get("durationSeconds")),
                    str(status.get("state") or ""),
                )
            )
    failovers.sort(key=lambda f: f.start or since)
    failover_drills.sort(key=lambda d: (d.namespace, d.drill, d.start))
    return Report(scope, since, now, policies, failovers, failover_drills)


def load_evidence(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every drill evidence record under `prefix` (the runs' JSON written beside the policies'
    points, `.../<policy>/_drills/<drill>/<run>.json`): the history a fresh cluster has."""
    records = []
    paginator = client.get_paginator("list_objects_v2")
    start = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    for page in paginator.paginate(Bucket=bucket, Prefix=start):
        for item in page.get("Contents") or []:
            key = str(item["Key"])
            parts = key.split("/")
            if len(parts) < 3 or parts[-3] != DRILLS_DIRECTORY or not key.endswith(".json"):
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                record = json.loads(body)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("kind") == "DrillEvidence":
                records.append(record)
    return records


def add_evidence(report: Report, records: list[dict[str, Any]], namespace: str | None) -> None:
    """Drill runs from the bucket that the cluster does not show (deleted drills, history
    beyond historyLimit, a new cluster): added to their policy, made if the cluster lacks it."""
    by_key = {(p.namespace, p.name): p for p in report.policies}
    for record in records:
        ns, policy, run = record.get("namespace"), record.get("policy"), record.get("run") or {}
        start = _time(run.get("startTime"))
        if not ns or not policy or start is None or start < report.since:
            continue
        if namespace is not None and ns != namespace:
            continue
        if run.get("result") not in ("Passed", "Failed"):
            continue
        target = by_key.get((ns, policy))
        if target is None:
            target = by_key[(ns, policy)] = PolicyReport(ns, policy, None, None)
            report.policies.append(target)
        drill = str(record.get("drill") or "")
        if any(d.drill == drill and d.start == start for d in target.drills):
            continue
        objectives = record.get("objectives") or {}
        target.drills.append(
            DrillRunRow(
                drill,
                start,
                str(run.get("result")),
                str(run.get("reason") or ""),
                str(run.get("recoveryPoint") or ""),
                _num(run.get("rtoSeconds")),
                _num(run.get("rpoSeconds")),
                _num(objectives.get("rtoSeconds")),
                _num(objectives.get("rpoSeconds")),
            )
        )
    for policy_report in report.policies:
        policy_report.drills.sort(key=lambda r: r.start)
    report.policies.sort(key=lambda p: (p.namespace, p.name))


# --- rendering (pure) --------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _met(value: float | None, objective: float | None) -> str:
    if value is None or objective is None:
        return "-"
    return "met" if value <= objective else "MISSED"


def _day(value: dt.datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def render_markdown(report: Report) -> str:
    out = [
        "# Aegis DR evidence report",
        "",
        f"Scope: {report.scope}. Period: {_day(report.since)} to {_day(report.now)}.",
        "Every figure is a measurement recorded by the Aegis operator.",
        "",
    ]
    for p in report.policies:
        out += [
            f"## BackupPolicy {p.namespace}/{p.name}",
            "",
            "| RPO objective | current RPO | worst gap between backups | backups succeeded | "
            "backups failed | verified points |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {_s(p.rpo_objective)} "
            f"| {_s(p.current_rpo)} ({_met(p.current_rpo, p.rpo_objective)}) "
            f"| {_s(p.worst_gap)} ({_met(p.worst_gap, p.rpo_objective)}) | {p.succeeded} "
            f"| {p.failed} | {p.verified} |",
            "",
        ]
        if p.drills:
            out += [
                "| drill | start | result | point | RTO | RTO objective | RPO | RPO objective |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            out += [
                f"| {d.drill} | {_day(d.start)} | {d.result} ({d.reason}) | {d.point} "
                f"| {_s(d.rto)} | {_s(d.rto_objective)} {_met(d.rto, d.rto_objective)} "
                f"| {_s(d.rpo)} | {_s(d.rpo_objective)} {_met(d.rpo, d.rpo_objective)} |"
                for d in p.drills
            ]
        else:
            out.append("No drill restored this policy's points in the period.")
        out.append("")
    out += ["## Failovers", ""]
    if report.failovers:
        out += ["| plan | kind | reason | start | duration |", "| --- | --- | --- | --- | --- |"]
        out += [
            f"| {f.namespace}/{f.plan} | {f.kind} | {f.reason} | {_day(f.start)} "
            f"| {_s(f.duration)} |"
            for f in report.failovers
        ]
    else:
        out.append("No failover or failback in the period.")
    out += ["", "## Failover drills", ""]
    if report.failover_drills:
        out += [
            "| drill | plan | mode | start | result | RTO | RTO objective | data lost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {d.namespace}/{d.drill} | {d.plan} | {d.mode} | {_day(d.start)} "
            f"| {d.result} ({d.reason}) | {d.rto_label} "
            f"| {_s(d.rto_objective)} {_met(d.rto, d.rto_objective)} "
            f"| {'-' if d.data_lost_bytes is None else f'{d.data_lost_bytes} B'} |"
            for d in report.failover_drills
        ]
    else:
        out.append("No failover drill ran in the period.")
    return "\n".join(out) + "\n"


def svg_bars(
    title: str, values: list[tuple[str, float | None]], objective: float | None, unit: str = "s"
) -> str:
    """A bar chart (one bar per run) with the objective as a dashed line."""
    width, height, left, bottom, top = 640, 220, 56, 28, 24
    numbers = [v for _, v in values if v is not None]
    peak = max([*numbers, objective or 0.0, 1e-9])
    scale = (height - bottom - top) / (peak * 1.1)
    slot = (width - left - 10) / max(len(values), 1)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" '
        'stroke="#333"/>',
    ]
    for i, (label, value) in enumerate(values):
        x = left + i * slot + slot * 0.15
        if value is not None:
            bar = value * scale
            over = objective is not None and value > objective
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{height - bottom - bar:.1f}" '
                f'width="{slot * 0.7:.1f}" height="{bar:.1f}" '
                f'fill="{"#c0392b" if over else "#2e86c1"}"><title>{html.escape(label)}: '
                f"{value:.1f}{unit}</title></rect>"
            )
        parts.append(
            f'<text x="{x:.1f}" y="{height - 10}" font-size="9">{html.escape(label[-14:])}</text>'
        )
    if objective is not None:
        y = height - bottom - objective * scale
        parts.append(
            f'<line class="objective" x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
            'stroke="#e67e22" stroke-dasharray="6 4"/>'
            f'<text x="4" y="{y + 4:.1f}" font-size="10">{objective:.0f}{unit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
    "margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}"
    "th{background:#eee}.missed{color:#c0392b;font-weight:bold}"
)


def _cell(text: str, bad: bool = False) -> str:
    return (
        f'<td class="missed">{html.escape(text)}</td>' if bad else f"<td>{html.escape(text)}</td>"
    )


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no external resources."""
    body = [
        "<h1>Aegis DR evidence report</h1>",
        f"<p>Scope: {html.escape(report.scope)}. Period: {_day(report.since)} to "
        f"{_day(report.now)}. Every figure is a measurement recorded by the Aegis operator.</p>",
    ]
    for p in report.policies:
        body.append(f"<h2>BackupPolicy {html.escape(p.namespace)}/{html.escape(p.name)}</h2>")
        body.append(
            "<table><tr><th>RPO objective</th><th>current RPO</th><th>worst gap between backups"
            "</th><th>backups succeeded</th><th>backups failed</th><th>verified points</th></tr>"
            "<tr>"
            + _cell(_s(p.rpo_objective))
            + _cell(_s(p.current_rpo), _met(p.current_rpo, p.rpo_objective) == "MISSED")
            + _cell(_s(p.worst_gap), _met(p.worst_gap, p.rpo_objective) == "MISSED")
            + _cell(str(p.succeeded))
            + _cell(str(p.failed), p.failed > 0)
            + _cell(str(p.verified))
            + "</tr></table>"
        )
        if p.gaps:
            body.append(
                svg_bars(
                    "RPO over time: gap between consecutive backups",
                    [(_day(t), g) for t, g in p.gaps],
                    p.rpo_objective,
                )
            )
        if p.drills:
            body.append(
                "<table><tr><th>drill</th><th>start</th><th>result</th><th>point</th><th>RTO</th>"
                "<th>RTO objective</th><th>RPO</th><th>RPO objective</th></tr>"
            )
            for d in p.drills:
                body.append(
                    "<tr>"
                    + _cell(d.drill)
                    + _cell(_day(d.start))
                    + _cell(f"{d.result} ({d.reason})", d.result != "Passed")
                    + _cell(d.point)
                    + _cell(_s(d.rto), _met(d.rto, d.rto_objective) == "MISSED")
                    + _cell(_s(d.rto_objective))
                    + _cell(_s(d.rpo), _met(d.rpo, d.rpo_objective) == "MISSED")
                    + _cell(_s(d.rpo_objective))
                    + "</tr>"
                )
            body.append("</table>")
            for drill in sorted({d.drill for d in p.drills}):
                runs = [d for d in p.drills if d.drill == drill]
                body.append(
                    svg_bars(
                        f"Drill {drill}: measured RTO per run",
                        [(_day(d.start), d.rto) for d in runs],
                        runs[-1].rto_objective,
                    )
                )
        else:
            body.append("<p>No drill restored this policy's points in the period.</p>")
    body.append("<h2>Failovers</h2>")
    if report.failovers:
        body.append(
            "<table><tr><th>plan</th><th>kind</th><th>reason</th><th>start</th>"
            "<th>duration</th></tr>"
        )
        for f in report.failovers:
            body.append(
                "<tr>"
                + _cell(f"{f.namespace}/{f.plan}")
                + _cell(f.kind)
                + _cell(f.reason)
                + _cell(_day(f.start))
                + _cell(_s(f.duration))
                + "</tr>"
            )
        body.append("</table>")
    else:
        body.append("<p>No failover or failback in the period.</p>")
    body.append("<h2>Failover drills</h2>")
    if report.failover_drills:
        body.append(
            "<table><tr><th>drill</th><th>plan</th><th>mode</th><th>start</th><th>result</th>"
            "<th>RTO</th><th>RTO objective</th><th>data lost</th></tr>"
        )
        for fd in report.failover_drills:
            lost = "-" if fd.data_lost_bytes is None else f"{fd.data_lost_bytes} B"
            body.append(
                "<tr>"
                + _cell(f"{fd.namespace}/{fd.drill}")
                + _cell(fd.plan)
                + _cell(fd.mode)
                + _cell(_day(fd.start))
                + _cell(f"{fd.result} ({fd.reason})", fd.result != "Passed")
                + _cell(fd.rto_label, _met(fd.rto, fd.rto_objective) == "MISSED")
                + _cell(_s(fd.rto_objective))
                + _cell(lost, bool(fd.data_lost_bytes))
                + "</tr>"
            )
        body.append("</table>")
        for key in sorted({(fd.namespace, fd.drill) for fd in report.failover_drills}):
            series = [r for r in report.failover_drills if (r.namespace, r.drill) == key]
            body.append(
                svg_bars(
                    f"Failover drill {key[1]}: RTO per run",
                    [(_day(r.start), r.rto) for r in series],
                    series[-1].rto_objective,
                )
            )
    else:
        body.append("<p>No failover drill ran in the period.</p>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Aegis DR evidence report</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


# --- the command -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl aegis report", description=__doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", default=None)
    where.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--since", type=parse_since, default=parse_since("90d"), help="e.g. 90d")
    p.add_argument("--format", choices=["markdown", "html"], default="markdown")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument(
        "--bucket",
        metavar="S3_URL",
        help="also read the drills' evidence records under s3://bucket/prefix (a policy's "
        "storage): runs the cluster no longer shows, or a fresh cluster's history. AWS "
        "credentials from the environment, as the AWS CLI takes them",
    )
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for --bucket")
    return p


def main(argv: Sequence[str]) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from aegis.kubectl import api_client, default_namespace

    args = parser().parse_args(list(argv))
    api = client.CustomObjectsApi(api_client())
    namespace = None if args.all_namespaces else args.namespace or default_namespace()
    listed: dict[str, list[dict[str, Any]]] = {}
    try:
        for plural in PLURALS:
            if namespace is None:
                found = api.list_cluster_custom_object(GROUP, VERSION, plural)
            else:
                found = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
            listed[plural] = list(found.get("items") or [])
    except ApiException as error:
        print(f"error: listing Aegis objects: {error.reason}", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    scope = "all namespaces" if namespace is None else f"namespace {namespace}"
    report = build_report(listed, scope, now - args.since, now)
    if args.bucket:
        from botocore.exceptions import BotoCoreError, ClientError

        from aegis.agent.s3 import new_client

        try:
            bucket, prefix = parse_s3_url(args.bucket)
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            s3 = new_client(args.endpoint_url, region, {})
            add_evidence(report, load_evidence(s3, bucket, prefix), namespace)
        except (LayoutError, BotoCoreError, ClientError) as error:
            print(f"error: reading evidence from {args.bucket}: {error}", file=sys.stderr)
            return 1
    text = render_html(report) if args.format == "html" else render_markdown(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0
