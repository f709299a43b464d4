"""Finished is forever, and a request id belongs to its first requester (docs/ingress.md).

- another identity's QueryRequested with a decided request id is refused and recorded
  (DeadLetter ``request_id_taken``), never decided: the attacker's allowed SELECT does not run
  under the victim's request id;
- the very bytes of a denied request, replayed after the worker's dedupe window has pruned the
  id, are refused and recorded (``request_replayed``) instead of being decided a second time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from schemas.events import DeadLetter, ExecutionAuthorized, PolicyDecided
from tests.reliability.reliability_stack import Stack, events, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_DENIED = "DELETE FROM ANALYTICS.PUBLIC.CUSTOMERS"
_ALLOWED = "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS LIMIT 1"


def _send(stack: Stack, token: str, request_id: str, sql: str) -> None:
    """Straight to the requests topic, as the CI client does (no waiting for an outcome)."""
    from ingress.client import QueryClient
    from schemas.events import ClientContext, Target

    sub = QueryClient(stack.settings).submit(
        token=token,
        request_id=request_id,
        prompt="test prompt",
        sql=sql,
        model="test-model",
        target=Target(profile="analytics"),
        context=ClientContext(ci_provider="local"),
    )
    sub.close()


def _dead(stack: Stack, request_id: str, reason: str, timeout: float = 60.0) -> DeadLetter:
    found = wait_for(
        stack,
        "deadletter",
        lambda e: isinstance(e, DeadLetter) and e.request_id == request_id and e.reason == reason,
        timeout=timeout,
    )
    letter: DeadLetter = found[0]
    return letter


def test_another_identity_cannot_take_a_decided_request_id(stack: Stack) -> None:
    rid = f"victim-{uuid.uuid4()}"
    _send(stack, stack.token("victim", ("ci",)), rid, _DENIED)
    wait_for(stack, "decisions", lambda e: isinstance(e, PolicyDecided) and e.request_id == rid)
    _send(stack, stack.token("attacker", ("ci",)), rid, _ALLOWED)
    letter = _dead(stack, rid, "request_id_taken")
    assert "attacker" in letter.error
    time.sleep(2.0)  # anything the worker would have decided for it is out by now
    decided = [e for e in events(stack, "decisions", rid) if isinstance(e, PolicyDecided)]
    assert [d.decision for d in decided] == ["deny"]
    assert not [e for e in events(stack, "executions", rid) if isinstance(e, ExecutionAuthorized)]


def test_a_denied_request_replayed_after_the_dedupe_window_is_refused(
    make_stack: Callable[..., Stack],
) -> None:
    from querytrail.kafka_clients import make_producer, produce_sync
    from querytrail.publishing import read_topic
    from schemas.codec import EventCodec

    stack = make_stack(extra={"worker": {"resolved_retention_s": 1.0}})
    stack.start_service("worker")
    rid = f"denied-{uuid.uuid4()}"
    _send(stack, stack.token("ci-bot", ("ci",)), rid, _DENIED)
    wait_for(stack, "decisions", lambda e: isinstance(e, PolicyDecided) and e.request_id == rid)
    codec = EventCodec()
    original = next(
        m
        for m in read_topic(stack.settings, "requests", timeout=30)
        if codec.decode(m.value()).request_id == rid
    )
    time.sleep(4.0)  # the dedupe window (1 s) is over and its pruning (every second) has run
    produce_sync(
        make_producer(stack.settings.kafka),
        str(original.topic()),
        original.value(),
        key=original.key(),
        headers=original.headers(),
    )
    _dead(stack, rid, "request_replayed")
    time.sleep(2.0)
    decided = [e for e in events(stack, "decisions", rid) if isinstance(e, PolicyDecided)]
    assert len(decided) == 1, decided
