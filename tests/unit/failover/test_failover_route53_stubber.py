"""Route53 paths moto cannot show (it answers INSYNC at once): PENDING→INSYNC, throttling,
timeouts and API errors, with botocore's Stubber in front of a real boto3 client."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from botocore.stub import Stubber

from aegis.api.failoverplan import Route53Step, Transition
from aegis.cloud.route53 import (
    RecordSnapshot,
    Route53Error,
    Route53Records,
    route53_client,
)
from aegis.reconcilers.failover import PREVIOUS_RECORD
from aegis.steps.base import StepContext, StepPorts
from aegis.steps.route53 import run_route53

ZONE = "Z0123456789ABC"
NAME = "db.example.com."


class FakeTime:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def client() -> Any:
    return route53_client(credentials={"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                                       "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"})


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber


def change_info(status: str, change_id: str = "/change/C1") -> dict[str, Any]:
    return {"ChangeInfo": {"Id": change_id, "Status": status,
                           "SubmittedAt": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}}


def record() -> RecordSnapshot:
    return RecordSnapshot.of_values(NAME, "A", 60, ["10.0.0.2"])


def test_pending_then_insync_polls_get_change_with_backoff(client: Any, stub: Stubber) -> None:
    fake = FakeTime()
    records = Route53Records(client, fake.clock, fake.sleep)
    stub.add_response("change_resource_record_sets", change_info("PENDING"), {
        "HostedZoneId": ZONE,
        "ChangeBatch": {"Comment": "aegis", "Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": record().record_set()}]},
    })
    for status in ("PENDING", "PENDING", "INSYNC"):
        stub.add_response("get_change", change_info(status), {"Id": "/change/C1"})
    change_id, status = records.upsert(ZONE, record(), fake.now + 60)
    assert (change_id, status) == ("/change/C1", "PENDING")
    waited = records.wait_insync(change_id, fake.now + 60, status)
    assert fake.sleeps == [0.25, 0.5, 1.0]
    assert waited == pytest.approx(1.75)
    stub.assert_no_pending_responses()


def test_throttling_is_retried_until_it_succeeds(client: Any, stub: Stubber) -> None:
    fake = FakeTime()
    records = Route53Records(client, fake.clock, fake.sleep)
    stub.add_client_error("change_resource_record_sets", "Throttling", "Rate exceeded", 400)
    stub.add_client_error("change_resource_record_sets", "PriorRequestNotComplete", "busy", 400)
    stub.add_response("change_resource_record_sets", change_info("INSYNC"))
    change_id, status = records.upsert(ZONE, record(), fake.now + 60)
    assert status == "INSYNC"
    assert records.wait_insync(change_id, fake.now + 60, status) == 0.0
    assert fake.sleeps == [0.25, 0.5]
    stub.assert_no_pending_responses()


def test_throttling_past_the_deadline_fails_clearly(client: Any, stub: Stubber) -> None:
    fake = FakeTime()
    records = Route53Records(client, fake.clock, fake.sleep)
    for _ in range(3):
        stub.add_client_error("change_resource_record_sets", "Throttling", "Rate exceeded", 400)
    with pytest.raises(Route53Error, match=r"did not succeed before the step's "
                       r"timeoutSeconds.*Throttling"):
        records.upsert(ZONE, record(), fake.now + 0.5)


def test_timeout_while_pending(client: Any, stub: Stubber) -> None:
    fake = FakeTime()
    records = Route53Records(client, fake.clock, fake.sleep)
    for _ in range(4):
        stub.add_response("get_change", change_info("PENDING"), {"Id": "/change/C1"})
    with pytest.raises(Route53Error) as error:
        records.wait_insync("/change/C1", fake.now + 2.0)
    assert "change /change/C1 still PENDING after 2.0s" in str(error.value)
    assert "raise timeoutSeconds" in str(error.value)
    assert sum(fake.sleeps) == pytest.approx(2.0)
    stub.assert_no_pending_responses()


def test_no_such_hosted_zone_names_the_field(client: Any, stub: Stubber) -> None:
    stub.add_client_error("list_resource_record_sets", "NoSuchHostedZone",
                          f"No hosted zone found with ID: {ZONE}", 404)
    with pytest.raises(Route53Error, match=rf"route53.hostedZoneId: hosted zone {ZONE} does not"):
        Route53Records(client).read(ZONE, NAME, "A", time.monotonic() + 5)


def test_invalid_change_batch_is_explained(client: Any, stub: Stubber) -> None:
    stub.add_client_error("change_resource_record_sets", "InvalidChangeBatch",
                          "[Invalid Resource Record: 'not-an-ip' is not a valid IPv4]", 400)
    bad = RecordSnapshot.of_values(NAME, "A", 60, ["not-an-ip"])
    with pytest.raises(Route53Error) as error:
        Route53Records(client).upsert(ZONE, bad, time.monotonic() + 5)
    assert "Route53 rejected the change of db.example.com." in str(error.value)
    assert "not a valid IPv4" in str(error.value)
    assert "recordName, type and values/aliasTarget" in str(error.value)


def test_routing_policy_records_are_refused(client: Any, stub: Stubber) -> None:
    stub.add_response("list_resource_record_sets", {
        "ResourceRecordSets": [{"Name": NAME, "Type": "A", "SetIdentifier": "eu", "Weight": 10,
                                "TTL": 60, "ResourceRecords": [{"Value": "1.1.1.1"}]}],
        "IsTruncated": False, "MaxItems": "1",
    })
    with pytest.raises(Route53Error, match="routing policy"):
        Route53Records(client).read(ZONE, NAME, "A", time.monotonic() + 5)


def test_missing_credential_keys_name_the_secret_keys() -> None:
    with pytest.raises(Route53Error, match="AWS_SECRET_ACCESS_KEY"):
        route53_client(credentials={"AWS_ACCESS_KEY_ID": "x"})


def ctx(saved: list[Mapping[str, str]], save_fails: bool = False,
        timeout: float = 10) -> StepContext:
    def save(outputs: Mapping[str, str]) -> None:
        if save_fails:
            raise RuntimeError("status patch failed")
        saved.append(dict(outputs))

    return StepContext(
        plan="p", namespace="ns", step="dns",
        transition=Transition(kind="Failover", id="failover-1"), from_site="eu", to_site="us",
        deadline=time.monotonic() + timeout, save_outputs=save,
    )


STEP = Route53Step.model_validate({"hostedZoneId": ZONE, "recordName": "db.example.com",
                                   "type": "A", "values": ["10.0.0.2"], "ttl": 30})
EXISTING = {
    "ResourceRecordSets": [{"Name": NAME, "Type": "A", "TTL": 300,
                            "ResourceRecords": [{"Value": "10.0.0.1"}]}],
    "IsTruncated": False, "MaxItems": "1",
}


def test_step_saves_the_previous_record_before_changing_it(client: Any, stub: Stubber) -> None:
    stub.add_response("list_resource_record_sets", EXISTING, {
        "HostedZoneId": ZONE, "StartRecordName": NAME, "StartRecordType": "A", "MaxItems": "1"})
    stub.add_response("change_resource_record_sets", change_info("PENDING"))
    stub.add_response("get_change", change_info("INSYNC"))
    saved: list[Mapping[str, str]] = []
    result = run_route53(STEP, ctx(saved), StepPorts(route53=lambda _step, _creds: client))
    assert result.ok, result.message
    previous = json.loads(saved[0][PREVIOUS_RECORD])
    assert previous == {"name": NAME, "type": "A", "ttl": 300, "values": ["10.0.0.1"]}
    assert result.outputs["changeId"] == "/change/C1"
    assert float(result.outputs["insyncSeconds"]) >= 0.25  # one real backoff before INSYNC
    stub.assert_no_pending_responses()


def test_step_does_not_touch_the_record_when_the_previous_value_cannot_be_saved(
    client: Any, stub: Stubber
) -> None:
    stub.add_response("list_resource_record_sets", EXISTING)
    stub.add_response("change_resource_record_sets", change_info("INSYNC"))
    result = run_route53(STEP, ctx([], save_fails=True),
                         StepPorts(route53=lambda _step, _creds: client))
    assert not result.ok and "status patch failed" in result.message
    with pytest.raises(AssertionError):  # the UPSERT was never sent
        stub.assert_no_pending_responses()


def test_step_times_out_while_pending_with_a_clear_message(client: Any, stub: Stubber) -> None:
    stub.add_response("list_resource_record_sets", EXISTING)
    stub.add_response("change_resource_record_sets", change_info("PENDING"))
    for _ in range(10):
        stub.add_response("get_change", change_info("PENDING"))
    started = time.monotonic()
    result = run_route53(STEP, ctx([], timeout=1.0), StepPorts(route53=lambda _s, _c: client))
    elapsed = time.monotonic() - started
    assert not result.ok
    assert "still PENDING after" in result.message and "timeoutSeconds" in result.message
    assert 0.9 <= elapsed < 1.5
    assert result.outputs["changeId"] == "/change/C1" and PREVIOUS_RECORD in result.outputs
