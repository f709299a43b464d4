"""`querytrail up --with keycloak`: Keycloak joins the stack, the stack's settings trust its
realm next to the dev issuer, and `down` stops it (a temp home on free ports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.keycloak import default_jar_cache as jar_cache
from infra.stack import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    # not conftest's: ``from conftest import`` resolves to whichever conftest.py was imported last
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(env: dict[str, str], *args: str, timeout: float = 720) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querytrail.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_up_with_keycloak_trusts_its_realm_and_down_stops_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kc_port = free_port()
    env = {
        **os.environ,
        "QUERYTRAIL_HOME": str(home),
        "QUERYTRAIL_LOCAL__KAFKA_PORT": str(free_port()),
        "QUERYTRAIL_LOCAL__KAFKA_CONTROLLER_PORT": str(free_port()),
        "QUERYTRAIL_LOCAL__FAKESNOW_PORT": str(free_port()),
        "QUERYTRAIL_LOCAL__KEYCLOAK_PORT": str(kc_port),
        "QUERYTRAIL_LOCAL__JAR_CACHE": str(jar_cache()),
        "QUERYTRAIL_LOCAL__KAFKA_HEAP": "-Xms128m -Xmx512m",
    }
    env.pop("QUERYTRAIL_CONFIG", None)
    assert _run(env, "up", "--with", "nonsense", "--only", "kafka").returncode == 2
    pid = None
    try:
        # no registered services (--only names none of them): Kafka, fakesnow and Keycloak
        up = _run(env, "up", "--only", "none", "--with", "keycloak")
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((home / "run" / "stack.json").read_text())
        kc = state["services"]["keycloak"]
        pid = (kc["pid"], kc["start_time"])
        issuer = f"http://127.0.0.1:{kc_port}/realms/querytrail"
        assert kc["endpoint"] == issuer and pid_alive(*pid)

        shown = subprocess.run(
            [sys.executable, "-c", "from querytrail.identity import TokenVerifier; from querytrail.settings import "
             "Settings; s = Settings(); print(TokenVerifier.from_settings(s).issuers)"],
            # the demo's setting: the dev issuer stays trusted next to Keycloak when it is enabled
            env={**env, "QUERYTRAIL_CONFIG": str(home / "run" / "stack.yaml"), "QUERYTRAIL_IDENTITY__DEV_ISSUER_ENABLED": "true"},
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert issuer in shown.stdout and "dev-issuer" in shown.stdout
    finally:
        down = _run(env, "down", timeout=120)
    assert down.returncode == 0 and "keycloak" in down.stdout
    assert pid is not None and not pid_alive(*pid)
