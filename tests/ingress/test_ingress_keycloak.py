"""The real HTTP ingress trusts the local Keycloak realm next to the dev issuer.

A client-credentials token of the ``querytrail-ci`` service account (real Keycloak, real
token endpoint) is accepted by ``POST /v1/queries`` and its identity mapped onto the
QueryRequested on the real broker; a token of an issuer the ingress does not trust is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from infra.keycloak import issuer_settings, token_request
from ingress.app import create_app
from querytrail import devissuer
from querytrail.sealing import ensure_keys
from querytrail.settings import Settings
from schemas.codec import EventCodec
from tests.ingress.ingress_kafka import free_port, read_topic, serve
from tests.ingress.ingress_oidc import IssuerServer

pytestmark = pytest.mark.integration
codec = EventCodec()
BODY = {
    "prompt": "count customers",
    "sql": "select count(*) from customers",
    "model": "claude-test",
    "target": {"profile": "analytics", "database": "ANALYTICS", "schema": "PUBLIC"},
}


@pytest.fixture
def ingress(qt_settings: Callable[..., Settings], keycloak: Any) -> Iterator[tuple[Settings, str]]:
    port = free_port()
    settings = qt_settings(
        identity={
            "dev_issuer_enabled": True,
            "dev_issuer_url": f"http://127.0.0.1:{port}/dev-issuer",
            "issuers": [issuer_settings(keycloak.issuer)],
        },
    )
    ensure_keys(settings)
    app = create_app(settings)
    with serve(app, port) as url:
        deadline = time.monotonic() + 20
        while not app.state.ingress.indexer.assigned.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield settings, url


def _ci_token(keycloak: Any) -> str:
    data = token_request(
        keycloak.token_endpoint,
        {
            "grant_type": "client_credentials",
            "client_id": "querytrail-ci",
            "client_secret": "querytrail-ci-secret",
        },
    )
    return str(data["access_token"])


def test_keycloak_service_account_token_is_accepted_and_mapped(
    ingress: tuple[Settings, str], keycloak: Any
) -> None:
    settings, url = ingress
    token = _ci_token(keycloak)
    resp = httpx.post(
        f"{url}/v1/queries", json=BODY, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert resp.status_code == 202, resp.text
    [(_, value)] = read_topic(settings, "requests", 1)
    attested = codec.decode(value).credential.attested
    assert attested.issuer == keycloak.issuer
    assert attested.subject == "service-account-querytrail-ci"
    assert attested.groups == ("ci",) and attested.service_account is True
    assert token not in value.decode("utf-8", "replace")

    # the dev issuer stays trusted alongside Keycloak
    dev = devissuer.mint_token(settings, sub="dev-bot", groups=["ci"])
    resp = httpx.post(f"{url}/v1/queries", json=BODY, headers={"Authorization": f"Bearer {dev}"}, timeout=30)
    assert resp.status_code == 202, resp.text


def test_token_of_an_untrusted_issuer_is_refused(
    ingress: tuple[Settings, str], issuer_server: IssuerServer
) -> None:
    _, url = ingress
    stranger = issuer_server.add("stranger", "ES256")
    token = stranger.mint(groups=["ci"])
    resp = httpx.post(
        f"{url}/v1/queries", json=BODY, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert (resp.status_code, resp.json()["error"]) == (401, "unknown_issuer")


def test_token_of_another_realm_of_the_same_keycloak_is_refused(
    ingress: tuple[Settings, str], keycloak: Any
) -> None:
    """Trust is per realm (issuer URL), not per Keycloak server: a master-realm token is refused."""
    _, url = ingress
    data = token_request(
        f"{keycloak.base_url}/realms/master/protocol/openid-connect/token",
        {"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin-pw"},
    )
    token = str(data["access_token"])
    resp = httpx.post(
        f"{url}/v1/queries", json=BODY, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert (resp.status_code, resp.json()["error"]) == (401, "unknown_issuer")
