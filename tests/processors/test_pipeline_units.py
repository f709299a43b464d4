"""Small pieces of the pipeline: display escaping, offset commits, session tagging."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from processors.executor.service import InOrderCommits, _Committer
from querytrail.escape import hidden, terminal
from schemas.events import ApprovalRequested, VerifiedIdentity, new_event_id, producer, utcnow


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain SELECT 1", "plain SELECT 1"),
        ("\x1b[2Jgone", "\\x1b[2Jgone"),
        ("line\rover", "line\\x0dover"),
        ("a\u202eevil", "a\\u202eevil"),  # bidi override
        ("<b>&", "<b>&"),  # a terminal is not a web page: markup is shown as it is
        ("where a < b and c <> 'x&y'", "where a < b and c <> 'x&y'"),
        ("regexp '\\d+'", "regexp '\\d+'"),  # backslashes are not doubled
        ("two\nlines\ttab", "two\\nlines\\ttab"),
        (
            "del\x7f c1\x9b nbsp\u00a0 zwsp\u200b lrm\u200e alm\u061c",
            "del\\x7f c1\\x9b nbsp\\xa0 zwsp\\u200b lrm\\u200e alm\\u061c",
        ),
        (
            "isolate\u2066x\u2069 sep\u2028 bom\ufeff vs\ufe0f tag\U000e0041",
            "isolate\\u2066x\\u2069 sep\\u2028 bom\\ufeff vs\\ufe0f tag\\U000e0041",
        ),
        ("é ß 東京 😀", "é ß 東京 😀"),  # visible text is untouched
        (None, ""),
    ],
)
def test_terminal_escapes_only_what_a_terminal_acts_on_or_hides(text: str | None, expected: str) -> None:
    assert terminal(text) == expected


def test_terminal_keeps_lines_inside_the_field_when_asked() -> None:
    assert terminal("SELECT 1\nstatus: APPROVED\tx", indent="    | ") == "SELECT 1\n    | status: APPROVED\tx"
    assert terminal("a\r\nb", indent="") == "a\\x0d\nb"


def test_terminal_limit_never_cuts_an_escape() -> None:
    assert terminal("abcdef", 6) == "abcdef" and terminal("abcdefg", 6) == "abcde…"
    assert terminal("abc\x1bdef", 6) == "abc…"
    assert hidden("a\u202eb\x1b\n\t") == 2


def _approval(statement: str, prompt: str) -> ApprovalRequested:
    from processors.decision.authz import statement_sha256

    return ApprovalRequested(
        event_id=new_event_id(),
        request_id="r1",
        occurred_at=utcnow(),
        producer=producer("worker"),
        statement_sha256=statement_sha256(statement),
        statement=statement,
        rule_id="privileged",
        approver_groups=("data-security",),
        min_approvals=1,
        expires_at=utcnow(),
        requester=VerifiedIdentity(
            subject="ci", issuer="https://issuer", groups=(), claims_json="{}", token_sha256="00"
        ),
        prompt=prompt,
        sql_text=statement,
        findings=(),
        masked_columns=(),
    )


def test_approvals_show_prints_the_statement_exactly_and_escapes_controls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from processors.decision.approvals import evolve
    from querytrail.cli import pipeline as pipeline_commands

    statement = "SELECT a, b FROM t WHERE a < b AND c <> '&amp;'\nAND d = '\x1b[31mred' -- \u202eevil"
    event = _approval(statement, "rows where a < b")
    monkeypatch.setattr(pipeline_commands, "_settings", lambda: None)
    monkeypatch.setattr(pipeline_commands, "_states", lambda _s: ({"r1": evolve(None, event)}, {"r1": event}))
    assert pipeline_commands._show(argparse.Namespace(request_id="r1", json=False)) == 0
    out = capsys.readouterr().out
    assert (
        "will run:   SELECT a, b FROM t WHERE a < b AND c <> '&amp;'\n    | AND d = '\\x1b[31mred' -- \\u202eevil"
        in out
    )
    assert "prompt:     rows where a < b" in out and "&lt;" not in out
    assert "\x1b" not in out and "\u202e" not in out
    assert "note:       4 control or invisible character(s)" in out  # twice in sql and statement


def test_commits_only_contiguous_done_offsets() -> None:
    commits = InOrderCommits()
    futures = [Future() for _ in range(3)]  # type: ignore[var-annotated]
    for offset, fut in zip((10, 11, 12), futures, strict=True):
        commits.add("t", 0, offset, fut)
    futures[1].set_result(None)
    assert commits.ready() == []  # 10 still running: nothing past it may be committed
    futures[0].set_result(None)
    [tp] = commits.ready()
    assert (tp.topic, tp.partition, tp.offset) == ("t", 0, 12)
    futures[2].set_exception(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        commits.ready()  # a failed handler is never committed past


class _RecordingConsumer:
    """Records commit calls (the broker side of commits is covered by tests/pipeline)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, int, int]], bool]] = []

    def commit(self, *, offsets: list, asynchronous: bool) -> None:  # type: ignore[type-arg]
        self.calls.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))


def test_committer_commits_done_offsets_asynchronously_at_most_every_interval() -> None:
    commits = InOrderCommits()
    committer = _Committer(commits, interval_s=3600.0)
    consumer = _RecordingConsumer()
    done: Future[None] = Future()
    done.set_result(None)
    commits.add("t", 0, 5, done)
    committer.commit(consumer)
    assert consumer.calls == []  # not due yet: no broker round trip per record
    assert len(commits) == 0  # but the handled record no longer counts as in flight
    commits.add("t", 0, 6, done)
    commits.add("t", 1, 2, done)
    committer.commit(consumer, now=True)  # revocation or shutdown: everything done, synchronously
    assert consumer.calls == [([("t", 0, 7), ("t", 1, 3)], False)]
    committer.interval_s = 0.0
    commits.add("t", 0, 7, done)
    committer.commit(consumer)
    assert consumer.calls[-1] == ([("t", 0, 8)], True)
    committer.commit(consumer)
    assert len(consumer.calls) == 2  # nothing new: no empty commit


class _SessionStandIn:
    """Records statements. The emulator refuses ALTER SESSION, so what a pooled session is sent
    before each request can only be observed with a stand-in for a Snowflake account session."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def cursor(self) -> _SessionStandIn:
        return self

    def execute(self, sql: str) -> None:
        self.sent.append(sql)

    def close(self) -> None:
        pass


def test_pooled_session_is_tagged_per_request_and_given_its_timeout_only_when_it_changes() -> None:
    from processors.executor.runner import ConnectionPool
    from querytrail.settings import SnowflakeProfile

    pool = ConnectionPool(SnowflakeProfile(), size=1)
    session = _SessionStandIn()
    pool.release(session, healthy=True)
    for rid, timeout in (("r1", 60), ("r2", 60), ("r'3", 30)):
        assert pool.acquire(rid, timeout) is session
        pool.release(session, healthy=True)
    assert session.sent == [
        "ALTER SESSION SET QUERY_TAG = 'r1'",
        "ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = 60",
        "ALTER SESSION SET QUERY_TAG = 'r2'",
        "ALTER SESSION SET QUERY_TAG = 'r\\'3'",
        "ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = 30",
    ]
