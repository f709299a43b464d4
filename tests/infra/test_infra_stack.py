"""`querytrail up` / `status` / `down` as a user runs them, in a temp home on free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack import pid_alive
from tests.conftest import free_port, jar_cache

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querytrail.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_up_twice_status_down_leaves_no_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "QUERYTRAIL_HOME": str(home),
        "QUERYTRAIL_LOCAL__KAFKA_PORT": str(free_port()),
        "QUERYTRAIL_LOCAL__KAFKA_CONTROLLER_PORT": str(free_port()),
        "QUERYTRAIL_LOCAL__FAKESNOW_PORT": str(free_port()),
        "QUERYTRAIL_LOCAL__JAR_CACHE": str(jar_cache()),
        "QUERYTRAIL_LOCAL__KAFKA_HEAP": "-Xms128m -Xmx512m",
    }
    env.pop("QUERYTRAIL_CONFIG", None)
    pids: list[tuple[int, int | None]] = []
    try:
        # Kafka and fakesnow only: the other helpers' services have their own tests
        first = _run(env, "up", "--only", "kafka,fakesnow")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "querytrail stack up" in first.stdout
        state = json.loads((home / "run" / "stack.json").read_text())
        pids = [(s["pid"], s["start_time"]) for s in state["services"].values()]
        assert {"kafka", "fakesnow"} <= set(state["services"])
        assert all(pid_alive(pid, start) for pid, start in pids)

        second = _run(env, "up", "--only", "kafka,fakesnow")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        assert json.loads((home / "run" / "stack.json").read_text())["services"] == state["services"]

        status = _run(env, "status", "--json")
        assert status.returncode == 0
        assert all(s["running"] for s in json.loads(status.stdout).values())

        # the stack's settings are what every other command now reads
        shown = subprocess.run(
            [sys.executable, "-c", "from querytrail.settings import Settings; s = Settings();"
             "print(s.kafka.bootstrap_servers, s.snowflake_profiles['analytics'].port)"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip
        assert shown == [state["services"]["kafka"]["endpoint"], env["QUERYTRAIL_LOCAL__FAKESNOW_PORT"]]
    finally:
        down = _run(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert pids and not any(pid_alive(pid, start) for pid, start in pids)
    assert not (home / "run" / "stack.json").exists()
    assert _run(env, "status").returncode == 1
