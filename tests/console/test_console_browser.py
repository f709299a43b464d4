"""The console in real headless Chromium against the real stack and a real Keycloak.

Keycloak's own login page signs a data-security user in (OIDC, then SAML); a held query appears
on the pending page without a reload (server-sent events); approving it from the page releases
it and the requester gets masked rows. Screenshots of each page go to tests/console/artifacts/.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from querytrail.settings import SnowflakeProfile
from tests.console.console_stack import (
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    ConsoleServer,
    Held,
    Pipeline,
    chromium,
    keycloak_token,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
    ),
]

PRIVILEGED = "SELECT USERNAME, EMAIL, MFA_SECRET FROM SECURITY.ADMIN.USERS"
EVIL_PROMPT = 'list admins <script>alert("x")</script> "><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    fakesnow_profile: SnowflakeProfile,
    keycloak: Any,
) -> Iterator[tuple[Pipeline, ConsoleServer]]:
    from console.commands import assemble
    from console.config import ConsoleConfig
    from console.issuer import AUDIENCE
    from infra.keycloak import issuer_settings
    from infra.topics import create_topics
    from tests.conftest import free_port
    from tests.pipeline.pipeline_harness import new_prefix

    port = free_port()
    config = ConsoleConfig(
        public_url=f"http://127.0.0.1:{port}",
        oidc_issuer=keycloak.issuer,
        saml_idp_metadata_url=keycloak.saml_metadata_url,
        verify_interval_s=3600,
        verdict_wait_s=45,
    )
    bridge = {
        "issuer": config.saml_issuer,
        "audience": AUDIENCE,
        "jwks_uri": f"{config.saml_issuer}/jwks.json",
        "algorithms": ["EdDSA"],
    }
    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    pipeline = Pipeline(
        tmp_path_factory.mktemp("console") / prefix,
        kafka_bootstrap,
        prefix,
        fakesnow_profile,
        extra={"identity": {"issuers": [issuer_settings(keycloak.issuer).model_dump(), bridge]}},
    )
    server = None
    try:
        pipeline.start("sink")
        pipeline.start_all()
        server = ConsoleServer(assemble(pipeline.settings, config), port)
        server.start()
        yield pipeline, server
    finally:
        if server is not None:
            server.stop()
        pipeline.stop()
        with contextlib.suppress(Exception):
            print("--- worker log ---\n" + pipeline.tail("worker"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_for(browser: Any, css: str, timeout: float = 60.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def sign_in(browser: Any, console_url: str, how: str, user: str) -> None:
    """Through the console's sign-in page and Keycloak's own login form."""
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})  # no Keycloak SSO session left over
    browser.get(console_url + "/approvals")
    assert "/login" in browser.current_url  # no session: sent to sign in
    browser.find_element(By.ID, f"signin-{how}").click()
    wait_for(browser, "#username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(f"{user}-pw")
    shot(browser, f"keycloak-login-{how}")
    browser.find_element(By.ID, "kc-login").click()
    wait_for(browser, "#pending")
    assert browser.find_element(By.ID, "whoami").text == user


def approve_on_page(browser: Any, console_url: str, request_id: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    browser.get(f"{console_url}/approvals/{request_id}")
    wait_for(browser, "#approve")
    shot(browser, name)
    browser.find_element(By.ID, "comment").send_keys("checked with the requester")
    browser.find_element(By.ID, "approve").click()
    return str(wait_for(browser, "#verdict-result", 90).text)


def test_oidc_approver_sees_held_query_live_and_releases_masked_rows(
    stack: tuple[Pipeline, ConsoleServer], browser: Any, keycloak: Any
) -> None:
    from selenium.webdriver.common.by import By

    pipeline, server = stack
    sign_in(browser, server.url, "oidc", "dave")
    shot(browser, "approvals-empty")

    held = Held(pipeline, keycloak_token(keycloak.issuer, "bob"), PRIVILEGED, EVIL_PROMPT)
    try:
        # appears without a reload: the page's EventSource fetches the new fragment
        row = wait_for(browser, f'tr[data-request="{held.request_id}"]', 60)
        prompt = row.find_element(By.CSS_SELECTOR, "td.prompt").text
        assert '<script>alert("x")</script>' in prompt and "<img src=x onerror=alert(1)>" in prompt
        assert browser.find_elements(By.CSS_SELECTOR, "#pending img, #pending script") == []
        shot(browser, "approvals-pending")

        result = approve_on_page(browser, server.url, held.request_id, "approval-detail")
        assert result.startswith("approve accepted"), result
        assert browser.find_element(By.ID, "prompt").text == EVIL_PROMPT  # shown as text, verbatim
        assert browser.find_element(By.ID, "statement").text.startswith("SELECT")

        outcome = held.outcome(90)
        assert outcome.status == "completed", outcome.to_json()
        rows = outcome.rows()
        assert rows, outcome.to_json()
        assert all(r[1] is None or str(r[1]).startswith("****") for r in rows), rows  # EMAIL masked
        assert all(r[2] is None for r in rows), rows  # MFA_SECRET nullified
    finally:
        held.close()

    # the request's timeline, once the sink has written it
    deadline = time.monotonic() + 60
    while True:
        browser.get(f"{server.url}/requests/{held.request_id}")
        events = browser.find_elements(By.CSS_SELECTOR, "#timeline .etype")
        if any(e.text == "QueryCompleted" for e in events) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "QueryRequested" in [e.text for e in events] and "QueryCompleted" in [e.text for e in events]
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    shot(browser, "timeline")

    browser.get(f"{server.url}/search?identity=bob&go=1")
    assert held.request_id in wait_for(browser, "#results").text
    shot(browser, "search")
    browser.get(f"{server.url}/reports/privileged-access")
    wait_for(browser, "#report")
    shot(browser, "report-privileged-access")
    browser.get(f"{server.url}/verify")
    browser.find_element(By.ID, "verify-now").click()
    assert wait_for(browser, "#verify-status").text
    shot(browser, "verify")


def test_requester_approving_own_request_is_refused_on_screen(
    stack: tuple[Pipeline, ConsoleServer], browser: Any, keycloak: Any
) -> None:
    pipeline, server = stack
    sign_in(browser, server.url, "oidc", "alice")
    held = Held(pipeline, keycloak_token(keycloak.issuer, "alice"), PRIVILEGED, "my own admin list")
    try:
        wait_for(browser, f'tr[data-request="{held.request_id}"]', 60)
        result = approve_on_page(browser, server.url, held.request_id, "approval-self")
        assert result.startswith("approve refused") and "self_approval" in result, result
        shot(browser, "approval-self-refused")
        assert held.outcome(2).status == "awaiting_approval"
    finally:
        held.close()


def test_post_without_csrf_token_is_refused(stack: tuple[Pipeline, ConsoleServer], browser: Any) -> None:
    _, server = stack
    cookie = browser.get_cookie("qt_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    resp = httpx.post(
        f"{server.url}/approvals/any/verdict",
        cookies={"qt_console": cookie["value"]},
        data={"verdict": "approve", "statement_sha256": "0" * 64},
    )
    assert resp.status_code == 403 and "CSRF token is missing or wrong" in resp.text
    assert "default-src 'self'" in resp.headers["content-security-policy"]


def test_expired_session_is_sent_back_to_sign_in(stack: tuple[Pipeline, ConsoleServer], browser: Any) -> None:
    _, server = stack
    browser.get(server.url + "/approvals")
    wait_for(browser, "#pending")
    # time passes: every session's end is moved into the past (the store's own clock check runs)
    for session in list(server.console.sessions._sessions.values()):
        session.expires_at = time.time() - 1
    browser.get(server.url + "/search")
    wait_for(browser, "#expired")
    assert "/login" in browser.current_url
    shot(browser, "session-expired")


def test_saml_approver_releases_a_held_query(
    stack: tuple[Pipeline, ConsoleServer], browser: Any, keycloak: Any
) -> None:
    pipeline, server = stack
    sign_in(browser, server.url, "saml", "alice")
    shot(browser, "approvals-saml")
    held = Held(pipeline, keycloak_token(keycloak.issuer, "bob"), PRIVILEGED, "admins, via SAML approver")
    try:
        wait_for(browser, f'tr[data-request="{held.request_id}"]', 60)
        result = approve_on_page(browser, server.url, held.request_id, "approval-detail-saml")
        assert result.startswith("approve accepted"), result
        outcome = held.outcome(90)
        assert outcome.status == "completed", outcome.to_json()
        assert all(r[2] is None for r in outcome.rows())
    finally:
        held.close()


def test_replayed_saml_response_is_refused(stack: tuple[Pipeline, ConsoleServer]) -> None:
    """A signed response captured from Keycloak signs in once; posting it again is refused."""
    import html
    import re

    _, server = stack
    with httpx.Client(timeout=20, follow_redirects=False) as client:
        to_idp = client.get(f"{server.url}/login/saml").headers["location"]
        page = client.get(to_idp)
        action = html.unescape(re.search(r'action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
        cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)  # Secure cookies over http
        posted = client.post(
            action, data={"username": "carol", "password": "carol-pw"}, headers={"cookie": cookie}
        )
        saml_response = html.unescape(re.search(r'name="SAMLResponse" value="([^"]+)"', posted.text).group(1))  # type: ignore[union-attr]
        first = httpx.post(f"{server.url}/auth/saml/acs", data={"SAMLResponse": saml_response})
        assert first.status_code == 303 and first.headers["location"] == "/approvals"
        again = httpx.post(f"{server.url}/auth/saml/acs", data={"SAMLResponse": saml_response})
        assert again.status_code == 403 and "Sign-in refused" in again.text
        assert "set-cookie" not in again.headers or "qt_console=" not in again.headers["set-cookie"]
