"""Built-in kinds in the Kubernetes API emulator: the fields kube-apiserver knows (so unknown
ones can be reported under `fieldValidation`), the Job and Pod validation the real server does
on the fields Aegis writes, the Job selector it generates, the ServiceAccount admission of Pods,
and the `events.k8s.io/v1` view of core Events.

Deliberately partial: only what a difference could hide a bug in Aegis behind. Fields below
the levels listed in `KNOWN_FIELDS` are not checked (see docs/emulator.md).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_errors import FieldCause
from aegis.sandbox.apiserver_schema import DNS1123_LABEL, DNS1123_SUBDOMAIN, go_repr

JsonDict = dict[str, Any]

OBJECT_META = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
})
POD_SPEC = frozenset({
    "volumes", "initContainers", "containers", "ephemeralContainers", "restartPolicy",
    "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "nodeSelector",
    "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "nodeName",
    "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "securityContext",
    "imagePullSecrets", "hostname", "subdomain", "affinity", "schedulerName", "tolerations",
    "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates",
    "runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead",
    "topologySpreadConstraints", "setHostnameAsFQDN", "os", "hostUsers", "schedulingGates",
    "resourceClaims", "resources", "hostnameOverride", "workloadRef",
})
CONTAINER = frozenset({
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources",
    "resizePolicy", "restartPolicy", "restartPolicyRules", "volumeMounts", "volumeDevices",
    "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "terminationMessagePath",
    "terminationMessagePolicy", "imagePullPolicy", "securityContext", "stdin", "stdinOnce",
    "tty",
})
JOB_SPEC = frozenset({
    "parallelism", "completions", "activeDeadlineSeconds", "podFailurePolicy", "successPolicy",
    "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes", "selector", "manualSelector",
    "template", "ttlSecondsAfterFinished", "completionMode", "suspend", "podReplacementPolicy",
    "managedBy",
})
DEPLOYMENT_SPEC = frozenset({
    "replicas", "selector", "template", "strategy", "minReadySeconds", "revisionHistoryLimit",
    "paused", "progressDeadlineSeconds",
})
TEMPLATE = frozenset({"metadata", "spec"})
# Top-level fields per kind (besides apiVersion, kind, metadata); kinds not listed are not
# checked for unknown fields.
TOP_LEVEL: dict[str, frozenset[str]] = {
    "Secret": frozenset({"data", "stringData", "type", "immutable"}),
    "ConfigMap": frozenset({"data", "binaryData", "immutable"}),
    "ServiceAccount": frozenset({"secrets", "imagePullSecrets", "automountServiceAccountToken"}),
    "Pod": frozenset({"spec", "status"}),
    "Job": frozenset({"spec", "status"}),
    "Deployment": frozenset({"spec", "status"}),
    "Namespace": frozenset({"spec", "status"}),
}

QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
QUANTITY_ERROR = ("quantities must match the regular expression "
                  "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
ENV_NAME_ERROR = ("a valid environment variable name must consist only of printable ASCII "
                  "characters other than '='")
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _strip(obj: Any, known: frozenset[str], path: str, out: list[str]) -> None:
    if not isinstance(obj, dict):
        return
    for key in [k for k in obj if k not in known]:
        out.append(_join(path, key))
        del obj[key]


def strip_unknown(kind: str, obj: JsonDict) -> list[str]:
    """Drop the fields a built-in kind does not have (in place); returns their paths."""
    dropped: list[str] = []
    _strip(obj.get("metadata"), OBJECT_META, "metadata", dropped)
    top = TOP_LEVEL.get(kind)
    if top is None:
        return dropped
    _strip(obj, top | {"apiVersion", "kind", "metadata"}, "", dropped)
    spec = obj.get("spec")
    if kind == "Pod":
        _strip_pod_spec(spec, "spec", dropped)
    elif kind in ("Job", "Deployment"):
        _strip(spec, JOB_SPEC if kind == "Job" else DEPLOYMENT_SPEC, "spec", dropped)
        template = spec.get("template") if isinstance(spec, dict) else None
        _strip(template, TEMPLATE, "spec.template", dropped)
        if isinstance(template, dict):
            _strip(template.get("metadata"), OBJECT_META, "spec.template.metadata", dropped)
            _strip_pod_spec(template.get("spec"), "spec.template.spec", dropped)
    return dropped


def _strip_pod_spec(spec: Any, path: str, out: list[str]) -> None:
    _strip(spec, POD_SPEC, path, out)
    if not isinstance(spec, dict):
        return
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            _strip(container, CONTAINER, f"{path}.{group}[{index}]", out)


# ---------------------------------------------------------------------------- decoding


def check_quantities(info_kind: str, version: str, obj: JsonDict) -> None:
    """Resource quantities that do not parse fail decoding: 400, as on the real server."""
    for spec in _pod_specs(info_kind, obj):
        for group in ("initContainers", "containers"):
            for container in spec.get(group) or []:
                resources = container.get("resources") if isinstance(container, dict) else None
                for section in ("limits", "requests"):
                    for value in ((resources or {}).get(section) or {}).values():
                        if isinstance(value, str) and QUANTITY.match(value.strip()):
                            continue
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            continue
                        raise errors.bad_request(
                            f'{info_kind} in version "{version}" cannot be handled as a '
                            f"{info_kind}: {QUANTITY_ERROR}")


def _pod_specs(kind: str, obj: JsonDict) -> list[JsonDict]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    if kind == "Pod":
        return [spec]
    if kind in ("Job", "Deployment"):
        template = spec.get("template") or {}
        pod_spec = template.get("spec") if isinstance(template, dict) else None
        return [pod_spec] if isinstance(pod_spec, dict) else []
    return []


# ---------------------------------------------------------------------------- validation


def _nonnegative(value: Any, path: str, out: list[FieldCause]) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        out.append(FieldCause(path, "FieldValueInvalid",
                              f"Invalid value: {value}: must be greater than or equal to 0"))


def validate_pod_spec(spec: Any, path: str, *, template: bool) -> list[FieldCause]:
    """The checks of `ValidatePodSpec` that cover the fields Aegis and its Jobs write."""
    out: list[FieldCause] = []
    if not isinstance(spec, dict):
        return [FieldCause(f"{path}.containers", "FieldValueRequired", "Required value")]
    volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        name = volume.get("name") if isinstance(volume, dict) else None
        where = f"{path}.volumes[{index}].name"
        if not name:
            out.append(FieldCause(where, "FieldValueRequired", "Required value"))
        elif name in volumes:
            out.append(FieldCause(where, "FieldValueDuplicate",
                                  f"Duplicate value: {go_repr(name)}"))
        elif len(name) > 63 or not DNS1123_LABEL.fullmatch(name):
            out.append(FieldCause(where, "FieldValueInvalid", _label_message(name)))
        volumes.add(str(name))
    containers = spec.get("containers") or []
    if not containers:
        out.append(FieldCause(f"{path}.containers", "FieldValueRequired", "Required value"))
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            out += _validate_container(container, f"{path}.{group}[{index}]", volumes, names)
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        out.append(FieldCause(f"{path}.restartPolicy", "FieldValueNotSupported",
                              f"Unsupported value: {go_repr(policy)}: supported values: "
                              '"Always", "OnFailure", "Never"'))
    account = spec.get("serviceAccountName")
    if account and (len(account) > 253 or not DNS1123_SUBDOMAIN.fullmatch(str(account))):
        out.append(FieldCause(f"{path}.serviceAccountName", "FieldValueInvalid",
                              f"Invalid value: {go_repr(account)}: a lowercase RFC 1123 "
                              "subdomain must consist of lower case alphanumeric characters, "
                              "'-' or '.', and must start and end with an alphanumeric "
                              "character (e.g. 'example.com', regex used for validation is "
                              f"'{DNS1123_SUBDOMAIN.pattern}')"))
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and not 1 <= deadline <= 2**31 - 1:
        out.append(FieldCause(f"{path}.activeDeadlineSeconds", "FieldValueInvalid",
                              f"Invalid value: {deadline}: must be between 1 and 2147483647, "
                              "inclusive"))
    del template  # the same checks apply to a Pod and to a template
    return out


def _label_message(name: str) -> str:
    return (f"Invalid value: {go_repr(name)}: a lowercase RFC 1123 label must consist of lower "
            "case alphanumeric characters or '-', and must start and end with an alphanumeric "
            "character (e.g. 'my-name',  or '123-abc', regex used for validation is "
            f"'{DNS1123_LABEL.pattern}')")


def _validate_container(container: Any, path: str, volumes: set[str],
                        names: set[str]) -> list[FieldCause]:
    out: list[FieldCause] = []
    if not isinstance(container, dict):
        return out
    name = container.get("name")
    if not name:
        out.append(FieldCause(f"{path}.name", "FieldValueRequired", "Required value"))
    elif name in names:
        out.append(FieldCause(f"{path}.name", "FieldValueDuplicate",
                              f"Duplicate value: {go_repr(name)}"))
    elif len(name) > 63 or not DNS1123_LABEL.fullmatch(str(name)):
        out.append(FieldCause(f"{path}.name", "FieldValueInvalid", _label_message(str(name))))
    names.add(str(name))
    if not container.get("image"):
        out.append(FieldCause(f"{path}.image", "FieldValueRequired", "Required value"))
    for index, env in enumerate(container.get("env") or []):
        env_name = env.get("name") if isinstance(env, dict) else None
        where = f"{path}.env[{index}].name"
        if not env_name:
            out.append(FieldCause(where, "FieldValueRequired", "Required value"))
        elif "=" in env_name or any(not 32 <= ord(c) <= 126 for c in env_name):
            out.append(FieldCause(where, "FieldValueInvalid",
                                  f"Invalid value: {go_repr(env_name)}: {ENV_NAME_ERROR}"))
    for index, mount in enumerate(container.get("volumeMounts") or []):
        if not isinstance(mount, dict):
            continue
        where = f"{path}.volumeMounts[{index}]"
        mount_name = mount.get("name")
        if not mount_name:
            out.append(FieldCause(f"{where}.name", "FieldValueRequired", "Required value"))
        elif mount_name not in volumes:
            out.append(FieldCause(f"{where}.name", "FieldValueNotFound",
                                  f"Not found: {go_repr(mount_name)}"))
        if not mount.get("mountPath"):
            out.append(FieldCause(f"{where}.mountPath", "FieldValueRequired", "Required value"))
    return out


def validate_job(job: JsonDict) -> list[FieldCause]:
    """`ValidateJob`'s checks of the fields Aegis writes (after the selector is generated)."""
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return [FieldCause("spec.template.spec.containers", "FieldValueRequired",
                           "Required value")]
    out: list[FieldCause] = []
    for key in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit",
                "ttlSecondsAfterFinished", "backoffLimitPerIndex", "maxFailedIndexes"):
        _nonnegative(spec.get(key), f"spec.{key}", out)
    selector = spec.get("selector")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, dict):
        out.append(FieldCause("spec.selector", "FieldValueRequired", "Required value"))
    elif any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        out.append(FieldCause("spec.template.metadata.labels", "FieldValueInvalid",
                              f"Invalid value: {go_repr(labels)}: `selector` does not match "
                              "template `labels`"))
    out += validate_pod_spec(template.get("spec"), "spec.template.spec", template=True)
    policy = (template.get("spec") or {}).get("restartPolicy", "Always")
    if policy not in ("OnFailure", "Never"):
        out.append(FieldCause("spec.template.spec.restartPolicy", "FieldValueNotSupported",
                              f"Unsupported value: {go_repr(policy)}: supported values: "
                              '"OnFailure", "Never"'))
    return out


def validate_job_update(job: JsonDict, old: JsonDict) -> list[FieldCause]:
    """`ValidateJobSpecUpdate`: the selector and the pod template are immutable (a suspended
    Job that never started may change its template's scheduling fields and metadata)."""
    spec, old_spec = job.get("spec") or {}, old.get("spec") or {}
    out: list[FieldCause] = []
    if spec.get("selector") != old_spec.get("selector"):
        out.append(FieldCause("spec.selector", "FieldValueInvalid",
                              f"Invalid value: {go_repr(spec.get('selector'))}: field is "
                              "immutable"))
    template, old_template = spec.get("template") or {}, old_spec.get("template") or {}
    if template != old_template:
        mutable = ("nodeSelector", "tolerations", "schedulingGates", "affinity")
        never_started = not (old.get("status") or {}).get("startTime")
        if old_spec.get("suspend") and never_started:
            strip = {k: v for k, v in (template.get("spec") or {}).items() if k not in mutable}
            old_strip = {k: v for k, v in (old_template.get("spec") or {}).items()
                         if k not in mutable}
            if strip == old_strip:
                return out
        out.append(FieldCause("spec.template", "FieldValueInvalid",
                              f"Invalid value: {go_repr(template)}: field is immutable"))
    return out


def prepare_job_create(job: JsonDict) -> list[FieldCause]:
    """The Job strategy's create preparation: the generated `controller-uid` selector and
    template labels (unless `manualSelector: true`), and the defaults Aegis depends on."""
    meta = job["metadata"]
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return []
    spec.setdefault("backoffLimit", 6)
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"], spec["parallelism"] = 1, 1
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    if spec.get("manualSelector") is True:
        return []
    uid, name = meta["uid"], meta["name"]
    template = spec.setdefault("template", {})
    if not isinstance(template, dict):
        return []
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    for key, value in (("batch.kubernetes.io/controller-uid", uid), ("controller-uid", uid),
                       ("batch.kubernetes.io/job-name", name), ("job-name", name)):
        labels.setdefault(key, value)
    # The user's matchLabels are kept and the controller-uid added; validation then refuses a
    # selector that the generated labels alone would not satisfy.
    raw_selector = spec.get("selector")
    given: JsonDict = raw_selector if isinstance(raw_selector, dict) else {}
    match = {**(given.get("matchLabels") or {})}
    match.setdefault("batch.kubernetes.io/controller-uid", uid)
    selector = {**given, "matchLabels": match}
    spec["selector"] = selector
    expected = {"batch.kubernetes.io/controller-uid": uid}
    if given.get("matchExpressions") or any(expected.get(k) != v for k, v in match.items()):
        return [FieldCause("spec.selector", "FieldValueInvalid",
                           f"Invalid value: {go_repr(selector)}: `selector` not auto-generated")]
    return []


# ---------------------------------------------------------------------------- service accounts


def service_account_volume(pod: JsonDict) -> None:
    """The ServiceAccount admission plugin's projected token volume, mounted in every
    container, unless the Pod (or, by the caller, its ServiceAccount) opts out."""
    spec = pod["spec"]
    suffix = "".join(secrets.choice(SA_ALPHABET) for _ in range(5))
    name = f"kube-api-access-{suffix}"
    spec.setdefault("volumes", []).append({"name": name, "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}})
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            if any(m.get("mountPath") == TOKEN_MOUNT for m in container.get("volumeMounts") or []):
                continue
            container.setdefault("volumeMounts", []).append(
                {"name": name, "readOnly": True, "mountPath": TOKEN_MOUNT})


# ---------------------------------------------------------------------------- events

# events.k8s.io/v1 field ↔ core/v1 field, as in pkg/apis/events/v1/conversion.go.
EVENT_FIELDS = (
    ("regarding", "involvedObject"), ("note", "message"), ("reason", "reason"),
    ("type", "type"), ("related", "related"), ("eventTime", "eventTime"),
    ("action", "action"), ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"), ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"), ("deprecatedCount", "count"),
)


def event_to_events_v1(core: JsonDict) -> JsonDict:
    """A stored core/v1 Event as `events.k8s.io/v1` shows it."""
    out: JsonDict = {"kind": "Event", "apiVersion": "events.k8s.io/v1",
                     "metadata": core.get("metadata", {})}
    for new, old in EVENT_FIELDS:
        if old in core and core[old] is not None:
            out[new] = core[old]
    series = core.get("series")
    if isinstance(series, dict):
        out["series"] = {"count": series.get("count"),
                         "lastObservedTime": series.get("lastObservedTime")}
    return out


def event_from_events_v1(new: JsonDict) -> JsonDict:
    """An `events.k8s.io/v1` Event body in the core/v1 shape it is stored in."""
    out: JsonDict = {"kind": "Event", "apiVersion": "v1", "metadata": new.get("metadata", {})}
    for field_new, field_old in EVENT_FIELDS:
        if field_new in new:
            out[field_old] = new[field_new]
    if isinstance(new.get("series"), dict):
        out["series"] = dict(new["series"])
    return out


def validate_core_event(event: JsonDict) -> list[FieldCause]:
    """`legacyValidateEvent`: what every Event create passes, whichever API it came through.
    An event about an object of another namespace is refused: it cannot leak across."""
    out: list[FieldCause] = []
    namespace = (event.get("metadata") or {}).get("namespace", "")
    involved_ns = (event.get("involvedObject") or {}).get("namespace") or ""
    mismatch = FieldCause("involvedObject.namespace", "FieldValueInvalid",
                          f"Invalid value: {go_repr(involved_ns)}: does not match "
                          "event.namespace")
    if not event.get("eventTime"):
        if (not involved_ns and namespace not in ("", "default")) or (
                involved_ns and involved_ns != namespace):
            out.append(mismatch)
        return out
    if not involved_ns and namespace not in ("default", "kube-system"):
        out.append(mismatch)
    for key, limit in (("reportingComponent", 0), ("reportingInstance", 128),
                       ("action", 128), ("reason", 128)):
        value = event.get(key) or ""
        if not value:
            out.append(FieldCause(key, "FieldValueRequired", "Required value"))
        elif limit and len(value) > limit:
            out.append(FieldCause(key, "FieldValueInvalid",
                                  f'Invalid value: "": can have at most {limit} characters'))
    message = event.get("message")
    if isinstance(message, str) and len(message) > 4096:
        out.append(FieldCause("message", "FieldValueInvalid",
                              'Invalid value: "": can have at most 4096 characters'))
    return out


def validate_events_v1(event: JsonDict) -> list[FieldCause]:
    """The create checks of an `events.k8s.io/v1` Event (ValidateEventCreate for v1)."""
    out: list[FieldCause] = []
    for key, path in (("eventTime", "eventTime"), ("reportingController", "reportingController"),
                      ("reportingInstance", "reportingInstance"), ("action", "action"),
                      ("reason", "reason")):
        if not event.get(key):
            out.append(FieldCause(path, "FieldValueRequired", "Required value"))
    if event.get("type") not in ("Normal", "Warning"):
        out.append(FieldCause("type", "FieldValueInvalid",
                              f'Invalid value: "": has invalid value: {event.get("type") or ""}'))
    for key in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount",
                "deprecatedSource"):
        if event.get(key):
            out.append(FieldCause(key, "FieldValueInvalid",
                                  'Invalid value: "": needs to be unset'))
    note = event.get("note")
    if isinstance(note, str) and len(note) > 1024:
        out.append(FieldCause("note", "FieldValueInvalid",
                              'Invalid value: "": can have at most 1024 characters'))
    return out
