"""Webhook bodies, signatures, escaping, targets, and delivery to a real local HTTP receiver."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from processors.notifier.bodies import (
    Note,
    NotifyConfigError,
    WebhookTarget,
    deliver,
    generic_body,
    load_targets,
    redact_url,
    sign,
    slack_body,
    slack_escape,
    targets_for,
    verify_signature,
)
from tests.notify.receiver import receiver

SECRET = b"shared-hmac-secret"
NOTE = Note(
    event_id="0190a0a0-0000-7000-8000-000000000001",
    event_type="ApprovalRequested",
    request_id="req-1",
    rule_id="pii-needs-approval",
    approver_groups=("data-security",),
    requester="service-account-querytrail-ci",
    statement="SELECT email FROM customers",
    prompt="<!channel> please <https://evil.example|click> & approve",
    expires_at="2026-12-04T20:00:00+00:00",
    console_url="http://127.0.0.1:8900/approvals/req-1",
)


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    return httpx.post(url, content=body, headers=headers, timeout=5).status_code


def _texts(blocks: list[dict]) -> str:
    return json.dumps(blocks)


def test_slack_escape_neutralises_mentions_and_links_and_truncates() -> None:
    assert slack_escape("<!channel> <http://x|y> a&b") == "&lt;!channel&gt; &lt;http://x|y&gt; a&amp;b"
    cut = slack_escape("x" * 1000, 10)
    assert cut.startswith("x" * 10) and "[truncated 990 chars]" in cut and len(cut) < 40


def test_slack_body_says_who_what_rule_and_links_the_console() -> None:
    body = json.loads(slack_body(NOTE))
    text = _texts(body["blocks"])
    assert "service-account-querytrail-ci" in text and "pii-needs-approval" in text
    assert "SELECT email FROM customers" in text and "data-security" in text
    buttons = [e for b in body["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons[0]["url"] == NOTE.console_url
    assert "<!channel>" not in text and "<https://evil.example" not in text
    assert "&lt;!channel&gt;" in text and "&amp; approve" in text


def test_statement_cannot_break_out_of_its_code_block() -> None:
    note = Note(**{**NOTE.__dict__, "statement": "SELECT 1 ``` <!here> ```"})
    section = next(b for b in json.loads(slack_body(note))["blocks"] if "Statement" in json.dumps(b))
    code = section["text"]["text"].split("\n", 1)[1]
    assert code.startswith("```") and code.endswith("```") and code[3:-3].count("```") == 0
    assert "<!here>" not in code


def test_huge_untrusted_strings_are_truncated_with_a_marker() -> None:
    note = Note(**{**NOTE.__dict__, "prompt": "p" * 100_000, "statement": "s" * 100_000})
    body = slack_body(note)
    assert len(body) < 10_000 and b"[truncated" in body
    generic = json.loads(generic_body(note))
    assert generic["prompt"].endswith("[truncated 80000 chars]")


def test_signature_verifies_and_refuses_tampering_and_replays() -> None:
    body = generic_body(NOTE)
    headers = sign(SECRET, body, timestamp=1_000_000)
    assert headers["X-Querytrail-Signature"].startswith("sha256=")
    assert verify_signature(SECRET, body, headers, now=1_000_100)
    assert not verify_signature(SECRET, body + b" ", headers, now=1_000_100)
    assert not verify_signature(b"other", body, headers, now=1_000_100)
    assert not verify_signature(SECRET, body, {**headers, "X-Querytrail-Timestamp": "1000001"}, now=1_000_100)
    assert not verify_signature(SECRET, body, headers, now=1_000_000 + 301)  # a replay, too late


def test_redacted_url_keeps_no_path_or_credentials() -> None:
    red = redact_url("https://user:pw@hooks.slack.com/services/T0/B0/XXXXSECRET?x=1")
    assert red == "https://hooks.slack.com/…"


def test_targets_match_by_rule_or_approver_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_HOOK_SECRET", "s")
    monkeypatch.setenv("QT_SLACK_URL", "https://hooks.slack.com/services/T/B/X")
    targets = load_targets(
        [
            {"name": "sec", "kind": "slack", "url_env": "QT_SLACK_URL", "approver_groups": ["data-security"]},
            {
                "name": "pii",
                "kind": "generic",
                "url": "http://127.0.0.1:1/x",
                "secret_env": "QT_HOOK_SECRET",
                "rules": ["pii-needs-approval"],
            },
            {
                "name": "other",
                "kind": "generic",
                "url": "http://127.0.0.1:1/y",
                "secret_env": "QT_HOOK_SECRET",
                "rules": ["nope"],
            },
        ]
    )
    assert [t.name for t in targets_for(NOTE, targets)] == ["sec", "pii"]
    assert "hooks.slack.com/services" not in repr(targets)  # the Slack URL is a secret


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "x", "kind": "email", "url": "http://a/", "rules": ["r"]},
        {"name": "x", "kind": "generic", "url": "http://a/", "rules": ["r"]},  # unsigned generic
        {"name": "x", "kind": "slack", "url": "file:///etc/passwd", "rules": ["r"]},
        {"name": "x", "kind": "slack", "url": "http://a/"},  # for nothing
        {
            "name": "x",
            "kind": "generic",
            "url": "http://a/",
            "secret_env": "QT_UNSET_VAR_XYZ",
            "rules": ["r"],
        },
    ],
)
def test_bad_target_config_is_a_clear_error(raw: dict) -> None:
    with pytest.raises(NotifyConfigError, match="webhook x"):
        load_targets([raw])


def test_receiver_gets_slack_and_signed_generic_messages() -> None:
    with receiver(200) as slack, receiver(200) as generic:
        s = WebhookTarget(name="slack-sec", kind="slack", url=slack.url, approver_groups=("data-security",))
        g = WebhookTarget(
            name="siem", kind="generic", url=generic.url, secret=SECRET, rules=("pii-needs-approval",)
        )
        assert [a.outcome for a in deliver(s, NOTE, _post)] == ["delivered"]
        assert [a.outcome for a in deliver(g, NOTE, _post)] == ["delivered"]
    [got] = slack.got
    assert json.loads(got.body)["blocks"][0]["type"] == "header"
    [signed] = generic.got
    assert verify_signature(SECRET, signed.body, signed.headers)
    assert json.loads(signed.body)["request_id"] == "req-1"


def test_500_then_200_is_retried_with_backoff() -> None:
    waits: list[float] = []
    with receiver(500, 503, 200) as rec:
        target = WebhookTarget(name="siem", kind="generic", url=rec.url, secret=SECRET, rules=("r",))
        attempts = deliver(target, NOTE, _post, sleep=waits.append, base_delay_s=0.01)
    assert [(a.attempt, a.status_code, a.outcome) for a in attempts] == [
        (1, 500, "retrying"),
        (2, 503, "retrying"),
        (3, 200, "delivered"),
    ]
    assert waits == [0.01, 0.02] and len(rec.got) == 3
    assert all(verify_signature(SECRET, r.body, r.headers) for r in rec.got)


def test_always_failing_and_unreachable_receivers_end_in_recorded_failures() -> None:
    with receiver(500) as rec:
        target = WebhookTarget(name="down", kind="slack", url=rec.url, rules=("r",))
        attempts = deliver(target, NOTE, _post, sleep=lambda s: None, max_attempts=4)
    assert [a.outcome for a in attempts] == ["retrying"] * 3 + ["failed"]
    assert all(a.redacted_url.endswith("/…") and "s3cr3t" not in a.redacted_url for a in attempts)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    target = WebhookTarget(name="gone", kind="slack", url=dead, rules=("r",))
    attempts = deliver(target, NOTE, _post, sleep=lambda s: None, max_attempts=2)
    assert [(a.status_code, a.error_class, a.outcome) for a in attempts] == [
        (None, "ConnectError", "retrying"),
        (None, "ConnectError", "failed"),
    ]


def test_a_4xx_is_not_retried() -> None:
    with receiver(404) as rec:
        target = WebhookTarget(name="gone", kind="slack", url=rec.url, rules=("r",))
        attempts = deliver(target, NOTE, _post, sleep=lambda s: None)
    assert [(a.status_code, a.outcome) for a in attempts] == [(404, "failed")]
