"""The bucket layout: one definition, parse and build agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis.agent.layout import (
    LayoutError,
    PointRef,
    manifest_key_for,
    normalize_prefix,
    parse_point_key,
    parse_s3_url,
    point_directory,
)

segment = st.from_regex(r"\A[a-z0-9][-a-z0-9.]{0,20}\Z")


def test_keys() -> None:
    point = PointRef("bkt", "backups/prod", "shop", "orders", "orders-20250101000000")
    assert point.payload_key == "backups/prod/shop/orders/orders-20250101000000/payload"
    assert point.manifest_url == (
        "s3://bkt/backups/prod/shop/orders/orders-20250101000000/manifest.json"
    )
    assert point_directory("", "ns", "p", "rp") == "ns/p/rp"


@given(prefix=st.lists(segment, max_size=3), ns=segment, policy=segment, point=segment)
def test_parse_inverts_build(prefix: list[str], ns: str, policy: str, point: str) -> None:
    ref = PointRef("bkt", "/".join(prefix), ns, policy, point)
    assert parse_point_key("bkt", "/".join(prefix), ref.manifest_key) == ref
    assert parse_point_key("bkt", "/".join(prefix), ref.payload_key) == ref


def test_bad_segments_are_refused() -> None:
    with pytest.raises(LayoutError, match="namespace 'a/b'"):
        point_directory("", "a/b", "p", "rp")
    with pytest.raises(LayoutError, match="does not match"):
        parse_point_key("b", "x", "x/ns/p/rp/other")
    with pytest.raises(LayoutError, match="not under prefix"):
        parse_point_key("b", "x", "y/ns/p/rp/payload")


def test_s3_urls() -> None:
    assert parse_s3_url("s3://bkt/a/b/") == ("bkt", "a/b")
    assert parse_s3_url("s3://bkt") == ("bkt", "")
    with pytest.raises(LayoutError, match="not an s3:// URL"):
        parse_s3_url("https://bkt/a")
    with pytest.raises(LayoutError, match="no bucket"):
        parse_s3_url("s3:///a")


def test_manifest_key_for_any_form() -> None:
    assert manifest_key_for("a/ns/p/rp") == "a/ns/p/rp/manifest.json"
    assert manifest_key_for("a/ns/p/rp/") == "a/ns/p/rp/manifest.json"
    assert manifest_key_for("a/ns/p/rp/payload") == "a/ns/p/rp/manifest.json"
    assert manifest_key_for("a/ns/p/rp/manifest.json") == "a/ns/p/rp/manifest.json"
    assert normalize_prefix("/a//b/") == "a/b"
