"""kopf handlers: thin adapters from kopf's callbacks to plain reconcilers.

Importing this package registers every handler on kopf's default registry; `aegis operator`
and the tests' KopfRunner both load it with `-m aegis.handlers`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from aegis import GROUP, metrics
from aegis.handlers.common import KopfLogger
from aegis.k8s import peering
from aegis.k8s.client import api_client, bounded_session, credentials
from aegis.labels import FINALIZER
from aegis.settings import Settings

# Handler ids are explicit and stable: kopf keys its progress annotations by them, so a
# renamed function must not lose state.


@kopf.on.login(id="aegis-login")
async def login(**_: Any) -> kopf.AiohttpSession:
    """kopf talks to the API server with the same credentials as our own client (one place
    builds them: `aegis.k8s.client`). A rotating token comes with an expiration, so kopf asks
    again and picks up the new token without a restart; a 401 makes kopf ask at once. The
    session bounds kopf's requests in flight (`bounded_session`); kopf closes it when it logs
    in again."""
    found = await asyncio.to_thread(lambda: credentials(api_client().configuration))
    info = kopf.ConnectionInfo(
        server=found.server,
        ca_path=found.ca_path,
        insecure=found.insecure,
        scheme=found.scheme,
        token=found.token,
        certificate_path=found.certificate_path,
        private_key_path=found.private_key_path,
        username=found.username,
        password=found.password,
        expiration=found.expiration,
    )
    concurrency = Settings.from_env().kopf_api_concurrency
    return kopf.AiohttpSession(
        server=info.server,
        expiration=info.expiration,
        aiohttp_session=bounded_session(info.as_http_headers(), info.as_ssl_context(), concurrency),
    )


@kopf.on.startup(id="aegis-configure")
def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: KopfLogger, **_: Any
) -> None:
    """Keep kopf's bookkeeping under our own domain and start the metrics endpoint."""
    aegis_settings = Settings.from_env()
    memo["settings"] = aegis_settings
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only our own events (and kopf's errors) reach users' `kubectl describe`, not one
    # "Handler succeeded" event per reconciliation.
    settings.posting.level = logging.WARNING
    _elect(settings, aegis_settings, logger)
    # A watch that stalls silently (a dropped connection through a proxy) is re-established.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = aegis_settings.handler_workers
    port = metrics.serve(aegis_settings.metrics_port, aegis_settings.metrics_address)
    logger.info("Aegis operator configured; metrics on port %s", port)


def _elect(settings: kopf.OperatorSettings, aegis: Settings, logger: KopfLogger) -> None:
    """Standalone, or one of several replicas of which only the elected one acts (kopf
    pauses the others: no watch, no handler, no daemon). See aegis/k8s/peering.py."""
    if not aegis.peering:
        settings.peering.standalone = True
        return
    settings.peering.standalone = False
    settings.peering.mandatory = True  # paused until the peering object says we lead
    settings.peering.clusterwide = True  # one election per installation, any namespaces
    settings.peering.name = aegis.peering
    settings.peering.priority = peering.seniority_priority()
    settings.peering.lifetime = aegis.peering_lifetime
    settings.peering.stealth = True  # no log line per keep-alive
    try:
        created = peering.ensure_peering(aegis.peering)
    except peering.PeeringUnavailable as error:
        # exit with the reason rather than stay paused forever with pods that look Ready
        raise kopf.PermanentError(str(error)) from None
    logger.info(
        "Leader election in ClusterKopfPeering %s%s: priority %s (the oldest replica leads)",
        aegis.peering,
        " (created)" if created else "",
        settings.peering.priority,
    )


from aegis.handlers import (  # noqa: E402  (registered after the startup handler, on purpose)
    backuppolicy,
    drdrill,
    failoverapproval,
    failoverplan,
    recoverypoint,
    restore,
)

__all__ = [
    "FINALIZER",
    "backuppolicy",
    "configure",
    "drdrill",
    "failoverapproval",
    "failoverplan",
    "recoverypoint",
    "restore",
]
