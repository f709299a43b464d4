"""The C codec (schemas._cavro): loaded, byte-for-byte equal to the Python generator and fastavro,
the same refusals, safe on untrusted bytes, and no leaks."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import _avro, events
from schemas._avro import CodecFunctions, CorruptBody, compile_native, compile_record, encode_long
from schemas.codec import _CLASSES, DecodeError, EncodeError, EventCodec, schema_versions
from tests.schemas.schemas_samples import approval_verdict, fastavro_body, query_rejected, result_page
from tests.schemas.schemas_strategies import EVENT_STRATEGIES, SCHEMAS, other_zones

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`

ROOT = Path(__file__).resolve().parents[2]
PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CURRENT = {v.name: v for v in schema_versions() if v.version == "current"}
NATIVE: dict[str, CodecFunctions] = {n: compile_native(s, _CLASSES) for n, s in SCHEMAS.items()}
PYTHON: dict[str, CodecFunctions] = {n: compile_record(s, _CLASSES) for n, s in SCHEMAS.items()}
_Codec = type(NATIVE["ResultPage"].encode.__self__)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def codecs() -> dict[str, EventCodec]:
    """An EventCodec on each backend, in one process."""
    saved = os.environ.pop(_avro.BACKEND_ENV, None)
    try:
        native = EventCodec()
        os.environ[_avro.BACKEND_ENV] = "python"
        python = EventCodec()
    finally:
        os.environ.pop(_avro.BACKEND_ENV, None)
        if saved is not None:
            os.environ[_avro.BACKEND_ENV] = saved
    assert (native.backend, python.backend) == ("native", "python")
    return {"native": native, "python": python}


# ---- events


def _request() -> events.QueryRequested:
    return events.QueryRequested(
        event_id=events.new_event_id(),
        request_id="req-1",
        session_id="github-actions:acme/etl:1:1",
        occurred_at=events.utcnow(),
        producer=events.producer("cli"),
        prompt="list customers in Zürich, café owners first " * 40,
        model="claude",
        sql="SELECT 1 -- ☃ 𝄞",
        target=events.Target(profile="analytics", database="ANALYTICS"),
        context=events.ClientContext(
            ci_provider="github-actions", extra={"run_attempt": "12", "ü-key": "ßeta", "k": "v", "z": "ß"}
        ),
        credential=events.Credential(
            sealed_token=os.urandom(100),
            token_sha256="f" * 64,
            attested=events.VerifiedIdentity(
                subject="s",
                issuer="i",
                groups=("a", "b"),
                actor="octo",
                claims_json="{}",
                token_sha256="e" * 64,
            ),
        ),
        max_rows=1000,
    )


# ---- loaded, and chosen by default


def test_the_extension_is_built_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI installs with `pip install -e .`: a build that silently fell back would fail here.
    import schemas._cavro  # noqa: F401

    assert _avro.NATIVE_UNAVAILABLE == ""
    monkeypatch.delenv(_avro.BACKEND_ENV, raising=False)
    assert _avro.codec_backend() == "native"
    assert EventCodec().backend == "native"
    monkeypatch.setenv(_avro.BACKEND_ENV, "python")
    assert _avro.codec_backend() == "python"
    monkeypatch.setenv(_avro.BACKEND_ENV, "rust")
    with pytest.raises(ValueError, match="QUERYTRAIL_CODEC"):
        _avro.codec_backend()


def test_without_the_extension_the_python_path_runs_and_says_why() -> None:
    code = (
        "import logging, sys; sys.modules['schemas._cavro'] = None; logging.basicConfig(); "
        "from schemas.codec import EventCodec; print(EventCodec().backend)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(_avro.BACKEND_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "python"
    assert out.stderr.count("generated-Python path") == 1 and "schemas._cavro" in out.stderr


# ---- same bytes, same objects


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@PROPS
@given(data=st.data())
def test_native_bytes_equal_python_and_fastavro(name: str, data: st.DataObject) -> None:
    event = data.draw(EVENT_STRATEGIES[name])
    native, python = NATIVE[name], PYTHON[name]
    body = native.encode(event, b"")
    assert body == python.encode(event, b"") == fastavro_body(event)
    assert native.encode(event, b"\xc3\x01pre") == b"\xc3\x01pre" + body
    got, end = native.decode(body, 0, len(body))
    assert end == len(body) and got == event and type(got) is type(event)
    assert python.decode(body, 0, len(body)) == (got, end)
    framed = b"xyz" + body + b"tail"
    assert native.decode(framed, 3, 3 + len(body)) == (event, 3 + len(body))


@PROPS
@given(
    when=st.datetimes(timezones=other_zones, min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 30))
)
def test_other_time_zones_encode_the_same_instant(when: datetime) -> None:
    ev = dataclasses.replace(result_page(), occurred_at=when)
    body = NATIVE["ResultPage"].encode(ev, b"")
    assert body == PYTHON["ResultPage"].encode(ev, b"")
    got, _ = NATIVE["ResultPage"].decode(body, 0, len(body))
    assert got.occurred_at == when and got.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 12, tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
        datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=1))),
    ],
)
def test_timestamp_edges(when: datetime) -> None:
    ev = dataclasses.replace(result_page(), occurred_at=when)
    body = NATIVE["ResultPage"].encode(ev, b"")
    assert body == PYTHON["ResultPage"].encode(ev, b"") == fastavro_body(ev)
    assert NATIVE["ResultPage"].decode(body, 0, len(body))[0].occurred_at == when


def test_zoneinfo_folds_keep_the_instant() -> None:
    try:
        paris = ZoneInfo("Europe/Paris")
    except ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    for when in [
        datetime(2026, 10, 25, 2, 30, tzinfo=paris),  # 02:30 happens twice: fold picks which
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=paris),
        datetime(2026, 3, 29, 2, 30, tzinfo=paris),  # does not exist: utcoffset still answers
    ]:
        ev = dataclasses.replace(result_page(), occurred_at=when)
        body = NATIVE["ResultPage"].encode(ev, b"")
        assert body == PYTHON["ResultPage"].encode(ev, b"") == fastavro_body(ev)
        assert NATIVE["ResultPage"].decode(body, 0, len(body))[0].occurred_at == when.astimezone(UTC)


def test_decoded_objects_look_like_the_python_ones() -> None:
    ev = _request()
    body = NATIVE["QueryRequested"].encode(ev, b"")
    got, _ = NATIVE["QueryRequested"].decode(body, 0, len(body))
    ref, _ = PYTHON["QueryRequested"].decode(body, 0, len(body))
    assert got == ref == ev
    assert vars(got) == vars(ref) and list(vars(got)) == list(vars(ref))
    assert type(got.context.extra) is dict and type(got.credential.attested.groups) is tuple
    assert type(got.credential.sealed_token) is bytes and got.occurred_at.tzinfo is UTC
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.prompt = "changed"  # type: ignore[misc]
    assert hash(got.producer) == hash(ev.producer)


def test_blocks_and_negative_counts_from_other_writers() -> None:
    """Java writers may split arrays/maps in blocks, with a negative count and a byte size."""
    ev = dataclasses.replace(query_rejected(), rules=("a", "bc", "d"))
    body = NATIVE["QueryRejected"].encode(ev, b"")
    one_block = encode_long(3) + b"\x02a\x04bc\x02d" + b"\x00"
    assert one_block in body
    split = encode_long(-2) + encode_long(5) + b"\x02a\x04bc" + encode_long(1) + b"\x02d" + b"\x00"
    other = body.replace(one_block, split)
    assert NATIVE["QueryRejected"].decode(other, 0, len(other)) == (ev, len(other))
    assert PYTHON["QueryRejected"].decode(other, 0, len(other)) == (ev, len(other))


# ---- the same refusals


def _refusals() -> list[tuple[str, Any]]:
    page, req, rejected = result_page(), _request(), query_rejected()
    verdict = approval_verdict()
    r = dataclasses.replace
    return [
        ("str for an int", r(page, page="1")),
        ("float for an int", r(page, page=1.5)),
        ("bytes for a string", r(page, rows_json=b"[]")),
        ("int for a string", r(page, request_id=7)),
        ("None for a string", r(page, request_id=None)),
        ("None for a boolean", r(page, last=None)),
        ("None for a record", r(page, producer=None)),
        ("None for a timestamp", r(page, occurred_at=None)),
        ("int over 32 bits", r(page, page=2**31)),
        ("int under 32 bits", r(page, page=-(2**31) - 1)),
        ("long over 64 bits", r(page, row_offset=2**63)),
        ("long under 64 bits", r(page, row_offset=-(2**63) - 1)),
        ("unknown enum symbol", r(verdict, verdict="maybe")),
        ("non-str enum", r(verdict, verdict=1)),
        ("naive datetime", r(page, occurred_at=datetime(2026, 1, 1))),
        ("date for a timestamp", r(page, occurred_at=date(2026, 1, 1))),
        ("non-UUID string", r(page, event_id="req-1")),
        ("upper-case UUID", r(page, event_id="01A21D3C-A431-7942-B6C6-60F3EA2097DA")),
        ("UUID object", r(page, event_id=UUID("01a21d3c-a431-7942-b6c6-60f3ea2097da"))),
        ("UUID with braces", r(page, event_id="{01a21d3c-a431-7942-b6c6-60f3ea2097da}")),
        ("str for an array", r(rejected, rules="rule-1")),
        ("None for an array", r(rejected, rules=None)),
        ("set for an array", r(rejected, rules={"rule-1"})),
        ("int in a str array", r(rejected, rules=("a", 1))),
        ("None for a map", r(req, context=events.ClientContext(extra=None))),  # type: ignore[arg-type]
        ("non-str map key", r(req, context=events.ClientContext(extra={1: "v"}))),  # type: ignore[dict-item]
        ("non-str map value", r(req, context=events.ClientContext(extra={"k": 1}))),  # type: ignore[dict-item]
        ("str for optional bytes", r(req, credential=events.Credential(sealed_token="x", token_sha256="t"))),  # type: ignore[arg-type]
        ("wrong record type", r(req, target=events.Producer(component="a", version="b"))),  # type: ignore[arg-type]
        ("lone surrogate", r(page, rows_json="\ud800")),
    ]


REFUSALS = _refusals()


@pytest.mark.parametrize(("what", "event"), REFUSALS, ids=[w for w, _ in REFUSALS])
def test_refusals_match_the_python_path(what: str, event: Any, codecs: dict[str, EventCodec]) -> None:
    name = type(event).__name__
    with pytest.raises(Exception) as py_err:  # the Python path raises many kinds
        PYTHON[name].encode(event, b"")
    with pytest.raises((TypeError, ValueError, OverflowError)) as c_err:
        NATIVE[name].encode(event, b"")
    assert py_err.value is not None
    for backend in ("native", "python"):
        with pytest.raises(EncodeError, match=name):
            codecs[backend].encode(event)
    # the message names the field (a UnicodeEncodeError keeps its own), never a value: it may be a secret
    assert "." in str(c_err.value) or isinstance(c_err.value, UnicodeEncodeError)


def test_native_messages_name_the_field(codecs: dict[str, EventCodec]) -> None:
    with pytest.raises(EncodeError, match=r"ClientContext\.extra: expected a dict, got NoneType"):
        codecs["native"].encode(dataclasses.replace(_request(), context=events.ClientContext(extra=None)))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match=r"ResultPage\.page: value out of range for an Avro int") as err:
        codecs["native"].encode(dataclasses.replace(result_page(), page=2**40))
    assert isinstance(err.value.__cause__, OverflowError)
    with pytest.raises(EncodeError, match=r"ResultPage\.request_id: expected str, got bytes") as err:
        codecs["native"].encode(dataclasses.replace(result_page(), request_id=b"secret-token"))
    assert "secret-token" not in str(err.value)


@pytest.mark.parametrize(
    ("change", "note"),
    [({"last": 1}, "int for a boolean"), ({"page": 1.0}, "integral float for an int")],
)
def test_native_is_stricter_where_python_relied_on_hash_equality(change: dict[str, Any], note: str) -> None:
    """The generated Python looks values up in dicts, so 1 == True and 1.0 == 1 slip through."""
    ev = dataclasses.replace(result_page(), **change)
    PYTHON["ResultPage"].encode(ev, b"")
    with pytest.raises(TypeError):
        NATIVE["ResultPage"].encode(ev, b"")


def test_bool_is_an_int_on_both_paths() -> None:
    ev = dataclasses.replace(result_page(), page=True)
    assert NATIVE["ResultPage"].encode(ev, b"") == PYTHON["ResultPage"].encode(ev, b"")


# ---- untrusted input


def _only_corrupt_body(name: str, data: bytes) -> None:
    try:
        NATIVE[name].decode(data, 0, len(data))
    except CorruptBody:
        pass


def test_every_truncation_fails_cleanly(codecs: dict[str, EventCodec]) -> None:
    for event in (_request(), result_page(), query_rejected()):
        name = type(event).__name__
        body = NATIVE[name].encode(event, b"")
        framed = codecs["native"].encode(event)
        for cut in range(len(body)):
            with pytest.raises(CorruptBody):
                NATIVE[name].decode(body[:cut], 0, cut)
            with pytest.raises(CorruptBody):
                NATIVE[name].decode(body, 0, cut)  # same bytes, shorter n: n is the bound, not len()
        for cut in range(len(framed)):
            with pytest.raises(DecodeError):
                codecs["native"].decode(framed[:cut])


@FUZZ
@given(name=st.sampled_from(sorted(SCHEMAS)), data=st.data())
def test_byte_flips_in_valid_bodies(name: str, data: st.DataObject) -> None:
    event = data.draw(EVENT_STRATEGIES[name])
    raw = bytearray(NATIVE[name].encode(event, b""))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    _only_corrupt_body(name, bytes(raw))


@FUZZ
@given(name=st.sampled_from(sorted(SCHEMAS)), body=st.binary(max_size=400))
def test_random_bodies(name: str, body: bytes, codecs: dict[str, EventCodec]) -> None:
    _only_corrupt_body(name, body)
    try:
        codecs["native"].decode(b"\xc3\x01" + CURRENT[name].fingerprint + body)
    except DecodeError:
        pass


@FUZZ
@given(name=st.sampled_from(sorted(SCHEMAS)), data=st.data())
def test_random_tail_after_a_valid_prefix(name: str, data: st.DataObject) -> None:
    body = NATIVE[name].encode(data.draw(EVENT_STRATEGIES[name]), b"")
    cut = data.draw(st.integers(0, len(body)))
    _only_corrupt_body(name, body[:cut] + data.draw(st.binary(min_size=1, max_size=64)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Box:
    v: Any


def _box(node: tuple[Any, ...]) -> Any:
    return _Codec(("record", "_Box", _Box, (("v", node),)), CorruptBody)


@pytest.mark.parametrize(
    ("node", "body", "why"),
    [
        (("string",), encode_long(2**62) + b"abc", "length runs past the end"),
        (("bytes",), encode_long(2**62), "length runs past the end"),
        (("string",), encode_long(-5) + b"abc", "negative length"),
        (("array", ("long",)), encode_long(2**62) + b"\x02", "count larger than the bytes left"),
        (("array", ("long",)), encode_long(-(2**62)) + encode_long(1) + b"\x02", "count larger"),
        (("array", ("long",)), encode_long(-(2**63)) + b"\x00", "block count out of range"),
        (("array", ("long",)), encode_long(-1) + encode_long(-3) + b"\x02\x00", "block size out of range"),
        (("array", ("null",)), encode_long(2**62) + b"\x00", "count larger"),
        (("array", ("array", ("null",))), encode_long(1) + encode_long(50) + b"\x00" * 10, "count larger"),
        (("map", ("long",)), encode_long(2**62) + b"\x02k\x02", "count larger"),
        (("map", ("long",)), encode_long(3) + b"\x02k\x02\x00", "count larger"),
        (("long",), b"\xff" * 9 + b"\x02", "overflows a 64-bit long"),
        (("long",), b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (("long",), b"\x80", "varint runs past the end"),
        (("int",), encode_long(2**31), "int overflow"),
        (("boolean",), b"\x02", "not 0 or 1"),
        (("boolean",), b"", "truncated"),
        (("double",), b"\x00" * 7, "truncated"),
        (("float",), b"\x00" * 3, "truncated"),
        (("enum", ("A", "B")), encode_long(2), "enum index out of range"),
        (("enum", ("A", "B")), encode_long(-1), "enum index out of range"),
        (("union", 0, ("long",)), b"\x04", "union branch"),
        (("union", 0, ("long",)), b"\x01", "union branch"),
        (("union", 1, ("long",)), b"", "truncated"),
        (("timestamp-micros",), encode_long(2**62), "timestamp out of the datetime range"),
        (("timestamp-micros",), encode_long(-(2**62)), "timestamp out of the datetime range"),
        (("string",), encode_long(2) + b"\xc3\x28", "UnicodeDecodeError"),
        (("string",), encode_long(3) + b"\xed\xa0\x80", "UnicodeDecodeError"),  # a UTF-8 surrogate
    ],
)
def test_hostile_bodies(node: tuple[Any, ...], body: bytes, why: str) -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CorruptBody, match=why):
            _box(node).decode(body, 0, len(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5 and peak < 100_000  # refused before allocating


def test_small_values_of_every_kind_round_trip() -> None:
    cases: list[tuple[tuple[Any, ...], Any, bytes]] = [
        (("float",), 1.5, b"\x00\x00\xc0\x3f"),
        (("double",), -2.0, b"\x00\x00\x00\x00\x00\x00\x00\xc0"),
        (("double",), 3, b"\x00\x00\x00\x00\x00\x00\x08\x40"),
        (("null",), None, b""),
        (("map", ("union", 1, ("long",))), {"a": None, "b": 1}, b"\x04\x02a\x02\x02b\x00\x02\x00"),
        (("array", ("null",)), (None, None), b"\x04\x00"),
    ]
    for node, value, body in cases:
        codec = _box(node)
        assert codec.encode(_Box(v=value)) == body
        got, end = codec.decode(body, 0, len(body))
        assert got == _Box(v=value if not isinstance(value, list) else tuple(value)) and end == len(body)
    with pytest.raises(OverflowError):
        _box(("float",)).encode(_Box(v=1e300))


def test_records_wider_than_the_stack_buffer() -> None:
    wide = dataclasses.make_dataclass("Wide", [f"f{i}" for i in range(40)], frozen=True, kw_only=True)
    codec = _Codec(("record", "Wide", wide, tuple((f"f{i}", ("long",)) for i in range(40))), CorruptBody)
    value = wide(**{f"f{i}": i * 1000 for i in range(40)})
    body = codec.encode(value)
    assert codec.decode(body, 0, len(body)) == (value, len(body))
    assert list(vars(codec.decode(body, 0, len(body))[0])) == [f"f{i}" for i in range(40)]
    for cut in range(len(body)):
        with pytest.raises(CorruptBody):
            codec.decode(body, 0, cut)


def test_programs_are_checked() -> None:
    deep: tuple[Any, ...] = ("long",)
    for _ in range(40):
        deep = ("array", deep)
    for bad in [
        ("long",),
        ("record", "_Box", _Box, (("v", deep),)),
        ("record", "_Box", _Box, (("v", ("decimal",)),)),
        ("record", "_Box", _Box, (("v", ("union", 2, ("long",))),)),
        ("record", "_Box", _Box, (("v", ("enum", ())),)),
        ("record", "_Box", int, ()),  # no instance __dict__
    ]:
        with pytest.raises((TypeError, ValueError)):
            _Codec(bad, CorruptBody)
    with pytest.raises(ValueError, match="offset"):
        _box(("long",)).decode(b"\x02", 0, 2)
    with pytest.raises(ValueError, match="offset"):
        _box(("long",)).decode(b"\x02", 1, 0)
    with pytest.raises(TypeError):
        _box(("long",)).decode(bytearray(b"\x02"), 0, 1)


class _Sneaky(_Box):
    """A _Box whose missing field is looked up by Python code that empties the list being encoded."""

    def __getattr__(self, name: str) -> Any:
        self.__dict__["victim"].clear()
        return 2


class _Grow:
    """A record whose attribute lookup appends to the list being encoded."""

    def __getattr__(self, name: str) -> Any:
        self.__dict__["victim"].append(None)
        return 1


def test_lists_that_change_while_encoding_are_refused() -> None:
    items: list[Any] = [_Box(v=1), object.__new__(_Sneaky), _Box(v=3)]
    object.__setattr__(items[1], "victim", items)
    codec = _box(("array", ("record", "_Box", _Box, (("v", ("long",)),))))
    with pytest.raises(RuntimeError, match="changed size"):
        codec.encode(_Box(v=items))
    grow = _Grow()
    grown: list[Any] = [grow, None, None]
    grow.victim = grown  # type: ignore[attr-defined]
    codec = _box(("array", ("union", 0, ("record", "_Grow", _Grow, (("v", ("long",)),)))))
    with pytest.raises(RuntimeError, match="changed size"):
        codec.encode(_Box(v=grown))
    with pytest.raises(TypeError, match="expected a _Grow record, got int"):
        codec.encode(_Box(v=[1]))


# ---- no leaks


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_no_leaks() -> None:
    native = NATIVE["QueryRequested"]
    ev = _request()
    body = native.encode(ev, b"")
    bad_event = dataclasses.replace(ev, context=events.ClientContext(extra={"k": 1}))  # type: ignore[dict-item]
    truncated = body[: len(body) // 2]
    cls, key, symbol = events.QueryRequested, sys.intern("event_id"), events.VERDICT_SYMBOLS[0]

    def work(n: int) -> None:
        for _ in range(n):
            got, _ = native.decode(body, 0, len(body))
            native.encode(got, b"\xc3\x01")
        for _ in range(n // 10):
            try:
                native.encode(bad_event, b"")
            except TypeError:
                pass
            try:
                native.decode(truncated, 0, len(truncated))
            except CorruptBody:
                pass

    work(2_000)
    gc.collect()
    shared = (None, True, False, "v", "ß")  # singletons: a leaked reference to them costs no memory
    refs = (
        sys.getrefcount(cls),
        sys.getrefcount(key),
        sys.getrefcount(symbol),
        *map(sys.getrefcount, shared),
    )
    before = _rss_kb()
    work(200_000)
    grown = _rss_kb() - before
    gc.collect()
    after = (
        sys.getrefcount(cls),
        sys.getrefcount(key),
        sys.getrefcount(symbol),
        *map(sys.getrefcount, shared),
    )
    # A leaked or over-freed reference per call would move these by ~200,000; a few come and go
    # with CPython's attribute-lookup cache (it holds the names it caches) and the interpreter.
    assert all(abs(a - b) <= 1_000 for a, b in zip(after, refs, strict=True)), (refs, after)
    assert grown < 4_000, f"RSS grew {grown} kB over 200,000 round trips"


# ---- the whole schemas suite on the Python path too


@pytest.mark.slow
def test_the_schemas_suite_passes_on_the_python_path() -> None:
    env = {**os.environ, _avro.BACKEND_ENV: "python", "PYTHONPATH": str(ROOT)}
    here = Path(__file__).resolve()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(here.parent),
            f"--ignore={here}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
