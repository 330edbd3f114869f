"""Kubernetes API helpers: a shared client, idempotent creates, status patches, Secrets,
events, and pure builders of the objects the operator creates."""
