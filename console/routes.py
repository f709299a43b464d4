"""The console's ASGI app: the sign-in routes of ``console.app`` and the pages of ``console.pages``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console import pages
from console.app import (
    _HERE,
    Console,
    SecurityHeaders,
    healthz,
    login_oidc,
    login_page,
    login_saml,
    logout,
    oidc_callback,
    saml_acs,
    saml_jwks,
    templates,
)

__all__ = ["build_app"]


def build_app(console: Console) -> Starlette:
    """The ASGI app over an assembled ``Console`` (see ``console.commands`` for the assembly)."""
    routes = [
        Route("/", pages.home),
        Route("/login", login_page),
        Route("/login/oidc", login_oidc),
        Route("/auth/oidc/callback", oidc_callback),
        Route("/login/saml", login_saml),
        Route("/auth/saml/acs", saml_acs, methods=["POST"]),
        Route("/saml/jwks.json", saml_jwks),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    app.state.templates = templates()
    app.add_middleware(SecurityHeaders, https=console.config.public_url.startswith("https://"))
    return app
