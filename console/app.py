"""The console's Starlette app: wiring, security headers, sign-in and sign-out.

Pages live in ``console.pages``; this module builds the app, its templates (autoescape plus
``console.html.inert`` on every value) and the routes that establish a session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console.config import ConsoleConfig
from console.html import hidden_count, inert, sql_html
from console.sessions import COOKIE, Session, SessionStore

__all__ = ["Console", "current_session", "error", "render", "templates"]

log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent
_LOGIN_COOKIE = "qt_console_login"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@dataclass
class Console:
    """Everything the routes share: settings, config, sessions, the board and the audit reader."""

    settings: Any
    config: ConsoleConfig
    sessions: SessionStore
    board: Any  # console.board.Board
    audit: Any  # console.audit.Audit
    oidc: Any = None  # console.oidc.OidcLogin
    saml: Any = None  # console.saml.SamlLogin
    issuer: Any = None  # console.issuer.ConsoleIssuer
    verifier: Any = None  # querytrail.identity.TokenVerifier
    send_verdict: Any = None  # ingress.verdicts.send_verdict (tests of the refusals swap nothing else)


class SecurityHeaders:
    """A strict CSP and friends on every response; pages are never cached (they show live state)."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                if self.https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_HERE / "templates")),
        autoescape=select_autoescape(["html", "svg"], default=True),
        finalize=inert,
    )
    env.filters["sql"] = sql_html
    env.globals["hidden_count"] = hidden_count
    return env


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    console: Console = request.app.state.console
    session = current_session(request)
    html = request.app.state.templates.get_template(template).render(
        user=session, csrf=session.csrf if session else "", config=console.config, **context
    )
    return HTMLResponse(html, status_code=status)


def current_session(request: Request) -> Session | None:
    console: Console = request.app.state.console
    session = console.sessions.from_cookie(request.cookies.get(COOKIE))
    if session is not None and console.config.viewer_groups:
        if not set(session.identity.groups) & set(console.config.viewer_groups):
            return None
    return session


def error(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, title=title, message=message)


def _cookie_args(console: Console, max_age: int) -> dict[str, Any]:
    return {
        "max_age": max_age,
        "httponly": True,
        "samesite": "lax",  # Lax, not Strict: the IdP's redirect back is a cross-site navigation
        "secure": console.config.public_url.startswith("https://"),
        "path": "/",
    }


def _signed_in(console: Console, session: Session) -> Response:
    log.info("signed in %s via %s", session.identity.subject, session.via)
    resp = RedirectResponse("/approvals", status_code=303)
    resp.set_cookie(
        COOKIE, console.sessions.cookie_value(session), **_cookie_args(console, console.config.session_ttl_s)
    )
    resp.delete_cookie(_LOGIN_COOKIE, path="/")
    return resp


async def login_page(request: Request) -> Response:
    return render(request, "login.html", message=request.query_params.get("m"))


async def login_oidc(request: Request) -> Response:
    console: Console = request.app.state.console
    if console.oidc is None:
        return error(request, 404, "OIDC is not configured", "Start the console with --oidc-issuer.")
    try:
        url, state = await console.oidc.begin()
    except Exception as exc:
        log.warning("OIDC sign-in could not start: %s", type(exc).__name__)
        return error(request, 503, "The identity provider is unavailable", "Try again in a moment.")
    resp = RedirectResponse(url, status_code=303)
    resp.set_cookie(_LOGIN_COOKIE, console.sessions.sign(state), **_cookie_args(console, 600))
    return resp


async def oidc_callback(request: Request) -> Response:
    from console.oidc import OidcError

    console: Console = request.app.state.console
    if console.oidc is None:
        return error(request, 404, "OIDC is not configured", "")
    params = request.query_params
    if params.get("error"):
        return error(request, 400, "Sign-in refused by the identity provider", str(params.get("error"))[:200])
    state, code = params.get("state") or "", params.get("code") or ""
    if console.sessions.unsign(request.cookies.get(_LOGIN_COOKIE)) != state or not code:
        return error(request, 400, "Sign-in refused", "This sign-in was not started in this browser.")
    try:
        identity, token, exp = await console.oidc.finish(state, code)
    except OidcError as exc:
        return error(request, 400, "Sign-in refused", str(exc))
    session = console.sessions.create(identity, "oidc", token=token, token_exp=exp)
    return _signed_in(console, session)


async def login_saml(request: Request) -> Response:
    console: Console = request.app.state.console
    if console.saml is None:
        return error(
            request, 404, "SAML is not configured", "Start the console with --saml-idp-metadata-url."
        )
    return RedirectResponse(console.saml.begin(), status_code=303)


async def saml_acs(request: Request) -> Response:
    """The assertion consumer service. No CSRF token: the IdP posts here; the signed assertion,
    its InResponseTo (our own outstanding request) and the replay cache are the checks."""
    from console.saml import SamlError
    from querytrail.identity import IdentityError, map_claims

    console: Console = request.app.state.console
    if console.saml is None or console.issuer is None:
        return error(request, 404, "SAML is not configured", "")
    form = await request.form()
    try:
        name_id, attributes = console.saml.finish(str(form.get("SAMLResponse") or ""))
    except SamlError as exc:
        return error(request, 403, "Sign-in refused", str(exc))
    issuer_settings = console.verifier.issuer_settings(console.issuer.issuer)
    claims: dict[str, Any] = {
        "iss": console.issuer.issuer,
        "sub": name_id,
        "groups": attributes.get("groups", []),
    }
    for name in ("preferred_username", "email", "name"):
        if attributes.get(name):
            claims[name] = attributes[name][0]
    try:  # the same claim-to-identity mapping the worker applies to the bridge token
        identity = map_claims(claims, issuer_settings, "")
    except IdentityError as exc:
        return error(request, 403, "Sign-in refused", exc.code)
    return _signed_in(console, console.sessions.create(identity, "saml"))


async def saml_jwks(request: Request) -> Response:
    console: Console = request.app.state.console
    if console.issuer is None:
        return JSONResponse({"keys": []}, status_code=404)
    return JSONResponse(console.issuer.jwks())


async def logout(request: Request) -> Response:
    session = current_session(request)
    form = await request.form()
    if session is not None:
        if not session.csrf_ok(str(form.get("csrf") or "")):
            return error(request, 403, "Refused", "The form's CSRF token is missing or wrong.")
        request.app.state.console.sessions.drop(session.sid)
    resp = RedirectResponse("/login?m=signed-out", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


async def healthz(request: Request) -> Response:
    console: Console = request.app.state.console
    return JSONResponse({"board_ready": console.board.ready.is_set()})
