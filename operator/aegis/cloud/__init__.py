"""Clients of cloud APIs, each behind a small, deadline-bounded interface."""
