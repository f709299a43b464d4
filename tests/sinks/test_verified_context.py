"""Verified claims beat caller-supplied CI context in the audit columns and the costly-scans report.

A caller producing straight to Kafka writes its own ClientContext; the worker's PolicyDecided
carries the claims of the token it verified. The PolicyDecided row's repository/workflow/run_id
come from those claims, the QueryRequested row keeps what the caller said (kept apart), and the
report prefers the verified value.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

from schemas import events as ev
from sinks.audit_schema import derive
from tests.sinks.scenario import ALICE, request

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _events(claims: dict[str, object]) -> tuple[ev.QueryRequested, ev.PolicyDecided]:
    ident = dataclasses.replace(ALICE, claims_json=json.dumps(claims))
    out = request("req-ctx", AT, "select 1", "p", ident)
    asked = next(e for e in out if isinstance(e, ev.QueryRequested))
    decided = next(e for e in out if isinstance(e, ev.PolicyDecided))
    return asked, decided


def test_decided_row_takes_repository_and_run_from_the_verified_claims() -> None:
    asked, decided = _events({"sub": "x", "repository": "acme/real", "run_id": "42", "workflow": "etl"})
    assert derive(asked)["repository"] == "acme/etl"  # what the caller said, kept apart
    row = derive(decided)
    assert (row["repository"], row["run_id"], row["workflow"]) == ("acme/real", "42", "etl")


def test_claims_without_context_leave_the_decided_row_empty() -> None:
    _, decided = _events({"sub": "x"})
    row = derive(decided)
    assert row["repository"] is None and row["run_id"] is None


def test_costly_scans_prefers_the_verified_repository_in_every_engine() -> None:
    for engine in ("duckdb", "spark", "trino"):
        sql = (ROOT / "infra" / "sql" / engine / "costly-scans.sql").read_text()
        assert "coalesce(dec.repository, req.repository) as repository" in sql.lower(), engine
