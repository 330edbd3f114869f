"""Helpers of the end-to-end tests: the operator handle, object helpers, waiting."""

from __future__ import annotations

import base64
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kopf.testing import KopfRunner
from kubernetes import client

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorHandle:
    """Starts and stops the operator; a test may restart it (the process stays ours)."""

    env: dict[str, str]
    metrics_port: int
    runners: list[KopfRunner] = field(default_factory=list)
    current: KopfRunner | None = None

    def start(self) -> OperatorHandle:
        assert self.current is None
        runner = KopfRunner(
            ["run", "--all-namespaces", "--standalone", "-m", "aegis.handlers"], timeout=120
        )
        runner.__enter__()
        self.current = runner
        self.runners.append(runner)
        return self

    def stop(self) -> None:
        runner, self.current = self.current, None
        if runner is not None:
            runner.__exit__(None, None, None)
            assert runner.exception is None, runner.output
            assert runner.exit_code == 0, runner.output

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.current is not None and self.current._thread.is_alive()

    @property
    def output(self) -> str:
        return "\n".join(r.output for r in self.runners if r.output)


def custom_api(k8s_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = 90.0, interval: float = 0.2
) -> Any:
    """Poll a real observation until it is truthy (no fixed sleeps standing in for work)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_),
        None,
    )


def get(k8s_api: Any, plural: str, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom_api(k8s_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return obj


def create(k8s_api: Any, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", **body}
    body.setdefault("metadata", {})["namespace"] = namespace
    obj: dict[str, Any] = custom_api(k8s_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )
    return obj


def create_secret(k8s_api: Any, namespace: str, name: str, data: dict[str, bytes | str]) -> None:
    encoded = {
        k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
        for k, v in data.items()
    }
    client.CoreV1Api(k8s_api).create_namespaced_secret(
        namespace, {"metadata": {"name": name}, "data": encoded}
    )


def new_key() -> str:
    """A 32-byte key as base64, as `openssl rand -base64 32` prints it."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def events_for(k8s_api: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    events = client.CoreV1Api(k8s_api).list_namespaced_event(namespace)
    return [
        {"type": e.type, "reason": e.reason, "message": e.message}
        for e in events.items
        if e.involved_object and e.involved_object.name == name
    ]
