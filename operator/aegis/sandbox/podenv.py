"""The environment and command line kubelet gives a container, as pure functions.

Used by the sandbox Job runner; kept apart from it so that the rules can be unit-tested with
plain dicts. ``lookup(kind, name)`` returns a Secret or ConfigMap of the pod's namespace as the
API returns it (``data`` base64 for Secrets), or None when it does not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets as random_source
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]
Lookup = Callable[[str, str], JsonDict | None]
"""(kind "Secret" | "ConfigMap", name) → the object as the API returns it, or None if absent."""

POD_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""The alphabet of Kubernetes' generateName suffixes (no vowels, no look-alike digits)."""
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ContainerConfigError(Exception):
    """The container cannot be started: kubelet's CreateContainerConfigError."""


@dataclass(frozen=True)
class PodIdentity:
    """What the downward API can tell a container about its pod."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"
    node_name: str = "sandbox"
    ip: str = "127.0.0.1"


def generate_pod_name(job_name: str) -> str:
    """``<job>-<5 chars>`` as the Job controller's generateName gives (name capped at 63)."""
    suffix = "".join(random_source.choice(POD_NAME_ALPHABET) for _ in range(5))
    return f"{job_name[:57]}-{suffix}"


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, unknown ones kept as
    written, and ``$$`` escapes a ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : close]
            out.append(env[name] if name in env else text[i : close + 1])
            i = close + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _secret_values(secret: JsonDict) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, encoded in (secret.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise ContainerConfigError(
                f"key {key} of Secret {secret.get('metadata', {}).get('name')} is not base64 "
                "of UTF-8 text; an environment variable cannot hold it"
            ) from None
    # The real API server folds stringData into data on write; an emulator may not.
    values.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return values


def _configmap_values(configmap: JsonDict) -> dict[str, str]:
    return {k: str(v) for k, v in (configmap.get("data") or {}).items()}


def _source_values(kind: str, name: str, namespace: str, lookup: Lookup) -> dict[str, str] | None:
    obj = lookup(kind, name)
    if obj is None:
        return None
    return _secret_values(obj) if kind == "Secret" else _configmap_values(obj)


def _key_ref(kind: str, ref: JsonDict, variable: str, namespace: str, lookup: Lookup) -> str | None:
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    values = _source_values(kind, name, namespace, lookup)
    if values is None:
        if optional:
            return None
        raise ContainerConfigError(
            f'{kind.lower()} "{name}" not found (env {variable}); create it in namespace '
            f"{namespace} or mark the reference optional"
        )
    if key not in values:
        if optional:
            return None
        raise ContainerConfigError(
            f"couldn't find key {key} in {kind} {namespace}/{name} (env {variable})"
        )
    return values[key]


_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def _field_ref(path: str, pod: PodIdentity, variable: str) -> str:
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.node_name,
        "spec.serviceAccountName": pod.service_account,
        "status.hostIP": pod.ip,
        "status.hostIPs": pod.ip,
        "status.podIP": pod.ip,
        "status.podIPs": pod.ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_PATH.match(path)
    if match:
        source = pod.labels if match.group(1) == "labels" else pod.annotations
        return source.get(match.group(2), "")
    raise ContainerConfigError(
        f"env {variable}: fieldRef.fieldPath {path!r} is not supported; use metadata.name, "
        "metadata.namespace, metadata.uid, metadata.labels['<key>'], "
        "metadata.annotations['<key>'], spec.nodeName, spec.serviceAccountName or status.podIP"
    )


def resolve_env(container: JsonDict, pod: PodIdentity, lookup: Lookup) -> dict[str, str]:
    """The environment kubelet gives ``container``: ``envFrom`` first, then ``env`` in order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(ref_field)
            if ref is None:
                continue
            values = _source_values(kind, ref.get("name", ""), pod.namespace, lookup)
            if values is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(
                    f'{kind.lower()} "{ref.get("name", "")}" not found (envFrom); create it in '
                    f"namespace {pod.namespace} or mark the reference optional"
                )
            for key, text in values.items():
                # kubelet skips keys that are not valid variable names (and reports an event).
                if ENV_NAME.match(prefix + key):
                    env[prefix + key] = text
    for variable in container.get("env") or []:
        name = variable.get("name", "")
        if "valueFrom" not in variable:
            env[name] = expand_references(str(variable.get("value", "")), env)
            continue
        value_from = variable["valueFrom"] or {}
        value: str | None
        if "secretKeyRef" in value_from:
            value = _key_ref("Secret", value_from["secretKeyRef"], name, pod.namespace, lookup)
        elif "configMapKeyRef" in value_from:
            value = _key_ref(
                "ConfigMap", value_from["configMapKeyRef"], name, pod.namespace, lookup
            )
        elif "fieldRef" in value_from:
            value = _field_ref(value_from["fieldRef"].get("fieldPath", ""), pod, name)
        else:
            raise ContainerConfigError(
                f"env {name}: valueFrom {sorted(value_from)} is not supported by the sandbox "
                "Job runner; use secretKeyRef, configMapKeyRef or fieldRef"
            )
        if value is not None:
            env[name] = value
    return env


def container_argv(
    container: JsonDict, env: Mapping[str, str], default_entrypoint: Sequence[str] = ()
) -> list[str]:
    """``command + args`` with ``$(VAR)`` expanded; the image's entrypoint is unknown here."""
    command = [str(c) for c in container.get("command") or []] or list(default_entrypoint)
    if not command:
        raise ContainerConfigError(
            f"container {container.get('name', '?')} has no command; the sandbox runs no images, "
            "so set spec.template.spec.containers[0].command"
        )
    args = [str(a) for a in container.get("args") or []]
    return [expand_references(part, env) for part in command + args]


def volume_mounts(
    container: JsonDict,
    pod_spec: JsonDict,
    namespace: str,
    claims: Mapping[tuple[str, str], str],
) -> dict[str, str]:
    """The container's mounts the sandbox can materialise, as {mountPath: local path}.

    There is no mount namespace here: a `hostPath` volume is the host directory itself, and
    a `persistentVolumeClaim` volume is the local directory bound to `(namespace, claimName)`
    (`JobRunner.bind_claim`). `emptyDir` and other volumes are not materialised. A claim
    that is not bound fails the attempt, as a pod whose volume cannot mount never starts.
    `readOnly` cannot be enforced on a plain directory: the process is trusted to honour it."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    mounts: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        path = str(mount.get("mountPath") or "").rstrip("/")
        if not path:
            continue
        if "hostPath" in volume:
            mounts[path] = str(volume["hostPath"].get("path") or "").rstrip("/")
        elif "persistentVolumeClaim" in volume:
            claim = str(volume["persistentVolumeClaim"].get("claimName") or "")
            local = claims.get((namespace, claim))
            if local is None:
                raise ContainerConfigError(
                    f"FailedMount: PersistentVolumeClaim {claim} is not bound in the sandbox "
                    "(JobRunner.bind_claim)"
                )
            mounts[path] = str(local).rstrip("/")
    return mounts


def rewrite_mounted_paths(text: str, mounts: Mapping[str, str]) -> str:
    """`text` (an argument or env value) with each mount path, where it stands as a path
    (followed by `/`, a quote or the end), replaced by its local path; a JSON argument stays
    valid JSON."""
    for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        replacement = json.dumps(local)[1:-1] if '"' in text else local
        pattern = re.compile(re.escape(mount_path) + r'(?=/|"|$)')
        text = pattern.sub(replacement.replace("\\", "\\\\"), text)
    return text
