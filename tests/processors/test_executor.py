"""The executor against the real fakesnow endpoint: caps, detectors, errors, unreachable, ledger.

Kafka is replaced by a list here (``Collect``) because these tests are about what the executor
decides and runs; the pipeline tests cover the same code over the real broker.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision.authz import Signer, Verifier, make_authorization
from processors.executor.ledger import Ledger
from processors.executor.results import paginate, result_sha256
from processors.executor.runner import Executor, recovery_event, run_statement
from querytrail.settings import Settings, SnowflakeProfile
from schemas.events import (
    ExecutionAuthorized,
    ExecutionStarted,
    MaskedColumn,
    QueryCompleted,
    QueryFailed,
    QueryRejected,
    ResultPage,
    Target,
    utcnow,
)

SIGNER = Signer(Ed25519PrivateKey.generate())


def auth(
    sql: str, max_rows: int = 100, masked: tuple[MaskedColumn, ...] = (), rid: str = "r1"
) -> ExecutionAuthorized:
    return make_authorization(
        SIGNER,
        request_id=rid,
        session_id=None,
        statement=sql,
        masked_columns=masked,
        target=Target(profile="analytics"),
        max_rows=max_rows,
        timeout_s=10,
        requester=None,
        now=utcnow(),
        ttl_s=60,
    )


class Collect:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, events: list[Any]) -> None:
        self.events.extend(events)


def test_paginate_bounds_rows_and_bytes() -> None:
    rows = [[i, "x" * 50] for i in range(10)]
    pages = paginate(rows, max_rows=4, max_bytes=10_000)
    assert [offset for offset, _ in pages] == [0, 4, 8]
    assert sum(len(json.loads(body)) for _, body in pages) == 10
    small = paginate(rows, max_rows=100, max_bytes=130)
    assert all(len(body) <= 130 for _, body in small) and len(small) == 5
    assert paginate([], 10, 100) == [(0, "[]")]


def test_result_hash_covers_columns_and_rows() -> None:
    base = result_sha256(["A"], [[1], [2]])
    assert base != result_sha256(["B"], [[1], [2]]) and base != result_sha256(["A"], [[2], [1]])


@pytest.mark.integration
def test_row_cap_detectors_and_metadata(qt_settings: Callable[..., Settings]) -> None:
    from infra.seed import SEEDED_PII

    settings = qt_settings()
    profile = settings.snowflake_profiles["analytics"]
    # Deliberately unmasked SQL: the detectors are the second line that must catch it.
    out = run_statement(
        auth("SELECT ID, EMAIL, SSN FROM ANALYTICS.PUBLIC.CUSTOMERS ORDER BY ID", 5), profile, settings
    )
    assert out.outcome == "completed"
    done = out.events[-1]
    assert isinstance(done, QueryCompleted)
    assert (done.row_count, done.truncated, done.pages) == (5, True, 1)
    assert [c.name for c in done.columns] == ["ID", "EMAIL", "SSN"]
    assert done.snowflake_query_id and done.elapsed_ms >= 0
    hits = {(h.column, h.detector): h.count for h in done.detector_hits}
    assert hits[("EMAIL", "email")] == 5 and hits[("SSN", "ssn")] == 5
    page = out.events[0]
    assert isinstance(page, ResultPage) and page.last
    assert not [v for v in SEEDED_PII if v in page.rows_json]
    assert done.result_sha256 == result_sha256(["ID", "EMAIL", "SSN"], json.loads(page.rows_json))


@pytest.mark.integration
def test_snowflake_error_is_reported_with_code_and_sqlstate(qt_settings: Callable[..., Settings]) -> None:
    settings = qt_settings()
    out = run_statement(
        auth("SELECT * FROM ANALYTICS.PUBLIC.NOPE"), settings.snowflake_profiles["analytics"], settings
    )
    failed = out.events[0]
    assert isinstance(failed, QueryFailed) and failed.outcome == "failed"
    assert failed.error_code == "2003" and failed.sqlstate == "42S02" and "NOPE" in failed.message


def test_unreachable_snowflake_fails_fast_instead_of_hanging(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = SnowflakeProfile(
        account="fakesnow", user="u", password="p", host="127.0.0.1", port=port, protocol="http",
        login_timeout_s=3, network_timeout_s=3,
    )  # fmt: skip
    settings = Settings(home=tmp_path)
    started = time.monotonic()
    out = run_statement(auth("SELECT 1"), profile, settings)
    assert out.outcome == "unreachable" and isinstance(out.events[0], QueryFailed)
    assert time.monotonic() - started < 30


@pytest.mark.integration
def test_handle_runs_once_and_refuses_forgeries(qt_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = qt_settings()
    ledger = Ledger(tmp_path / "ledger.db")
    sink = Collect()
    executor = Executor(settings, Verifier([SIGNER.private_key.public_key()]), ledger, sink)
    good = auth("SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1", rid="h1")
    assert executor.handle(good) == "completed"
    assert [type(e) for e in sink.events] == [ExecutionStarted, ResultPage, QueryCompleted]
    assert json.loads(sink.events[0].query_tag)["request_id"] == "h1"
    assert executor.handle(good) == "duplicate"
    forged = make_authorization(
        Signer(Ed25519PrivateKey.generate()),
        request_id="h2", session_id=None, statement="SELECT 1", masked_columns=(),
        target=Target(profile="analytics"), max_rows=1, timeout_s=1, requester=None, now=utcnow(), ttl_s=60,
    )  # fmt: skip
    assert executor.handle(forged) == "refused"
    assert executor.handle(forged) == "refused"  # redelivered refusal is not published twice
    rejected = [e for e in sink.events if isinstance(e, QueryRejected)]
    assert [(r.stage, r.reason_code) for r in rejected] == [("authorization", "unknown_key")]
    assert ledger.unreported() == []


def test_recovery_never_reruns(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    for rid, state in (("a", "recorded"), ("b", "started"), ("c", "finished")):
        assert ledger.record(
            request_id=rid, nonce=rid, authorization_event_id=rid, session_id=None, statement_sha256="x"
        )
        if state in ("started", "finished"):
            ledger.mark_started(rid)
        if state == "finished":
            ledger.mark_finished(rid, "completed")
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.db")  # as after a crash
    outcomes = {row.request_id: recovery_event(row).outcome for row in reopened.unreported()}
    assert outcomes == {"a": "failed", "b": "outcome_unknown", "c": "outcome_unknown"}
    assert not reopened.record(
        request_id="b", nonce="new", authorization_event_id="z", session_id=None, statement_sha256="x"
    )
    assert not reopened.record(
        request_id="new", nonce="b", authorization_event_id="z", session_id=None, statement_sha256="x"
    )


@pytest.mark.integration
def test_statement_past_its_timeout_fails_instead_of_hanging(
    qt_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fakesnow honours neither STATEMENT_TIMEOUT_IN_SECONDS nor the connector's cancel, so
    the executor's own deadline (timeout + grace; the grace shortened here) must end the wait."""
    import processors.executor.runner as executor_module

    monkeypatch.setattr(executor_module, "_TIMEOUT_GRACE_S", 0.5)
    settings = qt_settings()
    slow = make_authorization(
        SIGNER, request_id="slow", session_id=None,
        statement="SELECT SUM(SEQ4()) FROM TABLE(GENERATOR(ROWCOUNT => 500000000))",
        masked_columns=(), target=Target(profile="analytics"), max_rows=1, timeout_s=1,
        requester=None, now=utcnow(), ttl_s=60,
    )  # fmt: skip
    started = time.monotonic()
    out = run_statement(slow, settings.snowflake_profiles["analytics"], settings)
    assert time.monotonic() - started < 5
    failed = out.events[0]
    assert isinstance(failed, QueryFailed) and failed.outcome == "timeout"
    assert "may still complete" in failed.message


@pytest.mark.integration
def test_spent_nonce_under_another_request_is_refused_and_recorded(
    qt_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from dataclasses import replace

    settings = qt_settings()
    sink = Collect()
    executor = Executor(
        settings, Verifier([SIGNER.private_key.public_key()]), Ledger(tmp_path / "l.db"), sink
    )
    first = auth("SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1", rid="n1")
    assert executor.handle(first) == "completed"
    reuse = SIGNER.sign(replace(auth("SELECT 2", rid="n2"), nonce=first.nonce))
    assert executor.handle(reuse) == "refused"
    rejected = [e for e in sink.events if isinstance(e, QueryRejected)]
    assert [(r.request_id, r.stage, r.reason_code) for r in rejected] == [
        ("n2", "authorization", "nonce_reused")
    ]
    assert not [e for e in sink.events if isinstance(e, ExecutionStarted) and e.request_id == "n2"]


# Raw (unmasked) statements whose casts fail on a seeded value: the emulator quotes the value in
# its error, and the executor must not let it out (the error-text half of issue 12's item 3).
FAILING_CASTS = [
    "select cast(email as int) from analytics.public.customers",
    "select cast(ssn as int) from analytics.public.customers",
    "select cast(phone as int) from analytics.public.customers",
    "select cast(name as date) from analytics.public.customers",
    "select cast(email as numeric(10, 2)) from analytics.public.customers",
    "select email::variant::int from analytics.public.customers",
    "select array_construct(email)[0]::int from analytics.public.customers",
    "select cast(mfa_secret as double) from security.admin.users",
]


@pytest.mark.integration
@pytest.mark.parametrize("sql", FAILING_CASTS)
def test_failed_cast_error_carries_no_seeded_value(
    sql: str, fakesnow_profile: SnowflakeProfile, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import snowflake.connector

    from infra.fakesnow_server import connect_kwargs
    from infra.seed import SEEDED_PII, SEEDED_SECRETS

    seeded = [str(v) for v in (*SEEDED_PII, *SEEDED_SECRETS)]
    assert fakesnow_profile.port is not None
    with snowflake.connector.connect(**connect_kwargs(fakesnow_profile.port)) as conn:
        with pytest.raises(snowflake.connector.errors.ProgrammingError) as raw:
            conn.cursor().execute(sql)
    assert [v for v in seeded if v in str(raw.value)], (
        "the raw error must quote a value, or this proves nothing"
    )

    caplog.set_level(logging.DEBUG, logger="processors")
    out = run_statement(auth(sql), fakesnow_profile, Settings(home=tmp_path))
    [failed] = out.events
    assert isinstance(failed, QueryFailed) and out.outcome == "failed"
    assert failed.error_code == str(raw.value.errno) and failed.sqlstate == raw.value.sqlstate
    assert "<redacted>" in failed.message and failed.message.startswith("Conversion Error:")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "statement failed" in logged
    assert not [v for v in seeded if v in failed.message or v in logged], failed.message
