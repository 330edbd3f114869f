"""Deterministic names and labels: valid, bounded, stable, distinct."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis.reconcilers import naming
from aegis.reconcilers.naming import (
    backup_job_labels,
    backup_job_name,
    drill_job_name,
    is_dns_label,
    is_dns_subdomain,
    is_label_value,
    label_value,
    on_demand_recovery_point_name,
    recovery_point_labels,
    recovery_point_name,
    restore_job_labels,
    restore_job_name,
)

UTC = dt.UTC
TICK = dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)

# Object names as the API server accepts them: RFC 1123 subdomains up to 253 characters.
segment = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?\Z")
object_names = st.lists(segment, min_size=1, max_size=8).map(".".join).filter(
    lambda n: len(n) <= 253
)
ticks = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31), timezones=st.just(UTC)
)


def test_recovery_point_name_is_policy_and_utc_tick() -> None:
    assert recovery_point_name("orders-db", TICK) == "orders-db-20260329010000"
    berlin = TICK.astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))  # 03:00 CEST, same instant
    assert recovery_point_name("orders-db", berlin) == "orders-db-20260329010000"


def test_repeated_hour_runs_get_distinct_names() -> None:
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert recovery_point_name("p", first) != recovery_point_name("p", second)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        recovery_point_name("p", dt.datetime(2026, 1, 1))


def test_long_policy_name_is_cut_hashed_and_keeps_the_timestamp() -> None:
    long_a = "a" * 120 + "." + "b" * 132
    long_b = "a" * 120 + "." + "c" * 132
    name_a, name_b = recovery_point_name(long_a, TICK), recovery_point_name(long_b, TICK)
    assert len(long_a) == 253
    assert len(name_a) <= 253 and is_dns_subdomain(name_a)
    assert name_a.endswith("-20260329010000")
    assert name_a != name_b


def test_job_names() -> None:
    assert backup_job_name("orders-db-20260329010000") == "backup-orders-db-20260329010000"
    assert restore_job_name("restore-orders") == "restore-restore-orders"
    assert drill_job_name("weekly", TICK) == "drill-weekly-20260329010000"
    dotted = backup_job_name("orders.prod-20260329010000")
    assert dotted.startswith("backup-orders-prod-20260329010000-") and is_dns_label(dotted)
    assert dotted != backup_job_name("orders-prod-20260329010000")
    long = backup_job_name("x" * 100 + "-20260329010000")
    assert len(long) == 63 and is_dns_label(long)
    assert long != backup_job_name("x" * 101 + "-20260329010000")


def test_on_demand_name() -> None:
    assert on_demand_recovery_point_name("orders", TICK) == "orders-manual-20260329010000"


def test_labels() -> None:
    labels = backup_job_labels("orders", "orders-20260329010000")
    assert labels == {
        "app.kubernetes.io/managed-by": "aegis",
        "app.kubernetes.io/component": "backup",
        "dr.aegis.dev/policy": "orders",
        "dr.aegis.dev/recovery-point": "orders-20260329010000",
    }
    assert recovery_point_labels("orders")["dr.aegis.dev/policy"] == "orders"
    restore = restore_job_labels("r1", "orders-20260329010000")
    assert restore["app.kubernetes.io/component"] == "restore"
    assert restore["dr.aegis.dev/restore"] == "r1"
    drill = naming.drill_job_labels("weekly")
    assert drill["app.kubernetes.io/component"] == "drill"
    assert drill["dr.aegis.dev/drill"] == "weekly"
    long = "p" * 200
    assert label_value(long) == recovery_point_labels(long)["dr.aegis.dev/policy"]
    assert len(label_value(long)) == 63


@given(policy=object_names, tick=ticks)
def test_generated_names_are_always_valid(policy: str, tick: dt.datetime) -> None:
    rp = recovery_point_name(policy, tick)
    assert is_dns_subdomain(rp), rp
    assert rp == recovery_point_name(policy, tick)
    assert rp.endswith(tick.strftime("%Y%m%d%H%M%S"))
    job = backup_job_name(rp)
    assert is_dns_label(job), job
    for value in backup_job_labels(policy, rp).values():
        assert is_label_value(value), value
    assert is_dns_label(restore_job_name(policy))
    assert is_dns_label(drill_job_name(policy, tick))


@given(policy=object_names, a=ticks, b=ticks)
def test_distinct_ticks_give_distinct_names(policy: str, a: dt.datetime, b: dt.datetime) -> None:
    a, b = a.replace(microsecond=0), b.replace(microsecond=0)
    if a != b:
        assert recovery_point_name(policy, a) != recovery_point_name(policy, b)
        assert backup_job_name(recovery_point_name(policy, a)) != backup_job_name(
            recovery_point_name(policy, b)
        )


@given(a=object_names, b=object_names)
def test_distinct_objects_give_distinct_job_names_and_labels(a: str, b: str) -> None:
    if a != b:
        assert restore_job_name(a) != restore_job_name(b)
    if a != b:
        assert label_value(a) != label_value(b)
