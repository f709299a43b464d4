"""The console's web layer without a broker: sign-in redirects, CSRF, CSP, escaping, sessions."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from console.app import Console
from console.config import ConsoleConfig
from console.html import sql_html
from console.pages import _csv_cell
from console.routes import build_app
from console.sessions import COOKIE, SessionStore
from querytrail.identity import Identity
from querytrail.settings import Settings

EVIL = 'x <script>alert(1)</script> "><img src=x onerror=alert(2)> \u202eevil'


class _Board:
    """A board holding one pending approval (what console.board.Board folds from the topic)."""

    def __init__(self) -> None:
        self.version = 1
        self.ready = threading.Event()
        self.ready.set()
        now = datetime.now(UTC)
        asked = SimpleNamespace(
            request_id="req-1",
            session_id=None,
            occurred_at=now,
            statement="SELECT 1",
            statement_sha256="e004ebd5b5532a4b85984a62f8ad48a81aa3460c1ca07701f386135d72cdecf5",
            rule_id="r<b>",
            approver_groups=("data-security",),
            min_approvals=1,
            expires_at=now + timedelta(minutes=5),
            requester=SimpleNamespace(
                subject="bob<i>", issuer="iss", groups=("analyst",), service_account=False, actor=None
            ),
            prompt=EVIL,
            sql_text="SELECT 1 -- <b>",
            findings=(),
            masked_columns=(),
            unmasked_columns=(),
        )
        state = SimpleNamespace(pending=True, status="pending", expires_at=asked.expires_at, approvers=())
        self.item = SimpleNamespace(
            asked=asked, state=state, estimated_bytes=None, tables=("SECURITY.ADMIN.USERS",)
        )
        self.item.status = lambda now: "pending"

    def items(self, now: datetime, include_resolved: bool = False) -> list[Any]:
        return [self.item]

    def get(self, request_id: str) -> Any:
        return self.item if request_id == "req-1" else None


@pytest.fixture
def app(tmp_path: Path) -> tuple[TestClient, Console]:
    console = Console(
        settings=Settings(home=tmp_path),
        config=ConsoleConfig(),
        sessions=SessionStore(ttl_s=60),
        board=_Board(),
        audit=SimpleNamespace(latest_verify=None),
    )
    return TestClient(build_app(console), follow_redirects=False), console


def _sign_in(client: TestClient, console: Console) -> Any:
    session = console.sessions.create(
        Identity(subject="dave", issuer="iss", groups=("data-security",)), "oidc", token="t"
    )
    client.cookies.set(COOKIE, console.sessions.cookie_value(session))
    return session


def test_pages_need_a_session_and_carry_a_strict_csp(app: tuple[TestClient, Console]) -> None:
    client, _ = app
    resp = client.get("/approvals")
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    login = client.get("/login")
    csp = login.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert login.headers["x-content-type-options"] == "nosniff"
    assert client.get("/events").status_code == 303 and client.get("/approvals/fragment").status_code == 401


def test_untrusted_text_renders_inert(app: tuple[TestClient, Console]) -> None:
    client, console = app
    _sign_in(client, console)
    for path in ("/approvals", "/approvals/req-1"):
        body = client.get(path).text
        assert "<script>alert" not in body and "<img" not in body and "<b>" not in body and "<i>" not in body
        assert (
            "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;img src=x onerror=alert(2)&gt;" in body
        )
        assert "\u202e" not in body and "\\u202eevil" in body  # a bidi override is shown, not obeyed
    assert "<script" not in str(sql_html("SELECT '<script>'")) and "&lt;script&gt;" in str(
        sql_html("SELECT '<script>'")
    )


def test_post_without_or_with_a_wrong_csrf_token_is_refused(app: tuple[TestClient, Console]) -> None:
    client, console = app
    session = _sign_in(client, console)
    console.send_verdict = lambda *a, **k: pytest.fail("a verdict without a CSRF token must not be sent")
    for data in ({"verdict": "approve"}, {"verdict": "approve", "csrf": session.csrf + "x"}):
        resp = client.post("/approvals/req-1/verdict", data=data)
        assert resp.status_code == 403 and "CSRF token is missing or wrong" in resp.text
    assert client.post("/logout", data={}).status_code == 403


def test_a_changed_statement_is_not_sent(app: tuple[TestClient, Console]) -> None:
    client, console = app
    session = _sign_in(client, console)
    console.send_verdict = lambda *a, **k: pytest.fail("must not send for another hash")
    resp = client.post(
        "/approvals/req-1/verdict",
        data={"verdict": "approve", "csrf": session.csrf, "statement_sha256": "0" * 64},
    )
    assert resp.status_code == 409 and "changed since you reviewed it" in resp.text


def test_expired_or_forged_sessions_are_sent_to_sign_in(app: tuple[TestClient, Console]) -> None:
    client, console = app
    session = _sign_in(client, console)
    assert client.get("/approvals").status_code == 200
    session.expires_at = time.time() - 1
    resp = client.get("/approvals")
    assert resp.status_code == 303 and resp.headers["location"] == "/login?m=expired"
    assert console.sessions.from_cookie(console.sessions.cookie_value(session)[:-2] + "xx") is None


def test_csv_cells_cannot_run_as_formulas() -> None:
    assert _csv_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert _csv_cell("-1+2") == "'-1+2" and _csv_cell("plain") == "plain" and _csv_cell(3) == 3
