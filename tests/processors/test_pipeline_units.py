"""Small pure pieces of the pipeline: display escaping and in-order offset commits."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from processors.executor_service import InOrderCommits
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
