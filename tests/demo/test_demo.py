"""`querytrail demo` as a newcomer runs it, in a temp QUERYTRAIL_HOME on free ports.

One stack for the module: `querytrail up` first (services without the demo's settings, as after
`make up`), then the demo twice (the first restarts the services with the demo's settings, the
second reuses them: the demo is idempotent), then the observability checks on the same stack.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, jar_cache

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The story, in order: each line must end with ✓.
STEPS = (
    "local stack",
    "1. safe analytics query",
    "2. SSNs through a CTE",
    "3. privileged read of SECURITY.ADMIN.USERS",
    "4. self-approval attempt",
    "5. second identity approves",
    "6. costly full scan of ANALYTICS.PUBLIC.ORDERS",
    "7. DROP TABLE",
    "8. expired token",
    "9. downstream action report",
    "10. audit log verify",
    "11. report pii-exposure",
    "12. report privileged-access",
    "13. report costly-scans",
)
SERVICES = ("worker", "executor", "sink", "ingress")


def _free_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports (the services' metrics ports)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        free = True
        for i in range(n):
            with socket.socket() as probe:
                free = free and probe.connect_ex(("127.0.0.1", base + i)) != 0
        if free:
            return base
    raise RuntimeError("no block of free ports")


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querytrail.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A user's environment with a fresh QUERYTRAIL_HOME and free ports; `down` at the end."""
    home: Path = tmp_path_factory.mktemp("demo-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYTRAIL_")}
    env.update(
        {
            "QUERYTRAIL_HOME": str(home),
            "QUERYTRAIL_LOCAL__KAFKA_PORT": str(free_port()),
            "QUERYTRAIL_LOCAL__KAFKA_CONTROLLER_PORT": str(free_port()),
            "QUERYTRAIL_LOCAL__FAKESNOW_PORT": str(free_port()),
            "QUERYTRAIL_LOCAL__JAR_CACHE": str(jar_cache()),
            "QUERYTRAIL_LOCAL__KAFKA_HEAP": "-Xms128m -Xmx512m",
            "QUERYTRAIL_INGRESS__PORT": str(free_port()),
            "QUERYTRAIL_METRICS_PORT_BASE": str(_free_block(4)),
            "PYTHONIOENCODING": "utf-8",
        }
    )
    try:
        up = run_cli(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        down = run_cli(env, "down", timeout=120)
        print(down.stdout, down.stderr)


def _assert_story(out: str) -> None:
    for step in STEPS:
        line = next((ln for ln in out.splitlines() if re.match(rf"^[✓✗]\s+{re.escape(step)}\b", ln)), None)
        assert line is not None, f"no line for step {step!r} in:\n{out}"
        assert line.startswith("✓"), f"step failed: {line}\n{out}"
    assert "demo passed" in out


def test_demo_runs_green_twice(stack_env: dict[str, str]) -> None:
    t0 = time.monotonic()
    first = run_cli(stack_env, "demo")
    first_s = time.monotonic() - t0
    assert first.returncode == 0, first.stdout + first.stderr
    _assert_story(first.stdout)
    assert "restarting" in first.stdout  # `up` started the services without the demo's settings

    t0 = time.monotonic()
    second = run_cli(stack_env, "demo")
    assert second.returncode == 0, second.stdout + second.stderr
    _assert_story(second.stdout)
    assert "restarting" not in second.stdout  # the demo's services are reused as they are
    print(f"demo: {first_s:.0f}s after `up` (restarting the services), {time.monotonic() - t0:.0f}s again")
