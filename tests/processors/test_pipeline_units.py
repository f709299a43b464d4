"""Small pieces of the pipeline: display escaping, offset commits, session tagging."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from processors.executor_service import InOrderCommits, _Committer
from processors.pipeline_commands import safe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain SELECT 1", "plain SELECT 1"),
        ("\x1b[2Jgone", "\\u001b[2Jgone"),
        ("line\rover", "line\\u000dover"),
        ("a\u202eevil", "a\\u202eevil"),  # bidi override
        ("<b>&", "&lt;b&gt;&amp;"),
        ("two\nlines", "two\\u000alines"),
    ],
)
def test_safe_makes_untrusted_text_inert(text: str, expected: str) -> None:
    assert safe(text) == expected


def test_safe_multiline_keeps_lines_inside_the_field() -> None:
    assert safe("SELECT 1\nstatus: APPROVED", multiline=True) == "SELECT 1\n    | status: APPROVED"


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
    from processors.executor import ConnectionPool
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
