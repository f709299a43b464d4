"""The ``audit.events`` Iceberg schema and how one received record becomes one row.

Common fields first (the same names as the Avro events), then where the record was read
(topic, partition, offset), the identity, typed hot columns auditors filter on, the whole event
as JSON, the exact bytes received, and the chain. Hot columns are derived from the decoded event
only, so ``verify`` can re-derive them from ``avro`` and catch an edited column.
"""

from __future__ import annotations

import base64
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


def _identity(event: Any) -> Any:
    for name in _IDENTITY_FIELDS:
        value = getattr(event, name, None)
        if value is not None:
            return value
    credential = getattr(event, "credential", None)
    return getattr(credential, "attested", None) if credential is not None else None


def _codes(items: Any) -> list[str] | None:
    return None if items is None else [str(getattr(i, "code", i)) for i in items]


def derive(event: Any) -> dict[str, Any]:
    """The common and hot columns of one decoded event (no I/O, deterministic)."""
    et = event.event_type
    ident = _identity(event)
    prod = getattr(event, "producer", None)
    row: dict[str, Any] = {
        "event_id": str(event.event_id),
        "event_type": et,
        "request_id": event.request_id,
        "session_id": event.session_id,
        "occurred_at": event.occurred_at,
        "producer": None if prod is None else {"component": prod.component, "version": prod.version},
        "subject": getattr(ident, "subject", None),
        "issuer": getattr(ident, "issuer", None),
        "groups": list(ident.groups) if ident is not None else None,
        "service_account": getattr(ident, "service_account", None),
        "actor": getattr(ident, "actor", None),
        "rules": _list(getattr(event, "rules", None)),
        "tables": _list(getattr(event, "tables", None)),
        "tags": _list(getattr(event, "tags", None)),
        "classifications_touched": _list(getattr(event, "classifications_touched", None)),
        "findings": _codes(getattr(event, "findings", None)),
        "decision": getattr(event, "decision", None),
        "estimated_bytes": getattr(event, "estimated_bytes", None),
        "policy_sha256": getattr(event, "policy_sha256", None),
        "statement_sha256": getattr(event, "statement_sha256", None),
        "prompt": getattr(event, "prompt", None),
        "model": getattr(event, "model", None),
        "snowflake_query_id": getattr(event, "snowflake_query_id", None),
        "bytes_scanned": getattr(event, "bytes_scanned", None),
        "elapsed_ms": getattr(event, "elapsed_ms", None),
        "stage": getattr(event, "stage", None),
        "reason_code": getattr(event, "reason_code", None),
        "outcome": getattr(event, "outcome", None),
        "action": getattr(event, "action", None),
        "target_profile": getattr(event, "target_profile", None),
    }
    sql = getattr(event, "sql_text", None) or getattr(event, "sql", None)
    row["sql_text"] = sql if isinstance(sql, str) else None
    # ``statement`` is the statement kind on PolicyDecided but the SQL to run on the others.
    stmt = getattr(event, "statement", None)
    if et == "PolicyDecided":
        row["statement"], row["rewritten_sql"] = stmt, event.rewritten_sql
    else:
        row["statement"], row["rewritten_sql"] = None, stmt
    verdict = getattr(event, "verdict", None)
    row["verdict"] = None if verdict is None else str(getattr(verdict, "value", verdict))
    plan = getattr(event, "masked_columns", None)
    row["masked_columns"] = None if plan is None else [m.output for m in plan]
    row["unmasked_classified"] = None
    if et == "QueryCompleted":
        row["rows_returned"] = event.row_count
        row["masked_columns"] = [c.name for c in event.columns if c.masked]
        row["unmasked_classified"] = [c.name for c in event.columns if c.classification and not c.masked]
        row["detector_hits"] = [f"{h.column}:{h.detector}:{h.count}" for h in event.detector_hits]
    else:
        row["rows_returned"] = getattr(event, "row_count", None) if et == "DownstreamActionReported" else None
        row["detector_hits"] = None
    target = getattr(event, "target", None)
    if target is not None and row["target_profile"] is None:
        row["target_profile"] = target.profile
    ctx = getattr(event, "context", None)
    for name in ("repository", "workflow", "run_id", "ci_provider"):
        row[name] = getattr(ctx, name, None) if ctx is not None else None
    if ctx is not None and row["actor"] is None:
        row["actor"] = ctx.actor
    row["payload_json"] = payload_json(event)
    return row


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
    if getattr(event, "credential", None) is None:
        return orjson.dumps(event, default=_b64).decode()
    from schemas.codec import to_json_dict

    data = to_json_dict(event)
    cred = data.get("credential")
    if isinstance(cred, dict) and cred.get("sealed_token") is not None:
        # Sealed, but the audit log has no use for it: keep only that one was presented.
        cred["sealed_token"] = f"<sealed {len(str(cred['sealed_token']))} b64 chars>"
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
