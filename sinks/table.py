"""Opening the Iceberg catalog and the ``audit.events`` table from settings.

Local default: a pyiceberg SQL catalog on ``home/iceberg/catalog.db`` with the warehouse under
``home/iceberg/warehouse``. Production: ``iceberg.catalog_type = rest`` (REST catalog) or a
``catalog_uri`` such as ``postgresql+psycopg2://...`` (the JDBC-style SQL catalog), S3 through
``iceberg.properties`` (``s3.endpoint``, ``s3.access-key-id``, ...).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from querytrail.settings import Settings
from sinks.audit_schema import PARTITION_SPEC, SCHEMA
from sinks.chain import Head

__all__ = [
    "SUMMARY_HEADS",
    "SUMMARY_KEY_ID",
    "SUMMARY_OFFSETS",
    "SinkState",
    "catalog_properties",
    "load_or_create_table",
    "open_catalog",
    "open_table",
    "state_of",
]

log = logging.getLogger(__name__)

SUMMARY_OFFSETS = "querytrail.offsets"  # {"topic:partition": next offset to consume}
SUMMARY_HEADS = "querytrail.heads"  # {"topic:partition": {"offset", "hash", "sig"}}
SUMMARY_KEY_ID = "querytrail.key-id"
_RETRIES = "commit.retry.num-retries"


def catalog_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg catalog properties from settings (explicit properties win)."""
    ice = settings.iceberg
    base = settings.home / "iceberg"
    props: dict[str, str] = {"type": ice.catalog_type}
    if ice.catalog_type == "sql":
        props["uri"] = ice.catalog_uri or f"sqlite:///{base / 'catalog.db'}"
        props["warehouse"] = ice.warehouse or (base / "warehouse").as_uri()
        if props["uri"].startswith("sqlite"):
            base.mkdir(parents=True, exist_ok=True)
            (base / "warehouse").mkdir(parents=True, exist_ok=True)
    else:
        if ice.catalog_uri:
            props["uri"] = ice.catalog_uri
        if ice.warehouse:
            props["warehouse"] = ice.warehouse
    props.update(ice.properties)
    return props


def open_catalog(settings: Settings) -> Catalog:
    props = catalog_properties(settings)
    for attempt in range(3):
        try:
            return load_catalog(settings.iceberg.catalog_name, **props)
        except Exception as exc:
            # A SQL catalog creates its tables on first use; two processes doing that at once
            # (the sink starting while an auditor queries) race, and the loser sees them exist.
            if "already exists" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def load_or_create_table(settings: Settings) -> Table:
    """The audit table, created (with its namespace) when missing."""
    catalog = open_catalog(settings)
    ident = settings.iceberg.table
    namespace = ident.rsplit(".", 1)[0]
    try:
        return _no_library_retry(catalog.load_table(ident))
    except NoSuchTableError:
        pass
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    try:
        return catalog.create_table(
            ident,
            schema=SCHEMA,
            partition_spec=PARTITION_SPEC,
            properties={
                "write.parquet.compression-codec": "zstd",
                "querytrail.append-only": "true",
                "format-version": "2",
                # pyiceberg would otherwise re-apply a conflicting append on top of another
                # writer's snapshot; the sink decides itself (it checks its chain heads first)
                _RETRIES: "0",
            },
        )
    except TableAlreadyExistsError:
        return _no_library_retry(catalog.load_table(ident))


def _no_library_retry(table: Table) -> Table:
    if table.metadata.properties.get(_RETRIES) != "0":
        with table.transaction() as tx:
            tx.set_properties({_RETRIES: "0"})
    return table


def open_table(settings: Settings) -> Table:
    """The existing audit table (NoSuchTableError when the sink never ran)."""
    return open_catalog(settings).load_table(settings.iceberg.table)


@dataclass
class SinkState:
    """What the sink keeps in each snapshot summary: offsets to resume from and signed heads."""

    offsets: dict[str, int]
    heads: dict[str, Head]
    key_id: str | None = None

    def to_summary(self) -> dict[str, str]:
        props = {
            SUMMARY_OFFSETS: json.dumps(self.offsets, sort_keys=True, separators=(",", ":")),
            SUMMARY_HEADS: json.dumps(
                {k: h.to_json() for k, h in self.heads.items()}, sort_keys=True, separators=(",", ":")
            ),
        }
        if self.key_id:
            props[SUMMARY_KEY_ID] = self.key_id
        return props


def state_of(snapshot: Snapshot | None) -> SinkState | None:
    """The sink state recorded in a snapshot, or None when it holds none (or is not ours)."""
    if snapshot is None or snapshot.summary is None:
        return None
    props: dict[str, Any] = dict(snapshot.summary.additional_properties)
    if SUMMARY_OFFSETS not in props or SUMMARY_HEADS not in props:
        return None
    offsets = {k: int(v) for k, v in json.loads(props[SUMMARY_OFFSETS]).items()}
    heads = {k: Head.from_json(v) for k, v in json.loads(props[SUMMARY_HEADS]).items()}
    return SinkState(offsets=offsets, heads=heads, key_id=props.get(SUMMARY_KEY_ID))
