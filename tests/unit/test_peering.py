"""Leader election settings: the seniority priority and AEGIS_PEERING* parsing."""

from __future__ import annotations

import pytest

from aegis.k8s.peering import peering_object, seniority_priority
from aegis.settings import Settings


def test_an_earlier_start_has_a_higher_priority_whatever_the_tiebreak() -> None:
    older = seniority_priority(started_ns=1_000_000_000_000_000, tiebreak=0)
    younger = seniority_priority(started_ns=1_000_000_001_000_000, tiebreak=999)
    assert older > younger  # 1 ms apart: the tie-break never reorders starts


def test_same_millisecond_starts_are_told_apart_by_the_tiebreak() -> None:
    a = seniority_priority(started_ns=1_700_000_000_000_000_000, tiebreak=1)
    b = seniority_priority(started_ns=1_700_000_000_000_400_000, tiebreak=2)
    assert a != b  # a tie pauses both replicas (kopf's rule)


def test_priority_fits_in_int64_for_centuries() -> None:
    year_2200_ns = 7_258_118_400 * 10**9
    assert seniority_priority(started_ns=year_2200_ns, tiebreak=0) > -(2**63)


def test_peering_object_is_a_cluster_kopf_peering() -> None:
    obj = peering_object("aegis")
    assert obj["apiVersion"] == "kopf.dev/v1" and obj["kind"] == "ClusterKopfPeering"
    assert obj["metadata"]["name"] == "aegis" and "namespace" not in obj["metadata"]


def test_peering_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEGIS_PEERING", raising=False)
    monkeypatch.delenv("AEGIS_PEERING_LIFETIME", raising=False)
    settings = Settings.from_env()
    assert settings.peering == "" and settings.peering_lifetime == 15  # standalone
    monkeypatch.setenv("AEGIS_PEERING", " aegis ")
    monkeypatch.setenv("AEGIS_PEERING_LIFETIME", "8")
    settings = Settings.from_env()
    assert (settings.peering, settings.peering_lifetime) == ("aegis", 8)
    monkeypatch.setenv("AEGIS_PEERING_LIFETIME", "1")
    with pytest.raises(ValueError, match="AEGIS_PEERING_LIFETIME=1"):
        Settings.from_env()
