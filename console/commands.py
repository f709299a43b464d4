"""``querytrail console``: assemble the console from settings and serve it with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["assemble", "register"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "console", help="the web console: pending approvals, timelines, search, reports"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8300)
    p.add_argument("--public-url", help="the URL browsers use (default: http://HOST:PORT)")
    p.add_argument("--oidc-issuer", help="OIDC issuer to sign users in with (must be in identity.issuers)")
    p.add_argument(
        "--oidc-client-id", help="the console's (public, PKCE) client id; default querytrail-console"
    )
    p.add_argument("--saml-idp-metadata-url", help="the SAML IdP's metadata URL (turns SAML sign-in on)")
    p.add_argument("--saml-entity-id", help="the console's SAML entity id; default querytrail-console-saml")
    p.add_argument("--session-ttl", type=int, help="session lifetime in seconds (default 900)")
    p.set_defaults(func=_console)


def assemble(settings: Any, config: Any, *, start_threads: bool = True) -> Any:
    """A ``Console`` with its board, audit reader and IdP logins (threads started unless told not to)."""
    import httpx

    from console.app import Console
    from console.audit import Audit
    from console.board import Board
    from console.sessions import SessionStore
    from ingress.verdicts import send_verdict
    from querytrail.identity import TokenVerifier

    verifier = TokenVerifier.from_settings(settings)
    console = Console(
        settings=settings,
        config=config,
        sessions=SessionStore(ttl_s=config.session_ttl_s),
        board=Board(),
        audit=Audit(settings, config.verify_interval_s),
        verifier=verifier,
        send_verdict=send_verdict,
    )
    base = config.public_url.rstrip("/")
    if config.oidc_issuer:
        from console.oidc import OidcLogin

        console.oidc = OidcLogin(
            config.oidc_issuer, config.oidc_client_id, f"{base}/auth/oidc/callback", verifier
        )
    if config.saml_idp_metadata_url:
        from console.issuer import ConsoleIssuer
        from console.saml import SamlLogin

        if verifier.issuer_settings(config.saml_issuer) is None:
            raise ValueError(
                f"SAML sign-in needs the console's bridge issuer {config.saml_issuer} in identity.issuers "
                f"(jwks_uri {config.saml_issuer}/jwks.json, audience querytrail-console-saml): the worker "
                "would refuse every approval signed in through SAML"
            )
        metadata = httpx.get(config.saml_idp_metadata_url, timeout=10.0)
        metadata.raise_for_status()
        console.saml = SamlLogin(config.saml_entity_id, f"{base}/auth/saml/acs", metadata.text)
        console.issuer = ConsoleIssuer(settings.keys_dir, config.saml_issuer)
    if start_threads:
        console.board.start(settings)
        console.audit.start_verifier()
    return console


def _console(args: argparse.Namespace) -> int:
    import uvicorn

    from console.config import ConsoleConfig
    from console.routes import build_app
    from querytrail.observability import configure_logging
    from querytrail.settings import get_settings

    settings = get_settings()
    configure_logging("console", settings.log_level, settings.log_format)
    config = ConsoleConfig.from_env(
        public_url=args.public_url or f"http://{args.host}:{args.port}",
        oidc_issuer=args.oidc_issuer,
        oidc_client_id=args.oidc_client_id,
        saml_idp_metadata_url=args.saml_idp_metadata_url,
        saml_entity_id=args.saml_entity_id,
        session_ttl_s=args.session_ttl,
    )
    try:
        console = assemble(settings, config)
    except (ValueError, OSError) as exc:
        print(f"querytrail console: {exc}", file=sys.stderr)
        return 2
    log.info("console on http://%s:%d (public URL %s)", args.host, args.port, config.public_url)
    uvicorn.run(build_app(console), host=args.host, port=args.port, log_level="warning", proxy_headers=False)
    console.board.stop()
    console.audit.stop()
    return 0
