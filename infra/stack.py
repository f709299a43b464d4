"""The local stack: Kafka, topics, fakesnow (seeded), then every registered service.

State lives in ``home/run/stack.json`` (pids, endpoints, logs) so ``querytrail down`` and
``status`` work from any shell, and ``home/run/stack.yaml`` holds the stack's settings
(broker, fakesnow profile) that every querytrail process reads while the stack runs.

To add a process to ``querytrail up``, append one line to ``SERVICES`` (started in order after
Kafka and fakesnow, stopped in reverse), e.g.::

    Service("worker", lambda s: cli("worker"), health=None),
    Service("ingress", lambda s: cli("ingress"), health=lambda s: http_ok(f"http://127.0.0.1:{s.ingress.port}/healthz"),
            endpoint=lambda s: f"http://127.0.0.1:{s.ingress.port}"),
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.kafka import KafkaInfraError

if TYPE_CHECKING:
    from querytrail.settings import Settings

__all__ = [
    "PREPARE",
    "SERVICES",
    "Service",
    "ServiceDiedError",
    "StackState",
    "cli",
    "http_ok",
    "pid_alive",
    "port_open",
    "process_start_time",
    "spawn",
]


class ServiceDiedError(KafkaInfraError):
    """A registered service exited, or never became healthy, while `up` started it."""


@dataclass(frozen=True)
class Service:
    """A long-running querytrail process that ``querytrail up`` starts."""

    name: str
    argv: Callable[[Settings], list[str]]
    health: Callable[[Settings], bool] | None = None  # None: "its process is alive" is enough
    endpoint: Callable[[Settings], str] | None = None
    startup_timeout_s: float = 60.0
    min_uptime_s: float = 3.0  # without a health check: alive this long counts as started
    enabled: Callable[[Settings], bool] | None = None  # None: always started


def cli(*args: str) -> list[str]:
    """argv running ``querytrail ARGS`` with this interpreter."""
    return [sys.executable, "-m", "querytrail.cli", *args]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- local http only
            return 200 <= int(resp.status) < 300
    except OSError:
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


# Run once by `up` after Kafka and fakesnow, before SERVICES: idempotent preparation such as
# generating the local dev keys. One line each: ``PREPARE.append(my_module.ensure_dev_keys)`` or
# a lambda here; each takes the stack's Settings.
PREPARE: list[Callable[[Settings], None]] = []


def _dev_keys(settings: Settings) -> None:
    """Every service's key before any service starts (docs/security.md): none races to make one."""
    from querytrail.keys import ensure_service_keys
    from querytrail.sealing import ensure_keys

    ensure_keys(settings)
    ensure_service_keys(settings)


PREPARE.append(_dev_keys)

# Started in this order after Kafka (+ topics) and fakesnow (+ seed); one line per service.
SERVICES: list[Service] = [
    Service("worker", lambda s: cli("worker")),  # pipeline helper: the faust processors
    Service("executor", lambda s: cli("executor")),  # pipeline helper: the only Snowflake credential holder
    Service("sink", lambda s: cli("sink")),  # the Iceberg audit log writer
    Service(
        "ingress",
        lambda s: cli("ingress"),
        health=lambda s: http_ok(f"http://{s.ingress.host}:{s.ingress.port}/healthz"),
        endpoint=lambda s: f"http://{s.ingress.host}:{s.ingress.port}",
    ),
    # approval webhooks: only when settings.notifications.webhooks names some
    Service("notifier", lambda s: cli("notifier"), enabled=lambda s: bool(s.notifications.webhooks)),
]


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] == "Z":  # a zombie is not running
        return None
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None) -> bool:
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


@dataclass
class StackState:
    """What ``up`` started: name -> {pid, start_time, endpoint, log}."""

    path: Path
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, run_dir: Path) -> StackState:
        path = run_dir / "stack.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(path)
        return cls(path, dict(data.get("services", {})), float(data.get("started_at", time.time())))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {"started_at": self.started_at, "services": self.services}
        tmp.write_text(json.dumps(body, indent=2), encoding="utf-8")
        tmp.replace(self.path)

    def alive(self, name: str) -> bool:
        svc = self.services.get(name)
        return svc is not None and pid_alive(int(svc["pid"]), svc.get("start_time"))

    def record(self, name: str, pid: int, endpoint: str | None, log: Path) -> None:
        self.services[name] = {
            "pid": pid,
            "start_time": process_start_time(pid),
            "endpoint": endpoint,
            "log": str(log),
        }
        self.save()


def spawn(svc: Service, settings: Settings, env: dict[str, str], log_dir: Path) -> tuple[int, Path]:
    """Start ``svc`` detached (own session, output to its log) and wait for its health check."""
    from infra.kafka import stop_process, tail

    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{svc.name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            svc.argv(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )
    started = time.monotonic()
    deadline = started + svc.startup_timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise ServiceDiedError(f"{svc.name} exited with code {code}; last lines of {log}:\n{tail(log)}")
        if svc.health is None:
            # no health check: alive after a short grace period is the best we can know
            if time.monotonic() - started > svc.min_uptime_s:
                return proc.pid, log
        elif svc.health(settings):
            return proc.pid, log
        if time.monotonic() > deadline:
            stop_process(proc.pid, name=svc.name)
            raise ServiceDiedError(
                f"{svc.name} not healthy within {svc.startup_timeout_s:.0f}s; last lines of {log}:\n{tail(log)}"
            )
        time.sleep(0.3)
