"""`aegis operator`: run the kopf operator with settings from AEGIS_* env vars."""

from __future__ import annotations

import argparse
import logging

import kopf

from aegis.settings import Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aegis operator", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as error:
        parser.error(str(error))
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format, log_refkey="object")
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else settings.log_level)

    import aegis.handlers  # noqa: F401  (registers the handlers)

    liveness = (
        f"http://{settings.metrics_address}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )
    # Standalone or peering is decided by the `aegis-configure` startup handler
    # (AEGIS_PEERING), which overrides whatever is set here.
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
    )
    return 0
