"""How Aegis reaches the Kubernetes API: one place builds the client configuration, for our own
calls (the official client) and for kopf's (through `credentials()` in the login handler).

Sources, in order (as client-go's `rest.InClusterConfig` then `clientcmd`):

- **in a pod**: ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` and the mounted
  ServiceAccount directory (token, ``ca.crt``). Projected tokens rotate (kubelet rewrites the
  file before the old token expires), so the token file is re-read on a period instead of
  once: a long-running operator keeps authenticating without a restart;
- **a kubeconfig** (``KUBECONFIG`` or ``~/.kube/config``) through the client's own loader, so
  bearer tokens, client certificates, basic auth and exec/auth-provider plugins all work, with
  the loader's own refresh of expiring plugin tokens.

The official client keeps a token in ``Configuration.api_key["BearerToken"]`` as
``"Bearer <token>"`` (``"bearer <token>"`` in-cluster); `credentials()` reads it from there
after running the refresh hook, which is what the first login handler got wrong.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where kubelet mounts the ServiceAccount token and CA (AEGIS_SERVICEACCOUNT_DIR overrides)."""
TOKEN_REFRESH_SECONDS = 60
"""How often a token file is re-read (AEGIS_TOKEN_REFRESH_SECONDS): kubelet rewrites a
projected token at 80% of its lifetime (48 minutes for the default hour), so a minute leaves
a wide margin, and the read is one small local file."""
CONNECTION_POOL_SIZE = 128
"""kopf's handler threads, the scheduler's and the follow-ups' run in parallel: the default
pool of 4 would serialise them, a small one churns connections (AEGIS_API_CONNECTION_POOL)."""

_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None


class ClientConfigError(Exception):
    """No usable credentials: the message says which source was tried and what failed."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ClientConfigError(f"{name}={raw!r} is not an integer") from None


class RotatingConfiguration(kubernetes.client.Configuration):  # type: ignore[misc]
    """A client configuration that says whether its credentials change while we run."""

    rotating: bool = False
    """True for a re-read token file or an expiring plugin token (see credentials())."""


class _TokenFile:
    """A token file re-read at most every `period` seconds (projected tokens rotate)."""

    def __init__(self, path: Path, period: float) -> None:
        self.path = path
        self.period = period
        self._token = ""
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def token(self) -> str:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= self.period or not self._token:
                try:
                    token = self.path.read_text().strip()
                except OSError as error:
                    if not self._token:
                        raise ClientConfigError(
                            f"cannot read the ServiceAccount token {self.path}: {error}"
                        ) from None
                    token = self._token  # keep the last good token through a brief gap
                if not token:
                    if not self._token:
                        raise ClientConfigError(f"the ServiceAccount token {self.path} is empty")
                    token = self._token
                self._token, self._read_at = token, now
            return self._token


def in_cluster_configuration(
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> RotatingConfiguration | None:
    """The in-pod configuration, or None when this process does not run in a pod."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    directory = Path(env.get("AEGIS_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
    token_path, ca_path = directory / "token", directory / "ca.crt"
    if not token_path.is_file():
        return None
    if not ca_path.is_file() or not ca_path.read_bytes().strip():
        raise ClientConfigError(f"in a pod, but the cluster CA {ca_path} is missing or empty")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    period = _env_int("AEGIS_TOKEN_REFRESH_SECONDS", TOKEN_REFRESH_SECONDS)
    token_file = _TokenFile(token_path, period)
    configuration = RotatingConfiguration()
    configuration.host = f"https://{host}:{port}"
    configuration.ssl_ca_cert = str(ca_path)
    configuration.api_key["BearerToken"] = f"Bearer {token_file.token()}"

    def refresh(config: kubernetes.client.Configuration) -> None:
        config.api_key["BearerToken"] = f"Bearer {token_file.token()}"

    configuration.refresh_api_key_hook = refresh
    configuration.rotating = True
    return configuration


def load_configuration() -> RotatingConfiguration:
    """The configuration for this process: in-cluster when in a pod, else the kubeconfig."""
    configuration = in_cluster_configuration()
    if configuration is None:
        configuration = RotatingConfiguration()
        try:
            # Passed explicitly: the library reads KUBECONFIG once, at import time.
            kubernetes.config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        except (kubernetes.config.ConfigException, OSError) as error:
            raise ClientConfigError(
                "no Kubernetes credentials: not in a pod (KUBERNETES_SERVICE_HOST unset or no "
                f"ServiceAccount token) and no usable kubeconfig: {error}"
            ) from None
        # A token from an exec or auth-provider plugin expires; the loader's hook renews it.
        configuration.rotating = _kubeconfig_user_uses_plugin(os.environ.get("KUBECONFIG"))
    configuration.connection_pool_maxsize = _env_int(
        "AEGIS_API_CONNECTION_POOL", CONNECTION_POOL_SIZE
    )
    return configuration


def _kubeconfig_user_uses_plugin(config_file: str | None) -> bool:
    """Whether the current context's user gets its token from an exec or auth-provider plugin
    (such tokens expire; a static token or a certificate does not need re-reading)."""
    from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION, KubeConfigMerger

    paths = config_file or os.path.expanduser(KUBE_CONFIG_DEFAULT_LOCATION)
    try:
        _, active = kubernetes.config.list_kube_config_contexts(paths)
        user_name = (active or {}).get("context", {}).get("user")
        user = KubeConfigMerger(paths).config["users"].get_with_name(user_name)["user"]
        return "exec" in user or "auth-provider" in user
    except (kubernetes.config.ConfigException, OSError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class Credentials:
    """What an HTTP client other than the official one (kopf's aiohttp) needs to log in."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None
    username: str | None
    password: str | None
    certificate_path: str | None
    private_key_path: str | None
    expiration: datetime.datetime | None
    """When to ask again: set for rotating tokens, so kopf re-reads them without a restart."""


def credentials(
    configuration: kubernetes.client.Configuration, now: datetime.datetime | None = None
) -> Credentials:
    """The current credentials of `configuration` (refreshed first, as the client would)."""
    if configuration.refresh_api_key_hook is not None:
        configuration.refresh_api_key_hook(configuration)
    api_key: dict[str, Any] = configuration.api_key or {}
    prefixes: dict[str, Any] = configuration.api_key_prefix or {}
    raw = str(api_key.get("BearerToken") or api_key.get("authorization") or "")
    prefix = prefixes.get("BearerToken") or prefixes.get("authorization")
    if raw and prefix and " " not in raw:
        raw = f"{prefix} {raw}"
    scheme, _, value = raw.partition(" ")
    if raw and not value:  # a bare token with no scheme
        scheme, value = "Bearer", raw
    username = configuration.username or None
    password = configuration.password or None
    token: str | None = value.strip() or None
    if scheme.lower() == "bearer":
        scheme = "Bearer"  # kube-apiserver accepts any case; kopf sends it as given
    elif scheme.lower() == "basic" and token:
        # The kubeconfig loader turns username/password into a ready-made Basic header.
        decoded = base64.b64decode(token).decode()
        username, _, password = decoded.partition(":")
        scheme, token = "", None
    rotating = bool(getattr(configuration, "rotating", False))
    refresh = _env_int("AEGIS_TOKEN_REFRESH_SECONDS", TOKEN_REFRESH_SECONDS)
    moment = now or datetime.datetime.now(datetime.UTC)
    return Credentials(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme if token else None,
        token=token,
        username=username,
        password=password,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        expiration=moment + datetime.timedelta(seconds=refresh) if rotating and token else None,
    )


def api_client() -> kubernetes.client.ApiClient:
    """The process's one ApiClient (created on first use, after settings and env are final)."""
    global _client
    with _lock:
        if _client is None:
            _client = kubernetes.client.ApiClient(load_configuration())
        return _client


def reset() -> None:
    """Forget the client (tests point the process at a new API server)."""
    global _client
    with _lock:
        _client = None


def bounded_session(
    headers: dict[str, str], ssl_context: ssl.SSLContext | bool, concurrency: int
) -> aiohttp.ClientSession:
    """The aiohttp session kopf talks through: at most `concurrency` requests wait for their
    response headers at once. kopf's own session has no bound, so a thousand objects created
    in one second (a busy tick's points) meant a thousand requests at once, each on a new TLS
    connection with asyncio's 256 KiB read buffer: 250 MiB of RSS and a handshake storm for
    the API server (which would throttle the burst anyway). A request leaves the gate when its
    headers arrive, so a watch never holds a slot while it streams, and the number of
    connections stays unbounded: a watch per resource and namespace always gets one.
    Must be called on the event loop that will use it."""
    gate = asyncio.Semaphore(concurrency)

    async def through_the_gate(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        async with gate:
            return await handler(request)

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context),
        headers=headers,
        middlewares=(through_the_gate,),
    )
