"""The local Keycloak's realm: users in groups, the console's clients, the CI service account."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest

from infra.keycloak import REALM_FILE, token_request


def test_realm_file_declares_the_users_groups_and_clients() -> None:
    realm = json.loads(REALM_FILE.read_text(encoding="utf-8"))
    groups = {u["username"]: u["groups"] for u in realm["users"]}
    assert groups["alice"] == ["/data-security"] and groups["dave"] == ["/data-security"]
    assert groups["bob"] == ["/analyst"] and groups["carol"] == ["/platform"]
    clients = {c["clientId"]: c for c in realm["clients"]}
    console = clients["querytrail-console"]
    assert console["publicClient"] and console["attributes"]["pkce.code.challenge.method"] == "S256"
    saml = clients["querytrail-console-saml"]
    assert saml["protocol"] == "saml" and saml["attributes"]["saml.assertion.signature"] == "true"
    assert clients["querytrail-ci"]["serviceAccountsEnabled"] and not clients["querytrail-ci"]["publicClient"]


def _auth_status(base: str, redirect_uri: str) -> int:
    query = urlencode(
        {
            "client_id": "querytrail-console",
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": redirect_uri,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        }
    )
    try:
        with urllib.request.urlopen(f"{base}/protocol/openid-connect/auth?{query}", timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_client_credentials_token_carries_audience_groups_and_marker(keycloak: Any) -> None:
    data = token_request(
        keycloak.token_endpoint,
        {
            "grant_type": "client_credentials",
            "client_id": "querytrail-ci",
            "client_secret": "querytrail-ci-secret",
        },
    )
    claims = jwt.decode(str(data["access_token"]), options={"verify_signature": False})
    assert claims["iss"] == keycloak.issuer
    assert "querytrail" in ([claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"])
    assert claims["groups"] == ["ci"] and claims["service_account"] is True
    assert claims["preferred_username"] == "service-account-querytrail-ci"


@pytest.mark.integration
def test_wrong_client_secret_is_refused(keycloak: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        token_request(
            keycloak.token_endpoint,
            {"grant_type": "client_credentials", "client_id": "querytrail-ci", "client_secret": "wrong"},
        )
    assert info.value.code == 401


@pytest.mark.integration
def test_console_redirect_uris_any_loopback_port_and_nothing_else(keycloak: Any) -> None:
    assert _auth_status(keycloak.issuer, "http://127.0.0.1:8765/auth/callback") == 200
    assert _auth_status(keycloak.issuer, "http://127.0.0.1:80@evil.example/cb") == 400
    assert _auth_status(keycloak.issuer, "http://127.0.0.1.evil.example/cb") == 400
    assert _auth_status(keycloak.issuer, "https://evil.example/cb") == 400


@pytest.mark.integration
def test_saml_descriptor_is_served(keycloak: Any) -> None:
    with urllib.request.urlopen(keycloak.saml_metadata_url, timeout=10) as resp:  # noqa: S310
        body = resp.read().decode()
    assert "EntityDescriptor" in body and "X509Certificate" in body
