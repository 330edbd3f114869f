"""The sandbox Job runner builds a container's environment the way kubelet does, and renders
Job status as the Job controller does."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from aegis.sandbox.jobrunner import JobStatus, condition, is_finished
from aegis.sandbox.podenv import (
    ContainerConfigError,
    PodIdentity,
    container_argv,
    expand_references,
    generate_pod_name,
    resolve_env,
)

POD = PodIdentity(
    name="backup-abcde",
    namespace="team-a",
    uid="1234",
    labels={"app": "aegis"},
    annotations={"note": "hi"},
    service_account="aegis-agent",
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("Secret", "db"): {
        "metadata": {"name": "db"},
        "data": {"password": b64("s3cret: ünïcode"), "user": b64("aegis")},
    },
    ("ConfigMap", "settings"): {
        "metadata": {"name": "settings"},
        "data": {"HOST": "db.example", "PORT": "5432", "bad key": "x"},
    },
}


def lookup(kind: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((kind, name))


def env_of(*env: dict[str, Any], env_from: list[dict[str, Any]] | None = None) -> dict[str, str]:
    container: dict[str, Any] = {"name": "c", "env": list(env)}
    if env_from is not None:
        container["envFrom"] = env_from
    return resolve_env(container, POD, lookup)


def test_plain_values_and_refs_resolve_like_kubelet() -> None:
    env = env_of(
        {"name": "PLAIN", "value": "x"},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "HOST", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "HOST"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
    )
    assert env == {
        "PLAIN": "x",
        "PASSWORD": "s3cret: ünïcode",
        "HOST": "db.example",
        "POD": "backup-abcde",
        "NS": "team-a",
        "APP": "aegis",
        "SA": "aegis-agent",
    }


def test_env_from_applies_prefix_skips_invalid_names_and_env_overrides_it() -> None:
    env = env_of(
        {"name": "CFG_PORT", "value": "6543"},
        env_from=[
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "db"}},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
    )
    assert env == {
        "CFG_HOST": "db.example",
        "CFG_PORT": "6543",
        "password": "s3cret: ünïcode",
        "user": "aegis",
    }


def test_missing_required_secret_is_a_container_config_error_naming_it() -> None:
    with pytest.raises(ContainerConfigError, match=r'secret "nope" not found .*env PASSWORD'):
        env_of({"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}})


def test_missing_required_key_names_key_and_object() -> None:
    with pytest.raises(ContainerConfigError, match="couldn't find key nokey in Secret team-a/db"):
        env_of({"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nokey"}}})


def test_missing_optional_refs_leave_the_variable_unset() -> None:
    env = env_of(
        {
            "name": "A",
            "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
        },
        {
            "name": "B",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "x", "optional": True}},
        },
    )
    assert env == {}


def test_missing_required_env_from_source_fails() -> None:
    with pytest.raises(ContainerConfigError, match='configmap "gone" not found'):
        env_of(env_from=[{"configMapRef": {"name": "gone"}}])


def test_unsupported_field_path_says_which_ones_work() -> None:
    with pytest.raises(ContainerConfigError, match=r"status\.phase.*metadata\.name"):
        env_of({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}})


def test_expansion_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_references("$(A)-$(B)", env) == "1-two"
    assert expand_references("$(UNKNOWN)", env) == "$(UNKNOWN)"
    assert expand_references("$$(A)", env) == "$(A)"
    assert expand_references("cost $5 $", env) == "cost $5 $"
    assert expand_references("$(A", env) == "$(A"


def test_env_values_expand_earlier_variables_only() -> None:
    env = env_of(
        {"name": "FIRST", "value": "a"},
        {"name": "SECOND", "value": "$(FIRST)-$(THIRD)"},
        {"name": "THIRD", "value": "c"},
    )
    assert env["SECOND"] == "a-$(THIRD)"


def test_argv_expands_references_and_requires_a_command() -> None:
    container = {"name": "agent", "command": ["aegis", "agent"], "args": ["--pod", "$(POD)"]}
    assert container_argv(container, {"POD": "p-1"}) == ["aegis", "agent", "--pod", "p-1"]
    assert container_argv({"args": ["backup"]}, {}, ("aegis", "agent")) == [
        "aegis",
        "agent",
        "backup",
    ]
    with pytest.raises(ContainerConfigError, match="no command"):
        container_argv({"name": "x", "args": ["a"]}, {})


def test_pod_names_look_like_generate_name() -> None:
    names = {generate_pod_name("backup") for _ in range(20)}
    assert len(names) > 1
    for name in names:
        prefix, suffix = name.rsplit("-", 1)
        assert prefix == "backup"
        assert len(suffix) == 5
        assert set(suffix) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert len(generate_pod_name("x" * 80)) <= 63


def test_status_renders_omitempty_counters_and_keeps_transition_time() -> None:
    early = datetime(2024, 1, 1, tzinfo=UTC)
    status = JobStatus(start_time=early, active=1)
    rendered = status.to_api()
    assert rendered["startTime"] == "2024-01-01T00:00:00Z"
    assert rendered["active"] == 1
    assert rendered["succeeded"] is None
    assert rendered["uncountedTerminatedPods"] == {}
    status.set_condition(condition("Suspended", "JobSuspended", "Job suspended", early))
    later = datetime(2024, 1, 2, tzinfo=UTC)
    status.set_condition(condition("Suspended", "JobSuspended", "again", later))
    assert status.conditions[0]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    assert status.conditions[0]["lastProbeTime"] == "2024-01-02T00:00:00Z"
    assert not is_finished({"status": status.to_api()})
    status.set_condition(condition("Failed", "DeadlineExceeded", "late", later))
    assert is_finished({"status": status.to_api()})
