"""The browser tests' stack: worker, executor and sink processes, the console in-process, Chromium.

The worker trusts the real Keycloak (``infra.keycloak.issuer_settings``) and the console's SAML
bridge issuer (its JWKS served by the console under test). Requesters' tokens come from
Keycloak's own login form through the authorization code flow with PKCE (``keycloak_token``),
so requester and approver are the same kind of identity and self-approval is caught.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx

from tests.pipeline.pipeline_harness import Pipeline

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def keycloak_token(issuer: str, username: str, client_id: str = "querytrail-console") -> str:
    """An access token for ``username``: Keycloak's login form, code flow with PKCE, no browser."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:9/cb"  # never reached: the code is read from the Location header
    with httpx.Client(timeout=20, follow_redirects=False) as client:
        page = client.get(
            f"{issuer}/protocol/openid-connect/auth",
            params={
                "client_id": client_id,
                "response_type": "code",
                "scope": "openid profile",
                "redirect_uri": redirect,
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        page.raise_for_status()
        action = html.unescape(re.search(r'action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
        # Keycloak's session cookies are Secure; the cookie jar keeps them off plain http
        # (Chromium sends them to 127.0.0.1), so they go back by hand.
        cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
        client.cookies.clear()
        resp = client.post(
            action, data={"username": username, "password": f"{username}-pw"}, headers={"cookie": cookie}
        )
        location = resp.headers.get("location")
        if location is None:
            raise AssertionError(f"Keycloak login of {username} failed: {resp.status_code} {resp.text[:500]}")
        code = parse_qs(urlparse(location).query)["code"][0]
        token = client.post(
            f"{issuer}/protocol/openid-connect/token",
            data={
                "grant_type": "authorization_code",
                "client_id": client_id,
                "code": code,
                "redirect_uri": redirect,
                "code_verifier": verifier,
            },
        )
        token.raise_for_status()
        return str(token.json()["access_token"])


class Held:
    """A request submitted in the background: ``outcome(timeout)`` waits for its end."""

    def __init__(self, pipeline: Pipeline, token: str, sql: str, prompt: str) -> None:
        from ingress.client import QueryClient
        from schemas.events import ClientContext, Target

        self.request_id = f"req-{uuid.uuid4()}"
        self._sub = QueryClient(pipeline.settings).submit(
            token=token,
            request_id=self.request_id,
            prompt=prompt,
            sql=sql,
            model="test-model",
            target=Target(profile="analytics"),
            context=ClientContext(ci_provider="local"),
            session_id=f"sess-{self.request_id[-8:]}",
        )

    def outcome(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            out = self._sub.wait(max(1.0, deadline - time.monotonic()))
            if out.status != "awaiting_approval" or time.monotonic() >= deadline:
                return out

    def close(self) -> None:
        self._sub.close()


class ConsoleServer:
    """The console app under uvicorn in a thread of the test process."""

    def __init__(self, console: Any, port: int) -> None:
        import uvicorn

        from console.routes import build_app

        self.console = console
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(build_app(console), host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("the console did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.console.board.stop()
        self.console.audit.stop()


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1366,1000",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def query_string(**params: str) -> str:
    return urlencode(params)
