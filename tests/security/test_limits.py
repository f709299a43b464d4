"""Oversized prompts, SQL and bodies get clear limit errors: HTTP 413/422 naming the limit from
the ingress, and on the Kafka path a QueryRejected (stage validation, prompt_too_large /
sql_too_large) from the worker. Nothing oversized runs; the services keep serving.
"""

from __future__ import annotations

import uuid

import pytest

from schemas.events import ClientContext, PolicyDecided, Target
from tests.reliability.reliability_stack import Stack, events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SQL = "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1"


def test_oversized_input_over_http_gets_413_or_422_naming_the_limit(stack: Stack) -> None:
    limits = stack.settings.limits
    token = stack.token("ci-bot", ("ci",))
    big_prompt = "p" * (limits.max_prompt_bytes + 1)
    big_sql = SQL + " " * (limits.max_sql_bytes - len(SQL)) + " "
    cases = {
        "prompt": ({"prompt": big_prompt, "sql": SQL}, 413, "prompt_too_large"),
        "prompt_multibyte": ({"prompt": "é" * (limits.max_prompt_bytes // 2 + 1), "sql": SQL}, 413, "prompt_too_large"),
        "sql": ({"prompt": "p", "sql": big_sql}, 413, "sql_too_large"),
        "body": ({"prompt": "p", "sql": SQL, "pad": "x" * stack.settings.ingress.max_body_bytes}, 413, "body_too_large"),
        "missing_sql": ({"prompt": "p"}, 422, "invalid_request"),
        "sql_not_string": ({"prompt": "p", "sql": ["SELECT 1"]}, 422, "invalid_request"),
        "bad_max_rows": ({"prompt": "p", "sql": SQL, "max_rows": -1}, 422, "invalid_request"),
    }  # fmt: skip
    for name, (fields, status, code) in cases.items():
        body = {"model": "m", "target": "analytics", **fields}
        got, answer = stack.http("POST", "/v1/queries", body, token)
        assert (got, answer.get("error")) == (status, code), (name, got, answer)
        assert answer.get("message"), name
    got, answer = stack.http("POST", "/v1/queries", b"{not json", token)
    assert got in (400, 422) and answer.get("error"), answer
    got, answer = stack.post_query(token, SQL)
    assert got == 202, answer  # still serving


def test_oversized_input_on_the_kafka_path_is_rejected_with_the_reason(stack: Stack) -> None:
    from ingress.client import QueryClient

    limits = stack.settings.limits
    token = stack.token("ci-bot", ("ci",))
    client = QueryClient(stack.settings)
    cases = {
        "prompt_too_large": ("p" * (limits.max_prompt_bytes + 1), SQL),
        "sql_too_large": ("p", SQL + " " * limits.max_sql_bytes),
    }
    for code, (prompt, sql) in cases.items():
        sub = client.submit(
            token=token, request_id=f"req-{uuid.uuid4()}", prompt=prompt, sql=sql, model="m",
            target=Target(profile="analytics"), context=ClientContext(),
        )  # fmt: skip
        try:
            outcome = sub.wait(60)
        finally:
            sub.close()
        assert outcome.status == "rejected", (code, outcome.to_json())
        assert (outcome.rejected["stage"], outcome.rejected["reason_code"]) == ("validation", code)
        decided = [e for e in events(stack, "decisions", sub.request_id) if isinstance(e, PolicyDecided)]
        assert decided == []  # never analysed, never decided, never run
    assert stack.submit(SQL, token).status == "completed"
