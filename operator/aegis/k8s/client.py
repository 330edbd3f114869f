"""One kubernetes ApiClient per process: in-cluster credentials in a pod, else KUBECONFIG."""

from __future__ import annotations

import os
import threading

import kubernetes

_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None


def api_client() -> kubernetes.client.ApiClient:
    global _client
    with _lock:
        if _client is None:
            configuration = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            except kubernetes.config.ConfigException:
                # Passed explicitly: the library reads KUBECONFIG once, at import time.
                kubernetes.config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
                )
            # kopf's handler threads, the scheduler's and the follow-ups' run in parallel: the
            # default pool of 4 would serialise them, a small one churns connections.
            configuration.connection_pool_maxsize = 128
            _client = kubernetes.client.ApiClient(configuration)
        return _client


def reset() -> None:
    """Forget the client (tests point the process at a new API server)."""
    global _client
    with _lock:
        _client = None
