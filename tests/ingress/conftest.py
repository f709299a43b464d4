"""Fixtures of the ingress tests (helpers live in ingress_oidc.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ingress.ingress_oidc import IssuerServer


@pytest.fixture
def issuer_server() -> Iterator[IssuerServer]:
    server = IssuerServer()
    yield server
    server.close()
