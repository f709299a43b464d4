"""Anything that is not a valid event raises DecodeError (with a reason), never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import DecodeError, EventCodec, schema_versions
from tests.schemas.schemas_samples import result_page
from tests.schemas.schemas_strategies import any_event

CODEC = EventCodec()
REGISTRY_CODEC = EventCodec("mock://decode-errors")
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = {
    "too_short",
    "unknown_marker",
    "unknown_fingerprint",
    "unknown_schema_id",
    "corrupt_body",
    "trailing_bytes",
    "registry_unavailable",
}
FINGERPRINTS = [v.fingerprint for v in schema_versions()]


def _decode_or_decode_error(codec: EventCodec, data: bytes) -> Any:
    try:
        return codec.decode(data)
    except DecodeError as exc:
        assert exc.reason in REASONS
        assert str(exc).startswith(exc.reason)
        return None


@PROPS
@given(data=st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _decode_or_decode_error(CODEC, data)
    _decode_or_decode_error(REGISTRY_CODEC, data)


@PROPS
@given(fp=st.sampled_from(FINGERPRINTS), body=st.binary(max_size=300))
def test_random_body_behind_a_known_fingerprint(fp: bytes, body: bytes) -> None:
    _decode_or_decode_error(CODEC, b"\xc3\x01" + fp + body)


@PROPS
@given(event=any_event, data=st.data())
def test_mutated_valid_events(event: Any, data: st.DataObject) -> None:
    for codec in (CODEC, REGISTRY_CODEC):
        raw = bytearray(codec.encode(event))
        how = data.draw(st.sampled_from(["flip", "truncate", "append", "insert"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if how == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            del raw[i:]
        elif how == "append":
            raw += data.draw(st.binary(min_size=1, max_size=8))
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        _decode_or_decode_error(codec, bytes(raw))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (b"\xc3\x01\x00", "too_short"),
        (b"\x00\x00\x01", "too_short"),
        (b"\xc3\x02" + b"\x00" * 12, "unknown_marker"),
        (b'{"event_type": "QueryRequested"}', "unknown_marker"),
        (b"\xc3\x01" + b"\x11" * 8 + b"\x00", "unknown_fingerprint"),
        (b"\x00\x00\x00\x00\x01\x00", "unknown_schema_id"),
    ],
)
def test_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        CODEC.decode(data)
    assert err.value.reason == reason
    assert not err.value.retryable


@pytest.mark.parametrize(
    ("value", "reason"), [(None, "too_short"), ("text", "corrupt_body"), (7, "corrupt_body")]
)
def test_values_that_are_not_bytes(value: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        CODEC.decode(value)
    assert err.value.reason == reason


def test_body_reasons() -> None:
    fp = {v.name: v.fingerprint for v in schema_versions() if v.version == "current"}["ResultPage"]
    with pytest.raises(DecodeError) as err:
        CODEC.decode(b"\xc3\x01" + fp + b"\x48")  # a 36-byte event_id that is not there
    assert err.value.reason == "corrupt_body"
    with pytest.raises(DecodeError) as err:
        CODEC.decode(b"\xc3\x01" + fp + b"\x02\xff")  # invalid UTF-8 in a string
    assert err.value.reason == "corrupt_body" and "UnicodeDecodeError" in str(err.value)
    with pytest.raises(DecodeError) as err:
        CODEC.decode(b"\xc3\x01" + fp + b"\xff" * 12)  # a varint longer than a long
    assert err.value.reason == "corrupt_body"


def test_event_type_must_match_the_record() -> None:
    fp = {v.name: v.fingerprint for v in schema_versions() if v.version == "current"}["ResultPage"]
    ok = CODEC.encode(result_page())
    body = ok[10:]
    # event_id (36 bytes + 1 length byte), then event_type "ResultPage" -> "ResultPagX"
    assert body[38:48] == b"ResultPage"
    forged = b"\xc3\x01" + fp + body[:47] + b"X" + body[48:]
    with pytest.raises(DecodeError, match="event_type"):
        CODEC.decode(forged)


def test_registry_outage_is_retryable() -> None:
    class DownRegistry:
        def get_schema(self, schema_id: int) -> Any:
            raise ConnectionError("registry down")  # a real outage cannot be caused from a unit test

    codec = EventCodec(registry_client=DownRegistry())
    with pytest.raises(DecodeError) as err:
        codec.decode(b"\x00\x00\x00\x00\x05" + b"\x00" * 10)
    assert err.value.reason == "registry_unavailable" and err.value.retryable
