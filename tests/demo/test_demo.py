"""`querytrail demo` as a newcomer runs it, in a temp QUERYTRAIL_HOME on free ports.

One stack for the module: `querytrail up` first (services without the demo's settings, as after
`make up`), then the demo twice (the first restarts the services with the demo's settings, the
second reuses them: the demo is idempotent), then the observability checks on the same stack.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, jar_cache

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
    "14. MCP agent session",
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


@pytest.fixture(scope="module")
def demo_runs(stack_env: dict[str, str]) -> list[tuple[subprocess.CompletedProcess[str], float]]:
    """The demo run twice on the stack `up` started: (result, seconds) each."""
    runs = []
    for _ in range(2):
        t0 = time.monotonic()
        runs.append((run_cli(stack_env, "demo"), time.monotonic() - t0))
    return runs


def test_demo_runs_green_twice(demo_runs: list[tuple[subprocess.CompletedProcess[str], float]]) -> None:
    (first, first_s), (second, second_s) = demo_runs
    assert first.returncode == 0, first.stdout + first.stderr
    _assert_story(first.stdout)
    assert "restarting" in first.stdout  # `up` started the services without the demo's settings
    assert second.returncode == 0, second.stdout + second.stderr
    _assert_story(second.stdout)
    assert "restarting" not in second.stdout  # the demo's services are reused as they are
    print(f"demo: {first_s:.0f}s after `up` (restarting the services), {second_s:.0f}s again")


def _scrape(url: str) -> dict[str, float]:
    """Prometheus text format -> {series with labels: value} of the querytrail_* series."""
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 -- local http only
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("querytrail_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_logs_and_status_after_the_demo(stack_env: dict[str, str], demo_runs: list[Any]) -> None:
    """After the demo: every service serves querytrail_* metrics and logs JSON with request ids."""
    base = int(stack_env["QUERYTRAIL_METRICS_PORT_BASE"])
    series = {
        svc: _scrape(f"http://127.0.0.1:{base + offset}/metrics")
        for svc, offset in (("ingress", 0), ("worker", 1), ("executor", 2), ("sink", 3))
    }
    for svc, found in series.items():
        assert found, f"{svc}: no querytrail_* series"
    worker, executor, sink = series["worker"], series["executor"], series["sink"]
    for decision in ("allow", "deny", "require_approval"):
        assert worker.get(f'querytrail_requests_total{{decision="{decision}"}}', 0) >= 1, decision
    assert worker.get('querytrail_approval_wait_seconds_count{outcome="approved"}', 0) >= 1
    assert worker.get('querytrail_approval_wait_seconds_count{outcome="expired"}', 0) >= 1
    assert executor.get('querytrail_executor_seconds_count{outcome="completed"}', 0) >= 3
    assert sink.get("querytrail_sink_commit_seconds_count", 0) >= 1
    for svc in ("worker", "executor", "sink"):
        assert any(k.startswith('querytrail_consumer_lag{partition="') and f'service="{svc}"' in k
                   for k in series[svc]), f"{svc}: no consumer lag series"  # fmt: skip

    # structured logs: one JSON object per line, the demo's request ids on the lines about them
    logs = Path(stack_env["QUERYTRAIL_HOME"]) / "run" / "logs"
    for svc in ("worker", "executor", "sink", "ingress"):
        records = [json.loads(ln) for ln in _json_lines(logs / f"{svc}.log")]
        assert records and all(r["service"] == svc for r in records[-20:]), svc
    worker_ids = {r.get("request_id") for r in map(json.loads, _json_lines(logs / "worker.log"))}
    assert any(str(rid).startswith("demo-") for rid in worker_ids)

    status = run_cli(stack_env, "status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for svc in SERVICES:
        assert re.search(rf"^\s+{svc}\s+healthy\s+metrics http://\S+/metrics ok", status.stdout, re.M), (
            status.stdout
        )
    for group in ("querytrail-worker", "querytrail.executor", "querytrail.audit-sink"):
        assert re.search(rf"group {re.escape(group)}: \S+ \d+", status.stdout), status.stdout
    shown = json.loads(run_cli(stack_env, "status", "--json", timeout=60).stdout)
    assert shown["sink"]["lag"] and all(v >= 0 for v in shown["sink"]["lag"].values())
    assert all(shown[s]["healthy"] for s in SERVICES)


def _json_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
