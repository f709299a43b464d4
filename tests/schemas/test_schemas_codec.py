"""EventCodec: round trips in both framings, byte-for-byte agreement with fastavro, errors."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import events
from schemas.codec import (
    DecodeError,
    EncodeError,
    EventCodec,
    from_json_dict,
    key_for,
    schema_versions,
    subject_for,
    to_json_dict,
)
from tests.schemas.schemas_samples import (
    approval_verdict,
    fastavro_body,
    query_rejected,
    query_requested,
    result_page,
)
from tests.schemas.schemas_strategies import EVENT_STRATEGIES, SCHEMAS, any_event, other_zones

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`

CODEC = EventCodec()
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CURRENT = {v.name: v for v in schema_versions() if v.version == "current"}


@pytest.fixture(scope="module")
def registry_codec() -> EventCodec:
    return EventCodec("mock://querytrail-tests")


def test_every_event_has_a_strategy() -> None:
    assert set(EVENT_STRATEGIES) == set(events.EVENT_CLASSES) == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@PROPS
@given(data=st.data())
def test_single_object_round_trip_matches_fastavro(name: str, data: st.DataObject) -> None:
    event = data.draw(EVENT_STRATEGIES[name])
    encoded = CODEC.encode(event)
    assert encoded[:2] == b"\xc3\x01"
    assert encoded[2:10] == CURRENT[name].fingerprint
    assert encoded[10:] == fastavro_body(event)
    assert CODEC.decode(encoded) == event


@PROPS
@given(event=any_event)
def test_confluent_round_trip(registry_codec: EventCodec, event: Any) -> None:
    encoded = registry_codec.encode(event)
    assert encoded[0] == 0
    schema_id = int.from_bytes(encoded[1:5], "big")
    registered = registry_codec._registry.get_schema(schema_id)
    assert json.loads(registered.schema_str)["name"] == type(event).__name__
    assert encoded[5:] == fastavro_body(event)
    assert registry_codec.decode(encoded) == event
    # A registry-configured consumer still reads single-object events, and vice versa needs the registry.
    assert registry_codec.decode(CODEC.encode(event)) == event


def test_codecs_on_one_mock_url_share_the_registry() -> None:
    producer, consumer = EventCodec("mock://shared-url"), EventCodec("mock://shared-url")
    other = EventCodec("mock://another-url")
    other.encode(query_requested(sealed=None))  # takes id 1 in its own registry
    page = result_page()
    assert consumer.decode(producer.encode(page)) == page


def test_registry_subject_is_record_name(registry_codec: EventCodec) -> None:
    registry_codec.encode(result_page())
    subjects = registry_codec._registry.get_subjects()
    assert subject_for("ResultPage") in subjects
    assert subject_for("ResultPage") == "io.querytrail.events.ResultPage"


def test_confluent_frame_needs_a_registry(registry_codec: EventCodec) -> None:
    with pytest.raises(DecodeError) as err:
        CODEC.decode(registry_codec.encode(result_page()))
    assert err.value.reason == "unknown_schema_id"


def test_unknown_registry_id(registry_codec: EventCodec) -> None:
    with pytest.raises(DecodeError) as err:
        registry_codec.decode(b"\x00\x00\x00\x7f\xff" + b"\x00" * 20)
    assert err.value.reason == "unknown_schema_id"


@PROPS
@given(event=any_event)
def test_json_dict_round_trip(event: Any) -> None:
    as_json = json.dumps(to_json_dict(event))
    assert from_json_dict(json.loads(as_json)) == event


def test_json_dict_shapes() -> None:
    ev = query_requested(sealed=b"\x00\xff")
    d = to_json_dict(ev)
    assert d["occurred_at"].endswith("+00:00")
    assert d["credential"]["sealed_token"] == "AP8="
    assert d["context"]["extra"] == {"k": "v"}
    assert d["event_type"] == "QueryRequested"
    assert list(d)[:6] == ["event_id", "event_type", "request_id", "session_id", "occurred_at", "producer"]


@given(when=st.datetimes(timezones=other_zones, min_value=datetime(1900, 1, 2)))
def test_other_time_zones_keep_the_instant(when: datetime) -> None:
    ev = dataclasses.replace(result_page(), occurred_at=when)
    got = CODEC.decode(CODEC.encode(ev))
    assert got.occurred_at == when and got.occurred_at.tzinfo == UTC


def test_decoded_values_have_the_documented_types() -> None:
    ev = query_requested(sealed=b"tok")
    got = CODEC.decode(CODEC.encode(ev))
    assert isinstance(got, events.QueryRequested) and got == ev
    assert isinstance(got.event_id, str) and got.occurred_at.tzinfo == UTC
    assert isinstance(got.credential.sealed_token, bytes)
    assert isinstance(got.context.extra, dict)
    verdict = approval_verdict("approve")
    decoded = CODEC.decode(CODEC.encode(verdict))
    assert decoded.verdict == "approve" and type(decoded.verdict) is str
    # memoryview / bytearray input (what some Kafka clients hand out) decode the same.
    raw = CODEC.encode(ev)
    assert CODEC.decode(memoryview(raw)) == CODEC.decode(bytearray(raw)) == ev


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"page": "secret-token"}, "ResultPage.page is a str"),
        ({"page": 2**31}, "out of range"),
        ({"row_offset": 2**63}, "Avro long"),
        ({"occurred_at": datetime(2026, 1, 1)}, "naive|offset"),  # naive datetimes are refused
        ({"rows_json": b"[]"}, "ResultPage"),
        ({"event_type": "QueryRequested"}, "event_type"),
        ({"last": None}, "ResultPage"),
        ({"event_id": "req-1"}, "UUID"),
        ({"event_id": "01A21D3C-A431-7942-B6C6-60F3EA2097DA"}, "UUID"),
    ],
)
def test_encode_errors(change: dict[str, Any], match: str) -> None:
    with pytest.raises(EncodeError, match=match) as err:
        CODEC.encode(dataclasses.replace(result_page(), **change))
    assert "secret-token" not in str(err.value)  # a value in the wrong field may be a secret


def test_encode_refuses_non_events_and_bad_enums() -> None:
    with pytest.raises(EncodeError, match="not a querytrail event"):
        CODEC.encode({"event_type": "ResultPage"})
    with pytest.raises(EncodeError):
        CODEC.encode(approval_verdict("maybe"))


def test_none_for_a_required_collection_is_refused() -> None:
    ev = query_requested(sealed=None)
    with pytest.raises(EncodeError, match=r"ClientContext\.extra"):
        CODEC.encode(dataclasses.replace(ev, context=events.ClientContext(extra=None)))  # type: ignore[arg-type]
    rejected = query_rejected(rules=None)
    with pytest.raises(EncodeError, match="rules"):
        CODEC.encode(rejected)
    with pytest.raises(EncodeError, match="rules"):
        CODEC.encode(dataclasses.replace(rejected, rules="rule-1"))  # a str is not a tuple of ids


def test_key_for() -> None:
    assert key_for(result_page()) == b"req-\xc3\xa9"
    table = events.CatalogTable(
        event_id=events.new_event_id(),
        request_id="sync-1",
        occurred_at=events.utcnow(),
        producer=events.producer("executor"),
        table="ANALYTICS.PUBLIC.CUSTOMERS",
        columns=(),
    )
    assert key_for(table) == b"ANALYTICS.PUBLIC.CUSTOMERS"
