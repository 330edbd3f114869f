"""Helpers of the failover integration tests: a Secret reader over a dict (standing in for
the operator's Kubernetes-backed one) and the HTTP endpoints the tests control."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from aegis.api.common import SecretKeyRef, SecretRef
from aegis.reach import EndpointRule

# Every server of these tests listens on 127.0.0.1, which a cluster install refuses.
LOOPBACK = EndpointRule(allow_loopback=True)


class DictSecrets:
    """SecretReader over {secret name: {key: value}}."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    def value(self, ref: SecretKeyRef) -> str:
        try:
            return self.secrets[ref.name][ref.key]
        except KeyError:
            raise KeyError(f"Secret {ref.name} has no key {ref.key}") from None

    def data(self, ref: SecretRef) -> dict[str, str]:
        return dict(self.secrets[ref.name])


@dataclass
class Endpoint:
    """An HTTP server on 127.0.0.1 answering `status` and recording every request."""

    server: ThreadingHTTPServer
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    on_request: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"


@dataclass
class Hung:
    """A TCP server that accepts connections and then answers nothing, or trickles bytes."""

    port: int
    trickle: bool
    stop: threading.Event
