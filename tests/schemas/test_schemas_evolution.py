"""Schema evolution and fingerprints: old and new writers and readers of QueryRequested."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from hypothesis import given, settings

from schemas import events
from schemas.codec import AVSC_DIR, EventCodec, crc64_avro, schema_versions, subject_for
from tests.schemas.schemas_samples import query_requested
from tests.schemas.schemas_strategies import EVENT_STRATEGIES

CODEC = EventCodec()
VERSIONS = {(v.name, v.version): v for v in schema_versions()}
V1 = VERSIONS[("QueryRequested", "v1")]
CURRENT = VERSIONS[("QueryRequested", "current")]


# ---- an independent CRC-64-AVRO, written from the Avro specification's reference code
_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def spec_fingerprint64(data: bytes) -> int:
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [
        # Test vectors from the Avro project's schema fingerprint tests (signed Java longs).
        ('"null"', 7195948357588979594),
        ('"int"', 8247732601305521295),
    ],
)
def test_fingerprint_test_vectors(canonical: str, expected: int) -> None:
    assert spec_fingerprint64(canonical.encode()) == expected % 2**64
    assert crc64_avro(canonical) == (expected % 2**64).to_bytes(8, "little")


@pytest.mark.parametrize("version", list(VERSIONS.values()), ids=lambda v: f"{v.name}-{v.version}")
def test_every_fingerprint_is_crc64_of_the_canonical_form(version: Any) -> None:
    assert version.fingerprint == spec_fingerprint64(version.canonical.encode()).to_bytes(8, "little")
    assert '"doc"' not in version.canonical and " " not in version.canonical.replace('" "', "")


def test_previous_version_is_the_current_minus_max_rows() -> None:
    v1 = json.loads((AVSC_DIR / "previous" / "QueryRequested.v1.avsc").read_text())
    cur = json.loads((AVSC_DIR / "QueryRequested.avsc").read_text())
    assert [f["name"] for f in v1["fields"]] == [f["name"] for f in cur["fields"]][:-1]
    assert cur["fields"][-1]["name"] == "max_rows" and cur["fields"][-1]["default"] is None
    assert V1.fingerprint != CURRENT.fingerprint


def _v1_body(event: events.QueryRequested) -> bytes:
    record = dataclasses.asdict(event)
    del record["max_rows"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, V1.parsed, record)
    return out.getvalue()


@settings(max_examples=50, deadline=None)
@given(event=EVENT_STRATEGIES["QueryRequested"])
def test_current_reader_reads_an_old_writer(event: events.QueryRequested) -> None:
    """Backward compatibility: a v1 producer's event decodes, max_rows takes its default."""
    got = CODEC.decode(b"\xc3\x01" + V1.fingerprint + _v1_body(event))
    assert got == dataclasses.replace(event, max_rows=None)


@settings(max_examples=50, deadline=None)
@given(event=EVENT_STRATEGIES["QueryRequested"])
def test_old_reader_reads_a_new_writer(event: events.QueryRequested) -> None:
    """Forward compatibility: a consumer still on v1 resolves the current writer's body."""
    encoded = CODEC.encode(event)
    assert encoded[2:10] == CURRENT.fingerprint
    old = fastavro.schemaless_reader(io.BytesIO(encoded[10:]), CURRENT.parsed, V1.parsed)
    expected = dataclasses.asdict(event)
    del expected["max_rows"]
    old["event_id"] = str(old["event_id"])  # fastavro returns uuid.UUID for logicalType uuid
    assert _lists_to_tuples(old) == _lists_to_tuples(expected)


def test_old_writer_through_the_registry() -> None:
    codec = EventCodec("mock://evolution")
    schema_id = codec._registry.register_schema(
        subject_for("QueryRequested"), Schema(json.dumps(V1.schema), "AVRO")
    )
    event = query_requested(sealed=None)
    assert codec.decode(b"\x00" + schema_id.to_bytes(4, "big") + _v1_body(event)) == event
    # And the current writer gets a new id under the same subject.
    new = codec.encode(dataclasses.replace(event, max_rows=10))
    assert int.from_bytes(new[1:5], "big") != schema_id
    assert codec.decode(new).max_rows == 10


def test_registry_schema_that_is_not_ours() -> None:
    codec = EventCodec("mock://evolution-foreign")
    foreign = {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "int"}]}
    schema_id = codec._registry.register_schema("Other", Schema(json.dumps(foreign), "AVRO"))
    with pytest.raises(Exception, match="not a querytrail event") as err:
        codec.decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x02")
    assert err.value.reason == "unknown_schema_id"  # type: ignore[attr-defined]


def _lists_to_tuples(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists_to_tuples(i) for k, i in v.items()}
    if isinstance(v, list | tuple):
        return tuple(_lists_to_tuples(i) for i in v)
    return v
