"""Session fixture ``keycloak``: a real Keycloak with the querytrail realm, started once, lazily.

Registered from tests/conftest.py (``pytest_plugins``). Only a test that asks for ``keycloak``
starts it (about 20-60 s on a busy machine; the first run on a machine also downloads the
160 MB distribution from Maven Central into ``QUERYTRAIL_JAR_CACHE``). The process dies with the
test session even when pytest is killed (``owned_by_caller``), and an atexit hook stops it when
the session is interrupted.
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The running ``infra.keycloak.KeycloakHandle`` (``.base_url``, ``.issuer``, ``.stop()``)."""
    from infra.kafka import BrokerDiedError, PortInUseError
    from infra.keycloak import Keycloak, default_jar_cache

    workdir = tmp_path_factory.mktemp("keycloak")
    cache = Path(os.environ.get("QUERYTRAIL_JAR_CACHE", str(default_jar_cache())))
    for attempt in range(3):
        server = Keycloak(workdir / f"kc{attempt}", _free_port(), jar_cache=cache, owned_by_caller=True)
        try:
            handle = server.start(timeout=600)
            break
        except (PortInUseError, BrokerDiedError):
            # a free port taken by someone else before Keycloak bound it: retry on another
            if attempt == 2:
                raise
    atexit.register(server.stop)
    try:
        yield handle
    finally:
        server.stop()
