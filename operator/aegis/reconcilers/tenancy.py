"""A namespaced object never reaches outside its namespace: the spec-time half of the rules
in `aegis.reach`, applied to every kind.

The CRD schema cannot enforce these: a CEL rule sees neither the object's namespace
(only `metadata.name` is visible to it) nor the operator's settings. So a spec the schema
accepts is checked here, when it is accepted and again before anything acts on it:

- FailoverPlan `scale` steps and `workload` checks name a workload in the plan's namespace,
  or one listed in AEGIS_REACHABLE_NAMESPACES (`NamespaceNotAllowed`);
- Job images other than the agent's and ServiceAccounts other than the namespace's
  `default` need AEGIS_ALLOWED_JOB_IMAGES / AEGIS_ALLOWED_SERVICE_ACCOUNTS
  (`ImageNotAllowed`, `ServiceAccountNotAllowed`); a `job` step's containers count too;
- endpoint URLs and hosts that are literal addresses (or metadata / localhost names) must
  pass the address rule (`EndpointNotAllowed`); names are resolved and checked when the
  operator connects (`aegis.reach.EndpointRule.resolve_checked`).

Secret references need no rule: every `...SecretRef` is a name only, always read from the
object's own namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from aegis.agent.manifest import Manifest
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.common import JobOptions
from aegis.api.drdrill import DRDrillSpec
from aegis.api.failoverplan import FailoverPlanSpec, Site, Step
from aegis.api.restore import RestoreSpec, RestoreTarget
from aegis.reach import EndpointRefused, EndpointRule, matches, namespace_allowed
from aegis.reconcilers.validation import SpecError
from aegis.settings import Settings

REACHABLE_FIX = (
    "AEGIS_REACHABLE_NAMESPACES (chart value failover.reachableNamespaces)"
)
IMAGES_FIX = "AEGIS_ALLOWED_JOB_IMAGES (chart value jobs.allowedImages)"
ACCOUNTS_FIX = "AEGIS_ALLOWED_SERVICE_ACCOUNTS (chart value jobs.allowedServiceAccounts)"


class Refused(Exception):
    """A spec that reaches outside its namespace; carries the SpecError to report."""

    def __init__(self, error: SpecError) -> None:
        super().__init__(error.message)
        self.error = error


def refusal(spec: BaseModel, namespace: str, settings: Settings) -> SpecError | None:
    """The first reach of `spec` outside what its namespace may reach, or None."""
    try:
        _check_spec(spec, namespace, settings)
    except Refused as refused:
        return refused.error
    return None


def check(spec: BaseModel, namespace: str, settings: Settings) -> None:
    """Raise Refused when `spec` reaches outside what its namespace may reach."""
    error = refusal(spec, namespace, settings)
    if error is not None:
        raise Refused(error)


def _check_spec(spec: BaseModel, namespace: str, settings: Settings) -> None:
    rule = settings.endpoints
    if isinstance(spec, FailoverPlanSpec):
        for key, site in (("primary", spec.primary), ("secondary", spec.secondary)):
            _site(f"spec.{key}", site, namespace, settings)
        procedures = (("spec.steps", spec.steps), ("spec.failbackSteps", spec.failback_steps))
        for where, steps in procedures:
            for i, step in enumerate(steps or []):
                _step(f"{where}[{i}]", step, namespace, settings)
    elif isinstance(spec, BackupPolicySpec):
        for i, location in enumerate([spec.storage, *(spec.copies or [])]):
            where = "spec.storage" if i == 0 else f"spec.copies[{i - 1}]"
            if location.endpoint:
                _url(rule, f"{where}.endpoint", location.endpoint)
        for i, kms_key in enumerate(spec.encryption.kms_keys or []):
            if kms_key.endpoint:
                _url(rule, f"spec.encryption.kmsKeys[{i}].endpoint", kms_key.endpoint)
        source = spec.source.postgres or spec.source.redis
        if source is not None:
            kind = "postgres" if spec.source.postgres else "redis"
            _host(rule, f"spec.source.{kind}.host", source.host)
        if spec.source.command is not None and spec.source.command.image:
            # The dump runs in the Job's container: the same allow-list as spec.job.image.
            _image("spec.source.command.image", spec.source.command.image, settings)
        _job_options("spec.job", spec.job, settings)
    elif isinstance(spec, RestoreSpec):
        _target("spec.target", spec.target, rule)
        _job_options("spec.job", spec.job, settings)
    elif isinstance(spec, DRDrillSpec):
        if spec.restore is not None and spec.restore.target is not None:
            _target("spec.restore.target", spec.restore.target, rule)
        record = spec.failover.drill_record if spec.failover is not None else None
        if record is not None and record.endpoint:
            _url(rule, "spec.failover.drillRecord.endpoint", record.endpoint)


def _site(where: str, site: Site, namespace: str, settings: Settings) -> None:
    rule = settings.endpoints
    for i, check in enumerate(site.checks):
        at = f"{where}.checks[{i}]"
        if check.workload is not None and check.workload.namespace:
            _namespace(f"{at}.workload.namespace", check.workload.namespace, namespace, settings,
                       "a workload check")
        if check.http is not None:
            _url(rule, f"{at}.http.url", check.http.url)
        if check.tcp is not None:
            _host(rule, f"{at}.tcp.host", check.tcp.host)
        if check.postgres is not None:
            _host(rule, f"{at}.postgres.host", check.postgres.host)
        if check.redis is not None:
            _host(rule, f"{at}.redis.host", check.redis.host)


def _step(where: str, step: Step, namespace: str, settings: Settings) -> None:
    rule = settings.endpoints
    if step.scale is not None and step.scale.namespace:
        _namespace(f"{where}.scale.namespace", step.scale.namespace, namespace, settings,
                   "a scale step")
    if step.webhook is not None:
        _url(rule, f"{where}.webhook.url", step.webhook.url)
    if step.route53 is not None and step.route53.endpoint:
        _url(rule, f"{where}.route53.endpoint", step.route53.endpoint)
    if step.postgres_promote is not None:
        _host(rule, f"{where}.postgresPromote.target.host", step.postgres_promote.target.host)
        fence = step.postgres_promote.fence_primary
        if fence is not None:
            _host(rule, f"{where}.postgresPromote.fencePrimary.host", fence.host)
    # the database steps of issue 13 reach servers the same way
    if step.postgres_switchover is not None:
        _host(rule, f"{where}.postgresSwitchover.target.host",
              step.postgres_switchover.target.host)
        _host(rule, f"{where}.postgresSwitchover.primary.host",
              step.postgres_switchover.primary.host)
    if step.redis_promote is not None:
        _host(rule, f"{where}.redisPromote.target.host", step.redis_promote.target.host)
        if step.redis_promote.fence_primary is not None:
            _host(rule, f"{where}.redisPromote.fencePrimary.host",
                  step.redis_promote.fence_primary.host)
    if step.redis_switchover is not None:
        _host(rule, f"{where}.redisSwitchover.target.host", step.redis_switchover.target.host)
        _host(rule, f"{where}.redisSwitchover.primary.host", step.redis_switchover.primary.host)
    if step.job is not None:
        job_template(f"{where}.job.template", step.job.template, settings)


def _target(where: str, target: RestoreTarget, rule: EndpointRule) -> None:
    if target.postgres is not None:
        _host(rule, f"{where}.postgres.host", target.postgres.host)
    if target.redis is not None:
        _host(rule, f"{where}.redis.host", target.redis.host)


def _refuse(field: str, reason: str, message: str) -> Refused:
    return Refused(SpecError(field=field, reason=reason, message=message))


def _namespace(field: str, target: str, home: str, settings: Settings, what: str) -> None:
    if namespace_allowed(home, target, settings.reachable_namespaces):
        return
    raise _refuse(
        field, "NamespaceNotAllowed",
        f"{field}: {what} may not reach namespace {target}: a FailoverPlan acts only in its "
        f"own namespace ({home}). Fix: remove {field} and keep the workload in {home}, or "
        f"have the operator's administrator list {target} in {REACHABLE_FIX}.",
    )


def _url(rule: EndpointRule, field: str, url: str) -> None:
    try:
        rule.check_url(field, url)
    except EndpointRefused as error:
        raise _refuse(field, EndpointRefused.REASON, f"{error}.") from None


def _host(rule: EndpointRule, field: str, host: str) -> None:
    problem = rule.host_problem(host)
    if problem:
        raise _refuse(
            field, EndpointRefused.REASON,
            f"{field}: {problem}; point it at the server's own address.",
        )


def _image(field: str, image: str, settings: Settings) -> None:
    if image == settings.agent_image or matches(image, settings.allowed_job_images):
        return
    raise _refuse(
        field, "ImageNotAllowed",
        f"{field}: image {image} is not allowed: Jobs run the agent image "
        f"({settings.agent_image}) unless {IMAGES_FIX} lists others. Fix: remove {field}, "
        "or have the operator's administrator allow the image.",
    )


def _service_account(field: str, account: str, settings: Settings) -> None:
    if account == "default" or matches(account, settings.allowed_service_accounts):
        return
    raise _refuse(
        field, "ServiceAccountNotAllowed",
        f"{field}: ServiceAccount {account} is not allowed: Jobs run as the namespace's "
        f"default ServiceAccount unless {ACCOUNTS_FIX} lists it. Fix: remove {field}, or "
        "have the operator's administrator allow it.",
    )


def _job_options(where: str, options: JobOptions | None, settings: Settings) -> None:
    if options is None:
        return
    if options.image:
        _image(f"{where}.image", options.image, settings)
    if options.service_account_name:
        _service_account(f"{where}.serviceAccountName", options.service_account_name, settings)


def job_template(where: str, template: Mapping[str, Any], settings: Settings) -> None:
    """Refuse a `job` step's JobSpec whose containers or ServiceAccount are not allowed.
    Raises Refused; also used by the Job launcher right before it creates the Job."""
    pod_template = template.get("template")
    pod = pod_template.get("spec") if isinstance(pod_template, Mapping) else None
    if not isinstance(pod, Mapping):
        raise _refuse(
            f"{where}.template.spec", "InvalidTemplate",
            f"{where}.template.spec: a job step needs a pod template with containers.",
        )
    images = 0
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(pod.get(kind) or []):
            image = container.get("image") if isinstance(container, Mapping) else None
            _image(f"{where}.template.spec.{kind}[{i}].image", str(image or ""), settings)
            images += 1
    if not images:
        raise _refuse(
            f"{where}.template.spec.containers", "InvalidTemplate",
            f"{where}.template.spec.containers: a job step needs at least one container.",
        )
    for key in ("serviceAccountName", "serviceAccount"):
        account = pod.get(key)
        if account:
            _service_account(f"{where}.template.spec.{key}", str(account), settings)


def manifest_belongs(manifest: Manifest, namespace: str, policy: str) -> bool:
    """A manifest found under a policy's directory is imported only when it says it is a
    backup of that namespace's policy: a bucket shared by several namespaces (or a prefix
    chosen to overlap another's) must not turn their backups into this namespace's points."""
    return manifest.namespace == namespace and manifest.policy == policy
