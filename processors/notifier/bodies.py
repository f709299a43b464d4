"""Approval notifications: webhook bodies (Slack Block Kit, signed generic JSON), targets, delivery.

Pure except ``deliver``, which takes the HTTP post and the sleep as arguments (the service
passes httpx and time.sleep; tests pass a real local HTTP server).

- ``slack_body(note)``: Slack incoming-webhook JSON (Block Kit): who, what, rule, console link.
  Every untrusted string (prompt, SQL, subjects, reasons) is escaped for Slack mrkdwn
  (``&``, ``<``, ``>``; so no ``<!channel>`` or ``<url|link>`` injection) and truncated
  with a visible marker.
- ``generic_body(note)`` + ``sign(secret, body, timestamp)``: compact JSON and the headers
  ``X-Querytrail-Timestamp: <unix seconds>`` and ``X-Querytrail-Signature: sha256=<hex>``,
  the HMAC-SHA256 of ``<timestamp>.<raw body>`` with the shared secret. Signing the timestamp
  with the body lets a receiver refuse replays (``verify_signature(..., tolerance_s=300)``).
- ``targets_for(note, targets)``: the targets configured for the note's rule or approver groups.
- ``deliver(...)``: POST with retries (5xx, 429, connection errors) and exponential backoff,
  bounded in attempts and in delay; one ``Attempt`` per try, never raises for a bad receiver.

Secrets (a Slack webhook URL is one, the HMAC secret is one) never go into an Attempt: the
target is named and its URL recorded only as ``redact_url(url)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Attempt",
    "Note",
    "NotifyConfigError",
    "WebhookTarget",
    "deliver",
    "generic_body",
    "load_targets",
    "redact_url",
    "sign",
    "slack_body",
    "slack_escape",
    "targets_for",
    "truncate",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Querytrail-Signature"
TIMESTAMP_HEADER = "X-Querytrail-Timestamp"
_KINDS = ("slack", "generic")
_TRUNCATED = "… [truncated {n} chars]"


class NotifyConfigError(ValueError):
    """A webhook target is misconfigured (unknown kind, no URL, unreadable secret)."""


@dataclass(frozen=True, kw_only=True)
class Note:
    """What a notification says, taken from ApprovalRequested or ApprovalResolved."""

    event_id: str  # the event notified
    event_type: str  # ApprovalRequested or ApprovalResolved
    request_id: str
    rule_id: str
    approver_groups: tuple[str, ...]
    requester: str = ""
    statement: str = ""
    prompt: str = ""
    outcome: str | None = None  # resolutions: approved, denied or expired
    approvers: tuple[str, ...] = ()
    reason: str | None = None
    expires_at: str | None = None
    console_url: str = ""  # the console page of this request

    @classmethod
    def from_event(cls, event: Any, console_base: str, pending: Note | None = None) -> Note:
        """A Note of ``event``; a resolution borrows rule and groups from its ``pending`` request."""
        link = (
            f"{console_base.rstrip('/')}/approvals/{quote(event.request_id, safe='')}" if console_base else ""
        )
        if event.event_type == "ApprovalRequested":
            return cls(
                event_id=event.event_id,
                event_type=event.event_type,
                request_id=event.request_id,
                rule_id=event.rule_id,
                approver_groups=tuple(event.approver_groups),
                requester=event.requester.subject,
                statement=event.statement,
                prompt=event.prompt,
                expires_at=event.expires_at.isoformat(),
                console_url=link,
            )
        return cls(
            event_id=event.event_id,
            event_type=event.event_type,
            request_id=event.request_id,
            rule_id=pending.rule_id if pending else "",
            approver_groups=pending.approver_groups if pending else (),
            requester=pending.requester if pending else "",
            statement=pending.statement if pending else "",
            outcome=event.outcome,
            approvers=tuple(event.approvers),
            reason=event.reason,
            console_url=link,
        )


@dataclass(frozen=True, kw_only=True)
class WebhookTarget:
    """One receiver; ``rules`` / ``approver_groups`` select the notes it gets (either matches)."""

    name: str
    kind: str  # slack | generic
    url: str = field(repr=False)  # a Slack webhook URL is a secret: never in repr, logs or events
    secret: bytes | None = field(default=None, repr=False)  # generic: the HMAC-SHA256 key
    rules: tuple[str, ...] = ()
    approver_groups: tuple[str, ...] = ()

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One delivery try, as recorded (no URL secret, no body)."""

    target: str
    kind: str
    redacted_url: str
    attempt: int
    status_code: int | None
    error_class: str | None
    outcome: str  # delivered | retrying | failed


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters plus a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + _TRUNCATED.format(n=len(text) - limit)


def slack_escape(text: str, limit: int = 500) -> str:
    """Untrusted ``text`` for Slack mrkdwn: truncated, then ``&``, ``<``, ``>`` escaped.

    >>> slack_escape("<!channel> a&b")
    '&lt;!channel&gt; a&amp;b'
    """
    cut = truncate(text, limit)
    return cut.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str, limit: int) -> str:
    # Inside a code block a ``` in the text would end it early; break it with a zero-width space.
    return "```" + slack_escape(text, limit).replace("```", "`\u200b``") + "```"


def slack_body(note: Note) -> bytes:
    """Slack incoming-webhook JSON (Block Kit) for ``note``."""
    groups = ", ".join(note.approver_groups) or "-"
    if note.event_type == "ApprovalRequested":
        head = f"Approval needed: request {note.request_id}"
        fields = [
            f"*Requested by*\n{slack_escape(note.requester, 200)}",
            f"*Rule*\n{slack_escape(note.rule_id, 200)}",
            f"*Approvers*\n{slack_escape(groups, 200)}",
            f"*Expires*\n{slack_escape(note.expires_at or '-', 64)}",
        ]
        text = f"Approval needed for {note.request_id} (rule {note.rule_id})"
    else:
        head = f"Approval {note.outcome}: request {note.request_id}"
        fields = [
            f"*Outcome*\n{slack_escape(note.outcome or '-', 64)}",
            f"*Rule*\n{slack_escape(note.rule_id or '-', 200)}",
            f"*Approved by*\n{slack_escape(', '.join(note.approvers) or '-', 300)}",
            f"*Reason*\n{slack_escape(note.reason or '-', 300)}",
        ]
        text = f"Approval {note.outcome} for {note.request_id}"
    blocks: list[dict[str, Any]] = [
        # plain_text is not parsed as mrkdwn; Slack caps header text at 150 characters
        {"type": "header", "text": {"type": "plain_text", "text": truncate(head, 120)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if note.statement:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Statement*\n" + _code(note.statement, 1500)},
            }
        )
    if note.prompt:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "Prompt: " + slack_escape(note.prompt, 500)}],
            }
        )
    if note.console_url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in console"},
                        "url": note.console_url,
                    }
                ],
            }
        )
    # "text" is the notification fallback (and what screen readers read); escaped as well
    body = {"text": slack_escape(text, 300), "blocks": blocks}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def generic_body(note: Note) -> bytes:
    """The generic webhook's JSON: the note's fields, values as they are (JSON escapes them)."""
    data = {
        "type": note.event_type,
        "event_id": note.event_id,
        "request_id": note.request_id,
        "rule_id": note.rule_id,
        "approver_groups": list(note.approver_groups),
        "requester": note.requester,
        "statement": truncate(note.statement, 20_000),
        "prompt": truncate(note.prompt, 20_000),
        "outcome": note.outcome,
        "approvers": list(note.approvers),
        "reason": note.reason,
        "expires_at": note.expires_at,
        "console_url": note.console_url,
    }
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The timestamp and signature headers of ``body``: HMAC-SHA256 over ``<ts>.<body>``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"sha256={mac}"}


def verify_signature(
    secret: bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is within ``tolerance_s``."""
    lower = {k.lower(): v for k, v in headers.items()}
    ts, sig = lower.get(TIMESTAMP_HEADER.lower(), ""), lower.get(SIGNATURE_HEADER.lower(), "")
    if not ts.isdigit() or not sig.startswith("sha256="):
        return False
    if abs((time.time() if now is None else now) - int(ts)) > tolerance_s:
        return False
    expected = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig.removeprefix("sha256="))


def redact_url(url: str) -> str:
    """``url`` safe to record: scheme, host and port only (Slack's path *is* the credential)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def targets_for(note: Note, targets: Iterable[WebhookTarget]) -> list[WebhookTarget]:
    """The targets whose rules name ``note``'s rule or whose groups meet its approver groups."""
    groups = set(note.approver_groups)
    return [t for t in targets if note.rule_id in t.rules or groups.intersection(t.approver_groups)]


def _secret(raw: Mapping[str, Any], name: str) -> bytes | None:
    if raw.get("secret_env"):
        value = os.environ.get(str(raw["secret_env"]))
        if not value:
            raise NotifyConfigError(f"webhook {name}: environment variable {raw['secret_env']} is not set")
        return value.encode()
    if raw.get("secret_file"):
        try:
            return Path(str(raw["secret_file"])).read_bytes().strip()
        except OSError as exc:
            raise NotifyConfigError(f"webhook {name}: cannot read secret_file ({exc.strerror})") from None
    return None


def load_targets(raw_targets: Sequence[Mapping[str, Any]]) -> list[WebhookTarget]:
    """Targets from config: ``{name, kind, url | url_env, secret_env | secret_file, rules, approver_groups}``."""
    out: list[WebhookTarget] = []
    for raw in raw_targets:
        name = str(raw.get("name") or "")
        kind = str(raw.get("kind") or "")
        if not name or kind not in _KINDS:
            raise NotifyConfigError(
                f"webhook {name or '?'}: needs a name and kind slack|generic, got {kind!r}"
            )
        url = str(raw.get("url") or (os.environ.get(str(raw["url_env"]), "") if raw.get("url_env") else ""))
        if urlsplit(url).scheme not in ("http", "https"):
            raise NotifyConfigError(f"webhook {name}: needs an http(s) url (or url_env naming one)")
        secret = _secret(raw, name)
        if kind == "generic" and not secret:
            raise NotifyConfigError(f"webhook {name}: a generic webhook needs secret_env or secret_file")
        rules, groups = tuple(raw.get("rules") or ()), tuple(raw.get("approver_groups") or ())
        if not rules and not groups:
            raise NotifyConfigError(f"webhook {name}: name rules or approver_groups it is for")
        out.append(
            WebhookTarget(name=name, kind=kind, url=url, secret=secret, rules=rules, approver_groups=groups)
        )
    return out


Post = Callable[[str, bytes, dict[str, str]], int]


def deliver(
    target: WebhookTarget,
    note: Note,
    post: Post,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int = 5,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> list[Attempt]:
    """POST ``note`` to ``target`` until delivered or ``max_attempts``; every try as an Attempt.

    Retried: connection errors, timeouts, 429 and 5xx, after ``base_delay_s * 2**(n-1)`` capped
    at ``max_delay_s``. Any other 4xx fails at once (retrying a refused request changes nothing).
    ``post(url, body, headers) -> status`` may raise; it never escapes this function.
    """
    body = slack_body(note) if target.kind == "slack" else generic_body(note)
    attempts: list[Attempt] = []
    for n in range(1, max_attempts + 1):
        headers = {"Content-Type": "application/json"}
        if target.secret:
            headers.update(sign(target.secret, body))  # signed afresh: a retry has a fresh timestamp
        status: int | None = None
        error: str | None = None
        try:
            status = post(target.url, body, headers)
        except Exception as exc:
            error = type(exc).__name__
        if status is not None and 200 <= status < 300:
            outcome = "delivered"
        elif n < max_attempts and (status is None or status == 429 or status >= 500):
            outcome = "retrying"
        else:
            outcome = "failed"
        attempt = Attempt(
            target=target.name,
            kind=target.kind,
            redacted_url=target.redacted_url,
            attempt=n,
            status_code=status,
            error_class=error,
            outcome=outcome,
        )
        attempts.append(attempt)
        if on_attempt is not None:
            on_attempt(attempt)
        if outcome != "retrying":
            break
        sleep(min(max_delay_s, base_delay_s * 2 ** (n - 1)))
    return attempts
