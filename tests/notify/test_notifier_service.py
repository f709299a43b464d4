"""The notifier end to end: signed decisions on the real broker -> real local webhook receivers,
every try on the actions topic as a NotificationAttempted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from processors.notifier.bodies import verify_signature
from processors.notifier.service import run
from querytrail.publishing import Publisher, read_topic
from querytrail.settings import Settings
from schemas.codec import EventCodec
from schemas.events import (
    ApprovalRequested,
    ApprovalResolved,
    VerifiedIdentity,
    new_event_id,
    producer,
    utcnow,
)
from tests.notify.receiver import receiver

pytestmark = pytest.mark.integration
SECRET = "generic-hook-secret"


def _requested(rid: str) -> ApprovalRequested:
    return ApprovalRequested(
        event_id=new_event_id(),
        request_id=rid,
        occurred_at=utcnow(),
        producer=producer("worker"),
        statement_sha256="0" * 64,
        statement="SELECT email FROM customers",
        rule_id="pii-needs-approval",
        approver_groups=("data-security",),
        min_approvals=1,
        expires_at=utcnow() + timedelta(minutes=30),
        requester=VerifiedIdentity(
            subject="ci-bot", issuer="http://issuer", groups=("ci",), claims_json="{}", token_sha256="0" * 64
        ),
        prompt="<!channel> list emails",
        sql_text="select email from customers",
        findings=(),
        masked_columns=(),
    )


def _attempts(settings: Settings, want: int, timeout: float = 60.0) -> list[dict]:
    codec = EventCodec()
    deadline = time.monotonic() + timeout
    while True:
        got = [codec.decode(m.value() or b"") for m in read_topic(settings, "actions")]
        rows = [e.__dict__ for e in got if e.event_type == "NotificationAttempted"]
        if len(rows) >= want or time.monotonic() > deadline:
            return sorted(rows, key=lambda r: (r["notified_event_type"], r["target"], r["attempt"]))
        time.sleep(0.5)


def test_notifier_delivers_retries_and_records_every_try(
    qt_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QT_TEST_HOOK_SECRET", SECRET)
    with receiver(200) as slack, receiver(500, 200) as generic, receiver(500) as broken:
        settings = qt_settings(
            notifications={
                "console_url": "http://127.0.0.1:8900",
                "max_attempts": 3,
                "base_delay_s": 0.05,
                "webhooks": [
                    {
                        "name": "sec-slack",
                        "kind": "slack",
                        "url": slack.url,
                        "approver_groups": ["data-security"],
                    },
                    {
                        "name": "siem",
                        "kind": "generic",
                        "url": generic.url,
                        "secret_env": "QT_TEST_HOOK_SECRET",
                        "rules": ["pii-needs-approval"],
                    },
                    {"name": "broken", "kind": "slack", "url": broken.url, "rules": ["pii-needs-approval"]},
                ],
            }
        )
        worker = Publisher(settings, "worker")  # creates the worker's key the notifier trusts
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
        thread.start()
        try:
            req = _requested("req-notify-1")
            resolved = ApprovalResolved(
                event_id=new_event_id(),
                request_id=req.request_id,
                occurred_at=utcnow(),
                producer=producer("worker"),
                outcome="approved",
                approvers=("alice",),
                statement_sha256=req.statement_sha256,
            )
            worker.publish([req, resolved])  # signed by the worker's key
            # request: slack 1 try, siem 500 then 200, broken 3 tries; resolution: siem 200 at once -> 11
            rows = _attempts(settings, 11)
        finally:
            stop.set()
            thread.join(30)

    assert not thread.is_alive()
    summary = [
        (r["notified_event_type"], r["target"], r["attempt"], r["status_code"], r["outcome"]) for r in rows
    ]
    failing = [("broken", 1, 500, "retrying"), ("broken", 2, 500, "retrying"), ("broken", 3, 500, "failed")]
    assert [s[1:] for s in summary if s[0] == "ApprovalRequested"] == [
        *failing,
        ("sec-slack", 1, 200, "delivered"),
        ("siem", 1, 500, "retrying"),  # the receiver's first answer is 500: retried
        ("siem", 2, 200, "delivered"),
    ]
    assert [s[1:] for s in summary if s[0] == "ApprovalResolved"] == [
        *failing,
        ("sec-slack", 1, 200, "delivered"),
        ("siem", 1, 200, "delivered"),
    ]
    assert {r["notified_event_id"] for r in rows} == {req.event_id, resolved.event_id}
    # the recorded URL is redacted: the webhook path (Slack's credential) is not in the log
    assert all("s3cr3t" not in r["redacted_url"] for r in rows)

    first = json.loads(slack.got[0].body)
    assert "&lt;!channel&gt;" in json.dumps(first) and "<!channel>" not in json.dumps(first)
    buttons = [e for b in first["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons[0]["url"] == "http://127.0.0.1:8900/approvals/req-notify-1"
    assert len(generic.got) == 3
    for got in generic.got:
        assert verify_signature(SECRET.encode(), got.body, got.headers)
    assert json.loads(generic.got[-1].body)["outcome"] == "approved"
    assert json.loads(generic.got[-1].body)["rule_id"] == "pii-needs-approval"  # borrowed from the request


def test_unsigned_approval_requests_are_not_notified(qt_settings: Callable[..., Settings]) -> None:
    """Whoever can write to the decisions topic without the worker's key cannot page approvers."""
    with receiver(200) as slack:
        settings = qt_settings(
            notifications={
                "webhooks": [
                    {"name": "s", "kind": "slack", "url": slack.url, "rules": ["pii-needs-approval"]}
                ]
            }
        )
        worker = Publisher(settings, "worker")
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
        thread.start()
        try:
            forged = Publisher(settings, "forger", signer=None)
            forged.publish([_requested("req-forged")])
            worker.publish([_requested("req-real")])
            rows = _attempts(settings, 1)
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(30)
    assert [r["request_id"] for r in rows] == ["req-real"]
    assert len(slack.got) == 1
