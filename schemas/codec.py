"""The event codec: Avro single-object encoding by default, Confluent framing with a registry.

Wire formats (``decode`` accepts both, whichever the codec encodes with):

* single-object: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the writer
  schema's Parsing Canonical Form + Avro binary body. Every version in ``avsc/`` and
  ``avsc/previous/`` is known by fingerprint, so no registry is needed to read old events.
* Confluent: ``00`` + 4-byte big-endian schema id + body. Schemas are registered under the
  record-name strategy (subject ``io.querytrail.events.<Event>``): one topic carries several
  event types, so the topic-name strategy (``<topic>-value``) would force them into one subject.

Bodies written with an older schema are resolved to the current one (Avro schema
resolution); anything that is not a valid event raises ``DecodeError`` with a ``reason``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from schemas import events
from schemas._avro import NATIVE_UNAVAILABLE, codec_backend, compile_codec
from schemas._convert import JSON_ERRORS, build_converters

__all__ = [
    "AVSC_DIR",
    "SINGLE_OBJECT_MARKER",
    "DecodeError",
    "EncodeError",
    "EventCodec",
    "SchemaVersion",
    "crc64_avro",
    "from_json_dict",
    "key_for",
    "schema_versions",
    "subject_for",
    "to_json_dict",
]

log = logging.getLogger(__name__)

AVSC_DIR = Path(__file__).parent / "avsc"
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_CONFLUENT_MAGIC = 0
_VALUE = re.compile(r" is <.*> of type <class '([^']*)'>", re.DOTALL)
_NAMESPACE = "io.querytrail.events"
_CLASSES: dict[str, type] = {
    n: c for n in events.__all__ if isinstance(c := getattr(events, n), type) and n not in ("Verdict",)
}


class EncodeError(Exception):
    """An event could not be encoded (not an event, a value the schema refuses, registry down)."""


class DecodeError(Exception):
    """Bytes that are not a decodable querytrail event; ``reason`` is a short machine code.

    Reasons: too_short, unknown_marker, unknown_fingerprint, unknown_schema_id, corrupt_body,
    trailing_bytes, registry_unavailable (the only retryable one).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = reason == "registry_unavailable"


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event schema, with its identity on the wire."""

    name: str
    version: str  # "current" or the previous file's tag, e.g. "v1"
    schema: dict[str, Any]
    parsed: dict[str, Any]
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian, as written after C3 01

    @property
    def fingerprint_int(self) -> int:
        return int.from_bytes(self.fingerprint, "little")


def crc64_avro(canonical: str) -> bytes:
    """CRC-64-AVRO (the Avro spec's Rabin fingerprint) of a canonical form, little-endian bytes."""
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _version(path: Path, name: str, version: str) -> SchemaVersion:
    schema = json.loads(path.read_text(encoding="utf-8"))
    if schema.get("name") != name:
        raise ValueError(f"{path}: record name {schema.get('name')!r}, expected {name!r}")
    parsed: dict[str, Any] = fastavro.parse_schema(schema, named_schemas={})  # type: ignore[assignment]
    canonical = to_parsing_canonical_form(schema)
    return SchemaVersion(name, version, schema, parsed, canonical, crc64_avro(canonical))


@lru_cache(maxsize=4)
def schema_versions(avsc_dir: Path = AVSC_DIR) -> tuple[SchemaVersion, ...]:
    """Every known schema version: current ones (``X.avsc``) then previous (``previous/X.vN.avsc``)."""
    out = [_version(p, p.stem, "current") for p in sorted(avsc_dir.glob("*.avsc"))]
    for p in sorted((avsc_dir / "previous").glob("*.avsc")):
        name, _, tag = p.name.removesuffix(".avsc").partition(".")
        out.append(_version(p, name, tag or "previous"))
    seen: dict[bytes, SchemaVersion] = {}
    for v in out:
        if v.fingerprint in seen and seen[v.fingerprint].name != v.name:
            raise ValueError(f"{v.name} {v.version} and {seen[v.fingerprint].name} share a fingerprint")
        seen[v.fingerprint] = v
    return tuple(out)


def subject_for(name: str) -> str:
    """Registry subject of an event type (record-name strategy)."""
    return f"{_NAMESPACE}.{name}"


_Reader = Callable[[bytes, int, int], Any]


@lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    """Current schemas and JSON converters, built once per process."""
    current = {v.name: v for v in schema_versions() if v.version == "current"}
    return {"current": current, "conv": {n: build_converters(v.schema, _CLASSES) for n, v in current.items()}}


@lru_cache(maxsize=2)
def _fast(backend: str) -> dict[str, Any]:
    """Encoder and decoder of every current schema on one backend (native or python), built once."""
    if backend == "python" and NATIVE_UNAVAILABLE:  # once per process: lru_cache
        log.warning("Avro codec: using the slower generated-Python path (%s)", NATIVE_UNAVAILABLE)
    return {n: compile_codec(v.schema, _CLASSES, backend) for n, v in _tables()["current"].items()}


_mock_registries: dict[str, Any] = {}
_mock_lock = threading.Lock()


def _registry_client(url: str, config: dict[str, Any]) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    if not url.startswith("mock://"):
        return SchemaRegistryClient({**config, "url": url})
    # confluent-kafka's mock keeps its store per client object; a registry is shared by everyone
    # using the url, so codecs in one process (producer and consumer in a test) share one mock.
    with _mock_lock:
        if url not in _mock_registries:
            _mock_registries[url] = SchemaRegistryClient.new_client({**config, "url": url})
        return _mock_registries[url]


class EventCodec:
    """Encodes events to bytes and decodes bytes to events. Build one and reuse it."""

    def __init__(
        self,
        registry_url: str | None = None,
        *,
        registry_config: Mapping[str, Any] | None = None,
        registry_client: Any = None,
    ) -> None:
        """``registry_url`` switches encoding to Confluent framing; ``registry_config`` adds client
        settings (e.g. ``basic.auth.user.info``); ``registry_client`` supplies a ready client."""
        tables = _tables()
        self._current: dict[str, SchemaVersion] = tables["current"]
        self._conv = tables["conv"]
        #: "native" (the C extension) or "python" (generated code): QUERYTRAIL_CODEC picks, see _avro.
        self.backend = codec_backend()
        self._encoders: dict[type, tuple[bytes, Callable[[Any, bytes], bytes]]] = {}
        self._by_fp: dict[bytes, _Reader] = {}
        for name, fast in _fast(self.backend).items():
            v = self._current[name]
            self._encoders[_CLASSES[name]] = (SINGLE_OBJECT_MARKER + v.fingerprint, fast.encode)
            self._by_fp[v.fingerprint] = self._fast_reader(name, fast.decode)
        for v in schema_versions():
            if v.version != "current":
                self._by_fp[v.fingerprint] = self._resolving_reader(v.name, v.parsed, f"{v.name} {v.version}")
        self._registry = registry_client
        if self._registry is None and registry_url:
            self._registry = _registry_client(registry_url, dict(registry_config or {}))
        self._by_id: dict[int, _Reader] = {}
        self._registry_prefixes: dict[type, bytes] = {}
        self._registry_lock = threading.Lock()

    # ---- encoding
    def encode(self, event: Any) -> bytes:
        """The event's bytes: single-object encoding, or Confluent framing with a registry."""
        try:
            prefix, enc = self._encoders[type(event)]
        except KeyError:
            raise EncodeError(f"not a querytrail event: {type(event).__name__}") from None
        name = type(event).__name__
        if event.event_type != name:
            raise EncodeError(f"{name} with event_type {event.event_type!r}")
        if self._registry is not None:
            prefix = self._registry_prefix(type(event), name)
        try:
            return enc(event, prefix)
        except Exception as exc:  # any type or range error is the caller's bad value
            where = self._explain(event, name)
            raise EncodeError(f"cannot encode {name} {event.event_id}: {exc!r}{where}") from exc

    def _explain(self, event: Any, name: str) -> str:
        """Error path only: let fastavro's validator name the offending field."""
        try:
            validate(asdict(event), self._current[name].parsed, raise_errors=True)
        except ValidationError as exc:
            # Keep the field path and types, drop the value: it may be a secret (a token in the wrong field).
            fields = "; ".join(_VALUE.sub(r" is a \1", str(e)) for e in exc.errors)
            return f" ({fields})"
        except Exception:  # noqa: S110 - best effort: the original error is reported anyway
            pass
        return ""

    def _registry_prefix(self, cls: type, name: str) -> bytes:
        cached = self._registry_prefixes.get(cls)
        if cached is not None:
            return cached
        from confluent_kafka.schema_registry import Schema

        schema_str = json.dumps(self._current[name].schema)
        try:
            with self._registry_lock:
                schema_id = self._registry.register_schema(subject_for(name), Schema(schema_str, "AVRO"))
        except Exception as exc:
            raise EncodeError(
                f"schema registry refused or unreachable for {subject_for(name)}: {exc}"
            ) from exc
        framed = bytes([_CONFLUENT_MAGIC]) + int(schema_id).to_bytes(4, "big")
        self._registry_prefixes[cls] = framed
        log.info("registered %s as schema id %d", subject_for(name), schema_id)
        return framed

    # ---- decoding
    def decode(self, data: bytes) -> Any:
        """The event in ``data`` (either framing, any known schema version), or DecodeError."""
        if type(data) is not bytes:
            if data is None:  # a Kafka tombstone
                raise DecodeError("too_short", "no value (tombstone)")
            if not isinstance(data, bytearray | memoryview):
                raise DecodeError("corrupt_body", f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        n = len(data)
        if n == 0:
            raise DecodeError("too_short", "empty message")
        first = data[0]
        if first == 0xC3:
            if n < 10:
                raise DecodeError("too_short", f"{n} bytes, single-object header needs 10")
            if data[1] != 0x01:
                raise DecodeError("unknown_marker", f"single-object marker C3 {data[1]:02X}, expected C3 01")
            reader = self._by_fp.get(data[2:10])
            if reader is None:
                fp = data[2:10].hex()
                raise DecodeError(
                    "unknown_fingerprint", f"no known schema has fingerprint {fp} (little-endian)"
                )
            return reader(data, 10, n)
        if first == _CONFLUENT_MAGIC:
            if n < 5:
                raise DecodeError("too_short", f"{n} bytes, Confluent header needs 5")
            schema_id = int.from_bytes(data[1:5], "big")
            reader = self._by_id.get(schema_id) or self._lookup_id(schema_id)
            return reader(data, 5, n)
        raise DecodeError("unknown_marker", f"first byte {first:02X} is neither C3 (single-object) nor 00")

    def _fast_reader(self, name: str, dec: Callable[[bytes, int, int], tuple[Any, int]]) -> _Reader:
        def read(data: bytes, off: int, n: int) -> Any:
            try:
                obj, end = dec(data, off, n)
            except Exception as exc:  # truncation, bad utf-8, overflow: the body is not a valid event
                raise DecodeError("corrupt_body", f"{name}: {exc!r}") from exc
            if end != n:
                if end > n:  # a length prefix ran past the end (the generated Python leaves this check here)
                    raise DecodeError("corrupt_body", f"{name}: truncated, {end - n} bytes missing")
                raise DecodeError("trailing_bytes", f"{name}: {n - end} bytes after the body")
            if obj.event_type != name:
                raise DecodeError("corrupt_body", f"event_type {obj.event_type!r} in a {name} record")
            return obj

        return read

    def _resolving_reader(self, name: str, writer: dict[str, Any], label: str) -> _Reader:
        """Slow path: an older writer schema resolved to the current reader schema by fastavro."""
        reader_schema = self._current[name].parsed
        convert = self._conv[name]["avro_in"]

        def read(data: bytes, off: int, n: int) -> Any:
            fo = io.BytesIO(data)
            fo.seek(off)
            try:
                record = fastavro.schemaless_reader(fo, writer, reader_schema)
                obj = convert(record)
            except Exception as exc:
                raise DecodeError("corrupt_body", f"{label}: {exc!r}") from exc
            if fo.tell() != n:
                raise DecodeError("trailing_bytes", f"{label}: {n - fo.tell()} bytes after the body")
            if obj.event_type != name:
                raise DecodeError("corrupt_body", f"event_type {obj.event_type!r} in a {name} record")
            return obj

        return read

    def _lookup_id(self, schema_id: int) -> _Reader:
        if self._registry is None:
            raise DecodeError(
                "unknown_schema_id", f"Confluent schema id {schema_id} and no registry configured"
            )
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:
            code = getattr(exc, "http_status_code", None)
            if code == 404:
                raise DecodeError("unknown_schema_id", f"registry has no schema id {schema_id}") from exc
            raise DecodeError("registry_unavailable", f"schema id {schema_id}: {exc}") from exc
        try:
            schema = json.loads(registered.schema_str)
            canonical = to_parsing_canonical_form(schema)
        except Exception as exc:
            raise DecodeError(
                "unknown_schema_id", f"schema id {schema_id} is not an Avro schema: {exc}"
            ) from exc
        reader = self._by_fp.get(crc64_avro(canonical))
        if reader is None:
            name = schema.get("name", "?") if isinstance(schema, dict) else "?"
            if name not in self._current:
                raise DecodeError(
                    "unknown_schema_id", f"schema id {schema_id} is {name!r}, not a querytrail event"
                )
            parsed: dict[str, Any] = fastavro.parse_schema(schema, named_schemas={})  # type: ignore[assignment]
            reader = self._resolving_reader(name, parsed, f"{name} (registry id {schema_id})")
        self._by_id[schema_id] = reader
        return reader


# ---- JSON and keys
def to_json_dict(event: Any) -> dict[str, Any]:
    """The event as a JSON-safe dict (ISO-8601 UTC datetimes, base64 bytes, lists)."""
    try:
        conv = _tables()["conv"][type(event).__name__]["json_out"]
    except KeyError:
        raise EncodeError(f"not a querytrail event: {type(event).__name__}") from None
    return conv(event)  # type: ignore[no-any-return]


def from_json_dict(data: dict[str, Any]) -> Any:
    """Inverse of ``to_json_dict`` (e.g. for ``payload_json`` read back from the audit log).

    Checks the shape (known event_type, every required field present, base64, ISO-8601 with a
    zone), not each value's type: pass the result through ``EventCodec.encode`` to check that.
    """
    name = data.get("event_type") if isinstance(data, dict) else None
    conv = _tables()["conv"].get(name) if isinstance(name, str) else None
    if conv is None:
        raise DecodeError("corrupt_body", f"JSON with unknown event_type {name!r}")
    try:
        return conv["json_in"](data)
    except JSON_ERRORS as exc:
        raise DecodeError("corrupt_body", f"{name} JSON: {exc!r}") from exc


def key_for(event: Any) -> bytes:
    """Kafka key: the request id (UTF-8), or the table name for CatalogTable (compacted topic)."""
    if isinstance(event, events.CatalogTable):
        return event.table.encode()
    return str(event.request_id).encode()
