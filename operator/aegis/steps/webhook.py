"""webhook: send a JSON description of the transition. 2xx is success.

Delivery is at least once: when the operator restarts while the call is in flight, the
step is found Running and sent again — at most once more (see MAX_ATTEMPTS in
`aegis.reconcilers.failover`). Both sends carry the same `Idempotency-Key` header and `id`
so receivers can drop the duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from aegis import GROUP, VERSION
from aegis.api.failoverplan import Transition, WebhookStep
from aegis.probes.base import SecretReader, scrub
from aegis.probes.http import guarded_opener
from aegis.reach import EndpointRule
from aegis.reconcilers.conditions import iso
from aegis.steps.base import StepContext, StepResult


def transition_payload(ctx: StepContext, now: dt.datetime) -> dict[str, Any]:
    t: Transition = ctx.transition

    def time(value: dt.datetime | None) -> str | None:
        return iso(value) if value else None

    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "id": f"{ctx.namespace}/{ctx.plan}/{t.id}/{ctx.step}",
        "plan": ctx.plan,
        "namespace": ctx.namespace,
        "kind": t.kind,
        "reason": t.reason,
        "from": ctx.from_site,
        "to": ctx.to_site,
        "detectedTime": time(t.detected_time),
        "startTime": time(t.start_time),
        "sentTime": time(now),
        "attempt": ctx.attempt,
        "lagBytes": t.lag_bytes,
        "rpoSeconds": t.rpo_seconds,
        "steps": [
            {"name": s.name, "state": s.state, "message": s.message,
             "startTime": time(s.start_time), "completionTime": time(s.completion_time)}
            for s in t.steps or []
        ],
    }


def send_json(
    url: str,
    method: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout: float,
    endpoints: EndpointRule | None = None,
) -> int:
    """Send `body`; returns the status code (non-2xx included); raises on no answer, and
    EndpointRefused when the host is not one `endpoints` allows (default: the strict rule),
    before anything is sent."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r}: only http:// and https:// URLs are called")
    rule = endpoints or EndpointRule()
    rule.check_url("webhook.url", url)
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": "application/json", "User-Agent": "aegis-webhook/1"},
    )
    for key, value in headers.items():
        request.add_header(key, value)
    opener = guarded_opener(rule)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as answer:
        answer.close()
        return int(answer.code)


def run_webhook(
    step: WebhookStep,
    ctx: StepContext,
    secrets: SecretReader | None,
    endpoints: EndpointRule | None = None,
) -> StepResult:
    known: list[str] = []
    try:
        headers: dict[str, str] = {}
        if step.headers_secret_ref is not None:
            if secrets is None:
                return StepResult(False, "webhook.headersSecretRef is set but no Secret reader")
            headers = secrets.data(step.headers_secret_ref)
            known.extend(headers.values())
        payload = transition_payload(ctx, dt.datetime.now(dt.UTC))
        headers["Idempotency-Key"] = payload["id"]
        status = send_json(
            step.url, step.method, payload, headers, max(0.1, ctx.remaining()), endpoints
        )
        if 200 <= status < 300:
            return StepResult(True, f"{step.method} {step.url}: HTTP {status}",
                              {"httpStatus": str(status)})
        return StepResult(False, f"{step.method} {step.url}: HTTP {status}, expected 2xx",
                          {"httpStatus": str(status)})
    except Exception as exc:  # an executor reports, it never raises
        reason = getattr(exc, "reason", None) or exc
        return StepResult(False, scrub(f"{step.method} {step.url}: {reason}", known))
