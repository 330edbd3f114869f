"""Aegis: disaster recovery for PostgreSQL and Redis on Kubernetes."""

__version__ = "0.1.0"

GROUP = "dr.aegis.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
