"""The ``audit.events`` Iceberg schema and how one received record becomes one row.

Common fields first (the same names as the Avro events), then where the record was read
(topic, partition, offset), the identity, typed hot columns auditors filter on, the whole event
as JSON, the exact bytes received, and the chain. Hot columns are derived from the decoded event
only, so ``verify`` can re-derive them from ``avro`` and catch an edited column.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

__all__ = [
    "ARROW_SCHEMA",
    "DERIVED_COLUMNS",
    "LIST_COLUMNS",
    "PARTITION_SPEC",
    "SCHEMA",
    "derive",
    "payload_json",
    "row_fields",
    "undecodable_row",
]

_S, _L, _I = StringType(), LongType(), IntegerType()
# name -> type of the typed hot columns (all optional; derived from the event alone)
_HOT: tuple[tuple[str, Any], ...] = (
    ("subject", _S),
    ("issuer", _S),
    ("groups", "list"),
    ("service_account", BooleanType()),
    ("actor", _S),
    ("sql_text", _S),
    ("rewritten_sql", _S),
    ("statement", _S),
    ("decision", _S),
    ("rules", "list"),
    ("tables", "list"),
    ("tags", "list"),
    ("classifications_touched", "list"),
    ("findings", "list"),
    ("masked_columns", "list"),
    ("unmasked_classified", "list"),
    ("detector_hits", "list"),
    ("rows_returned", _L),
    ("bytes_scanned", _L),
    ("estimated_bytes", _L),
    ("elapsed_ms", _L),
    ("prompt", _S),
    ("model", _S),
    ("repository", _S),
    ("workflow", _S),
    ("run_id", _S),
    ("ci_provider", _S),
    ("target_profile", _S),
    ("statement_sha256", _S),
    ("policy_sha256", _S),
    ("verdict", _S),
    ("stage", _S),
    ("reason_code", _S),
    ("outcome", _S),
    ("snowflake_query_id", _S),
    ("action", _S),
)
LIST_COLUMNS = frozenset(name for name, kind in _HOT if kind == "list")
DERIVED_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "request_id",
    "session_id",
    "occurred_at",
    "producer",
    *(name for name, _ in _HOT),
    "payload_json",
)
_TEMPLATE: dict[str, Any] = dict.fromkeys(DERIVED_COLUMNS)


def _fields() -> list[NestedField]:
    fid = iter(range(1, 1000))
    fields = [
        NestedField(next(fid), "event_id", _S, required=True),
        NestedField(next(fid), "event_type", _S, required=True),
        NestedField(next(fid), "request_id", _S, required=False),
        NestedField(next(fid), "session_id", _S, required=False),
        NestedField(next(fid), "occurred_at", TimestamptzType(), required=True),
    ]
    comp, ver = next(fid), next(fid)
    producer = StructType(
        NestedField(comp, "component", _S, required=False), NestedField(ver, "version", _S, required=False)
    )
    fields.append(NestedField(next(fid), "producer", producer, required=False))
    fields += [
        NestedField(next(fid), "topic", _S, required=True),
        NestedField(next(fid), "partition", _I, required=True),
        NestedField(next(fid), "offset", _L, required=True),
    ]
    for name, kind in _HOT:
        if kind == "list":
            element = next(fid)
            typ: Any = ListType(element, _S, element_required=False)
        else:
            typ = kind
        fields.append(NestedField(next(fid), name, typ, required=False))
    fields += [
        NestedField(next(fid), "payload_json", _S, required=False),
        NestedField(next(fid), "avro", BinaryType(), required=True),
        # the producer's witness (docs/security.md): its Ed25519 signature over (topic, avro)
        NestedField(next(fid), "signature", BinaryType(), required=False),
        NestedField(next(fid), "signing_key_id", _S, required=False),
        NestedField(next(fid), "avro_sha256", _S, required=True),
        NestedField(next(fid), "chain_hash", _S, required=True),
        NestedField(next(fid), "ingested_at", TimestamptzType(), required=True),
    ]
    return fields


SCHEMA = Schema(*_fields())
PARTITION_SPEC = PartitionSpec(
    PartitionField(
        source_id=SCHEMA.find_field("occurred_at").field_id,
        field_id=1000,
        transform=DayTransform(),
        name="occurred_at_day",
    )
)


def _arrow_type(typ: Any) -> pa.DataType:
    if isinstance(typ, StringType):
        return pa.large_string()
    if isinstance(typ, LongType):
        return pa.int64()
    if isinstance(typ, IntegerType):
        return pa.int32()
    if isinstance(typ, BooleanType):
        return pa.bool_()
    if isinstance(typ, BinaryType):
        return pa.large_binary()
    if isinstance(typ, TimestamptzType):
        return pa.timestamp("us", tz="UTC")
    if isinstance(typ, ListType):
        return pa.large_list(pa.field("element", pa.large_string()))
    if isinstance(typ, StructType):
        return pa.struct([pa.field(f.name, _arrow_type(f.field_type)) for f in typ.fields])
    raise TypeError(typ)


ARROW_SCHEMA = pa.schema(
    [pa.field(f.name, _arrow_type(f.field_type), nullable=not f.required) for f in SCHEMA.fields]
)

_IDENTITY_FIELDS = ("identity", "requester", "approver", "reporter")
_SCALARS = (
    "decision",
    "estimated_bytes",
    "policy_sha256",
    "statement_sha256",
    "prompt",
    "model",
    "snowflake_query_id",
    "bytes_scanned",
    "elapsed_ms",
    "stage",
    "reason_code",
    "outcome",
    "action",
    "target_profile",
)
_LISTS = ("rules", "tables", "tags", "classifications_touched")
_CONTEXT = ("repository", "workflow", "run_id", "ci_provider")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Which of the hot-column attributes an event class has (looked up once per class)."""

    names: frozenset[str]
    scalars: tuple[str, ...]
    lists: tuple[str, ...]
    identities: tuple[str, ...]


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    cached = _PLANS.get(cls)
    if cached is not None:
        return cached
    names = frozenset(f.name for f in dataclasses.fields(cls))
    _PLANS[cls] = plan = _Plan(
        names=names,
        scalars=tuple(n for n in _SCALARS if n in names),
        lists=tuple(n for n in _LISTS if n in names),
        identities=tuple(n for n in _IDENTITY_FIELDS if n in names),
    )
    return plan


def derive(event: Any) -> dict[str, Any]:
    """The common and hot columns of one decoded event (no I/O, deterministic)."""
    plan = _plan(type(event))
    names = plan.names
    et = event.event_type
    prod = event.producer
    row = dict(_TEMPLATE)
    row["event_id"] = str(event.event_id)
    row["event_type"] = et
    row["request_id"] = event.request_id
    row["session_id"] = event.session_id
    row["occurred_at"] = event.occurred_at
    row["producer"] = None if prod is None else {"component": prod.component, "version": prod.version}
    ident = None
    for name in plan.identities:
        ident = getattr(event, name)
        if ident is not None:
            break
    if ident is None and "credential" in names and event.credential is not None:
        ident = event.credential.attested
    if ident is not None:
        row["subject"], row["issuer"], row["groups"] = ident.subject, ident.issuer, list(ident.groups)
        row["service_account"], row["actor"] = ident.service_account, ident.actor
    for name in plan.scalars:
        row[name] = getattr(event, name)
    for name in plan.lists:
        value = getattr(event, name)
        row[name] = None if value is None else [str(v) for v in value]
    if "findings" in names:
        row["findings"] = [f.code for f in event.findings]
    sql = event.sql_text if "sql_text" in names else event.sql if "sql" in names else None
    row["sql_text"] = sql if isinstance(sql, str) else None
    # ``statement`` is the statement kind on PolicyDecided but the SQL to run on the others.
    if "statement" in names:
        if et == "PolicyDecided":
            row["statement"], row["rewritten_sql"] = event.statement, event.rewritten_sql
        else:
            row["rewritten_sql"] = event.statement
    if "verdict" in names and event.verdict is not None:
        row["verdict"] = str(getattr(event.verdict, "value", event.verdict))
    if "masked_columns" in names:
        row["masked_columns"] = [m.output for m in event.masked_columns]
    if et == "QueryCompleted":
        row["rows_returned"] = event.row_count
        row["masked_columns"] = [c.name for c in event.columns if c.masked]
        row["unmasked_classified"] = [c.name for c in event.columns if c.classification and not c.masked]
        row["detector_hits"] = [f"{h.column}:{h.detector}:{h.count}" for h in event.detector_hits]
    elif et == "DownstreamActionReported":
        row["rows_returned"] = event.row_count
    if "target" in names and row["target_profile"] is None and event.target is not None:
        row["target_profile"] = event.target.profile
    if "context" in names and event.context is not None:
        ctx = event.context
        for name in _CONTEXT:
            row[name] = getattr(ctx, name)
        if row["actor"] is None:
            row["actor"] = ctx.actor
    if et == "PolicyDecided" and ident is not None:
        # the verified token's own claims, where it carries them, beat what a caller says it is
        for name, value in _verified_context(ident.claims_json).items():
            row[name] = value
    row["payload_json"] = payload_json(event)
    return row


_VERIFIED_CONTEXT = ("repository", "workflow", "run_id")


def _verified_context(claims_json: str | None) -> dict[str, str]:
    """repository/workflow/run_id from verified claims (GitHub Actions OIDC names them so)."""
    if not claims_json:
        return {}
    try:
        claims = json.loads(claims_json)
    except ValueError:
        return {}
    if not isinstance(claims, dict):
        return {}
    return {k: str(claims[k]) for k in _VERIFIED_CONTEXT if isinstance(claims.get(k), str | int)}


def _list(value: Any) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def _b64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def payload_json(event: Any) -> str:
    """The whole event as JSON (the content of ``schemas.codec.to_json_dict``); no sealed token.

    orjson serialises the frozen dataclass directly (same content as ``to_json_dict``, checked by a
    test) because this runs for every event the sink stores.
    """
    cred = getattr(event, "credential", None)
    if cred is None or cred.sealed_token is None:
        return orjson.dumps(event, default=_b64).decode()
    from schemas.codec import to_json_dict

    data = to_json_dict(event)
    sealed = data["credential"]
    # Sealed, but the audit log has no use for it: keep only that one was presented.
    sealed["sealed_token"] = f"<sealed {len(str(sealed['sealed_token']))} b64 chars>"
    return orjson.dumps(data).decode()


def undecodable_row(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    error: str,
    timestamp_ms: int | None,
) -> dict[str, Any]:
    """Bytes the codec could not decode: recorded, never dropped."""
    when = (
        datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
        if timestamp_ms
        else datetime(1970, 1, 1, tzinfo=UTC)
    )
    row: dict[str, Any] = dict.fromkeys(DERIVED_COLUMNS)
    row.update(
        event_id=f"undecodable:{topic}:{partition}:{offset}",
        event_type="Undecodable",
        request_id=key.decode("utf-8", "replace") if key else None,
        occurred_at=when,
        reason_code="undecodable" if value else "tombstone",
        payload_json=json.dumps({"error": error, "value_length": len(value)}, sort_keys=True),
    )
    return row


def row_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A derived row as comparable plain values (for verify)."""
    return {name: row.get(name) for name in DERIVED_COLUMNS}
