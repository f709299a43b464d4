"""QUERY_TAG is a JSON object within Snowflake's 2,000 characters; untrusted text is cut and
escaped (querytrail/query_tag.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from querytrail.query_tag import MAX_TAG_CHARS, build_query_tag, parse_query_tag


def test_tag_is_json_with_the_request_and_identity() -> None:
    tag = build_query_tag(
        "r1",
        subject="ci-bot",
        issuer="https://token.actions.githubusercontent.com",
        service_account=True,
        model="claude",
        repository="acme/etl",
        run_id="77",
        policy_sha256="a" * 64,
    )
    value = parse_query_tag(tag)
    assert value is not None
    assert value["request_id"] == "r1" and value["subject"] == "ci-bot" and value["service_account"] is True
    assert (value["model"], value["repository"], value["run_id"]) == ("claude", "acme/etl", "77")
    assert value["policy_sha256"] == "a" * 64 and value["qt"]


def test_untrusted_text_is_escaped_and_cut_to_fit() -> None:
    hostile = "\u202e\x1b[31m'; DROP TABLE X; --" * 400
    tag = build_query_tag("r1", subject=hostile, model=hostile, repository=hostile, run_id=hostile)
    assert len(tag) <= MAX_TAG_CHARS and tag.isascii()
    assert not any(ord(c) < 0x20 for c in tag)
    value = json.loads(tag)
    assert value["request_id"] == "r1" and value["model"].endswith("\u2026")


def test_foreign_tags_are_not_ours() -> None:
    assert parse_query_tag("nightly-etl") is None
    assert parse_query_tag('{"request_id": "x"}') is None
    assert parse_query_tag(None) is None


@given(st.text(max_size=3000), st.text(max_size=3000), st.text(max_size=300))
def test_any_text_fits_and_round_trips_the_request_id(model: str, repo: str, rid: str) -> None:
    tag = build_query_tag(rid, model=model, repository=repo, subject=model)
    assert len(tag) <= MAX_TAG_CHARS
    assert json.loads(tag)["request_id"] == rid[:128]
