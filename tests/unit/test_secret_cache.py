"""The watch-fed Secret cache (aegis.k8s.cache.SecretCache): values only of the Secrets the
operator reads, kept current by the watch, never overwritten by an older read."""

from __future__ import annotations

import base64

from aegis.k8s.cache import SecretCache


def secret(name: str, version: str, **data: str) -> dict[str, object]:
    return {
        "metadata": {"namespace": "shop", "name": name, "resourceVersion": version},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def encoded(**data: str) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def test_values_of_secrets_never_read_are_not_kept() -> None:
    cache = SecretCache()
    assert cache.event("ADDED", secret("other", "1", token="t0p"))
    assert cache.get("shop", "other") is None
    assert "t0p" not in repr(vars(cache)) and "dDBw" not in repr(vars(cache))


def test_a_read_is_kept_then_followed_by_the_watch_until_deleted() -> None:
    cache = SecretCache()
    cache.event("ADDED", secret("db", "1", password="a"))
    assert cache.get("shop", "db") is None  # never read: the caller asks the API server
    assert cache.fill("shop", "db", "1", encoded(password="a"))
    assert cache.get("shop", "db") == {"password": b"a"}
    assert cache.event("MODIFIED", secret("db", "2", password="b"))
    assert cache.get("shop", "db") == {"password": b"b"}
    assert not cache.event("ADDED", secret("db", "2", password="b"))  # a re-list's repeat
    assert cache.event("DELETED", secret("db", "3"))
    assert cache.get("shop", "db") is None


def test_a_read_older_than_the_watch_or_before_it_is_not_kept() -> None:
    cache = SecretCache()
    assert not cache.fill("shop", "db", "1", encoded(password="a"))  # watch not there yet
    cache.event("ADDED", secret("db", "1", password="a"))
    cache.event("MODIFIED", secret("db", "2", password="b"))
    assert not cache.fill("shop", "db", "1", encoded(password="a"))  # older than the watch
    assert cache.get("shop", "db") is None


def test_a_secret_too_large_is_read_from_the_api_server_each_time() -> None:
    cache = SecretCache(max_bytes=10)
    cache.event("ADDED", secret("big", "1", blob="x" * 100))
    assert cache.fill("shop", "big", "1", encoded(blob="x" * 100))
    assert cache.get("shop", "big") is None
