"""Snapshot expiry that ``verify`` can tell from a rollback: the signed retention anchor.

``expire`` removes the snapshot metadata of the table's oldest ancestors (never a row: in an
append-only table the current snapshot still lists every data file, so chains are still
recomputed from their first row). In the same Iceberg commit it sets the table property
``querytrail.retention-anchor``: canonical JSON, signed with the chain key, that records

- the oldest kept snapshot (id, sequence number) and the id of its expired parent,
- how many snapshots this expiry removed, their sequence-number range, and the total so far,
- that snapshot's signed chain heads and offsets per topic-partition,
- when, by whom, which key signed, and the previous anchor's SHA-256 and number (carried
  forward, so one anchor stands for every expiry before it).

``check`` (called by ``verify``) accepts missing ancestors only when a valid anchor names the
oldest snapshot still there and its parent; a rollback, history removed without an anchor, or
an anchor that is altered, signed by an unknown key or whose heads do not match fail, each with
its own problem kind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sinks.chain import HeadSigner, HeadVerifier
from sinks.table import state_of

__all__ = ["ANCHOR_PROPERTY", "ExpiryError", "RetentionCheck", "check", "expire", "oldest_ancestor"]

log = logging.getLogger(__name__)

ANCHOR_PROPERTY = "querytrail.retention-anchor"
_TYPE = "querytrail-retention-anchor-v1"
_ZERO = "0" * 64
_ATTEMPTS = 5


class ExpiryError(Exception):
    """Expiry refused: the table is not in a state that may be anchored."""


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def oldest_ancestor(tbl: Any) -> tuple[Any, list[Any]]:
    """(the oldest snapshot still on the current lineage, the lineage newest first)."""
    by_id = {s.snapshot_id: s for s in tbl.metadata.snapshots}
    lineage: list[Any] = []
    cur = tbl.current_snapshot()
    seen: set[int] = set()
    while cur is not None and cur.snapshot_id not in seen:
        seen.add(cur.snapshot_id)
        lineage.append(cur)
        cur = by_id.get(cur.parent_snapshot_id) if cur.parent_snapshot_id is not None else None
    return (lineage[-1] if lineage else None), lineage


def _anchor_body(
    tbl: Any, signer: HeadSigner, kept: Any, expired: list[Any], by: str, prev_raw: str | None
) -> dict[str, Any]:
    state = state_of(kept)
    assert state is not None
    prev: dict[str, Any] = {}
    if prev_raw:
        try:
            prev = json.loads(prev_raw)
        except ValueError:
            prev = {}
    seqs = [int(s.sequence_number or 0) for s in expired]
    return {
        "type": _TYPE,
        "table": str(tbl.metadata.table_uuid),
        "n": int(prev.get("n", -1)) + 1 if prev else 0,
        "prev": hashlib.sha256(prev_raw.encode()).hexdigest() if prev_raw else _ZERO,
        "expired_at": datetime.now(UTC).isoformat(),
        "by": by,
        "kept_from": {"snapshot_id": kept.snapshot_id, "sequence_number": int(kept.sequence_number or 0)},
        "expired": {
            "count": len(expired),
            "total": int((prev.get("expired") or {}).get("total", 0)) + len(expired),
            "parent_snapshot_id": kept.parent_snapshot_id,
            "sequence_numbers": [min(seqs), max(seqs)],
        },
        "heads": {tp: {"offset": h.offset, "hash": h.hash} for tp, h in sorted(state.heads.items())},
        "offsets": dict(sorted(state.offsets.items())),
        "key_id": signer.key_id,
    }


def expire(
    tbl: Any, signer: HeadSigner, keep: int, by: str, older_than: datetime | None = None
) -> dict[str, Any]:
    """Expire every ancestor but the newest ``keep`` (and, with ``older_than``, only older ones).

    The anchor and the removal are one Iceberg commit. Refused (ExpiryError) when the table
    has snapshots off its current lineage (a rollback: expiring them would hide it) or its
    oldest kept snapshot carries no signed heads. Returns what was done.
    """
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table.update.snapshot import ExpireSnapshots

    if keep < 1:
        raise ExpiryError("--keep must be at least 1: the current snapshot is always kept")
    for _ in range(_ATTEMPTS):
        tbl.refresh()
        _, lineage = oldest_ancestor(tbl)
        on_lineage = {s.snapshot_id for s in lineage}
        off = [s.snapshot_id for s in tbl.metadata.snapshots if s.snapshot_id not in on_lineage]
        if off:
            raise ExpiryError(
                f"{len(off)} snapshot(s) are not ancestors of the current one (first {off[0]}): "
                "the table was rolled back; run verify, expiry would hide that"
            )
        kept_n = keep
        if older_than is not None:
            cutoff = older_than.timestamp() * 1000
            kept_n = max(keep, sum(1 for s in lineage if s.timestamp_ms >= cutoff))
        if len(lineage) <= kept_n:
            return {"expired": 0, "kept": len(lineage)}
        kept, expired = lineage[kept_n - 1], lineage[kept_n:]
        if state_of(kept) is None:
            raise ExpiryError(f"snapshot {kept.snapshot_id} carries no signed heads: cannot anchor there")
        prev_raw = tbl.metadata.properties.get(ANCHOR_PROPERTY)
        body = _anchor_body(tbl, signer, kept, expired, by, prev_raw)
        anchor = _canonical({**body, "sig": signer.sign_bytes(_canonical(body))}).decode()
        tx = tbl.transaction()
        tx.set_properties({ANCHOR_PROPERTY: anchor})
        ExpireSnapshots(tx).by_ids([s.snapshot_id for s in expired]).commit()
        try:
            tx.commit_transaction()
        except CommitFailedException:
            log.info("the audit table moved during expiry; trying again")
            continue
        log.info(
            "expired %d snapshot(s); history kept from snapshot %s (anchor %d, key %s)",
            len(expired),
            kept.snapshot_id,
            body["n"],
            signer.key_id,
        )
        return {
            "expired": len(expired),
            "kept": kept_n,
            "kept_from": kept.snapshot_id,
            "anchor": body["n"],
            "key_id": signer.key_id,
        }
    raise ExpiryError(f"the audit table changed under {_ATTEMPTS} expiry attempts in a row")


@dataclass
class RetentionCheck:
    """What ``check`` found: (kind, where, message) problems, notes for the report, and the
    sequence number below which gone snapshots were expired by a valid anchor (0: none)."""

    problems: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    covered_below: int = 0


def check(tbl: Any, verifier: HeadVerifier, uuid: str) -> RetentionCheck:
    """Missing ancestors against the signed retention anchor (see the module docstring)."""
    out = RetentionCheck()
    oldest, _ = oldest_ancestor(tbl)
    if oldest is None:
        return out
    parent = oldest.parent_snapshot_id
    raw = tbl.metadata.properties.get(ANCHOR_PROPERTY)
    # Iceberg clears the parent id of a snapshot whose parent was removed, but never reuses a
    # sequence number: a lineage that does not start at 1 lost its oldest snapshots
    seq = int(oldest.sequence_number or 0)
    if raw is None:
        if parent is not None or seq > 1:
            out.problems.append(
                (
                    "expired",
                    f"snapshot {oldest.snapshot_id}",
                    f"the snapshots before snapshot {oldest.snapshot_id} (sequence number {seq}) are gone "
                    "and no signed retention anchor records their expiry: history was removed",
                )
            )
        return out
    where = "retention anchor"
    try:
        entry = json.loads(raw)
        body = {k: v for k, v in entry.items() if k != "sig"}
        sig, kid = str(entry["sig"]), str(entry["key_id"])
        kept_id = int(body["kept_from"]["snapshot_id"])
        kept_seq = int(body["kept_from"]["sequence_number"])
        expired = body["expired"]
        heads = {str(tp): (int(h["offset"]), str(h["hash"])) for tp, h in body["heads"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        out.problems.append(
            ("anchor", where, f"not a readable anchor ({type(exc).__name__}): forged or damaged")
        )
        return out
    if not verifier.knows(kid):
        out.problems.append(
            (
                "unknown_key",
                where,
                f"signed by key {kid}, which is not in the keyring (a removed key, or someone else's)",
            )
        )
        return out
    if body.get("type") != _TYPE or not verifier.check_bytes(_canonical(body), sig, kid):
        out.problems.append(("anchor", where, "bad signature: the anchor was forged or altered"))
        return out
    if body.get("table") != uuid:
        out.problems.append(("anchor", where, "signed for another table"))
        return out
    kept = tbl.metadata.snapshot_by_id(kept_id)
    if kept is None:
        if seq > kept_seq:
            out.problems.append(
                (
                    "expired",
                    f"snapshot {kept_id}",
                    f"snapshots from the anchor's oldest kept snapshot {kept_id} up to sequence number {seq} are gone: "
                    "expired without a signed anchor",
                )
            )
        else:
            out.problems.append(
                ("anchor", where, f"names snapshot {kept_id} as the oldest kept, which is not in the table")
            )
        return out
    if oldest.snapshot_id == kept_id and parent not in (None, expired.get("parent_snapshot_id")):
        out.problems.append(
            ("anchor", where, f"snapshot {kept_id}'s parent is not the one the anchor expired")
        )
        return out
    state = state_of(kept)
    signed = {tp: (h.offset, h.hash) for tp, h in state.heads.items()} if state else {}
    if heads != signed:
        tp = next(iter(sorted(set(heads.items()) ^ set(signed.items()))))[0]
        out.problems.append(
            ("anchor", where, f"the anchored head of {tp} does not match snapshot {kept_id}'s signed heads")
        )
        return out
    out.covered_below = kept_seq
    out.notes.append(
        f"{expired.get('total')} snapshot(s) expired by retention, the last {expired.get('count')} at "
        f"{body.get('expired_at')} by {body.get('by')} (anchor {body.get('n')} signed by key {kid}); "
        f"history kept from snapshot {kept_id}"
    )
    return out
